"""course_lib.nano.train: a resumed run continues with exactly the loss curve of an uninterrupted one."""
import json

import pytest
import torch

from course_lib import nano
from course_lib.nano import train as train_v3
from course_lib.toys.corpus import Corpus
from course_lib.moe import MoE

torch.set_num_threads(1)
CFG = nano.TINY.replace(hidden_size=32, intermediate_size=48, moe_intermediate_size=16, num_attention_heads=2,
                        q_lora_rank=16, kv_lora_rank=16, qk_nope_head_dim=8, qk_rope_head_dim=4, v_head_dim=8)
KW = dict(batch_size=4, seq_len=16, eval_every=2, eval_batches=1, ckpt_every=2, progress=False, warmup=2)


@pytest.fixture(scope="module")
def corpus():
    return Corpus(max_chars=5000)


def test_resume_continues_the_same_curve(corpus, tmp_path):
    _, full = train_v3.train(CFG, 6, corpus=corpus, **KW)
    train_v3.train(CFG, 6, corpus=corpus, out=tmp_path, stop_after=3, **KW)            # "interrupted" after step 3
    assert train_v3.load_checkpoint(tmp_path / "checkpoint.pt")["step"] == 3
    model, resumed = train_v3.train(CFG, 6, corpus=corpus, out=tmp_path, resume=True, **KW)
    assert resumed["step"] == [1, 2, 3, 4, 5, 6]
    assert resumed["loss"] == full["loss"] and resumed["val_loss"] == full["val_loss"]
    # the aux-loss-free biases moved (so the check covers them) and were restored too
    assert any(m.e_score_correction_bias.abs().sum() > 0 for m in model.modules() if isinstance(m, MoE))
    assert json.loads((tmp_path / "history.json").read_text())["loss"] == full["loss"]


def test_resume_without_the_optimizer_state_would_differ(corpus, tmp_path):
    """The test above can fail: dropping AdamW's moments at the restart changes the curve."""
    _, full = train_v3.train(CFG, 6, corpus=corpus, **KW)
    train_v3.train(CFG, 6, corpus=corpus, out=tmp_path, stop_after=3, **KW)
    state = train_v3.load_checkpoint(tmp_path / "checkpoint.pt")
    state["opt"]["state"] = {}
    torch.save(state, tmp_path / "checkpoint.pt")
    _, resumed = train_v3.train(CFG, 6, corpus=corpus, out=tmp_path, resume=True, **KW)
    assert resumed["loss"][:3] == full["loss"][:3] and resumed["loss"][3:] != full["loss"][3:]


def test_resume_refuses_other_settings(corpus, tmp_path):
    train_v3.train(CFG, 4, corpus=corpus, out=tmp_path, stop_after=2, **KW)
    with pytest.raises(ValueError, match="resume"):
        train_v3.train(CFG, 4, corpus=corpus, out=tmp_path, resume=True, **{**KW, "seq_len": 8})


def test_seeded_and_learning(corpus):
    _, a = train_v3.train(CFG, 4, corpus=corpus, seed=3, **KW)
    _, b = train_v3.train(CFG, 4, corpus=corpus, seed=3, **KW)
    assert a["loss"] == b["loss"]
    assert a["val_loss"][0] < torch.log(torch.tensor(256.0)).item()   # below uniform guessing


def test_cli_trains_and_exports(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(train_v3, "get_preset", lambda name: CFG)
    assert train_v3.main(["--steps", "2", "--out", str(tmp_path), "--batch-size", "2", "--seq-len", "8",
                          "--eval-every", "1", "--max-chars", "5000", "--export"]) == 0
    assert (tmp_path / "checkpoint.pt").exists() and (tmp_path / "hf" / "model.safetensors").exists()
    assert "val loss" in capsys.readouterr().out


def test_bad_arguments():
    with pytest.raises(ValueError, match="steps"):
        train_v3.train(CFG, 0)
    with pytest.raises(ValueError, match="resume"):
        train_v3.train(CFG, 2, resume=True)


def test_cli_with_ep_hands_the_run_to_train_ep(monkeypatch, tmp_path):
    from course_lib.nano import train_ep
    seen = {}
    monkeypatch.setattr(train_ep, "main", lambda argv: seen.setdefault("argv", argv) and 0)
    assert train_v3.main(["--steps", "5", "--out", str(tmp_path), "--ep", "2", "--resume", "--max-chars", "999"]) == 0
    argv = seen["argv"]
    pairs = {a: argv[i + 1] for i, a in enumerate(argv[:-1]) if a.startswith("--") and not argv[i + 1].startswith("--")}
    assert pairs["--ep"] == "2" and pairs["--steps"] == "5" and pairs["--out"] == str(tmp_path)
    assert "--resume" in argv and pairs.get("--max-chars") == "999"
    with pytest.raises(SystemExit):
        train_v3.main(["--steps", "5", "--out", str(tmp_path), "--ep", "0"])
    with pytest.raises(SystemExit):
        train_v3.main(["--steps", "5", "--out", str(tmp_path), "--ep", "2", "--export"])
