"""Attention with a KV cache: MHA, GQA and MQA baselines, and Multi-head Latent Attention (MLA).

Notebook 03 builds these step by step. Notation follows DeepSeek-V2 (arXiv 2405.04434) §2.1: h_t is the input of
token t, n_h heads of size d_h, d_c the KV compression dimension, d'_c the query compression dimension and d^R_h the
per-head size of the decoupled RoPE part. DeepSeek-V3 (arXiv 2412.19437) §2.1.1 uses the same MLA (its Eq. 1-11).

Every module here has the interface course_lib.model expects:
    forward(x: (B, T, d_model), start_pos=0, cache=None) -> (B, T, d_model)
`cache` is a per-layer dict the module reads and appends to; `start_pos` is the absolute position of x[:, 0]
(it must equal the number of tokens already in the cache).

What each one caches per token and layer (V2 Table 1):
    MHA 2 n_h d_h | GQA 2 n_g d_h | MQA 2 d_h | MLA d_c + d^R_h
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from course_lib.kit.validate import one_of, positive_int
from course_lib.layers import (GQA, MHA, MQA, RMSNorm, _check_cache, _check_input, _rope_tables,  # noqa: F401
                     append_to_cache, apply_rope, attend, causal_mask, rope_cos_sin)


# --------------------------------------------------------------------------------------------- MLA
PATHS = ("auto", "naive", "absorbed")


class MLA(nn.Module):
    """Multi-head Latent Attention, DeepSeek-V2 §2.1.2-2.1.3 (Eq. 9-19; full form in Appendix C, Eq. 37-47).

    Arguments (defaults follow V2's ratios d_c = 4 d_h and d^R_h = d_h / 2, V2 Table 1 caption):
      d_model, n_heads
      kv_lora_rank      d_c, size of the cached latent c^KV                       (default 4 * d_model // n_heads)
      q_lora_rank       d'_c, query compression; None = no compression, like V2-Lite (default None)
      qk_nope_head_dim  d_h, per-head size of the content (no-RoPE) query/key     (default d_model // n_heads)
      qk_rope_head_dim  d^R_h, per-head size of the decoupled RoPE query and shared key (default d_h // 2; even)
      v_head_dim        per-head value size                                        (default d_h)
      path              "naive": decompress the cache to full K and V; "absorbed": attend in the latent space;
                        "auto" (default): naive for a prompt (T > 1), absorbed for one-token decode steps
      rope_base, rope_interleave  RoPE frequencies base and pair layout (DeepSeek's weights use interleaved)
      softmax_scale     default 1 / sqrt(d_h + d^R_h) (Eq. 18); YaRN-extended checkpoints multiply it by mscale^2
      rms_norm_eps      eps of the RMSNorms after the compressed latents (V2 §3.1.2 "additional RMS Norm layers")

    Parameters (names follow the paper; fused where the paper's matrices act on the same input; docs/name_map.md
    gives DeepSeek's and transformers' names):
      q_down   W^DQ           (d'_c, d)           q_norm   RMSNorm(d'_c)       [only when q_lora_rank is set]
      q_up     [W^UQ; W^QR]   (n_h (d_h + d^R_h), d'_c or d), per head laid out as [q^C_i ; q^R_i]
      kv_down  [W^DKV; W^KR]  (d_c + d^R_h, d)    kv_norm  RMSNorm(d_c)
      kv_up    [W^UK; W^UV]   (n_h (d_h + d_v), d_c), per head laid out as [k^C_i ; v^C_i]
      out      W^O            (d, n_h d_v)
    Cache: {"c_kv": (B, S, d_c) normalised latents, "k_rope": (B, S, d^R_h) rotated shared keys}; both paths use
    the same cache, so (d_c + d^R_h) elements per token per layer (V2 §2.1.3).
    """

    def __init__(self, d_model: int, n_heads: int, kv_lora_rank: int | None = None, q_lora_rank: int | None = None,
                 qk_nope_head_dim: int | None = None, qk_rope_head_dim: int | None = None,
                 v_head_dim: int | None = None, path: str = "auto", rope_base: float = 10000.0,
                 rope_interleave: bool = False, softmax_scale: float | None = None, rms_norm_eps: float = 1e-6):
        super().__init__()
        positive_int("d_model", d_model)
        positive_int("n_heads", n_heads)
        if None in (kv_lora_rank, qk_nope_head_dim, qk_rope_head_dim, v_head_dim) and d_model % n_heads:
            raise ValueError(f"n_heads={n_heads} must divide d_model={d_model} to derive the default head sizes")
        d_h = d_model // n_heads
        self.d_model, self.n_heads = d_model, n_heads
        self.qk_nope_head_dim = positive_int("qk_nope_head_dim", d_h if qk_nope_head_dim is None else qk_nope_head_dim)
        self.qk_rope_head_dim = positive_int("qk_rope_head_dim", d_h // 2 if qk_rope_head_dim is None
                                              else qk_rope_head_dim)
        if self.qk_rope_head_dim % 2:
            raise ValueError(f"qk_rope_head_dim must be even (RoPE rotates pairs), got {self.qk_rope_head_dim}")
        self.v_head_dim = positive_int("v_head_dim", d_h if v_head_dim is None else v_head_dim)
        self.kv_lora_rank = positive_int("kv_lora_rank", 4 * d_h if kv_lora_rank is None else kv_lora_rank)
        self.q_lora_rank = None if q_lora_rank is None else positive_int("q_lora_rank", q_lora_rank)
        self.path = one_of("path", path, PATHS)
        self.rope_base = float(rope_base)
        self.rope_interleave = bool(rope_interleave)
        self.qk_head_dim = self.qk_nope_head_dim + self.qk_rope_head_dim
        if softmax_scale is not None and not softmax_scale > 0:
            raise ValueError(f"softmax_scale must be positive, got {softmax_scale!r}")
        # Eq. 18: the scores are divided by sqrt(d_h + d^R_h), the full query/key size.
        self.softmax_scale = softmax_scale if softmax_scale is not None else self.qk_head_dim ** -0.5

        H, dn, dr, dv, dc = n_heads, self.qk_nope_head_dim, self.qk_rope_head_dim, self.v_head_dim, self.kv_lora_rank
        if self.q_lora_rank is None:
            self.q_down, self.q_norm = None, None
            self.q_up = nn.Linear(d_model, H * (dn + dr), bias=False)
        else:
            self.q_down = nn.Linear(d_model, self.q_lora_rank, bias=False)
            self.q_norm = RMSNorm(self.q_lora_rank, rms_norm_eps)
            self.q_up = nn.Linear(self.q_lora_rank, H * (dn + dr), bias=False)
        self.kv_down = nn.Linear(d_model, dc + dr, bias=False)
        self.kv_norm = RMSNorm(dc, rms_norm_eps)
        self.kv_up = nn.Linear(dc, H * (dn + dv), bias=False)
        self.out = nn.Linear(H * dv, d_model, bias=False)

    # ---- small pieces the notebook also uses
    def cache_elements_per_token(self) -> int:
        """(d_c + d^R_h) per layer (V2 §2.1.3): the latent plus the one shared RoPE key."""
        return self.kv_lora_rank + self.qk_rope_head_dim

    def w_uk_uv(self):
        """W^UK per head (n_h, d_h, d_c) and W^UV per head (n_h, d_v, d_c), views of kv_up's weight."""
        w = self.kv_up.weight.view(self.n_heads, self.qk_nope_head_dim + self.v_head_dim, self.kv_lora_rank)
        return w[:, :self.qk_nope_head_dim], w[:, self.qk_nope_head_dim:]

    def absorbed_weights(self):
        """The merged matrices of V2 Appendix C ("absorb W^UK into W^UQ, and W^UV into W^O").

        Returns (W_q_lat, W_o_lat):
          W_q_lat[i] = W^UK_i^T W^UQ_i   (n_h, d_c, d'_c or d): content query of head i straight into latent space
          W_o_lat[:, i] = W^O_i W^UV_i   (d, n_h, d_c): latent output of head i straight to the model dim
        forward() applies the same products in two steps (cheaper; what DeepSeek's inference code does too).
        """
        H, dn, dr = self.n_heads, self.qk_nope_head_dim, self.qk_rope_head_dim
        w_uk, w_uv = self.w_uk_uv()
        w_uq = self.q_up.weight.view(H, dn + dr, -1)[:, :dn]                         # (H, d_h, d'_c)
        w_q_lat = w_uk.transpose(1, 2) @ w_uq                                        # (H, d_c, d'_c)
        w_o = self.out.weight.view(self.d_model, H, self.v_head_dim)                 # (d, H, d_v)
        w_o_lat = torch.einsum("dhv,hvc->dhc", w_o, w_uv)                            # (d, H, d_c)
        return w_q_lat, w_o_lat

    def forward(self, x, start_pos: int = 0, cache: dict | None = None, path: str | None = None):
        path = self.check_and_choose_path(x, start_pos, path)
        B, T, _ = x.shape
        if cache is not None:
            _check_cache(cache, {"c_kv": (B, None, self.kv_lora_rank), "k_rope": (B, None, self.qk_rope_head_dim)},
                         start_pos, x)
        _, q_nope, q_rope, c_kv, k_rope = self.project(x, start_pos)
        # Only these two small tensors are cached: (d_c + d^R_h) numbers per token.
        c_kv, k_rope = append_to_cache(cache, 1, c_kv=c_kv, k_rope=k_rope)
        mask = causal_mask(T, c_kv.shape[1], x.device)
        if path == "naive":
            o = self.attend_naive(q_nope, q_rope, c_kv, k_rope, mask, causal=True)
        else:
            o = self.attend_absorbed(q_nope, q_rope, c_kv, k_rope, mask)
        return self.output(o)

    # ---- the pieces of forward; course_lib.dsa.DSA reuses them with its own selection of keys
    def check_and_choose_path(self, x, start_pos, path: str | None) -> str:
        """Validate x and start_pos; return "naive" or "absorbed" for this call (path=None: the module's path)."""
        _check_input(x, self.d_model, start_pos)
        path = one_of("path", self.path if path is None else path, PATHS)
        if path == "auto":
            # A prompt is compute-bound: decompressing each token once is cheaper than scoring T x T pairs in the
            # 3x wider latent space (d_c + d^R_h = 576 vs d_h + d^R_h = 192 at V3). A decode step reads the whole
            # cache for one query: there, touching only the latents is what makes MLA fast.
            path = "naive" if x.shape[1] > 1 else "absorbed"
        return path

    def project(self, x, start_pos: int):
        """The projections of the T new tokens x (B, T, d) at positions start_pos .. start_pos + T - 1:
        (c_q, q_nope (B, H, T, d_h), q_rope (B, H, T, d^R_h), c_kv (B, T, d_c), k_rope (B, T, d^R_h)).
        c_kv and k_rope are what the cache keeps; c_q is the compressed query (x itself without q_lora_rank)."""
        B, T, _ = x.shape
        H, dn, dr, dc = self.n_heads, self.qk_nope_head_dim, self.qk_rope_head_dim, self.kv_lora_rank
        cos, sin = self._rope(start_pos, T, x)
        # Eq. 12: c^Q_t = W^DQ h_t (then RMSNorm, V2 §3.1.2); without query compression q_up reads h_t directly.
        c_q = x if self.q_down is None else self.q_norm(self.q_down(x))
        # Eq. 13-14: q^C_t = W^UQ c^Q_t and q^R_t = RoPE(W^QR c^Q_t), one [q^C_i; q^R_i] block per head.
        q = self.q_up(c_q).view(B, T, H, dn + dr).transpose(1, 2)                   # (B, H, T, dn + dr)
        q_nope, q_rope = q.split([dn, dr], dim=-1)
        q_rope = apply_rope(q_rope, cos, sin, interleaved=self.rope_interleave)
        # Eq. 9: c^KV_t = W^DKV h_t (then RMSNorm) and Eq. 15: k^R_t = RoPE(W^KR h_t), ONE rope key for all heads.
        c_kv, k_rope = self.kv_down(x).split([dc, dr], dim=-1)
        c_kv = self.kv_norm(c_kv)                                                    # (B, T, dc)
        k_rope = apply_rope(k_rope, cos, sin, interleaved=self.rope_interleave)     # (B, T, dr)
        return c_q, q_nope, q_rope, c_kv, k_rope

    def _rope(self, start_pos: int, T: int, x: torch.Tensor):
        """RoPE cos/sin rows start_pos .. start_pos + T - 1 (d^R_h wide), sliced from a table kept between calls and
        doubled when too short: a decode step needs one row, and rebuilding the table at every step costs more than
        that row (layers.GQA keeps one the same way)."""
        end = start_pos + T
        want = torch.float64 if x.dtype == torch.float64 else torch.float32
        table = getattr(self, "_rope_table", None)
        if table is None or table[0].shape[0] < end or table[0].dtype != want or table[0].device != x.device:
            length = max(end, 2 * table[0].shape[0] if table is not None else 0)
            table = self._rope_table = _rope_tables(0, length, self.qk_rope_head_dim, self.rope_base, x)
        return table[0][start_pos:end], table[1][start_pos:end]

    def attend_naive(self, q_nope, q_rope, c_kv, k_rope, mask, causal: bool = False):
        """Decompress the S cached latents to full keys and values and attend: o (B, H, T, d_v).

        mask: None (every key visible), or boolean, True = may attend, broadcastable to (B, H, T, S).
        causal=True says mask is causal_mask(T, S), which lets the fused kernel skip it for a prompt (T == S)."""
        B, H, T, _ = q_nope.shape
        S, dn, dr, dv = c_kv.shape[1], self.qk_nope_head_dim, self.qk_rope_head_dim, self.v_head_dim
        # Eq. 10-11: k^C = W^UK c^KV, v^C = W^UV c^KV for EVERY cached token, recomputed at each step.
        kv = self.kv_up(c_kv).view(B, S, H, dn + dv).transpose(1, 2)                 # (B, H, S, dn + dv)
        k_nope, v = kv.split([dn, dv], dim=-1)
        # Eq. 16-17: q_{t,i} = [q^C_{t,i}; q^R_{t,i}], k_{j,i} = [k^C_{j,i}; k^R_j] (k^R shared by the heads).
        q_full = torch.cat([q_nope, q_rope], dim=-1)
        k_full = torch.cat([k_nope, k_rope[:, None].expand(B, H, S, dr)], dim=-1)
        # Eq. 18: o_{t,i} = sum_j softmax_j(q_{t,i}^T k_{j,i} / sqrt(d_h + d^R_h)) v^C_{j,i}
        return _attention(q_full, k_full, v, self.softmax_scale, mask, causal)

    def attend_absorbed(self, q_nope, q_rope, c_kv, k_rope, mask):
        """Attend in the latent space without decompressing the cache: o (B, H, T, d_v).

        c_kv (B, S, d_c) and k_rope (B, S, d^R_h) are the keys of every query; or (B, T, K, d_c) and (B, T, K, d^R_h),
        K keys chosen per query (DSA's top-k selection). mask: None or boolean, True = may attend, broadcastable to
        (B, H, T, S or K); with per-query keys give it 4 dims."""
        w_uk, w_uv = self.w_uk_uv()                                                  # (H, dn, dc), (H, dv, dc)
        # Absorb W^UK into the query (V2 §2.1.2): q^C_{t,i}^T (W^UK_i c_j) = (W^UK_i^T q^C_{t,i})^T c_j,
        # so each head's content query becomes a d_c-vector compared with the cached latents directly.
        q_lat = q_nope @ w_uk                                                        # (B, H, T, dc)
        per_query = c_kv.dim() == 4
        if per_query:      # each query t has its own K keys: heads become the rows of t's products, (B, T, H, .)
            q_lat, q_rope = q_lat.transpose(1, 2), q_rope.transpose(1, 2)
            mask = None if mask is None else mask.transpose(1, 2)
        else:              # one set of keys for every head and query: (B, 1, S, .)
            c_kv, k_rope = c_kv[:, None], k_rope[:, None]
        # Eq. 18 in latent space: scores = q_lat . c_kv + q^R . k^R; the keys are the cache itself.
        scores = (q_lat @ c_kv.transpose(-2, -1) + q_rope @ k_rope.transpose(-2, -1)) * self.softmax_scale
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        # sum_j p_j W^UV_i c_j = W^UV_i (sum_j p_j c_j): average the latents first, decompress once per query.
        o_lat = torch.softmax(scores, dim=-1) @ c_kv                                 # (B, H, T, dc)
        if per_query:
            o_lat = o_lat.transpose(1, 2)
        # Absorb W^UV into the output side: W^UV_i is applied to one d_c vector per head, then W^O (Eq. 19).
        return o_lat @ w_uv.transpose(1, 2)                                          # (B, H, T, dv)

    def output(self, o):
        """Eq. 19: u_t = W^O [o_{t,1}; ...; o_{t,n_h}] for o (B, H, T, d_v) -> (B, T, d)."""
        B, H, T, dv = o.shape
        return self.out(o.transpose(1, 2).reshape(B, T, H * dv))


def _attention(q, k, v, scale: float, mask, causal: bool = False):
    """softmax(q k^T * scale + mask) v, q/k (..., T or S, D), v (..., S, D_v); mask None or boolean (True = keep).

    float64 (the exactness tests) takes the written-out layers.attend. Otherwise PyTorch's fused kernel:
    F.scaled_dot_product_attention, with v zero-padded to q's head size where the two differ (MLA: d_h + d^R_h
    vs d_v) -- its fast CPU kernel (flash attention) wants equal sizes; the padded output columns are exactly zero
    and are cut off. causal=True (mask is causal_mask(T, S)) with T == S is passed as is_causal, which that kernel
    handles without reading a T x S mask."""
    if q.dtype == torch.float64:
        return attend(q, k, v, scale, mask)
    T, S, D, Dv = q.shape[-2], k.shape[-2], q.shape[-1], v.shape[-1]
    if Dv < D:
        v = F.pad(v, (0, D - Dv))
    if causal and T == S:
        o = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)
    else:
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
    return o[..., :Dv]
