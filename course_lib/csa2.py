"""CSA2, DeepSeek-V4.1's attention: V4's compressed sparse attention with the compressed cache shared across layers.

Sources: the released DeepSeek-V4.1-Flash configuration and inference code (huggingface.co/deepseek-ai/
DeepSeek-V4.1-Flash, revision df42c109), read through NVIDIA-NeMo/Automodel's port
nemo_automodel/components/models/deepseek_v41/ (config.py, attention.py, quantization.py). Every formula below cites the
port's function; the port calls itself a numerical copy of the released inference/model.py.

What changes from V4's CSA/HCA (course_lib.v4_attention):
  * compression is r-to-1 softmax pooling without overlap (ratio 2 in layers 2-19, ratio 1 = a per-token
    projection in layers 20-39), instead of V4's overlapping m = 4 CSA and m' = 128 HCA;
  * three modes per layer. Full: the layer owns a compressor and the indexer's key projection, writes compressed KV
    and index keys, and selects top-k. Reindex: reads them and only re-scores with its own index queries. Reuse:
    reads the compressed KV and the last top-k unchanged. Only 4 of V4.1-Flash's 38 compressed layers write a cache;
  * hierarchical selection: the candidate-source layer (20) keeps the best blocks of 8 compressed positions, and
    every later index layer scores only inside those candidates;
  * storage: window KV FP8 (ue8m0 scale per 32), compressed KV NVFP4 (E4M3 scale per 16), index keys MXFP4 (E8M0
    scale per 32): quantization.py quantize_cache, called from attention.py with block sizes 32 / 16 / 32.
The transformers DeepSeek-V4 modules have no V4.1 layer and the NeMo port needs TileLang/CUDA and a 552B config, so
the tests check these functions against the released code's equations on hand-worked cases.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from course_lib.kit.validate import positive_int

MODES = ("window", "full", "reindex", "reuse")


def _ids(name, ids, n_layers):
    ids = tuple(ids)
    if any(isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < n_layers for i in ids) \
            or list(ids) != sorted(set(ids)):
        raise ValueError(f"{name} must be strictly increasing layer ids in [0, {n_layers}), got {ids!r}")
    return ids


@dataclass(frozen=True)
class CSA2Layout:
    """Which layer compresses, indexes and reuses. config.py DeepseekV41TextConfig._validate_layer_schedule:
    every KV source is an index source; a window-only layer (ratio 0) is neither; a compressed layer reads the last
    KV source before it, which must have its ratio; the candidate source is a KV source."""
    name: str
    compress_ratios: tuple
    kv_sources: tuple
    index_sources: tuple
    candidate_source: int = -1          # -1: no hierarchical selection
    candidate_blocks: int = 2048        # candidate_topk_blocks
    candidate_block_size: int = 8
    index_topk: int = 512
    window: int = 128
    head_dim: int = 512
    n_heads: int = 64
    index_heads: int = 32
    index_head_dim: int = 128

    def __post_init__(self):
        n = len(self.compress_ratios)
        if n == 0 or any(isinstance(r, bool) or not isinstance(r, int) or r < 0 for r in self.compress_ratios):
            raise ValueError(f"compress_ratios must be non-negative ints, got {self.compress_ratios!r}")
        kv, ix = _ids("kv_sources", self.kv_sources, n), _ids("index_sources", self.index_sources, n)
        if not set(kv) <= set(ix):
            raise ValueError(f"kv_sources {kv} must all be index_sources {ix}")
        owner = None
        for i, r in enumerate(self.compress_ratios):
            if r == 0:
                if i in ix:
                    raise ValueError(f"index_sources: window-only layer {i} (ratio 0) cannot be a source")
                continue
            owner = i if i in kv else owner
            if owner is None or self.compress_ratios[owner] != r:
                raise ValueError(f"kv_sources: compressed layer {i} (ratio {r}) needs an earlier KV source of ratio {r}")
        if self.candidate_source != -1 and self.candidate_source not in kv:
            raise ValueError(f"candidate_source must be -1 or one of kv_sources {kv}, got {self.candidate_source!r}")
        for f in ("candidate_blocks", "candidate_block_size", "index_topk", "window", "head_dim", "n_heads",
                  "index_heads", "index_head_dim"):
            positive_int(f, getattr(self, f))

    @property
    def n_layers(self) -> int:
        return len(self.compress_ratios)

    def mode(self, layer: int) -> str:
        if not 0 <= layer < self.n_layers:
            raise ValueError(f"layer must be in [0, {self.n_layers}), got {layer!r}")
        if self.compress_ratios[layer] == 0:
            return "window"
        return "full" if layer in self.kv_sources else "reindex" if layer in self.index_sources else "reuse"

    def source(self, layer: int, of: str = "kv") -> int | None:
        """The layer whose compressed KV (of="kv") or top-k (of="index") this layer reads; None for window layers."""
        if self.mode(layer) == "window":
            return None
        pool = self.kv_sources if of == "kv" else self.index_sources
        return max(i for i in pool if i <= layer)

    def table(self) -> list[tuple]:
        """(layer, ratio, mode, reads compressed KV of, reads top-k of, scores only candidates?) per layer."""
        c = self.candidate_source
        return [(i, r, self.mode(i), self.source(i, "kv"), self.source(i, "index"),
                 self.mode(i) in ("full", "reindex") and 0 <= c < i) for i, r in enumerate(self.compress_ratios)]


# config.py defaults = the released Flash text_config (40 backbone layers; the 3 DSpark layers are left out).
V41_FLASH = CSA2Layout("DeepSeek-V4.1-Flash", (0, 0) + (2,) * 18 + (1,) * 20, kv_sources=(2, 8, 14, 20),
                       index_sources=(2, 8, 14, 20, 24, 28, 32, 36), candidate_source=20)

# Bytes per cached vector: FP8 window KV 512 + 512/32 scale bytes; NVFP4 compressed KV 512/2 + 512/16 E4M3 scales;
# MXFP4 index key 128/2 + 128/32 E8M0 scales (quantization.py quantize_cache, block sizes 32 / 16 / 32).
def entry_bytes(layout: CSA2Layout) -> dict:
    d, di = layout.head_dim, layout.index_head_dim
    return {"window": d + d / 32, "compressed": d / 2 + d / 16, "index": di / 2 + di / 32}


def cache_bytes(layout: CSA2Layout, context: int, shared: bool = True) -> float:
    """KV-cache bytes of one sequence. Every layer keeps its window (min(S, window) FP8 vectors); only KV sources
    keep S // ratio compressed vectors and index keys (shared=True, V4.1). shared=False: every compressed layer
    keeps its own, as V4 does."""
    positive_int("context", context)
    b = entry_bytes(layout)
    total = 0.0
    for i, r in enumerate(layout.compress_ratios):
        total += min(context, layout.window) * b["window"]
        if r and (i in layout.kv_sources or not shared):
            total += (context // r) * (b["compressed"] + b["index"])
    return total


def attention_flops(layout: CSA2Layout, context: int, hierarchical: bool = True) -> float:
    """Attention FLOPs of one decoded token at `context` (as kvcache.sparse_attention_flops counts V4): every layer
    attends to its window and, if compressed, to index_topk selected vectors (2 * n_heads * 2 * head_dim per key,
    K = V shared); index layers score 2 * index_heads * (index_head_dim + 1) per scored vector. Reuse layers score
    nothing. With hierarchical selection a layer after the candidate source scores only
    candidate_blocks * candidate_block_size vectors (attention.py _Indexer: scores masked to the candidates)."""
    b = cache_bytes(layout, context)  # validates context
    del b
    per_key = 2 * layout.n_heads * 2 * layout.head_dim
    per_score = 2 * layout.index_heads * (layout.index_head_dim + 1)
    cap = layout.candidate_blocks * layout.candidate_block_size
    total = 0.0
    for i, r in enumerate(layout.compress_ratios):
        total += per_key * min(context, layout.window)
        if not r:
            continue
        n = context // r
        total += per_key * min(layout.index_topk, n)
        if i in layout.index_sources:
            scored = min(n, cap) if hierarchical and 0 <= layout.candidate_source < i else n
            total += per_score * scored
    return total


def compare_v4_flash(contexts=tuple(2 ** p for p in range(12, 21))) -> list[dict]:
    """V4.1-Flash against V4-Flash from 4K to 1M tokens: cache bytes (V4 in the course's 'fp8' storage, scales left
    out; V4.1 in its released FP8/FP4 formats with scales) and attention FLOPs per decoded token."""
    from course_lib.configs_v4 import DEEPSEEK_V4_FLASH
    from course_lib.kv_cache_size import sparse_attention_flops, sparse_cache_bytes
    rows = []
    for S in contexts:
        rows.append({"context": S, "v4_cache": sparse_cache_bytes(DEEPSEEK_V4_FLASH, S, "fp8"),
                     "v41_cache": cache_bytes(V41_FLASH, S), "v41_cache_unshared": cache_bytes(V41_FLASH, S, False),
                     "v4_flops": sparse_attention_flops(DEEPSEEK_V4_FLASH, S), "v41_flops": attention_flops(V41_FLASH, S),
                     "v41_flops_flat": attention_flops(V41_FLASH, S, hierarchical=False)})
    return rows


# --------------------------------------------------------------------------------------------- the pieces, on tensors
def compress(x, wkv, wgate=None, ratio: int = 2):
    """attention.py _Compressor: for group j of `ratio` consecutive tokens
        c_j = sum_{i in j} softmax_i(W_gate x_i) * (W_kv x_i)     (softmax per channel over the group)
    ratio 1: c_i = W_kv x_i. A trailing partial group gives nothing. (The release then applies RMSNorm and RoPE.)"""
    positive_int("ratio", ratio)
    if ratio == 1:
        return x @ wkv.T
    if wgate is None:
        raise ValueError("wgate is required for ratio > 1")
    n = x.shape[-2] // ratio * ratio
    kv = (x[..., :n, :] @ wkv.T).unflatten(-2, (-1, ratio))
    gate = (x[..., :n, :] @ wgate.T).unflatten(-2, (-1, ratio))
    return (kv * gate.softmax(dim=-2)).sum(-2)


def index_scores(q, keys, weights, ratio: int, positions=None):
    """attention.py _Indexer: I[s, t] = sum_h w[s, h] * relu(q[s, h] . k[t]) for compressed vectors t that are
    complete before query s, t < (s + 1) // ratio (build_compressed_visibility); others -inf.
    q (S, H, D), keys (P, D), weights (S, H) (the release scales them by D^-1/2 H^-1/2 first)."""
    S, P = q.shape[0], keys.shape[0]
    pos = torch.arange(S, device=q.device) if positions is None else positions
    scores = (torch.einsum("shd,td->sht", q, keys).relu() * weights[..., None]).sum(1)
    visible = torch.arange(P, device=q.device)[None] < ((pos + 1) // ratio)[:, None]
    return scores.masked_fill(~visible, float("-inf"))


def candidate_blocks(scores, n_blocks: int, block_size: int, ratio: int, positions=None):
    """attention.py _select_candidate_blocks (the first level): a block of `block_size` compressed vectors scores its
    maximum; the block holding the query's newest visible vector is always kept; the best n_blocks are kept.
    Returns a (S, P) bool mask (False where nothing is visible)."""
    S, P = scores.shape
    pos = torch.arange(S, device=scores.device) if positions is None else positions
    blocks = F.pad(scores, (0, -P % block_size), value=float("-inf")).unflatten(-1, (-1, block_size)).amax(-1)
    newest = (((pos + 1) // ratio) - 1) // block_size
    blocks = blocks.masked_fill(torch.arange(blocks.shape[-1], device=scores.device)[None] == newest[:, None],
                                float("inf"))
    top = blocks.topk(min(n_blocks, blocks.shape[-1]), dim=-1)
    keep = torch.zeros_like(blocks, dtype=torch.bool).scatter(-1, top.indices, top.values > float("-inf"))
    return keep.repeat_interleave(block_size, -1)[:, :P] & torch.isfinite(scores)


def select_topk(scores, k: int, candidates=None):
    """The second level: the k best visible vectors (inside the candidates, if given), sorted by position, -1 where
    fewer than k are visible (attention.py _Indexer.forward)."""
    if candidates is not None:
        scores = scores.masked_fill(~candidates, float("-inf"))
    top = scores.topk(min(k, scores.shape[-1]), dim=-1)
    idx = top.indices.sort(-1).values
    return torch.where(torch.isfinite(scores.gather(-1, idx)), idx, -1)


def trace(layout: CSA2Layout, seq_len: int) -> list[dict]:
    """What each layer computes for a sequence of seq_len tokens and what it takes from an earlier layer: numbers of
    compressed vectors and index keys written, index scores computed, and the layers it reads from."""
    cache_bytes(layout, seq_len)  # validates seq_len
    rows = []
    cap = layout.candidate_blocks * layout.candidate_block_size
    for i, r, mode, kv_from, ix_from, cand in layout.table():
        P = seq_len // r if r else 0
        scored = 0
        if mode in ("full", "reindex"):
            per_query = [min(((s + 1) // r), cap) if cand else (s + 1) // r for s in range(seq_len)]
            scored = sum(per_query)
        rows.append({"layer": i, "ratio": r, "mode": mode, "writes_kv": P if mode == "full" else 0,
                     "writes_index_keys": P if mode == "full" else 0, "index_scores": scored,
                     "kv_from": kv_from, "topk_from": ix_from, "candidates_only": cand})
    return rows
