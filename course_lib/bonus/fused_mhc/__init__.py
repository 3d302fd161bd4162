"""mHC with fused kernels: the arithmetic of ``course_lib.mhc`` in a few C calls instead of ~150 PyTorch operations.

Why this exists. Written with PyTorch operations (``mhc.HyperConnection``), one mHC connection is a long chain of tiny
operations: the norm and projection of the n streams, two sigmoids, 2 x 20 Sinkhorn normalisations of an n x n matrix
per token, the read-out and the write-back, and as many again in the backward pass. At the width of notebook 08
(d = 32) each of them does almost no arithmetic and costs a few microseconds of dispatch, so an mHC block is about 5x
slower than a plain residual block although it adds far fewer FLOPs than that. Large models meet the same problem
(memory traffic instead of dispatch) and answer it with fused kernels: the mHC paper (Xie et al., arXiv 2512.24880)
reports about 6.7% extra training time at n = 4 with them. Here the fusion is ``csrc/mhc_fused.c``, the projection of
the streams included (one small matrix product forward, two backward: as PyTorch calls each cost about as much in
dispatch and allocation as in arithmetic at this size).

What is fused (``python -m course_lib.bench v4`` measures it, one CPU thread, n = 4 streams as V4: at d = 32 one
block costs about 1.3x a plain block and notebook 08's 24-block model about 1.3x per training step, 1.2x at d = 256,
against about 5x and 2x with PyTorch operations; the kernels are compiled with n = 4 fixed, which is what makes them
fast; any other n runs slower, see the C file):

* ``MHCPre``: r = rsqrt(mean(x^2) + eps_rms); [A~, C~, B~] = alpha * r * (x W^T) + S; A = sigmoid(A~) + eps,
  C = 2 sigmoid(C~), B = Sinkhorn-Knopp(B~); layer_input = sum_j A_j x_j. Sinkhorn runs on row and column scaling
  vectors (B = diag(u) K diag(v)). The forward keeps only r, the sigmoids, the softmax and x W^T (1 + 4n + 2n^2
  numbers per token); the backward runs Sinkhorn's steps again and undoes them in reverse: recomputation, as the mHC
  paper does at scale, because keeping 2n numbers per step and token would write and read back ~0.35 MB per
  connection here.
* ``MHCCombine``: X_{l+1} = B X + C F(layer_input) and its backward.
* ``MHCCombinePre``: a combine followed by the next connection's pre step, as one autograd node. Inside a model
  (``FusedStreamLM``) every write-back is merged with the next read-in, across blocks too: 2 nodes per block.

The models: ``FusedStreamBlock`` and ``FusedStreamLM`` (``model.py``) are ``mhc.StreamBlock`` and ``mhc.StreamLM``
with the same parameters (state dicts load both ways) whose forward runs these kernels. This package imports
``course_lib.mhc``; no lesson module imports this package (the benchmark ``python -m course_lib.bench v4``
does). README.md next to this file says what fusion buys and when.

Each of the three is an autograd node twice over: written here in Python (``torch.autograd.Function``) and in C++
(``csrc/mhc_autograd.cpp``, ``torch::autograd::Function``), which calls the same kernels without any Python in the
forward call or the backward pass. At d = 32 the Python around a node costs about as much as its kernels (the bench
prints both: about 1.43x against 1.3x), so ``pre``, ``combine`` and ``combine_then_pre`` use the C++ nodes where
they could be built (``nodes_available``) and the Python Functions otherwise, or always with ``cpp_nodes=False``
(an argument of those three functions and of the model classes): the same numbers.

The kernels are built on first use with the system's C compiler (``cc``, or ``$CC``; a second or two per dtype)
into a cache folder (``$COURSE_LIB_KERNEL_CACHE``, else ``~/.cache/inside-deepseek``, else the temp folder); the C++
nodes with its C++ compiler (``c++``, or ``$CXX``) against the installed torch's headers and the Python headers, about
20-30 s once per torch and Python version. Without a compiler, on other devices (CUDA) or dtypes (bfloat16),
``supported`` says no and the model classes run ``course_lib.mhc``'s PyTorch code, which gives the same numbers up
to rounding:
tests/bonus/test_fused_mhc.py compares the three ways (float64 to 1e-11, float32 to 2e-5, gradients included) and runs
torch.autograd.gradcheck on the Python Functions and the C++ nodes.
"""
from __future__ import annotations

import ctypes
import hashlib
import importlib.util
import os
import platform
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

import torch

SOURCE = Path(__file__).with_name("csrc") / "mhc_fused.c"
NODES_SOURCE = SOURCE.with_name("mhc_autograd.cpp")
MAX_STREAMS = 8                                          # MAXN in the C file
_CFLAGS = ["-O3", "-march=native", "-std=c99", "-shared", "-fPIC", "-fno-math-errno", "-fno-trapping-math",
           "-fassociative-math", "-fno-signed-zeros", "-ffp-contract=fast"]
_VARIANTS = {torch.float32: ["-DSINGLE"], torch.float64: []}
_libs: dict = {}
_failure: str | None = None
_nodes = None                 # the compiled module of mhc_autograd.cpp; False when it could not be built
_nodes_failure: str | None = None


def _cache_dirs():
    if os.environ.get("COURSE_LIB_KERNEL_CACHE"):
        yield Path(os.environ["COURSE_LIB_KERNEL_CACHE"])
    yield Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "inside-deepseek"
    yield Path(tempfile.gettempdir()) / "inside-deepseek-kernels"


def _compile(dtype: torch.dtype) -> Path:
    """Compile the kernel for one dtype (once: the file name carries a hash of source, flags and machine).
    -march=native lets the compiler use this CPU's widest vector instructions; a compiler that rejects it gets a
    second try without it (slower code, same numbers)."""
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if not compiler:
        raise RuntimeError("no C compiler found (install gcc or clang, or set CC)")
    native = _CFLAGS + _VARIANTS[dtype]
    stem = f"mhc_fused_{str(dtype).split('.')[-1]}"
    suffix = ".dll" if os.name == "nt" else ".so"
    try:
        return _build(compiler, native, SOURCE, stem, suffix, ["-lm"])
    except _CompilerError:
        return _build(compiler, [f for f in native if f != "-march=native"], SOURCE, stem, suffix, ["-lm"])


def _compile_nodes() -> Path:
    """Compile mhc_autograd.cpp into a Python extension module against the installed torch (once per torch and
    Python version: 20-30 s). Raises where there is no C++ compiler or no Python headers."""
    if os.name == "nt":
        raise RuntimeError("the C++ autograd nodes are not built on Windows")
    compiler = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")
    if not compiler:
        raise RuntimeError("no C++ compiler found (install g++ or clang++, or set CXX)")
    from torch.utils import cpp_extension

    flags = ["-O2", "-std=c++17", "-shared", "-fPIC", "-w",
             f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}"]
    flags += [f"-I{p}" for p in cpp_extension.include_paths()] + [f"-I{sysconfig.get_paths()['include']}"]
    libs = [f"-L{p}" for p in cpp_extension.library_paths()] + ["-lc10", "-ltorch", "-ltorch_cpu", "-ltorch_python"]
    if platform.system() == "Darwin":
        libs += ["-undefined", "dynamic_lookup"]
    return _build(compiler, flags, NODES_SOURCE, "mhc_autograd", sysconfig.get_config_var("EXT_SUFFIX") or ".so", libs,
                  versions=f"torch {torch.__version__} python {sys.version}")


class _CompilerError(RuntimeError):
    pass


def _build(compiler: str, flags: list, source: Path, stem: str, suffix: str, trailing: list,
           versions: str = "") -> Path:
    """Compile source into a cache folder (once: the file name carries a hash of source, flags, machine and the
    versions the build depends on)."""
    key = hashlib.sha256(source.read_bytes() + " ".join([compiler, *flags, *trailing, versions, platform.machine(),
                                                          platform.system()]).encode()).hexdigest()[:16]
    name = f"{stem}_{key}{suffix}"
    last_error = None
    for folder in _cache_dirs():
        target = folder / name
        if target.exists():
            return target
        try:
            folder.mkdir(parents=True, exist_ok=True)
            tmp = folder / f".{name}.{os.getpid()}.tmp"
            proc = subprocess.run([compiler, *flags, str(source), "-o", str(tmp), *trailing], capture_output=True,
                                  text=True, timeout=600)
            if proc.returncode != 0:
                raise _CompilerError(f"{compiler} failed: {proc.stderr.strip().splitlines()[-1:]}")
            os.replace(tmp, target)                       # atomic: a parallel build never sees half a file
            return target
        except OSError as err:                            # folder not writable: try the next one
            last_error = err
    raise RuntimeError(f"could not write the compiled kernel anywhere: {last_error}")


def _load(dtype: torch.dtype):
    global _failure
    if dtype in _libs:
        return _libs[dtype]
    if _failure is not None:
        return None
    try:
        lib = ctypes.CDLL(str(_compile(dtype)))
    except Exception as err:                              # no compiler, sandboxed, ...: fall back to PyTorch
        _failure = str(err).splitlines()[0] if str(err) else type(err).__name__
        return None
    real = ctypes.c_float if dtype == torch.float32 else ctypes.c_double
    i, p = ctypes.c_int, ctypes.c_void_p
    lib.mhc_pre_forward.argtypes = [i, i, i, i, real, real] + [p] * 9
    lib.mhc_pre_forward.restype = None
    lib.mhc_pre_backward.argtypes = [i, i, i, i, real] + [p] * 13
    lib.mhc_pre_backward.restype = None
    lib.mhc_chunk_size.argtypes = []
    lib.mhc_chunk_size.restype = ctypes.c_int
    lib.mhc_chunk_floats.argtypes = [i]
    lib.mhc_chunk_floats.restype = ctypes.c_long
    lib.mhc_scratch_floats.argtypes = [i, i]
    lib.mhc_scratch_floats.restype = ctypes.c_long
    lib.mhc_combine_forward.argtypes = [i, i, i] + [p] * 5
    lib.mhc_combine_forward.restype = None
    lib.mhc_combine_backward.argtypes = [i, i, i] + [p] * 9
    lib.mhc_combine_backward.restype = None
    lib.mhc_exp.argtypes = [ctypes.c_long, p, p]
    lib.mhc_exp.restype = None
    lib.chunk = lib.mhc_chunk_size()
    _libs[dtype] = lib
    return lib


def _load_nodes():
    """The C++ autograd nodes (mhc_autograd.cpp), built on first use and given the C kernels of both dtypes; None
    where they cannot be built (then the Python Functions below run instead: the same numbers)."""
    global _nodes, _nodes_failure
    if _nodes is None:
        try:
            libs = [_load(dtype) for dtype in (torch.float32, torch.float64)]
            if None in libs:
                raise RuntimeError(f"no C kernels: {_failure}")
            spec = importlib.util.spec_from_file_location("mhc_autograd", _compile_nodes())
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            for dtype, lib in zip((torch.float32, torch.float64), libs):
                names = ("mhc_pre_forward", "mhc_pre_backward", "mhc_combine_forward", "mhc_combine_backward",
                         "mhc_chunk_floats", "mhc_scratch_floats")
                module.set_kernels(dtype == torch.float64,
                                   [ctypes.cast(getattr(lib, name), ctypes.c_void_p).value for name in names],
                                   lib.chunk)
            _nodes = module
        except Exception as err:                          # no C++ compiler, no Python headers, ...
            _nodes, _nodes_failure = False, (str(err).splitlines() or [type(err).__name__])[-1][:300]
    return _nodes or None


def nodes_available() -> bool:
    """Whether the C++ autograd nodes run here (builds them on the first call: 20-30 s, once)."""
    return _load_nodes() is not None


def why_nodes_unavailable() -> str | None:
    """Why the C++ autograd nodes could not be built (None when they were, or were not tried yet)."""
    return _nodes_failure


def available(dtype: torch.dtype = torch.float32) -> bool:
    """Whether the fused kernels can run here for this dtype (builds them on the first call)."""
    return dtype in _VARIANTS and _load(dtype) is not None


def why_unavailable() -> str | None:
    """The reason the kernels could not be built (None when they were, or were not tried yet)."""
    return _failure


def supported(streams: torch.Tensor) -> bool:
    """True when ``streams`` (B, T, n, d) can take the fused path: CPU, float32/float64, n <= 8, kernels built."""
    return (streams.device.type == "cpu" and streams.dtype in _VARIANTS and streams.dim() == 4
            and streams.shape[-2] <= MAX_STREAMS and available(streams.dtype))


# ------------------------------------------------------------------------------------------ the two steps, by hand
# Plain functions on contiguous (..., n, d) tensors (the kernels only see N = the number of tokens); the autograd
# Functions below chain them, so MHCCombinePre runs a combine and the next pre step as one autograd node.
# They run three times per block and step, and at notebook 08's size each Python statement here costs about as much
# as a microsecond of kernel time, so they are kept lean: pointers go straight to ctypes, the per-chunk size of the
# saved work is looked up once, and the last gradient that meets X is added inside the kernel.
# Outputs are allocated in their final shapes: a Function that returns views pays for autograd's view tracking.
_sizes: dict = {}             # (n, iters) -> numbers saved per chunk of tokens, numbers in the backward's buffer


def _size(lib, n: int, iters: int):
    size = _sizes.get((n, iters))
    if size is None:
        size = _sizes[n, iters] = (lib.mhc_chunk_floats(n), lib.mhc_scratch_floats(n, iters))
    return size


def _pre_forward(lib, X, fn, base, scale, iters: int, eps: float, rms_eps: float):
    """X (..., n, d) -> (layer_input (..., d), B (..., n, n), C (..., n)), saved."""
    lead, (n, d) = X.shape[:-2], X.shape[-2:]
    N = X.numel() // (n * d)
    layer_input, mix, post = X.new_empty((*lead, d)), X.new_empty((*lead, n, n)), X.new_empty((*lead, n))
    # kept for the backward, per chunk of tokens: r, the sigmoids, the softmax and the projection W x (Sinkhorn's
    # steps are run again)
    saved = X.new_empty(-(-N // lib.chunk) * _size(lib, n, iters)[0])
    wt = X.new_empty(n * d * -(-fn.shape[0] // 8) * 8)  # room for W^T, rows padded to 8 (a name keeps it alive)
    lib.mhc_pre_forward(N, n, d, iters, eps, rms_eps, X.data_ptr(), fn.data_ptr(), base.data_ptr(),
                        scale.data_ptr(), layer_input.data_ptr(), mix.data_ptr(), post.data_ptr(), saved.data_ptr(),
                        wt.data_ptr())
    return (layer_input, mix, post), (X, fn, scale, saved)


def _pre_backward(lib, X, fn, scale, saved, iters: int, eps: float, g_in, g_mix, g_post, g_extra=None):
    """Gradients of _pre_forward: (gX (..., n, d), gW, gS, g_alpha); g_extra (..., n, d), if given, is added to gX."""
    lead, (n, d) = X.shape[:-2], X.shape[-2:]
    N = X.numel() // (n * d)
    g_in = X.new_zeros((*lead, d)) if g_in is None else g_in.contiguous()
    g_mix = X.new_zeros((*lead, n, n)) if g_mix is None else g_mix.contiguous()
    g_post = X.new_zeros((*lead, n)) if g_post is None else g_post.contiguous()
    g_extra = None if g_extra is None else g_extra.contiguous()     # a name keeps a copy alive during the call
    gX, g_fn, g_scale, g_base = torch.empty_like(X), torch.empty_like(fn), X.new_empty(3), X.new_empty(fn.shape[0])
    hist = X.new_empty(_size(lib, n, iters)[1])          # Sinkhorn's steps for one chunk at a time
    lib.mhc_pre_backward(N, n, d, iters, eps, X.data_ptr(), fn.data_ptr(), scale.data_ptr(), saved.data_ptr(),
                         hist.data_ptr(), g_in.data_ptr(), g_mix.data_ptr(), g_post.data_ptr(),
                         0 if g_extra is None else g_extra.data_ptr(),            # 0: NULL, nothing to add
                         gX.data_ptr(), g_fn.data_ptr(), g_scale.data_ptr(), g_base.data_ptr())
    return gX, g_fn, g_base, g_scale


def _combine_forward(lib, X, f, mix, post):
    n, d = X.shape[-2:]
    out = torch.empty_like(X)
    lib.mhc_combine_forward(X.numel() // (n * d), n, d, X.data_ptr(), f.data_ptr(), mix.data_ptr(), post.data_ptr(),
                            out.data_ptr())
    return out


def _combine_backward(lib, X, f, mix, post, G):
    n, d = X.shape[-2:]
    G = G.contiguous()
    gX, gf, gmix, gpost = torch.empty_like(X), torch.empty_like(f), torch.empty_like(mix), torch.empty_like(post)
    lib.mhc_combine_backward(X.numel() // (n * d), n, d, X.data_ptr(), f.data_ptr(), mix.data_ptr(),
                             post.data_ptr(), G.data_ptr(), gX.data_ptr(), gf.data_ptr(), gmix.data_ptr(),
                             gpost.data_ptr())
    return gX, gf, gmix, gpost


class MHCPre(torch.autograd.Function):
    """(X (..., n, d), W (m, n d), S (m), alpha (3)) -> layer_input (..., d), B (..., n, n), C (..., n)."""

    @staticmethod
    def forward(ctx, X, fn, base, scale, iters: int, eps: float, rms_eps: float):
        ctx.lib = lib = _load(X.dtype)
        outputs, saved = _pre_forward(lib, X.contiguous(), fn.contiguous(), base.contiguous(), scale.contiguous(),
                                      iters, eps, rms_eps)
        ctx.save_for_backward(*saved)
        ctx.iters, ctx.eps = iters, eps
        return outputs

    @staticmethod
    def backward(ctx, g_in, g_mix, g_post):
        return (*_pre_backward(ctx.lib, *ctx.saved_tensors, ctx.iters, ctx.eps, g_in, g_mix, g_post),
                None, None, None)


class MHCCombine(torch.autograd.Function):
    """(X (..., n, d), F (..., d), B (..., n, n), C (..., n)) -> B X + C F, per token."""

    @staticmethod
    def forward(ctx, X, f, mix, post):
        ctx.lib = lib = _load(X.dtype)
        inputs = X.contiguous(), f.contiguous(), mix.contiguous(), post.contiguous()
        ctx.save_for_backward(*inputs)
        return _combine_forward(lib, *inputs)

    @staticmethod
    def backward(ctx, G):
        return _combine_backward(ctx.lib, *ctx.saved_tensors, G)


class MHCCombinePre(torch.autograd.Function):
    """A combine and the next connection's pre step as one autograd node (half the per-node overhead):
    (X, F, B, C, W', S', alpha') -> X' = B X + C F, then X' -> layer_input', B', C' as MHCPre."""

    @staticmethod
    def forward(ctx, X, f, mix, post, fn, base, scale, iters: int, eps: float, rms_eps: float):
        ctx.lib = lib = _load(X.dtype)
        inputs = X.contiguous(), f.contiguous(), mix.contiguous(), post.contiguous()
        X2 = _combine_forward(lib, *inputs)
        (inp, mix2, post2), saved = _pre_forward(lib, X2, fn.contiguous(), base.contiguous(), scale.contiguous(),
                                                 iters, eps, rms_eps)
        ctx.save_for_backward(*inputs, *saved)
        ctx.iters, ctx.eps = iters, eps
        return X2, inp, mix2, post2

    @staticmethod
    def backward(ctx, g_X2, g_in, g_mix, g_post):
        X, f, mix, post, *saved = ctx.saved_tensors
        # X' feeds the next combine as well (its gradient g_X2): the kernel adds that in
        gX2, g_fn, g_base, g_scale = _pre_backward(ctx.lib, *saved, ctx.iters, ctx.eps, g_in, g_mix, g_post, g_X2)
        return (*_combine_backward(ctx.lib, X, f, mix, post, gX2), g_fn, g_base, g_scale, None, None, None)


def _as(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return t if t.dtype == dtype else t.to(dtype)


def _check(hc, streams: torch.Tensor):
    # the kernels trust the shapes they are given: a mismatch must stop here, not read past an array
    if streams.shape[-2:] != (hc.n_streams, hc.d_model):
        raise ValueError(f"streams must have shape (..., {hc.n_streams}, {hc.d_model}), got {tuple(streams.shape)}")


def _nodes_or_none(cpp_nodes: bool):
    """The C++ autograd nodes when asked for and built, else None (then the Python Functions run)."""
    return _load_nodes() if cpp_nodes else None


def pre(hc, streams: torch.Tensor, cpp_nodes: bool = True):
    """hc's mHC read-in step (hc: a constrained mhc.HyperConnection) on (B, T, n, d) streams through the fused
    kernel: (layer_input, B, C), as HyperConnection.forward returns them; records hc.last_mix the same way.
    cpp_nodes: run the C++ autograd node where it could be built (False: the Python Function; the same numbers)."""
    _check(hc, streams)
    dt = streams.dtype
    nodes = _nodes_or_none(cpp_nodes)
    apply = nodes.pre if nodes else MHCPre.apply
    out = apply(streams, _as(hc.fn, dt), _as(hc.base, dt), _as(hc.scale, dt), hc.sinkhorn_iters, hc.eps, hc.rms_eps)
    hc.last_mix = out[1].detach()
    return out


def combine(streams: torch.Tensor, layer_output: torch.Tensor, mix: torch.Tensor, post: torch.Tensor,
            cpp_nodes: bool = True):
    """X_{l+1} = B_l X_l + C_l F_l through the fused kernel (streams (B, T, n, d), layer_output (B, T, d))."""
    dt = streams.dtype
    nodes = _nodes_or_none(cpp_nodes)
    apply = nodes.combine if nodes else MHCCombine.apply
    return apply(streams, _as(layer_output, dt), _as(mix, dt), _as(post, dt))


def combine_then_pre(streams, layer_output, mix, post, hc, cpp_nodes: bool = True):
    """combine(...) followed by hc's mHC pre step (hc: a constrained mhc.HyperConnection), as one autograd node.
    Returns (new streams, layer_input, B, C) and records hc.last_mix like HyperConnection.forward."""
    _check(hc, streams)
    dt = streams.dtype
    nodes = _nodes_or_none(cpp_nodes)
    apply = nodes.combine_then_pre if nodes else MHCCombinePre.apply
    out = apply(streams, _as(layer_output, dt), _as(mix, dt), _as(post, dt), _as(hc.fn, dt), _as(hc.base, dt),
                _as(hc.scale, dt), hc.sinkhorn_iters, hc.eps, hc.rms_eps)
    hc.last_mix = out[2].detach()
    return out


from course_lib.bonus.fused_mhc.model import FusedStreamBlock, FusedStreamLM  # noqa: E402  (model.py uses the above)
