"""Start JupyterLab on a free localhost port with a token, in a scratch copy of the notebooks, and always stop it.

The server and its kernels are the course's own environment (.venv: JupyterLab 4 with the ipywidgets 8 front end and
kernel), exactly what `make lab` opens. (An ipywidgets-7 kernel cannot be tested here: JupyterLab 4's widget manager
only speaks the ipywidgets 8 protocol, so 7.x widgets show "Error displaying widget"; Colab has its own front end.)
The scratch copy keeps the repository clean (JupyterLab writes checkpoints; nothing is saved back). Nothing is
fetched from the network: news, update checks and the extension manager's PyPI look-ups are off.
"""
from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

from e2ecommon import ROOT

LAB_PYTHON = Path(os.environ.get("COURSE_LAB_PYTHON", ROOT / ".venv" / "bin" / "python"))
START_TIMEOUT_S = 180


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1))


class LabServer:
    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.root = workdir / "root"
        self.port = free_port()
        self.token = secrets.token_hex(16)
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / "jupyterlab.log"
        self.proc: subprocess.Popen | None = None
        self._prepare()

    def _prepare(self) -> None:
        # The scratch root: notebooks copied, course_lib and assets linked (the setup cell looks for ../course_lib).
        (self.root / "notebooks").mkdir(parents=True)
        for name in ("course_lib", "assets"):
            (self.root / name).symlink_to(ROOT / name, target_is_directory=True)
        settings = self.workdir / "settings"
        # Every cell in the DOM (no virtual scrolling), so figures and widgets of the whole notebook can be checked;
        # no autosave, no news or update checks (offline, and a scratch copy anyway).
        _write_json(settings / "@jupyterlab" / "notebook-extension" / "tracker.jupyterlab-settings",
                    {"windowingMode": "none"})
        _write_json(settings / "@jupyterlab" / "docmanager-extension" / "plugin.jupyterlab-settings",
                    {"autosave": False})
        _write_json(settings / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings",
                    {"fetchNews": "false", "checkForUpdates": False})

    def add_notebook(self, source: Path, name: str) -> str:
        """Copy a notebook into the scratch root; returns its path relative to the server root."""
        target = self.root / "notebooks" / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(source.read_bytes())
        return target.relative_to(self.root).as_posix()

    def env(self) -> dict:
        env = {k: v for k, v in os.environ.items()
               if k not in ("COURSE_WIDGETS", "COURSE_NETBLOCK", "PYTHONPATH", "MPLBACKEND", "JUPYTER_CONFIG_DIR")}
        env.update(JUPYTERLAB_SETTINGS_DIR=str(self.workdir / "settings"),
                   JUPYTERLAB_WORKSPACES_DIR=str(self.workdir / "workspaces"),
                   JUPYTER_RUNTIME_DIR=str(self.workdir / "runtime"),
                   PATH=f"{LAB_PYTHON.parent}{os.pathsep}{os.environ.get('PATH', '')}",
                   PYTHONHASHSEED="0")        # as under nbval (root conftest.py): same printed set orders
        return env

    def start(self) -> None:
        if not LAB_PYTHON.exists():
            raise RuntimeError(f"{LAB_PYTHON} is missing: run `make lab` or `make test` once to create .venv")
        cmd = [str(LAB_PYTHON), "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1",
               f"--ServerApp.port={self.port}", "--ServerApp.port_retries=0", f"--IdentityProvider.token={self.token}",
               f"--ServerApp.root_dir={self.root}", "--LabApp.expose_app_in_browser=True",
               "--LabApp.news_url=None", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
               "--LabApp.extension_manager=readonly"]
        if os.geteuid() == 0:              # CI machines and containers run as root
            cmd.append("--allow-root")
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(cmd, cwd=self.root, env=self.env(), stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        deadline = time.time() + START_TIMEOUT_S
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"JupyterLab exited with code {self.proc.returncode} at start:\n{self.log_tail()}")
            try:
                self.api("GET", "/api/status")
                return
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.5)
        raise RuntimeError(f"JupyterLab did not answer on {self.url} within {START_TIMEOUT_S} s:\n{self.log_tail()}")

    def api(self, method: str, path: str, timeout: float = 10):
        req = urllib.request.Request(self.url + path, method=method,
                                     headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            body = resp.read()
        return json.loads(body) if body else None

    def lab_url(self, notebook: str, workspace: str) -> str:
        # A workspace of its own per notebook: JupyterLab restores no tabs (and starts no kernels) of earlier ones.
        return f"{self.url}/lab/workspaces/{workspace}/tree/{notebook}?token={self.token}"

    def shutdown_kernels(self) -> None:
        for session in self.api("GET", "/api/sessions") or []:
            self.api("DELETE", f"/api/sessions/{session['id']}", timeout=30)

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:                                    # shuts the kernels down too (they run in sessions of their own)
                self.api("POST", "/api/shutdown", timeout=10)
                self.proc.wait(timeout=30)
            except Exception:
                pass
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self._log.close()
        self.proc = None
