"""Train the DSpark draft that notebook 13 loads: course_lib.dspark on the shipped nano-tiny model (assets/nano).

    python assets/v41/make_dspark_draft.py [--steps 400]

Writes assets/v41/dspark_tiny.pt (the draft's weights, float32) and assets/v41/dspark_tiny.json (the settings, the
training loss every step and the wall and CPU seconds of the run). The target model stays frozen (DSpark paper §3.3).
Batch n is drawn from a generator seeded with n, and the draft starts from torch.manual_seed(0), so a rerun on the
same torch version gives the same weights.
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent


def main(argv=None) -> int:
    from course_lib import asset_path
    from course_lib.dspark import DSparkConfig, train_dspark
    from course_lib.nano import export as nano_export
    from course_lib.toys.corpus import Corpus

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--block", type=int, default=4)
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    target = nano_export.from_transformers(asset_path("nano", "nano_tiny"))
    cfg = DSparkConfig(block_size=a.block)
    t0, c0 = time.perf_counter(), time.process_time()
    draft, hist = train_dspark(target, Corpus(), cfg, steps=a.steps, batch=a.batch, seq_len=a.seq_len, progress=True)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    torch.save(draft.state_dict(), HERE / "dspark_tiny.pt")
    meta = {"target": "assets/nano/nano_tiny", "config": asdict(cfg), "steps": a.steps, "batch": a.batch,
            "seq_len": a.seq_len, "n_anchors": 8, "lr": 3e-3, "seed": 0, "torch": torch.__version__,
            "wall_seconds": round(wall, 1), "cpu_seconds": round(cpu, 1),
            "loss": [round(v, 4) for v in hist["loss"]], "accept": [round(v, 4) for v in hist["accept"]]}
    (HERE / "dspark_tiny.json").write_text(json.dumps(meta, indent=1) + "\n")
    print(f"{a.steps} steps in {wall:.0f} s ({cpu:.0f} s CPU); final loss {sum(hist['loss'][-10:]) / 10:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
