"""FP8 training as DeepSeek-V3 §3.3 describes it, simulated with PyTorch's ``torch.float8_e4m3fn`` casts.

A CPU has no FP8 matrix unit, so every GEMM here rounds its inputs to FP8 exactly as the hardware would store them
(``tensor.to(torch.float8_e4m3fn)``), then multiplies the rounded values in float32 or float64. That reproduces the
*quantisation* error of FP8 training exactly; the *accumulation* error of the tensor cores is simulated separately
(``accumulate``), and speed is not simulated at all.

What is here:
* ``quantize`` with three scalings: per tensor (one scale for the whole matrix, the usual FP8 recipe before V3),
  V3's 1x128 *tiles* for activations (one scale per token per 128 channels) and 128x128 *blocks* for weights
  (V3 §3.3.2 "Fine-Grained Quantization", Figure 7a). Scale = amax / 448 computed online from the group's maximum
  absolute value (V3 §3.3.2 "Online Quantization"); 448 is E4M3's largest finite value.
* ``fp8_matmul``: x @ w^T with x in tiles and w in blocks (or both per tensor) - the error table of the notebook.
* ``accumulate``: a K-long dot product whose running sum keeps only ``bits`` significant bits (V3 §3.3.2: H800
  tensor cores retain about 14 bits), optionally promoted to an FP32 accumulator every ``n_c`` = 128 elements (V3's
  N_C, "Increasing Accumulation Precision", Figure 7b).
* ``FP8Linear`` / ``fp8_model``: fake-quantised linear layers for training. Forward (Fprop), input gradient (Dgrad)
  and weight gradient (Wgrad) GEMMs all take FP8 inputs, as in V3 Figure 6; embeddings, the output head, the MoE
  router, norms and attention's softmax stay in full precision (V3 §3.3.1).

Paper: DeepSeek-V3 Technical Report, arXiv 2412.19437, §3.3 (FP8 training), Figures 6-7.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from course_lib.kit.validate import one_of, positive_int
from course_lib.layers import swiglu

E4M3 = torch.float8_e4m3fn
E4M3_MAX = 448.0                                   # largest finite E4M3 value: 1.75 * 2**8
SCALINGS = ("tensor", "tile", "block")


def scales(x: torch.Tensor, scaling: str, tile: int = 128) -> torch.Tensor:
    """The scaling factors s = amax(group) / 448, broadcast back to x's shape (2-D x).

    "tensor": one group; "tile": 1 x ``tile`` groups along the last dim (V3: activations, per token per 128
    channels); "block": ``tile`` x ``tile`` groups (V3: weights, per 128 output x 128 input channels). Ragged edge
    groups are allowed (the last group is smaller).
    """
    one_of("scaling", scaling, SCALINGS)
    positive_int("tile", tile)
    if x.dim() != 2:
        raise ValueError(f"x must be 2-D, got shape {tuple(x.shape)}")
    a = x.detach().abs().float()
    if scaling == "tensor":
        amax = a.amax().expand_as(a)
    else:
        rows, cols = a.shape
        pad_c = (-cols) % tile
        rt = 1 if scaling == "tile" else tile
        pad_r = (-rows) % rt
        p = F.pad(a, (0, pad_c, 0, pad_r))
        g = p.view(p.shape[0] // rt, rt, p.shape[1] // tile, tile).amax(dim=(1, 3))
        amax = g.repeat_interleave(rt, 0).repeat_interleave(tile, 1)[:rows, :cols]
    # an all-zero group gets scale 1 (anything works: its values quantise to 0)
    return torch.where(amax > 0, amax / E4M3_MAX, torch.ones_like(amax)).to(x.dtype)


def quantize(x: torch.Tensor, scaling: str = "tile", tile: int = 128) -> torch.Tensor:
    """Round x to FP8 E4M3 with the given scaling and return the dequantised values (x's dtype).

    q = E4M3(x / s),  x_hat = q * s   with s = amax(group) / 448, so each group's largest value lands on 448.
    """
    s = scales(x, scaling, tile)
    return (x / s).to(E4M3).to(x.dtype) * s


def fp8_matmul(x: torch.Tensor, w: torch.Tensor, scaling: str = "fine", tile: int = 128) -> torch.Tensor:
    """x (N, K) @ w (M, K)^T with both operands rounded to FP8, product taken in x's dtype.

    scaling "fine": V3's recipe, x in 1 x tile tiles and w in tile x tile blocks (both groups run along K, so a
    real kernel can apply the scales once per K-group); "tensor": one scale per operand."""
    if scaling == "fine":
        return quantize(x, "tile", tile) @ quantize(w, "block", tile).T
    if scaling == "tensor":
        return quantize(x, "tensor") @ quantize(w, "tensor").T
    raise ValueError(f"scaling must be 'fine' or 'tensor', got {scaling!r}")


def relative_error(approx: torch.Tensor, exact: torch.Tensor) -> float:
    """||approx - exact||_F / ||exact||_F."""
    return float((approx.double() - exact.double()).norm() / exact.double().norm())


def outlier_activations(n: int, k: int, n_outliers: int = 4, magnitude: float = 100.0,
                        generator: torch.Generator | None = None) -> torch.Tensor:
    """Gaussian activations with a few outlier *channels* (columns ``magnitude`` times larger), the pattern LLM
    activations show and that V3 §3.3.2 names as the reason for fine-grained scaling."""
    x = torch.randn(n, k, generator=generator, dtype=torch.float64)
    cols = torch.randperm(k, generator=generator)[:n_outliers]
    x[:, cols] *= magnitude
    return x


# ------------------------------------------------------------------------------------- accumulation
def round_to_bits(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Keep ``bits`` significant bits of each value (truncating the rest, as an adder that aligns and drops the
    low bits of its operands does). float64 in and out."""
    positive_int("bits", bits)
    m, e = torch.frexp(x)                          # x = m * 2**e, 0.5 <= |m| < 1
    scale = 2.0 ** bits
    return torch.ldexp(torch.trunc(m * scale) / scale, e)


def accumulate(a: torch.Tensor, b: torch.Tensor, bits: int | None = 14, n_c: int | None = None) -> torch.Tensor:
    """Dot products a (N, K) . b (M, K) over K, summed one element at a time in a limited-precision accumulator.

    bits: significant bits the running sum keeps (None: exact float64). n_c: every n_c elements the partial sum is
    added to a float32 accumulator and the limited one restarts from zero (V3's promotion interval N_C = 128).
    """
    if a.dim() != 2 or b.dim() != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"a and b must be 2-D with the same K, got {tuple(a.shape)} and {tuple(b.shape)}")
    if n_c is not None:
        positive_int("n_c", n_c)
    prods = a.double().unsqueeze(1) * b.double().unsqueeze(0)         # (N, M, K) products (exact in float64)
    total = prods.new_zeros(prods.shape[:2], dtype=torch.float32)
    part = prods.new_zeros(prods.shape[:2])
    for k in range(prods.shape[-1]):
        part = part + prods[..., k]
        if bits is not None:
            part = round_to_bits(part, bits)
        if n_c is not None and (k + 1) % n_c == 0:
            total = total + part.float()                               # promotion to FP32 on the CUDA cores
            part = torch.zeros_like(part)
    return (total.double() + part).double()


# ------------------------------------------------------------------------------------- training
class _FP8LinearFn(torch.autograd.Function):
    """y = Q_tile(x) Q_block(W)^T; dx = Q_tile(dy) Q_block(W); dW = Q_col(dy)^T Q_col(x) (V3 Figure 6:
    Fprop, Dgrad and Wgrad all in FP8). Wgrad's inner dimension is the tokens, so there both operands are scaled
    in tile x 1 groups along the tokens (V3 §3.3.2: the backward's activation tiles run the other way)."""

    @staticmethod
    def forward(ctx, x, w, tile):
        ctx.save_for_backward(x, w)
        ctx.tile = tile
        return quantize(x, "tile", tile) @ quantize(w, "block", tile).T

    @staticmethod
    def backward(ctx, dy):
        x, w = ctx.saved_tensors
        t = ctx.tile
        dx = quantize(dy, "tile", t) @ quantize(w, "block", t)
        dw = quantize(dy.T.contiguous(), "tile", t) @ quantize(x.T.contiguous(), "tile", t).T
        return dx, dw, None


def fp8_linear(x: torch.Tensor, weight: torch.Tensor, tile: int = 128) -> torch.Tensor:
    """F.linear (no bias) with FP8-rounded inputs in the forward and both backward GEMMs."""
    shape = x.shape
    y = _FP8LinearFn.apply(x.reshape(-1, shape[-1]), weight, tile)
    return y.reshape(*shape[:-1], weight.shape[0])


class FP8Linear(nn.Module):
    """Drop-in for a bias-free nn.Linear whose GEMMs run on FP8-rounded inputs (weights kept in full precision,
    as V3 keeps FP32 master weights, §3.3.3)."""

    def __init__(self, linear: nn.Linear, tile: int = 128):
        super().__init__()
        if linear.bias is not None:
            raise ValueError("linear must have no bias (DeepSeek's projections have none)")
        self.weight, self.tile = linear.weight, tile

    def forward(self, x):
        return fp8_linear(x, self.weight, self.tile)


def _fp8_experts_forward(self, x_sorted, counts):
    """RoutedExperts.forward with every expert GEMM through fp8_linear (the per-expert path)."""
    outs = []
    for chunk, w_gate_up, w_down in zip(x_sorted.split(counts.tolist()), self.gate_up.unbind(0),
                                        self.down.unbind(0)):
        if chunk.shape[0]:
            gate, up = fp8_linear(chunk, w_gate_up, self.fp8_tile).chunk(2, dim=-1)
            outs.append(fp8_linear(swiglu(gate, up), w_down, self.fp8_tile))
    return torch.cat(outs) if outs else x_sorted.new_zeros(0, x_sorted.shape[-1])


def fp8_model(model: nn.Module, tile: int = 128, skip=("head", "gate")) -> int:
    """Switch a model's GEMMs to FP8 in place; returns how many weight matrices were switched.

    Every bias-free nn.Linear becomes an FP8Linear except those whose attribute name is in ``skip`` (the output
    head and the MoE router, kept in full precision by V3 §3.3.1), and every RoutedExperts runs its experts through
    fp8_linear. Embeddings and norms are not GEMMs and are left alone."""
    from course_lib.experts import RoutedExperts
    positive_int("tile", tile)
    n = 0
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, nn.Linear) and name not in skip and child.bias is None:
                setattr(module, name, FP8Linear(child, tile))
                n += 1
        if isinstance(module, RoutedExperts):
            module.fp8_tile = tile
            module.forward = _fp8_experts_forward.__get__(module)
            n += 2 * module.n_experts
    return n
