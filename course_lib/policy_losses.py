"""RL after R1: the policy losses that followed GRPO, and DeepSeek-V3.2's stabilisers, in one entry point.

``course_lib.grpo`` holds GRPO as DeepSeekMath and R1 used it; this module reuses its pieces (group advantages, the
clipped surrogate, the k3 KL, the loss reductions) and adds what came after:

  * Dr. GRPO, "Understanding R1-Zero-Like Training" (arXiv 2503.20783) §3.2 (the biases it removes: §3.1):
    A_i = r_i - mean (no std), no 1/|o_i|, a constant normaliser (Listing 1).
  * DAPO (arXiv 2503.14476) §3, objective eq. 8: clip-higher (§3.1, eq. 10: eps_low, eps_high), a token-level loss
    over all tokens of the batch (§3.3, eq. 12), dynamic sampling (§3.2, eq. 11: keep only groups whose rewards are
    not all equal), overlong reward shaping (§3.4: soft overlong punishment, eq. 13, and overlong filtering of
    truncated outputs).
  * GSPO (arXiv 2507.18071) §4.1, eqs. 5 and 7: one importance ratio per sequence,
    s_i = (pi_theta(o_i) / pi_old(o_i))^(1/|o_i|), clipped per sequence; GSPO-token (§4.3, eqs. 13-14) gives each
    token its own gradient path with the same value.
  * CISPO, in MiniMax-M1 (arXiv 2506.13585) §3.1, eqs. 4-5: clip the importance weight, stop its gradient, and
    multiply the log-likelihood by it, so no token's gradient is ever dropped.
  * DeepSeek-V3.2 (arXiv 2512.02556) §3.1: the unbiased KL estimate (eq. 7), off-policy sequence masking
    (eqs. 8-9), Keep Routing (``record_routes`` / ``replay_routes`` on the MoE layers) and Keep Sampling Mask
    (``truncation_mask`` / ``kept_logprobs``).

Where TRL (huggingface/trl, ``GRPOTrainer._compute_loss``) implements a variant, tests/reference/test_policy_losses_trl.py feeds
it the same tensors and compares the numbers. Shapes: B completions (each group's G samples next to each other),
T completion positions; ``mask`` is 1.0 for real completion tokens and 0.0 for padding.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch

from course_lib.grpo import aggregate, clipped_surrogate, group_advantages, kl_k3
from course_lib.kit.validate import in_unit_interval, one_of
from course_lib.moe import moe_layers

VARIANTS = ("grpo", "dr_grpo", "dapo", "gspo", "gspo_token", "cispo")
# how each variant reduces its (B, T) per-token loss (course_lib.grpo.aggregate's names)
REDUCTION = {"grpo": "grpo", "dr_grpo": "dr_grpo", "dapo": "dapo", "gspo": "grpo", "gspo_token": "grpo",
             "cispo": "dapo"}
# the advantage each paper uses: "group" = (r - mean) / std, "none" = r - mean
ADVANTAGE_SCALE = {"grpo": "group", "dr_grpo": "none", "dapo": "group", "gspo": "group", "gspo_token": "group",
                   "cispo": "group"}


# ----------------------------------------------------------------------------------------------------------------
# Advantages and the DAPO data pieces
# ----------------------------------------------------------------------------------------------------------------

def advantages(rewards: torch.Tensor, group_size: int, variant: str = "grpo") -> torch.Tensor:
    """The group-relative advantage each variant's paper uses (Dr. GRPO §3.2 and V3.2 eq. 5: no division by std)."""
    _check_variant(variant)
    return group_advantages(rewards, group_size, ADVANTAGE_SCALE[variant])


def informative_groups(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """One bool per group: True when its rewards are not all equal, so its advantages are not all zero.

    DAPO §3.2, dynamic sampling: the constraint 0 < |{o_i correct}| < G of its objective (eq. 8, highlighted in
    eq. 11). For any reward: a group whose G rewards are equal has A_i = 0 for every sample and adds nothing to the
    gradient.
    """
    if not isinstance(group_size, int) or group_size < 2:
        raise ValueError(f"group_size must be an int >= 2, got {group_size!r}")
    rewards = torch.as_tensor(rewards)
    if rewards.dim() != 1 or rewards.numel() % group_size:
        raise ValueError(f"rewards must be 1-D with a multiple of group_size={group_size} entries, "
                         f"got shape {tuple(rewards.shape)}")
    grouped = rewards.view(-1, group_size)
    return (grouped != grouped[:, :1]).any(dim=1)


def overlong_penalty(lengths: torch.Tensor, max_len: int, cache_len: int) -> torch.Tensor:
    """DAPO's soft overlong punishment, added to the reward of each completion of `lengths` tokens.

    DAPO §3.4, eq. (13):  R_length(y) = 0                               if |y| <= L_max - L_cache
                                  ((L_max - L_cache) - |y|) / L_cache  if L_max - L_cache < |y| <= L_max
                                  -1                              if |y| > L_max
    """
    if not 0 < cache_len <= max_len:
        raise ValueError(f"cache_len must be in 1..max_len={max_len}, got {cache_len!r}")
    lengths = torch.as_tensor(lengths, dtype=torch.float64)
    soft = max_len - cache_len
    ramp = (soft - lengths) / cache_len
    return torch.where(lengths <= soft, torch.zeros_like(ramp), torch.where(lengths <= max_len, ramp, -1.0))


# ----------------------------------------------------------------------------------------------------------------
# Keep Sampling Mask (V3.2 §3.1)
# ----------------------------------------------------------------------------------------------------------------

def truncation_mask(logits: torch.Tensor, top_k: int | None = None, top_p: float | None = None) -> torch.Tensor:
    """The tokens top-k / top-p sampling may draw from (bool, same shape as logits): the rollout's action space.

    top-k keeps the k largest logits; top-p (nucleus) keeps the smallest set of most likely tokens whose probability
    reaches p (the token that crosses p is kept). Both together keep the intersection, as samplers do.
    """
    if top_k is not None and not 1 <= top_k:
        raise ValueError(f"top_k must be >= 1 or None, got {top_k!r}")
    if top_p is not None:
        in_unit_interval("top_p", top_p, include_zero=False)
    keep = torch.ones_like(logits, dtype=torch.bool)
    if top_k is not None and top_k < logits.shape[-1]:
        keep &= logits >= logits.topk(top_k, dim=-1).values[..., -1:]
    if top_p is not None and top_p < 1:
        probs, order = logits.float().softmax(-1).sort(dim=-1, descending=True)
        # a token is kept if the mass of the tokens ranked above it is still below p
        before = probs.cumsum(-1) - probs
        keep &= torch.zeros_like(keep).scatter(-1, order, before < top_p)
    return keep


def kept_logprobs(logits: torch.Tensor, tokens: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
    """log pi(token) renormalised over the kept tokens: (B, T) from logits (B, T, V) and tokens (B, T).

    V3.2 §3.1, Keep Sampling Mask: the truncation mask recorded when sampling from pi_old is applied to pi_theta
    too, so both policies are distributions over the same action subspace and their ratio is a valid importance
    weight:  pi_keep(o_t) = pi(o_t) / sum_{v in kept} pi(v).  keep=None is the full vocabulary.
    """
    if keep is not None:
        if keep.shape != logits.shape:
            raise ValueError(f"keep shape {tuple(keep.shape)} does not match logits shape {tuple(logits.shape)}")
        logits = logits.masked_fill(~keep, float("-inf"))
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))   # at least float32, float64 stays
    return torch.log_softmax(logits, dim=-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


# ----------------------------------------------------------------------------------------------------------------
# Keep Routing (V3.2 §3.1)
# ----------------------------------------------------------------------------------------------------------------

@contextmanager
def record_routes(model):
    """Record the experts every MoE layer of `model` chooses while the block runs (the rollout).

    Yields a list with one list per MoE layer, filled with that layer's (B * t, K_r) expert indices of each forward
    (t = tokens in that forward: the prompt, then one per decode step). ``routes_for_training`` joins them.
    """
    layers = moe_layers(model)
    routes = [[] for _ in layers]
    hooks = [layer.register_forward_hook(lambda mod, args, out, i=i: routes[i].append(
        (args[0].shape[0], mod.last_topk_idx.detach().clone()))) for i, layer in enumerate(layers)]
    try:
        yield routes
    finally:
        for h in hooks:
            h.remove()


def routes_for_training(routes, seq_len: int) -> list[torch.Tensor]:
    """Join the recorded routes of each layer into the (B * seq_len, K_r) order of one training forward.

    Decoding never feeds the last sampled token back, so the recording can be a position short of the training
    sequence (prompt + completion): that position only produces the logits after the last token, which no
    log-probability uses, and it reuses the route before it.
    """
    joined = []
    for layer_routes in routes:
        parts = [idx.view(bsz, -1, idx.shape[-1]) for bsz, idx in layer_routes]
        per_seq = torch.cat(parts, dim=1)                                          # (B, t_recorded, K_r)
        if per_seq.shape[1] > seq_len or per_seq.shape[1] < seq_len - 1:
            raise ValueError(f"seq_len={seq_len} does not match the {per_seq.shape[1]} recorded positions")
        if per_seq.shape[1] == seq_len - 1:
            per_seq = torch.cat([per_seq, per_seq[:, -1:]], dim=1)
        joined.append(per_seq.reshape(-1, per_seq.shape[-1]))
    return joined


@contextmanager
def replay_routes(model, routes: list[torch.Tensor]):
    """Keep Routing: inside the block every MoE layer uses the given experts instead of choosing its own.

    V3.2 §3.1: "we preserve the expert routing paths used during sampling ... and enforce the same routing paths
    during training, ensuring that identical expert parameters are optimized". The gate values of the replayed
    experts still come from the current router (V3 eqs. 13-14), so the router keeps receiving gradients.
    """
    layers = moe_layers(model)
    if len(routes) != len(layers):
        raise ValueError(f"routes has {len(routes)} entries, the model has {len(layers)} MoE layers")
    for layer, idx in zip(layers, routes):
        layer.replay_topk_idx = idx
    try:
        yield
    finally:
        for layer in layers:
            layer.replay_topk_idx = None


# ----------------------------------------------------------------------------------------------------------------
# The loss
# ----------------------------------------------------------------------------------------------------------------

def _check_variant(variant: str) -> None:
    one_of("variant", variant, VARIANTS)


def _masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (x * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)


def sequence_ratio(logp: torch.Tensor, old_logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """GSPO eq. (7): s_i = (pi_theta(o_i) / pi_old(o_i))^(1/|o_i|) = exp(mean_t log(pi_theta / pi_old)), shape (B,)."""
    return torch.exp(_masked_mean(logp - old_logp, mask))


def off_policy_mask(logp: torch.Tensor, sampling_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                    delta: float) -> torch.Tensor:
    """V3.2 eq. (9): M_i = 0 if A_i < 0 and 1/|o_i| sum_t log(pi_old / pi_theta) > delta, else 1; shape (B,).

    pi_old here is the probability the sampler returned (V3.2: "directly returned by the inference framework"), so
    the measured divergence covers both stale rollouts and rollout/training mismatch. No gradient flows through it.
    """
    divergence = _masked_mean(sampling_logp - logp.detach(), mask)
    return 1.0 - ((advantages < 0) & (divergence > delta)).to(logp.dtype)


def policy_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                variant: str = "grpo", *, epsilon: float = 0.2, epsilon_high: float | None = None,
                ref_logp: torch.Tensor | None = None, beta: float = 0.0, unbiased_kl: bool = False,
                off_policy_delta: float | None = None, sampling_logp: torch.Tensor | None = None,
                truncated: torch.Tensor | None = None, max_completion_length: int | None = None,
                num_tokens: float | None = None):
    """The policy loss (to MINIMISE) of one variant, with V3.2's options; returns (loss, stats).

    logp, old_logp, mask, ref_logp, sampling_logp: (B, T); advantages, truncated: (B,).
    variant: grpo | dr_grpo | dapo (token-level, clip-higher via epsilon_high) | gspo | gspo_token | cispo.
    epsilon / epsilon_high: the clip range (1 - epsilon, 1 + epsilon_high); for cispo epsilon_high is required and
        caps the importance weight at 1 + epsilon_high (MiniMax-M1 sets no lower bound).
    beta, ref_logp: the k3 KL penalty (DeepSeekMath eq. 4); unbiased_kl weights it by pi_theta/pi_old (V3.2 eq. 7).
    off_policy_delta: V3.2's off-policy sequence masking (eq. 9) with threshold delta; sampling_logp is the
        sampler's pi_old (default old_logp).
    truncated: DAPO's overlong filtering, True for completions cut at the length limit: their tokens leave the loss.
    max_completion_length: the constant of dr_grpo; num_tokens: dapo's / cispo's token count (default mask.sum()).
    stats: {"clip_frac": share of tokens whose clip is active, "masked_frac": share of sequences masked off}.
    """
    _check_variant(variant)
    if logp.dim() != 2 or old_logp.shape != logp.shape or mask.shape != logp.shape:
        raise ValueError(f"logp, old_logp and mask must share one (B, T) shape, got {tuple(logp.shape)}, "
                         f"{tuple(old_logp.shape)}, {tuple(mask.shape)}")
    if advantages.shape != logp.shape[:1]:
        raise ValueError(f"advantages must have shape ({logp.size(0)},), got {tuple(advantages.shape)}")
    if epsilon <= 0 or (epsilon_high is not None and epsilon_high <= 0):
        raise ValueError(f"epsilon and epsilon_high must be > 0, got {epsilon!r}, {epsilon_high!r}")
    if truncated is not None and truncated.shape != logp.shape[:1]:
        raise ValueError(f"truncated must have shape ({logp.size(0)},), got {tuple(truncated.shape)}")
    if beta < 0 or (beta > 0 and ref_logp is None):
        raise ValueError(f"beta must be >= 0 and needs ref_logp when > 0, got beta={beta!r}")
    if unbiased_kl and beta == 0:
        raise ValueError("unbiased_kl needs beta > 0 (it reweights the KL penalty)")
    if variant == "cispo" and epsilon_high is None:
        raise ValueError("epsilon_high is required for variant='cispo' (the cap on the importance weight is 1 + it)")
    if max_completion_length is not None and variant != "dr_grpo":
        raise ValueError(f"max_completion_length is the constant of dr_grpo only, got variant={variant!r}")
    if num_tokens is not None and REDUCTION[variant] != "dapo":
        raise ValueError(f"num_tokens is for the token-level variants dapo and cispo, got variant={variant!r}")
    if off_policy_delta is None and sampling_logp is not None:
        raise ValueError("sampling_logp is only used by off-policy sequence masking: set off_policy_delta")
    mask = mask.to(logp.dtype)
    if truncated is not None:
        mask = mask * (~truncated.bool()).to(logp.dtype).unsqueeze(1)
    adv = advantages.to(logp.dtype).unsqueeze(1)
    eps_high = epsilon if epsilon_high is None else epsilon_high

    if variant in ("grpo", "dr_grpo", "dapo"):
        # DeepSeekMath eq. (3) / DAPO eq. (10): min(r_t A, clip(r_t, 1 - eps_low, 1 + eps_high) A), r_t token ratio
        objective = clipped_surrogate(logp, old_logp, advantages.to(logp.dtype), epsilon, epsilon_high)
        ratio = torch.exp(logp - old_logp)
    elif variant in ("gspo", "gspo_token"):
        log_s = _masked_mean(logp - old_logp, mask).unsqueeze(1)                      # log s_i, GSPO eq. (7)
        if variant == "gspo_token":
            # GSPO eq. (14): s_{i,t} = sg[s_i] * pi_theta(o_t) / sg[pi_theta(o_t)]  (s_i's value, a token's gradient)
            log_s = log_s.detach() + logp - logp.detach()
        ratio = torch.exp(log_s).expand_as(logp)
        # GSPO eq. (5) / (13): min(s A, clip(s, 1 - eps, 1 + eps_high) A), one clip decision per sequence
        objective = torch.min(ratio * adv, torch.clamp(ratio, 1 - epsilon, 1 + eps_high) * adv)
    else:
        ratio = torch.exp(logp - old_logp)
        # MiniMax-M1 eqs. (4)-(5), CISPO: sg(r_hat_t) A log pi_theta(o_t), r_hat_t = min(r_t, 1 + eps_high^IS)
        objective = torch.clamp(ratio, max=1 + epsilon_high).detach() * adv * logp

    seq_keep = torch.ones_like(advantages, dtype=logp.dtype)
    if off_policy_delta is not None:
        sampler = old_logp if sampling_logp is None else sampling_logp
        seq_keep = off_policy_mask(logp, sampler, advantages.to(logp.dtype), mask, off_policy_delta)
    # V3.2 eq. (8): the mask multiplies the policy term only, not the KL penalty
    per_token_loss = -objective * seq_keep.unsqueeze(1)
    if beta > 0:
        kl = kl_k3(logp, ref_logp)
        if unbiased_kl:
            # V3.2 eq. (7): D_KL = pi_theta/pi_old * (pi_ref/pi_theta - log(pi_ref/pi_theta) - 1)
            kl = torch.exp(logp - old_logp) * kl
        per_token_loss = per_token_loss + beta * kl
    loss = aggregate(per_token_loss, mask, REDUCTION[variant], max_completion_length, num_tokens)

    with torch.no_grad():
        r = ratio.detach()
        if variant == "cispo":
            clipped = (r > 1 + epsilon_high) & (adv > 0)
        else:
            clipped = ((r < 1 - epsilon) & (adv < 0)) | ((r > 1 + eps_high) & (adv > 0))
        clip_frac = (clipped.to(mask.dtype) * mask).sum() / mask.sum().clamp(min=1.0)
        masked_frac = 1.0 - seq_keep.mean()
    return loss, {"clip_frac": float(clip_frac), "masked_frac": float(masked_frac)}
