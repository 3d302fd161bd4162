"""course_lib.bonus.fused_mhc: the C kernels give the numbers of course_lib.mhc's PyTorch code, gradients included;
FusedStreamBlock / FusedStreamLM are mhc.StreamBlock / mhc.StreamLM with the same parameters and numbers."""
import shutil

import pytest
import torch

from course_lib import mhc
from course_lib.bonus import fused_mhc
from course_lib.bonus.fused_mhc import FusedStreamBlock, FusedStreamLM

HAVE_COMPILER = any(shutil.which(c) for c in ("cc", "gcc", "clang"))
HAVE_CXX = any(shutil.which(c) for c in ("c++", "g++", "clang++"))
pytestmark = pytest.mark.skipif(not HAVE_COMPILER, reason="no C compiler: the fused kernels cannot be built here")
# both ways of running the kernels: the C++ autograd nodes (mhc_autograd.cpp) and the Python Functions
NODES = [pytest.param(True, id="cpp-nodes"), pytest.param(False, id="python-functions")]


@pytest.fixture(params=NODES)
def cpp_nodes(request):
    if request.param and not HAVE_CXX:
        pytest.skip("no C++ compiler: the C++ autograd nodes cannot be built here")
    return request.param


def test_kernels_build_where_a_compiler_exists():
    # a broken build must fail here, not quietly fall back to the PyTorch path
    assert fused_mhc.available(torch.float32) and fused_mhc.available(torch.float64), fused_mhc.why_unavailable()


@pytest.mark.skipif(not HAVE_CXX, reason="no C++ compiler")
def test_cpp_nodes_build_where_a_cpp_compiler_exists():
    assert fused_mhc.nodes_available(), fused_mhc.why_nodes_unavailable()


@pytest.fixture
def cc_without_native(tmp_path, monkeypatch):
    """$CC: a compiler that rejects -march=native; $COURSE_LIB_KERNEL_CACHE: an empty folder (returned)."""
    real_cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    fake = tmp_path / "cc_without_native"
    fake.write_text(f'#!/bin/sh\nfor a in "$@"; do [ "$a" = -march=native ] && exit 1; done\nexec {real_cc} "$@"\n')
    fake.chmod(0o755)
    monkeypatch.setenv("CC", str(fake))
    monkeypatch.setenv("COURSE_LIB_KERNEL_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_a_compiler_that_rejects_march_native_gets_a_build_without_it(tmp_path, cc_without_native):
    built = fused_mhc._compile(torch.float64)
    assert built.exists() and built.parent == tmp_path / "cache"
    assert len(list((tmp_path / "cache").iterdir())) == 1          # only the build without -march=native


def test_the_build_without_march_native_gives_the_same_numbers(tmp_path, cc_without_native, monkeypatch):
    # a CPU or compiler without -march=native gets generic vector code (no AVX: the register hint is off)
    monkeypatch.setattr(fused_mhc, "_libs", {})
    for dtype, tol in ((torch.float64, 1e-11), (torch.float32, 2e-5)):
        hc = _hc(12, 4, 20, dtype)
        x = torch.randn(2, 70, 4, 12, dtype=dtype, generator=torch.Generator().manual_seed(2))
        outs_ref, grads_ref = _run(hc, x, fused=False)
        # the Python Functions: the C++ nodes keep the kernels they were given first
        outs, grads = _run(hc, x, fused=True, cpp_nodes=False)
        for got, ref in zip(outs + grads, outs_ref + grads_ref):
            torch.testing.assert_close(got, ref, atol=tol * max(1.0, ref.abs().max().item()), rtol=0)
    assert len(list((tmp_path / "cache").iterdir())) == 2                # both dtypes, built without it


def _exp(lib, x):
    y = torch.empty_like(x)
    lib.mhc_exp(x.numel(), x.data_ptr(), y.data_ptr())
    return y


def test_float32_exp_is_accurate_to_about_one_ulp():
    # the float32 kernel's own vectorisable exp (Cody-Waite reduction + polynomial) against exp in float64
    lib = fused_mhc._load(torch.float32)
    x = torch.linspace(-87.3, 88.3, 1_000_001)
    x = torch.cat([x, torch.tensor([0.0, 1e-7, -1e-7, 0.5 * 0.6931472, -0.5 * 0.6931472])])
    ref = torch.exp(x.double())
    rel = ((_exp(lib, x).double() - ref) / ref).abs()
    assert rel.max().item() < 3e-7, (rel.max().item(), x[rel.argmax()].item())
    # outside the range: 0 below FLT_MIN, inf above 2.2e38, NaN stays NaN (as expf, up to the flush to 0)
    edge = _exp(lib, torch.tensor([-87.5, -200.0, float("-inf"), 88.5, 200.0, float("inf"), float("nan")]))
    assert edge[:3].tolist() == [0.0, 0.0, 0.0] and edge[3:6].isinf().all() and edge[6].isnan()
    # the float64 kernel uses libm's exp
    x64 = torch.linspace(-700, 700, 10001, dtype=torch.float64)
    torch.testing.assert_close(_exp(fused_mhc._load(torch.float64), x64), torch.exp(x64), rtol=1e-15, atol=0)


def _hc(d, n, iters, dtype, seed=0, scale_fn=30.0):
    torch.manual_seed(seed)
    hc = mhc.HyperConnection(d, n, iters).to(dtype)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():                       # large logits, so Sinkhorn has real work to do
        hc.fn.mul_(scale_fn)
        hc.base.copy_(torch.randn(hc.base.shape, generator=g))
        hc.scale.copy_(torch.rand(3, generator=g) + 0.5)
    return hc


def _run(hc, x, fused, cpp_nodes=True):
    """Forward through pre + combine with a made-up layer output, then backward; returns outputs and gradients.
    fused=False: mhc's PyTorch code; True: the kernels (behind the C++ nodes or, cpp_nodes=False, Python's)."""
    x = x.detach().clone().requires_grad_()
    hc.zero_grad(set_to_none=True)
    inp, mix, post = fused_mhc.pre(hc, x, cpp_nodes) if fused else hc(x)
    f = torch.sin(inp * 3)                      # a stand-in for the sub-layer, so the gradient reaches inp
    out = fused_mhc.combine(x, f, mix, post, cpp_nodes) if fused else mhc.HyperConnection.combine(x, f, mix, post)
    w = torch.linspace(-1, 1, out.numel(), dtype=x.dtype).view_as(out)
    ((out * w).sum() + (mix * mix).sum() + post.sum()).backward()
    return [inp, mix, post, out], [x.grad, hc.fn.grad, hc.base.grad, hc.scale.grad]


@pytest.mark.parametrize("n,d,iters,tokens", [(4, 32, 20, (8, 32)), (4, 5, 1, (3, 50)), (2, 16, 3, (1, 7)),
                                              (8, 12, 20, (2, 130))])
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-11), (torch.float32, 2e-5)])
def test_hyper_connection_fused_equals_pytorch(n, d, iters, tokens, dtype, tol, cpp_nodes):
    # token counts that are not a multiple of the kernel's chunk (64), odd widths, 2 to 8 streams
    hc = _hc(d, n, iters, dtype)
    x = torch.randn(*tokens, n, d, dtype=dtype, generator=torch.Generator().manual_seed(2))
    outs_ref, grads_ref = _run(hc, x, fused=False)
    outs, grads = _run(hc, x, fused=True, cpp_nodes=cpp_nodes)
    for got, ref in zip(outs + grads, outs_ref + grads_ref):
        torch.testing.assert_close(got, ref, atol=tol * max(1.0, ref.abs().max().item()), rtol=0)


def _three_steps(cpp_nodes: bool):
    """(pre, combine, combine_then_pre) of the C++ nodes or of the Python Functions."""
    if not cpp_nodes:
        return fused_mhc.MHCPre.apply, fused_mhc.MHCCombine.apply, fused_mhc.MHCCombinePre.apply
    nodes = fused_mhc._load_nodes()
    assert nodes is not None, fused_mhc.why_nodes_unavailable()
    return nodes.pre, nodes.combine, nodes.combine_then_pre


def test_gradcheck_of_the_three_autograd_nodes(cpp_nodes):
    pre, combine, combine_then_pre = _three_steps(cpp_nodes)
    g = torch.Generator().manual_seed(0)
    n, d, m = 3, 4, 2 * 3 + 9
    X = torch.randn(2, 5, n, d, dtype=torch.float64, generator=g, requires_grad=True)
    fn = (torch.randn(m, n * d, dtype=torch.float64, generator=g) * 0.7).requires_grad_()
    base = torch.randn(m, dtype=torch.float64, generator=g, requires_grad=True)
    scale = (torch.rand(3, dtype=torch.float64, generator=g) + 0.5).requires_grad_()
    f = torch.randn(2, 5, d, dtype=torch.float64, generator=g, requires_grad=True)
    mix = torch.rand(2, 5, n, n, dtype=torch.float64, generator=g, requires_grad=True)
    post = torch.rand(2, 5, n, dtype=torch.float64, generator=g, requires_grad=True)
    assert torch.autograd.gradcheck(lambda *a: pre(*a, 4, 1e-6, 1e-6), (X, fn, base, scale))
    assert torch.autograd.gradcheck(combine, (X, f, mix, post))
    assert torch.autograd.gradcheck(lambda *a: combine_then_pre(*a, 4, 1e-6, 1e-6), (X, f, mix, post, fn, base, scale))


@pytest.mark.parametrize("residual", ["mhc", "hc"])
def test_stream_lm_fused_equals_pytorch(residual, cpp_nodes):
    # whole model, float64: the same loss, the same gradient for every parameter, the same recorded mixing matrices
    torch.manual_seed(0)
    ref = mhc.StreamLM(64, 16, 3, 2, residual, 4, 20, max_seq_len=16).double()
    fused = FusedStreamLM(64, 16, 3, 2, residual, 4, 20, max_seq_len=16, cpp_nodes=cpp_nodes).double()
    fused.load_state_dict(ref.state_dict())
    assert all(type(block) is FusedStreamBlock for block in fused.blocks)
    x = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(1))
    losses = []
    for model in (ref, fused):
        _, loss = model(x, x)
        loss.backward()
        losses.append(loss)
    torch.testing.assert_close(losses[1], losses[0], atol=1e-12, rtol=0)
    for (name, p), q in zip(ref.named_parameters(), fused.parameters()):
        torch.testing.assert_close(q.grad, p.grad, atol=1e-10, rtol=1e-9, msg=name)
    for a, b in zip(mhc.mixing_matrices(ref), mhc.mixing_matrices(fused)):
        torch.testing.assert_close(b, a, atol=1e-12, rtol=0)


def test_float32_training_follows_the_pytorch_path(cpp_nodes):
    runs = []
    for cls in (mhc.StreamLM, FusedStreamLM):
        torch.manual_seed(0)                    # the same seed gives both the same initial weights
        kw = {"cpp_nodes": cpp_nodes} if cls is FusedStreamLM else {}
        model = cls(64, 16, 4, 2, "mhc", 4, 20, max_seq_len=16, **kw)
        gen = torch.Generator().manual_seed(0)
        batch = lambda step: (torch.randint(0, 64, (4, 16), generator=gen),) * 2
        runs.append(mhc.train(model, batch, 6, lr=3e-3, progress=False)["loss"])
    assert max(abs(a - b) for a, b in zip(*runs)) < 1e-4, runs


def test_unsupported_inputs_take_the_pytorch_path():
    x = torch.randn(2, 3, 4, 8)
    assert fused_mhc.supported(x)
    assert not fused_mhc.supported(x.bfloat16())                  # no bfloat16 kernel
    assert not fused_mhc.supported(torch.randn(2, 3, 9, 8))       # more streams than the kernel's MAXN
    torch.manual_seed(0)
    ref = mhc.StreamBlock(8, 2, 16, "mhc", 4, 5, max_seq_len=8).to(torch.bfloat16)
    fused = FusedStreamBlock(8, 2, 16, "mhc", 4, 5, max_seq_len=8).to(torch.bfloat16)
    fused.load_state_dict(ref.state_dict())
    out = fused(x.bfloat16())                                     # runs, through mhc's PyTorch code
    assert out.dtype == torch.bfloat16 and torch.equal(out, ref(x.bfloat16()))


def test_fused_block_equals_the_pytorch_block(cpp_nodes):
    # one block on its own (3 kernel calls), mHC and HC, float64: output and every gradient
    for residual in ("mhc", "hc"):
        torch.manual_seed(0)
        ref = mhc.StreamBlock(12, 2, 32, residual, 4, 20, max_seq_len=8).double()
        fused = FusedStreamBlock(12, 2, 32, residual, 4, 20, max_seq_len=8, cpp_nodes=cpp_nodes).double()
        fused.load_state_dict(ref.state_dict())
        x = torch.randn(2, 8, 4, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
        outs, grads = [], []
        for block in (ref, fused):
            xi = x.clone().requires_grad_()
            out = block(xi)
            (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum().backward()
            outs.append(out)
            grads.append([xi.grad] + [p.grad for p in block.parameters()])
        torch.testing.assert_close(outs[1], outs[0], atol=1e-11, rtol=0)
        for got, want in zip(grads[1], grads[0]):
            torch.testing.assert_close(got, want, atol=1e-10, rtol=1e-9)


def test_fused_pre_records_the_mixing_matrix_like_the_pytorch_path():
    hc = _hc(8, 4, 20, torch.float64)
    x = torch.randn(2, 3, 4, 8, dtype=torch.float64)
    _, mix_ref, _ = hc(x)
    _, mix, _ = fused_mhc.pre(hc, x)
    torch.testing.assert_close(hc.last_mix, mix_ref, atol=1e-12, rtol=0)
    torch.testing.assert_close(mix.sum(-1), torch.ones(2, 3, 4, dtype=torch.float64), atol=1e-4, rtol=0)


def test_the_forward_keeps_the_same_numbers_whatever_the_sinkhorn_iterations():
    # Sinkhorn's steps are run again in the backward, so what the forward saves must not grow with the iterations
    # (it kept 2n numbers per step and token before: ~0.35 MB per connection at notebook 08's size). Read off the
    # Python Function's saved tensors; the C++ nodes save the same buffer, sized by the same kernel function.
    x = torch.randn(2, 70, 4, 8)
    saved = []
    for iters in (1, 20, 50):
        inp, _, _ = fused_mhc.pre(_hc(8, 4, iters, torch.float32), x, cpp_nodes=False)
        saved.append(sum(t.numel() for t in inp.grad_fn.saved_tensors))
    assert saved[0] == saved[1] == saved[2], saved


def test_fused_steps_reject_streams_of_another_shape():
    # n * d equal (2 * 16 = 4 * 8): the kernels would read past the projection's rows, so the check must stop it
    hc = _hc(8, 4, 5, torch.float32)
    with pytest.raises(ValueError, match=r"streams must have shape \(\.\.\., 4, 8\)"):
        fused_mhc.pre(hc, torch.randn(2, 3, 2, 16))
    with pytest.raises(ValueError, match=r"streams must have shape"):
        fused_mhc.combine_then_pre(torch.randn(2, 3, 2, 16), torch.randn(2, 3, 16), torch.rand(2, 3, 2, 2),
                                   torch.rand(2, 3, 2), hc)


def test_stream_lm_merges_write_back_and_read_in_across_blocks(cpp_nodes):
    # inside StreamLM a block's last write-back and the next block's read-in are one autograd node: 2 per block + 1
    torch.manual_seed(0)
    model = FusedStreamLM(64, 16, 3, 2, "mhc", 4, 5, max_seq_len=8, cpp_nodes=cpp_nodes)
    _, loss = model(torch.randint(0, 64, (2, 8)), torch.randint(0, 64, (2, 8)))
    names, stack, seen = [], [loss.grad_fn], set()
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        names.append(node.name())
        stack.extend(n for n, _ in node.next_functions)
    kinds = ["CppNode<Pre>", "CppNode<CombinePre>", "CppNode<Combine>"] if cpp_nodes else \
        ["MHCPreBackward", "MHCCombinePreBackward", "MHCCombineBackward"]
    counts = [sum(name.endswith(k) for name in names) for k in kinds]
    assert counts == [1, 5, 1], (counts, sorted(set(names)))
