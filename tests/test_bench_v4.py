"""python -m course_lib.bench v4, tiny settings: the PyTorch, fused-kernel and torch.compile rows side by side."""
import re
import shutil

import pytest
import torch

TINY = ["--d-model", "8", "--batch", "1", "--seq", "4", "--repeat", "1", "--no-model", "--no-optimizers"]
HAVE_COMPILER = any(shutil.which(c) for c in ("cc", "gcc", "clang"))


def _rows(out: str) -> dict[str, list[float]]:
    """variant -> [ms, x plain] for every table row of the output, one list per width, in order."""
    rows = {}
    for line in out.splitlines():
        m = re.fullmatch(r"\s*(.+?)\s+([\d.e+-]+)\s+([\d.e+-]+)", line)
        if m and not line.startswith("-"):
            rows.setdefault(m.group(1), []).append([float(m.group(2)), float(m.group(3))])
    return rows


def test_bench_v4_prints_pytorch_and_fused_rows_at_two_widths(capsys):
    from course_lib.bench.v4 import main

    assert main(TINY) == 0
    out = capsys.readouterr().out
    rows = _rows(out)
    names = ["plain residual", "HC", "mHC", "mHC, 1 Sinkhorn iteration", "the 2 mHC modules alone (PyTorch)"]
    if HAVE_COMPILER:
        names += ["mHC, fused, Python nodes", "mHC, fused kernels", "mHC, fused, 1 Sinkhorn iteration"]
        assert "Fused kernels behind" in out
    for name in names:
        assert len(rows.get(name, [])) == 2 and all(ms > 0 for ms, _ in rows[name]), (name, out)
    assert rows["plain residual"] == [[rows["plain residual"][0][0], 1.0], [rows["plain residual"][1][0], 1.0]]
    assert "d=8, n=4" in out and "d=64, n=4" in out                  # notebook 08's width and 8x that
    assert not any("torch.compile" in name for name in rows) and "add --compile" in out
    assert "1b." not in out and "optimizer step" not in out


def test_bench_v4_compile_rows_sit_beside_the_others(capsys, monkeypatch):
    # compiling for real takes minutes; the plumbing is the same with torch.compile as the identity
    monkeypatch.setattr(torch, "compile", lambda module: module)
    from course_lib.bench.v4 import main

    assert main(TINY + ["--compile"]) == 0
    out = capsys.readouterr().out
    rows = _rows(out)
    assert len(rows["plain residual, torch.compile"]) == 2 and len(rows["mHC, torch.compile"]) == 2
    found = re.findall(r"torch\.compile \(.*compilation first took ([\d]+) s \(plain residual, torch.compile\), "
                       r"([\d]+) s \(mHC, torch.compile\), [^)]*\): mHC [\d.]+ ms = [\d.]+x the plain block", out)
    assert len(found) == 2, out


@pytest.mark.parametrize("bad", [["--d-model", "0"], ["--repeat", "0"]])
def test_bench_v4_rejects_bad_options(bad):
    from course_lib.bench.v4 import main

    with pytest.raises(ValueError, match=bad[0]):
        main(bad)
