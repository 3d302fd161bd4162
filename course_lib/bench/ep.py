"""Benchmark: the expert-parallel MoE layer on 2 and 4 CPU ranks vs one process, same total tokens.

    python -m course_lib.bench ep [--tokens 4096] [--d 256] [--experts 16] [--k 4] [--repeat 10] [--worlds 2 4]

One process runs course_lib.moe.MoE on all tokens; N ranks (torchrun, gloo) each run
course_lib.expert_parallel.ExpertParallelMoE on tokens / N of them. Each timed step is a forward and a backward. Reported:
median time per step (the slowest rank's), the share of it spent inside the forward's two all-to-alls (dispatch and
combine; the backward runs the same exchanges again), and the speed-up over one process. On one CPU machine the
ranks share the cores and gloo copies through loopback TCP, so expect little or no speed-up: the benchmark shows
what the exchange costs, not what a GPU cluster gains.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import torch

from course_lib.kit.launch import run_torchrun
from course_lib.bench.core import print_table


def _layer(a):
    from course_lib.moe import MoE
    torch.manual_seed(0)
    return MoE(a.d, n_routed_experts=a.experts, n_shared_experts=1, num_experts_per_tok=a.k,
               moe_intermediate_size=a.d // 2, n_group=4, topk_group=4)


def _time_steps(layer, x, repeat, comm=None):
    times, comms = [], []
    for i in range(repeat + 2):
        t0 = time.perf_counter()
        y = layer(x)
        y.square().mean().backward()
        dt = time.perf_counter() - t0
        if i >= 2:
            times.append(dt)
            comms.append(comm() if comm else 0.0)
    return times, comms


def worker(a) -> None:
    import torch.distributed as dist

    from course_lib.expert_parallel import ExpertParallelMoE, init_distributed
    info = init_distributed(timeout_s=120)
    torch.set_num_threads(1)
    n = a.tokens // info.world
    x = torch.randn(1, n, a.d, generator=torch.Generator().manual_seed(info.rank), requires_grad=True)
    layer = ExpertParallelMoE(_layer(a), info.rank, info.world)
    times, comms = _time_steps(layer, x, a.repeat, lambda: layer.last_comm_s)
    t = torch.tensor(times, dtype=torch.float64)
    c = torch.tensor(comms, dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)          # a step ends when its slowest rank ends
    dist.all_reduce(c, op=dist.ReduceOp.MAX)
    if info.rank == 0:
        with open(a.out, "w") as f:
            json.dump({"times": t.tolist(), "comm": c.tolist()}, f)
    from course_lib.expert_parallel import destroy_process_group_safely, exit_rank
    destroy_process_group_safely()
    exit_rank(0)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m course_lib.bench ep", description=__doc__.split("\n")[0])
    p.add_argument("--tokens", type=int, default=4096)
    p.add_argument("--d", type=int, default=256)
    p.add_argument("--experts", type=int, default=16)
    p.add_argument("--k", type=int, default=4)
    p.add_argument("--repeat", type=int, default=10)
    p.add_argument("--worlds", type=int, nargs="+", default=[2, 4])
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.worker:
        worker(argparse.Namespace(**json.loads(os.environ["COURSE_BENCH_EP"])))
        return 0
    torch.set_num_threads(1)
    x = torch.randn(1, a.tokens, a.d, generator=torch.Generator().manual_seed(0), requires_grad=True)
    times, _ = _time_steps(_layer(a), x, a.repeat)
    base = statistics.median(times)
    rows = [("1 process (MoE)", 1, base * 1e3, 0.0, 1.0)]
    for w in a.worlds:
        with tempfile.TemporaryDirectory() as tmp:
            out = os.path.join(tmp, "ep.json")
            # the settings travel in the environment: torchrun would read short options like --d as its own
            env = {**os.environ, "OMP_NUM_THREADS": "1", "COURSE_BENCH_EP": json.dumps({**vars(a), "out": out})}
            res = run_torchrun(w, ["-m", "course_lib.bench", "ep", "--worker"], os.path.join(tmp, "logs"),
                               timeout_s=600, env=env)
            if not res.ok:
                print(res.report(), file=sys.stderr)
                return 1
            with open(out) as f:
                r = json.load(f)
        t, c = statistics.median(r["times"]), statistics.median(r["comm"])
        rows.append((f"{w} ranks (ExpertParallelMoE)", w, t * 1e3, 100 * c / t, base / t))
    print(f"{a.tokens} tokens, d={a.d}, {a.experts} experts (k={a.k}), forward+backward, one thread per process, "
          f"{os.cpu_count()} CPU cores")
    print_table(rows, ["run", "processes", "ms per step", "% in forward all-to-alls", "speed-up"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
