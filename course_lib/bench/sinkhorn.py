"""Benchmark: course_lib.mhc's Sinkhorn-Knopp loop against a faster variant of the same arithmetic, forward + backward.

    python -m course_lib.bench sinkhorn [--matrices 6144] [--n 4] [--iters 20] [--repeat 7] [--threads 1]

mHC projects one n x n matrix per token and per connection (V4 report §2.2, Eq. 8): notebook 08's live run has
8 x 32 tokens and 2 connections in each of 24 blocks, 12288 matrices of 4 x 4 per step (the default, --matrices, is
half of that). Each is tiny, so on a CPU the time goes into launching many small operations, not into arithmetic.

`sinkhorn_fast` does the same divisions as `course_lib.mhc.sinkhorn_knopp` with two changes that only affect speed:
  * the matrices are stored as (row i, column j, matrix), so the many tiny matrices sit in the contiguous last
    dimension and each normalisation is one long vectorised sum;
  * a hand-written backward replaces autograd's graph of 2 x iters divisions. For one normalisation
    y = x / (s + eps) with s = sum_dim x:  dL/dx = (g - sum_dim(g * y)) / (s + eps); for the first softmax p over the
    column:  dL/dx = p * (g - sum_col(g * p)).
tests/test_bench_sinkhorn.py checks that values and gradients equal the loop's. The course itself uses the loop
(course_lib.mhc): the variant lives here, next to the measurement that justifies it.
"""
from __future__ import annotations

import argparse

import torch

from course_lib import mhc
from course_lib.bench.core import compare, print_table


def sinkhorn_fast(logits: torch.Tensor, iters: int = 20, eps: float = 1e-6) -> torch.Tensor:
    """mhc.sinkhorn_knopp(logits, iters, eps) computed on (n, n, N) with a hand-written backward."""
    if logits.dim() < 2 or logits.shape[-1] != logits.shape[-2]:
        raise ValueError(f"logits must have shape (..., n, n), got {tuple(logits.shape)}")
    if isinstance(iters, bool) or not isinstance(iters, int) or iters <= 0:
        raise ValueError(f"iters must be a positive int, got {iters!r}")
    if not eps >= 0:
        raise ValueError(f"eps must be a number >= 0, got {eps!r}")
    shape, n = logits.shape, logits.shape[-1]
    m = logits.reshape(-1, n, n).permute(1, 2, 0).contiguous()
    return _SinkhornKnopp.apply(m, iters, float(eps)).permute(2, 0, 1).reshape(shape)


class _SinkhornKnopp(torch.autograd.Function):
    """The iterations on (n, n, N): dim 0 runs along a column, dim 1 along a row."""

    @staticmethod
    def forward(ctx, m, iters, eps):
        p = torch.softmax(m, dim=0)                              # T_c(exp(B~))
        m = p + eps
        dims = [1] + [0, 1] * (iters - 1)                        # T_r, then (T_c, T_r) x (iters - 1)
        saved = []
        for d in dims:
            den = m.sum(dim=d, keepdim=True) + eps
            m = m / den
            saved += [m, den]
        ctx.dims = dims
        ctx.save_for_backward(p, *saved)
        return m

    @staticmethod
    def backward(ctx, g):
        p, *saved = ctx.saved_tensors
        for i in reversed(range(len(ctx.dims))):
            y, den = saved[2 * i], saved[2 * i + 1]
            g = (g - (g * y).sum(dim=ctx.dims[i], keepdim=True)) / den
        return p * (g - (g * p).sum(dim=0, keepdim=True)), None, None


def run(matrices: int = 6144, n: int = 4, iters: int = 20, repeat: int = 7) -> dict[str, float]:
    """Median seconds of one forward + backward pass of each implementation on the same random logits."""
    logits = torch.randn(matrices, n, n, generator=torch.Generator().manual_seed(0)).requires_grad_()
    weights = torch.randn(matrices, n, n, generator=torch.Generator().manual_seed(1))

    def step(fn):
        def go():
            logits.grad = None
            (fn(logits, iters, 1e-6) * weights).sum().backward()
        return go

    return compare({"course_lib.mhc loop": step(mhc.sinkhorn_knopp), "sinkhorn_fast": step(sinkhorn_fast)},
                   repeat=repeat, warmup=2)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m course_lib.bench sinkhorn", description=__doc__.splitlines()[0])
    p.add_argument("--matrices", type=int, default=6144)
    p.add_argument("--n", type=int, default=4)
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--repeat", type=int, default=7)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    for name in ("matrices", "n", "iters", "repeat", "threads"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1")
    torch.set_num_threads(args.threads)
    t = run(args.matrices, args.n, args.iters, args.repeat)
    base = t["course_lib.mhc loop"]
    print(f"Sinkhorn-Knopp, forward + backward: {args.matrices} matrices of {args.n} x {args.n}, {args.iters} "
          f"iterations, {args.threads} thread(s), median of {args.repeat}")
    print_table([(name, sec * 1e3, base / sec) for name, sec in t.items()], ("variant", "ms", "x loop"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
