"""The course's basic layers, in one place: every model in course_lib is built from these.

* ``RMSNorm``   Zhang & Sennrich 2019; DeepSeek's models normalise before every sub-layer (pre-norm).
* ``SwiGLU``    Shazeer 2020; DeepSeek's dense feed-forward layers, shared experts and (stacked, in
                ``course_lib.experts.RoutedExperts``) routed experts all compute it.
* RoPE          ``apply_rope`` / ``rope_cos_sin`` from ``course_lib.rope`` (Su et al. 2021), re-exported here.
* ``GQA`` / ``MHA`` / ``MQA``  attention with RoPE and a KV cache (V2 Eq. 1-8); MLA (``course_lib.mla``) and
                the sparse attentions build on ``attend`` and ``causal_mask``.

Interface of every attention module:  forward(x: (B, T, d_model), start_pos=0, cache=None) -> (B, T, d_model).
``cache`` is a per-layer dict the module reads and appends to; ``start_pos`` is the absolute position of x[:, 0]
(it must equal the number of tokens already in the cache).

This module imports nothing else from course_lib except ``rope`` and ``kit.validate`` (the argument checks), so any
module may import it (no cycles).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from course_lib.kit.validate import non_negative_int, positive_int, tensor_shape
from course_lib.rope import apply_rope, rope_cos_sin, rotate_half  # noqa: F401  (re-exported: the one RoPE)

__all__ = ["RMSNorm", "SwiGLU", "swiglu", "GQA", "MHA", "MQA", "attend", "causal_mask", "append_to_cache",
           "apply_rope", "rope_cos_sin"]


# --------------------------------------------------------------------------------------------- norm and FFN
class RMSNorm(nn.Module):
    """RMSNorm (Zhang & Sennrich 2019): x / sqrt(mean(x^2) + eps) * weight; no mean subtraction, no bias."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        # Normalise in float32 at least, as DeepSeek-V3's code does, so low-precision inputs stay stable.
        dtype = x.dtype
        x32 = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(dtype)


def swiglu(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """The gated unit of SwiGLU (Shazeer 2020, arXiv 2002.05202, Eq. 6): SiLU(x W1) * (x W3), given both products.

    ``SwiGLU`` below and the stacked routed experts (``course_lib.experts.RoutedExperts``) both call it, so every
    feed-forward network of the course computes the same definition.
    """
    return F.silu(gate) * up


class SwiGLU(nn.Module):
    """FFN(x) = W2 (SiLU(W1 x) * W3 x) (Shazeer 2020); DeepSeek's dense layers and shared experts use it.

    Names as in DeepSeek-V3's inference/model.py (w1 gate, w3 up, w2 down); transformers calls them
    gate_proj, up_proj, down_proj.
    """

    def __init__(self, d_model: int, hidden: int):
        super().__init__()
        self.w1 = nn.Linear(d_model, hidden, bias=False)   # gate
        self.w3 = nn.Linear(d_model, hidden, bias=False)   # up
        self.w2 = nn.Linear(hidden, d_model, bias=False)   # down

    def forward(self, x):
        return self.w2(swiglu(self.w1(x), self.w3(x)))


# --------------------------------------------------------------------------------------------- helpers
def _check_input(x: torch.Tensor, d_model: int, start_pos) -> None:
    tensor_shape("x", x, ("batch", "time", d_model))
    non_negative_int("start_pos", start_pos)


def _check_cache(cache, expected: dict, start_pos: int, x: torch.Tensor) -> int:
    """Validate a per-layer cache dict; return the number of cached tokens S (0 when empty).

    `expected` maps each key to its shape with None where the cached-token axis S goes.
    """
    if not isinstance(cache, dict):
        raise ValueError(f"cache must be a dict (one per layer) or None, got {type(cache).__name__}")
    if not cache:
        if start_pos != 0:
            raise ValueError(f"start_pos={start_pos} but the cache is empty; they must agree (use 0)")
        return 0
    if sorted(cache) != sorted(expected):
        raise ValueError(f"cache must hold exactly {sorted(expected)}, got {sorted(cache)}")
    lengths = set()
    for key, shape in expected.items():
        t, axis = cache[key], shape.index(None)
        if not isinstance(t, torch.Tensor) or t.dim() != len(shape) or any(
                want is not None and got != want for got, want in zip(t.shape, shape)):
            want_txt = tuple("S" if s is None else s for s in shape)
            got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"cache[{key!r}] must have shape {want_txt} (S = cached tokens), got {got}")
        if t.dtype != x.dtype or t.device != x.device:
            raise ValueError(f"cache[{key!r}] is {t.dtype} on {t.device} but x is {x.dtype} on {x.device}")
        lengths.add(t.shape[axis])
    if len(lengths) != 1:
        raise ValueError(f"cache entries disagree on the number of cached tokens: {sorted(lengths)}")
    cached = lengths.pop()
    if cached != start_pos:
        raise ValueError(f"start_pos={start_pos} but the cache holds {cached} tokens; they must be equal")
    return cached


def append_to_cache(cache: dict | None, dim: int, **new: torch.Tensor) -> tuple:
    """KV caching: append each new tensor to ``cache[name]`` along ``dim`` (the token axis; created on the first
    call) and return the full tensors, old tokens first. With ``cache=None`` the new tensors come back unchanged."""
    if cache is None:
        return tuple(new.values())
    for name, t in new.items():
        cache[name] = torch.cat([cache[name], t], dim=dim) if name in cache else t
    return tuple(cache[name] for name in new)


def causal_mask(T: int, S: int, device=None) -> torch.Tensor | None:
    """Boolean (T, S) mask for T new queries over S keys whose last T are the new tokens; None when T == 1.

    Query i sits at absolute position S - T + i and may see keys 0 .. S - T + i.
    """
    if T == 1:
        return None          # a single new token may look at everything before it
    return torch.ones(T, S, dtype=torch.bool, device=device).tril(diagonal=S - T)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, mask: torch.Tensor | None):
    """softmax(q k^T * scale + mask) v over the last two dims (written out, so float64 stays float64)."""
    scores = (q @ k.transpose(-2, -1)) * scale
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return torch.softmax(scores, dim=-1) @ v


def _rope_tables(start_pos: int, T: int, dim: int, base: float, x: torch.Tensor):
    """cos/sin (T, dim) for positions start_pos .. start_pos + T - 1, in float64 for float64 inputs."""
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    cos, sin = rope_cos_sin(torch.arange(start_pos, start_pos + T), dim, base, dtype=dtype)
    return cos.to(x.device), sin.to(x.device)


# --------------------------------------------------------------------------------------------- MHA / GQA / MQA
class GQA(nn.Module):
    """Grouped-query attention (Ainslie et al. 2023, arXiv 2305.13245) with RoPE and a KV cache.

    n_heads query heads share n_kv_heads key/value heads (n_kv_heads == n_heads: MHA; n_kv_heads == 1: MQA).
    V2 Eq. 1-8 give MHA:  q_t = W^Q h_t, k_t = W^K h_t, v_t = W^V h_t,
        o_{t,i} = sum_j softmax_j(q_{t,i}^T k_{j,i} / sqrt(d_h)) v_{j,i},   u_t = W^O [o_{t,1}; ...; o_{t,n_h}]
    GQA only changes which k/v head a query head reads: head i uses group i // (n_heads / n_kv_heads).
    Cache: {"k": (B, n_kv_heads, S, d_h) rotated keys, "v": (B, n_kv_heads, S, d_h)}.
    """

    def __init__(self, d_model: int, n_heads: int, n_kv_heads: int, head_dim: int | None = None,
                 rope_base: float = 10000.0, max_seq_len: int | None = None):
        super().__init__()
        positive_int("d_model", d_model)
        positive_int("n_heads", n_heads)
        positive_int("n_kv_heads", n_kv_heads)
        if n_heads % n_kv_heads:
            raise ValueError(f"n_kv_heads={n_kv_heads} must divide n_heads={n_heads}")
        if head_dim is None:
            if d_model % n_heads:
                raise ValueError(f"n_heads={n_heads} must divide d_model={d_model} (or pass head_dim)")
            head_dim = d_model // n_heads
        positive_int("head_dim", head_dim)
        if head_dim % 2:
            raise ValueError(f"head_dim must be even for RoPE, got {head_dim}")
        self.d_model, self.n_heads, self.n_kv_heads, self.head_dim = d_model, n_heads, n_kv_heads, head_dim
        self.rope_base = float(rope_base)
        self.max_seq_len = max_seq_len
        # One fused projection [W^Q; W^K; W^V] (rows: n_heads query heads, then n_kv_heads keys, then values).
        self.qkv = nn.Linear(d_model, (n_heads + 2 * n_kv_heads) * head_dim, bias=False)
        self.out = nn.Linear(n_heads * head_dim, d_model, bias=False)

    def cache_elements_per_token(self) -> int:
        """2 n_g d_h: one key and one value vector per kv head (V2 Table 1)."""
        return 2 * self.n_kv_heads * self.head_dim

    def forward(self, x, start_pos: int = 0, cache: dict | None = None):
        _check_input(x, self.d_model, start_pos)
        B, T, _ = x.shape
        if self.max_seq_len is not None and start_pos + T > self.max_seq_len:
            raise ValueError(f"start_pos + T = {start_pos + T} exceeds max_seq_len={self.max_seq_len}")
        H, G, hd = self.n_heads, self.n_kv_heads, self.head_dim
        if cache is not None:
            _check_cache(cache, {"k": (B, G, None, hd), "v": (B, G, None, hd)}, start_pos, x)
        q, k, v = self.qkv(x).split([H * hd, G * hd, G * hd], dim=-1)
        q = q.view(B, T, H, hd).transpose(1, 2)                                  # (B, H, T, hd)
        k = k.view(B, T, G, hd).transpose(1, 2)                                  # (B, G, T, hd)
        v = v.view(B, T, G, hd).transpose(1, 2)
        cos, sin = self._rope(start_pos, T, x)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        # Cache the rotated keys and the values: later tokens only add their own row.
        k, v = append_to_cache(cache, 2, k=k, v=v)
        S = k.shape[2]
        mask = causal_mask(T, S, x.device)
        if x.dtype == torch.float64:
            # The written-out softmax(q k^T / sqrt(d_h)) v, so float64 tests compare exactly. Query heads are grouped
            # as (B, G, H/G, T, hd) so each group broadcasts over its one kv head: no copies of K, V.
            qg = q.view(B, G, H // G, T, hd)
            y = attend(qg, k[:, :, None], v[:, :, None], 1.0 / math.sqrt(hd), mask).reshape(B, H, T, hd)
        else:
            # The same formula through PyTorch's fused kernel (default scale 1/sqrt(d_h)): faster for float32/bf16
            # training and decoding. tests/test_mla.py checks it against the written-out path. A prompt
            # (T == S) passes its causal mask as is_causal: the kernel then skips the masked blocks.
            causal = mask is not None and T == S
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=None if causal else mask, is_causal=causal,
                                               enable_gqa=G != H)
        return self.out(y.transpose(1, 2).reshape(B, T, H * hd))

    def _rope(self, start_pos: int, T: int, x: torch.Tensor):
        """cos/sin rows start_pos .. start_pos + T - 1, sliced from a table kept between calls (decoding asks for
        one row per token; recomputing the table each time would cost more than the attention itself)."""
        end = start_pos + T
        table = getattr(self, "_rope_table", None)
        want = torch.float64 if x.dtype == torch.float64 else torch.float32
        if table is None or table[0].shape[0] < end or table[0].dtype != want or table[0].device != x.device:
            table = _rope_tables(0, max(end, self.max_seq_len or 0), self.head_dim, self.rope_base, x)
            self._rope_table = table
        return table[0][start_pos:end], table[1][start_pos:end]


class MHA(GQA):
    """Multi-head attention (Vaswani et al. 2017; V2 Eq. 1-8): every query head has its own key/value head.

    TinyLM's attention (course_lib.model) and notebook 03's MHA baseline.
    """

    def __init__(self, d_model: int, n_heads: int, max_seq_len: int | None = None, rope_base: float = 10000.0,
                 head_dim: int | None = None):
        super().__init__(d_model, n_heads, n_heads, head_dim=head_dim, rope_base=rope_base, max_seq_len=max_seq_len)


class MQA(GQA):
    """Multi-query attention (Shazeer 2019, arXiv 1911.02150): all query heads share ONE key/value head."""

    def __init__(self, d_model: int, n_heads: int, head_dim: int | None = None, rope_base: float = 10000.0,
                 max_seq_len: int | None = None):
        super().__init__(d_model, n_heads, 1, head_dim=head_dim, rope_base=rope_base, max_seq_len=max_seq_len)
