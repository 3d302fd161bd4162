"""The shipped toy MTP model, analysis and figures for notebook 04: where drafts are accepted, what speculation
looks like.

* ``load_checkpoint``: the trained toy model of assets/mtp (a TinyLM with one MTP module).
* ``draft_weight_fraction``: what a draft step costs in plain decode steps, counted from the weights it multiplies.
* ``acceptance_by_confidence`` / ``ConfidenceTable`` / ``plot_acceptance_by_confidence``: draft acceptance per bin
  of the main model's confidence.
* ``plot_speculation``: one step of self-speculative decoding; ``plot_mtp_architectures``: parallel heads
  (Gloeckle et al. 2024) vs DeepSeek-V3's sequential MTP modules (V3 §2.2, Figure 3).

The MTP modules and speculative decoding themselves are in ``course_lib.mtp``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from course_lib.mtp import MTPModel, speculative_generate

# --------------------------------------------------------------------------------------------- the shipped model
CHECKPOINT = "mtp_tiny"


def load_checkpoint(name: str = CHECKPOINT, device=None) -> tuple[MTPModel, dict]:
    """The trained toy MTP model from assets/mtp/<name>.pt (made by assets/mtp/make_checkpoint.py) and its metadata.

    The file stores the weights in float16 without the duplicated shared embed/head entries; they load back as
    float32 with weights_only=True (no code is unpickled).
    """
    import json

    from course_lib import asset_path
    from course_lib.model import ModelConfig, TinyLM

    meta = json.loads(asset_path("mtp", f"{name}.json").read_text())
    model = MTPModel(TinyLM(ModelConfig.from_dict(meta["config"])), depth=meta["mtp_depth"])
    state = torch.load(asset_path("mtp", f"{name}.pt"), map_location="cpu", weights_only=True)
    missing, unexpected = model.load_state_dict({k: v.float() for k, v in state.items()}, strict=False)
    shared = {k for k in model.state_dict() if k.startswith("mtp.") and k.split(".")[2] in ("embed", "head")}
    if unexpected or set(missing) - shared:
        raise ValueError(f"checkpoint {name!r} does not match the model: missing {missing}, unexpected {unexpected}")
    return model.to(device or "cpu").eval(), meta



def draft_weight_fraction(mtp_model: MTPModel) -> float:
    """Weights one token multiplies with in a draft step of MTP module 1, as a fraction of those of a plain decode
    step of the main model, counted from the built modules (every nn.Linear weight; norms and the embedding lookup
    are left out):

        draft = M_1 (d x 2d, V3 Eq. 21) + the module's transformer block + the shared output head
        plain = the main model's L blocks + the output head

    At 2 FLOPs per weight this is the draft's share of a step's matrix FLOPs, and when decoding is limited by reading
    the weights (a GPU at batch 1) its share of a step's time. It depends only on the shapes, not on the machine.
    The analogue of ``nano_analysis.draft_weight_fraction`` for TinyLM with a dense FFN; with an MoE FFN a token
    multiplies only its chosen experts, so count that model from its config there instead."""
    from torch import nn

    if not isinstance(mtp_model, MTPModel) or not len(mtp_model.mtp):
        raise ValueError("mtp_model must be an MTPModel with at least one MTP module")
    if mtp_model.model.cfg.ffn != "dense":
        raise ValueError(f"mtp_model must have a dense FFN (cfg.ffn='dense'), got {mtp_model.model.cfg.ffn!r}")

    def linear_weights(*modules) -> int:
        return sum(m.weight.numel() for mod in modules for m in mod.modules() if isinstance(m, nn.Linear))

    lm, module = mtp_model.model, mtp_model.mtp[0]
    head = linear_weights(lm.head)
    return (linear_weights(module.proj, module.block) + head) / (linear_weights(lm.blocks) + head)


CONFIDENCE_EDGES = (0.0, 0.5, 0.7, 0.9, 0.97, 1.0)


@dataclass
class ConfidenceTable:
    """Drafts and accepted drafts per bin of the main model's confidence (its top-1 probability) in the token drafted."""
    edges: tuple
    drafted: list
    accepted: list

    @property
    def acceptance(self) -> list:
        return [a / d if d else float("nan") for a, d in zip(self.accepted, self.drafted)]

    @property
    def share(self) -> list:
        """Fraction of all drafts that fall in each bin."""
        total = sum(self.drafted)
        return [d / total if total else float("nan") for d in self.drafted]

    @property
    def labels(self) -> list:
        return [f"{lo:.2f}-{hi:.2f}" for lo, hi in zip(self.edges[:-1], self.edges[1:])]


@torch.no_grad()
def acceptance_by_confidence(mtp_model: MTPModel, prompts, max_new_tokens: int,
                             edges=CONFIDENCE_EDGES) -> ConfidenceTable:
    """Run greedy speculative decoding on each prompt (a list of (1, P) tensors) and sort every draft by how sure
    the main model was of the token it then chose: its top-1 probability p at that position.

    A draft is accepted when the MTP module's argmax equals the main model's argmax, so where the main model is
    confident (p near 1) the module usually agrees, and where p is low both are guessing among several
    tokens. The mix of the two explains the overall rate: acceptance = sum over bins of share * acceptance.
    """
    edges = tuple(float(e) for e in edges)
    if len(edges) < 2 or any(b <= a for a, b in zip(edges[:-1], edges[1:])) or edges[0] > 0 or edges[-1] < 1:
        raise ValueError(f"edges must increase strictly from <= 0 to >= 1, got {edges}")
    drafted, accepted = [0] * (len(edges) - 1), [0] * (len(edges) - 1)
    inner = torch.tensor(edges[1:-1])
    for idx in prompts:
        if idx.dim() != 2 or idx.shape[0] != 1:
            raise ValueError(f"each prompt must have shape (1, P), got {tuple(idx.shape)}")
        tokens, stats = speculative_generate(mtp_model, idx, max_new_tokens)
        # p(t_n) for the token at n comes from the logits at n - 1, given the committed prefix t_0 .. t_{n-1}
        top1 = mtp_model.model(tokens).logits[0].float().softmax(-1).amax(-1).cpu()
        for step in stats.steps:
            b = int(torch.bucketize(top1[step["pos"] - 1], inner, right=True))
            drafted[b] += 1
            accepted[b] += int(step["accepted"])
    return ConfidenceTable(edges, drafted, accepted)


def plot_acceptance_by_confidence(table: ConfidenceTable, title: str = ""):
    """Bars: acceptance rate per confidence bin, each labelled with the share (and number) of drafts in that bin."""
    import matplotlib.pyplot as plt

    from course_lib.kit.style import COLORS

    fig, ax = plt.subplots(figsize=(7.5, 3.6))
    x = range(len(table.drafted))
    acc = [0.0 if a != a else a for a in table.acceptance]          # an empty bin draws as a zero-height bar
    bars = ax.bar(x, acc, color=COLORS["green"], alpha=0.7)
    for bar, share, n in zip(bars, table.share, table.drafted):
        ax.text(bar.get_x() + bar.get_width() / 2, bar.get_height() + 0.02, f"{share:.0%} of drafts\n(n={n})",
                ha="center", fontsize=8, color=COLORS["grey"])
    ax.set(xticks=list(x), xticklabels=table.labels, ylim=(0, 1.2), ylabel="draft acceptance",
           yticks=[0, 0.25, 0.5, 0.75, 1], yticklabels=["0%", "25%", "50%", "75%", "100%"],
           xlabel="main model's top-1 probability for the token it chose",
           title=title or "Drafts are accepted where the main model is sure")
    return fig


# --------------------------------------------------------------------------------------------- figures
def _show_byte(b: int) -> str:
    special = {10: "⏎", 9: "⇥", 32: "·"}
    return special[b] if b in special else chr(b) if 32 < b < 127 else f"\\x{b:02x}"


def plot_speculation(tokens, steps: list, step: int, prompt_len: int, window: int = 10):
    """Verify passes step-window+1 .. step of a B=1 speculative generation, one row each: the committed text so far,
    the MTP draft (green = accepted, red = rejected) and the tokens the main model's pass committed.

    tokens: the generated ids (1D or (1, T)); steps: SpecStats.steps; byte-level tokens are shown as characters.
    """
    import matplotlib.pyplot as plt

    from course_lib.kit.style import COLORS

    tokens = torch.as_tensor(tokens).reshape(-1).tolist()
    if not 1 <= step <= len(steps):
        raise ValueError(f"step must be between 1 and {len(steps)}, got {step}")
    rows = steps[max(0, step - window):step]
    fig, ax = plt.subplots(figsize=(10, 0.45 * window + 1.2))
    ax.set_xlim(0, 62)
    ax.set_ylim(window + 0.5, -0.8)
    ax.axis("off")
    for col, title in ((0, "committed text (last 30 tokens)"), (33, "draft"), (40, "main pass keeps")):
        ax.text(col, -0.5, title, fontsize=9, color=COLORS["grey"])
    for r, s in enumerate(rows):
        n = s["pos"]
        before = "".join(_show_byte(t) for t in tokens[max(prompt_len - 5, n - 30):n])
        ax.text(0, r + 0.5, before.rjust(30), family="monospace", fontsize=10)
        ok = s["accepted"]
        ax.text(34, r + 0.5, _show_byte(s["draft"][0]), family="monospace", fontsize=11, ha="center",
                bbox=dict(boxstyle="round", fc=COLORS["green" if ok else "red"], alpha=0.35, lw=0))
        kept = s["verified"][0][:2 if ok else 1]
        label = " ".join(_show_byte(t) for t in kept) + ("   (2 tokens)" if ok else "   (1 token)")
        ax.text(40, r + 0.5, label, family="monospace", fontsize=10, color=COLORS["blue"])
    acc = sum(s["accepted"] for s in steps[:step])
    ax.set_title(f"verify pass {step} of {len(steps)}: {acc}/{step} drafts accepted so far", fontsize=11)
    return fig


def plot_mtp_architectures():
    """Gloeckle et al. (2024)'s parallel heads vs DeepSeek-V3's sequential MTP modules (V3 §2.2, Figure 3), for
    one position i and D = 2: which representation each extra prediction is made from."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyBboxPatch

    from course_lib.kit.style import COLORS

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))

    def box(ax, x, y, text, color, w=2.4, h=0.7):
        ax.add_patch(FancyBboxPatch((x - w / 2, y - h / 2), w, h, boxstyle="round,pad=0.05",
                                    fc=color, alpha=0.25, ec=color))
        ax.text(x, y, text, ha="center", va="center", fontsize=9)

    def arrow(ax, a, b):
        ax.annotate("", xy=b, xytext=a, arrowprops=dict(arrowstyle="->", color=COLORS["grey"]))

    ax = axes[0]
    box(ax, 3, 0.5, "shared trunk  (t_1 .. t_i)", COLORS["blue"], w=4)
    for j, x in enumerate((1, 3, 5)):
        box(ax, x, 2.2, f"head {j + 1}", COLORS["orange"], w=1.6)
        box(ax, x, 3.6, f"t_(i+{j + 1})", COLORS["grey"], w=1.4)
        arrow(ax, (3, 0.85), (x, 1.85))
        arrow(ax, (x, 2.55), (x, 3.25))
    ax.set_title("parallel heads (Gloeckle et al. 2024)\nall predictions from the same h_i", fontsize=10)
    ax = axes[1]
    box(ax, 1, 0.5, "main model\n(t_1 .. t_i)", COLORS["blue"], w=2.0, h=0.9)
    box(ax, 3.2, 1.6, "MTP 1: [h_i ; Emb(t_(i+1))]", COLORS["green"], w=2.9)
    box(ax, 5.4, 2.7, "MTP 2: [h¹_i ; Emb(t_(i+2))]", COLORS["green"], w=2.9)
    for x, y, t in ((1, 2.3, "t_(i+1)"), (3.2, 3.4, "t_(i+2)"), (5.4, 4.1, "t_(i+3)")):
        box(ax, x, y, t, COLORS["grey"], w=1.4)
    arrow(ax, (1, 0.95), (1, 1.95))
    arrow(ax, (1.9, 0.7), (2.2, 1.3))
    arrow(ax, (3.2, 1.95), (3.2, 3.05))
    arrow(ax, (4.2, 1.9), (4.6, 2.35))
    arrow(ax, (5.4, 3.05), (5.4, 3.75))
    ax.set_title("sequential modules (DeepSeek-V3 §2.2)\neach depth builds on the previous one and sees the next token",
                 fontsize=10)
    for ax in axes:
        ax.set_xlim(-0.5, 7)
        ax.set_ylim(0, 4.5)
        ax.axis("off")
    return fig
