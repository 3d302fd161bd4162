"""Manifold-constrained hyper-connections (mHC): DeepSeek-V4's replacement for the residual connection.

A plain residual block keeps ONE stream x and adds each sub-layer's output to it: x_{l+1} = x_l + F_l(x_l).
Hyper-connections (HC; Zhu et al. 2025, arXiv 2409.19606) keep n streams X_l (n x d) and learn how to read them,
mix them and write back (DeepSeek-V4 report §2.2, as transformers' code cites it):

    X_{l+1} = B_l X_l + C_l F_l(A_l X_l)          A_l: 1 x n (read), B_l: n x n (mix), C_l: n x 1 (write)

Unconstrained, the product B_L ... B_1 over a deep stack can grow or shrink without bound. mHC (Xie et al., arXiv
2512.24880, 2025; v2 2026; V4 §2.2) keeps every B_l doubly stochastic (non-negative, rows and columns sum to 1) by
Sinkhorn-Knopp iterations, so ||B_l||_2 <= 1 and any product of them is doubly stochastic again; A_l and C_l go
through sigmoids.

What is here:
* ``sinkhorn_knopp``: alternate column and row normalisation, with an epsilon as the released code has.
* ``HyperConnection``: A_l, B_l, C_l computed from the streams (V4 §2.2), in two flavours:
  ``constrained=True`` (mHC, weights laid out exactly as transformers' ``DeepseekV4HyperConnection``) and
  ``constrained=False`` (HC: no Sinkhorn, no sigmoids, static part initialised to the identity residual).
* ``HyperHead``: the final collapse of the n streams into one (transformers' ``DeepseekV4HyperHead``; the report
  does not describe it).
* ``StreamBlock`` / ``StreamLM``: a pre-norm transformer built from ``course_lib.layers`` whose residual is
  "plain", "hc" or "mhc"; ``composite_gains`` measures how much the product of the mixing matrices can amplify.

Everything here is PyTorch operations, written to be read next to the report. The same arithmetic in a few hand-written
C kernels (several times faster at notebook 08's width) is an optional bonus that builds on these classes:
``course_lib/bonus/fused_mhc/`` (its README says what fusion buys and when); nothing here imports it.

Where report and code differ (both are followed where they agree):
* The report's Sinkhorn starts from exp(B~) and applies T_r(T_c(.)) t_max times. transformers (and V4's released
  inference code it ports) does the same but adds eps = hc_eps after the first normalisation and to every
  denominator; the result is doubly stochastic up to about eps. We follow the code (eps=0 gives the report's form).
* The equations write A_l = sigmoid(A~_l); the code adds hc_eps. We follow the code.
* The code stores B_l transposed ("comb" with X_{l+1} = comb^T X_l + ...). We work with B_l as in the report and
  transpose when comparing with transformers.

Papers: DeepSeek-V4 technical report (2026) §2.2: Eq. 1 the HC update, Eq. 2 the doubly stochastic manifold, Eq. 3-5
the dynamic parameters, Eq. 6-7 A_l = sigmoid(A~_l) and C_l = 2 sigmoid(C~_l), Eq. 8 Sinkhorn-Knopp with t_max = 20;
§3.3 the 24-wide projection GEMM (split-k with a deterministic reduction), §3.4.2 fused kernels and recomputation
(6.7% of the overlapped 1F1B pipeline stage); Xie et al. (mHC, arXiv 2512.24880, 2025; v2 2026); Zhu
et al. 2025 (HC, arXiv 2409.19606); Sinkhorn & Knopp 1967. The constants n_hc = 4, t_max = 20, eps = 1e-6 are
``hc_mult``, ``hc_sinkhorn_iters``, ``hc_eps`` in the official V4-Flash and V4-Pro ``config.json``.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from course_lib.layers import MHA, RMSNorm, SwiGLU

RESIDUALS = ("plain", "hc", "mhc")


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def _at_least_float32(t: torch.Tensor) -> torch.Tensor:
    """The mixing weights are computed in float32 (as V4 keeps its mHC modules in float32), float64 stays float64."""
    return t if t.dtype == torch.float64 else t.float()


def _non_negative(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise ValueError(f"{name} must be a number >= 0, got {value!r}")
    return float(value)


# --------------------------------------------------------------------------------------------- Sinkhorn-Knopp
def sinkhorn_knopp(logits: torch.Tensor, iters: int = 20, eps: float = 1e-6, return_history: bool = False):
    """Project (..., n, n) logits B~ onto (nearly) doubly stochastic matrices.

    Sinkhorn-Knopp (mHC, V4 §2.2):  M^(0) = exp(B~),  M^(t) = T_r(T_c(M^(t-1))),  B = M^(t_max)
    T_c divides each column by its sum, T_r each row. The first T_c on exp(B~) is a softmax over each column
    (numerically safe); like the released code we add eps after it and to each denominator (eps=0: the report).
    With ``return_history`` also returns the list of matrices after each T_r(T_c(.)) step.
    Autograd differentiates the loop as written; a faster variant with a hand-written backward lives in
    ``course_lib.bench.sinkhorn`` (``python -m course_lib.bench sinkhorn`` measures both), so this stays the one to read.
    """
    _positive_int("iters", iters)
    eps = _non_negative("eps", eps)
    if logits.dim() < 2 or logits.shape[-1] != logits.shape[-2]:
        raise ValueError(f"logits must have shape (..., n, n), got {tuple(logits.shape)}")
    m = torch.softmax(logits, dim=-2) + eps                   # T_c(exp(B~)): each column sums to 1
    m = m / (m.sum(dim=-1, keepdim=True) + eps)               # T_r: each row sums to 1
    history = [m]
    for _ in range(iters - 1):                                # M^(t) = T_r(T_c(M^(t-1)))
        m = m / (m.sum(dim=-2, keepdim=True) + eps)           # T_c
        m = m / (m.sum(dim=-1, keepdim=True) + eps)           # T_r
        if return_history:
            history.append(m)
    return (m, history) if return_history else m


def sinkhorn_by_hand(matrix: torch.Tensor, iters: int) -> list[torch.Tensor]:
    """The textbook algorithm on a positive matrix, no epsilon: [M, T_c(M), T_r(T_c(M)), T_c(...), ...]."""
    _positive_int("iters", iters)
    if matrix.dim() != 2 or matrix.shape[0] != matrix.shape[1] or not bool((matrix > 0).all()):
        raise ValueError("matrix must be a square matrix with positive entries")
    steps = [matrix]
    for _ in range(iters):
        steps.append(steps[-1] / steps[-1].sum(dim=0, keepdim=True))
        steps.append(steps[-1] / steps[-1].sum(dim=1, keepdim=True))
    return steps


# --------------------------------------------------------------------------------------------- one connection
class HyperConnection(nn.Module):
    """Computes A_l X_l (the sub-layer input), B_l and C_l from the n streams X_l (V4 §2.2).

    Parameters in transformers' layout (``DeepseekV4HyperConnection``): ``fn`` stacks W^pre, W^post, W^res
    ((2n + n^2) x n d), ``base`` stacks the static parts S^pre, S^post, S^res, ``scale`` = (alpha^pre, alpha^post,
    alpha^res). forward(X (B, T, n, d)) -> (layer_input (B, T, d), B_l (B, T, n, n), C_l (B, T, n)).

    constrained=True (mHC):  A = sigmoid(A~) + eps, C = 2 sigmoid(C~), B = Sinkhorn(B~).
    constrained=False (HC):  A = A~, C = C~, B = B~ with tanh on the dynamic part as in Zhu et al. 2025; the
    static part starts at S^pre = 1/n, S^post = 1, S^res = I, so at initialisation HC is a plain residual
    connection on every stream.
    """

    def __init__(self, d_model: int, n_streams: int = 4, sinkhorn_iters: int = 20, eps: float = 1e-6,
                 rms_eps: float = 1e-6, constrained: bool = True, init_std: float = 0.02):
        super().__init__()
        self.d_model = _positive_int("d_model", d_model)
        self.n_streams = n = _positive_int("n_streams", n_streams)
        self.sinkhorn_iters = _positive_int("sinkhorn_iters", sinkhorn_iters)
        self.eps = _non_negative("eps", eps)
        self.rms_eps = _non_negative("rms_eps", rms_eps)
        self.constrained = bool(constrained)
        self.fn = nn.Parameter(torch.randn((2 + n) * n, n * d_model) * init_std)
        self.base = nn.Parameter(torch.zeros((2 + n) * n))
        self.scale = nn.Parameter(torch.ones(3))
        if not self.constrained:
            with torch.no_grad():
                self.base[:n] = 1.0 / n                                   # S^pre: read the mean of the streams
                self.base[n:2 * n] = 1.0                                  # S^post: write to every stream
                self.base[2 * n:] = torch.eye(n).flatten()                # S^res: keep each stream
        self.last_mix = None                                              # B_l of the last forward (detached)

    def forward(self, streams: torch.Tensor):
        if streams.dim() != 4 or streams.shape[-2:] != (self.n_streams, self.d_model):
            raise ValueError(f"streams must have shape (batch, time, {self.n_streams}, {self.d_model}), "
                             f"got {tuple(streams.shape)}")
        n = self.n_streams
        # X^_l = RMSNorm(vec(X_l)) (no weight);  raw = alpha * (X^_l W) + S
        flat = _at_least_float32(streams.flatten(2))
        flat = flat * torch.rsqrt(flat.pow(2).mean(-1, keepdim=True) + self.rms_eps)
        mixes = F.linear(flat, self.fn.to(flat.dtype))
        pre_w, post_w, res_w = mixes.split([n, n, n * n], dim=-1)
        pre_b, post_b, res_b = self.base.to(flat.dtype).split([n, n, n * n])
        a_pre, a_post, a_res = self.scale.to(flat.dtype).unbind(0)
        # transformers stores the mixing matrix as comb[j, k] (flat index j*n + k) and uses comb^T: B = comb^T
        res_w = res_w.unflatten(-1, (n, n)).transpose(-1, -2)
        res_b = res_b.view(n, n).t()
        if self.constrained:
            pre = torch.sigmoid(a_pre * pre_w + pre_b) + self.eps                           # A_l (+eps as the code)
            post = 2 * torch.sigmoid(a_post * post_w + post_b)                              # C_l
            mix = sinkhorn_knopp(a_res * res_w + res_b, self.sinkhorn_iters, self.eps)      # B_l
        else:
            pre = a_pre * torch.tanh(pre_w) + pre_b
            post = a_post * torch.tanh(post_w) + post_b
            mix = a_res * torch.tanh(res_w) + res_b
        self.last_mix = mix.detach()
        layer_input = (pre.unsqueeze(-1) * streams).sum(dim=2).to(streams.dtype)            # A_l X_l
        return layer_input, mix.to(streams.dtype), post.to(streams.dtype)

    @staticmethod
    def combine(streams: torch.Tensor, layer_output: torch.Tensor, mix: torch.Tensor, post: torch.Tensor):
        """HC / mHC update (V4 §2.2):  X_{l+1} = B_l X_l + C_l F_l(A_l X_l).

        (B_l X_l)_i = sum_j B_ij x_j. For narrow streams (d < 128) a broadcast product and a sum is about 3x faster
        on a CPU than a batched matmul of one n x n matrix per token; for wider ones its (n, n, d) intermediate costs
        more than the matmul, so we switch (the same numbers up to rounding)."""
        if streams.shape[-1] < 128:
            mixed = (mix.unsqueeze(-1) * streams.unsqueeze(-3)).sum(dim=-2)
        else:
            mixed = mix @ streams
        return mixed + post.unsqueeze(-1) * layer_output.unsqueeze(-2)

    def extra_repr(self) -> str:
        kind = "mHC" if self.constrained else "HC"
        return f"{kind}, d_model={self.d_model}, n_streams={self.n_streams}, sinkhorn_iters={self.sinkhorn_iters}"


class HyperHead(nn.Module):
    """Collapse the n streams into one before the final norm: sum_j (sigmoid(alpha X^ W + S)_j + eps) x_j.

    transformers' ``DeepseekV4HyperHead`` (the released code's final hyper-connection; not in the report)."""

    def __init__(self, d_model: int, n_streams: int = 4, eps: float = 1e-6, rms_eps: float = 1e-6,
                 init_std: float = 0.02):
        super().__init__()
        self.d_model = _positive_int("d_model", d_model)
        self.n_streams = _positive_int("n_streams", n_streams)
        self.eps = _non_negative("eps", eps)
        self.rms_eps = _non_negative("rms_eps", rms_eps)
        self.fn = nn.Parameter(torch.randn(n_streams, n_streams * d_model) * init_std)
        self.base = nn.Parameter(torch.zeros(n_streams))
        self.scale = nn.Parameter(torch.ones(1))

    def forward(self, streams: torch.Tensor) -> torch.Tensor:
        if streams.dim() != 4 or streams.shape[-2:] != (self.n_streams, self.d_model):
            raise ValueError(f"streams must have shape (batch, time, {self.n_streams}, {self.d_model}), "
                             f"got {tuple(streams.shape)}")
        flat = _at_least_float32(streams.flatten(2))
        flat = flat * torch.rsqrt(flat.pow(2).mean(-1, keepdim=True) + self.rms_eps)
        weights = F.linear(flat, self.fn.to(flat.dtype)) * self.scale.to(flat.dtype) + self.base.to(flat.dtype)
        weights = torch.sigmoid(weights) + self.eps
        return (weights.unsqueeze(-1) * streams).sum(dim=2).to(streams.dtype)


# --------------------------------------------------------------------------------------------- a model
class StreamBlock(nn.Module):
    """Pre-norm transformer block (attention, then SwiGLU) whose two residual connections are plain, HC or mHC.

    plain: x = x + Attn(norm(x)); x = x + FFN(norm(x)), on (B, T, d).
    hc / mhc: each sub-layer F is wrapped as X = B X + C F(norm(A X)), on (B, T, n, d) (V4's decoder layer)."""

    def __init__(self, d_model: int, n_heads: int, ffn_hidden: int, residual: str = "mhc", n_streams: int = 4,
                 sinkhorn_iters: int = 20, max_seq_len: int = 256):
        super().__init__()
        if residual not in RESIDUALS:
            raise ValueError(f"residual must be one of {RESIDUALS}, got {residual!r}")
        self.residual = residual
        self.attn_norm, self.ffn_norm = RMSNorm(d_model), RMSNorm(d_model)
        self.attn = MHA(d_model, n_heads, max_seq_len=max_seq_len)
        self.ffn = SwiGLU(d_model, ffn_hidden)
        if residual != "plain":
            kw = dict(n_streams=n_streams, sinkhorn_iters=sinkhorn_iters, constrained=residual == "mhc")
            self.attn_hc, self.ffn_hc = HyperConnection(d_model, **kw), HyperConnection(d_model, **kw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.residual == "plain":
            x = x + self.attn(self.attn_norm(x))
            return x + self.ffn(self.ffn_norm(x))
        inp, mix, post = self.attn_hc(x)                                        # A X, B, C  (Eq. 3-8)
        x = HyperConnection.combine(x, self.attn(self.attn_norm(inp)), mix, post)   # B X + C F(A X)  (Eq. 1)
        inp, mix, post = self.ffn_hc(x)
        return HyperConnection.combine(x, self.ffn(self.ffn_norm(inp)), mix, post)


class StreamLM(nn.Module):
    """A deep, narrow decoder-only LM for the residual comparison: embed -> n copies -> blocks -> collapse -> head.

    residual "plain" uses one stream and no hyper-connections; "hc" and "mhc" copy the embedding into n streams
    (as transformers' DeepseekV4Model does) and collapse them with ``HyperHead`` at the end.
    forward(idx, targets=None) -> (logits, loss or None)."""

    def __init__(self, vocab_size: int = 256, d_model: int = 32, n_layers: int = 24, n_heads: int = 4,
                 residual: str = "mhc", n_streams: int = 4, sinkhorn_iters: int = 20, ffn_hidden: int | None = None,
                 max_seq_len: int = 256):
        super().__init__()
        for name, value in (("vocab_size", vocab_size), ("d_model", d_model), ("n_layers", n_layers),
                            ("n_heads", n_heads), ("n_streams", n_streams)):
            _positive_int(name, value)
        if residual not in RESIDUALS:
            raise ValueError(f"residual must be one of {RESIDUALS}, got {residual!r}")
        self.residual, self.n_streams = residual, (1 if residual == "plain" else n_streams)
        ffn_hidden = ffn_hidden or int(math.ceil(8 * d_model / 3 / 16) * 16)
        self.embed = nn.Embedding(vocab_size, d_model)
        self.blocks = nn.ModuleList(StreamBlock(d_model, n_heads, ffn_hidden, residual, n_streams, sinkhorn_iters,
                                                max_seq_len) for _ in range(n_layers))
        self.hc_head = HyperHead(d_model, n_streams) if residual != "plain" else None
        self.norm = RMSNorm(d_model)
        self.head = nn.Linear(d_model, vocab_size, bias=False)
        for module in self.modules():          # the course's small init (as TinyLM): first loss about log(vocab)
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        if idx.dim() != 2:
            raise ValueError(f"idx must be (batch, time) token ids, got shape {tuple(idx.shape)}")
        x = self.embed(idx)
        if self.hc_head is not None:
            x = x.unsqueeze(2).expand(-1, -1, self.n_streams, -1).contiguous()
        for block in self.blocks:
            x = block(x)
        if self.hc_head is not None:
            x = self.hc_head(x)
        logits = self.head(self.norm(x))
        loss = None if targets is None else F.cross_entropy(logits.flatten(0, 1), targets.flatten())
        return logits, loss


def mixing_matrices(model: nn.Module) -> list[torch.Tensor]:
    """The B_l of every hyper-connection of the model's last forward, in order: each (B, T, n, n)."""
    mats = [m.last_mix for m in model.modules() if isinstance(m, HyperConnection)]
    if any(m is None for m in mats):
        raise ValueError("run a forward pass first: some hyper-connections have no mixing matrix yet")
    return mats


def composite_gains(mixes: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward and backward gain of the composed mixing P_l = B_l ... B_1 after each layer l.

    forward gain = max over rows of sum_j |P_ij| (how much a signal can grow on its way up);
    backward gain = max over columns (how much a gradient can grow on its way down); both averaged over tokens
    (the "Amax gain magnitude" of the mHC paper). A doubly stochastic P has both exactly 1.
    Returns two tensors of shape (L,)."""
    if not mixes:
        raise ValueError("mixes must hold at least one mixing matrix")
    prod = None
    fwd, bwd = [], []
    for b in mixes:
        prod = b.double() if prod is None else b.double() @ prod
        fwd.append(prod.abs().sum(-1).amax(-1).mean())
        bwd.append(prod.abs().sum(-2).amax(-1).mean())
    return torch.stack(fwd), torch.stack(bwd)


def train(model: nn.Module, get_batch, steps: int, lr: float = 3e-3, warmup: int = 10, clip: float = 1.0,
          progress: bool = True, desc: str = "training", stop_after: int | None = None) -> dict:
    """AdamW on a StreamLM with the course's schedule; records the loss and the gradient norm BEFORE clipping
    (the quantity that shows an unstable residual path). get_batch(step) -> (x, y).
    stop_after: run only the first steps of a `steps`-long schedule (to replay the start of a longer run)."""
    from tqdm.auto import tqdm

    from course_lib.kit.train_loop import lr_at

    _positive_int("steps", steps)
    if stop_after is not None:
        _positive_int("stop_after", stop_after)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95))
    history = {"loss": [], "grad_norm": []}
    model.train()
    for step in tqdm(range(min(steps, stop_after or steps)), desc=desc, disable=not progress, leave=False, mininterval=1.0):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, steps, lr, warmup)
        x, y = get_batch(step)
        _, loss = model(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        history["grad_norm"].append(float(torch.nn.utils.clip_grad_norm_(model.parameters(), clip)))
        opt.step()
        history["loss"].append(loss.item())
    model.eval()
    return history
