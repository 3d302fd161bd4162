"""Run every lesson notebook once on this machine, each on a fresh kernel, and print one row per notebook:
wall time, whether the kernel used the GPU, and the kernel's peak CUDA memory.

    python tools/device_table.py                      # all lesson notebooks, two at a time
    python tools/device_table.py --workers 1 notebooks/08_deep_training.ipynb

Made for checking the CUDA path on a machine with one NVIDIA GPU (on a CPU-only machine every row says "no GPU").
Peak CUDA memory is what the kernel's own PyTorch allocator saw (torch.cuda.max_memory_allocated); processes a
notebook starts (the expert-parallel ranks of 11) are not counted. Needs nbclient and ipykernel.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROBE = """\
import json as _json, torch as _torch
_probe = {"torch": _torch.__version__, "cuda_available": _torch.cuda.is_available(),
          "gpu_used": bool(_torch.cuda.is_available() and _torch.cuda.is_initialized())}
if _probe["gpu_used"]:
    _probe["peak_cuda_mb"] = round(_torch.cuda.max_memory_allocated() / 2**20, 1)
    _probe["gpu"] = _torch.cuda.get_device_name(0)
print("DEVICE_PROBE " + _json.dumps(_probe))
"""


def run_one(path: Path, timeout: int, save_dir: Path | None) -> dict:
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    nb = nbformat.read(path, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell(PROBE))
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}})
    row = {"notebook": path.name, "ok": True}
    start = time.perf_counter()
    try:
        client.execute()
    except CellExecutionError as err:
        row["ok"] = False
        lines = [ln for ln in str(err).strip().splitlines() if ln.strip()]
        row["error"] = lines[-1][:400] if lines else type(err).__name__
    except Exception as err:  # a kernel that died or a cell that timed out
        row["ok"] = False
        row["error"] = f"{type(err).__name__}: {str(err).strip().splitlines()[-1][:400] if str(err).strip() else ''}"
    row["seconds"] = round(time.perf_counter() - start, 1)
    for out in nb.cells[-1].get("outputs", []):
        text = out.get("text", "")
        if "DEVICE_PROBE " in text:
            row.update(json.loads(text.split("DEVICE_PROBE ", 1)[1].splitlines()[0]))
    if save_dir is not None:
        save_dir.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, save_dir / path.name)
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("notebooks", nargs="*", type=Path)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--timeout", type=int, default=300, help="seconds one cell may take")
    ap.add_argument("--json", type=Path, help="also write the rows here")
    ap.add_argument("--save", type=Path, help="write the executed notebooks into this folder")
    args = ap.parse_args(argv)
    paths = args.notebooks or sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    os.environ.setdefault("COURSE_WIDGETS", "static")
    os.environ.setdefault("PYTHONHASHSEED", "0")
    rows = []
    with ThreadPoolExecutor(max_workers=max(1, args.workers)) as pool:
        futures = [pool.submit(run_one, p, args.timeout, args.save) for p in paths]
        for fut in futures:
            row = fut.result()
            rows.append(row)
            peak = f"{row['peak_cuda_mb']:.0f} MB" if "peak_cuda_mb" in row else "-"
            status = "ok" if row["ok"] else "FAILED: " + row.get("error", "")
            print(f"{row['notebook']:<32} {row['seconds']:>7.1f} s  GPU used: {'yes' if row.get('gpu_used') else 'no ':<3}"
                  f"  peak CUDA {peak:>8}  {status}", flush=True)
            if args.json:
                args.json.write_text(json.dumps(rows, indent=1))
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
