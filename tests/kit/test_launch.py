"""course_lib.kit.launch: torchrun from a notebook with a time limit, every rank ended, each failed rank's own error.

Each test starts torchrun with two ranks of a small script (a few seconds each) that succeeds, fails in one rank,
or hangs in one rank, and checks what the learner is shown and that no process of the job is left running."""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

from course_lib.kit.launch import run_torchrun, shorten_traceback

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = r'''
import json, os, sys, time
from pathlib import Path
rank, mode = int(os.environ["RANK"]), sys.argv[2]
Path(sys.argv[1], f"pid{rank}").write_text(str(os.getpid()))
print(f"rank {rank} started", flush=True)
if mode == "fail" and rank == 1:
    def load_shard(i):
        raise ValueError(f"shard {i} is missing")
    load_shard(7)
if mode == "hang" and rank == 1:
    time.sleep(600)
if mode == "chatty":
    for i in range(20000):                  # ~1 MB on stdout: more than a pipe holds
        print("x" * 50)
print(f"rank {rank} done", flush=True)
'''


def _env():
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}


def _run(tmp_path, mode, timeout_s=120):
    script = tmp_path / "job.py"
    script.write_text(SCRIPT)
    return run_torchrun(2, [str(script), str(tmp_path), mode], tmp_path / "logs", timeout_s=timeout_s, env=_env())


def _alive(tmp_path) -> list:
    pids = [int(f.read_text()) for f in tmp_path.glob("pid*")]
    alive = []
    for pid in pids:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            continue
        stat = Path(f"/proc/{pid}/stat")
        if stat.exists() and stat.read_text().split(")")[-1].split()[0] == "Z":   # a zombie has ended
            continue
        alive.append(pid)
    return alive


def test_a_good_run_reports_rank_0s_last_line(tmp_path):
    res = _run(tmp_path, "ok")
    assert res.ok and res.returncode == 0 and not res.timed_out
    assert res.report() == "rank 0 started\nrank 0 done"
    assert res.rank_errors == {}


def test_a_failed_rank_shows_its_own_traceback(tmp_path):
    res = _run(tmp_path, "fail")
    assert not res.ok and res.returncode != 0
    assert list(res.rank_errors) == [1]
    err = res.rank_errors[1]
    assert err.splitlines()[0] == "Traceback (most recent call last):"
    assert err.splitlines()[-1] == "ValueError: shard 7 is missing"
    report = res.report()
    assert report.startswith("the run failed (torchrun exit code 1)")
    assert "--- rank 1:" in report and "ValueError: shard 7 is missing" in report
    assert "error_file" not in report                       # none of torchrun's own summary
    assert _alive(tmp_path) == []


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc to tell live processes from zombies")
def test_a_hung_rank_is_stopped_at_the_time_limit_with_every_process(tmp_path):
    t0 = time.monotonic()
    res = _run(tmp_path, "hang", timeout_s=15)
    assert res.timed_out and not res.ok
    assert time.monotonic() - t0 < 15 + 20                  # the limit plus the grace period and start-up
    assert res.report().startswith("the run did not finish within its time limit and was stopped")
    assert len(list(tmp_path.glob("pid*"))) == 2
    assert _alive(tmp_path) == []                            # the sleeping rank was killed too


def test_output_larger_than_a_pipe_does_not_block(tmp_path):
    res = _run(tmp_path, "chatty", timeout_s=60)
    assert res.ok, res.report()
    assert res.stdout[1].count("x" * 50) == 20000


def test_shorten_traceback_keeps_the_head_and_the_error():
    lines = ["[rank0]: Traceback (most recent call last):"] + \
        [f'[rank0]:   File "f{i}.py", line {i}, in g{i}\n[rank0]:     g{i + 1}()' for i in range(10)] + \
        ["[rank0]: RuntimeError: boom"]
    short = shorten_traceback("warning: something\n" + "\n".join(lines))
    assert short.splitlines()[0] == "Traceback (most recent call last):"
    assert short.splitlines()[-1] == "RuntimeError: boom"
    assert "  ..." in short and len(short.splitlines()) == 9
    assert shorten_traceback("rank 1: a collective failed or timed out in step 3: rank 2 died\n") == \
        "rank 1: a collective failed or timed out in step 3: rank 2 died"
    assert shorten_traceback("") == ""


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="nproc"):
        run_torchrun(0, ["x.py"], tmp_path)
    with pytest.raises(ValueError, match="timeout_s"):
        run_torchrun(2, ["x.py"], tmp_path, timeout_s=0)
