"""DeepSeekMoE feed-forward layer with V2 / V3 routing.

What is here (papers cited next to each formula):

* Experts are SwiGLUs (``course_lib.layers``): the shared experts are one ``layers.SwiGLU``;
  ``RoutedExperts``: the N_r routed experts with stacked weights, run by a grouped matrix multiply.
* ``route``: the router. Affinities s (softmax as in DeepSeek-V2, or sigmoid as in DeepSeek-V3),
  optional group-limited routing, optional aux-loss-free bias used *only* for choosing experts,
  normalisation over the chosen experts and ``routed_scaling_factor``.
* ``expert_balance_loss`` (DeepSeekMoE / V2 expert-level auxiliary loss over the batch) and
  ``sequence_balance_loss`` (V3's complementary sequence-wise balance loss, per sequence); both use
  V3 eqs. (18)-(20), with P_i built from the normalised affinities s'.
* ``bias_update`` (V3's aux-loss-free balancing rule) and ``max_violation`` (the MaxVio metric).
* ``MoE``: N_s shared experts plus N_r fine-grained routed experts, with two dispatch strategies:
  ``"sparse"`` (each expert runs only on its own tokens; the default) and ``"loop"`` (one token at a
  time, for teaching). Tests prove both equal and prove the layer equal to transformers' DeepseekV3MoE.

Parameter names follow transformers' ``DeepseekV3Config`` where one exists.

Papers: DeepSeekMoE (arXiv 2401.06066), DeepSeek-V2 (arXiv 2405.04434), DeepSeek-V3 (arXiv 2412.19437).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .layers import SwiGLU, swiglu  # noqa: F401  (SwiGLU: the shared experts; re-exported)

SCORING_FUNCS = ("sigmoid", "softmax")
_GROUPED_MM_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
DISPATCH_MODES = ("sparse", "loop")


class RoutedExperts(nn.Module):
    """The N_r routed experts: N_r SwiGLUs whose weights are stacked into two 3-D tensors.

    ``gate_up[e]`` (2h, d) = [W1; W3] of ``layers.SwiGLU`` stacked (gate rows first, then up) and ``down[e]``
    (d, h) = its W2: the layout of transformers' ``DeepseekV3Experts``; both compute ``layers.swiglu``. Stacking costs nothing in readability (``expert(e, x)`` runs one
    expert) and lets one *grouped* matrix multiply run every expert on its own block of rows: the kernel
    DeepSeek's DeepGEMM provides on GPUs and ``torch.nn.functional.grouped_mm`` on recent PyTorch.
    """

    def __init__(self, n_experts: int, d_model: int, hidden: int):
        super().__init__()
        self.n_experts, self.hidden = n_experts, hidden
        self.use_grouped_mm = True        # False forces the per-expert loop (to compare the two)
        self.gate_up = nn.Parameter(torch.empty(n_experts, 2 * hidden, d_model))
        self.down = nn.Parameter(torch.empty(n_experts, d_model, hidden))
        for e in range(n_experts):
            # the default init of nn.Linear, expert by expert, so a stacked expert starts like a separate SwiGLU
            nn.init.kaiming_uniform_(self.gate_up[e], a=5 ** 0.5)
            nn.init.kaiming_uniform_(self.down[e], a=5 ** 0.5)

    def __len__(self) -> int:
        return self.n_experts

    def expert(self, e: int, x: torch.Tensor) -> torch.Tensor:
        """FFN_e(x) = W2_e swiglu(W1_e x, W3_e x) for one expert e: the same computation as layers.SwiGLU."""
        gate, up = F.linear(x, self.gate_up[e]).chunk(2, dim=-1)
        return F.linear(swiglu(gate, up), self.down[e])

    def forward(self, x_sorted: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        """Rows of ``x_sorted`` grouped by expert (``counts[e]`` rows for expert e, in order) -> FFN_e(row) each."""
        if self._grouped_mm_ok(x_sorted):
            # one grouped GEMM per projection: group e = rows offs[e-1]:offs[e] times expert e's matrix
            offs = counts.cumsum(0).to(torch.int32)
            gate, up = F.grouped_mm(x_sorted, self.gate_up.transpose(1, 2), offs=offs).chunk(2, dim=-1)
            return F.grouped_mm(swiglu(gate, up), self.down.transpose(1, 2), offs=offs)
        # portable path (any dtype, device and autograd): one matmul pair per expert that has tokens
        outs = []
        chunks = x_sorted.split(counts.tolist())
        # unbind once: its backward writes all experts' gradients into the stacked tensor in one go
        for chunk, w_gate_up, w_down in zip(chunks, self.gate_up.unbind(0), self.down.unbind(0)):
            if chunk.shape[0]:
                gate, up = F.linear(chunk, w_gate_up).chunk(2, dim=-1)
                outs.append(F.linear(swiglu(gate, up), w_down))
        return torch.cat(outs) if outs else x_sorted.new_zeros(0, x_sorted.shape[-1])

    def _grouped_mm_ok(self, x: torch.Tensor) -> bool:
        """Use F.grouped_mm where this PyTorch has a kernel for the case: inference (PyTorch 2.13 has no CPU
        backward), CPU (its CUDA kernels want bfloat16 on recent GPUs), float32/bfloat16/float16 and rows
        whose byte length is a multiple of 16 (the kernel's alignment rule). Everything else takes the loop."""
        if not self.use_grouped_mm or not hasattr(F, "grouped_mm"):
            return False
        if x.device.type != "cpu" or x.dtype not in _GROUPED_MM_DTYPES:
            return False
        if torch.is_grad_enabled() and (x.requires_grad or self.gate_up.requires_grad):
            return False
        size = x.element_size()
        return (x.shape[-1] * size) % 16 == 0 and (self.hidden * size) % 16 == 0


# ----------------------------------------------------------------------------------------------
# Routing
# ----------------------------------------------------------------------------------------------

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
          routed_scaling_factor: float = 1.0):
    """Choose ``top_k`` experts per token and their gate values.

    ``logits`` (N, E) are u_t^T e_i. Returns ``(weights (N, k), indices (N, k), scores (N, E))`` where
    ``scores`` are the unbiased affinities s_{i,t}.
    """
    n_exp = logits.shape[-1]
    if scoring_func not in SCORING_FUNCS:
        raise ValueError(f"scoring_func must be one of {SCORING_FUNCS}, got {scoring_func!r}")
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
    indices = choice.topk(top_k, dim=-1).indices                         # (N, k)
    # V3 eq. (14): g'_{i,t} = s_{i,t} for the chosen experts (not s + b)
    weights = scores.gather(1, indices)
    # V3 eq. (13): g_{i,t} = g'_{i,t} / sum_j g'_{j,t}  (the 1e-20 only guards an all-zero row)
    if norm_topk_prob:
        weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20)
    # the released V2/V3 configs multiply the gates by a constant (2.5 in V3) to keep the routed output's scale
    weights = weights * routed_scaling_factor
    return weights, indices, scores


# ----------------------------------------------------------------------------------------------
# Load-balance measures and losses
# ----------------------------------------------------------------------------------------------

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
    losses = [expert_balance_loss(s, i, n_experts, top_k)
              for s, i in zip(scores.split(seq_len), indices.split(seq_len))]
    return torch.stack(losses).mean()


@torch.no_grad()
def bias_update(bias: torch.Tensor, load: torch.Tensor, gamma: float) -> torch.Tensor:
    """DeepSeek-V3 §2.1.2 aux-loss-free rule: b_i <- b_i + gamma * sign(mean load - load_i).

    An overloaded expert's bias drops by gamma, an underloaded one's rises by gamma (exactly average: no change).
    Returns a new tensor; no gradient flows through it.
    """
    load = load.to(bias.dtype)
    return bias + gamma * torch.sign(load.mean() - load)


# ----------------------------------------------------------------------------------------------
# The layer
# ----------------------------------------------------------------------------------------------

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
    if none), ``last_topk_idx`` (B*T, K_r), ``last_load`` (E,) token counts of that forward.
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
        _check_config(d_model, n_routed_experts, n_shared_experts, num_experts_per_tok, hidden, scoring_func,
                      n_group, topk_group, bias_update_speed, aux_loss_alpha, seq_aux_loss_alpha, dispatch)
        self.d_model = d_model
        self.n_routed_experts = n_routed_experts
        self.n_shared_experts = n_shared_experts
        self.num_experts_per_tok = num_experts_per_tok
        self.moe_intermediate_size = hidden
        self.scoring_func = scoring_func
        self.n_group = n_group
        self.topk_group = topk_group
        self.norm_topk_prob = norm_topk_prob
        self.routed_scaling_factor = routed_scaling_factor
        self.bias_update_speed = bias_update_speed
        self.aux_loss_alpha = aux_loss_alpha
        self.seq_aux_loss_alpha = seq_aux_loss_alpha
        self.dispatch = dispatch

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
                                         self.routed_scaling_factor)
        return weights.to(x.dtype), indices, scores

    # -- dispatch -------------------------------------------------------------------------------
    def experts_sparse(self, x: torch.Tensor, weights: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        """Sum_k w_{t,k} FFN_{i_{t,k}}(x_t), each expert computed only on the tokens routed to it.

        Sort the N*k (token, expert) slots by expert, so each expert's tokens form one contiguous block;
        run the experts on their blocks (one grouped GEMM, or one matmul pair per expert); scale by the
        gates; add each slot back to its token with index_add_.
        """
        n_tok, k = indices.shape
        flat = indices.reshape(-1)                                       # (N*k,) expert of each slot
        order = flat.argsort(stable=True)                                # slots grouped by expert
        token_of_slot = order // k                                       # which token each sorted slot is
        counts = torch.bincount(flat, minlength=self.n_routed_experts)   # tokens per expert
        # index_select rather than x[token_of_slot]: the same rows, several times faster on CPU
        y_sorted = self.experts(x.index_select(0, token_of_slot), counts)
        y_sorted = y_sorted * weights.reshape(-1).index_select(0, order).unsqueeze(-1)
        return torch.zeros_like(x).index_add_(0, token_of_slot, y_sorted)

    def experts_loop(self, x: torch.Tensor, weights: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        """The same sum written the obvious way: token by token, expert by expert (slow; for teaching)."""
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

        # bookkeeping for balance: counts per expert (outside autograd)
        with torch.no_grad():
            load = expert_load(indices, self.n_routed_experts)
            self.last_load = load
            self.last_topk_idx = indices
            if self.training and self.bias_update_speed > 0:
                self.load_since_update += load.to(self.load_since_update.device)
        self.aux_loss = self.balance_loss(scores, indices, seq_len)
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


def _check_config(d_model, n_routed, n_shared, top_k, hidden, scoring_func, n_group, topk_group,
                  gamma, alpha, seq_alpha, dispatch) -> None:
    """Bad settings fail early with a one-line message naming the parameter."""
    if d_model < 1:
        raise ValueError(f"d_model must be >= 1, got {d_model}")
    if n_routed < 1:
        raise ValueError(f"n_routed_experts must be >= 1, got {n_routed}")
    if n_shared < 0:
        raise ValueError(f"n_shared_experts must be >= 0, got {n_shared}")
    if hidden < 1:
        raise ValueError(f"moe_intermediate_size must be >= 1, got {hidden}")
    if not 1 <= top_k <= n_routed:
        raise ValueError(f"num_experts_per_tok must be in 1..n_routed_experts={n_routed}, got {top_k}")
    if scoring_func not in SCORING_FUNCS:
        raise ValueError(f"scoring_func must be one of {SCORING_FUNCS}, got {scoring_func!r}")
    if n_group < 1 or n_routed % n_group:
        raise ValueError(f"n_group must be >= 1 and divide n_routed_experts={n_routed}, got {n_group}")
    if not 1 <= topk_group <= n_group:
        raise ValueError(f"topk_group must be in 1..n_group={n_group}, got {topk_group}")
    if topk_group * (n_routed // n_group) < top_k:
        raise ValueError(f"topk_group={topk_group} groups of {n_routed // n_group} experts hold fewer than "
                         f"num_experts_per_tok={top_k} experts")
    for name, value in (("bias_update_speed", gamma), ("aux_loss_alpha", alpha), ("seq_aux_loss_alpha", seq_alpha)):
        if value < 0:
            raise ValueError(f"{name} must be >= 0, got {value}")
    if dispatch not in DISPATCH_MODES:
        raise ValueError(f"dispatch must be one of {DISPATCH_MODES}, got {dispatch!r}")


# ----------------------------------------------------------------------------------------------
# Analysis: who goes to which expert
# ----------------------------------------------------------------------------------------------

BYTE_CLASSES = ("letter", "digit", "space", "symbol", "utf8-lead", "utf8-cont")


def byte_classes(ids: torch.Tensor) -> torch.Tensor:
    """Token class of each byte id: index into BYTE_CLASSES.

    ASCII letters, digits, whitespace, other ASCII symbols, then the two kinds of non-ASCII UTF-8 bytes:
    lead bytes (0xC0-0xFF start a multi-byte character, e.g. a Chinese one) and continuation bytes (0x80-0xBF).
    """
    ids = torch.as_tensor(ids)
    if ids.numel() and (ids.min() < 0 or ids.max() > 255):
        raise ValueError("ids must be byte values in 0..255")
    cls = torch.full_like(ids, 3)                                         # symbol unless found below
    letter = ((ids >= 65) & (ids <= 90)) | ((ids >= 97) & (ids <= 122))
    cls[letter] = 0
    cls[(ids >= 48) & (ids <= 57)] = 1
    cls[(ids == 32) | (ids == 9) | (ids == 10) | (ids == 13)] = 2
    cls[(ids >= 0xC0)] = 4
    cls[(ids >= 0x80) & (ids < 0xC0)] = 5
    return cls


def mutual_information(a: torch.Tensor, b: torch.Tensor) -> float:
    """I(A; B) in bits from paired samples of two discrete variables (non-negative integer labels).

    I(A; B) = sum_{a,b} p(a,b) log2( p(a,b) / (p(a) p(b)) )
    """
    a, b = torch.as_tensor(a).reshape(-1).long(), torch.as_tensor(b).reshape(-1).long()
    if a.shape != b.shape:
        raise ValueError(f"a and b must pair up: {a.numel()} vs {b.numel()} samples")
    if a.numel() == 0:
        raise ValueError("a and b must not be empty")
    joint = torch.zeros(int(a.max()) + 1, int(b.max()) + 1, dtype=torch.float64)
    joint.index_put_((a, b), torch.ones(a.numel(), dtype=torch.float64), accumulate=True)
    p = joint / joint.sum()
    pa, pb = p.sum(1, keepdim=True), p.sum(0, keepdim=True)
    nz = p > 0
    return float((p[nz] * torch.log2(p[nz] / (pa * pb)[nz])).sum())


def conditional_mutual_information(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> float:
    """I(A; B | C) = sum_c p(c) I(A; B | C = c), in bits: what B tells about A once C is known."""
    a, b, c = (torch.as_tensor(t).reshape(-1).long() for t in (a, b, c))
    if not a.shape == b.shape == c.shape:
        raise ValueError("a, b and c must have the same number of samples")
    total = 0.0
    for value in c.unique():
        m = c == value
        total += m.double().mean().item() * mutual_information(a[m], b[m])
    return total


def entropy(a: torch.Tensor) -> float:
    """H(A) in bits = I(A; A)."""
    return mutual_information(a, a)


@torch.no_grad()
def moe_inputs(model: nn.Module, idx: torch.Tensor) -> list[torch.Tensor]:
    """Run ``model(idx)`` and return what each MoE layer received, flattened to (B*T, d), in layer order."""
    layers, seen = moe_layers(model), {}
    hooks = [layer.register_forward_pre_hook(lambda mod, args, i=i: seen.__setitem__(i, args[0].reshape(
        -1, args[0].shape[-1]))) for i, layer in enumerate(layers)]
    try:
        model(idx)
    finally:
        for h in hooks:
            h.remove()
    return [seen[i] for i in range(len(layers))]


@torch.no_grad()
def plot_routing(model: nn.Module, text: str, layer: int = 1, expert: int = 0, extra_bias: float = 0.0,
                 max_len: int = 64):
    """Routing playground figure: each byte's affinities s_{i,t} (colour) and its chosen experts (boxes).

    ``extra_bias`` is added to ``expert``'s aux-loss-free bias for this picture only: the boxes (selection)
    move, the colours (the affinities the gate values come from) do not. Returns the matplotlib Figure.
    """
    import matplotlib.pyplot as plt

    from . import style

    layers = moe_layers(model)
    if not text:
        raise ValueError("text must not be empty")
    if not 1 <= layer <= len(layers):
        raise ValueError(f"layer must be in 1..{len(layers)} (the model's MoE layers), got {layer}")
    moe = layers[layer - 1]
    if not 0 <= expert < moe.n_routed_experts:
        raise ValueError(f"expert must be in 0..{moe.n_routed_experts - 1}, got {expert}")
    device = next(model.parameters()).device
    ids = torch.tensor([list(text.encode("utf-8"))[:max_len]], device=device)
    u = moe_inputs(model, ids)[layer - 1]
    saved = moe.e_score_correction_bias.clone()
    try:
        moe.e_score_correction_bias[expert] += extra_bias
        _, chosen, scores = moe.router(u)
    finally:
        moe.e_score_correction_bias.copy_(saved)
    fig, ax = style.subplots(1, 1, width=9, height=0.9 + 0.18 * ids.shape[1])
    ax.imshow(scores.cpu(), cmap="magma", aspect="auto", vmin=0, vmax=1)
    for t, row in enumerate(chosen.cpu().tolist()):
        for e in row:
            ax.add_patch(plt.Rectangle((e - 0.5, t - 0.5), 1, 1, fill=False, edgecolor="white", lw=1.5))
    labels = [{32: "␣", 10: "↵"}.get(b, repr(bytes([b]))[2:-1]) for b in ids[0].tolist()]
    ax.set(yticks=range(len(labels)), yticklabels=labels, xticks=range(moe.n_routed_experts),
           xlabel="routed expert",
           title=f"layer {layer}: affinities s (colour), chosen experts (boxes); bias +{extra_bias:g} on expert {expert}")
    ax.grid(False)
    return fig
