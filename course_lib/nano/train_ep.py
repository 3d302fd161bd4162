"""Train nano-DeepSeek on several processes: data parallel + expert parallel, launched by torchrun.

    torchrun --nproc-per-node 4 -m course_lib.nano.train_ep --ep 4 --steps 50 --out runs/ep4     # 4 CPU processes
    python -m course_lib.nano.train_ep --ep 1 --steps 50 --out runs/ep1                          # one process
    torchrun --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29500 \\
        -m course_lib.nano.train_ep --ep 16 ...                                                   # two GPU nodes (NCCL)

Every rank reads its share of the same global batch (``--batch-size`` rows, split evenly), holds the replicated
weights (DDP averages their gradients) and n_routed / ep experts of every MoE layer (``course_lib.expert_parallel``).
The data, model and optimiser come from ``course_lib.nano.train_parts`` and ``course_lib.nano``, what
``course_lib.nano.train`` runs (batch_fn, build_model, make_optimizer, the same lr and MTP-weight schedules), so
with one process this is train_v3's training loop, step for step
(tests/test_expert_parallel.py checks that a 2-rank run equals a 1-process run on the same global batch).

Outputs in ``--out``: ``log.jsonl`` (one JSON line per step from rank 0: losses, tokens and bytes each rank sent
each other rank, time in the all-to-alls, step time), ``checkpoint.pt`` (the full single-process model and
optimiser, written atomically; ``--resume`` continues from it on any world size that divides the expert count),
``history.json``, ``heartbeat/`` (each rank's pulse: time, step, collectives entered; names a rank that stops answering).
A rank that dies or hangs makes the others' next collective fail after ``--timeout`` seconds; they print which
rank stopped and exit non-zero, and torchrun ends the run.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

from course_lib import expert_parallel
from course_lib.moe import MoE, update_biases
from course_lib.mtp import MTPModel, lambda_schedule
from course_lib.nano import build_model, get_preset, main_model
from course_lib.kit.train_loop import lr_at
from course_lib.nano.train_parts import CHECKPOINT, batch_fn, make_optimizer, train_step


def _rows(x, info):
    """This rank's rows of a global batch."""
    n = x.shape[0] // info.world
    return x[info.rank * n:(info.rank + 1) * n]


def _mean(value: float, info) -> float:
    if not info.distributed:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=info.device)    # NCCL reduces GPU tensors only
    dist.all_reduce(t)
    return float(t) / info.world


def ep_step(model, ddp, opt, x, y, lr, lam, info, grad_clip=1.0) -> dict:
    """One optimiser step on this rank's rows: V3's loss (train_parts.loss_of's terms), backward through DDP and the
    all-to-alls, expert gradients scaled, the global gradient norm clipped, AdamW, then the bias update from the
    global batch's expert loads."""
    model.train()
    for group in opt.param_groups:
        group["lr"] = lr
    if isinstance(model, MTPModel):
        out = ddp(x, y, lam=lam)
        loss = out.loss
        logs = {"main_loss": out.main_loss.item(), "mtp_loss": torch.stack(out.mtp_losses).mean().item()}
    else:
        out = ddp(x, y)
        loss = out.loss + out.aux_loss
        logs = {"main_loss": out.loss.item()}
    opt.zero_grad(set_to_none=True)
    loss.backward()
    expert_parallel.finish_gradients(model, info.world)
    if grad_clip:
        expert_parallel.global_grad_norm_clip(model, grad_clip, info.world)
    opt.step()
    expert_parallel.sync_expert_loads(model, info.world)
    update_biases(model)
    logs = {k: _mean(v, info) for k, v in {"loss": loss.item(), **logs}.items()}
    return logs


def traffic(model, info) -> dict:
    """Tokens and bytes this step's dispatches sent from each rank to each rank (summed over the MoE layers, forward
    only; the combine sends the same rows back), gathered to every rank as world x world lists."""
    layers = [m for m in model.modules() if isinstance(m, expert_parallel.ExpertParallelMoE)]
    if not layers:
        return {}
    tok = sum(m.last_send_tokens for m in layers).double().to(info.device)
    byt = sum(m.last_send_bytes for m in layers).double().to(info.device)
    comm = torch.tensor([sum(m.last_comm_s for m in layers)], dtype=torch.float64, device=info.device)
    mats = [torch.zeros_like(tok) for _ in range(info.world)], [torch.zeros_like(byt) for _ in range(info.world)]
    dist.all_gather(mats[0], tok)
    dist.all_gather(mats[1], byt)
    dist.all_reduce(comm, op=dist.ReduceOp.MAX)
    return {"sent_tokens": [m.tolist() for m in mats[0]], "sent_bytes": [m.tolist() for m in mats[1]],
            "comm_s": float(comm)}


@torch.no_grad()
def validation_loss(model, get_val, batches: int, info) -> float:
    """Mean main-model loss over fixed validation batches, each split over the ranks (all ranks must take part:
    the MoE layers exchange tokens)."""
    was = model.training
    model.eval()
    lm = main_model(model)
    losses = [_mean(lm(*(_rows(t, info).to(info.device) for t in get_val(i))).loss.item(), info)
              for i in range(batches)]
    model.train(was)
    return sum(losses) / len(losses)




def save(path, model, opt, step, history, cfg, run, info) -> None:
    """Gather the full model and optimiser (collective), then rank 0 writes one file a single process can load."""
    full = expert_parallel.gather_state_dict(model, info.world)
    by_name = expert_parallel.gather_optimizer_state(model, opt, info.world)
    if info.rank == 0:
        _write(path, model, opt, full, by_name, step, history, cfg, run, info)
    if info.distributed:
        dist.barrier()                                     # nobody runs ahead (and maybe dies) before it is on disk


def _write(path, model, opt, full, by_name, step, history, cfg, run, info) -> None:
    names = [n for n, _ in model.named_parameters()]
    opt_sd = {"state": {i: by_name[n] for i, n in enumerate(names) if by_name.get(n)},
              "param_groups": opt.state_dict()["param_groups"]}
    expert_parallel.atomic_save({"model": full, "opt": opt_sd, "opt_by_name": by_name, "step": step, "history": history,
                          "config": cfg.to_dict(), "run": run, "world": info.world}, path)


def train_ep(cfg, steps: int, out, ep: int, batch_size: int = 16, seq_len: int = 64, lr: float = 3e-3,
             warmup: int = 10, seed: int = 0, eval_every: int = 25, eval_batches: int = 4, ckpt_every: int = 50,
             resume: bool = False, timeout_s: float = 60.0, dtype=torch.float32, max_chars=None, fault=None,
             progress: bool = False) -> dict:
    """The run (see the module docstring). Returns rank 0's history (other ranks return theirs too)."""
    from course_lib.toys.corpus import Corpus

    info = expert_parallel.init_distributed(timeout_s)
    if ep != info.world:
        raise ValueError(f"ep must equal the number of processes ({info.world}); data parallel runs over the same "
                         f"ranks, got ep={ep}")
    if cfg.n_routed_experts % ep:
        raise ValueError(f"ep={ep} must divide n_routed_experts={cfg.n_routed_experts}")
    if batch_size % info.world:
        raise ValueError(f"batch_size={batch_size} must be a multiple of the number of processes ({info.world})")
    out = Path(out)
    run = dict(steps=steps, batch_size=batch_size, seq_len=seq_len, lr=lr, warmup=warmup, seed=seed)
    torch.manual_seed(seed)
    model = build_model(cfg).to(dtype)
    history = {"step": [], "loss": [], "main_loss": [], "val_step": [], "val_loss": []}
    start, state = 0, None
    if resume:
        state = torch.load(out / CHECKPOINT, map_location="cpu", weights_only=True)
        if state["run"] != run or state["config"] != cfg.to_dict():
            raise ValueError(f"resume: {out / CHECKPOINT} was written by a different run or config")
        model.load_state_dict(state["model"])
        start, history = state["step"], state["history"]
    model.to(info.device)
    if info.distributed:
        expert_parallel.expert_parallel(model, info.rank, info.world)
    opt = make_optimizer(model, lr)
    if state is not None:
        expert_parallel.load_optimizer_state(model, opt, state["opt_by_name"], info.rank, info.world)
    ddp = expert_parallel.wrap_ddp(model, info)
    model.nano_config = cfg
    corpus = Corpus(max_chars=max_chars)
    get_train = batch_fn(corpus, "train", batch_size, seq_len, seed)
    get_val = batch_fn(corpus, "val", batch_size, seq_len, seed + 1)
    log = out / "log.jsonl"
    beat = out / "heartbeat"
    if info.rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        if not resume and log.exists():
            log.unlink()
    heart = expert_parallel.start_heartbeat(beat, info.rank) if info.distributed else None
    for step in range(start, steps):
        t0 = time.perf_counter()
        if heart is not None:
            heart.step = step + 1
            heart.write()
        if fault and fault[0] == info.rank and fault[1] == step:
            _inject(fault[2], info.rank, step)
        try:
            x, y = (_rows(t, info).to(info.device) for t in get_train(step))
            lam = lambda_schedule(step, steps, cfg.mtp_loss_weight, cfg.mtp_loss_weight / 3) \
                if isinstance(model, MTPModel) else None
            lr_now = lr_at(step, steps, lr, warmup, "cosine")
            if info.distributed:
                logs = ep_step(model, ddp, opt, x, y, lr_now, lam, info)
                comm = traffic(model, info)
            else:
                logs, comm = train_step(model, opt, x, y, lr_now, lam), {}
            done = step + 1
            if done % eval_every == 0 or done == steps:
                history["val_step"].append(done)
                history["val_loss"].append(validation_loss(model, get_val, eval_batches, info))
            if done % ckpt_every == 0 or done == steps:
                save(out / CHECKPOINT, model, opt, done, _with(history, done, logs), cfg, run, info)
        except (RuntimeError, dist.DistBackendError) as err:
            if not info.distributed:
                raise
            time.sleep(3.5)                 # let a dead rank's heartbeat go stale (3 s: six missed 0.5 s pulses)
            print(expert_parallel.diagnose(beat, info.world, info.rank, stale_s=3.0) + f" ({type(err).__name__})",
                  file=sys.stderr, flush=True)
            os._exit(2)                                    # the process group is broken: leave without cleanup
        history = _with(history, done, logs)
        if info.rank == 0:
            line = {"step": done, **logs, "step_s": time.perf_counter() - t0, "world": info.world, **comm}
            if history["val_step"] and history["val_step"][-1] == done:
                line["val_loss"] = history["val_loss"][-1]
            with open(log, "a") as f:
                f.write(json.dumps(line) + "\n")
            if progress:
                print(f"step {done}/{steps} loss {logs['main_loss']:.4f}", flush=True)
    if info.rank == 0:
        (out / "history.json").write_text(json.dumps(history, indent=1))
    if info.distributed:
        shut_down(heart, info, holders=(ddp, model, opt))
    return history


def shut_down(heart, info, holders=()) -> None:
    """Leave the process group in a way that cannot hang: the barrier is a collective, so the process group's
    timeout bounds it; the heartbeat thread is stopped and joined; then ``expert_parallel.destroy_process_group_safely``."""
    dist.barrier()
    heart.stop()
    expert_parallel.destroy_process_group_safely(holders)


def demo_args(out, steps: int = 6) -> list:
    """The arguments of notebook 11's short four-process run (its cell spells them out; its recorded copy in
    assets/scaleout/make_runs.py and the stress check tools/stress_ep.py use this list)."""
    return ["-m", "course_lib.nano.train_ep", "--ep", "4", "--steps", str(steps), "--out", str(out),
            "--batch-size", "16", "--seq-len", "64", "--max-chars", "50000", "--eval-every", str(steps),
            "--eval-batches", "1", "--ckpt-every", str(steps), "--timeout", "60"]


def _with(history: dict, done: int, logs: dict) -> dict:
    """history with this step appended (a new dict: a checkpoint written mid-step holds the finished step)."""
    h = {k: list(v) if isinstance(v, list) else v for k, v in history.items()}
    if not h["step"] or h["step"][-1] != done:
        h["step"].append(done)
        for k, v in logs.items():
            h.setdefault(k, []).append(v)
    return h


def _inject(kind: str, rank: int, step: int) -> None:
    """Test hook (--fault): this rank dies or hangs at the start of a step."""
    print(f"rank {rank}: injected fault '{kind}' at step {step + 1}", file=sys.stderr, flush=True)
    if kind == "exit":
        os._exit(3)
    time.sleep(10 ** 6)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="torchrun --nproc-per-node N -m course_lib.nano.train_ep",
                                description=__doc__.split("\n")[0])
    p.add_argument("--ep", type=int, required=True, help="expert-parallel ranks (= number of processes)")
    p.add_argument("--preset", default="tiny")
    p.add_argument("--steps", type=int, required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--batch-size", type=int, default=16, help="global batch (split over the ranks)")
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-every", type=int, default=25)
    p.add_argument("--eval-batches", type=int, default=4)
    p.add_argument("--ckpt-every", type=int, default=50)
    p.add_argument("--n-group", type=int, default=None, help="expert groups = nodes (node-limited routing)")
    p.add_argument("--topk-group", type=int, default=None, help="M: nodes a token may use")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds a collective waits before failing")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--max-chars", type=int, default=None)
    p.add_argument("--float64", action="store_true", help="train in float64 (for exact comparisons)")
    p.add_argument("--fault", default=None, help="test hook RANK:STEP:exit|hang")
    a = p.parse_args(argv)
    if a.steps < 1:
        p.error(f"--steps must be >= 1, got {a.steps}")
    if a.preset == "v3":
        p.error("--preset v3 is the published shape, for counting only")
    torch.set_num_threads(a.threads)
    cfg = get_preset(a.preset)
    changes = {k: v for k, v in (("n_group", a.n_group), ("topk_group", a.topk_group)) if v is not None}
    cfg = cfg.replace(**changes) if changes else cfg
    fault = None
    if a.fault:
        r, s, kind = a.fault.split(":")
        if kind not in ("exit", "hang"):
            p.error("--fault kind must be exit or hang")
        fault = (int(r), int(s), kind)
    hist = train_ep(cfg, a.steps, a.out, a.ep, a.batch_size, a.seq_len, a.lr, seed=a.seed, eval_every=a.eval_every,
                    eval_batches=a.eval_batches, ckpt_every=a.ckpt_every, resume=a.resume, timeout_s=a.timeout,
                    dtype=torch.float64 if a.float64 else torch.float32, max_chars=a.max_chars, fault=fault)
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"step {hist['step'][-1]}: train loss {hist['main_loss'][-1]:.4f}, val loss {hist['val_loss'][-1]:.4f}")
    return 0


if __name__ == "__main__":
    code = main()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        expert_parallel.exit_rank(code)
    raise SystemExit(code)
