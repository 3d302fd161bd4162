"""Paths and switches shared by the end-to-end checks."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "artifacts" / "e2e"          # git-ignored: screenshots, recorded outputs, server logs
NBVAL_OUTPUTS = Path(os.environ.get("COURSE_NB_OUTPUTS", ROOT / "artifacts" / "nbval_outputs"))
BROWSER_OUTPUTS = ARTIFACTS / "browser_outputs"


def all_notebooks() -> list[Path]:
    """Every notebook of the course, solutions included, in the order a learner meets them (new ones are picked up)."""
    nbs = sorted((ROOT / "notebooks").glob("[0-9]*.ipynb")) + sorted((ROOT / "notebooks" / "solutions").glob("*.ipynb"))
    only = os.environ.get("COURSE_E2E_ONLY")           # e.g. COURSE_E2E_ONLY=03 while working on notebook 03
    return [p for p in nbs if not only or any(k in p.name for k in only.split(","))]


def lesson_notebooks() -> list[Path]:
    """The lesson notebooks without the solutions (each solution notebook runs top to bottom under nbval in
    `make test`; they draw no widget and take a few seconds, so the browser pass leaves them out to keep CI short)."""
    return [p for p in all_notebooks() if "solutions" not in p.parts]


def rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def record_name(notebook: str) -> str:
    """File name of a notebook's recorded outputs (the root conftest.py writes nbval's under the same name)."""
    return notebook.replace("/", "__") + ".json"


def e2e_enabled() -> bool:
    return os.environ.get("COURSE_E2E") == "1"


needs_e2e = pytest.mark.skipif(not e2e_enabled(), reason="end-to-end check: run `make check-e2e`")


def notebook_client(nb, **kwargs):
    """An nbclient.NotebookClient whose waits for kernel messages poll in short steps.

    Why: with widgets in play, the asynchronous client's `get_msg(timeout=T)` sometimes returns a reply that has
    already arrived only when T runs out (jupyter/nbclient#312). Our cell timeout is 600 s, so a notebook that runs in
    40 s alone took 10 minutes in two CI runs, with the kernel idle and the client waiting. Polling every half second
    up to the same deadline picks such a reply up at the next step; the timeouts themselves are unchanged."""
    import queue
    import time

    from nbclient import NotebookClient

    def poll_in_steps(channel, step: float = 0.5):
        wait_once = channel.get_msg

        async def get_msg(timeout=None):
            deadline = None if timeout is None else time.monotonic() + timeout
            while True:
                left = step if deadline is None else max(0.0, min(step, deadline - time.monotonic()))
                try:
                    return await wait_once(timeout=left)
                except queue.Empty:
                    if deadline is not None and time.monotonic() >= deadline:
                        raise

        channel.get_msg = get_msg

    class ShortPollClient(NotebookClient):
        async def async_start_new_kernel_client(self, **kw):
            started = await super().async_start_new_kernel_client(**kw)
            for channel in (self.kc.shell_channel, self.kc.iopub_channel):
                poll_in_steps(channel)
            return started

    return ShortPollClient(nb, **kwargs)
