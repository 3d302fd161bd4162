"""mHC: Sinkhorn-Knopp, the hyper-connection and its head against transformers' DeepSeek-V4 modules; the models."""
import inspect
import subprocess
import sys

import pytest
import torch

from course_lib import mhc


@pytest.fixture
def ds4():
    """transformers' DeepSeek-V4 modules; only the comparisons with them skip where transformers lacks them."""
    return pytest.importorskip("transformers.models.deepseek_v4.modeling_deepseek_v4")


def _config(hidden=16, n=4, iters=20, eps=1e-6):
    from transformers import DeepseekV4Config

    return DeepseekV4Config(vocab_size=32, hidden_size=hidden, hc_mult=n, hc_sinkhorn_iters=iters, hc_eps=eps,
                            num_hidden_layers=1, num_attention_heads=2, rms_norm_eps=1e-6)


def _randomise(module, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)


# ----------------------------------------------------------------------------------------------- Sinkhorn
def test_sinkhorn_is_doubly_stochastic_and_non_negative():
    logits = torch.randn(50, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    b = mhc.sinkhorn_knopp(logits, iters=20, eps=0.0)
    assert (b >= 0).all()
    torch.testing.assert_close(b.sum(-1), torch.ones(50, 4, dtype=torch.float64), atol=1e-6, rtol=0)
    torch.testing.assert_close(b.sum(-2), torch.ones(50, 4, dtype=torch.float64), atol=1e-6, rtol=0)


def test_sinkhorn_equals_the_textbook_alternation_of_column_and_row_normalisation():
    logits = torch.randn(3, 3, dtype=torch.float64)
    steps = mhc.sinkhorn_by_hand(logits.exp(), iters=5)
    # written out independently: divide columns by their sums, then rows, five times
    m = logits.exp()
    for _ in range(5):
        m = m / m.sum(0)
        m = m / m.sum(1, keepdim=True)
    torch.testing.assert_close(steps[-1], m)
    torch.testing.assert_close(mhc.sinkhorn_knopp(logits, iters=5, eps=0.0), m)


@pytest.mark.parametrize("eps", [0.0, 1e-3])
def test_sinkhorn_gradient_passes_gradcheck_and_history_ends_at_the_result(eps):
    logits = torch.randn(1, 4, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: mhc.sinkhorn_knopp(t, iters=3, eps=eps), (logits,))
    out, history = mhc.sinkhorn_knopp(logits.detach(), iters=5, eps=eps, return_history=True)
    assert len(history) == 5
    torch.testing.assert_close(history[-1], out)
    torch.testing.assert_close(out, mhc.sinkhorn_knopp(logits.detach(), iters=5, eps=eps))


def test_sinkhorn_is_the_plain_loop_with_no_fast_path():
    # the concept module keeps one implementation; the faster variant lives in course_lib.bench.sinkhorn
    assert not any("fast" in name.lower() or name == "_SinkhornKnopp" for name in vars(mhc))
    logits = torch.randn(2, 4, 4, requires_grad=True)
    assert mhc.sinkhorn_knopp(logits, iters=2).grad_fn.name() == "DivBackward0"     # autograd through the loop


def test_sinkhorn_history_rows_converge():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 1.0, 0.0], [0.0, 0.0, 3.0]], dtype=torch.float64)
    _, hist = mhc.sinkhorn_knopp(logits, iters=30, eps=0.0, return_history=True)
    col_err = [float((h.sum(0) - 1).abs().max()) for h in hist]     # rows are exact after each T_r
    assert col_err[-1] < 1e-5 < col_err[0]
    assert all(b <= a + 1e-12 for a, b in zip(col_err, col_err[1:]))   # monotone convergence


def test_products_of_projected_matrices_keep_their_norm_bounded():
    g = torch.Generator().manual_seed(0)
    prod_m = torch.eye(4, dtype=torch.float64)
    prod_free = torch.eye(4, dtype=torch.float64)
    for _ in range(200):
        logits = torch.randn(4, 4, generator=g, dtype=torch.float64)
        prod_m = mhc.sinkhorn_knopp(logits, iters=20, eps=0.0) @ prod_m
        prod_free = (torch.eye(4, dtype=torch.float64) + 0.3 * logits) @ prod_free
    assert torch.linalg.matrix_norm(prod_m, ord=2) <= 1 + 1e-6
    torch.testing.assert_close(prod_m.sum(-1), torch.ones(4, dtype=torch.float64), atol=1e-6, rtol=0)
    assert torch.linalg.matrix_norm(prod_free, ord=2) > 1e4            # the unconstrained product explodes
    fwd, bwd = mhc.composite_gains([mhc.sinkhorn_knopp(torch.randn(2, 4, 4, generator=g), 20, 0.0)
                                    for _ in range(30)])
    assert torch.allclose(fwd, torch.ones(30, dtype=torch.float64), atol=1e-4)
    assert torch.allclose(bwd, torch.ones(30, dtype=torch.float64), atol=1e-4)


# ----------------------------------------------------------------------------------------------- vs transformers
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float64, 1e-12)])
@pytest.mark.parametrize("iters", [1, 3, 20])
def test_hyper_connection_equals_transformers(ds4, dtype, tol, iters):
    ref = ds4.DeepseekV4HyperConnection(_config(iters=iters))
    _randomise(ref, iters)
    ours = mhc.HyperConnection(16, n_streams=4, sinkhorn_iters=iters, eps=1e-6)
    ours.load_state_dict({"fn": ref.fn.data, "base": ref.base.data, "scale": ref.scale.data})
    x = torch.randn(2, 5, 4, 16, dtype=torch.float64)
    if dtype == torch.float64:
        ref, ours = ref.double(), ours.double()
        # transformers computes its weights in float32 (.float()); compare our float64 to a float64 copy of it
        ref.fn.data, ref.base.data = ref.fn.data.double(), ref.base.data.double()
    post_r, comb_r, coll_r = ref(x.to(dtype)) if dtype == torch.float32 else _ref_float64(ref, x)
    inp, mix, post = ours(x.to(dtype))
    torch.testing.assert_close(inp, coll_r.to(dtype), atol=tol, rtol=tol)
    torch.testing.assert_close(mix, comb_r.transpose(-1, -2).to(dtype), atol=tol, rtol=tol)
    torch.testing.assert_close(post, post_r.to(dtype), atol=tol, rtol=tol)


def _ref_float64(ref, x):
    """transformers' forward in float64: the same code with its .float() casts turned into no-ops."""
    orig = torch.Tensor.float
    torch.Tensor.float = lambda t: t.double() if t.dtype == torch.float32 else t
    try:
        return ref(x)
    finally:
        torch.Tensor.float = orig


def test_hyper_head_equals_transformers(ds4):
    ref = ds4.DeepseekV4HyperHead(_config())
    _randomise(ref, 1)
    ours = mhc.HyperHead(16, n_streams=4)
    ours.load_state_dict({"fn": ref.hc_fn.data, "base": ref.hc_base.data, "scale": ref.hc_scale.data})
    x = torch.randn(3, 4, 4, 16)
    torch.testing.assert_close(ours(x), ref(x), atol=1e-5, rtol=1e-5)


def test_block_update_equals_transformers_decoder_layer_wiring(ds4):
    """X_{l+1} = B X + C F(A X) equals transformers' comb^T X + post * F (their DecoderLayer's two lines)."""
    ref = ds4.DeepseekV4HyperConnection(_config())
    _randomise(ref, 3)
    ours = mhc.HyperConnection(16, n_streams=4)
    ours.load_state_dict({"fn": ref.fn.data, "base": ref.base.data, "scale": ref.scale.data})
    x = torch.randn(2, 3, 4, 16)
    layer = torch.nn.Linear(16, 16)
    post, comb, coll = ref(x)
    expected = post.unsqueeze(-1) * layer(coll).unsqueeze(-2) + torch.matmul(comb.transpose(-1, -2), x)
    inp, mix, c = ours(x)
    torch.testing.assert_close(mhc.HyperConnection.combine(x, layer(inp), mix, c), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("d", [8, 160])
def test_combine_is_eq_1_for_narrow_and_wide_streams(d):
    x, y = torch.randn(2, 3, 4, d, dtype=torch.float64), torch.randn(2, 3, d, dtype=torch.float64)
    b, c = torch.rand(2, 3, 4, 4, dtype=torch.float64), torch.rand(2, 3, 4, dtype=torch.float64)
    expected = torch.einsum("btij,btjd->btid", b, x) + torch.einsum("bti,btd->btid", c, y)
    torch.testing.assert_close(mhc.HyperConnection.combine(x, y, b, c), expected)


def test_hc_starts_as_a_plain_residual_on_every_stream():
    hc = mhc.HyperConnection(8, n_streams=3, constrained=False)
    with torch.no_grad():
        hc.fn.zero_()
    x = torch.randn(1, 2, 8).unsqueeze(2).expand(-1, -1, 3, -1)
    inp, mix, post = hc(x)
    torch.testing.assert_close(inp, x[:, :, 0])
    out = mhc.HyperConnection.combine(x, 2 * inp, mix, post)
    torch.testing.assert_close(out, 3 * x)


# ----------------------------------------------------------------------------------------------- models
@pytest.mark.parametrize("residual", mhc.RESIDUALS)
def test_stream_lm_trains_and_is_causal(residual):
    torch.manual_seed(0)
    model = mhc.StreamLM(vocab_size=32, d_model=16, n_layers=3, n_heads=2, residual=residual, n_streams=2,
                         sinkhorn_iters=5)
    idx = torch.randint(0, 32, (2, 10))
    logits, loss = model(idx, idx)
    assert logits.shape == (2, 10, 32) and abs(loss.item() - torch.log(torch.tensor(32.0)).item()) < 0.3
    loss.backward()
    idx2 = idx.clone()
    idx2[:, 7] = (idx2[:, 7] + 1) % 32
    torch.testing.assert_close(model(idx2)[0][:, :7], logits[:, :7].detach())
    if residual != "plain":
        mixes = mhc.mixing_matrices(model)
        assert len(mixes) == 6 and mixes[0].shape == (2, 10, 2, 2)


def test_mhc_is_pytorch_only_and_never_imports_the_fused_bonus():
    # the fused kernels (course_lib/bonus/fused_mhc) build on mhc; mhc must not depend on them
    code = "import sys, course_lib.mhc; print(sorted(m for m in sys.modules if m.startswith('course_lib.bonus')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    for cls in (mhc.HyperConnection, mhc.StreamBlock, mhc.StreamLM):
        assert "fused" not in inspect.signature(cls).parameters


@pytest.mark.parametrize("call,match", [
    (lambda: mhc.HyperConnection(8, n_streams=0), "n_streams"),
    (lambda: mhc.HyperConnection(8, n_streams=2.5), "n_streams"),
    (lambda: mhc.HyperConnection(8, sinkhorn_iters=0), "sinkhorn_iters"),
    (lambda: mhc.HyperConnection(8, eps=-1.0), "eps"),
    (lambda: mhc.sinkhorn_knopp(torch.zeros(3, 3), iters=0), "iters"),
    (lambda: mhc.sinkhorn_knopp(torch.zeros(3, 4)), "logits"),
    (lambda: mhc.HyperConnection(8, n_streams=2)(torch.zeros(1, 2, 3, 8)), "streams"),
    (lambda: mhc.StreamLM(residual="dense"), "residual"),
    (lambda: mhc.composite_gains([]), "mixes"),
])
def test_bad_input_raises_one_line_value_error(call, match):
    with pytest.raises(ValueError, match=match) as err:
        call()
    assert "\n" not in str(err.value)
