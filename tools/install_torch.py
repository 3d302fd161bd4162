"""Install PyTorch into the current environment without pulling a multi-GB CUDA build onto a machine with no GPU.

- torch already installed: leave it alone (the learner's choice, e.g. a CUDA or ROCm build).
- an NVIDIA GPU is present: `pip install torch` (PyPI's default build, with CUDA on Linux).
- no NVIDIA GPU on Linux: a CPU-only build. First the pinned CPU wheel where pip can find it (a wheel in the machine's
  pip find-links, as on the course's CI machines), else PyTorch's CPU wheel index.
- macOS and Windows: PyPI's default build is already CPU (and MPS) only.
"""
from __future__ import annotations

import importlib.util
import os
import platform
import shutil
import subprocess
import sys

CPU_PIN = "torch==2.13.0+cpu"          # the CPU build our CI machines carry locally
CPU_INDEX = "https://download.pytorch.org/whl/cpu"


def pip(*args: str) -> int:
    cmd = [sys.executable, "-m", "pip", "install", "-q", *args]
    print("+", " ".join(cmd), flush=True)
    return subprocess.call(cmd)


def has_nvidia_gpu() -> bool:
    return shutil.which("nvidia-smi") is not None or os.path.exists("/proc/driver/nvidia/version")


def main() -> int:
    if importlib.util.find_spec("torch") is not None:
        import torch
        print(f"torch {torch.__version__} already installed: leaving it as it is")
        return 0
    if os.environ.get("COURSE_TORCH_SPEC"):            # escape hatch: COURSE_TORCH_SPEC="torch==2.5.1"
        return pip(os.environ["COURSE_TORCH_SPEC"])
    if has_nvidia_gpu() or platform.system() != "Linux":
        return pip("torch>=2.2")
    print("no NVIDIA GPU found: installing a CPU-only build of torch")
    if pip(CPU_PIN) == 0:                              # found locally (find-links) or on a configured index
        return 0
    return pip("torch>=2.2", "--index-url", CPU_INDEX)


if __name__ == "__main__":
    sys.exit(main())
