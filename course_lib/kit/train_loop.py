"""A small, shared training loop with a progress bar, so notebooks show the idea rather than boilerplate."""
from __future__ import annotations

import math
from typing import Callable

import torch
from tqdm.auto import tqdm


def lr_at(step: int, steps: int, lr: float, warmup: int = 0, schedule: str = "cosine", min_ratio: float = 0.1) -> float:
    """Linear warm-up, then constant or cosine decay to min_ratio * lr."""
    if step < warmup:
        return lr * (step + 1) / warmup
    if schedule == "constant":
        return lr
    if schedule != "cosine":
        raise ValueError(f"schedule must be 'cosine' or 'constant', got {schedule!r}")
    progress = (step - warmup) / max(1, steps - warmup)
    return lr * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def train_lm(model: torch.nn.Module, get_batch: Callable[[int], tuple], steps: int, lr: float = 3e-3,
             weight_decay: float = 0.0, warmup: int = 10, schedule: str = "cosine", grad_clip: float | None = 1.0,
             loss_fn: Callable | None = None, callback: Callable | None = None, progress: bool = True,
             desc: str = "training", optimizer: torch.optim.Optimizer | None = None) -> dict:
    """Train for `steps` steps; returns a history dict of lists ('loss' plus whatever callback returns).

    get_batch(step) -> (x, y).  loss_fn(model, x, y) -> (loss, logs dict) replaces the default
    'cross-entropy + MoE balance loss'.  callback(step, model) -> dict | None runs after each optimizer step
    (the place for aux-loss-free bias updates, evaluation, logging).
    """
    if steps <= 0:
        raise ValueError(f"steps must be positive, got {steps}")
    opt = optimizer or torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay, betas=(0.9, 0.95))
    history: dict[str, list] = {"loss": []}
    model.train()
    # mininterval: redraw at most once a second; a bar redrawn every step floods a notebook kernel's message queue
    # (seen as nbval's "timeout waiting for output" on long training cells).
    bar = tqdm(range(steps), desc=desc, disable=not progress, leave=False, mininterval=1.0)
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = lr_at(step, steps, lr, warmup, schedule)
        x, y = get_batch(step)
        if loss_fn is None:
            out = model(x, y)
            loss, logs = out.loss + out.aux_loss, {}
        else:
            loss, logs = loss_fn(model, x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        opt.step()
        history["loss"].append(loss.item())
        for key, value in (logs or {}).items():
            history.setdefault(key, []).append(float(value))
        if callback is not None:
            for key, value in (callback(step, model) or {}).items():
                history.setdefault(key, []).append(value)
        if step % 10 == 0:
            bar.set_postfix(loss=f"{history['loss'][-1]:.3f}", refresh=False)
    model.eval()
    return history
