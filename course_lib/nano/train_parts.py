"""The pieces of nano-DeepSeek's training run, kept apart so that one process (course_lib.nano.train) and several
(course_lib.nano.train_ep, under torchrun) run the very same data, step and checkpoint code.

  data   ``batch_fn``: batch number -> (x, y), a pure function of (seed, step): a resumed run sees the same batches
  step   ``train_step``: one optimiser step of V3's objective, then the aux-loss-free bias update
  saves  ``save_checkpoint`` / ``load_checkpoint``: atomic (temporary file, then rename)

V3's objective (arXiv 2412.19437): L_Main + lambda/D sum_k L_MTP^k (Eq. 25) + alpha sum_layers L_Bal (Eq. 17, the
sequence-wise loss), and after each step b_i <- b_i + gamma sign(mean load - load_i) (§2.1.2).
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch
import torch.nn as nn

from course_lib.moe import MoE, update_biases
from course_lib.mtp import MTPModel
from course_lib.nano import NanoConfig, main_model

CHECKPOINT = "checkpoint.pt"


# --------------------------------------------------------------------------------------------- data
def batch_fn(corpus, split: str, batch_size: int, seq_len: int, seed: int, device=None):
    """step -> (x, y): random windows of the corpus, each batch drawn from its own generator seeded by (seed, step),
    so batch n is the same whether or not the run was interrupted before it."""
    def get(step: int):
        g = torch.Generator().manual_seed(seed * 1_000_003 + step)
        return corpus.get_batch(split, batch_size, seq_len, generator=g, device=device)
    return get


# --------------------------------------------------------------------------------------------- counting
def activated_params(model: nn.Module) -> int:
    """Weights one token multiplies with in a forward pass of the main model and MTP modules: every matrix except
    the embedding table (a lookup), routed experts weighted by K_r / N_r, the shared head once per module using it."""
    total = 0
    lm = main_model(model)
    modules = [lm] + (list(model.mtp) if isinstance(model, MTPModel) else [])
    for i, mod in enumerate(modules):
        for name, p in mod.named_parameters():
            if name.startswith(("embed.", "head.")) and i > 0:
                continue                           # shared with the main model: counted below per use
            if name.startswith("embed."):
                continue
            total += p.numel()
        for m in mod.modules():
            if isinstance(m, MoE):
                routed = sum(p.numel() for p in m.experts.parameters())
                total -= routed - routed * m.num_experts_per_tok // m.n_routed_experts
        if i > 0:
            total += lm.head.weight.numel()        # the MTP module reads out through the shared head
    return total


def train_flops_per_token(model: nn.Module, seq_len: int) -> float:
    """Training FLOPs per token: 6 x activated weights (forward 2, backward 4; Kaplan et al. 2020, arXiv 2001.08361
    §2.1) plus the attention scores and weighted sums, 6 x n_layers x (T/2 causal keys) x heads x (d_qk + d_v)."""
    lm = main_model(model)
    blocks = list(lm.blocks) + ([m.block for m in model.mtp] if isinstance(model, MTPModel) else [])
    attn = 0
    for b in blocks:
        a = b.attn
        if hasattr(a, "qk_head_dim"):
            attn += a.n_heads * (a.qk_head_dim + a.v_head_dim)
        else:
            attn += a.n_heads * 2 * a.head_dim
    return 6.0 * activated_params(model) + 6.0 * (seq_len / 2) * attn


# --------------------------------------------------------------------------------------------- step
def loss_of(model: nn.Module, x: torch.Tensor, y: torch.Tensor, lam: float | None = None):
    """(loss to backpropagate, logs): V3 Eq. 25 plus the MoE balance losses the layers report."""
    if isinstance(model, MTPModel):
        out = model(x, y, lam=lam)
        logs = {"main_loss": out.main_loss.item(), "mtp_loss": torch.stack(out.mtp_losses).mean().item()}
        return out.loss, logs
    out = model(x, y)
    return out.loss + out.aux_loss, {"main_loss": out.loss.item()}


def train_step(model: nn.Module, opt: torch.optim.Optimizer, x, y, lr: float, lam: float | None = None,
               grad_clip: float | None = 1.0) -> dict:
    """One optimiser step; then V3's aux-loss-free bias update (once per step, from the loads this batch counted)."""
    model.train()
    for group in opt.param_groups:
        group["lr"] = lr
    loss, logs = loss_of(model, x, y, lam)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    opt.step()
    update_biases(model)
    return {"loss": loss.item(), **logs}


@torch.no_grad()
def validation_loss(model: nn.Module, get_val, batches: int) -> float:
    """Mean next-token loss of the main model over `batches` fixed validation batches."""
    was = model.training
    model.eval()
    lm = main_model(model)
    losses = [lm(*get_val(i)).loss.item() for i in range(batches)]
    model.train(was)
    return sum(losses) / len(losses)




def make_optimizer(model: nn.Module, lr: float, weight_decay: float = 0.1) -> torch.optim.Optimizer:
    """AdamW with betas (0.9, 0.95) and weight decay 0.1, V3 §4.2's settings."""
    return torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=weight_decay)


# --------------------------------------------------------------------------------------------- checkpoints
def save_checkpoint(path, model, opt, step: int, history: dict, cfg: NanoConfig, run: dict) -> None:
    """Atomic: write a temporary file next to `path`, then rename it (a crash leaves the old checkpoint intact)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {"model": model.state_dict(), "opt": opt.state_dict(), "step": step, "history": history,
             "config": cfg.to_dict(), "run": run}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    try:
        torch.save(state, tmp)
        os.chmod(tmp, 0o644)                 # mkstemp creates owner-only files
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def load_checkpoint(path) -> dict:
    return torch.load(Path(path), map_location="cpu", weights_only=True)
