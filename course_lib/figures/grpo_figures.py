"""Figures for notebook 05 (GRPO); pure functions: each draws and returns its Figure.

* ``ppo_vs_grpo_figure``: PPO and GRPO side by side (after DeepSeekMath Figure 4).
* ``advantage_playground``: group-relative advantages and per-token weights for one group of rewards.
* ``plot_history``: training curves of one or more ``grpo_train`` runs.

The GRPO objective and training loop are in ``course_lib.grpo``.
"""
from __future__ import annotations

from typing import Sequence

import torch

from course_lib.grpo import group_advantages

def ppo_vs_grpo_figure():
    """PPO and GRPO side by side, in the spirit of DeepSeekMath Figure 4 (redrawn, simplified).

    PPO needs a value model (as large as the policy) to produce a baseline for GAE; GRPO drops it and uses the mean
    reward of G samples of the same question as the baseline.
    """
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyBboxPatch

    from course_lib.kit.style import COLORS

    fig, axes = plt.subplots(2, 1, figsize=(9.5, 4.6))
    trained, frozen = COLORS["orange"], COLORS["blue"]

    def box(ax, x, y, text, colour, w=1.5, h=0.7):
        ax.add_patch(FancyBboxPatch((x - w / 2, y - h / 2), w, h, boxstyle="round,pad=0.04", fc=colour,
                                    alpha=0.22, ec=colour, lw=1.4))
        ax.text(x, y, text, ha="center", va="center", fontsize=8.5)

    def arrow(ax, x0, y0, x1, y1):
        ax.annotate("", (x1, y1), (x0, y0), arrowprops=dict(arrowstyle="->", lw=1.1, color="0.3"))

    for ax, title in zip(axes, ("PPO", "GRPO")):
        ax.set_xlim(-0.2, 10.6)
        ax.set_ylim(-1.4, 1.25)
        ax.axis("off")
        ax.set_title(title, loc="left")
        box(ax, 0.4, 0, "q", "0.6", w=0.6)
        box(ax, 2.0, 0, "policy\nmodel", trained)
        arrow(ax, 0.7, 0, 1.25, 0)
        box(ax, 5.0, 0.8, "reference\nmodel", frozen)
        box(ax, 5.0, -0.1 if title == "PPO" else -0.35, "reward\nmodel / rules", frozen)
    # PPO: one output, a learned value model, GAE
    ax = axes[0]
    box(ax, 3.5, 0, "o", "0.6", w=0.6)
    arrow(ax, 2.75, 0, 3.2, 0)
    box(ax, 5.0, -0.95, "value\nmodel", trained)
    for y in (0.8, -0.1, -0.95):
        arrow(ax, 3.8, 0, 4.25, y)
    box(ax, 7.0, 0.1, "r (- beta KL\nper token)", "0.6", w=1.6)
    box(ax, 7.0, -0.95, "v", "0.6", w=0.6)
    arrow(ax, 5.75, 0.8, 6.2, 0.2)
    arrow(ax, 5.75, -0.1, 6.2, 0.05)
    arrow(ax, 5.75, -0.95, 6.7, -0.95)
    box(ax, 8.8, -0.4, "GAE", "0.6", w=0.9)
    arrow(ax, 7.8, 0.1, 8.35, -0.3)
    arrow(ax, 7.3, -0.95, 8.35, -0.5)
    box(ax, 10.1, -0.4, "A", "0.6", w=0.6)
    arrow(ax, 9.25, -0.4, 9.8, -0.4)
    # GRPO: G outputs, rewards compared within the group, KL added to the loss
    ax = axes[1]
    box(ax, 3.5, 0, "o1 ... oG", "0.6", w=1.0)
    arrow(ax, 2.75, 0, 3.0, 0)
    arrow(ax, 4.0, 0, 4.25, 0.8)
    arrow(ax, 4.0, 0, 4.25, -0.35)
    box(ax, 7.0, -0.35, "r1 ... rG", "0.6", w=1.1)
    arrow(ax, 5.75, -0.35, 6.45, -0.35)
    box(ax, 8.7, -0.35, "group\nmean / std", "0.6", w=1.3)
    arrow(ax, 7.55, -0.35, 8.05, -0.35)
    box(ax, 10.1, -0.35, "A1 ... AG", "0.6", w=0.9)
    arrow(ax, 9.35, -0.35, 9.65, -0.35)
    box(ax, 7.0, 0.8, "KL in the loss", "0.6", w=1.6)
    arrow(ax, 5.75, 0.8, 6.2, 0.8)
    fig.text(0.01, 0.01, "orange = trained, blue = frozen (redrawn after DeepSeekMath, arXiv 2402.03300, Figure 4)",
             fontsize=8, color="0.35")
    fig.tight_layout()
    return fig


def advantage_playground(rewards: Sequence[float], lengths: Sequence[int] | None = None, scale: str = "group"):
    """One group: rewards -> advantages -> how hard each completion's tokens are pushed (on-policy gradient weight).

    With mu = 1 the gradient of the loss on token t of completion i is -A_i * w_i, where w_i = 1/(G |o_i|) for grpo
    and 1/(G L) for dr_grpo (see `aggregate`): positive A raises the probability of every token of that completion.
    """
    import matplotlib.pyplot as plt

    from course_lib.kit.style import COLORS

    r = torch.as_tensor(list(rewards), dtype=torch.float32)
    G = r.numel()
    lengths = [10] * G if lengths is None else list(lengths)
    if len(lengths) != G or min(lengths) < 1:
        raise ValueError(f"lengths must give a positive length for each of the {G} completions")
    adv = group_advantages(r, G, scale)
    L = max(lengths)
    w_grpo = adv / (G * torch.tensor(lengths, dtype=torch.float32))
    w_dr = adv / (G * L)
    fig, axes = plt.subplots(1, 2, figsize=(9.5, 3.2))
    x = torch.arange(G)
    cols = [COLORS["green"] if a > 1e-6 else COLORS["red"] if a < -1e-6 else COLORS["grey"] for a in adv.tolist()]
    axes[0].bar(x - 0.2, r, 0.4, color=COLORS["grey"], label="reward r_i")
    axes[0].bar(x + 0.2, adv, 0.4, color=cols, label="advantage A_i")
    axes[0].axhline(0, color="0.3", lw=0.8)
    axes[0].set_title(f"rewards and advantages (scale={scale})")
    axes[0].set_xlabel("completion i")
    axes[0].legend(fontsize=8)
    axes[1].bar(x - 0.2, w_grpo, 0.4, color=COLORS["orange"], label="grpo: A_i / (G |o_i|)")
    axes[1].bar(x + 0.2, w_dr, 0.4, color=COLORS["blue"], label="dr_grpo: A_i / (G L)")
    axes[1].axhline(0, color="0.3", lw=0.8)
    axes[1].set_title("push on each token of completion i")
    axes[1].set_xlabel("completion i  (lengths: " + ",".join(map(str, lengths)) + ")")
    axes[1].legend(fontsize=8)
    for ax in axes:
        ax.set_xticks(x.tolist(), [str(i + 1) for i in range(G)])
    fig.tight_layout()
    return fig


def plot_history(hists: dict, keys=("eval_accuracy", "reward", "length", "kl")):
    """Curves of one or more `grpo_train` histories ({label: history}) over RL steps (steps, not seconds: the
    curves are then the same on every machine)."""
    import matplotlib.pyplot as plt

    titles = {"eval_accuracy": "held-out accuracy", "reward": "mean reward (train)", "length": "response length (tokens)",
              "kl": "KL(policy || base), k3", "eval_think_share": "share that thinks", "eval_length": "held-out length"}
    fig, axes = plt.subplots(1, len(keys), figsize=(3.2 * len(keys), 3.0))
    for ax, key in zip(axes, keys):
        for label, h in hists.items():
            if key.startswith("eval_"):
                ax.plot(h["eval_step"], h[key], marker=".", label=label)
            else:
                ax.plot(h["step"], h[key], lw=1, label=label)
        ax.set_title(titles.get(key, key), fontsize=9)
        ax.set_xlabel("RL step")
    if len(hists) > 1:
        axes[0].legend(fontsize=8)
    fig.tight_layout()
    return fig
