"""Exercises of 11_scale_out: all-to-all rows per rank, FP8 tile scales, pipeline bubbles, V3's experts per node."""
import torch

from course_lib.checks.core import register

_G = torch.Generator().manual_seed(10)


def _topk(n_tok, n_exp, k):
    return torch.rand(n_tok, n_exp, generator=_G).topk(k, dim=-1).indices


@register(cases=[(torch.tensor([[0, 1], [2, 7], [5, 6]]), 8, 4), (torch.tensor([[0, 3, 5]]), 6, 2),
                 (_topk(20, 16, 4), 16, 4), (_topk(30, 8, 2), 8, 2), (_topk(12, 16, 4), 16, 8)],
          hint="Rank q holds experts q*E/W ... (q+1)*E/W - 1. A token goes to rank q once if at least one of its "
               "experts is there: count, for each rank, the tokens with any expert // (E/W) == q.",
          wrong=[lambda idx, e, w: torch.bincount((idx // (e // w)).reshape(-1), minlength=w),   # one row per slot
                 lambda idx, e, w: torch.bincount(idx.reshape(-1) % w, minlength=w)])            # round-robin experts
def ep_dispatch_rows(indices, n_experts, world):
    """Tokens each rank receives in the dispatch: (world,) counts, one per token that has an expert there."""
    per = n_experts // world
    hit = torch.zeros(indices.shape[0], world, dtype=torch.bool)
    hit[torch.arange(indices.shape[0]).unsqueeze(1), indices // per] = True
    return hit.sum(0)


@register(cases=[(torch.tensor([[1.0, -8.0, 2.0, 0.5], [0.5, 0.25, -4.0, 1.0]]), 2),
                 (torch.randn(3, 12, generator=_G), 4), (torch.randn(5, 8, generator=_G) * 100, 8),
                 (torch.randn(2, 6, generator=_G), 3)],
          hint="One scale per row per group of `tile` columns: the group's largest |value| divided by 448, the "
               "largest E4M3 number (V3 §3.3.2). Reshape to (rows, cols // tile, tile) and take amax over the last "
               "dimension.",
          wrong=[lambda x, t: x.abs().amax(-1, keepdim=True).expand(-1, x.shape[1] // t) / 448,   # per row
                 lambda x, t: x.abs().reshape(x.shape[0], -1, t).amax(-1) / 127,                  # int8's range
                 lambda x, t: x.reshape(x.shape[0], -1, t).amax(-1) / 448])                      # forgot abs
def fp8_tile_scales(x, tile):
    """V3's activation scales: (rows, cols // tile) tensor of amax / 448 over 1 x tile groups."""
    return x.abs().reshape(x.shape[0], -1, tile).amax(-1) / 448


@register(cases=[("1F1B", 4, 1.0, 2.0, 1.0, 2.5), ("ZB1P", 4, 1.0, 2.0, 1.0, 2.5), ("DualPipe", 8, 1.0, 2.0, 1.0, 2.5),
                 ("DualPipe", 16, 1.0, 2.2, 0.9, 2.7), ("ZB1P", 6, 2.0, 3.0, 0.5, 4.0), ("1F1B", 2, 0.5, 1.0, 0.5, 1.2)],
          hint="V3 Table 2: 1F1B (PP-1)(F+B); ZB1P (PP-1)(F+B-2W); DualPipe (PP/2-1)(F&B+B-3W), F&B being the "
               "overlapped forward+backward chunk.",
          wrong=[lambda s, pp, F, B, W, FB: pp * (F + B),
                 lambda s, pp, F, B, W, FB: (pp - 1) * (F + B - (2 * W if s != "1F1B" else 0)),
                 lambda s, pp, F, B, W, FB: {"1F1B": (pp - 1) * (F + B), "ZB1P": (pp - 1) * (F + B - 2 * W),
                                              "DualPipe": (pp / 2 - 1) * (F + B + B - 3 * W)}[s]])
def pipeline_bubble(schedule, pp, F, B, W, FB):
    """The bubble of a pipeline schedule per V3 Table 2."""
    return {"1F1B": (pp - 1) * (F + B), "ZB1P": (pp - 1) * (F + B - 2 * W),
            "DualPipe": (pp / 2 - 1) * (FB + B - 3 * W)}[schedule]


@register(kind="value", hint="NVLink 160 GB/s against InfiniBand 50 GB/s (V3 §3.2.2): while a token crosses IB "
                             "once, NVLink can forward it this many times inside the node.",
          wrong=[50 / 160, 4.0, 8.0, 13.0])
def v3_experts_per_node():
    return 160 / 50
