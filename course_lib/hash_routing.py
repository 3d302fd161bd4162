"""Hash routing: DeepSeek-V4's first MoE layers choose experts by token id, not by a learned router.

DeepSeek-V4 report §2.1 ("Mixture-of-Experts"; §4.2.1 for the 3 layers): the dense FFNs of the
first Transformer blocks of V3 are replaced by MoE layers with Hash routing (Roller et al. 2021, arXiv 2106.04426): "a
predefined hash function" maps each input token id to its target experts; V4-Flash and V4-Pro hash-route their first 3
MoE layers (``num_hash_layers`` = 3 in both official ``config.json``). In the released code (ported by transformers as
``DeepseekV4HashRouter``) the hash is a frozen table ``tid2eid`` (vocab x top_k); the gate weights of the chosen
experts are still learned:

    s_t      = ScoreFn(W_g u_t)                          affinities; V4 uses Sqrt(Softplus(.)) (``scoring_func``)
    E_t      = tid2eid[token_id_t]                       the fixed experts of this token (no top-k, no bias)
    g_{i,t}  = s_{i,t} / sum_{j in E_t} s_{j,t} * routed_scaling_factor   for i in E_t (V3 Eq. 13-14's normalisation)
    h_t      = sum_{i in E_t} g_{i,t} FFN^(r)_i(u_t) + FFN^(s)(u_t)

Because the choice does not depend on the hidden state, the load per expert is known before training (it is the
token frequency summed over the token ids each expert owns), there is nothing to balance and nothing to collapse.

What is here: ``hash_table`` (random as Roller et al.'s "Random Hash", or balanced by token frequency),
``HashMoE`` built from ``course_lib.moe``'s ``RoutedExperts`` and ``course_lib.layers``' ``SwiGLU``, ``use_hash_routing`` to put it into
the first layers of a ``TinyLM``, and ``expert_load_of_table``.

Where our code differs from the released one: V4's experts clamp their SwiGLU (gate <= 10, up in [-10, 10],
``swiglu_limit``); ours do not (transformers has the clamp; the comparison test sets it out of reach).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from course_lib.kit.validate import int_at_least, one_of, positive_int
from course_lib.layers import SwiGLU
from course_lib.moe import RoutedExperts

SCORE_FUNCS = ("sqrtsoftplus", "sigmoid", "softmax")


def score(logits: torch.Tensor, score_func: str = "sqrtsoftplus") -> torch.Tensor:
    """Affinities from router logits: sqrt(softplus) (V4), sigmoid (V3 Eq. 15) or softmax (V2)."""
    if score_func == "sqrtsoftplus":
        return F.softplus(logits).sqrt()
    if score_func == "sigmoid":
        return logits.sigmoid()
    if score_func == "softmax":
        return logits.softmax(dim=-1)
    raise ValueError(f"score_func must be one of {SCORE_FUNCS}, got {score_func!r}")


def hash_table(vocab_size: int, n_experts: int, top_k: int = 1, seed: int = 0,
               token_counts: torch.Tensor | None = None) -> torch.Tensor:
    """A frozen token-id -> experts table (vocab_size, top_k) of distinct experts per row.

    Without ``token_counts``: each token id gets top_k experts drawn uniformly at random (Roller et al.'s Random
    Hash). With ``token_counts`` (vocab_size,): greedy balancing, most frequent tokens first, each to the top_k
    experts with the least expected load so far (Roller et al.'s Balanced assignment)."""
    positive_int("vocab_size", vocab_size)
    positive_int("n_experts", n_experts)
    positive_int("top_k", top_k)
    if top_k > n_experts:
        raise ValueError(f"top_k must be <= n_experts={n_experts}, got {top_k}")
    g = torch.Generator().manual_seed(seed)
    if token_counts is None:
        return torch.stack([torch.randperm(n_experts, generator=g)[:top_k] for _ in range(vocab_size)])
    counts = torch.as_tensor(token_counts, dtype=torch.float64)
    if counts.shape != (vocab_size,) or bool((counts < 0).any()):
        raise ValueError(f"token_counts must be {vocab_size} non-negative counts, got shape {tuple(counts.shape)}")
    load = torch.zeros(n_experts, dtype=torch.float64)
    table = torch.empty(vocab_size, top_k, dtype=torch.long)
    tiebreak = torch.rand(n_experts, generator=g, dtype=torch.float64) * 1e-9
    for tok in counts.argsort(descending=True, stable=True).tolist():
        chosen = (load + tiebreak).topk(top_k, largest=False).indices
        table[tok] = chosen
        load[chosen] += counts[tok]
    return table


def expert_load_of_table(table: torch.Tensor, token_counts: torch.Tensor, n_experts: int) -> torch.Tensor:
    """Token slots each expert receives if tokens occur with these counts: known before any training."""
    counts = torch.as_tensor(token_counts, dtype=torch.float64)
    load = torch.zeros(n_experts, dtype=torch.float64)
    for k in range(table.shape[1]):
        load.index_add_(0, table[:, k], counts)
    return load


class HashMoE(nn.Module):
    """A DeepSeekMoE layer whose routed experts are chosen by ``tid2eid[token_id]`` (V4 §2.1).

    Returns the two sums of V3 Eq. 12 (the block adds the residual), like ``course_lib.moe.MoE``.
    forward(x (B, T, d), input_ids (B, T) or None) -- without input_ids it uses the ids given to ``set_ids``
    (how ``use_hash_routing`` feeds a TinyLM, whose blocks do not pass token ids).
    After each forward: ``last_load`` (E,) token slots per expert, ``aux_loss`` 0 (nothing to balance)."""

    def __init__(self, d_model: int, vocab_size: int, n_routed_experts: int = 8, n_shared_experts: int = 1,
                 num_experts_per_tok: int = 2, moe_intermediate_size: int | None = None,
                 score_func: str = "sqrtsoftplus", routed_scaling_factor: float = 1.0,
                 table: torch.Tensor | None = None, seed: int = 0):
        super().__init__()
        positive_int("d_model", d_model)
        positive_int("vocab_size", vocab_size)
        positive_int("n_routed_experts", n_routed_experts)
        int_at_least("n_shared_experts", n_shared_experts, 0)
        positive_int("num_experts_per_tok", num_experts_per_tok)
        if num_experts_per_tok > n_routed_experts:
            raise ValueError(f"num_experts_per_tok must be <= n_routed_experts={n_routed_experts}, "
                             f"got {num_experts_per_tok}")
        one_of("score_func", score_func, SCORE_FUNCS)
        hidden = d_model // 2 if moe_intermediate_size is None else positive_int("moe_intermediate_size",
                                                                                  moe_intermediate_size)
        if table is None:
            table = hash_table(vocab_size, n_routed_experts, num_experts_per_tok, seed)
        table = torch.as_tensor(table, dtype=torch.long)
        if table.dim() != 2 or table.shape[0] < vocab_size or table.shape[1] != num_experts_per_tok:
            raise ValueError(f"table must have shape (>= vocab_size={vocab_size}, {num_experts_per_tok}), "
                             f"got {tuple(table.shape)}")
        if bool((table < 0).any()) or bool((table >= n_routed_experts).any()):
            raise ValueError(f"table entries must be expert ids in 0..{n_routed_experts - 1}")
        self.d_model, self.vocab_size = d_model, vocab_size
        self.n_routed_experts, self.num_experts_per_tok = n_routed_experts, num_experts_per_tok
        self.score_func, self.routed_scaling_factor = score_func, routed_scaling_factor
        self.gate = nn.Linear(d_model, n_routed_experts, bias=False)
        self.register_buffer("tid2eid", table.clone())                      # frozen: a buffer, never trained
        self.experts = RoutedExperts(n_routed_experts, d_model, hidden)
        self.shared_experts = SwiGLU(d_model, hidden * n_shared_experts) if n_shared_experts else None
        self._ids = None
        self.last_load = None
        self.aux_loss = torch.zeros(())

    def set_ids(self, input_ids: torch.Tensor | None) -> None:
        self._ids = input_ids

    def router(self, x: torch.Tensor, input_ids: torch.Tensor):
        """(N, d), (N,) -> (weights (N, k), indices (N, k), scores (N, E)); gates in float32 as V3/V4 do."""
        scores = score(F.linear(x.float(), self.gate.weight.float()), self.score_func)
        indices = self.tid2eid[input_ids]                                   # E_t: fixed by the token id
        weights = scores.gather(1, indices)
        weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20) * self.routed_scaling_factor
        return weights.to(x.dtype), indices, scores

    def forward(self, x: torch.Tensor, input_ids: torch.Tensor | None = None) -> torch.Tensor:
        if x.dim() != 3 or x.shape[-1] != self.d_model:
            raise ValueError(f"x must have shape (B, T, {self.d_model}), got {tuple(x.shape)}")
        ids = self._ids if input_ids is None else input_ids
        if ids is None or tuple(ids.shape) != tuple(x.shape[:2]):
            raise ValueError(f"input_ids must have shape {tuple(x.shape[:2])} (token ids of x), "
                             f"got {None if ids is None else tuple(ids.shape)}")
        if bool((ids < 0).any()) or bool((ids >= self.vocab_size).any()):
            raise ValueError(f"input_ids must lie in 0..{self.vocab_size - 1}")
        bsz, seq_len, d = x.shape
        flat, flat_ids = x.reshape(-1, d), ids.reshape(-1)
        weights, indices, _ = self.router(flat, flat_ids)
        # sparse dispatch as course_lib.moe: sort the (token, expert) slots by expert, run each expert on its block
        k = indices.shape[1]
        order = indices.reshape(-1).argsort(stable=True)
        token_of_slot = order // k
        counts = torch.bincount(indices.reshape(-1), minlength=self.n_routed_experts)
        y_sorted = self.experts(flat.index_select(0, token_of_slot), counts)
        y_sorted = y_sorted * weights.reshape(-1).index_select(0, order).unsqueeze(-1)
        y = torch.zeros_like(flat).index_add_(0, token_of_slot, y_sorted)
        if self.shared_experts is not None:
            y = y + self.shared_experts(flat)
        self.last_load = counts.detach().float()
        # on x's device: TinyLM stacks every layer's aux_loss, and CUDA's stack refuses a CPU tensor among them
        self.aux_loss = x.new_zeros(())
        return y.reshape(bsz, seq_len, d)

    def extra_repr(self) -> str:
        return (f"d_model={self.d_model}, routed={self.n_routed_experts}, top_k={self.num_experts_per_tok}, "
                f"score={self.score_func}, hash table {tuple(self.tid2eid.shape)}")


class HashRoutedLM(nn.Module):
    """A TinyLM whose first ``n_hash_layers`` feed-forward layers are ``HashMoE``: forward sets the token ids."""

    def __init__(self, model: nn.Module, hash_layers: list[HashMoE]):
        super().__init__()
        self.model = model
        self.hash_layers = hash_layers          # also registered inside model.blocks

    def forward(self, idx, targets=None, **kwargs):
        for layer in self.hash_layers:
            layer.set_ids(idx)
        try:
            return self.model(idx, targets, **kwargs)
        finally:
            for layer in self.hash_layers:
                layer.set_ids(None)


def use_hash_routing(model: nn.Module, n_hash_layers: int, table: torch.Tensor | None = None, seed: int = 0,
                     **moe_kwargs) -> HashRoutedLM:
    """Replace the FFN of the first ``n_hash_layers`` blocks of a course TinyLM with ``HashMoE`` layers.

    ``moe_kwargs`` as for HashMoE (n_routed_experts, num_experts_per_tok, ...). Other layers are left as they are
    (V4: the remaining layers route with the learned top-k router)."""
    blocks = model.blocks
    if isinstance(n_hash_layers, bool) or not isinstance(n_hash_layers, int) or not 0 < n_hash_layers <= len(blocks):
        raise ValueError(f"n_hash_layers must be an int in 1..{len(blocks)}, got {n_hash_layers!r}")
    cfg = model.cfg
    layers = []
    for i in range(n_hash_layers):
        layer = HashMoE(cfg.hidden_size, cfg.vocab_size, table=table, seed=seed + i, **moe_kwargs)
        layer.to(next(model.parameters()).device)
        for p in layer.parameters():                 # the course's small init, as TinyLM gives its own layers
            nn.init.normal_(p, mean=0.0, std=0.02)
        blocks[i].ffn = layer
        layers.append(layer)
    return HashRoutedLM(model, layers)
