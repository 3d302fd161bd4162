// mHC's three autograd nodes in C++: the same steps as MHCPre, MHCCombine and MHCCombinePre in fused_mhc/__init__.py.
//
// Why: the kernels in mhc_fused.c do the arithmetic in a few microseconds, but each node written as a Python
// torch.autograd.Function also pays for Python around it, forward and backward: unpacking arguments, allocating
// outputs, ctypes calls, returning gradients. At notebook 08's size that Python costs about as much as the kernels.
// Here the nodes are torch::autograd::Function subclasses (PyTorch's C++ API for custom autograd functions), so
// neither the forward call nor the backward pass runs Python. The kernels are not compiled again: fused_mhc/__init__.py
// passes the addresses of the functions it has already built from mhc_fused.c (set_kernels).
//
// fused_mhc/__init__.py compiles this file on first use with the system's C++ compiler against the installed torch's headers
// (20-30 s, once per torch and Python version: the result is cached); where that fails, it keeps the Python
// Functions, which give the same numbers. tests/bonus/test_fused_mhc.py checks both against course_lib/mhc.py.
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/csrc/utils/pybind.h>

#include <tuple>
#include <vector>

using at::Tensor;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// The C kernels' signatures (mhc_fused.c), for real = float or double.
template <typename real> struct Kernels {
    void (*pre_forward)(int, int, int, int, real, real, const real *, const real *, const real *, const real *,
                        real *, real *, real *, real *, real *) = nullptr;
    void (*pre_backward)(int, int, int, int, real, const real *, const real *, const real *, real *, real *,
                         const real *, const real *, const real *, const real *, real *, real *, real *,
                         real *) = nullptr;
    void (*combine_forward)(int, int, int, const real *, const real *, const real *, const real *, real *) = nullptr;
    void (*combine_backward)(int, int, int, const real *, const real *, const real *, const real *, const real *,
                             real *, real *, real *, real *) = nullptr;
    long (*chunk_floats)(int) = nullptr;             // numbers saved per chunk of tokens, for n streams
    long (*scratch_floats)(int, int) = nullptr;      // the backward's buffer for Sinkhorn's history, for n and iters
    int64_t chunk = 0;                               // tokens per chunk
};
static Kernels<float> kernels_f;
static Kernels<double> kernels_d;

template <typename real> static Kernels<real> &kernels();
template <> Kernels<float> &kernels<float>() { return kernels_f; }
template <> Kernels<double> &kernels<double>() { return kernels_d; }

template <typename real> static real *ptr(const Tensor &t) { return static_cast<real *>(t.data_ptr()); }

// addresses (from ctypes): pre_forward, pre_backward, combine_forward, combine_backward, chunk_floats,
// scratch_floats; chunk: mhc_chunk_size().
static void set_kernels(bool is_double, std::vector<int64_t> a, int64_t chunk) {
    auto set = [&](auto &k) {
        using K = std::remove_reference_t<decltype(k)>;
        k.pre_forward = reinterpret_cast<decltype(K::pre_forward)>(a.at(0));
        k.pre_backward = reinterpret_cast<decltype(K::pre_backward)>(a.at(1));
        k.combine_forward = reinterpret_cast<decltype(K::combine_forward)>(a.at(2));
        k.combine_backward = reinterpret_cast<decltype(K::combine_backward)>(a.at(3));
        k.chunk_floats = reinterpret_cast<decltype(K::chunk_floats)>(a.at(4));
        k.scratch_floats = reinterpret_cast<decltype(K::scratch_floats)>(a.at(5));
        k.chunk = chunk;
    };
    if (is_double) set(kernels_d); else set(kernels_f);
}

// ------------------------------------------------------------------------------- the steps, as in fused_mhc/__init__.py
// X's leading dimensions (all but the last two: n, d) followed by tail.
static std::vector<int64_t> lead_shape(const Tensor &X, std::initializer_list<int64_t> tail) {
    auto s = X.sizes().vec();
    s.resize(s.size() - 2);
    s.insert(s.end(), tail);
    return s;
}

// X (N, n, d) contiguous; returns layer_input, B, C and the saved work (r, sigmoids, softmax, projection per chunk).
template <typename real>
static std::tuple<Tensor, Tensor, Tensor, Tensor> pre_forward(const Tensor &X, const Tensor &fn, const Tensor &base,
                                                              const Tensor &scale, int64_t iters, double eps,
                                                              double rms_eps) {
    auto &k = kernels<real>();
    int64_t n = X.size(-2), d = X.size(-1), N = X.numel() / (n * d), m = fn.size(0);
    auto opt = X.options();
    Tensor li = at::empty(lead_shape(X, {d}), opt), mix = at::empty(lead_shape(X, {n, n}), opt);
    Tensor post = at::empty(lead_shape(X, {n}), opt);
    Tensor saved = at::empty({(N + k.chunk - 1) / k.chunk * k.chunk_floats(n)}, opt);
    Tensor wt = at::empty({n * d * ((m + 7) / 8 * 8)}, opt);             // W^T, rows padded to 8
    k.pre_forward(N, n, d, iters, eps, rms_eps, ptr<real>(X), ptr<real>(fn), ptr<real>(base), ptr<real>(scale),
                  ptr<real>(li), ptr<real>(mix), ptr<real>(post), ptr<real>(saved), ptr<real>(wt));
    return {li, mix, post, saved};
}

static Tensor or_zeros(const Tensor &g, at::IntArrayRef shape, const at::TensorOptions &opt) {
    return g.defined() ? g.contiguous() : at::zeros(shape, opt);
}

// Gradients: gX, gW, g_base, g_scale; g_extra (undefined: none) is added into gX by the kernel.
template <typename real>
static std::tuple<Tensor, Tensor, Tensor, Tensor> pre_backward(const Tensor &X, const Tensor &fn, const Tensor &scale,
                                                               const Tensor &saved, int64_t iters, double eps,
                                                               const Tensor &g_in, const Tensor &g_mix,
                                                               const Tensor &g_post, const Tensor &g_extra) {
    auto &k = kernels<real>();
    int64_t n = X.size(-2), d = X.size(-1), N = X.numel() / (n * d), m = fn.size(0);
    auto opt = X.options();
    Tensor gi = or_zeros(g_in, lead_shape(X, {d}), opt), gm = or_zeros(g_mix, lead_shape(X, {n, n}), opt);
    Tensor gp = or_zeros(g_post, lead_shape(X, {n}), opt);
    Tensor ge = g_extra.defined() ? g_extra.contiguous() : Tensor();
    Tensor gX = at::empty(X.sizes(), opt), gW = at::empty(fn.sizes(), opt);
    Tensor g_scale = at::empty({3}, opt), g_base = at::empty({m}, opt);
    Tensor hist = at::empty({k.scratch_floats(n, iters)}, opt);
    k.pre_backward(N, n, d, iters, eps, ptr<real>(X), ptr<real>(fn), ptr<real>(scale), ptr<real>(saved),
                   ptr<real>(hist), ptr<real>(gi), ptr<real>(gm), ptr<real>(gp),
                   ge.defined() ? ptr<real>(ge) : nullptr, ptr<real>(gX), ptr<real>(gW), ptr<real>(g_scale),
                   ptr<real>(g_base));
    return {gX, gW, g_base, g_scale};
}

template <typename real>
static Tensor combine_forward(const Tensor &X, const Tensor &f, const Tensor &mix, const Tensor &post) {
    int64_t n = X.size(-2), d = X.size(-1);
    Tensor out = at::empty(X.sizes(), X.options());
    kernels<real>().combine_forward(X.numel() / (n * d), n, d, ptr<real>(X), ptr<real>(f), ptr<real>(mix),
                                    ptr<real>(post), ptr<real>(out));
    return out;
}

template <typename real>
static variable_list combine_backward(const Tensor &X, const Tensor &f, const Tensor &mix, const Tensor &post,
                                      const Tensor &G_) {
    int64_t n = X.size(-2), d = X.size(-1);
    Tensor G = G_.contiguous();
    Tensor gX = at::empty(X.sizes(), X.options()), gf = at::empty(f.sizes(), f.options());
    Tensor gmix = at::empty(mix.sizes(), mix.options()), gpost = at::empty(post.sizes(), post.options());
    kernels<real>().combine_backward(X.numel() / (n * d), n, d, ptr<real>(X), ptr<real>(f), ptr<real>(mix),
                                     ptr<real>(post), ptr<real>(G), ptr<real>(gX), ptr<real>(gf), ptr<real>(gmix),
                                     ptr<real>(gpost));
    return {gX, gf, gmix, gpost};
}

// Run body<float> or body<double> by the tensor's dtype (fused_mhc/__init__.py only sends these two).
#define BY_DTYPE(t, call) ((t).scalar_type() == at::kDouble ? call<double> : call<float>)

// ------------------------------------------------------------------------------------------------ the nodes
struct Pre : public torch::autograd::Function<Pre> {
    static variable_list forward(AutogradContext *ctx, Tensor X, Tensor fn, Tensor base, Tensor scale, int64_t iters,
                                 double eps, double rms_eps) {
        X = X.contiguous(), fn = fn.contiguous(), base = base.contiguous(), scale = scale.contiguous();
        auto [li, mix, post, saved] = BY_DTYPE(X, pre_forward)(X, fn, base, scale, iters, eps, rms_eps);
        ctx->save_for_backward({X, fn, scale});
        ctx->saved_data["saved"] = saved;                // an intermediate: not an input or an output
        ctx->saved_data["iters"] = iters;
        ctx->saved_data["eps"] = eps;
        return {li, mix, post};
    }

    static variable_list backward(AutogradContext *ctx, variable_list g) {
        auto s = ctx->get_saved_variables();
        auto [gX, gW, gb, gs] = BY_DTYPE(s[0], pre_backward)(s[0], s[1], s[2], ctx->saved_data["saved"].toTensor(),
                                                              ctx->saved_data["iters"].toInt(),
                                                              ctx->saved_data["eps"].toDouble(), g[0], g[1], g[2],
                                                              Tensor());
        return {gX, gW, gb, gs, Tensor(), Tensor(), Tensor()};
    }
};

struct Combine : public torch::autograd::Function<Combine> {
    static Tensor forward(AutogradContext *ctx, Tensor X, Tensor f, Tensor mix, Tensor post) {
        X = X.contiguous(), f = f.contiguous(), mix = mix.contiguous(), post = post.contiguous();
        ctx->save_for_backward({X, f, mix, post});
        return BY_DTYPE(X, combine_forward)(X, f, mix, post);
    }

    static variable_list backward(AutogradContext *ctx, variable_list g) {
        auto s = ctx->get_saved_variables();
        return BY_DTYPE(s[0], combine_backward)(s[0], s[1], s[2], s[3], g[0]);
    }
};

struct CombinePre : public torch::autograd::Function<CombinePre> {
    static variable_list forward(AutogradContext *ctx, Tensor X, Tensor f, Tensor mix, Tensor post, Tensor fn,
                                 Tensor base, Tensor scale, int64_t iters, double eps, double rms_eps) {
        X = X.contiguous(), f = f.contiguous(), mix = mix.contiguous(), post = post.contiguous();
        fn = fn.contiguous(), base = base.contiguous(), scale = scale.contiguous();
        Tensor X2 = BY_DTYPE(X, combine_forward)(X, f, mix, post);
        auto [li, mix2, post2, saved] = BY_DTYPE(X, pre_forward)(X2, fn, base, scale, iters, eps, rms_eps);
        ctx->save_for_backward({X, f, mix, post, X2, fn, scale});
        ctx->saved_data["saved"] = saved;
        ctx->saved_data["iters"] = iters;
        ctx->saved_data["eps"] = eps;
        return {X2, li, mix2, post2};
    }

    static variable_list backward(AutogradContext *ctx, variable_list g) {
        auto s = ctx->get_saved_variables();
        // X' also feeds the next combine (its gradient g[0]): the kernel adds that in
        auto [gX2, gW, gb, gs] = BY_DTYPE(s[0], pre_backward)(s[4], s[5], s[6], ctx->saved_data["saved"].toTensor(),
                                                               ctx->saved_data["iters"].toInt(),
                                                               ctx->saved_data["eps"].toDouble(), g[1], g[2], g[3],
                                                               g[0]);
        auto c = BY_DTYPE(s[0], combine_backward)(s[0], s[1], s[2], s[3], gX2);
        return {c[0], c[1], c[2], c[3], gW, gb, gs, Tensor(), Tensor(), Tensor()};
    }
};

static std::tuple<Tensor, Tensor, Tensor> pre(Tensor X, Tensor fn, Tensor base, Tensor scale, int64_t iters,
                                              double eps, double rms_eps) {
    auto out = Pre::apply(X, fn, base, scale, iters, eps, rms_eps);
    return {out[0], out[1], out[2]};
}

static Tensor combine(Tensor X, Tensor f, Tensor mix, Tensor post) { return Combine::apply(X, f, mix, post); }

static std::tuple<Tensor, Tensor, Tensor, Tensor> combine_then_pre(Tensor X, Tensor f, Tensor mix, Tensor post,
                                                                   Tensor fn, Tensor base, Tensor scale,
                                                                   int64_t iters, double eps, double rms_eps) {
    auto out = CombinePre::apply(X, f, mix, post, fn, base, scale, iters, eps, rms_eps);
    return {out[0], out[1], out[2], out[3]};
}

PYBIND11_MODULE(mhc_autograd, m) {
    m.def("set_kernels", &set_kernels);
    m.def("pre", &pre);
    m.def("combine", &combine);
    m.def("combine_then_pre", &combine_then_pre);
}
