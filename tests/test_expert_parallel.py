"""Expert + data parallelism (course_lib.expert_parallel, course_lib.nano.train_ep) on real torch.distributed processes.

Every test launches torchrun (gloo on CPU, 127.0.0.1, a free port via --standalone) in a subprocess with a hard
timeout, so a hang fails the test instead of blocking CI. The references are independent of the code under test:
the single-process MoE layer on all ranks' tokens, the routing's own count of (token, rank) pairs, and
course_lib.nano.train's one-process training step.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
TRAIN = ["--steps", "5", "--float64", "--max-chars", "20000", "--eval-every", "5", "--eval-batches", "1",
         "--batch-size", "8", "--seq-len", "32"]

LAYER_SCRIPT = r'''
import json, sys, torch, torch.distributed as dist
from course_lib.moe import MoE
from course_lib.expert_parallel import ExpertParallelMoE, init_distributed, dispatch_rows
info = init_distributed(timeout_s=30)
rank, world = info.rank, info.world
torch.manual_seed(0)
kw = dict(d_model=16, n_routed_experts=8, n_shared_experts=1, num_experts_per_tok=3, moe_intermediate_size=8,
          n_group=4, topk_group=2, routed_scaling_factor=2.5)
full = MoE(**kw).double()
with torch.no_grad():
    full.e_score_correction_bias.normal_(0, 0.1)
full.to(info.device)                         # the backend's device: the CPU for gloo, this rank's GPU for NCCL
g = torch.Generator().manual_seed(1)
xs = [torch.randn(2, 5 + r, 16, generator=g, dtype=torch.float64).to(info.device) for r in range(world)]  # uneven
cs = [torch.randn(2, 5 + r, 16, generator=g, dtype=torch.float64).to(info.device) for r in range(world)]
ep = ExpertParallelMoE(full, rank, world)
x = xs[rank].clone().requires_grad_(True)
y = ep(x)
(y * cs[rank]).sum().backward()
ref_y, ref_dx = [], []                       # the full layer, one process, every rank's tokens
for xr, cr in zip(xs, cs):
    xr = xr.clone().requires_grad_(True)
    yr = full(xr)
    (yr * cr).sum().backward()
    ref_y.append(yr.detach()); ref_dx.append(xr.grad)
n = 8 // world
errs = {"y": (y.detach() - ref_y[rank]).abs().max().item(), "dx": (x.grad - ref_dx[rank]).abs().max().item(),
        "experts": max((ep.experts.gate_up.grad - full.experts.gate_up.grad[rank*n:(rank+1)*n]).abs().max().item(),
                       (ep.experts.down.grad - full.experts.down.grad[rank*n:(rank+1)*n]).abs().max().item())}
for name in ("gate.weight", "shared_experts.w1.weight", "shared_experts.w2.weight"):
    gr = ep.get_parameter(name).grad.clone()
    dist.all_reduce(gr)                      # replicated weights: the ranks' gradients add up to the full one
    errs[name] = (gr - full.get_parameter(name).grad).abs().max().item()
# bytes: one row per (token, rank holding >= 1 of its experts), d_model activations + E_l gates, 8 bytes each
idx = ep.last_topk_idx
hand = [sum(1 for t in range(idx.shape[0]) if any(int(e) // n == q for e in idx[t])) for q in range(world)]
errs["rows"] = [ep.last_send_tokens.tolist(), hand, dispatch_rows(idx, 8, world).tolist()]
errs["bytes"] = [ep.last_send_bytes.tolist(), [h * (16 + n) * 8 for h in hand]]
out = [None] * world
dist.all_gather_object(out, errs)
if rank == 0:
    with open(sys.argv[1], "w") as f:
        json.dump(out, f)
from course_lib.expert_parallel import destroy_process_group_safely, exit_rank
destroy_process_group_safely()
exit_rank(0)
'''


def torchrun(n, args, timeout=240):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(n)] + args
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def single(args, timeout=240):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "course_lib.nano.train_ep"] + args, cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("world", [2, 4])
def test_expert_parallel_layer_equals_single_process(tmp_path, world):
    script, out = tmp_path / "layer.py", tmp_path / "out.json"
    script.write_text(LAYER_SCRIPT)
    res = torchrun(world, [str(script), str(out)], timeout=180)
    assert res.returncode == 0, res.stderr[-3000:]
    for errs in json.loads(out.read_text()):
        for key in ("y", "dx", "experts", "gate.weight", "shared_experts.w1.weight", "shared_experts.w2.weight"):
            assert errs[key] < 1e-10, (key, errs[key])
        sent, hand, formula = errs["rows"]
        assert sent == hand == formula
        assert errs["bytes"][0] == errs["bytes"][1]


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    out = tmp_path_factory.mktemp("ep1")
    res = single(["--ep", "1", "--out", str(out)] + TRAIN)
    assert res.returncode == 0, res.stderr[-3000:]
    return out


def test_two_ranks_train_like_one_process(one_process, tmp_path):
    res = torchrun(2, ["-m", "course_lib.nano.train_ep", "--ep", "2", "--out", str(tmp_path)] + TRAIN)
    assert res.returncode == 0, res.stderr[-3000:]
    ref = json.loads((one_process / "history.json").read_text())
    got = json.loads((tmp_path / "history.json").read_text())
    assert len(got["loss"]) == 5
    for key in ("loss", "main_loss", "mtp_loss", "val_loss"):
        assert got[key] == pytest.approx(ref[key], abs=1e-6), key
    # the checkpoint is one file holding the whole model: a single process loads it into nano's model
    from course_lib.nano import TINY, build_model
    a = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    b = torch.load(one_process / "checkpoint.pt", weights_only=True)
    model = build_model(TINY).double()
    model.load_state_dict(a["model"])
    for k, v in b["model"].items():
        assert torch.allclose(a["model"][k], v, atol=1e-6), k
    # log: per step, tokens each rank sent each rank; a step's row sums = the dispatches of both MoE layers
    lines = [json.loads(s) for s in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [ln["step"] for ln in lines] == [1, 2, 3, 4, 5]
    # the all-to-alls were timed (the counter is 0.0 until a dispatch adds its seconds), and so was the step
    assert all(len(ln["sent_tokens"]) == 2 and ln["comm_s"] > 0 and ln["step_s"] > 0 for ln in lines)


def test_rank_dies_then_resume_on_another_world_size(one_process, tmp_path):
    # rank 1 exits at the start of step 4; the checkpoint of step 3 is intact and torchrun names rank 1
    res = torchrun(2, ["-m", "course_lib.nano.train_ep", "--ep", "2", "--out", str(tmp_path), "--ckpt-every", "3",
                       "--timeout", "10", "--fault", "1:3:exit"] + TRAIN, timeout=120)
    assert res.returncode != 0
    text = res.stdout + res.stderr
    assert "injected fault 'exit' at step 4" in text
    assert "rank      : 1" in text.split("Root Cause")[1].split("=====")[0]
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=True)["step"] == 3
    # one process continues the 2-rank run and ends exactly where the uninterrupted one-process run ended
    res = single(["--ep", "1", "--out", str(tmp_path), "--resume", "--ckpt-every", "3"] + TRAIN)
    assert res.returncode == 0, res.stderr[-3000:]
    ref = json.loads((one_process / "history.json").read_text())
    got = json.loads((tmp_path / "history.json").read_text())
    assert got["loss"] == pytest.approx(ref["loss"], abs=1e-6)


def test_hung_rank_ends_the_run_with_its_name(tmp_path):
    res = torchrun(2, ["-m", "course_lib.nano.train_ep", "--ep", "2", "--out", str(tmp_path), "--timeout", "5",
                       "--fault", "1:2:hang"] + TRAIN, timeout=120)
    assert res.returncode != 0
    assert "rank 0: a collective failed or timed out in step 3: rank 1 is alive but hangs in step 3" in res.stderr


def test_bad_arguments():
    from course_lib.moe import MoE
    from course_lib.expert_parallel import ExpertParallelMoE, init_distributed
    with pytest.raises(ValueError, match="world"):
        ExpertParallelMoE(MoE(8, n_routed_experts=6), 0, 4)
    with pytest.raises(ValueError, match="rank"):
        ExpertParallelMoE(MoE(8, n_routed_experts=8), 4, 4)
    with pytest.raises(ValueError, match="timeout_s"):
        init_distributed(timeout_s=0)
    res = single(["--ep", "2", "--out", "unused"] + TRAIN)
    assert res.returncode != 0 and "ep must equal the number of processes" in res.stderr


def test_plot_dispatch_draws_one_arrow_per_row():
    import matplotlib
    matplotlib.use("Agg")
    from course_lib.expert_parallel import dispatch_rows, plot_dispatch
    idx = torch.tensor([[1, 2], [3, 6], [5, 7]])
    ax = plot_dispatch(idx, 8, 2, token_rank=[0, 0, 1])
    arrows = [c for c in ax.get_children() if type(c).__name__ == "Annotation"]
    assert len(arrows) == int(dispatch_rows(idx, 8, 2).sum()) == 4


def test_diagnose_names_dead_and_hung_ranks(tmp_path):
    import time as _time
    from course_lib.expert_parallel import diagnose
    now = _time.time()
    beats = {0: (now, 4, 30), 1: (now - 10, 3, 22), 2: (now, 4, 25), 3: (now, 4, 30)}   # time, step, collectives
    for r, (t, s, c) in beats.items():
        (tmp_path / f"rank{r}.json").write_text(json.dumps({"rank": r, "time": t, "step": s, "collectives": c}))
    msg = diagnose(tmp_path, 5, 0, stale_s=3.0)
    assert msg.startswith("rank 0: a collective failed or timed out in step 4: ")
    assert "rank 1 died (no heartbeat for 10 s, last in step 3)" in msg
    assert "rank 2 is alive but hangs in step 4 (entered 25 collectives, rank 0 30)" in msg
    assert "rank 3" not in msg and "rank 4 never started" in msg


def test_backend_needs_one_gpu_per_rank():
    from course_lib.expert_parallel import choose_backend
    assert choose_backend(4, cuda_devices=0) == ("gloo", "backend gloo on the CPU: no CUDA GPU, 4 ranks on this machine")
    assert choose_backend(4, cuda_devices=1) == (                # Colab: one GPU, four ranks
        "gloo", "backend gloo on the CPU: 4 ranks on this machine but 1 CUDA GPU (NCCL needs one GPU per rank)")
    assert choose_backend(4, cuda_devices=4)[0] == "nccl"
    assert choose_backend(2, cuda_devices=8)[0] == "nccl"
    with pytest.raises(ValueError, match="local_world"):
        choose_backend(0, cuda_devices=1)


def test_heartbeat_survives_two_writers(tmp_path):
    # the training loop and the background thread both write the pulse file: never a lost temporary file
    import threading
    from course_lib.expert_parallel import Heartbeat
    beat = Heartbeat(tmp_path, rank=1, interval=0.0005)
    errors = []

    def hammer():
        try:
            for i in range(300):
                beat.step = i
                beat.write()
        except Exception as err:              # FileNotFoundError before the fix
            errors.append(err)

    threads = [threading.Thread(target=hammer) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    beat.stop()
    assert errors == []
    assert not beat._thread.is_alive()
    assert json.loads((tmp_path / "rank1.json").read_text())["rank"] == 1
    assert [f.name for f in tmp_path.iterdir()] == ["rank1.json"]   # no temporary file left behind


def test_recorded_four_process_run_has_what_notebook_10_reads():
    # notebook 11 falls back to this recording when its live run cannot finish
    lines = (ROOT / "assets" / "scaleout" / "ep4_run" / "log.jsonl").read_text().splitlines()
    steps = [json.loads(line) for line in lines]
    assert [s["step"] for s in steps] == [1, 2, 3, 4, 5, 6]
    for s in steps:
        assert s["world"] == 4 and len(s["sent_tokens"]) == 4 and all(len(r) == 4 for r in s["sent_bytes"])
        assert s["comm_s"] > 0 and s["step_s"] > s["comm_s"] and 3 < s["main_loss"] < 6
    # every rank sends each of its 16 x 64 / 4 tokens to between 1 and 4 ranks, in each of the 2 MoE layers
    for row in steps[-1]["sent_tokens"]:
        assert 2 * 256 <= sum(row) <= 2 * 256 * 4
    hist = json.loads((ROOT / "assets" / "scaleout" / "ep4_run" / "history.json").read_text())
    assert hist["step"] == [1, 2, 3, 4, 5, 6] and hist["main_loss"][-1] == steps[-1]["main_loss"]


def test_notebook_10_runs_the_demo_arguments():
    # the cell spells the command out for the learner; the recording and the stress check use train_ep.demo_args
    from course_lib.nano.train_ep import demo_args
    nb = json.loads((ROOT / "notebooks" / "11_scale_out.ipynb").read_text(encoding="utf-8"))
    cell = next("".join(c["source"]) for c in nb["cells"] if "launch.run_torchrun(4, args" in "".join(c["source"]))
    scope = {"STEPS": 6, "run_dir": "OUT"}
    exec(cell[cell.index("args = "):cell.index("\n# The ranks")], scope)      # the cell's `args = [...]`
    assert scope["args"] == demo_args("OUT", 6)
