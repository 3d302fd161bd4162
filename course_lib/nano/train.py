"""Train nano-DeepSeek (course_lib.nano) on the course corpus, from a notebook or from the shell.

    python -m course_lib.nano.train --preset tiny --steps 300 --out runs/nano          # train, checkpoint, history
    python -m course_lib.nano.train --preset tiny --steps 300 --out runs/nano --resume # continue an interrupted run

Three separate pieces, so the scale-out notebook can wrap them (torchrun, data parallel) without rewriting them:
  data   ``batch_fn``: batch number -> (x, y), a pure function of (seed, step): a resumed run sees the same batches
  model  ``course_lib.nano.build_model``
  step   ``train_step``: one optimiser step of V3's objective, then the aux-loss-free bias update
(data, step and checkpoints live in ``course_lib.nano.train_parts``; ``--ep N`` under torchrun hands the run to
``course_lib.nano.train_ep``, which uses the same pieces).

V3's objective (arXiv 2412.19437): L_Main + lambda/D sum_k L_MTP^k (Eq. 25) + alpha sum_layers L_Bal (Eq. 17, the
sequence-wise loss), and after each step b_i <- b_i + gamma sign(mean load - load_i) (§2.1.2). Checkpoints are
written atomically (temporary file, then rename) and hold the model, the optimiser, the step and the history, so
``--resume`` continues with exactly the loss curve an uninterrupted run has (tests/nano/test_nano_train.py).
"""
from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from course_lib.mtp import MTPModel, lambda_schedule
from course_lib.nano import NanoConfig, build_model, get_preset
from course_lib.kit.train_loop import lr_at
from course_lib.kit.validate import positive_int
from course_lib.nano.train_parts import (CHECKPOINT, activated_params, batch_fn, load_checkpoint,  # noqa: F401 (re-exported)
                          loss_of, make_optimizer, save_checkpoint, train_flops_per_token, train_step, validation_loss)

# --------------------------------------------------------------------------------------------- the run
def train(cfg: NanoConfig, steps: int, corpus=None, batch_size: int = 16, seq_len: int = 64, lr: float = 3e-3,
          warmup: int = 10, seed: int = 0, eval_every: int = 25, eval_batches: int = 4, out=None,
          ckpt_every: int = 50, resume: bool = False, stop_after: int | None = None, progress: bool = True,
          desc: str = "nano-DeepSeek", model: nn.Module | None = None) -> tuple[nn.Module, dict]:
    """Train `cfg` for `steps` steps; returns (model, history).

    history: "step", "loss", "main_loss" (and "mtp_loss") per step; "val_step", "val_loss", "val_flops" at each
    evaluation (every `eval_every` steps and at the end); "flops_per_token" and "tokens_per_step".
    out: folder for checkpoint.pt (every `ckpt_every` steps and at the end) and history.json.
    resume: continue from out/checkpoint.pt. stop_after: end after this step as if interrupted (for tests/demos).
    """
    from course_lib.toys.corpus import Corpus

    positive_int("steps", steps)
    if stop_after is not None:
        positive_int("stop_after", stop_after)
    if resume and out is None:
        raise ValueError("resume needs out (the folder holding checkpoint.pt)")
    for name, v in (("eval_every", eval_every), ("ckpt_every", ckpt_every), ("batch_size", batch_size),
                    ("seq_len", seq_len), ("eval_batches", eval_batches)):
        positive_int(name, v)
    corpus = corpus if corpus is not None else Corpus()
    run = dict(steps=steps, batch_size=batch_size, seq_len=seq_len, lr=lr, warmup=warmup, seed=seed)
    ckpt = Path(out) / CHECKPOINT if out is not None else None
    start = 0
    if model is None:
        torch.manual_seed(seed)
        model = build_model(cfg)
    opt = make_optimizer(model, lr)
    history = {"step": [], "loss": [], "main_loss": [], "val_step": [], "val_loss": [], "val_flops": []}
    if resume:
        state = load_checkpoint(ckpt)
        if state["run"] != run or state["config"] != cfg.to_dict():
            raise ValueError(f"resume: {ckpt} was written by a different run or config; use the same settings")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        start, history = state["step"], state["history"]
        history.setdefault("val_flops", [])      # a checkpoint of an expert-parallel run (train_ep) has no FLOP log
    model.nano_config = cfg
    get_train = batch_fn(corpus, "train", batch_size, seq_len, seed)
    get_val = batch_fn(corpus, "val", batch_size, seq_len, seed + 1)
    flops = train_flops_per_token(model, seq_len)
    history["flops_per_token"], history["tokens_per_step"] = flops, batch_size * seq_len
    end = steps if stop_after is None else min(steps, stop_after)
    bar = tqdm(range(start, end), desc=desc, disable=not progress, leave=False, mininterval=1.0)
    for step in bar:
        x, y = get_train(step)
        lam = lambda_schedule(step, steps, cfg.mtp_loss_weight, cfg.mtp_loss_weight / 3) \
            if isinstance(model, MTPModel) else None
        logs = train_step(model, opt, x, y, lr_at(step, steps, lr, warmup, "cosine"), lam)
        history["step"].append(step + 1)
        for k, v in logs.items():
            history.setdefault(k, []).append(v)
        done = step + 1
        if done % eval_every == 0 or done == steps:
            history["val_step"].append(done)
            history["val_loss"].append(validation_loss(model, get_val, eval_batches))
            history["val_flops"].append(flops * batch_size * seq_len * done)
            bar.set_postfix(val=f"{history['val_loss'][-1]:.3f}", refresh=False)
        if ckpt is not None and (done % ckpt_every == 0 or done == end):
            save_checkpoint(ckpt, model, opt, done, history, cfg, run)
    if out is not None:
        text = json.dumps({k: v for k, v in history.items()}, indent=1)
        (Path(out) / "history.json").write_text(text)
    model.eval()
    return model, history


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m course_lib.nano.train", description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="tiny", help="nano preset (tiny)")
    p.add_argument("--steps", type=int, required=True)
    p.add_argument("--out", required=True, help="folder for checkpoint.pt and history.json")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-every", type=int, default=25)
    p.add_argument("--ckpt-every", type=int, default=50)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 is fastest for the tiny model)")
    p.add_argument("--max-chars", type=int, default=None, help="use only the start of each corpus part (quick runs)")
    p.add_argument("--export", action="store_true", help="also write OUT/hf for transformers (nano_export)")
    p.add_argument("--ep", type=int, default=1,
                   help="expert-parallel ranks: run under `torchrun --nproc-per-node N` with --ep N (notebook 11)")
    p.add_argument("--timeout", type=float, default=60.0, help="with --ep: seconds a collective waits before failing")
    a = p.parse_args(argv)
    if a.ep < 1:
        p.error(f"--ep must be a positive int, got {a.ep}")
    if a.ep > 1 or int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # Several processes: the same model, data and step, with experts spread over the ranks (course_lib.nano.train_ep).
        if a.export:
            p.error("--export works in one process: export the gathered checkpoint afterwards")
        from course_lib.nano import train_ep
        forwarded = ["--ep", str(a.ep), "--preset", a.preset, "--steps", str(a.steps), "--out", a.out,
                     "--batch-size", str(a.batch_size), "--seq-len", str(a.seq_len), "--lr", str(a.lr),
                     "--seed", str(a.seed), "--eval-every", str(a.eval_every), "--ckpt-every", str(a.ckpt_every),
                     "--threads", str(a.threads), "--timeout", str(a.timeout)]
        forwarded += ["--resume"] * a.resume + (["--max-chars", str(a.max_chars)] if a.max_chars else [])
        return train_ep.main(forwarded)
    if a.preset == "v3":
        p.error("--preset v3 is the published shape, for counting only")
    torch.set_num_threads(a.threads)
    cfg = get_preset(a.preset)
    from course_lib.toys.corpus import Corpus
    model, hist = train(cfg, a.steps, corpus=Corpus(max_chars=a.max_chars), batch_size=a.batch_size, seq_len=a.seq_len, lr=a.lr, seed=a.seed,
                        eval_every=a.eval_every, ckpt_every=a.ckpt_every, out=a.out, resume=a.resume)
    print(f"step {hist['step'][-1]}: train loss {hist['main_loss'][-1]:.4f}, "
          f"val loss {hist['val_loss'][-1]:.4f} ({math.exp(hist['val_loss'][-1]):.2f} perplexity per byte)")
    if a.export:
        from course_lib.nano.export import to_transformers
        print("exported to", to_transformers(model, Path(a.out) / "hf", cfg))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
