"""Muon: Newton-Schulz against the SVD, the optimizer step against a hand-written step, the parameter split."""
import math

import pytest
import torch

from course_lib import muon
from course_lib.mhc import StreamLM


def _matrix(n, m, cond, seed=0, dtype=torch.float64):
    """A random n x m matrix with singular values spread evenly from 1 down to 1 / cond."""
    g = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=dtype))
    v, _ = torch.linalg.qr(torch.randn(m, m, generator=g, dtype=dtype))
    k = min(n, m)
    s = torch.linspace(1.0, 1.0 / cond, k, dtype=dtype)
    return u[:, :k] @ torch.diag(s) @ v[:, :k].T, u[:, :k] @ v[:, :k].T


@pytest.mark.parametrize("shape", [(16, 16), (12, 40), (40, 12)])
def test_v4_newton_schulz_approaches_the_polar_factor(shape):
    a, polar = _matrix(*shape, cond=5.0)
    out = muon.newton_schulz(a, "v4")
    torch.testing.assert_close(out, polar, atol=1e-3, rtol=0)   # SVD: U V^T
    sv = torch.linalg.svdvals(out)
    assert (sv - 1).abs().max() < 1e-3


def test_jordan_schedule_leaves_singular_values_near_but_not_at_one():
    a, _ = _matrix(32, 64, cond=100.0, seed=1)
    sv_j = torch.linalg.svdvals(muon.newton_schulz(a, "jordan"))
    sv_v4 = torch.linalg.svdvals(muon.newton_schulz(a, "v4"))
    assert 0.6 < sv_j.min() and sv_j.max() < 1.25 and (sv_j - 1).abs().max() > 0.05
    assert (sv_v4[:-3] - 1).abs().max() < (sv_j[:-3] - 1).abs().max()   # the stabilising steps tighten it


def test_newton_schulz_of_a_gradient_has_singular_values_near_one():
    g = torch.randn(48, 24, generator=torch.Generator().manual_seed(3))
    sv = torch.linalg.svdvals(muon.newton_schulz(g, "v4"))
    assert 0.9 < sv.min() and sv.max() < 1.1


def test_newton_schulz_equals_the_scalar_polynomial_on_each_singular_value():
    a, _ = _matrix(8, 8, cond=20.0, seed=2)
    s = torch.linalg.svdvals(a)
    expected = muon.ns_polynomial(s / torch.linalg.matrix_norm(a), "jordan")
    got = torch.linalg.svdvals(muon.newton_schulz(a, "jordan", eps=0.0))
    torch.testing.assert_close(got.sort().values, expected.abs().sort().values, atol=1e-10, rtol=0)


def test_stacked_matrices_are_orthogonalised_one_by_one():
    g = torch.randn(3, 6, 10, dtype=torch.float64)
    out = muon.newton_schulz(g, "v4")
    for e in range(3):
        torch.testing.assert_close(out[e], muon.newton_schulz(g[e], "v4"))


def test_one_muon_step_equals_a_hand_written_step():
    torch.manual_seed(0)
    w0 = torch.randn(6, 10, dtype=torch.float64)
    w = torch.nn.Parameter(w0.clone())
    opt = muon.MuonAdamW([{"params": [w], "use_muon": True}], lr=0.05, weight_decay=0.1, momentum=0.9)
    grads = [torch.randn(6, 10, dtype=torch.float64) for _ in range(2)]
    mom, expected = torch.zeros_like(w0), w0.clone()
    for g in grads:
        w.grad = g.clone()
        opt.step()
        # Algorithm 1 by hand, with an SVD in place of the Newton-Schulz iteration (equal to about 1e-3)
        mom = 0.9 * mom + g
        u, _, vh = torch.linalg.svd(0.9 * mom + g, full_matrices=False)
        o = u @ vh * math.sqrt(10) * 0.18
        expected = expected * (1 - 0.05 * 0.1) - 0.05 * o
    torch.testing.assert_close(w.data, expected, atol=1e-3 * 0.05 * 0.18 * math.sqrt(10) * 2, rtol=0)
    # and exactly, with the same Newton-Schulz written out
    w.data, w.grad = w0.clone(), grads[0].clone()
    opt = muon.MuonAdamW([{"params": [w], "use_muon": True}], lr=0.05, weight_decay=0.1, momentum=0.9)
    opt.step()
    x = 1.9 * grads[0] / torch.linalg.matrix_norm(1.9 * grads[0])
    for a, b, c in [(3.4445, -4.7750, 2.0315)] * 8 + [(2.0, -1.5, 0.5)] * 2:
        x = a * x + b * (x @ x.T) @ x + c * (x @ x.T) @ (x @ x.T) @ x
    torch.testing.assert_close(w.data, w0 * (1 - 0.005) - 0.05 * x * math.sqrt(10) * 0.18, atol=1e-6, rtol=0)


def test_update_rms_is_gamma():
    w = torch.nn.Parameter(torch.zeros(20, 50, dtype=torch.float64))
    w.grad = torch.randn(20, 50, dtype=torch.float64)
    muon.MuonAdamW([{"params": [w], "use_muon": True}], lr=1.0).step()
    assert abs(w.data.pow(2).mean().sqrt().item() - 0.18) < 1e-3


def test_adamw_groups_match_torch_adamw():
    torch.manual_seed(1)
    p1 = torch.nn.Parameter(torch.randn(7))
    p2 = torch.nn.Parameter(p1.detach().clone())
    ours = muon.MuonAdamW([{"params": [p1], "use_muon": False}], lr=0.01, weight_decay=0.1, betas=(0.9, 0.95))
    ref = torch.optim.AdamW([p2], lr=0.01, weight_decay=0.1, betas=(0.9, 0.95), eps=1e-8)
    for _ in range(3):
        g = torch.randn(7)
        p1.grad, p2.grad = g.clone(), g.clone()
        ours.step()
        ref.step()
    torch.testing.assert_close(p1.data, p2.data, atol=1e-6, rtol=1e-6)


def test_split_follows_v4_rule():
    model = StreamLM(vocab_size=32, d_model=16, n_layers=2, n_heads=2, residual="mhc", n_streams=2)
    muon_p, adamw_p = muon.split_params(model)
    names = {id(p): n for n, p in model.named_parameters()}
    muon_names = {names[id(p)] for p in muon_p}
    adamw_names = {names[id(p)] for p in adamw_p}
    assert "embed.weight" in adamw_names and "head.weight" in adamw_names
    assert "blocks.0.attn_hc.base" in adamw_names and "blocks.0.attn_hc.scale" in adamw_names
    assert "blocks.0.attn_norm.weight" in adamw_names
    assert "blocks.0.attn.qkv.weight" in muon_names and "blocks.0.attn_hc.fn" in muon_names
    assert len(muon_p) + len(adamw_p) == len(list(model.parameters()))
    opt = muon.MuonAdamW.for_model(model, lr=0.01)
    idx = torch.randint(0, 32, (2, 8))
    before = model(idx, idx)[1].item()
    for _ in range(5):
        opt.zero_grad()
        model(idx, idx)[1].backward()
        opt.step()
    assert model(idx, idx)[1].item() < before


@pytest.mark.parametrize("call,match", [
    (lambda: muon.newton_schulz(torch.ones(3), "v4"), "g must"),
    (lambda: muon.newton_schulz(torch.ones(3, 3), "fast"), "schedule"),
    (lambda: muon.newton_schulz(torch.ones(3, 3), [(1.0, 2.0)]), "schedule"),
    (lambda: muon.MuonAdamW([torch.nn.Parameter(torch.ones(3, 3))], lr=0.0), "lr"),
    (lambda: muon.MuonAdamW([torch.nn.Parameter(torch.ones(3, 3))], momentum=1.0), "momentum"),
    (lambda: muon.MuonAdamW([torch.nn.Parameter(torch.ones(3))]), "params"),
    (lambda: muon.MuonAdamW([torch.nn.Parameter(torch.ones(3, 3))], rms_scale=0.0), "rms_scale"),
])
def test_bad_input_raises_one_line_value_error(call, match):
    with pytest.raises(ValueError, match=match) as err:
        call()
    assert "\n" not in str(err.value)
