"""assets/v41/runs.json (notebook 13 §6) matches the code: its configs build the models equal_flops_configs gives,
its counts equal the recomputed ones, the three models cost the same FLOPs, and a replay of the first steps on this
CPU gives the recorded losses."""
import json

import pytest
import torch

from course_lib import asset_path
from course_lib.nano import v41_model as m
from course_lib.nano.train import train

REC = json.loads(asset_path("v41", "runs.json").read_text())
CFGS = m.equal_flops_configs()


def test_recorded_configs_are_the_equal_flops_configs():
    assert set(REC["models"]) == set(CFGS) == set(REC["runs"])
    for name, cfg in CFGS.items():
        rec = REC["models"][name]
        assert rec["type"] == type(cfg).__name__
        assert type(cfg)(**rec["config"]) == cfg                    # the stored dict builds the same config


@pytest.mark.parametrize("name", sorted(CFGS))
def test_recorded_counts_equal_recomputed_ones(name):
    cfg, rec = CFGS[name], REC["models"][name]
    seq = REC["settings"]["seq_len"]
    assert rec["flops_per_token"] == m.train_flops_per_token(cfg, seq)
    assert rec["params_total"] == m.total_params(cfg)
    torch.manual_seed(0)
    model = m.build_any(cfg)
    assert rec["params_total"] == sum(p.numel() for p in model.parameters())
    assert rec["params_activated"] == m.activated_params(model)
    assert rec["kv_bytes_per_token"] == m.kv_cache_bytes_per_token(cfg, seq)


def test_recorded_models_cost_equal_flops():
    f = {k: v["flops_per_token"] for k, v in REC["models"].items()}
    ref = f["nano-V4.1"]
    assert all(abs(v - ref) <= m.FLOPS_TOLERANCE * ref for v in f.values()), f


def test_every_run_is_complete():
    s = REC["settings"]
    assert len(s["seeds"]) >= 2
    for name, runs in REC["runs"].items():
        assert sorted(runs) == sorted(str(x) for x in s["seeds"]), name
        for run in runs.values():
            assert len(run["main_loss"]) == len(run["loss"]) == s["steps"]
            assert run["val_step"][-1] == s["steps"] and len(run["val_step"]) == len(run["val_loss"])
            assert run["val_loss"][-1] < run["val_loss"][0] < 5.6          # it learned (log 256 = 5.55 at start)


@pytest.mark.parametrize("name", ["nano-DeepSeek", "nano-V4.1"])
def test_replaying_the_first_steps_gives_the_recorded_losses(name):
    s, cfg = REC["settings"], CFGS[name]
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(s["seeds"][0])
        model = m.build_any(cfg)
        _, hist = train(cfg, s["steps"], batch_size=s["batch_size"], seq_len=s["seq_len"], lr=s["lr"],
                        warmup=s["warmup"], seed=s["seeds"][0], eval_every=s["eval_every"],
                        eval_batches=s["eval_batches"], stop_after=3, progress=False, model=model)
    finally:
        torch.set_num_threads(n)
    recorded = REC["runs"][name][str(s["seeds"][0])]["main_loss"][:3]
    assert hist["main_loss"] == pytest.approx(recorded, abs=2e-3)
