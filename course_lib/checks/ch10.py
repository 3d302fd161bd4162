"""Exercises of 10_nano_deepseek: the capstone's parameter arithmetic, checkpoint layout and speed-up estimate."""
import torch

from course_lib.checks.core import register

_G = torch.Generator().manual_seed(9)


@register(cases=[(96, 48, 8, 1, 2), (7168, 2048, 256, 1, 8), (64, 32, 16, 2, 4), (10, 5, 4, 0, 1)],
          hint="Each expert is a SwiGLU with 3 d h weights. One token runs the shared experts and its top-K routed "
               "ones, never the other N_r - K.",
          wrong=[lambda d, h, n, s, k: 3 * d * h * (n + s),              # every expert
                 lambda d, h, n, s, k: 3 * d * h * k,                    # forgot the shared experts
                 lambda d, h, n, s, k: 2 * d * h * (k + s)])             # a two-matrix FFN, not SwiGLU
def moe_activated_ffn(d, h, n_routed, n_shared, k):
    """FFN weights one token multiplies with in one DeepSeekMoE layer (V3 Eq. 12)."""
    return 3 * d * h * (k + n_shared)


@register(cases=[(torch.randn(4, 8, generator=_G),), (torch.randn(6, 12, generator=_G),),
                 (torch.arange(8.0).view(2, 4),)],
          hint="The paper's M_k acts on [h; Emb]: columns 0..d-1 read h, d..2d-1 read the embedding. The release's "
               "eh_proj acts on [Emb; h]: swap the two column blocks.",
          wrong=[lambda w: w.clone(),                                   # unchanged
                 lambda w: w.flip(1),                                   # reverses the columns inside each block too
                 lambda w: torch.cat([w[w.shape[0] // 2:], w[:w.shape[0] // 2]])])   # swaps rows, not columns
def eh_proj_from_paper(w):
    """The release's eh_proj weight (d, 2d) from the paper-order projection M_k (d, 2d) (V3 Eq. 21)."""
    d = w.shape[1] // 2
    return torch.cat([w[:, d:], w[:, :d]], dim=1)


@register(cases=[(0.8, 1.1, 0.3), (1.0, 1.0, 0.0), (0.0, 1.0, 0.2), (0.9, 1.2, 0.25), (0.5, 1.05, 0.5)],
          hint="Per loop: one verify pass (cost c_verify plain steps) plus one MTP draft (cost c_draft) yield 1 + a "
               "tokens; plain greedy yields 1 token per step of cost 1.",
          wrong=[lambda a, cv, cd: 1 + a,                                 # ignores what the passes cost
                 lambda a, cv, cd: (1 + a) / cv,                          # forgets the draft's cost
                 lambda a, cv, cd: 2 * a / (cv + cd)])
def speculative_speedup(acceptance, c_verify, c_draft):
    """Expected tokens/s of greedy self-speculative decoding relative to plain greedy decoding."""
    return (1 + acceptance) / (c_verify + c_draft)
