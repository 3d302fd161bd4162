"""Benchmark: course_lib's sparse MoE vs transformers' DeepseekV3MoE, the teaching loop, and a lower bound.

    python -m course_lib.bench moe [--batch 4] [--seq 128] [--threads 1] [--repeat 7] [--no-loop]

All variants run on the same weights and the same input, interleaved round by round. course_lib's
sparse dispatch runs the experts as one grouped GEMM (F.grouped_mm) where PyTorch has a kernel for the
case, else one matmul pair per expert; both are timed. transformers' DeepseekV3MoE is timed in both of its
CPU expert implementations: "eager" (a loop over experts) and "grouped_mm" (its default since v5).
Two references for "no MoE layer can do less": the *lower bound* runs the router matmul, the shared
expert and each activated expert on its own tokens, handed over already grouped (no top-k, no gather, no
scatter-back), with whichever expert kernel is faster; the *one-matrix floor* does the same FLOPs as a
single dense SwiGLU over N*k rows, which also skips reading each expert's own weights from memory, so
it is out of reach for any real MoE on CPU. transformers is optional (the ``ref`` extra); without it its
rows are skipped.
"""
from __future__ import annotations

import argparse
import copy

import torch
import torch.nn.functional as F

from course_lib.kit.device import get_device
from course_lib.experts import RoutedExperts
from course_lib.layers import swiglu
from course_lib.moe import MoE
from course_lib.bench.core import compare, print_table

# (name, d_model, routed, shared, top_k, expert width, groups, kept groups)
CONFIGS = [
    ("notebook (d=64, 16 routed, k=2)", 64, 16, 1, 2, 32, 1, 1),
    ("larger (d=256, 64 routed, k=6, 8/4 groups)", 256, 64, 1, 6, 128, 8, 4),
]


LB_LOOP = "lower bound: activated experts pre-grouped, per-expert matmuls"
LB_GROUPED = "lower bound: activated experts pre-grouped, grouped GEMM"
FLOOR = "floor: one dense matrix, N*k rows"


def build(d, n_routed, n_shared, k, hidden, groups, kept, device):
    """Our MoE with random weights (and a non-zero bias) plus, if installed, transformers' twin in each of its
    two CPU expert implementations: "eager" (a loop over the experts) and "grouped_mm" (its default)."""
    torch.manual_seed(0)
    ours = MoE(d_model=d, n_routed_experts=n_routed, n_shared_experts=n_shared, num_experts_per_tok=k,
               moe_intermediate_size=hidden, n_group=groups, topk_group=kept, routed_scaling_factor=2.5)
    with torch.no_grad():
        for p in ours.parameters():
            p.normal_(0, 0.05)
        ours.e_score_correction_bias.normal_(0, 0.01)
    ours = ours.to(device).eval()
    try:
        from transformers import DeepseekV3Config
        from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3MoE
    except ImportError:
        return ours, {}
    refs = {}
    for impl in ("eager", "grouped_mm"):
        cfg = DeepseekV3Config(hidden_size=d, moe_intermediate_size=hidden, n_routed_experts=n_routed,
                               n_shared_experts=n_shared, num_experts_per_tok=k, n_group=groups, topk_group=kept,
                               routed_scaling_factor=2.5, norm_topk_prob=True, hidden_act="silu")
        cfg._experts_implementation = impl       # one config per module: the experts read it at every call
        ref = DeepseekV3MoE(cfg)
        with torch.no_grad():
            ref.gate.weight.copy_(ours.gate.weight)
            ref.gate.e_score_correction_bias.copy_(ours.e_score_correction_bias)
            ref.experts.gate_up_proj.copy_(ours.experts.gate_up)
            ref.experts.down_proj.copy_(ours.experts.down)
            ref.shared_experts.gate_proj.weight.copy_(ours.shared_experts.w1.weight)
            ref.shared_experts.up_proj.weight.copy_(ours.shared_experts.w3.weight)
            ref.shared_experts.down_proj.weight.copy_(ours.shared_experts.w2.weight)
        refs[impl] = ref.to(device).eval()
    return ours, refs


def activated_only_fn(ours: MoE, x: torch.Tensor, grouped: bool):
    """Lower bound: router scores, shared expert, and each activated expert run on its tokens, which are
    handed over already grouped by expert (top-k, gather and scatter-back done outside the timing).
    grouped=True runs the experts as one grouped GEMM, False as one matmul pair per expert."""
    flat = x.reshape(-1, x.shape[-1])
    with torch.no_grad():
        _, idx, _ = ours.router(flat)
    order = idx.reshape(-1).argsort(stable=True)
    counts = torch.bincount(idx.reshape(-1), minlength=ours.n_routed_experts)
    x_sorted = flat[order // idx.shape[1]]
    experts, shared = ours.experts, ours.shared_experts

    run_experts = experts if grouped else experts.per_expert

    def run():
        F.linear(flat.float(), ours.gate.weight.float()).sigmoid()
        return run_experts(x_sorted, counts), (shared(flat) if shared is not None else None)
    return run


def one_matrix_fn(ours: MoE, x: torch.Tensor):
    """Idealised floor: the same FLOPs as one dense SwiGLU of the expert width over N*k rows (one weight
    matrix, so it also ignores the cost of reading every expert's weights from memory)."""
    flat = x.reshape(-1, x.shape[-1])
    rows = flat.repeat(ours.num_experts_per_tok, 1)
    shared = ours.shared_experts
    w_gate_up, w_down = ours.experts.gate_up[0], ours.experts.down[0]

    def run():
        F.linear(flat.float(), ours.gate.weight.float()).sigmoid()
        gate, up = F.linear(rows, w_gate_up).chunk(2, dim=-1)
        return F.linear(swiglu(gate, up), w_down), (shared(flat) if shared is not None else None)
    return run


class PerExpertExperts(RoutedExperts):
    """course_lib.experts.RoutedExperts without the grouped GEMM: always one matmul pair per expert."""

    def _grouped_mm_ok(self, x: torch.Tensor) -> bool:
        return False


def per_expert_fn(ours: MoE, x: torch.Tensor):
    """course_lib's sparse dispatch with the grouped GEMM switched off (one matmul pair per expert), on a copy of
    `ours` whose experts are PerExpertExperts with the same weights."""
    looped = copy.deepcopy(ours)
    e = ours.experts
    looped.experts = PerExpertExperts(e.n_experts, e.gate_up.shape[-1], e.hidden).to(e.gate_up)
    looped.experts.load_state_dict(e.state_dict())
    return lambda: looped(x)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m course_lib.bench moe", description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=128)
    # one thread by default: these are many tiny ops, and on a busy CPU extra threads mostly wait for each other
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (ignored on GPU)")
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--no-loop", action="store_true", help="skip the slow token-by-token teaching loop")
    args = ap.parse_args(argv)
    for name in ("batch", "seq", "threads", "repeat"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name} must be >= 1, got {getattr(args, name)}")
    torch.set_num_threads(args.threads)
    device = get_device()
    print(f"device {device}, {torch.get_num_threads()} threads, input {args.batch} x {args.seq} tokens, forward only")

    for title, d, n_routed, n_shared, k, hidden, groups, kept in CONFIGS:
        ours, refs = build(d, n_routed, n_shared, k, hidden, groups, kept, device)
        x = torch.randn(args.batch, args.seq, d, generator=torch.Generator().manual_seed(1)).to(device)
        loop = MoE(d_model=d, n_routed_experts=n_routed, n_shared_experts=n_shared, num_experts_per_tok=k,
                   moe_intermediate_size=hidden, n_group=groups, topk_group=kept, routed_scaling_factor=2.5,
                   dispatch="loop").to(device).eval()
        loop.load_state_dict(ours.state_dict())
        fns = {"course_lib sparse": lambda: ours(x),
               "course_lib sparse, per-expert matmuls": per_expert_fn(ours, x)}
        for impl, ref in refs.items():
            fns[f"transformers DeepseekV3MoE ({impl})"] = lambda ref=ref: ref(x)
        fns[LB_LOOP] = activated_only_fn(ours, x, grouped=False)
        with torch.no_grad():
            if ours.experts._grouped_mm_ok(x.reshape(-1, d)):
                fns[LB_GROUPED] = activated_only_fn(ours, x, grouped=True)
        fns[FLOOR] = one_matrix_fn(ours, x)
        if not args.no_loop:
            fns["teaching loop"] = lambda: loop(x)
        with torch.no_grad():
            # same weights, same answer: check before timing
            y = ours(x)
            errs = [f"max |ours - transformers {impl}| = {(y - ref(x)).abs().max().item():.2e}"
                    for impl, ref in refs.items()]
            print(f"\n{title}: " + ("; ".join(errs) if errs else "transformers not installed, its rows are skipped"))
            times = compare(fns, repeat=args.repeat, warmup=1, rewarm=1)   # each timed call starts warm
        base = times["course_lib sparse"]
        rows = [(name, t * 1e3, t / base) for name, t in times.items()]
        print_table(rows, ["variant", "ms", "x course_lib"])
        for impl in refs:
            print(f"course_lib is {times[f'transformers DeepseekV3MoE ({impl})'] / base:.2f}x faster than "
                  f"transformers ({impl}{', its default' if impl == 'grouped_mm' else ''})")
        bound = min(t for name, t in times.items() if name.startswith("lower bound"))
        print(f"course_lib takes {base / bound:.2f}x the lower bound (the faster of its rows), "
              f"{base / times[FLOOR]:.2f}x the one-matrix floor")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
