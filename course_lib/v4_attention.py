"""DeepSeek-V4's hybrid attention: Compressed Sparse Attention (CSA), Heavily Compressed Attention (HCA), sliding
window.

DeepSeek-V4 technical report ("DeepSeek-V4: Towards Highly Efficient Million-Token Context Intelligence", 2026),
§2.3. Every attention block is shared-KV multi-query attention (one 512-wide head whose key is also its value) over
  * a sliding window of the last n_win tokens (every block), and
  * compressed KV entries, each one pooling m consecutive tokens:
      CSA (§2.3.1, Eq. 9-19): m = 4, windows of 2m tokens that overlap by m, then the lightning indexer of V3.2
          (course_lib.dsa) scores the compressed entries and each query keeps its top-k;
      HCA (§2.3.2, Eq. 20-26): m' = 128, non-overlapping windows, dense attention over all compressed entries.
The official configs interleave CSA and HCA layers (course_lib.configs_v4).

The token-level compressor (Eq. 9-12 / 20-23): C = H W^KV, Z = H W^Z; one entry per window,
      C^Comp_i = sum_{j in window i} softmax_j(Z_j + B_j) * C_j,   B = learned positional bias (m x c)
The softmax runs per feature over the tokens of the window. The report then RMS-normalises every KV entry "just
before the core attention" (§2.3.3, not part of Eq. 12; the code applies that norm in the compressor) and applies
partial RoPE (§2.3.3) at the window's first position.

Details follow transformers' modeling_deepseek_v4.py (DeepseekV4CSACompressor, DeepseekV4HCACompressor,
DeepseekV4Indexer, DeepseekV4Attention), the test oracle (tests/reference/test_v4_attention_reference.py):
  * CSA's overlap: W^KV and W^Z are 2c wide; the first half (Ca) of window i-1's tokens and the second half (Cb) of
    window i's tokens share one softmax of 2m slots for entry i (entry 0 has only its Cb half).
  * The query is RMS-normalised per head without weight; RoPE acts on the LAST rope_dim features (interleaved
    pairs); since the key is also the value, the output's RoPE slice is rotated back by the query's angle.
  * An entry is visible to the query at position t once its window is complete: entry i iff i < (t + 1) // m.
  * Per-head attention sinks: a learned logit per head joins the softmax and is dropped after it.
  * Grouped output projection: heads are split into o_groups groups, each projected to o_lora_rank, then mixed.
Left out (as in our other modules): FP8/FP4 storage, YaRN (the real compressed layers use YaRN x16 with base 160000;
rope_base is a parameter), the hyper-connections around the block.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from course_lib.dsa import indexer_kl_loss
from course_lib.kit.validate import one_of, positive_int
from course_lib.layers import RMSNorm, _check_input, _rope_tables, apply_rope

KINDS = ("sliding", "csa", "hca")


def partial_rope(x, positions_start, rope_dim, base, sign=1.0, positions=None):
    """Partial RoPE of V4 §2.3.3 ("Partial Rotary Positional Embedding"): rotate the LAST rope_dim features of
    x (..., T, D) by their token's position and leave the first D - rope_dim untouched,

        x_t -> [x_t[:D - r], R(sign * theta_t) x_t[D - r:]],   theta_{t,j} = t / base^(2j / r), r = rope_dim,

    in interleaved pairs (x_{2j}, x_{2j+1}), as transformers' DeepSeek-V4 code (the test oracle) pairs them. The
    positions are positions_start .. positions_start + T - 1, or the given 1-D tensor `positions` (length T; a
    compressed entry sits at its window's first token). sign = -1 rotates back: the report applies RoPE with
    position -i to the core attention's output o_{t,i}, because the shared key is also the value and would
    otherwise carry absolute positions into it. V4 uses the last 64 dimensions of its 512-wide head."""
    if not isinstance(x, torch.Tensor) or x.dim() < 2:
        raise ValueError(f"x must be a tensor of shape (..., T, D), got {getattr(x, 'shape', type(x).__name__)}")
    D, T = x.shape[-1], x.shape[-2]
    if not (isinstance(rope_dim, int) and not isinstance(rope_dim, bool) and 0 < rope_dim <= D and rope_dim % 2 == 0):
        raise ValueError(f"rope_dim must be an even int in [2, {D}] (the last dimension of x), got {rope_dim!r}")
    if positions is None:
        cos, sin = _rope_tables(positions_start, T, rope_dim, base, x)
    else:
        if positions.dim() != 1 or positions.shape[0] != T:
            raise ValueError(f"positions must be a 1-D tensor of length {T} (x.shape[-2]), got shape "
                             f"{tuple(positions.shape)}")
        from course_lib.rope import rope_cos_sin
        dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
        cos, sin = rope_cos_sin(positions, rope_dim, base, dtype=dtype)
        cos, sin = cos.to(x.device), sin.to(x.device)
    nope, r = x.split([D - rope_dim, rope_dim], dim=-1)
    return torch.cat([nope, apply_rope(r, cos, sign * sin, interleaved=True)], dim=-1)


class CompressorState:
    """What the compressor keeps between decode steps: the entries so far, the tokens of the unfinished window
    (their projections C, Z; at most m - 1), and for CSA the Ca half of the last finished window (m tokens)."""

    def __init__(self):
        self.entries = self.buf_kv = self.buf_gate = self.prior_kv = self.prior_gate = None

    def tensors(self):
        return [t for t in (self.entries, self.buf_kv, self.buf_gate, self.prior_kv, self.prior_gate)
                if t is not None]


# --------------------------------------------------------------------------------------------- compressor
class Compressor(nn.Module):
    """Token-level compressor of V4 §2.3.1 (overlap=True, CSA) and §2.3.2 (overlap=False, HCA)."""

    def __init__(self, d_model: int, head_dim: int, rate: int, overlap: bool, rope_dim: int,
                 rope_base: float = 10000.0, norm_eps: float = 1e-6):
        super().__init__()
        self.rate = positive_int("compress_rate", rate)
        self.head_dim, self.overlap, self.rope_dim, self.rope_base = head_dim, bool(overlap), rope_dim, rope_base
        width = 2 * head_dim if overlap else head_dim
        self.kv = nn.Linear(d_model, width, bias=False)                      # W^KV  (Eq. 9 / 20)
        self.gate = nn.Linear(d_model, width, bias=False)                    # W^Z   (Eq. 10 / 21)
        self.position_bias = nn.Parameter(torch.zeros(rate, width))          # B, one row per slot of a window
        self.norm = RMSNorm(head_dim, norm_eps)

    def pool(self, kv, gate, first_position: int, prior=None):
        """Compress L = n m tokens' projections (B, L, width) into n entries (B, n, c). Returns (entries, last Ca)."""
        B, L, width = kv.shape
        m, c = self.rate, self.head_dim
        n = L // m
        kv = kv.view(B, n, m, width)
        gate = gate.view(B, n, m, width) + self.position_bias
        last = None
        if self.overlap:
            # Entry i pools 2m slots: window i-1's Ca half, then window i's Cb half (-inf gate = no slot).
            slots_kv = kv.new_zeros(B, n, 2 * m, c)
            slots_gate = gate.new_full((B, n, 2 * m, c), float("-inf"))
            slots_kv[:, :, m:], slots_gate[:, :, m:] = kv[..., c:], gate[..., c:]
            slots_kv[:, 1:, :m], slots_gate[:, 1:, :m] = kv[:, :-1, :, :c], gate[:, :-1, :, :c]
            if prior is not None:
                slots_kv[:, 0, :m], slots_gate[:, 0, :m] = prior
            last = (kv[:, -1, :, :c], gate[:, -1, :, :c])
            kv, gate = slots_kv, slots_gate
        # Eq. 11-12 / 22-23: softmax over the window's tokens, per feature, then the weighted sum; §2.3.3: RMSNorm.
        pooled = self.norm((kv * torch.softmax(gate, dim=2)).sum(dim=2))
        positions = torch.arange(n, device=pooled.device) * m + first_position   # each entry at its window start
        return partial_rope(pooled, 0, self.rope_dim, self.rope_base, positions=positions), last

    @torch.no_grad()
    def token_weights(self, x):
        """(B, N, L): how much each entry draws on each token (its softmax weights averaged over the features),
        for figures. The same softmax as pool(); an entry's weights over its tokens sum to 1."""
        B, L, _ = x.shape
        m, c, n = self.rate, self.head_dim, x.shape[1] // self.rate
        gate = self.gate(x[:, :n * m]).view(B, n, m, -1) + self.position_bias
        out = x.new_zeros(B, n, L)
        if not self.overlap:
            w = torch.softmax(gate, dim=2).mean(-1)                            # (B, n, m)
            for i in range(n):
                out[:, i, i * m:(i + 1) * m] = w[:, i]
            return out
        slots = gate.new_full((B, n, 2 * m, c), float("-inf"))
        slots[:, :, m:] = gate[..., c:]
        slots[:, 1:, :m] = gate[:, :-1, :, :c]
        w = torch.softmax(slots, dim=2).mean(-1)                               # (B, n, 2m)
        for i in range(n):
            lo = max(0, (i - 1) * m)
            out[:, i, lo:(i + 1) * m] = w[:, i, 2 * m - ((i + 1) * m - lo):]
        return out

    def forward(self, x, state: CompressorState | None = None):
        """All compressed entries (B, N, c) after x: the finished windows of x (no state: from position 0) or,
        with a state, of everything seen so far (the state is updated)."""
        kv, gate = self.kv(x), self.gate(x)
        m = self.rate
        if state is None:
            usable = kv.shape[1] // m * m
            new, _ = self.pool(kv[:, :usable], gate[:, :usable], 0) if usable else (None, None)
            return new if new is not None else kv.new_zeros(x.shape[0], 0, self.head_dim)
        if state.buf_kv is not None:
            kv, gate = torch.cat([state.buf_kv, kv], 1), torch.cat([state.buf_gate, gate], 1)
        done = 0 if state.entries is None else state.entries.shape[1]
        usable = kv.shape[1] // m * m
        state.buf_kv, state.buf_gate = kv[:, usable:], gate[:, usable:]
        if usable:
            prior = None if state.prior_kv is None else (state.prior_kv, state.prior_gate)
            new, last = self.pool(kv[:, :usable], gate[:, :usable], done * m, prior)
            if last is not None:
                state.prior_kv, state.prior_gate = last
            state.entries = new if state.entries is None else torch.cat([state.entries, new], 1)
        if state.entries is None:
            state.entries = kv.new_zeros(x.shape[0], 0, self.head_dim)
        return state.entries


def visible_entries(positions: torch.Tensor, n_entries: int, rate: int) -> torch.Tensor:
    """(T, N) bool: entry i is complete (visible) for the query at absolute position t iff i < (t + 1) // m."""
    return torch.arange(n_entries, device=positions.device)[None, :] < ((positions + 1) // rate)[:, None]


# --------------------------------------------------------------------------------------------- V4 indexer
class V4Indexer(nn.Module):
    """Lightning indexer over compressed entries (V4 §2.3.1, Eq. 13-17): its own overlapping compressor at the
    indexer's head size, queries from the block's compressed query, I_{t,s} = sum_j w_{t,j} ReLU(q_{t,j} . K_s)."""

    def __init__(self, d_model: int, q_dim: int, n_heads: int, head_dim: int, rate: int, topk: int, rope_dim: int,
                 rope_base: float = 10000.0, norm_eps: float = 1e-6):
        super().__init__()
        self.n_heads, self.head_dim = positive_int("index_n_heads", n_heads), positive_int("index_head_dim",
                                                                                            head_dim)
        positive_int("index_topk", topk)
        self.topk, self.rope_dim, self.rope_base = topk, rope_dim, rope_base
        self.compressor = Compressor(d_model, head_dim, rate, True, rope_dim, rope_base, norm_eps)
        self.wq = nn.Linear(q_dim, n_heads * head_dim, bias=False)
        self.weights = nn.Linear(d_model, n_heads, bias=False)

    def scores(self, x, q_res, start_pos: int, state: CompressorState | None = None):
        """Index scores (B, T, N) of the new queries over all compressed entries, -inf where not yet visible."""
        B, T, _ = x.shape
        keys = self.compressor(x, state)                                       # (B, N, d^I)
        q = self.wq(q_res).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)
        q = partial_rope(q, start_pos, self.rope_dim, self.rope_base)            # (B, H, T, d^I)
        dots = F.relu(torch.einsum("bhtd,bnd->bhtn", q, keys)) * self.head_dim ** -0.5
        w = self.weights(x) * self.n_heads ** -0.5                             # (B, T, H)
        s = torch.einsum("bth,bhtn->btn", w, dots)
        vis = visible_entries(torch.arange(start_pos, start_pos + T, device=x.device), keys.shape[1],
                              self.compressor.rate)
        return s.masked_fill(~vis, float("-inf"))

    def select(self, s):
        """The top-k entries of scores s (B, T, N): (B, T, min(k, N)), -1 where a query sees fewer than k."""
        idx = s.topk(min(self.topk, s.shape[-1]), dim=-1).indices
        return torch.where(torch.gather(s, -1, idx) == float("-inf"), torch.full_like(idx, -1), idx)

    def forward(self, x, q_res, start_pos: int = 0, state: CompressorState | None = None):
        """Selected entries (B, T, min(k, N)), -1 where a query has fewer than k visible entries."""
        return self.select(self.scores(x, q_res, start_pos, state))


# --------------------------------------------------------------------------------------------- cache
class V4Cache:
    """Per-layer decode cache of V4Attention: the last n_win - 1 keys (= values) of the sliding window, the
    compressor state and (CSA) the indexer's compressor state. Nothing else: no per-token K/V beyond the window."""

    def __init__(self):
        self.window = None
        self.main, self.index = CompressorState(), CompressorState()
        self.length = 0

    def nbytes(self) -> int:
        ts = ([self.window] if self.window is not None else []) + self.main.tensors() + self.index.tensors()
        return sum(t.numel() * t.element_size() for t in ts)

    def bytes_per_token(self) -> float:
        """Bytes held per token of context (per sequence in the batch)."""
        if not self.length:
            return 0.0
        batch = self.window.shape[0] if self.window is not None else 1
        return self.nbytes() / (self.length * batch)


# --------------------------------------------------------------------------------------------- attention block
class V4Attention(nn.Module):
    """One DeepSeek-V4 attention block: kind "sliding" (window only), "csa" (window + top-k of compressed entries,
    rate m) or "hca" (window + all compressed entries, rate m').

    Parameters (transformers' names in brackets): q_down [q_a_proj], q_norm [q_a_norm], q_up [q_b_proj],
    kv [kv_proj], kv_norm, o_a (o_groups blocks) [o_a_proj], o_b [o_b_proj], sinks, compressor, indexer.
    forward(x, start_pos=0, cache=None) -> (B, T, d_model); cache: a V4Cache, updated in place. In training (CSA,
    no cache) it also sets ``index_loss``, the indexer's KL loss: add it to the loss to train the indexer.
    """

    def __init__(self, d_model: int, n_heads: int, head_dim: int = 64, rope_dim: int = 16, q_lora_rank: int = 64,
                 o_groups: int = 2, o_lora_rank: int = 32, window: int = 16, kind: str = "csa",
                 compress_rate: int = 4, index_n_heads: int = 4, index_head_dim: int = 32, index_topk: int = 16,
                 rope_base: float = 10000.0, norm_eps: float = 1e-6):
        super().__init__()
        for name, v in (("d_model", d_model), ("n_heads", n_heads), ("head_dim", head_dim),
                        ("q_lora_rank", q_lora_rank), ("o_groups", o_groups), ("o_lora_rank", o_lora_rank),
                        ("window", window)):
            positive_int(name, v)
        one_of("kind", kind, KINDS)
        if rope_dim % 2 or not 0 < rope_dim <= head_dim:
            raise ValueError(f"rope_dim must be even and in 1..head_dim={head_dim}, got {rope_dim!r}")
        if n_heads % o_groups:
            raise ValueError(f"o_groups={o_groups} must divide n_heads={n_heads}")
        self.d_model, self.n_heads, self.head_dim, self.rope_dim = d_model, n_heads, head_dim, rope_dim
        self.window, self.kind, self.rope_base, self.eps = window, kind, float(rope_base), norm_eps
        self.o_groups, self.o_lora_rank = o_groups, o_lora_rank
        self.q_down = nn.Linear(d_model, q_lora_rank, bias=False)
        self.q_norm = RMSNorm(q_lora_rank, norm_eps)
        self.q_up = nn.Linear(q_lora_rank, n_heads * head_dim, bias=False)
        self.kv = nn.Linear(d_model, head_dim, bias=False)                    # ONE head, key = value
        self.kv_norm = RMSNorm(head_dim, norm_eps)
        self.o_a = nn.Parameter(torch.empty(o_groups, o_lora_rank, n_heads * head_dim // o_groups))
        nn.init.normal_(self.o_a, std=(n_heads * head_dim // o_groups) ** -0.5)
        self.o_b = nn.Linear(o_groups * o_lora_rank, d_model, bias=False)
        self.sinks = nn.Parameter(torch.zeros(n_heads))
        self.compressor = self.indexer = None
        self.index_loss = None     # CSA in training: the indexer's KL loss of the last forward (see forward)
        if kind != "sliding":
            self.compressor = Compressor(d_model, head_dim, compress_rate, kind == "csa", rope_dim, rope_base,
                                         norm_eps)
        if kind == "csa":
            self.indexer = V4Indexer(d_model, q_lora_rank, index_n_heads, index_head_dim, compress_rate, index_topk,
                                     rope_dim, rope_base, norm_eps)

    def _indexer_loss(self, index_scores, q, entries, q_pos):
        """How CSA's indexer learns (training only). Top-k passes no gradient, so like V3.2 (§2.1.1, Eq. 3) the
        indexer is trained towards the main attention: the target p_{t,:} is the main attention over every visible
        compressed entry, summed over heads and L1-normalised (no gradient), and L^I = KL(p_{t,:} || softmax(I_{t,:}))
        averaged over the queries that see an entry. The indexer's inputs are detached, so L^I trains only the
        indexer and the language-model loss only the rest (V3.2's sparse stage). This is V3.2's recipe applied to
        compressed entries. V4 (report §4.2.2) trains with dense attention for the first 1T tokens, then, at 64K
        sequence length, warms the lightning indexer up for a short stage and trains sparsely from there on; the
        report does not give the indexer's loss."""
        with torch.no_grad():
            vis = visible_entries(q_pos, entries.shape[1], self.compressor.rate)            # (T, N)
            logits = torch.einsum("bhtd,bnd->bhtn", q, entries) * self.head_dim ** -0.5
            p = torch.softmax(logits.masked_fill(~vis, float("-inf")), dim=-1).nan_to_num(0.0).sum(dim=1)
            target = p / p.sum(dim=-1, keepdim=True).clamp_min(1e-30)
        rows = vis.any(dim=-1)
        if not bool(rows.any()):
            return index_scores.new_zeros(())
        return indexer_kl_loss(index_scores[:, rows], target[:, rows])

    def forward(self, x, start_pos: int = 0, cache: V4Cache | None = None):
        _check_input(x, self.d_model, start_pos)
        if cache is not None and not isinstance(cache, V4Cache):
            raise ValueError(f"cache must be a V4Cache or None, got {type(cache).__name__}")
        if cache is not None and cache.length != start_pos:
            raise ValueError(f"start_pos={start_pos} but the cache holds {cache.length} tokens; they must be equal")
        if cache is None and start_pos and self.compressor is not None:
            raise ValueError("start_pos must be 0 without a cache (compressed windows count from position 0)")
        B, T, _ = x.shape
        H, D, r = self.n_heads, self.head_dim, self.rope_dim
        train_indexer = self.kind == "csa" and self.training and torch.is_grad_enabled() and cache is None
        self.index_loss = None
        q_res = self.q_norm(self.q_down(x))
        q = self.q_up(q_res).view(B, T, H, D).transpose(1, 2)
        q = q * torch.rsqrt(q.pow(2).mean(-1, keepdim=True) + self.eps)       # per-head RMSNorm, no weight
        q = partial_rope(q, start_pos, r, self.rope_base)                        # (B, H, T, D)
        kv = partial_rope(self.kv_norm(self.kv(x)), start_pos, r, self.rope_base)  # (B, T, D)

        # Sliding-window branch: query t sees keys t - n_win < s <= t.
        prior = cache.window if cache is not None and cache.window is not None else kv[:, :0]
        keys = torch.cat([prior, kv], dim=1)
        q_pos = torch.arange(start_pos, start_pos + T, device=x.device)
        k_pos = torch.arange(start_pos - prior.shape[1], start_pos + T, device=x.device)
        allowed = (k_pos[None] <= q_pos[:, None]) & (k_pos[None] > q_pos[:, None] - self.window)
        allowed = allowed.expand(B, T, -1)
        if cache is not None:
            cache.window = keys[:, max(0, keys.shape[1] - (self.window - 1)):]
            cache.length += T
        # Logits over the window's keys, then over the compressed entries each query may use.
        scores = torch.einsum("bhtd,bsd->bhts", q, keys) * D ** -0.5
        scores = scores.masked_fill(~allowed[:, None], float("-inf"))
        sel_keys = None
        if self.compressor is not None:
            entries = self.compressor(x, cache.main if cache is not None else None)   # (B, N, D)
            N = entries.shape[1]
            if self.kind == "hca":                     # HCA: dense over every complete entry (N = S / m' is small)
                sel_keys = entries[:, None].expand(B, T, N, D)
                ok = visible_entries(q_pos, N, self.compressor.rate).expand(B, T, N)
            else:                                      # CSA: gather the indexer's top-k, O(k) instead of O(S / m)
                if train_indexer:                      # detached inputs: only the KL loss below trains the indexer
                    index_scores = self.indexer.scores(x.detach(), q_res.detach(), start_pos)
                    idx = self.indexer.select(index_scores)
                else:
                    idx = self.indexer(x, q_res, start_pos, cache.index if cache is not None else None)  # (B, T, k)
                ok = idx >= 0
                sel_keys = torch.gather(entries[:, None].expand(B, T, N, D), 2,
                                        idx.clamp_min(0)[..., None].expand(-1, -1, -1, D))
            if train_indexer:
                self.index_loss = self._indexer_loss(index_scores, q, entries, q_pos)
            sel_scores = torch.einsum("bhtd,btkd->bhtk", q, sel_keys) * D ** -0.5
            scores = torch.cat([scores, sel_scores.masked_fill(~ok[:, None], float("-inf"))], dim=-1)
        # Attention sink: one extra logit per head in the softmax, its probability mass discarded.
        sink = self.sinks.view(1, H, 1, 1).expand(B, H, T, 1).to(scores.dtype)
        p = torch.softmax(torch.cat([scores, sink], dim=-1), dim=-1)[..., :-1]
        o = p[..., :keys.shape[1]] @ keys[:, None]                             # values = keys (shared KV)
        if sel_keys is not None:
            o = o + torch.einsum("bhtk,btkd->bhtd", p[..., keys.shape[1]:], sel_keys)
        o = partial_rope(o, start_pos, r, self.rope_base, sign=-1.0)             # undo the values' RoPE at t
        o = o.transpose(1, 2).reshape(B, T, self.o_groups, H * D // self.o_groups)
        o = torch.einsum("btgi,goi->btgo", o, self.o_a)                        # grouped output projection
        return self.o_b(o.reshape(B, T, self.o_groups * self.o_lora_rank))
