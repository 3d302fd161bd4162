"""Diagrams drawn in code: the DeepSeek-V3 -> R1 -> distilled pipeline with the notebook that teaches each piece.

Stages follow the DeepSeek-R1 paper (arXiv 2501.12948): §2.2 R1-Zero (pure RL from V3-Base), §2.3 R1 (cold-start SFT,
reasoning RL, rejection sampling + SFT, RL for all scenarios), §2.4 distillation into Qwen2.5 / Llama students.
"""
from __future__ import annotations

import matplotlib.pyplot as plt
from matplotlib.patches import FancyBboxPatch

from .style import COLORS

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
