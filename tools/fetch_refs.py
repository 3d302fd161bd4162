"""Fetch the reference code some tests compare with, where it cannot be installed as a package.

    python tools/fetch_refs.py        # into build/refs/ (ignored by git); `make` runs it once with the install

NVIDIA NeMo AutoModel's port of DeepSeek's released V4.1 and DSpark code (``nemo_automodel.components.models.
deepseek_v41``, ``nemo_automodel.components.speculative.dspark``) is plain PyTorch, but the package pins an older
transformers than the course's ``ref`` extra and pulls GPU-only dependencies. So its wheel is downloaded from PyPI
without dependencies and unpacked here; conftest.py puts the folder on ``sys.path``, and the tests that compare with
it (tests/test_dspark.py, test_csa2.py, test_nano_v41.py) skip where it is missing (no network, for example).
"""
from __future__ import annotations

import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REFS = ROOT / "build" / "refs"
WHEELS = {"nemo-automodel": "0.7.0"}


def fetch(name: str, version: str) -> Path:
    dest = REFS / f"{name}-{version}"
    if dest.is_dir():
        return dest
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", f"{name}=={version}", "-d", tmp],
                       check=True, timeout=300)
        wheel = next(Path(tmp).glob("*.whl"))
        part = dest.with_name(dest.name + ".part")
        with zipfile.ZipFile(wheel) as z:
            z.extractall(part)
        part.rename(dest)
    return dest


def main() -> int:
    failed = []
    for name, version in WHEELS.items():
        try:
            print(f"reference code: {fetch(name, version).relative_to(ROOT)}")
        except (subprocess.SubprocessError, StopIteration, OSError) as err:
            failed.append(name)
            print(f"reference code {name}=={version} not fetched ({type(err).__name__}): the tests that compare with "
                  "it will skip", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
