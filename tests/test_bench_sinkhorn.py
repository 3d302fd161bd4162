"""course_lib.bench.sinkhorn: the fast Sinkhorn-Knopp equals course_lib.mhc's loop, values and gradients, and the
benchmark prints both rows."""
import re

import pytest
import torch

from course_lib import mhc
from course_lib.bench.sinkhorn import main, sinkhorn_fast


@pytest.mark.parametrize("eps", [0.0, 1e-6, 1e-3])
@pytest.mark.parametrize("shape", [(5, 4, 4), (2, 3, 4, 4), (3, 3)])
def test_fast_values_and_gradients_equal_the_loop(eps, shape):
    g = torch.Generator().manual_seed(0)
    logits = (2 * torch.randn(*shape, dtype=torch.float64, generator=g)).requires_grad_()
    weights = torch.randn(*shape, dtype=torch.float64, generator=g)
    loop = mhc.sinkhorn_knopp(logits, iters=7, eps=eps)
    (loop * weights).sum().backward()
    grad_loop, logits.grad = logits.grad.clone(), None
    fast = sinkhorn_fast(logits, iters=7, eps=eps)
    (fast * weights).sum().backward()
    torch.testing.assert_close(fast, loop, atol=1e-13, rtol=1e-12)
    torch.testing.assert_close(logits.grad, grad_loop, atol=1e-12, rtol=1e-10)


def test_fast_backward_passes_gradcheck_and_one_iteration_is_softmax_then_rows():
    logits = torch.randn(2, 3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: sinkhorn_fast(t, iters=3, eps=1e-3), (logits,))
    # one iteration, eps = 0: the column softmax, then each row divided by its sum
    p = torch.softmax(logits.detach(), dim=-2)
    torch.testing.assert_close(sinkhorn_fast(logits.detach(), iters=1, eps=0.0), p / p.sum(-1, keepdim=True))


@pytest.mark.parametrize("call,match", [
    (lambda: sinkhorn_fast(torch.zeros(3, 4)), "logits"),
    (lambda: sinkhorn_fast(torch.zeros(3, 3), iters=0), "iters"),
    (lambda: sinkhorn_fast(torch.zeros(3, 3), eps=-1.0), "eps"),
])
def test_bad_input_raises_one_line_value_error(call, match):
    with pytest.raises(ValueError, match=match) as err:
        call()
    assert "\n" not in str(err.value)


def test_bench_prints_both_variants_relative_to_the_loop(capsys):
    assert main(["--matrices", "16", "--iters", "3", "--repeat", "1"]) == 0
    out = capsys.readouterr().out
    assert "16 matrices of 4 x 4, 3 iterations" in out
    rows = {m.group(1): (float(m.group(2)), float(m.group(3)))
            for m in re.finditer(r"^\s*(course_lib\.mhc loop|sinkhorn_fast)\s+([\d.e+-]+)\s+([\d.e+-]+)\s*$", out, re.M)}
    assert set(rows) == {"course_lib.mhc loop", "sinkhorn_fast"}, out
    assert rows["course_lib.mhc loop"][1] == 1.0 and all(ms > 0 for ms, _ in rows.values())
    with pytest.raises(SystemExit):
        main(["--iters", "0"])
