"""python -m course_lib.bench rl, tiny settings: a row per variant with numbers, the accuracy curve, Keep Routing."""
import re

import pytest


def test_bench_rl_prints_one_row_per_variant(capsys):
    from course_lib.bench.rl import VARIANTS, main

    assert main(["--steps", "2", "--eval-every", "1", "--variants", "grpo,dapo,gspo", "--kr-batch", "2",
                 "--kr-len", "6", "--repeat", "1", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    for name in ("grpo", "dapo", "gspo"):
        cells = next(line for line in lines if line.split() and line.split()[0] == name).split()
        assert cells[1] == "2"                                   # steps
        assert float(cells[2]) > 0 and float(cells[3]) >= float(cells[2])   # wall time includes training time
        assert int(cells[4]) >= 2 * 64                           # at least 8 questions x 8 samples per step
        assert 0 <= float(cells[7]) <= 1 and 0 <= float(cells[8]) <= 1       # held-out accuracy start, end
        assert 0 <= float(cells[9]) <= 1 and (name == "dapo" or float(cells[9]) == 0)   # only DAPO drops groups
    assert "dr_grpo" in VARIANTS and not any(line.startswith("dr_grpo") for line in lines)
    curve = [line.split() for line in lines if re.fullmatch(r"\s*[012]\s+[\d. ]+", line)]
    assert [c[0] for c in curve] == ["0", "1", "2"] and all(len(c) == 4 for c in curve)
    assert len({c[1] for c in curve if c[0] == "0"} | {c[2] for c in curve if c[0] == "0"}) == 1   # same start
    m = re.search(r"Keep Routing .*: ([\d.]+) ms with its own routes, ([\d.]+) ms replayed \(([\d.]+)x\)", out)
    assert m and float(m.group(1)) > 0 and float(m.group(2)) > 0


def test_bench_rl_rejects_bad_options():
    from course_lib.bench.rl import main

    for bad in (["--steps", "0"], ["--variants", "ppo"], ["--target", "1.5"], ["--mu", "0"]):
        with pytest.raises(SystemExit):
            main(bad)


def test_train_variant_records_dapo_steps():
    """The loop the bench and assets/grpo/record_rl_after_r1.py share: cumulative counts, the evaluations, DAPO drops."""
    import math

    from course_lib.bench.rl import VARIANTS, train_variant

    run = train_variant(VARIANTS["dapo"], 2, 1, 2, 1, "cpu", dynamic_sampling=True, filter_truncated=True)
    evals = next(run)
    assert evals["eval_step"] == [0] and 0 <= evals["eval_accuracy"][0] <= 1
    recs = list(run)
    assert len(recs) == 2 and evals["eval_step"] == [0, 1, 2] and len(evals["eval_accuracy"]) == 3
    assert 64 <= recs[0]["samples"] < recs[1]["samples"] <= 2 * 3 * 64 and 0 < recs[0]["time_s"] < recs[1]["time_s"]
    for rec in recs:
        assert 0 <= rec["dropped"] <= rec["groups"] and rec["groups"] * 8 <= rec["samples"]
        assert 0 <= rec["no_signal"] <= 1 and 0 <= rec["accuracy"] <= 1 and 0 <= rec["clip_frac"] <= 1
        assert math.isnan(rec["reward"]) or 0 <= rec["reward"] <= 2
