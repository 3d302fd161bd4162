"""Run a torchrun job from a notebook: a time limit, every process ended on failure or interrupt, each rank's own error.

    result = run_torchrun(4, ["-m", "course_lib.nano.train_ep", "--ep", "4", ...], log_dir, timeout_s=180,
                          progress=(run_dir / "log.jsonl", steps))
    print(result.report())

torchrun starts one process per rank, each in a session of its own, so ending torchrun alone can leave ranks
running. This launcher
* writes torchrun's own output to ``log_dir/torchrun.txt`` (a file, never a pipe that fills up and blocks the run)
  and each rank's stdout and stderr to files of their own (torchrun's ``--log-dir`` and ``--redirects 3``);
* remembers every process torchrun started while the job runs; on a failure, a timeout or an interrupt (the stop
  button in Jupyter) it asks torchrun to stop, waits a few seconds, then kills whatever is left;
* reports each failed rank's own traceback (its first and last lines) instead of torchrun's summary.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class LaunchResult:
    """What happened to one torchrun job. ``ok``: every rank finished with exit code 0 within the time limit."""
    returncode: int | None
    timed_out: bool
    log_dir: Path
    rank_errors: dict = field(default_factory=dict)      # rank -> the shortened traceback from its stderr
    stdout: dict = field(default_factory=dict)           # rank -> its stdout

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out

    def report(self) -> str:
        """A few lines for the learner: what rank 0 printed, or why the job did not finish."""
        if self.ok:
            return self.stdout.get(0, "").strip() or "the run finished"
        head = ("the run did not finish within its time limit and was stopped" if self.timed_out
                else f"the run failed (torchrun exit code {self.returncode})")
        parts = [head]
        for rank in sorted(self.rank_errors):
            parts.append(f"--- rank {rank}:\n{self.rank_errors[rank]}")
        if not self.rank_errors and self.timed_out:
            parts.append("no rank wrote an error before it was stopped (one or more ranks hang)")
        elif not self.rank_errors:
            tail = _tail(self.log_dir / "torchrun.txt", 15)
            parts.append("no rank wrote an error; torchrun's last lines:\n" + tail if tail else
                         "no rank wrote an error and torchrun printed nothing")
        return "\n".join(parts)


def run_torchrun(nproc: int, args: list, log_dir, timeout_s: float = 180.0, progress=None, env=None,
                 poll_s: float = 0.5, on_timeout=None) -> LaunchResult:
    """Run ``torchrun --standalone --nproc-per-node nproc ARGS`` and wait at most ``timeout_s`` seconds.

    progress: optional (path, total): a tqdm bar counts the lines of that file (e.g. a JSON log, one line per step).
    env: the environment of the ranks (default: this process's). on_timeout: optional function called with the
    process ids of the job (torchrun's first) before they are ended, e.g. to record where they hang. Raises
    KeyboardInterrupt after cleaning up when interrupted."""
    if nproc < 1:
        raise ValueError(f"nproc must be >= 1, got {nproc}")
    if timeout_s <= 0:
        raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
    log_dir = Path(log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
           "--log-dir", str(log_dir / "ranks"), "--redirects", "3", *map(str, args)]
    bar = None
    if progress is not None:
        from tqdm.auto import tqdm
        bar = tqdm(total=progress[1], desc=f"{nproc}-process run")
    seen: dict = {}
    timed_out = False
    with open(log_dir / "torchrun.txt", "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        try:
            while proc.poll() is None:
                _remember_children(proc.pid, seen)
                if time.monotonic() > deadline:
                    timed_out = True
                    break
                if bar is not None and _count_lines(progress[0]) > bar.n:
                    bar.update(_count_lines(progress[0]) - bar.n)
                time.sleep(poll_s)
        except BaseException:                                   # KeyboardInterrupt included: end every rank first
            _end_all(proc, seen)
            raise
        finally:
            if bar is not None:
                bar.update(max(0, _count_lines(progress[0]) - bar.n))
                bar.close()
        if timed_out and on_timeout is not None:
            on_timeout([proc.pid] + sorted(seen))
        if timed_out or proc.returncode != 0:
            _end_all(proc, seen)
    result = LaunchResult(proc.returncode, timed_out, log_dir)
    for rank, (stdout, stderr) in _rank_logs(log_dir / "ranks").items():
        result.stdout[rank] = stdout
        if not result.ok:
            err = shorten_traceback(stderr)
            if err:
                result.rank_errors[rank] = err
    return result


def shorten_traceback(text: str, first: int = 2, last: int = 6) -> str:
    """The first ``first`` and the last ``last`` lines of the last traceback in ``text`` (its header, the call that
    started it, the frames nearest the error and the error itself). Without a traceback (a rank that printed its
    own diagnosis and left), its last ``last`` non-empty lines; '' for an empty text."""
    lines = [re.sub(r"^\[rank\d+\]:\s?", "", line) for line in text.rstrip().splitlines() if line.strip()]
    starts = [i for i, line in enumerate(lines) if line.startswith("Traceback (most recent call last)")]
    if not starts:
        return "\n".join(lines[-last:])
    tb = lines[starts[-1]:]
    if len(tb) <= first + last:
        return "\n".join(tb)
    return "\n".join(tb[:first] + ["  ..."] + tb[-last:])


def _count_lines(path) -> int:
    try:
        with open(path) as f:
            return sum(1 for _ in f)
    except FileNotFoundError:
        return 0


def _tail(path: Path, n: int) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").rstrip().splitlines()[-n:])
    except FileNotFoundError:
        return ""


def _rank_logs(root: Path) -> dict:
    """rank -> (stdout, stderr) from torchrun's log folder (``root/<run id>/attempt_<k>/<rank>/std{out,err}.log``,
    the last attempt wins)."""
    found = {}
    for f in sorted(root.glob("*/attempt_*/*/stderr.log")):
        if f.parent.name.isdigit():
            out = f.parent / "stdout.log"
            found[int(f.parent.name)] = (out.read_text(errors="replace") if out.exists() else "",
                                         f.read_text(errors="replace"))
    return found


def _remember_children(pid: int, seen: dict) -> None:
    """Add every descendant of ``pid`` to ``seen`` (pid -> psutil.Process): the ranks live in sessions of their own."""
    try:
        import psutil
        for child in psutil.Process(pid).children(recursive=True):
            seen.setdefault(child.pid, child)
    except Exception:                                           # the process just ended, or psutil is missing
        pass


def _end_all(proc: subprocess.Popen, seen: dict, grace_s: float = 5.0) -> None:
    """Ask torchrun to stop its ranks (SIGTERM), wait ``grace_s`` seconds, then kill torchrun and every process it
    started that is still alive."""
    _remember_children(proc.pid, seen)
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            pass
    for child in seen.values():
        try:
            if child.is_running():
                child.kill()
        except Exception:
            pass
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            proc.kill()
        proc.wait()
