"""Diagrams drawn in code, each a pure function returning a matplotlib Figure.

r1_pipeline_figure: the DeepSeek-V3 -> R1 -> distilled pipeline with the notebook that teaches each piece. Stages
follow the DeepSeek-R1 paper (arXiv 2501.12948): §2.2 R1-Zero (pure RL from V3-Base), §2.3 R1 (cold-start SFT,
reasoning RL, rejection sampling + SFT, RL for all scenarios), §2.4 distillation into Qwen2.5 / Llama students.

The pictures at the start of notebooks 02-05, labelled with the parameter names of course_lib and the papers'
symbols and equation numbers:
  moe_layer_figure  DeepSeekMoE layer (course_lib.moe.MoE): DeepSeek-V3 (arXiv 2412.19437) §2.1.2, Eq. 12-16
  mla_figure        MLA's data flow, naive or absorbed (course_lib.mla.MLA): DeepSeek-V2 (arXiv 2405.04434)
                    §2.1.2-2.1.3, Eq. 9-19, and Appendix C
  mtp_chain_figure  the MTP module chain (course_lib.mtp.MTPModule): DeepSeek-V3 §2.2, Figure 3, Eq. 21-25
  grpo_figure       group -> rewards -> advantages -> loss (course_lib.grpo): DeepSeekMath (arXiv 2402.03300) §4.1,
                    Eq. 3-4, and DeepSeek-R1 §2.2
tests/figures/test_diagrams.py checks each one for its labels and that no label overlaps another or leaves its box.
"""
from __future__ import annotations

import matplotlib.pyplot as plt
from matplotlib.patches import FancyBboxPatch

from course_lib.kit.style import COLORS

# (key, label, x, y, colour, notebook that builds it at toy scale)
PIPELINE_NODES = [
    ("v3base", "DeepSeek-V3-Base\nMoE + MLA + MTP\npre-trained on 14.8T tokens", 0.0, 1.0, "blue", "02 · 03 · 04"),
    ("r1zero", "DeepSeek-R1-Zero\nGRPO, rule rewards\n(no SFT)", 3.2, 2.0, "orange", "05"),
    ("cold", "cold-start SFT\n(thousands of\nreadable CoT examples)", 3.2, 0.0, "purple", "06"),
    ("rl1", "reasoning RL\n+ language-consistency\nreward", 6.2, 0.0, "orange", "05 · 06"),
    ("rs", "rejection sampling ~600k\n+ ~200k non-reasoning\n-> SFT of V3-Base", 9.2, 0.0, "purple", "06"),
    ("r1", "DeepSeek-R1\nRL for all scenarios", 9.2, 2.0, "red", "06"),
    ("distill", "R1-Distill students\nQwen2.5 1.5B-32B,\nLlama 8B / 70B (SFT only)", 12.2, 1.0, "green", "06"),
]
PIPELINE_EDGES = [("v3base", "r1zero"), ("v3base", "cold"), ("cold", "rl1"), ("rl1", "rs"), ("rs", "r1"),
                  ("rs", "distill")]


def r1_pipeline_figure(notes: dict | None = None, show_notebooks: bool = True):
    """Draw the pipeline; `notes` maps a node key to an extra line (e.g. a measured toy accuracy)."""
    notes = notes or {}
    unknown = set(notes) - {n[0] for n in PIPELINE_NODES}
    if unknown:
        raise ValueError(f"notes names unknown stages {sorted(unknown)}; known: {[n[0] for n in PIPELINE_NODES]}")
    fig, ax = plt.subplots(figsize=(12.5, 3.8))
    pos = {}
    for key, label, x, y, colour, nb in PIPELINE_NODES:
        text = label + (f"\n{notes[key]}" if key in notes else "")
        ax.add_patch(FancyBboxPatch((x - 1.3, y - 0.55), 2.6, 1.1, boxstyle="round,pad=0.05",
                                    fc=COLORS[colour], alpha=0.18, ec=COLORS[colour], lw=1.5))
        ax.text(x, y, text, ha="center", va="center", fontsize=8)
        if show_notebooks:
            ax.text(x + 1.25, y + 0.5, f"nb {nb}", ha="right", va="top", fontsize=7, color=COLORS[colour],
                    fontweight="bold")
        pos[key] = (x, y)
    for a, b in PIPELINE_EDGES:
        (x0, y0), (x1, y1) = pos[a], pos[b]
        dx = 1.35 if x1 > x0 else 0.0
        dy = 0.0 if dx else (0.58 if y1 > y0 else -0.58)
        ax.annotate("", xy=(x1 - dx if dx else x1, y1 - dy if dy else y1), xytext=(x0 + dx if dx else x0, y0 + dy),
                    arrowprops=dict(arrowstyle="->", color="#444", lw=1.2))
    ax.set_xlim(-1.5, 13.6)
    ax.set_ylim(-0.8, 2.8)
    ax.axis("off")
    ax.set_title("From DeepSeek-V3-Base to R1 and the distilled students (R1 paper, §2.2-2.4)")
    return fig


# ------------------------------------------------------------------------------------------------------------------
# Diagrams of the four techniques, labelled with the course's parameter names and the papers' symbols.
# Each is a pure function returning a Figure; a notebook shows it at the start of the section that builds the piece.
# ------------------------------------------------------------------------------------------------------------------
_INK = "#444444"


def _canvas(width: float, height: float, xmax: float, ymax: float, title: str):
    fig, ax = plt.subplots(figsize=(width, height))
    ax.set_xlim(0, xmax)
    ax.set_ylim(0, ymax)
    ax.axis("off")
    ax.set_title(title, fontsize=10.5)
    return fig, ax


def _box(ax, x, y, w, h, text, colour="grey", fontsize=8.5, filled=0.18, lw=1.3, ls="-"):
    """A rounded box centred on (x, y) with its label; returns the box's edges (left, right, bottom, top)."""
    c = COLORS.get(colour, colour)
    ax.add_patch(FancyBboxPatch((x - w / 2, y - h / 2), w, h, boxstyle="round,pad=0.03,rounding_size=0.12",
                                fc=c, alpha=filled, ec="none"))
    ax.add_patch(FancyBboxPatch((x - w / 2, y - h / 2), w, h, boxstyle="round,pad=0.03,rounding_size=0.12",
                                fc="none", ec=c, lw=lw, ls=ls))
    ax.text(x, y, text, ha="center", va="center", fontsize=fontsize, linespacing=1.35)
    return x - w / 2, x + w / 2, y - h / 2, y + h / 2


def _arrow(ax, start, end, colour=_INK, ls="-", lw=1.2, rad=0.0):
    ax.annotate("", xy=end, xytext=start, arrowprops=dict(arrowstyle="-|>", color=COLORS.get(colour, colour), lw=lw,
                                                          ls=ls, shrinkA=0, shrinkB=0, mutation_scale=11,
                                                          connectionstyle=f"arc3,rad={rad}"))


def _note(ax, x, y, text, colour=_INK, fontsize=8, ha="center", va="center", style="normal"):
    ax.text(x, y, text, ha=ha, va=va, fontsize=fontsize, color=COLORS.get(colour, colour), style=style,
            linespacing=1.3)


def _legend(ax, x, y, items, fontsize=8):
    """Colour key drawn as small swatches left to right from (x, y): items = [(colour, label), ...]."""
    for colour, label in items:
        ax.add_patch(FancyBboxPatch((x, y - 0.12), 0.32, 0.24, boxstyle="round,pad=0.02", fc=COLORS[colour],
                                    alpha=0.35, ec=COLORS[colour]))
        ax.text(x + 0.45, y, label, ha="left", va="center", fontsize=fontsize)
        x += 0.45 + 0.105 * len(label) + 0.5


MLA_PATHS = ("naive", "absorbed")


def mla_figure(path: str = "absorbed"):
    """MLA's data flow for one new token t (DeepSeek-V2 §2.1.2-2.1.3, Eq. 9-19; V2 Appendix C for absorption).

    The left half is shared by both paths: the projections of `course_lib.mla.MLA` (q_down, q_norm, q_up,
    kv_down, kv_norm) and its cache {"c_kv", "k_rope"}, the only thing kept per token. The right half is what each
    decode step computes: path="naive" decompresses every cached latent with kv_up (Eq. 10-11); path="absorbed"
    folds W^UK into the query and W^UV into the output (attention runs on the latents themselves).
    """
    if path not in MLA_PATHS:
        raise ValueError(f"path must be one of {MLA_PATHS}, got {path!r}")
    title = ("MLA, naive path: the cache is decompressed into full keys and values at every step"
             if path == "naive" else
             "MLA, absorbed path: $W^{UK}$ goes into the query, $W^{UV}$ into the output; attention reads the cache")
    fig, ax = _canvas(12.5, 5.6, 15.0, 6.6, title + "\n(DeepSeek-V2 §2.1.2-2.1.3, Eq. 9-19; Appendix C)")
    yq, yk = 4.9, 1.7
    _box(ax, 0.75, 3.3, 1.2, 1.0, "$h_t$\ninput (d)", "grey")
    _arrow(ax, (1.35, 3.45), (1.95, yq - 0.1))
    _arrow(ax, (1.35, 3.15), (1.95, yk + 0.1))
    # query side, Eq. 12-14
    _box(ax, 3.2, yq, 2.5, 1.15, "q_down, q_norm\n$c^Q_t = W^{DQ} h_t$   (12)\n($d'_c$ numbers)", "blue")
    _arrow(ax, (4.45, yq), (5.0, yq))
    _box(ax, 6.35, yq, 2.7, 1.15, "q_up  $[W^{UQ}; W^{QR}]$\n$q^C_t$ (13),  $q^R_t$ = RoPE (14)\nper head", "blue")
    # key/value side, Eq. 9 and 15
    _box(ax, 3.2, yk, 2.5, 1.15, "kv_down  $[W^{DKV}; W^{KR}]$\nkv_norm on $c^{KV}_t$   (9)\n$k^R_t$ = RoPE (15)",
         "blue")
    _arrow(ax, (4.45, yk), (4.9, yk))
    _box(ax, 6.35, yk, 2.9, 1.6, "cache  (per token, per layer)\n\"c_kv\":  $c^{KV}_t$  ($d_c$)\n"
         "\"k_rope\":  $k^R_t$  ($d^R_h$)\none RoPE key for all heads", "gold", filled=0.35, lw=2.0)
    _note(ax, 6.35, 0.6, "only $d_c + d^R_h$ numbers per token are kept", "gold")
    if path == "naive":
        _box(ax, 10.0, yk, 2.9, 1.3, "kv_up  $[W^{UK}; W^{UV}]$  (10-11)\n$k^C_j, v^C_j$ for EVERY cached j,\n"
             "recomputed at every step", "red", filled=0.22)
        _arrow(ax, (7.8, yk), (8.55, yk))
        _box(ax, 10.0, yq - 0.35, 2.9, 1.75, "attention per head  (16-18)\n$q = [q^C; q^R]$,  $k = [k^C; k^R]$\n"
             "softmax$(q^\\top k / \\sqrt{d_h + d^R_h})$\nweights $\\times$ $v^C$", "purple")
        _arrow(ax, (7.7, yq), (8.55, yq))
        _arrow(ax, (10.0, yk + 0.65), (10.0, yq - 1.22))
        _arrow(ax, (11.45, yq - 0.35), (12.15, 3.3))
    else:
        _box(ax, 10.0, yq + 0.15, 2.9, 1.15, "absorb $W^{UK}$ into the query\nq_lat$_i = W^{UK\\top}_i q^C_{t,i}$\n"
             "($d_c$ numbers per head)", "green")
        _arrow(ax, (7.7, yq + 0.15), (8.55, yq + 0.15))
        _box(ax, 10.0, 2.85, 2.9, 1.35, "scores  (18)\nq_lat $\\cdot$ c_kv + $q^R \\cdot$ k_rope\n"
             "softmax over cached j", "purple")
        _arrow(ax, (10.0, yq - 0.43), (10.0, 3.53))
        _arrow(ax, (7.8, yk + 0.2), (8.55, 2.6))
        _box(ax, 10.0, 0.95, 2.9, 1.1, "o_lat$_i = \\Sigma_j\\, p_j\\, c^{KV}_j$\naverage the latents first", "green")
        _arrow(ax, (10.0, 2.17), (10.0, 1.5))
        _arrow(ax, (7.8, yk - 0.4), (8.55, 0.95))
        _arrow(ax, (11.45, 0.95), (12.15, 2.9))
    out_text = ("out  $W^O$  (19)\n$u_t = W^O [o_{t,1}; \\ldots]$" if path == "naive" else
                "$W^{UV}_i$ then out $W^O$\n(absorbed: one $d_c$\nvector per head)  (19)")
    _box(ax, 13.5, 3.3, 2.6, 1.45, out_text, "blue")
    _legend(ax, 0.2, 6.15, [("blue", "weights of MLA"), ("gold", "cached"),
                            ("red" if path == "naive" else "green",
                             "per step, for all cached tokens" if path == "naive" else "absorbed: per step, per query"),
                            ("purple", "attention")])
    return fig


def moe_layer_figure(n_shared: int = 1, n_routed: int = 8, top_k: int = 2, scoring: str = "sigmoid"):
    """One DeepSeekMoE layer for one token u_t (DeepSeek-V3 §2.1.2, Eq. 12-16; DeepSeekMoE §3.1-3.2).

    Names follow `course_lib.moe.MoE`: shared_experts (always on), experts (N_r routed), gate (the router, one
    centroid e_i per routed expert) and e_score_correction_bias b_i, which only steers WHICH experts are chosen
    (Eq. 16): the gating weights g come from the unbiased affinities s (Eq. 13-14). The chosen experts drawn are an
    example. scoring="softmax" draws V2's affinity (V2 §2.2.1, no bias) instead of V3's sigmoid.
    """
    for name, value, lo, hi in (("n_shared", n_shared, 0, 4), ("n_routed", n_routed, 2, 16)):
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise ValueError(f"{name} must be an int in {lo}..{hi} (what fits in the drawing), got {value!r}")
    if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= n_routed:
        raise ValueError(f"top_k must be an int in 1..n_routed={n_routed}, got {top_k!r}")
    if scoring not in ("sigmoid", "softmax"):
        raise ValueError(f"scoring must be 'sigmoid' (V3) or 'softmax' (V2), got {scoring!r}")
    v3 = scoring == "sigmoid"
    fig, ax = _canvas(12.5, 6.0, 15.0, 7.2, f"DeepSeekMoE layer: {n_shared} shared + {n_routed} routed experts, "
                      f"top_k = {top_k}  (" + ("DeepSeek-V3 §2.1.2, Eq. 12-16)" if v3 else "DeepSeek-V2 §2.2)"))
    _box(ax, 0.8, 3.6, 1.3, 1.0, "$u_t$\ntoken (d)", "grey")
    # shared experts: every token, no gate
    xs = [4.6 + 1.9 * j for j in range(n_shared)]
    for j, x in enumerate(xs):
        _box(ax, x, 6.1, 1.7, 0.8, f"shared_experts\n$\\mathrm{{FFN}}^{{(s)}}_{{{j + 1}}}$", "teal")
    if n_shared:
        _arrow(ax, (1.1, 4.12), (xs[0] - 0.9, 6.1))
        _note(ax, xs[-1] + 1.0, 6.35, "always on, weight 1", "teal", ha="left")
    # the router chain
    _box(ax, 3.3, 3.6, 1.9, 1.0, "gate (router)\n$u_t^\\top e_i$", "purple")
    _arrow(ax, (1.45, 3.6), (2.35, 3.6))
    _box(ax, 5.9, 3.6, 2.5, 1.0, ("$s_{i,t}$ = Sigmoid$(u_t^\\top e_i)$\n(15)" if v3 else
                                  "$s_{i,t}$ = Softmax$_i(u_t^\\top e_i)$\n(V2 §2.2.1)"), "purple")
    _arrow(ax, (4.25, 3.6), (4.65, 3.6))
    sel = "top_k of  $s_{i,t} + b_i$\n(16)" if v3 else "top_k of  $s_{i,t}$"
    _box(ax, 8.7, 3.6, 2.3, 1.0, sel, "purple")
    _arrow(ax, (7.15, 3.6), (7.55, 3.6))
    if v3:
        _box(ax, 8.7, 5.05, 2.9, 0.85, "e_score_correction_bias $b_i$\nselection only (bias_update)", "gold",
             filled=0.35)
        _arrow(ax, (8.7, 4.62), (8.7, 4.1))
    gating = ("$g_{i,t} = s_{i,t}\\,/\\,\\Sigma_j\\, s_{j,t}$\nuses s, not s + b  (13-14)" if v3 else
              "$g_{i,t} = s_{i,t}$ for the chosen\n(V2 §2.2.1)")
    _box(ax, 11.6, 3.6, 2.7, 1.0, gating, "purple")
    _arrow(ax, (9.85, 3.6), (10.25, 3.6))
    _arrow(ax, (6.6, 3.1), (10.6, 3.15), colour="purple", ls="--", rad=0.25)
    # the routed experts: chosen ones coloured (an example choice, spread over the row)
    w = min(1.05, 10.4 / n_routed - 0.12)
    xr = [2.6 + (10.4 / n_routed) * (i + 0.5) for i in range(n_routed)]
    chosen = {round((i + 0.5) * n_routed / top_k - 0.5) for i in range(top_k)}
    for i, x in enumerate(xr):
        label = f"experts[{i}]" if n_routed <= 6 else f"$E_{{{i + 1}}}$"
        _box(ax, x, 1.2, w, 0.7, label, "orange" if i in chosen else "grey", filled=0.35 if i in chosen else 0.08,
             fontsize=8 if n_routed <= 10 else 7)
    for i in sorted(chosen):
        _arrow(ax, (8.7, 3.1), (xr[i], 1.6), colour="orange", ls="--")
    _note(ax, 7.8, 0.35, f"experts: {n_routed} routed $\\mathrm{{FFN}}^{{(r)}}_i$; only the top_k = {top_k} chosen "
          "for this token run (orange)", "orange")
    _arrow(ax, (0.8, 3.1), (xr[0] - w / 2, 1.2))
    # combine, Eq. 12
    _box(ax, 14.0, 2.2, 1.8, 1.6, "$h'_t = u_t$\n" + ("$+\\ \\Sigma$ shared\n" if n_shared else "")
         + "$+\\ \\Sigma\\, g_{i,t}$ routed\n(12)", "blue")
    _arrow(ax, (11.6, 3.1), (13.1, 2.5))
    _arrow(ax, (xr[-1] + w / 2, 1.2), (13.1, 1.9))
    if n_shared:
        ax.plot([xs[-1] + 0.9, 14.0], [6.1, 6.1], color=_INK, lw=1.2)
        _arrow(ax, (14.0, 6.1), (14.0, 3.05))
    return fig


def mtp_chain_figure(depth: int = 2):
    """The main model and `depth` sequential MTP modules (DeepSeek-V3 §2.2, Figure 3, Eq. 21-25; redrawn).

    Names follow `course_lib.mtp.MTPModule`: hnorm and enorm (the two RMSNorms), proj (M_k), block (TRM_k), and the
    embedding and output head shared with the main model (the same tensors: teal). Module k at position i combines
    h^{k-1}_i from the previous depth with the embedding of t_{i+k} and predicts t_{i+k+1}.
    """
    if isinstance(depth, bool) or not isinstance(depth, int) or not 1 <= depth <= 3:
        raise ValueError(f"depth must be an int in 1..3 (V3 uses 1), got {depth!r}")
    dx = 3.7
    xmax = 3.4 + dx * depth
    fig, ax = _canvas(min(3.9 + 3.0 * depth, 12.5), 6.2, xmax, 7.6,
                      "Main model + sequential MTP modules (DeepSeek-V3 §2.2, Figure 3, Eq. 21-25)\n"
                      "$L = L_{Main} + (\\lambda / D)\\, \\Sigma_k\\, L^k_{MTP}$  (25)")
    x0 = 1.7
    _note(ax, x0, 0.55, "input $t_i$", fontsize=8.5)
    _box(ax, x0, 1.55, 2.6, 0.8, "embed  Emb  (shared)", "teal")
    _box(ax, x0, 3.6, 2.6, 2.2, "main model\nn_layers blocks\n(MLA + MoE)", "blue")
    _box(ax, x0, 5.85, 2.6, 0.8, "norm, head  (shared)", "teal")
    _note(ax, x0, 6.9, "predicts $t_{i+1}$\n$L_{Main}$", "blue", fontsize=8.5)
    _arrow(ax, (x0, 0.8), (x0, 1.15))
    _arrow(ax, (x0, 1.95), (x0, 2.5))
    _arrow(ax, (x0, 4.7), (x0, 5.45))
    _arrow(ax, (x0, 6.25), (x0, 6.5))
    prev_out = (x0 + 1.3, 4.3)
    for k in range(1, depth + 1):
        x = x0 + dx * k
        _note(ax, x, 0.55, f"input $t_{{i+{k}}}$ ({k} ahead)", fontsize=8.5)
        _box(ax, x, 1.55, 2.6, 0.8, "embed  Emb  (shared)", "teal")
        _box(ax, x - 0.7, 2.75, 1.2, 0.7, "hnorm", "green")
        _box(ax, x + 0.7, 2.75, 1.2, 0.7, "enorm", "green")
        _box(ax, x, 3.85, 2.6, 0.8, f"proj  $M_{k}$ [ ; ]  (21)", "green")
        _box(ax, x, 4.85, 2.6, 0.8, f"block  $TRM_{k}$  (22)", "green")
        _box(ax, x, 5.85, 2.6, 0.8, "norm, head  (shared)  (23)", "teal")
        _note(ax, x, 6.9, f"predicts $t_{{i+{k + 1}}}$\n$L^{k}_{{MTP}}$  (24)", "green", fontsize=8.5)
        _arrow(ax, (x, 0.8), (x, 1.15))
        _arrow(ax, (x + 0.7, 1.95), (x + 0.7, 2.4))
        _arrow(ax, (x - 0.7, 3.1), (x - 0.45, 3.45))
        _arrow(ax, (x + 0.7, 3.1), (x + 0.45, 3.45))
        _arrow(ax, (x, 4.25), (x, 4.45))
        _arrow(ax, (x, 5.25), (x, 5.45))
        _arrow(ax, (x, 6.25), (x, 6.5))
        # h^{k-1}_i enters from the left: the causal chain between depths
        _arrow(ax, prev_out, (x - 1.3, 2.75), colour="green")
        _note(ax, (prev_out[0] + x - 1.3) / 2 + 0.05, (prev_out[1] + 2.75) / 2 + 0.35, f"$h^{{{k - 1}}}_i$",
              "green", fontsize=9, ha="left")
        prev_out = (x + 1.3, 4.85)
    _legend(ax, 0.3, 7.45 - 0.0, [("teal", "shared with the main model"), ("green", "MTPModule's own")])
    return fig


# the reduction written on the diagram for each of course_lib.grpo.LOSS_TYPES (see grpo.aggregate)
GRPO_REDUCTIONS = {
    "grpo": "$(1/G)\\, \\Sigma_i\\, (1/|o_i|)\\, \\Sigma_t\\, l_{i,t}$  (3)",
    "bnpo": "$\\Sigma_{i,t}\\, l_{i,t}\\, /\\, \\Sigma_i |o_i|$  (TRL)",
    "dapo": "$\\Sigma_{i,t}\\, l_{i,t}\\, /\\, \\Sigma_i |o_i|$  (DAPO Eq. 8)",
    "dr_grpo": "$\\Sigma_{i,t}\\, l_{i,t}\\, /\\, (G\\, L)$  (Dr. GRPO)",
}


def grpo_figure(rewards=None, group_size: int = 4, loss_type: str = "grpo", kl: bool = True):
    """GRPO for one question: group -> rewards -> advantages -> loss (DeepSeekMath §4.1, Eq. 3-4; R1 §2.2).

    Boxes are named after `course_lib.grpo`: group_advantages, clipped_surrogate, kl_k3, aggregate(loss_type).
    `rewards` (one per sample, at least 2) writes real numbers on the diagram, the advantages computed by
    grpo.group_advantages; without it the group has `group_size` symbolic samples. kl=False drops the KL term
    (beta = 0, as DAPO and Dr. GRPO do).
    """
    if rewards is not None:
        rewards = [float(r) for r in rewards]
        if not 2 <= len(rewards) <= 8:
            raise ValueError(f"rewards must hold 2..8 numbers (one per sample of the group), got {len(rewards)}")
        group_size = len(rewards)
    elif isinstance(group_size, bool) or not isinstance(group_size, int) or not 2 <= group_size <= 8:
        raise ValueError(f"group_size must be an int in 2..8 (a group needs 2 samples for a baseline), got "
                         f"{group_size!r}")
    if loss_type not in GRPO_REDUCTIONS:
        raise ValueError(f"loss_type must be one of {tuple(GRPO_REDUCTIONS)}, got {loss_type!r}")
    G = group_size
    fig, ax = _canvas(12.5, 5.4, 15.0, 6.8, "GRPO on one question: a group of samples, its own baseline, one loss\n"
                      "(DeepSeekMath §4.1, Eq. 3-4; DeepSeek-R1 §2.2)")
    ymid, span = 3.3, min(4.4, 0.75 * G)
    ys = [ymid + span / 2 - span * i / (G - 1) for i in range(G)]
    h = min(0.55, span / (G - 1) - 0.12)
    _box(ax, 0.55, ymid, 0.8, 0.7, "q", "grey")
    _box(ax, 2.2, ymid, 1.9, 1.1, "policy\n$\\pi_{\\theta_{old}}$\nsamples G", "orange")
    _arrow(ax, (0.95, ymid), (1.25, ymid))
    adv = None
    if rewards is not None:
        from course_lib.grpo import group_advantages
        adv = group_advantages(rewards, G).tolist()
    for i, y in enumerate(ys):
        _box(ax, 4.0, y, 0.9, h, f"$o_{{{i + 1}}}$", "grey", filled=0.1)
        _arrow(ax, (3.15, ymid), (3.55, y))
        _box(ax, 5.6, y, 1.3, h, f"$r_{{{i + 1}}}$" + (f" = {rewards[i]:g}" if rewards else ""), "gold")
        _arrow(ax, (4.45, y), (4.95, y))
        _box(ax, 10.45, y, 1.5, h, f"$A_{{{i + 1}}}$" + (f" = {adv[i]:+.2f}" if adv else ""), "purple")
        _arrow(ax, (9.45, ymid), (9.7, y))
    _note(ax, 5.6, ys[0] + h / 2 + 0.45, "rule rewards\naccuracy + format", "gold", fontsize=8)
    _box(ax, 8.0, ymid, 2.9, 1.6, "group_advantages\n$A_i = (r_i - mean(r))\\, /\\, std(r)$\n"
         "(DeepSeekMath §4.1.2)", "purple")
    for y in ys:
        _arrow(ax, (6.25, y), (6.55, ymid))
    _note(ax, 8.0, ymid - 1.3, "group mean = baseline\n(no value model)", "purple", fontsize=8)
    # the loss, per token, then reduced
    xl = 13.2
    _box(ax, xl, 5.2, 3.2, 1.05, "clipped_surrogate  (3)\n"
         "$\\min(\\rho_{i,t} A_i,\\ clip(\\rho_{i,t}, 1\\pm\\epsilon) A_i)$", "orange")
    _arrow(ax, (11.2, ys[0]), (11.6, 5.0))
    if kl:
        _box(ax, xl - 0.3, 3.55, 2.6, 1.05, "kl_k3  (4), times $\\beta$\n"
             "$\\pi_{ref} / \\pi_\\theta - \\log(\\pi_{ref} / \\pi_\\theta) - 1$", "blue")
        _arrow(ax, (xl - 1.0, 4.08), (xl - 1.0, 4.67), colour="blue")
        _note(ax, xl - 0.9, 4.37, "$- \\beta\\, D_{KL}$", "blue", fontsize=8, ha="left")
    _box(ax, xl, 1.6, 3.2, 1.15, f"aggregate  ({loss_type})\n{GRPO_REDUCTIONS[loss_type]}", "red")
    _arrow(ax, (xl + 1.35, 4.67), (xl + 1.35, 2.18))
    _note(ax, xl + 1.42, 3.55 if not kl else 2.6, "$l_{i,t}$", fontsize=9, ha="left")
    # the gradient goes back into the policy
    ax.set_ylim(-0.6, 6.8)
    _arrow(ax, (xl - 1.6, 1.2), (2.2, ymid - 0.6), colour="red", rad=-0.3, ls="--")
    _note(ax, 7.0, -0.35, "loss = -J: its gradient updates $\\pi_\\theta$ (every token of $o_i$ shares $A_i$)", "red",
          fontsize=8.5)
    return fig
