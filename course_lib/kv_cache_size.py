"""KV-cache calculator: elements and bytes per token for MHA, GQA, MQA and MLA, for real models and as GB curves.

DeepSeek-V2 (arXiv 2405.04434) §2.1.4, Table 1 — cached elements per token, l layers:
    MHA 2 n_h d_h l      GQA 2 n_g d_h l      MQA 2 d_h l      MLA (d_c + d^R_h) l  (= 9/2 d_h l at V2's ratios)
Elements are counted regardless of storage precision; bytes = elements * bytes per element.
"""
from __future__ import annotations

from dataclasses import dataclass

from course_lib import configs
from course_lib.kit.validate import one_of, positive_int

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
        one_of("kind", self.kind, KINDS)
        for field in ("n_layers", "n_heads", "head_dim"):
            positive_int(field, getattr(self, field))
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
    positive_int("context", context)
    positive_int("batch", batch)
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
    return PRESETS[one_of("preset", name, sorted(PRESETS))]


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

    from course_lib.kit.style import COLORS

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


# --------------------------------------------------------------------------------------------- sparse attention
# DeepSeek-V3.2 (DSA, arXiv 2512.02556 §2.1) and DeepSeek-V4 (CSA + HCA + sliding window, V4 report §2.3);
# configurations in course_lib.configs_v4. Counted per sequence, one decode step at `context` tokens.
#
# Cache per layer at context S (elements; the buffers of an unfinished window, < m tokens, are left out):
#   MLA (dense V3.2 = V3.1)  S (d_c + d^R_h)
#   DSA (V3.2)               S (d_c + d^R_h) + S d^I                       (the indexer keeps one key per token)
#   V4 sliding layer         min(S, n_win) c
#   V4 CSA layer             min(S, n_win) c + (S // m) (c + d^I)          (compressed entries + indexer keys)
#   V4 HCA layer             min(S, n_win) c + (S // m') c
# Attention FLOPs of one new token per layer (2 per multiply-add; the projections do not depend on S and are
# counted once as 2 x activated parameters, the usual estimate):
#   MLA absorbed             2 n_h S (2 d_c + d^R_h)                        (scores in latent space + the latent sum)
#   DSA                      2 H^I S (d^I + 1)  +  2 n_h min(k, S) (2 d_c + d^R_h)
#   V4 window                2 n_h min(S, n_win) 2c                         (scores + values, c each; key = value)
#   V4 CSA                   + 2 H^I N (d^I + 1) + 2 n_h min(k, N) 2c,  N = S // m
#   V4 HCA                   + 2 n_h N 2c,  N = S // m'
# Storage: "bf16" counts 2 bytes for every element. "fp8" is DeepSeek's deployed low-precision format, scales left
# out: non-RoPE features in FP8 (1 byte), RoPE features in BF16; V3.2's indexer keys in FP8 (its cache is 512 + 16
# + 2 * 64 = 656 bytes per token and layer with 16 bytes of scales, FlashMLA README, "FP8 KV cache"), V4's in FP4
# (half a byte: V4 report §2.3.4, BF16 RoPE + FP8 rest, the indexer in FP4; §5.2.1, its query-key path cached in FP4).
SPARSE_STORAGE = {"bf16": {"nope": 2.0, "rope": 2.0, "index": 2.0, "v4_index": 2.0},
                  "fp8": {"nope": 1.0, "rope": 2.0, "index": 1.0, "v4_index": 0.5}}


def _storage(storage: str) -> dict:
    return SPARSE_STORAGE[one_of("storage", storage, sorted(SPARSE_STORAGE))]


def _context(context) -> int:
    return positive_int("context", context)


def sparse_cache_bytes(model, context: int, storage: str = "bf16", dense: bool = False) -> float:
    """KV-cache bytes of one sequence of `context` tokens for a configs_v4 model (all layers).

    dense=True for a DSAModel: the same MLA without the indexer (V3.1-Terminus, what V3.2 was trained from)."""
    from course_lib.configs_v4 import DSAModel, V4Model
    S, b = _context(context), _storage(storage)
    if isinstance(model, DSAModel):
        per_layer = S * (model.kv_lora_rank * b["nope"] + model.rope_dim * b["rope"])
        if not dense:
            per_layer += S * model.index_head_dim * b["index"]
        return per_layer * model.n_layers
    if not isinstance(model, V4Model):
        raise ValueError(f"model must be a configs_v4.DSAModel or V4Model, got {type(model).__name__}")
    entry = (model.head_dim - model.rope_dim) * b["nope"] + model.rope_dim * b["rope"]
    total = 0.0
    for ratio in model.layer_ratios:
        total += min(S, model.window) * entry
        if ratio == model.csa_rate:
            total += (S // ratio) * (entry + model.index_head_dim * b["v4_index"])
        elif ratio:
            total += (S // ratio) * entry
    return total


def sparse_attention_flops(model, context: int, dense: bool = False) -> float:
    """Attention FLOPs (all layers) of decoding one token that sees `context` tokens (itself included)."""
    from course_lib.configs_v4 import DSAModel, V4Model
    S = _context(context)
    if isinstance(model, DSAModel):
        per_query = 2 * model.n_heads * (2 * model.kv_lora_rank + model.rope_dim)
        if dense:
            return per_query * S * model.n_layers
        indexer = 2 * model.index_n_heads * S * (model.index_head_dim + 1)
        return (indexer + per_query * min(model.index_topk, S)) * model.n_layers
    if not isinstance(model, V4Model):
        raise ValueError(f"model must be a configs_v4.DSAModel or V4Model, got {type(model).__name__}")
    per_key = 2 * model.n_heads * 2 * model.head_dim
    total = 0.0
    for ratio in model.layer_ratios:
        total += per_key * min(S, model.window)
        if ratio == model.csa_rate:
            n = S // ratio
            total += 2 * model.index_n_heads * n * (model.index_head_dim + 1) + per_key * min(model.index_topk, n)
        elif ratio:
            total += per_key * (S // ratio)
    return total


def sparse_token_flops(model, context: int, dense: bool = False) -> float:
    """FLOPs of one decoded token: 2 x activated parameters (projections, experts) + attention at `context`."""
    return 2 * model.activated_params * 1e9 + sparse_attention_flops(model, context, dense)


def v4_vs_v32(context: int = 2 ** 20, storage: str = "fp8") -> dict:
    """V4-Flash and V4-Pro against V3.2 at `context`: ratios of single-token FLOPs and of KV cache.

    The V4 report's headline (abstract, Figure 1): at 1M tokens V4-Pro needs about 27% of V3.2's single-token
    FLOPs and 10% of its KV cache (V4-Flash: about 10% and 7%)."""
    from course_lib.configs_v4 import DEEPSEEK_V32, DEEPSEEK_V4_FLASH, DEEPSEEK_V4_PRO
    base_f, base_c = sparse_token_flops(DEEPSEEK_V32, context), sparse_cache_bytes(DEEPSEEK_V32, context, storage)
    return {m.name: {"flops": sparse_token_flops(m, context) / base_f,
                     "cache": sparse_cache_bytes(m, context, storage) / base_c}
            for m in (DEEPSEEK_V4_FLASH, DEEPSEEK_V4_PRO)}


SPARSE_CONTEXTS = tuple(2 ** p for p in range(12, 21))          # 4K .. 1M
# The widget's choices: which models to draw.
SPARSE_MODEL_SETS = {"V3.2, V4-Flash, V4-Pro": ("DeepSeek-V3.2", "DeepSeek-V4-Flash", "DeepSeek-V4-Pro"),
                     "V3.2 vs V4-Pro": ("DeepSeek-V3.2", "DeepSeek-V4-Pro"),
                     "V3.2 vs V4-Flash": ("DeepSeek-V3.2", "DeepSeek-V4-Flash")}


def plot_sparse_curves(models=("DeepSeek-V3.2", "DeepSeek-V4-Flash", "DeepSeek-V4-Pro"), context: int = 2 ** 20,
                       storage: str = "fp8", dense_v32: bool = True):
    """Pure function behind notebook 07's widget: KV cache (GB, one sequence) and single-token FLOPs against
    context (4K .. 1M) for the chosen models (names, or a key of SPARSE_MODEL_SETS), a marker at `context`,
    ratios to V3.2 in the title. Returns the Figure."""
    import matplotlib.pyplot as plt

    from course_lib.configs_v4 import DEEPSEEK_V32, MODELS
    from course_lib.kit.style import COLORS

    if isinstance(models, str):
        models = SPARSE_MODEL_SETS.get(models, (models,))
    if not models:
        raise ValueError("models must name at least one model")
    for name in models:
        if name not in MODELS:
            raise ValueError(f"models must be among {sorted(MODELS)}, got {name!r}")
    _context(context)
    curves = [(name, MODELS[name], False) for name in models]
    if dense_v32:
        curves.insert(0, ("V3.2 run dense (MLA)", DEEPSEEK_V32, True))
    colors = [COLORS[c] for c in ("grey", "blue", "orange", "purple", "red")]
    xs = sorted(set(SPARSE_CONTEXTS) | {context})
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8), layout="constrained")
    for (label, model, dense), color in zip(curves, colors):
        ls = "--" if dense else "-"
        ax1.plot(xs, [sparse_cache_bytes(model, s, storage, dense) / 1e9 for s in xs], ls, color=color, label=label)
        ax2.plot(xs, [sparse_token_flops(model, s, dense) / 1e9 for s in xs], ls, color=color, label=label)
        ax1.plot([context], [sparse_cache_bytes(model, context, storage, dense) / 1e9], "o", color=color)
        ax2.plot([context], [sparse_token_flops(model, context, dense) / 1e9], "o", color=color)
    for ax, ylabel in ((ax1, f"KV cache of one sequence (GB, {storage})"), (ax2, "GFLOPs per decoded token")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("context (tokens)")
        ax.set_ylabel(ylabel)
        ax.axvline(context, color=COLORS["grey"], lw=0.8, ls=":")
    ax1.legend(fontsize=8)
    parts = []
    for name in models:
        if name != DEEPSEEK_V32.name:
            f = sparse_token_flops(MODELS[name], context) / sparse_token_flops(DEEPSEEK_V32, context)
            c = sparse_cache_bytes(MODELS[name], context, storage) / sparse_cache_bytes(DEEPSEEK_V32, context, storage)
            parts.append(f"{name}: {100 * f:.0f}% FLOPs, {100 * c:.0f}% cache")
    fig.suptitle(f"at {context:,} tokens vs V3.2: " + ("; ".join(parts) if parts else "pick a V4 model"), fontsize=10)
    return fig
