"""Record notebook 13's equal-FLOPs comparison (§6): nano-DeepSeek, nano-V4, nano-V4.1 and nano-V4.1 without its
Engram layer, trained with the capstone's recipe (course_lib.nano.train) for a few hundred steps, three seeds each;
writes assets/v41/runs.json.

    nice -n 10 python assets/v41/make_runs.py                    # 3 seeds x 200 steps, one CPU thread
    nice -n 10 python assets/v41/make_runs.py --models "nano-V4.1 without Engram" --merge   # add one model's runs
    python assets/v41/make_runs.py --steps 20 --seeds 0 --out quick_check.json    # a quick check

The three configurations come from course_lib.nano.v41_model.equal_flops_configs (equal training FLOPs per token,
counted by v41_model.train_flops_per_token). Every arm with seed s starts from torch.manual_seed(s) and draws the
same batches (nano.train's batch_fn). Stored per run: the language-model loss and the total loss per step, the
validation loss every eval_every steps, and CPU seconds; per model: its configuration, FLOPs, parameters and cache.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent))

from course_lib.nano import train as nano_train  # noqa: E402
from course_lib.nano import v41_model  # noqa: E402
from course_lib.toys.corpus import Corpus  # noqa: E402

SETTINGS = dict(steps=200, batch_size=16, seq_len=64, lr=3e-3, warmup=10, eval_every=25, eval_batches=4,
                seeds=[0, 1, 2])


def describe(cfg) -> dict:
    """What the notebook's table shows for one model, computed from its configuration."""
    with torch.device("meta"):
        model = v41_model.build_any(cfg)
    return {"type": type(cfg).__name__, "config": cfg.to_dict(),
            "flops_per_token": v41_model.train_flops_per_token(cfg, SETTINGS["seq_len"]),
            "params_total": v41_model.total_params(cfg), "params_activated": v41_model.activated_params(model),
            "kv_bytes_per_token": v41_model.kv_cache_bytes_per_token(cfg, SETTINGS["seq_len"])}


def run(cfg, seed: int, corpus) -> dict:
    s = SETTINGS
    torch.manual_seed(seed)
    model = v41_model.build_any(cfg)
    c0 = time.process_time()
    _, hist = nano_train.train(cfg, s["steps"], corpus=corpus, batch_size=s["batch_size"], seq_len=s["seq_len"],
                               lr=s["lr"], warmup=s["warmup"], seed=seed, eval_every=s["eval_every"],
                               eval_batches=s["eval_batches"], progress=False, model=model)
    return {"main_loss": hist["main_loss"], "loss": hist["loss"], "val_step": hist["val_step"],
            "val_loss": hist["val_loss"], "cpu_seconds": time.process_time() - c0}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=SETTINGS["steps"])
    p.add_argument("--seeds", type=int, nargs="+", default=SETTINGS["seeds"])
    p.add_argument("--out", default=str(HERE / "runs.json"))
    p.add_argument("--models", nargs="+", default=None, help="only these models (names of equal_flops_configs)")
    p.add_argument("--merge", action="store_true", help="add the runs to the existing --out file (same settings)")
    a = p.parse_args(argv)
    SETTINGS.update(steps=a.steps, seeds=a.seeds)
    torch.set_num_threads(1)
    corpus = Corpus()
    cfgs = v41_model.equal_flops_configs()
    unknown = set(a.models or ()) - set(cfgs)
    if unknown:
        p.error(f"--models: unknown {sorted(unknown)}; choose from {list(cfgs)}")
    cfgs = {k: v for k, v in cfgs.items() if a.models is None or k in a.models}
    out = {"settings": dict(SETTINGS), "torch": torch.__version__, "models": {}, "runs": {}}
    if a.merge:
        out = json.loads(Path(a.out).read_text())
        if out["settings"] != SETTINGS or out["torch"] != torch.__version__:
            p.error(f"--merge: {a.out} was recorded with other settings or another torch version")
    out["models"].update({name: describe(cfg) for name, cfg in cfgs.items()})
    out["runs"].update({name: {} for name in cfgs})
    for seed in a.seeds:
        for name, cfg in cfgs.items():
            rec = run(cfg, seed, corpus)
            out["runs"][name][str(seed)] = rec
            print(f"{name:>14} seed {seed}: val loss {rec['val_loss'][-1]:.4f} after {a.steps} steps "
                  f"({rec['cpu_seconds']:.0f} s CPU)", flush=True)
    Path(a.out).write_text(json.dumps(out))
    print("wrote", a.out)


if __name__ == "__main__":
    main()
