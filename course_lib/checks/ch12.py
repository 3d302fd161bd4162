"""Exercises of 12_rl_after_r1: CISPO's and GSPO's losses, V3.2's unbiased KL and its off-policy sequence mask."""
import torch

from course_lib import policy_losses as pl
from course_lib.grpo import kl_k3
from course_lib.checks.core import register


def _g(seed):
    return torch.Generator().manual_seed(seed)


def _batch(seed, B=6, T=5, spread=0.3):
    """A seeded batch: log-probs, old log-probs a little apart (so some ratios leave the clip range), advantages,
    a padding mask with every completion at least one token long."""
    g = _g(seed)
    logp = torch.log(torch.rand(B, T, generator=g, dtype=torch.float64) * 0.9 + 0.05)
    old = logp + spread * torch.randn(B, T, generator=g, dtype=torch.float64)
    adv = torch.randn(B, generator=g, dtype=torch.float64)
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    mask = (torch.arange(T)[None] < lengths[:, None]).double()
    return logp, old, adv, mask


def _masked_mean(x, mask):
    return (x * mask).sum(-1) / mask.sum(-1)


# ------------------------------------------------------------------------------ 1. CISPO
def _cispo_per_sequence(logp, old, adv, mask, eps_high):            # GRPO's 1/|o_i|, not the token-level mean
    w = torch.clamp(torch.exp(logp - old), max=1 + eps_high).detach()
    return -_masked_mean(w * adv[:, None] * logp, mask).mean()


def _cispo_both_sides(logp, old, adv, mask, eps_high):               # PPO's two-sided clip of the weight
    w = torch.clamp(torch.exp(logp - old), 1 - eps_high, 1 + eps_high).detach()
    return -(w * adv[:, None] * logp * mask).sum() / mask.sum()


def _cispo_ppo(logp, old, adv, mask, eps_high):                      # the clipped surrogate, not CISPO
    r = torch.exp(logp - old)
    obj = torch.min(r * adv[:, None], torch.clamp(r, 1 - eps_high, 1 + eps_high) * adv[:, None])
    return -(obj * mask).sum() / mask.sum()


def _cispo_padding(logp, old, adv, mask, eps_high):                  # padding tokens counted
    w = torch.clamp(torch.exp(logp - old), max=1 + eps_high).detach()
    return -(w * adv[:, None] * logp).mean()


@register(cases=[_batch(1) + (0.2,), _batch(2, spread=0.6) + (0.28,), _batch(3, B=4, T=7) + (5.0,),
                 _batch(4, B=8, T=3, spread=1.0) + (0.1,)],
          hint=("CISPO keeps every token in the loss: instead of clipping the objective it caps the importance "
                "weight, stops its gradient, and multiplies the token's log-probability by it. Average over all "
                "real tokens of the batch.",
                "r_t = exp(logp - old_logp);  w_t = sg(min(r_t, 1 + eps_high));  "
                "loss = -sum_{i,t} w_t A_i log pi(o_t) mask / sum mask   (MiniMax-M1 §3.1, eqs. 4-5)",
                "w = torch.clamp(torch.exp(logp - old_logp), max=1 + eps_high).detach()\n"
                "   return -(w * adv[:, None] * logp * mask).sum() / mask.sum()"),
          wrong=[_cispo_per_sequence, _cispo_both_sides, _cispo_ppo, _cispo_padding])
def cispo_loss(logp, old_logp, adv, mask, eps_high):
    """CISPO's loss to minimise, token-level over the batch (course_lib.policy_losses, variant "cispo")."""
    return pl.policy_loss(logp, old_logp, adv, mask, "cispo", epsilon_high=eps_high)[0]


# ------------------------------------------------------------------------------ 2. GSPO
def _gspo_token_ratios(logp, old, adv, mask, eps_low, eps_high):     # GRPO's token ratios
    r = torch.exp(logp - old)
    obj = torch.min(r * adv[:, None], torch.clamp(r, 1 - eps_low, 1 + eps_high) * adv[:, None])
    return -_masked_mean(obj, mask).mean()


def _gspo_product(logp, old, adv, mask, eps_low, eps_high):          # the whole-sequence ratio, no 1/|o_i| root
    s = torch.exp(((logp - old) * mask).sum(-1))
    return -torch.min(s * adv, torch.clamp(s, 1 - eps_low, 1 + eps_high) * adv).mean()


def _gspo_unclipped(logp, old, adv, mask, eps_low, eps_high):
    s = torch.exp(_masked_mean(logp - old, mask))
    return -(s * adv).mean()


@register(cases=[_batch(5, spread=0.05) + (0.2, 0.2), _batch(6, spread=0.3) + (0.1, 0.15),
                 _batch(7, B=4, T=6, spread=0.01) + (3e-3, 4e-3), _batch(8, spread=0.2) + (0.05, 0.05)],
          hint=("GSPO replaces the token ratios by one ratio per sequence: the geometric mean of its token ratios. "
                "Clip that ratio once per sequence, then average over the sequences.",
                "s_i = exp( (1/|o_i|) sum_t (logp - old_logp) )  (GSPO eq. 7);  "
                "loss = -mean_i min(s_i A_i, clip(s_i, 1 - eps_low, 1 + eps_high) A_i)  (GSPO eq. 5)",
                "s = torch.exp(((logp - old_logp) * mask).sum(-1) / mask.sum(-1))\n"
                "   return -torch.min(s * adv, torch.clamp(s, 1 - eps_low, 1 + eps_high) * adv).mean()"),
          wrong=[_gspo_token_ratios, _gspo_product, _gspo_unclipped])
def gspo_loss(logp, old_logp, adv, mask, eps_low, eps_high):
    """GSPO's sequence-level clipped loss (course_lib.policy_losses, variant "gspo")."""
    return pl.policy_loss(logp, old_logp, adv, mask, "gspo", epsilon=eps_low, epsilon_high=eps_high)[0]


# ------------------------------------------------------------------------------ 3. V3.2's unbiased KL
def _kl_cases():
    out = []
    for seed in (9, 10, 11):
        g = _g(seed)
        logp = torch.log(torch.rand(3, 4, generator=g, dtype=torch.float64) * 0.9 + 0.05)
        out.append((logp, logp + 0.4 * torch.randn(3, 4, generator=g, dtype=torch.float64),
                    logp + 0.4 * torch.randn(3, 4, generator=g, dtype=torch.float64)))
    return out


@register(cases=_kl_cases(),
          hint=("The tokens were sampled from pi_old, not pi_theta, so the k3 estimate of KL(pi_theta || pi_ref) needs "
                "an importance weight: the ratio pi_theta / pi_old of each token.",
                "D_t = pi_theta/pi_old * (pi_ref/pi_theta - log(pi_ref/pi_theta) - 1)   (DeepSeek-V3.2 §3.1, eq. 7)",
                "x = ref_logp - logp\n   return torch.exp(logp - old_logp) * (torch.exp(x) - x - 1)"),
          wrong=[lambda logp, old, ref: kl_k3(logp, ref),                                  # k3 with no weight
                 lambda logp, old, ref: torch.exp(old - logp) * kl_k3(logp, ref),          # weight upside down
                 lambda logp, old, ref: torch.exp(logp - old) * (logp - ref)])             # weighted k1
def unbiased_kl(logp, old_logp, ref_logp):
    """V3.2 eq. 7, per token: the k3 estimate weighted by pi_theta / pi_old."""
    return torch.exp(logp - old_logp) * kl_k3(logp, ref_logp)


# ------------------------------------------------------------------------------ 4. off-policy sequence masking
def _mask_cases():
    g = _g(12)
    logp = torch.log(torch.rand(6, 4, generator=g, dtype=torch.float64) * 0.9 + 0.05)
    samp = logp + 0.2 * torch.randn(6, 4, generator=g, dtype=torch.float64)
    adv = torch.tensor([1.0, -1.0, -0.5, 0.7, -2.0, -0.1], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 1, 1], [1, 1, 0, 0]],
                        dtype=torch.float64)
    by_hand = (torch.zeros(4, 2, dtype=torch.float64),
               torch.tensor([[0.1, 0.1], [0.1, 0.1], [0.2, 0.0], [0.0, 0.0]], dtype=torch.float64),
               torch.tensor([1.0, -1.0, -1.0, -1.0], dtype=torch.float64), torch.ones(4, 2, dtype=torch.float64), 0.05)
    long_short = (torch.zeros(2, 4, dtype=torch.float64), torch.tensor([[0.3, 0, 0, 0], [0.3, 0, 0, 0]],
                  dtype=torch.float64), torch.tensor([-1.0, -1.0], dtype=torch.float64),
                  torch.tensor([[1, 1, 1, 1], [1, 0, 0, 0]], dtype=torch.float64), 0.1)
    return [by_hand, long_short, (logp, samp, adv, mask, 0.05), (logp, samp, adv, mask, 0.2)]


@register(cases=_mask_cases(),
          hint=("A sequence leaves the policy term only when two things hold at once: its advantage is negative, and "
                "the sampler's policy has drifted from the current one by more than delta, measured as the mean "
                "log-ratio over the sequence's own tokens.",
                "M_i = 0 if A_i < 0 and (1/|o_i|) sum_t log(pi_old(o_t) / pi_theta(o_t)) > delta, else 1   "
                "(DeepSeek-V3.2 §3.1, eq. 9)",
                "div = ((sampling_logp - logp) * mask).sum(-1) / mask.sum(-1)\n"
                "   return 1.0 - ((adv < 0) & (div > delta)).to(logp.dtype)"),
          wrong=[lambda lp, s, a, m, d: 1.0 - (((s - lp) * m).sum(-1) / m.sum(-1) > d).to(lp.dtype),   # any sign
                 lambda lp, s, a, m, d: 1.0 - ((a < 0) & (((s - lp) * m).sum(-1) > d)).to(lp.dtype),  # sum, no 1/|o|
                 lambda lp, s, a, m, d: 1.0 - ((a < 0) & (((lp - s) * m).sum(-1) / m.sum(-1) > d)).to(lp.dtype)])
def off_policy_sequence_mask(logp, sampling_logp, adv, mask, delta):
    """V3.2 eq. 9: one 0/1 per sequence (course_lib.policy_losses.off_policy_mask)."""
    return pl.off_policy_mask(logp, sampling_logp, adv, mask, delta)
