"""python -m course_lib.bench dspark with tiny settings: one row per corpus domain, numbers in every column."""
import re

import pytest

from course_lib.toys.corpus import Corpus


def test_bench_dspark_prints_one_row_per_domain(capsys):
    from course_lib.bench.dspark import main

    assert main(["--model", "tiny", "--steps", "3", "--prompts", "1", "--new", "6", "--repeat", "1"]) == 0
    out = capsys.readouterr().out
    assert "trained 3 steps" in out
    for domain in Corpus().domains:
        row = next(line for line in out.splitlines() if line.startswith(domain))
        cells = row.split()
        assert cells[-1] == "yes"                       # identical to greedy in float64
        greedy, mtp, mtp_len, ds, ds_len = map(float, cells[1:6])
        assert greedy > 0 and mtp > 0 and ds > 0
        assert 1.0 <= mtp_len <= 2.0                    # one MTP draft: 1 or 2 tokens per verify pass
        assert 1.0 <= ds_len <= 5.0                     # block 4: 1 .. 5 tokens per verify pass
        assert re.fullmatch(r"\d+\.\d\dx", cells[6])


def test_bench_dspark_rejects_bad_options():
    from course_lib.bench.dspark import main

    with pytest.raises(SystemExit):
        main(["--steps", "0"])
    with pytest.raises(SystemExit):
        main(["--threshold", "2"])
