"""Print the per-notebook wall time and peak kernel memory recorded during the test run (see conftest.py)."""
import json
import sys
from pathlib import Path


def main(path: str) -> int:
    p = Path(path)
    if not p.exists():
        print(f"no notebook report at {path} (did the notebook tests run?)")
        return 0
    data = json.loads(p.read_text())
    rows = sorted(data.items())
    print("\nNotebook timings (measured in this run; wall time includes kernel start-up)")
    print(f"{'notebook':<52} {'cells':>5} {'wall s':>8} {'peak MB':>8}  status")
    print("-" * 84)
    for name, r in rows:
        peak = f"{r['peak_mb']:.0f}" if r.get("peak_mb") else "n/a"
        print(f"{name:<52} {r['cells']:>5} {r['seconds']:>8.1f} {peak:>8}  {'FAILED' if r['failed'] else 'ok'}")
    total = sum(r["seconds"] for _, r in rows)
    print("-" * 84)
    print(f"{'total':<52} {'':>5} {total:>8.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "artifacts/notebook_report.json"))
