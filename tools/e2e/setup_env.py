"""Prepare what `make check-e2e` needs, once; later runs reuse it.

1. Debian's Chromium at /usr/bin/chromium (apt-get, as root; otherwise it says what to install). No browser is
   downloaded from anywhere else: Playwright drives this Chromium (`executable_path`), `playwright install` is never run.
2. A second environment, E2E_VENV (default .venv/e2e), shaped like Google Colab: ipywidgets==7.7.1 (what Colab
   ships), the course's runtime dependencies read from pyproject.toml (not the `ref` extra: notebooks must not need
   it), ipykernel, and the test tools (pytest, nbclient, Playwright). The course itself is NOT installed there, as on Colab before the first cell.
   torch comes from tools/install_torch.py (the CPU build; a bare `pip install torch` would fetch CUDA).

    python tools/e2e/setup_env.py            # prints the environment's python path last
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
VENV = Path(os.environ.get("E2E_VENV", ROOT / ".venv" / "e2e"))
CHROMIUM = "/usr/bin/chromium"
COLAB_IPYWIDGETS = "ipywidgets==7.7.1"
TEST_TOOLS = ["ipykernel>=6", "pytest>=7.4", "nbclient>=0.8", "nbformat>=5.9", "playwright>=1.40"]


def run(*cmd: str) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def ensure_chromium() -> None:
    if os.path.exists(CHROMIUM):
        return
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        sys.exit(f"the browser test needs Debian's chromium at {CHROMIUM}: run `sudo apt-get install chromium`")
    run("apt-get", "update", "-qq")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    print("+ apt-get install -y chromium", flush=True)
    subprocess.run(["apt-get", "install", "-y", "-qq", "chromium"], check=True, env=env, stdout=subprocess.DEVNULL)


def course_requirements() -> list[str]:
    """[project] dependencies from pyproject.toml (the one place they are listed)."""
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")

    def quoted_list(pattern: str) -> list[str]:
        m = re.search(pattern, text, re.S | re.M)
        if not m:
            raise ValueError(f"pyproject.toml: no match for {pattern!r}")
        return re.findall(r'"([^"]+)"', m.group(1))

    deps = quoted_list(r"^dependencies\s*=\s*\[(.*?)\]")
    return [d for d in deps if not re.match(r"(torch|ipywidgets)\b", d)]   # torch: install_torch.py; ipywidgets: pinned


def main() -> int:
    start = time.time()
    ensure_chromium()
    wanted = course_requirements() + [COLAB_IPYWIDGETS] + TEST_TOOLS
    key = hashlib.sha256("\n".join(wanted).encode()).hexdigest()
    stamp = VENV / ".e2e-installed"
    python = VENV / "bin" / "python"
    if not (stamp.exists() and stamp.read_text() == key and python.exists()):
        if not python.exists():
            run(sys.executable, "-m", "venv", str(VENV))
        run(str(python), str(ROOT / "tools" / "install_torch.py"))
        run(str(python), "-m", "pip", "install", "-q", *wanted)
        # Colab's state before its first cell: the course is not installed (a previous Colab smoke run may have).
        subprocess.run([str(python), "-m", "pip", "uninstall", "-q", "-y", "inside-deepseek"],
                       stderr=subprocess.DEVNULL)
        stamp.write_text(key)
    print(f"e2e environment ready in {time.time() - start:.0f} s", flush=True)
    print(python)
    return 0


if __name__ == "__main__":
    sys.exit(main())
