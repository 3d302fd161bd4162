"""KV-cache calculator: elements and bytes per token for MHA, GQA, MQA and MLA, for real models and as GB curves.

DeepSeek-V2 (arXiv 2405.04434) §2.1.4, Table 1 — cached elements per token, l layers:
    MHA 2 n_h d_h l      GQA 2 n_g d_h l      MQA 2 d_h l      MLA (d_c + d^R_h) l  (= 9/2 d_h l at V2's ratios)
Elements are counted regardless of storage precision; bytes = elements * bytes per element.
"""
from __future__ import annotations

from dataclasses import dataclass

from . import configs

KINDS = ("mha", "gqa", "mqa", "mla")

# Bytes per cached element. "6-bit" is V2's deployed KV-cache quantisation, 6 bits on average (V2 §3.2.3).
DTYPE_BYTES = {"fp32": 4.0, "bf16": 2.0, "fp16": 2.0, "fp8": 1.0, "6-bit": 0.75}

# Memory of common accelerators, GB (10^9 bytes), as reference lines on the plots (vendor spec sheets).
GPU_MEMORY_GB = {"RTX 4090 (24 GB)": 24, "A100 / H100 (80 GB)": 80, "H200 (141 GB)": 141}


@dataclass(frozen=True)
class AttentionShape:
    """What decides a model's KV cache. For MLA, n_kv_heads is unused; kv_lora_rank and rope_dim are required."""
    name: str
    kind: str                       # one of KINDS
    n_layers: int
    n_heads: int
    head_dim: int
    n_kv_heads: int | None = None   # n_g for GQA (n_h for MHA, 1 for MQA)
    kv_lora_rank: int | None = None  # d_c
    rope_dim: int | None = None      # d^R_h
    source: str = ""

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        for field in ("n_layers", "n_heads", "head_dim"):
            value = getattr(self, field)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"{field} must be a positive int, got {value!r}")
        if self.kind == "gqa" and not (isinstance(self.n_kv_heads, int) and 0 < self.n_kv_heads
                                       and self.n_heads % self.n_kv_heads == 0):
            raise ValueError(f"n_kv_heads must be a positive divisor of n_heads={self.n_heads}, "
                             f"got {self.n_kv_heads!r}")
        if self.kind == "mla":
            for field in ("kv_lora_rank", "rope_dim"):
                value = getattr(self, field)
                if not isinstance(value, int) or value <= 0:
                    raise ValueError(f"{field} must be a positive int for MLA, got {value!r}")


def elements_per_token_per_layer(shape: AttentionShape) -> int:
    """V2 Table 1 without the factor l."""
    if shape.kind == "mha":
        return 2 * shape.n_heads * shape.head_dim           # a key and a value per head
    if shape.kind == "gqa":
        return 2 * shape.n_kv_heads * shape.head_dim        # a key and a value per group
    if shape.kind == "mqa":
        return 2 * shape.head_dim                           # one key and one value for all heads
    return shape.kv_lora_rank + shape.rope_dim              # the latent c^KV and the shared rope key k^R


def elements_per_token(shape: AttentionShape) -> int:
    return elements_per_token_per_layer(shape) * shape.n_layers


def _dtype_bytes(dtype) -> float:
    if isinstance(dtype, str):
        if dtype not in DTYPE_BYTES:
            raise ValueError(f"dtype must be one of {sorted(DTYPE_BYTES)} or a positive number of bytes, got {dtype!r}")
        return DTYPE_BYTES[dtype]
    if isinstance(dtype, bool) or not isinstance(dtype, (int, float)) or dtype <= 0:
        raise ValueError(f"dtype must be one of {sorted(DTYPE_BYTES)} or a positive number of bytes, got {dtype!r}")
    return float(dtype)


def bytes_per_token(shape: AttentionShape, dtype="bf16") -> float:
    return elements_per_token(shape) * _dtype_bytes(dtype)


def cache_gb(shape: AttentionShape, context: int, batch: int = 1, dtype="bf16") -> float:
    """Cache for `batch` sequences of `context` tokens, in GB (10^9 bytes)."""
    if not isinstance(context, int) or context <= 0:
        raise ValueError(f"context must be a positive int, got {context!r}")
    if not isinstance(batch, int) or batch <= 0:
        raise ValueError(f"batch must be a positive int, got {batch!r}")
    return bytes_per_token(shape, dtype) * context * batch / 1e9


def gqa_equivalent_groups(shape: AttentionShape) -> float:
    """How many GQA groups cache as much as this model: elements / (2 d_h). V2: (512 + 64) / 256 = 2.25."""
    return elements_per_token_per_layer(shape) / (2 * shape.head_dim)


def variants(shape: AttentionShape, n_groups: int = 8) -> dict:
    """The same layer count, heads and head size with each attention kind (MLA at V2's ratios d_c = 4 d_h,
    d^R_h = d_h / 2 unless the model already is MLA), keyed by a label. As in V2 Table 1, keys and values of
    the MHA/GQA/MQA variants have size d_h (an MLA model's d_h is its qk_nope_head_dim)."""
    common = dict(n_layers=shape.n_layers, n_heads=shape.n_heads, head_dim=shape.head_dim)
    if shape.kind == "mla":
        d_c, d_r = shape.kv_lora_rank, shape.rope_dim
    else:
        d_c, d_r = 4 * shape.head_dim, shape.head_dim // 2
    groups = min(n_groups, shape.n_heads)
    return {
        "MHA": AttentionShape(f"{shape.name} as MHA", "mha", **common),
        f"GQA ({groups} groups)": AttentionShape(f"{shape.name} as GQA", "gqa", n_kv_heads=groups, **common),
        "MQA": AttentionShape(f"{shape.name} as MQA", "mqa", **common),
        "MLA": AttentionShape(f"{shape.name} as MLA", "mla", kv_lora_rank=d_c, rope_dim=d_r, **common),
    }


def v2_table1(n_heads: int, head_dim: int, n_layers: int, n_groups: int) -> dict:
    """V2 Table 1 evaluated at one shape, with V2's MLA ratios (d_c = 4 d_h, d^R_h = d_h / 2)."""
    base = AttentionShape("table 1", "mha", n_layers, n_heads, head_dim)
    v = variants(base, n_groups)
    return {label: elements_per_token(s) for label, s in v.items()}


# --------------------------------------------------------------------------------------------- real models
def from_deepseek(cfg: configs.DeepSeekConfig) -> AttentionShape:
    """MLA shape of a DeepSeek config; head_dim = d_h = qk_nope_head_dim (V2 §3.1.2)."""
    return AttentionShape(cfg.name, "mla", cfg.num_hidden_layers, cfg.num_attention_heads, cfg.qk_nope_head_dim,
                          kv_lora_rank=cfg.kv_lora_rank, rope_dim=cfg.qk_rope_head_dim, source=cfg.source)


PRESETS = {
    "DeepSeek-V3": from_deepseek(configs.DEEPSEEK_V3),
    "DeepSeek-V2": from_deepseek(configs.DEEPSEEK_V2),
    "DeepSeek-V2-Lite": from_deepseek(configs.DEEPSEEK_V2_LITE),
    # The dense model V2 is compared with (V2 §3.2.3): GQA, 8 KV heads.
    "DeepSeek-LLM-67B": AttentionShape("DeepSeek-LLM-67B", "gqa", 95, 64, 128, n_kv_heads=8,
                                       source="DeepSeek LLM, arXiv 2401.02954, Table 2"),
    "DeepSeek-LLM-7B": AttentionShape("DeepSeek-LLM-7B", "mha", 30, 32, 128,
                                      source="DeepSeek LLM, arXiv 2401.02954, Table 2"),
    "Llama-3-8B": AttentionShape("Llama-3-8B", "gqa", 32, 32, 128, n_kv_heads=8,
                                 source="The Llama 3 Herd of Models, arXiv 2407.21783, Table 3"),
    "Llama-3-70B": AttentionShape("Llama-3-70B", "gqa", 80, 64, 128, n_kv_heads=8,
                                  source="The Llama 3 Herd of Models, arXiv 2407.21783, Table 3"),
    "Llama-3.1-405B": AttentionShape("Llama-3.1-405B", "gqa", 126, 128, 128, n_kv_heads=8,
                                     source="The Llama 3 Herd of Models, arXiv 2407.21783, Table 3"),
    "Mistral-7B": AttentionShape("Mistral-7B", "gqa", 32, 32, 128, n_kv_heads=8,
                                 source="Mistral 7B, arXiv 2310.06825, Table 1"),
}


def get_preset(name: str) -> AttentionShape:
    if name not in PRESETS:
        raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {name!r}")
    return PRESETS[name]


def per_token_table(dtype="bf16") -> list[tuple]:
    """Rows (model, kind, elements/token, KiB/token) for every preset."""
    return [(name, s.kind.upper(), elements_per_token(s), bytes_per_token(s, dtype) / 1024)
            for name, s in PRESETS.items()]


def v2_vs_67b_reduction(v2_bytes_per_element: float = 0.75, baseline_bytes_per_element: float = 2.0) -> float:
    """Fraction of KV cache saved by deployed V2 against DeepSeek 67B.

    V2 reports 93.3% (abstract, §3.2.3) without showing the arithmetic. Counting elements alone gives
    1 - 34560/194560 = 82.2%; with V2's cache stored at 6 bits on average (§3.2.3) against a 16-bit cache for 67B,
    the ratio becomes 93.3%. This is our reconstruction of how the figure arises, not a formula from the paper.
    """
    v2, llm67 = PRESETS["DeepSeek-V2"], PRESETS["DeepSeek-LLM-67B"]
    return 1 - bytes_per_token(v2, v2_bytes_per_element) / bytes_per_token(llm67, baseline_bytes_per_element)


# --------------------------------------------------------------------------------------------- the widget's figure
def plot_cache_sizes(context: int = 32768, batch: int = 8, dtype: str = "bf16", preset: str = "DeepSeek-V3",
                     n_groups: int = 8):
    """Pure function behind notebook 03's widget: cache GB for each attention kind at one model's shape,
    with common GPU memory sizes as reference lines. Returns the Figure."""
    import matplotlib.pyplot as plt

    from .style import COLORS

    shape = get_preset(preset)
    sizes = {label: cache_gb(s, context, batch, dtype) for label, s in variants(shape, n_groups).items()}
    fig, ax = plt.subplots(figsize=(7.0, 3.6), layout="constrained")
    labels = list(sizes)
    colors = [COLORS[c] for c in ("grey", "orange", "purple", "blue")]
    bars = ax.bar(labels, [sizes[k] for k in labels], color=colors)
    for bar, label in zip(bars, labels):
        ax.annotate(f"{sizes[label]:,.1f} GB", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                    ha="center", va="bottom", fontsize=9)
    for gpu, gb in GPU_MEMORY_GB.items():
        ax.axhline(gb, color=COLORS["red"], lw=0.8, ls="--", alpha=0.7)
        ax.annotate(gpu, (len(labels) - 0.5, gb), ha="right", va="bottom", fontsize=8, color=COLORS["red"])
    ax.set_yscale("log")
    ax.set_ylabel("KV cache (GB, log scale)")
    ax.set_title(f"{preset} shape: {batch} x {context:,} tokens, {dtype}")
    return fig
