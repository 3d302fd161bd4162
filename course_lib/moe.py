"""DeepSeekMoE feed-forward layer with V2 / V3 routing.

What is here (papers cited next to each formula):

* Experts are SwiGLUs (``course_lib.layers``): the shared experts are one ``layers.SwiGLU``, the N_r routed experts
  one ``RoutedExperts`` (``course_lib.experts``: stacked weights, run by a grouped matrix multiply).
* ``route``: the router. Affinities s (softmax as in DeepSeek-V2, or sigmoid as in DeepSeek-V3),
  optional group-limited routing, optional aux-loss-free bias used *only* for choosing experts,
  normalisation over the chosen experts and ``routed_scaling_factor``.
* ``expert_balance_loss`` (DeepSeekMoE / V2 expert-level auxiliary loss over the batch) and
  ``sequence_balance_loss`` (V3's complementary sequence-wise balance loss, per sequence); both use
  V3 eqs. (18)-(20), with P_i built from the normalised affinities s'.
* ``bias_update`` (V3's aux-loss-free balancing rule) and ``max_violation`` (the MaxVio metric).
* ``MoE``: N_s shared experts plus N_r fine-grained routed experts, with two dispatch strategies:
  ``"sparse"`` (each expert runs only on its own tokens; the default) and ``"loop"`` (one token at a
  time, for teaching). Tests prove both equal and prove the layer equal to transformers' DeepseekV3MoE. At
  inference with a few tokens (N*k <= N_r) "sparse" gathers the chosen experts' weights instead of sorting slots
  (``RoutedExperts.gathered``): a two-token verify pass then costs about what a one-token decode step does.

Argument names follow transformers' ``DeepseekV3Config`` where one exists; docs/name_map.md maps each weight to the
paper's symbol, DeepSeek's inference code and transformers' state dict.

Papers: DeepSeekMoE (arXiv 2401.06066), DeepSeek-V2 (arXiv 2405.04434), DeepSeek-V3 (arXiv 2412.19437).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

# The validation and the constants sit with the experts; SCORING_FUNCS and DISPATCH_MODES are re-exported here.
from course_lib.experts import DISPATCH_MODES, SCORING_FUNCS, RoutedExperts, check_moe_config  # noqa: F401
from course_lib.kit.validate import one_of
from course_lib.layers import SwiGLU


# -------------------------------------------------------------------------------------- Routing

def group_limited_mask(choice: torch.Tensor, n_group: int, topk_group: int, group_score: str) -> torch.Tensor:
    """Boolean mask (N, E): True for experts that sit in one of the ``topk_group`` best groups.

    The E experts are split into ``n_group`` equal groups (in V3 one group = the experts of one node).
    DeepSeek-V2 §2.2.2 (device-limited routing) ranks a group by its best expert ("max");
    DeepSeek-V3 §2.1.2 (node-limited routing) ranks a group by the sum of its two best affinities
    ("top2"), which is what the released V3 code and transformers do.
    """
    if group_score not in ("max", "top2"):
        raise ValueError(f"group_score must be 'max' or 'top2', got {group_score!r}")
    n_tok, n_exp = choice.shape
    grouped = choice.view(n_tok, n_group, n_exp // n_group)
    if group_score == "max":
        scores = grouped.amax(dim=-1)
    else:
        # group score = sum of the top-2 affinities in the group (a 1-expert group uses its only one)
        scores = grouped.topk(min(2, grouped.shape[-1]), dim=-1).values.sum(dim=-1)
    kept = scores.topk(topk_group, dim=-1).indices                       # (N, topk_group)
    group_mask = torch.zeros_like(scores, dtype=torch.bool).scatter_(1, kept, True)
    return group_mask.unsqueeze(-1).expand_as(grouped).reshape(n_tok, n_exp)


def route(logits: torch.Tensor, top_k: int, scoring_func: str = "sigmoid", bias: torch.Tensor | None = None,
          n_group: int = 1, topk_group: int = 1, norm_topk_prob: bool = True,
          routed_scaling_factor: float = 1.0, replay: torch.Tensor | None = None):
    """Choose ``top_k`` experts per token and their gate values (``replay`` (N, k): use these experts instead).

    ``logits`` (N, E) are u_t^T e_i. Returns ``(weights (N, k), indices (N, k), scores (N, E))`` where
    ``scores`` are the unbiased affinities s_{i,t}.
    """
    n_exp = logits.shape[-1]
    one_of("scoring_func", scoring_func, SCORING_FUNCS)
    if not 1 <= top_k <= n_exp:
        raise ValueError(f"top_k must be in 1..{n_exp} (the number of experts), got {top_k}")
    if n_group < 1 or n_exp % n_group or not 1 <= topk_group <= n_group:
        raise ValueError(f"n_group={n_group} must divide {n_exp} experts and topk_group={topk_group} be in 1..n_group")
    # Affinities. DeepSeek-V2 §2.2.1: s_{i,t} = Softmax_i(u_t^T e_i);  DeepSeek-V3 eq. (15): Sigmoid(u_t^T e_i)
    if scoring_func == "softmax":
        scores = logits.softmax(dim=-1)
    else:
        scores = logits.sigmoid()
    # V3 eq. (16), aux-loss-free balancing: select with s_{i,t} + b_i, but gate with s_{i,t} (bias only steers)
    choice = scores if bias is None else scores + bias
    if n_group > 1:
        keep = group_limited_mask(choice, n_group, topk_group, "max" if scoring_func == "softmax" else "top2")
        choice = choice.masked_fill(~keep, float("-inf"))
    if replay is not None and replay.shape != (logits.shape[0], top_k):
        raise ValueError(f"replay must have shape ({logits.shape[0]}, {top_k}), got {tuple(replay.shape)}")
    # Keep Routing (DeepSeek-V3.2 §3.1) replays the experts chosen at rollout; the gates below still come from s
    indices = choice.topk(top_k, dim=-1).indices if replay is None else replay.to(logits.device)   # (N, k)
    # V3 eq. (14): g'_{i,t} = s_{i,t} for the chosen experts (not s + b)
    weights = scores.gather(1, indices)
    # V3 eq. (13): g_{i,t} = g'_{i,t} / sum_j g'_{j,t}  (the 1e-20 only guards an all-zero row)
    if norm_topk_prob:
        weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20)
    # the released V2/V3 configs multiply the gates by a constant (2.5 in V3) to keep the routed output's scale
    weights = weights * routed_scaling_factor
    return weights, indices, scores


# ------------------------------------------------------------- Load-balance measures and losses

def expert_load(indices: torch.Tensor, n_experts: int) -> torch.Tensor:
    """How many token slots each expert received: (E,) float counts."""
    return torch.bincount(indices.reshape(-1), minlength=n_experts).float()


def max_violation(load: torch.Tensor) -> float:
    """MaxVio = max_i load_i / mean_i load_i - 1  (Wang et al. 2024, arXiv 2408.15664, the
    aux-loss-free balancing paper that DeepSeek-V3 §2.1.2 builds on).

    0 means perfectly balanced; 1 means the busiest expert has twice the average load.
    """
    load = torch.as_tensor(load, dtype=torch.float64)
    return float(load.max() / load.mean() - 1.0)


def _balance_terms(scores: torch.Tensor, indices: torch.Tensor, n_experts: int, top_k: int):
    """f_i and P_i of DeepSeek-V3 eqs. (18)-(20) over one set of T tokens. scores (T, E) = s, indices (T, K_r).

    f counts the experts each token actually used. Eq. (18) writes 1(s_{i,t} in TopK(s_t, K_r)); that is the
    same set unless the aux-loss-free bias b moved the selection, and then the used experts are the ones to balance.
    """
    n_tok = scores.shape[0]
    # V3 eq. (18): f_i = N_r / (K_r T) * sum_t 1(token t selects expert i)
    f = expert_load(indices, n_experts).to(scores.dtype) * n_experts / (top_k * n_tok)
    # V3 eq. (19): s'_{i,t} = s_{i,t} / sum_j s_{j,t}   (softmax affinities already sum to 1: then s' = s)
    s_norm = scores / scores.sum(dim=-1, keepdim=True)
    # V3 eq. (20): P_i = 1/T sum_t s'_{i,t}
    p = s_norm.mean(dim=0)
    return f, p


def expert_balance_loss(scores: torch.Tensor, indices: torch.Tensor, n_experts: int, top_k: int) -> torch.Tensor:
    """Expert-level balance loss over a whole batch of T tokens (DeepSeekMoE §3.3, DeepSeek-V2 §2.2.3).

    L_ExpBal = sum_i f_i * P_i,  f_i = N_r/(K_r T) sum_t 1(t selects i),  P_i = 1/T sum_t s'_{i,t},
    s'_{i,t} = s_{i,t} / sum_j s_{j,t}.
    DeepSeekMoE and V2 write P_i with the softmax affinities s, which already sum to 1 over the experts, so for them
    s' = s and this is their loss exactly. For V3's sigmoid affinities we normalise as V3 eq. (19) does, so P stays
    a distribution over the experts (otherwise the loss could shrink by lowering every affinity at once).
    Multiply by alpha yourself. Equals 1 when routing is perfectly uniform. f carries no gradient; the gradient
    reaches the router through P.
    """
    f, p = _balance_terms(scores, indices, n_experts, top_k)
    return (f * p).sum()


def sequence_balance_loss(scores: torch.Tensor, indices: torch.Tensor, n_experts: int, top_k: int,
                          seq_len: int) -> torch.Tensor:
    """DeepSeek-V3's complementary sequence-wise balance loss, eqs. (17)-(20), averaged over the sequences.

    L_Bal = sum_i f_i P_i (eq. 17, without alpha) with f_i (eq. 18) and P_i (eqs. 19-20, normalised s') counted
    inside each sequence of ``seq_len`` tokens (T in the paper is the sequence length), then averaged.
    """
    n_tok, _ = scores.shape
    if n_tok % seq_len:
        raise ValueError(f"seq_len={seq_len} must divide the number of tokens ({n_tok})")
    # The same f_i and P_i as _balance_terms, for all sequences at once (one row per sequence, no Python loop).
    n_seq = n_tok // seq_len
    # V3 eq. (18) per sequence: f_{b,i} = N_r / (K_r T) * (slots of sequence b routed to expert i)
    slots = indices.reshape(n_seq, seq_len * top_k)
    counts = scores.new_zeros(n_seq, n_experts).scatter_add_(1, slots, scores.new_ones(slots.shape))
    f = counts * n_experts / (top_k * seq_len)
    # V3 eqs. (19)-(20) per sequence: P_{b,i} = 1/T sum_{t in b} s'_{i,t}
    p = (scores / scores.sum(dim=-1, keepdim=True)).reshape(n_seq, seq_len, n_experts).mean(dim=1)
    # V3 eq. (17) per sequence, then the mean over the sequences
    return (f * p).sum(dim=-1).mean()


@torch.no_grad()
def bias_update(bias: torch.Tensor, load: torch.Tensor, gamma: float) -> torch.Tensor:
    """DeepSeek-V3 §2.1.2 aux-loss-free rule: b_i <- b_i + gamma * sign(mean load - load_i).

    An overloaded expert's bias drops by gamma, an underloaded one's rises by gamma (exactly average: no change).
    Returns a new tensor; no gradient flows through it.
    """
    load = load.to(bias.dtype)
    return bias + gamma * torch.sign(load.mean() - load)


# ------------------------------------------------------------------------------------ The layer

class MoE(nn.Module):
    """DeepSeekMoE layer (DeepSeekMoE §3; DeepSeek-V2 §2.2; DeepSeek-V3 §2.1.2).

    V3 eq. (12):  h'_t = u_t + sum_{i<=N_s} FFN^(s)_i(u_t) + sum_{i<=N_r} g_{i,t} FFN^(r)_i(u_t)
    This module returns the two sums; the residual u_t is added by the transformer block.

    Arguments (names as in transformers' DeepseekV3Config where one exists):
      n_routed_experts N_r, n_shared_experts N_s, num_experts_per_tok K_r, moe_intermediate_size (each
      expert's hidden width; default d_model // 2), scoring_func "sigmoid" (V3) | "softmax" (V2),
      n_group / topk_group (group-limited routing), norm_topk_prob, routed_scaling_factor;
      ours: bias_update_speed gamma (aux-loss-free; 0 = off), aux_loss_alpha (expert-level loss weight),
      seq_aux_loss_alpha (V3 sequence-wise loss weight), dispatch "sparse" | "loop".

    After each forward: ``aux_loss`` (scalar; alpha-weighted sum of the configured balance losses, zero
    if none; also zero in eval mode or under ``torch.no_grad()``, where no gradient step can use it),
    ``last_topk_idx`` (B*T, K_r), ``last_load`` (E,) token counts of that forward (recorded in every mode).
    In training mode with gamma > 0 the counts also accumulate until ``update_bias()`` is called
    (once per optimiser step; see ``update_biases(model)``).
    """

    def __init__(self, d_model: int, n_routed_experts: int = 16, n_shared_experts: int = 1,
                 num_experts_per_tok: int = 2, moe_intermediate_size: int | None = None,
                 scoring_func: str = "sigmoid", n_group: int = 1, topk_group: int = 1,
                 norm_topk_prob: bool = True, routed_scaling_factor: float = 1.0,
                 bias_update_speed: float = 0.0, aux_loss_alpha: float = 0.0, seq_aux_loss_alpha: float = 0.0,
                 dispatch: str = "sparse"):
        super().__init__()
        hidden = d_model // 2 if moe_intermediate_size is None else moe_intermediate_size
        check_moe_config(d_model=d_model, n_routed_experts=n_routed_experts, n_shared_experts=n_shared_experts,
                         num_experts_per_tok=num_experts_per_tok, moe_intermediate_size=hidden, n_group=n_group,
                         topk_group=topk_group, scoring_func=scoring_func, bias_update_speed=bias_update_speed,
                         aux_loss_alpha=aux_loss_alpha, seq_aux_loss_alpha=seq_aux_loss_alpha, dispatch=dispatch)
        self.d_model, self.moe_intermediate_size, self.dispatch = d_model, hidden, dispatch
        self.n_routed_experts, self.n_shared_experts = n_routed_experts, n_shared_experts
        self.num_experts_per_tok, self.scoring_func = num_experts_per_tok, scoring_func
        self.n_group, self.topk_group = n_group, topk_group
        self.norm_topk_prob, self.routed_scaling_factor = norm_topk_prob, routed_scaling_factor
        self.bias_update_speed, self.aux_loss_alpha, self.seq_aux_loss_alpha = (
            bias_update_speed, aux_loss_alpha, seq_aux_loss_alpha)

        # router: one centroid e_i per routed expert; logits = u_t^T e_i
        self.gate = nn.Linear(d_model, n_routed_experts, bias=False)
        # b_i of V3 eq. (16): a buffer, not a parameter -- it is set by bias_update, never by gradients
        self.register_buffer("e_score_correction_bias", torch.zeros(n_routed_experts))
        self.experts = RoutedExperts(n_routed_experts, d_model, hidden)
        # N_s shared experts of width h summed = one SwiGLU of width N_s * h (same as transformers)
        self.shared_experts = SwiGLU(d_model, hidden * n_shared_experts) if n_shared_experts else None

        self.register_buffer("load_since_update", torch.zeros(n_routed_experts), persistent=False)
        self.aux_loss = torch.zeros(())
        self.last_topk_idx = None
        self.last_load = None
        self.replay_topk_idx = None   # Keep Routing: (B*T, K_r) experts to use instead of choosing (policy_losses)

    # -- routing ------------------------------------------------------------------------------
    def router(self, x: torch.Tensor):
        """(N, d) -> (weights (N, k), indices (N, k), scores (N, E)).

        The router always runs in float32 (V3 §3.3.1 keeps the gating module in higher precision than the
        FP8 matmuls; transformers does the same), and the gate values come back in x's dtype.
        """
        logits = F.linear(x.float(), self.gate.weight.float())
        # a zero bias changes nothing (s + 0 == s exactly), so the bias is always applied
        bias = self.e_score_correction_bias.float()
        weights, indices, scores = route(logits, self.num_experts_per_tok, self.scoring_func, bias,
                                         self.n_group, self.topk_group, self.norm_topk_prob,
                                         self.routed_scaling_factor, self.replay_topk_idx)
        return weights.to(x.dtype), indices, scores

    # -- dispatch -------------------------------------------------------------------------------
    def experts_sparse(self, x: torch.Tensor, weights: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        """Sum_k w_{t,k} FFN_{i_{t,k}}(x_t), each expert computed only on the tokens routed to it.

        Sort the N*k (token, expert) slots by expert, so each expert's tokens form one contiguous block;
        run the experts on their blocks (one grouped GEMM, or one matmul pair per expert); scale by the
        gates; add each slot back to its token with index_add_. A few tokens at inference take the gathered path.
        """
        n_tok, k = indices.shape
        needs_grad = torch.is_grad_enabled() and (x.requires_grad or self.experts.gate_up.requires_grad)
        if n_tok * k <= self.n_routed_experts and not needs_grad:
            # a few tokens at inference (decode step, speculative verify pass): gather the chosen experts' weights,
            # one batched matmul per projection -- as many ops for 2 tokens as for 1 (see RoutedExperts.gathered)
            return (self.experts.gathered(x, indices) * weights.unsqueeze(-1)).sum(dim=1)
        if n_tok == 1:
            # one token (a batch-1 decode step): calling its K_r experts directly is cheaper than sorting slots
            return self.experts_loop(x, weights, indices)
        flat = indices.reshape(-1)                                       # (N*k,) expert of each slot
        order = flat.argsort(stable=True)                                # slots grouped by expert
        token_of_slot = order // k                                       # which token each sorted slot is
        counts = torch.bincount(flat, minlength=self.n_routed_experts)   # tokens per expert
        # index_select rather than x[token_of_slot]: the same rows, several times faster on CPU
        y_sorted = self.experts(x.index_select(0, token_of_slot), counts)
        y_sorted = y_sorted * weights.reshape(-1).index_select(0, order).unsqueeze(-1)
        return torch.zeros_like(x).index_add_(0, token_of_slot, y_sorted)

    def experts_loop(self, x: torch.Tensor, weights: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        """The same sum written the obvious way: token by token, expert by expert (slow for many tokens; for teaching,
        and what experts_sparse uses for a single token)."""
        rows = []
        for t in range(x.shape[0]):
            y_t = torch.zeros_like(x[t])
            for w, e in zip(weights[t], indices[t].tolist()):
                y_t = y_t + w * self.experts.expert(e, x[t])
            rows.append(y_t)
        return torch.stack(rows)

    # -- forward --------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 3 or x.shape[-1] != self.d_model:
            raise ValueError(f"x must have shape (B, T, {self.d_model}), got {tuple(x.shape)}")
        bsz, seq_len, d = x.shape
        flat = x.reshape(-1, d)
        weights, indices, scores = self.router(flat)

        if self.dispatch == "loop":
            y = self.experts_loop(flat, weights, indices)
        else:
            y = self.experts_sparse(flat, weights, indices)
        if self.shared_experts is not None:
            y = y + self.shared_experts(flat)

        # bookkeeping for balance: counts per expert (outside autograd); cheap, and read by MaxVio plots and the
        # aux-loss-free bias update, so it is kept in every mode
        with torch.no_grad():
            load = expert_load(indices, self.n_routed_experts)
            self.last_load = load
            self.last_topk_idx = indices
            if self.training and self.bias_update_speed > 0:
                self.load_since_update += load.to(self.load_since_update.device)
        # The balance losses only matter for a gradient step: in eval mode or under no_grad (decoding, evaluation)
        # they are skipped and aux_loss is a zero scalar.
        if self.training and torch.is_grad_enabled():
            self.aux_loss = self.balance_loss(scores, indices, seq_len)
        else:
            self.aux_loss = scores.new_zeros(())
        return y.reshape(bsz, seq_len, d)

    def balance_loss(self, scores: torch.Tensor, indices: torch.Tensor, seq_len: int) -> torch.Tensor:
        """alpha * L_ExpBal + alpha_seq * L_SeqBal (each term only when its alpha > 0)."""
        loss = scores.new_zeros(())
        if self.aux_loss_alpha > 0:
            loss = loss + self.aux_loss_alpha * expert_balance_loss(
                scores, indices, self.n_routed_experts, self.num_experts_per_tok)
        if self.seq_aux_loss_alpha > 0:
            loss = loss + self.seq_aux_loss_alpha * sequence_balance_loss(
                scores, indices, self.n_routed_experts, self.num_experts_per_tok, seq_len)
        return loss

    @torch.no_grad()
    def update_bias(self) -> None:
        """Apply V3's bias rule with the load counted since the last call, then reset the counter.

        Call once per training step, after ``optimizer.step()``. Does nothing when gamma = 0 or no
        tokens were counted.
        """
        if self.bias_update_speed <= 0 or self.load_since_update.sum() == 0:
            return
        self.e_score_correction_bias.copy_(
            bias_update(self.e_score_correction_bias, self.load_since_update, self.bias_update_speed))
        self.load_since_update.zero_()

    def extra_repr(self) -> str:
        return (f"d_model={self.d_model}, routed={self.n_routed_experts}, shared={self.n_shared_experts}, "
                f"top_k={self.num_experts_per_tok}, hidden={self.moe_intermediate_size}, "
                f"scoring={self.scoring_func}, groups={self.n_group}/{self.topk_group}, dispatch={self.dispatch}")


def moe_layers(model: nn.Module) -> list[MoE]:
    """All MoE layers inside a model, in order."""
    return [m for m in model.modules() if isinstance(m, MoE)]


def update_biases(model: nn.Module) -> None:
    """Call ``update_bias()`` on every MoE layer of ``model`` (once per optimiser step)."""
    for layer in moe_layers(model):
        layer.update_bias()
