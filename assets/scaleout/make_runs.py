"""Recorded runs for notebook 11 (python assets/scaleout/make_runs.py [--steps 300]; about 10 minutes on 2 CPU cores).

1. node_limited.json: nano-DeepSeek with 16 routed experts (4 per token) on 4 "nodes" (n_group = 4), trained with
   node-limited routing M = topk_group = 1, 2 and 4 (4 of 4 = unrestricted). For each: the loss curves and the
   average number of nodes each token is dispatched to (measured on validation batches after training), which sets
   the all-to-all bytes per token.
2. fp8.json: the tiny preset trained in full precision and with FP8 fake-quantised GEMMs (course_lib.fp8, tiles and
   blocks of 32 because the toy's matrices are 96 wide), same seed and batches; loss curves and the relative gap.
   A third run, full precision from another initial seed (same batches), measures how far two runs differ without
   any FP8: the yardstick for the FP8 gap.
3. ep4_run/: notebook 11's four-process expert-parallel run (its exact command, through course_lib.kit.launch), the
   log and history only: the notebook shows it when the live run cannot finish on the learner's machine.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from course_lib import fp8, expert_parallel
from course_lib.toys.corpus import Corpus
from course_lib.moe import moe_layers
from course_lib.nano import TINY, build_model, main_model
from course_lib.nano.train import batch_fn, train

HERE = Path(__file__).resolve().parent
EXPERTS16 = dict(n_routed_experts=16, num_experts_per_tok=4, moe_intermediate_size=24, n_group=4)


@torch.no_grad()
def nodes_per_token(model, get_val, batches: int = 4, nodes: int = 4) -> float:
    """Mean number of distinct nodes (expert groups) a token's routed experts sit on, over the MoE layers."""
    model.eval()
    vals = []
    for i in range(batches):
        main_model(model)(*get_val(i))
        for layer in moe_layers(model):
            rows = expert_parallel.dispatch_rows(layer.last_topk_idx, layer.n_routed_experts, nodes)
            vals.append(rows.sum().item() / layer.last_topk_idx.shape[0])
    return sum(vals) / len(vals)


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--part", choices=("all", "node", "fp8", "ep4"), default="all")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    if a.part in ("all", "ep4"):
        record_ep4()
    if a.part == "ep4":
        return
    corpus = Corpus()
    common = dict(batch_size=16, seq_len=64, lr=3e-3, seed=0, eval_every=25, progress=False)
    runs = {}
    for m in ((1, 2, 4) if a.part in ("all", "node") else ()):
        cfg = TINY.replace(name=f"16 experts, M={m}", topk_group=m, **EXPERTS16)
        model, hist = train(cfg, a.steps, corpus=corpus, **common)
        npt = nodes_per_token(model, batch_fn(corpus, "val", 16, 64, 1))
        runs[str(m)] = {"history": hist, "nodes_per_token": npt}
        print(f"M={m}: val loss {hist['val_loss'][-1]:.4f}, nodes per token {npt:.3f}", flush=True)
    if runs:
        (HERE / "node_limited.json").write_text(json.dumps({"steps": a.steps, "config": EXPERTS16, "runs": runs}))
    if a.part == "node":
        return

    out = {}
    for name in ("full", "fp8", "full_seed1"):
        torch.manual_seed(1 if name == "full_seed1" else 0)
        model = build_model(TINY)
        if name == "fp8":
            fp8.fp8_model(model, tile=32)
        _, hist = train(TINY, a.steps, corpus=corpus, model=model, **common)
        out[name] = hist
        print(f"{name}: val loss {hist['val_loss'][-1]:.4f}", flush=True)
    gap = (out["fp8"]["val_loss"][-1] - out["full"]["val_loss"][-1]) / out["full"]["val_loss"][-1]
    noise = (out["full_seed1"]["val_loss"][-1] - out["full"]["val_loss"][-1]) / out["full"]["val_loss"][-1]
    print(f"relative gap of the final validation loss: FP8 {gap:+.3%}, another seed {noise:+.3%}")
    (HERE / "fp8.json").write_text(json.dumps({"steps": a.steps, "tile": 32, "runs": out}))


def record_ep4(steps: int = 6) -> None:
    """Notebook 11's live run, recorded: the same arguments as its cell, four ranks on the CPU."""
    import shutil
    import tempfile

    from course_lib.kit.launch import run_torchrun
    from course_lib.nano.train_ep import demo_args

    run_dir = Path(tempfile.mkdtemp(prefix="ep4_"))
    res = run_torchrun(4, demo_args(run_dir, steps), run_dir / "logs", timeout_s=300)
    if not res.ok:
        raise SystemExit("the four-process run failed:\n" + res.report())
    dest = HERE / "ep4_run"
    dest.mkdir(exist_ok=True)
    for name in ("log.jsonl", "history.json"):
        shutil.copy(run_dir / name, dest / name)
    print("ep4_run:", res.report().splitlines()[-1], flush=True)
    shutil.rmtree(run_dir)


if __name__ == "__main__":
    main()
