"""Exercises of 11_scale_out: V3's 1x128 FP8 quantiser, expert-parallel dispatch/combine in one process, pipeline
bubbles."""
import torch

from course_lib import expert_parallel, fp8
from course_lib.checks.core import register
from course_lib.layers import swiglu
from course_lib.moe import MoE


def _g(seed):
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------------------ 1. the FP8 tile quantiser
def _with_outliers(rows, cols, seed, scale=1.0, n_out=1):
    g = _g(seed)
    x = torch.randn(rows, cols, generator=g) * scale
    x[:, torch.randperm(cols, generator=g)[:n_out]] *= 300.0
    return x


def _tiles_with(x, tile, amax_to):
    """Tile quantisation whose scale maps each group's max |x| to ``amax_to`` (448 is right)."""
    groups = x.reshape(x.shape[0], -1, tile)
    s = groups.abs().amax(-1, keepdim=True) / amax_to
    return ((groups / s).to(fp8.E4M3).to(x.dtype) * s).reshape(x.shape)


def _tiles_signed_max(x, tile):
    groups = x.reshape(x.shape[0], -1, tile)
    s = groups.amax(-1, keepdim=True) / 448                               # forgot abs: a negative max flips signs
    return ((groups / s).to(fp8.E4M3).to(x.dtype) * s).reshape(x.shape)


@register(cases=[(torch.tensor([[1.0, -8.0, 2.0, 0.5], [0.3, 0.2, -4.0, 1.0]]), 2),
                 (_with_outliers(3, 16, 1), 4),
                 (_with_outliers(4, 256, 2, n_out=2), 128),
                 (_with_outliers(5, 64, 3, scale=1e-3), 32),
                 (torch.randn(2, 24, generator=_g(4)) * 50, 8)],
          hint=("Cut each row into groups of `tile` consecutive values; every group gets its own scale s, chosen so "
                "that the group's largest magnitude lands on E4M3's largest value. Divide by s, round to E4M3, "
                "multiply back.",
                "s = max|x_group| / 448 (V3 §3.3.2);  x_hat = E4M3(x / s) * s, where E4M3(v) is "
                "v.to(torch.float8_e4m3fn).to(v.dtype).",
                "groups = x.reshape(x.shape[0], -1, tile)\n"
                "   s = groups.abs().amax(-1, keepdim=True) / 448\n"
                "   return ((groups / s).to(torch.float8_e4m3fn).to(x.dtype) * s).reshape(x.shape)"),
          wrong=[lambda x, t: fp8.quantize(x, "tensor"),                          # one scale for the whole tensor
                 lambda x, t: _tiles_with(x, x.shape[1], 448.0),                   # one scale per row
                 lambda x, t: _tiles_with(x, t, 127.0),                            # int8's range, not E4M3's
                 lambda x, t: x.to(fp8.E4M3).to(x.dtype),                          # no scaling at all
                 _tiles_signed_max])
def fp8_quantize_tiles(x, tile):
    """V3's activation quantisation: 1 x tile groups, s = amax / 448, returned dequantised (x's dtype)."""
    return fp8.quantize(x, "tile", tile)


# ------------------------------------------------------------------------------ 2. expert parallelism
def _ep_case(n_tok, n_exp, d, hidden, k, world, seed):
    g = _g(seed)
    x = torch.randn(n_tok, d, generator=g)
    indices = torch.rand(n_tok, n_exp, generator=g).topk(k, dim=-1).indices
    weights = torch.rand(n_tok, k, generator=g) + 0.1
    gate_up = torch.randn(n_exp, 2 * hidden, d, generator=g) / d ** 0.5
    down = torch.randn(n_exp, d, hidden, generator=g) / hidden ** 0.5
    return x, weights, indices, gate_up, down, world


def _routed(x, weights, indices, gate_up, down):
    """sum_k w_{t,k} FFN_{i_{t,k}}(x_t) through course_lib's MoE layer with these expert weights."""
    n_exp, two_h, d = gate_up.shape
    moe = MoE(d, n_routed_experts=n_exp, n_shared_experts=0, num_experts_per_tok=indices.shape[1],
              moe_intermediate_size=two_h // 2).to(x.dtype)
    with torch.no_grad():
        moe.experts.gate_up.copy_(gate_up)
        moe.experts.down.copy_(down)
        return moe.experts_sparse(x, weights, indices)


def _ffn(x, gate_up, down):
    a, b = torch.nn.functional.linear(x, gate_up).chunk(2, dim=-1)
    return torch.nn.functional.linear(swiglu(a, b), down)


def _gate_inside(x, weights, indices, gate_up, down, world):
    """FFN_e(g * x) instead of g * FFN_e(x): the gate applied to the input."""
    y = torch.zeros_like(x)
    for t in range(x.shape[0]):
        for w, e in zip(weights[t], indices[t].tolist()):
            y[t] += _ffn(w * x[t], gate_up[e], down[e])
    return y, expert_parallel.dispatch_rows(indices, gate_up.shape[0], world)


@register(cases=[_ep_case(6, 8, 8, 4, 2, 2, 10), _ep_case(10, 8, 6, 4, 3, 4, 11), _ep_case(12, 16, 8, 6, 4, 4, 12),
                 _ep_case(7, 4, 5, 3, 2, 1, 13), _ep_case(9, 12, 8, 4, 3, 3, 14)],
          hint=("Rank q owns experts q*E/W ... (q+1)*E/W - 1, i.e. gate_up[q*E/W:(q+1)*E/W] and the same slice of "
                "down. For every rank, pick the tokens with at least one expert there (one row each, whatever the "
                "number of such experts), run that rank's experts on them, then add each rank's rows back into the "
                "tokens' outputs.",
                "rank of expert e = e // (E/W);  rows[q] = #{t : exists k, indices[t,k] // (E/W) == q};  "
                "o_{t,q} = sum over t's chosen experts e on rank q of w_{t,e} FFN_e(x_t);  y_t = sum_q o_{t,q}, "
                "with FFN_e(x) = down[e] @ swiglu(first half of gate_up[e] @ x, second half).",
                "per = E // W;  y = zeros_like(x);  rows = []\n"
                "   for q in range(W):\n"
                "       on_q = (indices // per == q)                      # (N, k): which choices live on rank q\n"
                "       tok = on_q.any(-1).nonzero().flatten();  rows.append(len(tok))\n"
                "       for t in tok.tolist():\n"
                "           for kk in on_q[t].nonzero().flatten().tolist():\n"
                "               e = indices[t, kk].item()\n"
                "               a, b = F.linear(x[t], gate_up[e]).chunk(2, -1)\n"
                "               y[t] += weights[t, kk] * F.linear(swiglu(a, b), down[e])\n"
                "   return y, torch.tensor(rows)"),
          wrong=[lambda x, w, i, gu, dn, W: (_routed(x, w, i, gu, dn),                      # one row per slot
                                             torch.bincount((i // (gu.shape[0] // W)).flatten(), minlength=W)),
                 lambda x, w, i, gu, dn, W: (_routed(x, torch.ones_like(w), i, gu, dn),     # forgot the gates
                                             expert_parallel.dispatch_rows(i, gu.shape[0], W)),
                 _gate_inside,
                 lambda x, w, i, gu, dn, W: (_routed(x, w, i, gu, dn),                      # experts dealt round-robin
                                             torch.bincount(i[:, 0] % W, minlength=W))])
def ep_moe_forward(x, weights, indices, gate_up, down, world):
    """Expert-parallel MoE in one process: (routed output (N, d), rows each of the `world` ranks received (world,))."""
    return _routed(x, weights, indices, gate_up, down), expert_parallel.dispatch_rows(indices, gate_up.shape[0], world)


# ------------------------------------------------------------------------------ 3. pipeline bubbles
@register(cases=[("1F1B", 4, 1.0, 2.0, 1.0, 2.5), ("ZB1P", 4, 1.0, 2.0, 1.0, 2.5), ("DualPipe", 8, 1.0, 2.0, 1.0, 2.5),
                 ("DualPipe", 16, 1.0, 2.2, 0.9, 2.7), ("ZB1P", 6, 2.0, 3.0, 0.5, 4.0), ("1F1B", 2, 0.5, 1.0, 0.5, 1.2)],
          hint=("The bubble counts the stages that wait at the start and the end of a pipeline, times what each "
                "waits; DualPipe has half as many waiting stages because micro-batches enter from both ends.",
                "V3 Table 2: 1F1B (PP-1)(F+B); ZB1P (PP-1)(F+B-2W); DualPipe (PP/2-1)(F&B+B-3W), F&B being the "
                "overlapped forward+backward chunk (the argument FB).",
                "return {'1F1B': (pp - 1) * (F + B), 'ZB1P': (pp - 1) * (F + B - 2 * W),\n"
                "           'DualPipe': (pp / 2 - 1) * (FB + B - 3 * W)}[schedule]"),
          wrong=[lambda s, pp, F, B, W, FB: pp * (F + B),
                 lambda s, pp, F, B, W, FB: (pp - 1) * (F + B - (2 * W if s != "1F1B" else 0)),
                 lambda s, pp, F, B, W, FB: {"1F1B": (pp - 1) * (F + B), "ZB1P": (pp - 1) * (F + B - 2 * W),
                                              "DualPipe": (pp / 2 - 1) * (F + B + B - 3 * W)}[s]])
def pipeline_bubble(schedule, pp, F, B, W, FB):
    """The bubble of a pipeline schedule per V3 Table 2."""
    return {"1F1B": (pp - 1) * (F + B), "ZB1P": (pp - 1) * (F + B - 2 * W),
            "DualPipe": (pp / 2 - 1) * (FB + B - 3 * W)}[schedule]
