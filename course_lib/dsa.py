"""DeepSeek Sparse Attention (DSA): a lightning indexer picks the top-k earlier tokens, MLA attends only to those.

DeepSeek-V3.2 (arXiv 2512.02556; first released as DeepSeek-V3.2-Exp) §2.1 adds DSA to DeepSeek-V3's MLA
(course_lib.mla.MLA). Two pieces:

* the lightning indexer (§2.1, Eq. 1), a few small ReLU heads that score every earlier token s for query t:
      I_{t,s} = sum_{j=1..H^I} w^I_{t,j} * ReLU(q^I_{t,j} . k^I_s)
* fine-grained token selection (§2.1, Eq. 2): the query attends only to the latents c_s whose I_{t,s} is in the
  top-k of its row,  u_t = Attn(h_t, {c_s | I_{t,s} in Top-k(I_{t,:})}).

Details follow the official inference code (github.com/deepseek-ai/DeepSeek-V3.2-Exp, inference/model.py, class
Indexer) and transformers' DeepseekV32Indexer, which is the test oracle (tests/reference/test_dsa_reference.py):
  q^I from the MLA's compressed query c^Q (the indexer reuses W^DQ), k^I = LayerNorm(W^K_I h) ONE key per token
  shared by the indexer heads, RoPE on the first d^R_h features of q^I and k^I, weights w^I = W^w h / sqrt(H^I)
  and the dot products scaled by 1 / sqrt(d^I).
Left out: the Hadamard rotation before the FP8 cast (orthogonal: q.k is unchanged) and the FP8 quantisation itself
(a precision choice). The indexer's RoPE is non-interleaved (rotate-half: feature j pairs with j + d^R_h/2), unlike
the main MLA attention's interleaved pairs in DeepSeek's code. The first public V3.2-Exp code (inference/model.py of
2025-09-29) rotated the indexer's q^I and k^I with the interleaved layout too, and that was a bug: DeepSeek changed
its inference code to the non-interleaved layout (Hugging Face deepseek-ai/DeepSeek-V3.2-Exp commit 1938e9df, which
SGLang PR #13439 cites on 2025-11-17 after long-context needle tests had failed; GitHub commit 8631a81) and
announced the fix on 2025-11-18 (UTC); vLLM (PR #28968, "ROPE in indexer shouldn't be interleaved") and SGLang
(PR #13531) followed. The official layout of the indexer is non-interleaved.

Cache per layer (dict): {"c_kv": (B, S, d_c), "k_rope": (B, S, d^R_h), "k_index": (B, S, d^I)}: MLA's latent and
RoPE key plus the indexer's one key per token (V3.2 stores it in FP8: d^I bytes + a scale).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from course_lib.mla import MLA
from course_lib.kit.validate import positive_int
from course_lib.layers import _check_cache, _rope_tables, apply_rope, causal_mask


# --------------------------------------------------------------------------------------------- lightning indexer
class LightningIndexer(nn.Module):
    """The lightning indexer of V3.2 §2.1 (Eq. 1): H^I heads of size d^I, one shared key per token.

    q_dim: size of the query input (the MLA's d'_c, or d_model without query compression).
    rope_dim: features of q^I and k^I that RoPE rotates (the FIRST rope_dim ones, as in the official code).
    """

    def __init__(self, d_model: int, q_dim: int, n_heads: int = 4, head_dim: int = 32, rope_dim: int = 16,
                 rope_base: float = 10000.0, norm_eps: float = 1e-6):
        super().__init__()
        self.n_heads = positive_int("index_n_heads", n_heads)
        self.head_dim = positive_int("index_head_dim", head_dim)
        positive_int("rope_dim", rope_dim)
        if rope_dim % 2 or rope_dim > head_dim:
            raise ValueError(f"rope_dim must be even and <= index_head_dim={head_dim}, got {rope_dim}")
        self.rope_dim, self.rope_base = rope_dim, float(rope_base)
        self.wq = nn.Linear(q_dim, n_heads * head_dim, bias=False)      # W^{IQ}: from c^Q, like the MLA query
        self.wk = nn.Linear(d_model, head_dim, bias=False)             # W^{IK}: one key per token
        self.k_norm = nn.LayerNorm(head_dim, eps=norm_eps)             # the official code's k_norm (a LayerNorm)
        self.weights = nn.Linear(d_model, n_heads, bias=False)         # w^I_{t,j} from h_t

    def _rope(self, x, start_pos):
        cos, sin = _rope_tables(start_pos, x.shape[-3] if x.dim() == 4 else x.shape[-2], self.rope_dim,
                                self.rope_base, x)
        if x.dim() == 4:                                               # (B, T, H, D): broadcast over heads
            cos, sin = cos[:, None], sin[:, None]
        r, rest = x.split([self.rope_dim, x.shape[-1] - self.rope_dim], dim=-1)
        return torch.cat([apply_rope(r, cos, sin, interleaved=False), rest], dim=-1)

    def keys(self, x, start_pos: int = 0):
        """k^I_s = RoPE(LayerNorm(W^{IK} h_s)), (B, T, d^I): what the cache keeps for the indexer."""
        return self._rope(self.k_norm(self.wk(x)), start_pos)

    def queries(self, c_q, start_pos: int = 0):
        """q^I_{t,j} = RoPE(W^{IQ} c^Q_t), (B, T, H^I, d^I)."""
        B, T, _ = c_q.shape
        return self._rope(self.wq(c_q).view(B, T, self.n_heads, self.head_dim), start_pos)

    def head_weights(self, x):
        """w^I_{t,j} = (W^w h_t)_j / sqrt(H^I), (B, T, H^I)."""
        return self.weights(x) * self.n_heads ** -0.5

    def scores(self, q, k, w):
        """Eq. 1: I_{t,s} = sum_j w_{t,j} ReLU(q_{t,j} . k_s / sqrt(d^I)), (B, T, S). No causal mask."""
        # The 1/sqrt(d^I) is inside the ReLU in the code; ReLU(a x) = a ReLU(x) for a > 0, so it is the same.
        dots = torch.einsum("bthd,bsd->bths", q, k) * self.head_dim ** -0.5
        return torch.einsum("bth,bths->bts", w, F.relu(dots))

    def forward_scores(self, x, c_q, start_pos: int, k_all):
        """Index scores (B, T, S) of the new tokens against the keys of all S tokens, future ones -inf."""
        s = self.scores(self.queries(c_q, start_pos), k_all, self.head_weights(x))
        mask = causal_mask(x.shape[1], k_all.shape[1], x.device)
        return s if mask is None else s.masked_fill(~mask, float("-inf"))

    def forward(self, x, c_q, start_pos: int = 0, k_cached=None):
        """Index scores of the T new tokens against all S = start_pos + T tokens, future ones set to -inf.

        Returns (scores (B, T, S), keys (B, S, d^I)); pass k_cached (B, start_pos, d^I) when decoding."""
        k = self.keys(x, start_pos)
        if k_cached is not None:
            k = torch.cat([k_cached, k], dim=1)
        return self.forward_scores(x, c_q, start_pos, k), k


def select_topk(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Fine-grained token selection (V3.2 Eq. 2): indices (B, T, min(k, S)) of the k largest index scores per
    query, in ascending token order. Entries that are -inf (future tokens of early queries) may be among them
    when fewer than k tokens are visible; the attention's causal mask removes those."""
    k = min(positive_int("index_topk", k), scores.shape[-1])
    return scores.topk(k, dim=-1).indices.sort(dim=-1).values


def topk_mask(indices: torch.Tensor, S: int) -> torch.Tensor:
    """Boolean (B, T, S) mask, True at the selected tokens."""
    mask = torch.zeros(*indices.shape[:-1], S, dtype=torch.bool, device=indices.device)
    return mask.scatter(-1, indices, True)


# --------------------------------------------------------------------------------------------- DSA
class DSA(MLA):
    """MLA whose queries attend only to the index_topk tokens the lightning indexer ranks highest (V3.2 §2.1).

    Same arguments as course_lib.mla.MLA plus
      index_topk        k, tokens kept per query (V3.2: 2048)
      index_n_heads     H^I (V3.2: 64)     index_head_dim  d^I (V3.2: 128)
      max_context       optional longest context; index_topk above it raises (the selection would keep everything)
    Every MLA weight keeps its name, so MLA.state_dict() loads into a DSA (strict=False: the indexer is new), and
    with index_topk >= context the output equals MLA's (tests/test_dsa.py).

    Paths: "naive" masks the unselected tokens out of the full decompressed attention (what the official prefill
    does); "absorbed" gathers the k selected latents and attends in latent space over those only, so a decode step
    costs O(k) instead of O(S) (what makes DSA fast; the official decode masks instead, a GPU kernel gathers).
    """

    def __init__(self, d_model: int, n_heads: int, index_topk: int = 64, index_n_heads: int = 4,
                 index_head_dim: int | None = None, max_context: int | None = None, **mla_kwargs):
        super().__init__(d_model, n_heads, **mla_kwargs)
        self.index_topk = positive_int("index_topk", index_topk)
        if max_context is not None and index_topk > positive_int("max_context", max_context):
            raise ValueError(f"index_topk={index_topk} is larger than the context max_context={max_context}: "
                             "nothing would be dropped (use attention.MLA)")
        d_i = 2 * self.qk_rope_head_dim if index_head_dim is None else index_head_dim
        self.indexer = LightningIndexer(d_model, self.q_lora_rank or d_model, index_n_heads, d_i,
                                        rope_dim=self.qk_rope_head_dim, rope_base=self.rope_base)

    def cache_elements_per_token(self) -> int:
        """(d_c + d^R_h) for the attention plus d^I for the indexer's key."""
        return self.kv_lora_rank + self.qk_rope_head_dim + self.indexer.head_dim

    @staticmethod
    def cache_append(cache: dict, name: str, new: torch.Tensor) -> torch.Tensor:
        """Append the new tokens' entry (B, T, ...) to cache[name] along the token axis; returns all S tokens'.
        (An inference engine writes into preallocated room instead of copying: bench/sparse.py's InPlaceCacheDSA.)"""
        cache[name] = torch.cat([cache[name], new], dim=1) if name in cache else new
        return cache[name]

    def forward(self, x, start_pos: int = 0, cache: dict | None = None, path: str | None = None,
                return_indices: bool = False):
        path = self.check_and_choose_path(x, start_pos, path)
        B, T, _ = x.shape
        dc, dr = self.kv_lora_rank, self.qk_rope_head_dim
        if cache is not None:
            _check_cache(cache, {"c_kv": (B, None, dc), "k_rope": (B, None, dr),
                                 "k_index": (B, None, self.indexer.head_dim)}, start_pos, x)
        # MLA's projections, V2 Eq. 9-15 (course_lib.mla.MLA.project).
        c_q, q_nope, q_rope, c_kv, k_rope = self.project(x, start_pos)
        S = start_pos + T
        everything = self.index_topk >= S            # nothing to drop: skip the scoring, attend densely
        k_index = self.indexer.keys(x, start_pos)                                  # k^I of the new tokens
        if cache is not None:
            c_kv, k_rope, k_index = (self.cache_append(cache, name, new) for name, new in
                                     (("c_kv", c_kv), ("k_rope", k_rope), ("k_index", k_index)))
        # Eq. 1 over all S tokens, then Eq. 2's top-k per query.
        index_scores = None if everything else self.indexer.forward_scores(x, c_q, start_pos, k_index)
        causal = causal_mask(T, S, x.device)
        idx = (torch.arange(S, device=x.device).expand(B, T, S) if everything
               else select_topk(index_scores, self.index_topk))                     # (B, T, k)

        if everything:
            # Dense MLA (either path of course_lib.mla.MLA): every latent, no selection.
            if path == "naive":
                o = self.attend_naive(q_nope, q_rope, c_kv, k_rope, causal, causal=True)
            else:
                o = self.attend_absorbed(q_nope, q_rope, c_kv, k_rope, causal)
        elif path == "naive":
            # The official prefill: full attention with the tokens the indexer did not keep masked out.
            keep = topk_mask(idx, S) if causal is None else topk_mask(idx, S) & causal   # (B, T, S)
            o = self.attend_naive(q_nope, q_rope, c_kv, k_rope, keep[:, None])
        else:
            # Absorbed MLA over the k gathered latents only: O(k) per query instead of O(S).
            c_sel = torch.gather(c_kv[:, None].expand(B, T, S, dc), 2, idx[..., None].expand(-1, -1, -1, dc))
            r_sel = torch.gather(k_rope[:, None].expand(B, T, S, dr), 2, idx[..., None].expand(-1, -1, -1, dr))
            # selected future tokens (when fewer than k are visible) stay masked
            valid = None if causal is None else torch.gather(causal.expand(B, T, S), 2, idx)   # (B, T, k)
            o = self.attend_absorbed(q_nope, q_rope, c_sel, r_sel, None if valid is None else valid[:, None])
        out = self.output(o)
        return (out, idx) if return_indices else out


# --------------------------------------------------------------------------------------------- training helpers
def attention_distribution(mla: MLA, x: torch.Tensor, last_only: bool = False) -> torch.Tensor:
    """V3.2 §2.1.1 warm-up target p_{t,:}: the main attention's probabilities summed over heads, L1-normalised.

    Computed with the dense MLA over x (B, T, d) from position 0; returns (B, T, T) (rows sum to 1), or (B, 1, T)
    for the last query only."""
    B, T, _ = x.shape
    H, dn, dr, dc = mla.n_heads, mla.qk_nope_head_dim, mla.qk_rope_head_dim, mla.kv_lora_rank
    cos, sin = _rope_tables(0, T, dr, mla.rope_base, x)
    xq = x[:, -1:] if last_only else x
    c_q = xq if mla.q_down is None else mla.q_norm(mla.q_down(xq))
    q_nope, q_rope = mla.q_up(c_q).view(B, xq.shape[1], H, dn + dr).transpose(1, 2).split([dn, dr], dim=-1)
    q_rope = apply_rope(q_rope, cos[-xq.shape[1]:], sin[-xq.shape[1]:], interleaved=mla.rope_interleave)
    c_kv, k_rope = mla.kv_down(x).split([dc, dr], dim=-1)
    k_nope = mla.kv_up(mla.kv_norm(c_kv)).view(B, T, H, -1)[..., :dn].transpose(1, 2)
    k_rope = apply_rope(k_rope, cos, sin, interleaved=mla.rope_interleave)
    scores = (q_nope @ k_nope.transpose(-2, -1) + q_rope @ k_rope[:, None].transpose(-2, -1)) * mla.softmax_scale
    mask = causal_mask(xq.shape[1], T, x.device)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    p = torch.softmax(scores, dim=-1).sum(dim=1)                                   # sum over heads
    return p / p.sum(dim=-1, keepdim=True)                                         # L1-normalise


def indexer_kl_loss(index_scores: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """V3.2 §2.1.1 Eq. 3: L^I = sum_t KL(p_{t,:} || Softmax(I_{t,:})), averaged over the queries here.

    index_scores (B, T, S) with -inf at future tokens; target (B, T, S) rows summing to 1 (zeros at the future)."""
    log_q = torch.log_softmax(index_scores, dim=-1)
    log_q = torch.where(target > 0, log_q, torch.zeros_like(log_q))                # 0 log 0 = 0, and no -inf * 0
    kl = (target * (torch.log(target.clamp_min(1e-30)) - log_q)).sum(-1)
    return kl.mean()


def prefill_cache(att: DSA, x: torch.Tensor) -> dict:
    """The decode cache of x (B, T, d) at positions 0 .. T-1 built from the projections alone (no attention is
    computed): what a prefill would leave behind. Lets a toy evaluate only its last query cheaply."""
    T, dc, dr = x.shape[1], att.kv_lora_rank, att.qk_rope_head_dim
    cos, sin = _rope_tables(0, T, dr, att.rope_base, x)
    c_kv, k_rope = att.kv_down(x).split([dc, dr], dim=-1)
    return {"c_kv": att.kv_norm(c_kv), "k_rope": apply_rope(k_rope, cos, sin, interleaved=att.rope_interleave),
            "k_index": att.indexer.keys(x, 0)}


def recall_at_k(index_scores: torch.Tensor, target: torch.Tensor, k: int, top: int = 1) -> float:
    """Fraction of each query's `top` most-attended tokens (by the dense target) found in the indexer's top-k."""
    idx = select_topk(index_scores, k)
    chosen = topk_mask(idx, index_scores.shape[-1])
    best = target.topk(min(top, target.shape[-1]), dim=-1).indices
    return chosen.gather(-1, best).float().mean().item()
