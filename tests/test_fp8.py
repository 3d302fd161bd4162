"""FP8 simulation (course_lib.fp8) against hand computations and DeepSeek-V3 §3.3's definitions."""
import pytest
import torch

from course_lib import fp8


def test_e4m3_grid_by_hand():
    # E4M3: 3 mantissa bits, so between 1 and 2 the step is 1/8; 448 = 1.75 * 2**8 is the largest finite value
    x = torch.tensor([1.0, 1.0625, 1.1, 1.2, 448.0, 0.3])
    q = x.to(fp8.E4M3).float()
    assert q.tolist() == [1.0, 1.0, 1.125, 1.25, 448.0, 0.3125]


def test_scales_by_hand():
    x = torch.tensor([[1.0, -8.0, 2.0, 0.5],
                      [0.0, 0.0, -4.0, 1.0]])
    t = fp8.scales(x, "tile", tile=2)       # 1x2 tiles: amax per row per pair of columns
    assert torch.equal(t * 448, torch.tensor([[8.0, 8.0, 2.0, 2.0], [1.0 * 448, 448.0, 4.0, 4.0]]))
    b = fp8.scales(x, "block", tile=2)      # 2x2 blocks
    assert torch.equal(b * 448, torch.tensor([[8.0, 8.0, 4.0, 4.0]] * 2))
    assert torch.equal(fp8.scales(x, "tensor") * 448, torch.full((2, 4), 8.0))


def test_quantize_keeps_group_max_and_relative_precision():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 300, generator=g, dtype=torch.float64)
    for scaling in fp8.SCALINGS:
        q = fp8.quantize(x, scaling, tile=128)
        s = fp8.scales(x, scaling, tile=128)
        # each group's largest |value| maps onto 448 exactly, so it comes back unchanged
        assert torch.allclose((q.abs() - x.abs())[(x.abs() / s - 448).abs() < 1e-9], torch.zeros(1, dtype=x.dtype))
        # values in E4M3's normal range (>= 2**-6 after scaling) carry a relative error of at most 2**-4
        normal = (x / s).abs() >= 2 ** -6
        assert ((q - x).abs() <= 2 ** -4 * x.abs() + 1e-12)[normal].all()


def test_fine_grained_beats_per_tensor_with_outliers():
    g = torch.Generator().manual_seed(1)
    x = fp8.outlier_activations(64, 512, n_outliers=2, magnitude=1e5, generator=g)
    w = torch.randn(96, 512, generator=g, dtype=torch.float64) / 512 ** 0.5
    exact = x @ w.T
    tensor = fp8.relative_error(fp8.fp8_matmul(x, w, "tensor"), exact)
    fine = fp8.relative_error(fp8.fp8_matmul(x, w, "fine"), exact)
    assert fine < tensor
    # the outliers' own channels dominate the product; on the ordinary channels per-tensor scaling underflows
    ordinary = x.abs().amax(0) < 1e3
    err_t = fp8.relative_error(fp8.quantize(x, "tensor")[:, ordinary], x[:, ordinary])
    err_f = fp8.relative_error(fp8.quantize(x, "tile")[:, ordinary], x[:, ordinary])
    assert err_f < 0.1 < err_t


def test_round_to_bits_by_hand():
    x = torch.tensor([1 + 2 ** -20, 1.75, -3.0 - 2 ** -14, 1000.0], dtype=torch.float64)
    # 14 significant bits: 1 + 2**-20 -> 1; 1.75 exact; -3 - 2**-14 -> -3 (3 uses 2 bits before the point, 2**-12 is its 14th bit) (truncated towards 0); 1000 exact
    assert fp8.round_to_bits(x, 14).tolist() == [1.0, 1.75, -3.0, 1000.0]
    assert fp8.round_to_bits(torch.tensor([1 + 2 ** -3], dtype=torch.float64), 3).item() == 1.0
    assert fp8.round_to_bits(torch.tensor([1 + 2 ** -3], dtype=torch.float64), 4).item() == 1.125


def test_accumulate():
    g = torch.Generator().manual_seed(2)
    a = torch.rand(4, 1024, generator=g, dtype=torch.float64)
    b = torch.rand(3, 1024, generator=g, dtype=torch.float64)
    exact = a @ b.T
    assert torch.allclose(fp8.accumulate(a, b, bits=None), exact, rtol=1e-12)
    # the hand-written loop with a 14-bit running sum, one entry
    s = torch.zeros((), dtype=torch.float64)
    for k in range(1024):
        s = fp8.round_to_bits(s + a[1, k] * b[2, k], 14)
    assert fp8.accumulate(a, b, bits=14)[1, 2].item() == pytest.approx(s.item(), rel=1e-12)
    err_lim = ((fp8.accumulate(a, b, 14) - exact).abs() / exact).max()
    err_nc = ((fp8.accumulate(a, b, 14, n_c=128) - exact).abs() / exact).max()
    assert err_nc < err_lim / 5


def test_fp8_linear_forward_and_backward_by_formula():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(5, 7, 40, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(24, 40, generator=g, dtype=torch.float64, requires_grad=True)
    y = fp8.fp8_linear(x, w, tile=16)
    dy = torch.randn_like(y)
    y.backward(dy)
    x2, dy2 = x.detach().reshape(-1, 40), dy.reshape(-1, 24)
    q = lambda t, s: (t / fp8.scales(t, s, 16)).to(torch.float8_e4m3fn).double() * fp8.scales(t, s, 16)
    assert torch.allclose(y.detach().reshape(-1, 24), q(x2, "tile") @ q(w.detach(), "block").T)
    assert torch.allclose(x.grad.reshape(-1, 40), q(dy2, "tile") @ q(w.detach(), "block"))
    assert torch.allclose(w.grad, q(dy2.T.contiguous(), "tile") @ q(x2.T.contiguous(), "tile").T)
    # and all three are within FP8's few-percent error of the exact products
    assert fp8.relative_error(w.grad, dy2.T @ x2) < 0.1
    assert fp8.relative_error(y.detach().reshape(-1, 24), x2 @ w.detach().T) < 0.1


def test_fp8_model_switches_gemms_and_keeps_head_and_router():
    from course_lib.nano import TINY, build_model
    torch.manual_seed(0)
    model = build_model(TINY)
    ref = build_model(TINY)
    ref.load_state_dict(model.state_dict())
    n = fp8.fp8_model(model, tile=32)
    assert n > 0
    names = {type(m).__name__ for m in model.modules()}
    assert "FP8Linear" in names
    lm = model.model
    assert type(lm.head) is torch.nn.Linear
    assert all(type(m.gate) is torch.nn.Linear for m in model.modules() if hasattr(m, "e_score_correction_bias"))
    x = torch.randint(0, TINY.vocab_size, (2, 32))
    a, b = model(x, x).loss, ref(x, x).loss
    assert a.item() != b.item() and abs(a.item() - b.item()) < 0.05 * b.item()
    a.backward()
    experts = [m for m in model.modules() if type(m).__name__ == "RoutedExperts"]
    assert experts and all(e.gate_up.grad is not None and e.gate_up.grad.abs().sum() > 0 for e in experts)


@pytest.mark.parametrize("call,match", [
    (lambda: fp8.scales(torch.ones(2, 2), "row"), "scaling"),
    (lambda: fp8.scales(torch.ones(2, 2), "tile", tile=0), "tile"),
    (lambda: fp8.fp8_matmul(torch.ones(2, 2), torch.ones(2, 2), "block"), "scaling"),
    (lambda: fp8.accumulate(torch.ones(2, 3), torch.ones(2, 4)), "same K"),
    (lambda: fp8.round_to_bits(torch.ones(2), 0), "bits"),
])
def test_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()
