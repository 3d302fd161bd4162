"""Muon: momentum whose update matrix is orthogonalised by Newton-Schulz iterations (DeepSeek-V4's optimizer).

For a weight matrix W (n x m) with gradient G, Muon keeps a momentum M and steps along the *orthogonalised*
momentum: the matrix U V^T of M's SVD U S V^T, i.e. M with every singular value set to 1. A few Newton-Schulz
iterations compute it with matrix products only (no SVD). DeepSeek-V4 report §2.4, Algorithm 1:

    M_t  = mu M_{t-1} + G_t                                   momentum
    O'_t = HybridNewtonSchulz(mu M_t + G_t)                   Nesterov trick, then orthogonalise (Eq. 28)
    O_t  = O'_t * sqrt(max(n, m)) * gamma                     update RMS rescaled to gamma (0.18 in V4, §4.2.2)
    W_t  = W_{t-1} (1 - eta lambda) - eta O_t                 decoupled weight decay and step

Newton-Schulz step, starting from M_0 = M / ||M||_F:  M_k = a M + b (M M^T) M + c (M M^T)^2 M.
* Jordan et al. (2024): 5 steps of (a, b, c) = (3.4445, -4.7750, 2.0315) -- fast, leaves singular values in
  roughly [0.7, 1.2] rather than exactly 1 (``JORDAN_NS``).
* DeepSeek-V4 ("hybrid"): 8 of those steps, then 2 steps of (2, -1.5, 0.5), which pull every singular value that
  is already near 1 onto 1 (``V4_NS``).
* Update scale: Jordan's code multiplies by max(1, n/m)^0.5; Moonlight (Liu et al. 2025, arXiv 2502.16982)
  by 0.2 sqrt(max(n, m)) so the update's RMS matches AdamW's and AdamW's learning rate and weight decay carry over;
  V4 uses the same form with gamma = 0.18 (``rms_scale``).

Which parameters (V4 report §2.4, "Basic Configurations"): AdamW for the embedding, the prediction head, the static
biases and gating factors of mHC and every RMSNorm weight; Muon for all other matrices. A 3-D tensor of stacked
expert matrices is orthogonalised expert by expert, as V4 does ("we optimize each expert independently", §3.4.1,
which also finds the Newton-Schulz iterations stable in BF16 matrix products). V4 uses no QK-Clip: RMSNorm on the
queries and KV entries keeps the attention logits bounded (§2.4). Hyper-parameters (§4.2.2): Muon momentum 0.95,
weight decay 0.1, gamma 0.18; AdamW betas (0.9, 0.95), eps 1e-20, weight decay 0.1; peak learning rate 2.7e-4
(V4-Flash) and 2.0e-4 (V4-Pro). ``split_params`` makes that split; ``MuonAdamW`` is one optimizer that applies Muon
to one group and AdamW (the same formula as torch.optim.AdamW) to the other.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

FAST = (3.4445, -4.7750, 2.0315)          # Jordan et al. 2024: fastest growth of small singular values
STABLE = (2.0, -1.5, 0.5)                 # the cubic Newton-Schulz step: fixes singular values at exactly 1
JORDAN_NS = (FAST,) * 5
V4_NS = (FAST,) * 8 + (STABLE,) * 2       # V4 (§2.4, Eq. 28): 8 fast steps, then 2 stabilising steps
SCHEDULES = {"v4": V4_NS, "jordan": JORDAN_NS}


def _coefficients(schedule) -> tuple:
    if isinstance(schedule, str):
        if schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {sorted(SCHEDULES)} or a list of (a, b, c), got {schedule!r}")
        return SCHEDULES[schedule]
    coeffs = tuple(tuple(float(v) for v in abc) for abc in schedule)
    if not coeffs or any(len(abc) != 3 for abc in coeffs):
        raise ValueError("schedule must be a non-empty list of (a, b, c) triples")
    return coeffs


def newton_schulz(g: torch.Tensor, schedule="v4", eps: float = 1e-7) -> torch.Tensor:
    """Approximate U V^T of g = U S V^T for a matrix (n, m) or a stack of matrices (..., n, m).

    Newton-Schulz:  M_0 = g / ||g||_F,  M_k = a M_{k-1} + b (M_{k-1} M_{k-1}^T) M_{k-1} + c (M_{k-1} M_{k-1}^T)^2 M_{k-1}
    Works on the wide orientation (n <= m) so that M M^T is the smaller Gram matrix; float64 stays float64,
    everything else runs in float32 (Jordan's GPU code uses bfloat16).
    """
    if g.dim() < 2:
        raise ValueError(f"g must be a matrix or a stack of matrices, got shape {tuple(g.shape)}")
    coeffs = _coefficients(schedule)
    x = g.double() if g.dtype == torch.float64 else g.float()
    tall = x.shape[-2] > x.shape[-1]
    if tall:
        x = x.transpose(-2, -1)
    x = x / (torch.linalg.matrix_norm(x, keepdim=True) + eps)         # Frobenius norm: every singular value <= 1
    for a, b, c in coeffs:
        gram = x @ x.transpose(-2, -1)
        x = a * x + (b * gram + c * gram @ gram) @ x
    if tall:
        x = x.transpose(-2, -1)
    return x.to(g.dtype)


def ns_polynomial(sigma: torch.Tensor, schedule="v4") -> torch.Tensor:
    """What the iteration does to one singular value: s -> a s + b s^3 + c s^5, applied step after step.

    (Newton-Schulz acts on each singular value independently: M = U S V^T gives M M^T M = U S^3 V^T.)"""
    s = sigma.clone()
    for a, b, c in _coefficients(schedule):
        s = a * s + b * s ** 3 + c * s ** 5
    return s


def update_scale(shape, rms_scale: float | None = 0.18) -> float:
    """Factor applied to the orthogonalised update of an (n, m) matrix.

    rms_scale gamma (V4 Algorithm 1, Moonlight): gamma * sqrt(max(n, m)); an orthogonal n x m matrix has RMS
    1 / sqrt(max(n, m)), so the update's RMS becomes gamma. None: Jordan's max(1, n / m)^0.5."""
    n, m = shape[-2], shape[-1]
    if rms_scale is None:
        return max(1.0, n / m) ** 0.5
    return rms_scale * math.sqrt(max(n, m))


def split_params(model: nn.Module, adamw_modules=(nn.Embedding,), adamw_names=("head",)):
    """(muon_params, adamw_params) following V4's rule (§2.4, see the module docstring): matrices (2-D, or 3-D
    stacked experts) to Muon; embeddings, the output head (modules whose name ends with one of ``adamw_names``),
    norms, biases, mHC static biases and gating factors (all 0-D / 1-D) to AdamW."""
    muon, adamw, seen = [], [], set()
    for mod_name, module in model.named_modules():
        to_adamw = isinstance(module, adamw_modules) or any(
            mod_name == n or mod_name.endswith("." + n) for n in adamw_names)
        for p in module.parameters(recurse=False):
            if id(p) in seen or not p.requires_grad:
                continue
            seen.add(id(p))
            (adamw if to_adamw or p.dim() < 2 else muon).append(p)
    return muon, adamw


class MuonAdamW(torch.optim.Optimizer):
    """Muon (V4 Algorithm 1) for the groups with ``use_muon=True``, AdamW for the others, in one optimizer.

    MuonAdamW([{"params": muon_params, "use_muon": True}, {"params": adamw_params, "use_muon": False}], lr=...)
    or ``MuonAdamW.for_model(model, lr)``. Muon options: momentum (0.95), nesterov (True), schedule ("v4" or
    "jordan" or a list of (a, b, c)), rms_scale (0.18; None for Jordan's scaling). AdamW options: betas, eps.
    weight_decay is decoupled in both (W <- W (1 - lr wd)), as in V4 and torch.optim.AdamW.
    """

    def __init__(self, params, lr: float = 1e-3, weight_decay: float = 0.0, momentum: float = 0.95,
                 nesterov: bool = True, schedule="v4", rms_scale: float | None = 0.18,
                 betas: tuple[float, float] = (0.9, 0.95), eps: float = 1e-8):
        if not lr > 0:
            raise ValueError(f"lr must be > 0, got {lr!r}")
        if not weight_decay >= 0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay!r}")
        if not 0 <= momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {momentum!r}")
        if rms_scale is not None and not rms_scale > 0:
            raise ValueError(f"rms_scale must be > 0 or None, got {rms_scale!r}")
        if not (0 <= betas[0] < 1 and 0 <= betas[1] < 1):
            raise ValueError(f"betas must both be in [0, 1), got {betas!r}")
        _coefficients(schedule)
        defaults = dict(lr=lr, weight_decay=weight_decay, momentum=momentum, nesterov=nesterov, schedule=schedule,
                        rms_scale=rms_scale, betas=betas, eps=eps, use_muon=True)
        super().__init__(params, defaults)
        for group in self.param_groups:
            if group["use_muon"] and any(p.dim() < 2 for p in group["params"]):
                raise ValueError("params: a Muon group may hold only matrices (2-D or stacked 3-D); "
                                 "put vectors and scalars in a group with use_muon=False")

    @classmethod
    def for_model(cls, model: nn.Module, lr: float, adamw_lr: float | None = None, **kwargs) -> "MuonAdamW":
        """Split the model's parameters with ``split_params`` (V4's rule) and build the optimizer."""
        muon, adamw = split_params(model)
        groups = [{"params": muon, "use_muon": True}]
        if adamw:
            groups.append({"params": adamw, "use_muon": False, "lr": adamw_lr or lr})
        return cls(groups, lr=lr, **kwargs)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if group["use_muon"]:
                    self._muon_step(p, group)
                else:
                    self._adamw_step(p, group)
        return loss

    def _muon_step(self, p, group):
        g, state = p.grad, self.state[p]
        if "momentum" not in state:
            state["momentum"] = torch.zeros_like(p)
        mom = state["momentum"]
        mu = group["momentum"]
        mom.mul_(mu).add_(g)                                            # M_t = mu M_{t-1} + G_t
        direction = g + mu * mom if group["nesterov"] else mom          # Nesterov: mu M_t + G_t
        update = newton_schulz(direction, group["schedule"])            # O'_t (per matrix of a 3-D stack)
        update = update * update_scale(p.shape, group["rms_scale"])     # O_t
        p.mul_(1 - group["lr"] * group["weight_decay"])                 # W (1 - eta lambda)
        p.add_(update, alpha=-group["lr"])                              #   - eta O_t

    def _adamw_step(self, p, group):
        # Loshchilov & Hutter 2019, in torch.optim.AdamW's form: bias-corrected moments, decoupled decay
        g, state = p.grad, self.state[p]
        if "step" not in state:
            state["step"], state["exp_avg"], state["exp_avg_sq"] = 0, torch.zeros_like(p), torch.zeros_like(p)
        state["step"] += 1
        t, (b1, b2) = state["step"], group["betas"]
        state["exp_avg"].mul_(b1).add_(g, alpha=1 - b1)
        state["exp_avg_sq"].mul_(b2).addcmul_(g, g, value=1 - b2)
        p.mul_(1 - group["lr"] * group["weight_decay"])
        denom = (state["exp_avg_sq"] / (1 - b2 ** t)).sqrt_().add_(group["eps"])
        p.addcdiv_(state["exp_avg"], denom, value=-group["lr"] / (1 - b1 ** t))
