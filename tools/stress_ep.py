"""Stress check of notebook 11's four-process run: its exact command, N times in a row, optionally with a process
that keeps one CPU core busy and without network (a loopback-only namespace, as CI runs the notebooks).

    python tools/stress_ep.py --runs 20 --burn                 # as is
    unshare -n sh -c 'ip link set lo up && python tools/stress_ep.py --runs 20 --burn'   # no network (root)

Each run goes through course_lib.kit.launch (time limit --limit seconds; a run over it counts as a hang and every process
of it is ended). Prints one line per run (result and seconds) and a summary; exits 1 on any failure or hang.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from course_lib.kit.launch import run_torchrun  # noqa: E402
from course_lib.nano.train_ep import demo_args  # noqa: E402

STEPS = 6


def _dump_stacks(pids: list, path: Path) -> None:
    """Where each process of a hung run is: py-spy's dump of its Python and native stacks, where py-spy is installed."""
    import subprocess
    if shutil.which("py-spy") is None:
        return
    with open(path, "w") as f:
        for pid in pids:
            f.write(f"=== pid {pid}\n")
            f.flush()
            subprocess.run(["py-spy", "dump", "--native", "--pid", str(pid)], stdout=f, stderr=subprocess.STDOUT,
                           timeout=60)


def _burn() -> None:
    while True:
        pass


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--burn", action="store_true", help="keep one CPU core busy meanwhile")
    p.add_argument("--limit", type=float, default=120.0, help="seconds before a run counts as hung")
    a = p.parse_args(argv)
    if a.runs < 1:
        p.error(f"--runs must be >= 1, got {a.runs}")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(x for x in (str(ROOT), os.environ.get("PYTHONPATH")) if x)}
    burner = None
    if a.burn:
        burner = mp.Process(target=_burn, daemon=True)
        burner.start()
    results = []
    try:
        for i in range(1, a.runs + 1):
            run_dir = Path(tempfile.mkdtemp(prefix="ep4_stress_"))
            t0 = time.monotonic()
            res = run_torchrun(4, demo_args(run_dir, STEPS), run_dir / "logs", timeout_s=a.limit, env=env,
                               on_timeout=lambda pids, d=run_dir: _dump_stacks(pids, d / "stacks.txt"))
            seconds = time.monotonic() - t0
            kind = "ok" if res.ok else ("HUNG" if res.timed_out else "FAILED")
            results.append((kind, seconds))
            print(f"run {i:2d}: {kind:6s} {seconds:5.1f} s", flush=True)
            if not res.ok:
                print("  " + res.report().replace("\n", "\n  "), flush=True)
                print(f"  kept for inspection: {run_dir}", flush=True)
            else:
                shutil.rmtree(run_dir, ignore_errors=True)
    finally:
        if burner is not None:
            burner.terminate()
    ok = [s for k, s in results if k == "ok"]
    print(f"{len(ok)} finished, {sum(k == 'FAILED' for k, _ in results)} failed, "
          f"{sum(k == 'HUNG' for k, _ in results)} hung; finished runs took "
          f"{min(ok):.1f}-{max(ok):.1f} s" if ok else "no run finished", flush=True)
    return 0 if len(ok) == len(results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
