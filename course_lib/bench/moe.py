"""Benchmark: course_lib's sparse MoE vs transformers' DeepseekV3MoE, the teaching loop, and a lower bound.

    python -m course_lib.bench moe [--batch 4] [--seq 128] [--threads 1] [--repeat 7] [--no-loop]

All variants run on the same weights and the same input, interleaved round by round. Two references
for "no MoE layer can do less": the *lower bound* runs the router matmul, the shared expert and each
activated expert on its own tokens, handed over already grouped (no top-k, no gather, no scatter-back);
the *one-matrix floor* does the same FLOPs as a single dense SwiGLU over N*k rows, which also skips
reading each expert's own weights from memory, so it is out of reach for any real MoE on CPU.
transformers is optional (the ``ref`` extra); without it that row is skipped.
"""
from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from ..device import get_device
from ..moe import MoE, SwiGLU
from .core import compare, print_table

# (name, d_model, routed, shared, top_k, expert width, groups, kept groups)
CONFIGS = [
    ("notebook (d=64, 16 routed, k=2)", 64, 16, 1, 2, 32, 1, 1),
    ("larger (d=256, 64 routed, k=6, 8/4 groups)", 256, 64, 1, 6, 128, 8, 4),
]


def build(d, n_routed, n_shared, k, hidden, groups, kept, device):
    """Our MoE with random weights (and a non-zero bias) plus, if installed, transformers' twin."""
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
        return ours, None
    cfg = DeepseekV3Config(hidden_size=d, moe_intermediate_size=hidden, n_routed_experts=n_routed,
                           n_shared_experts=n_shared, num_experts_per_tok=k, n_group=groups, topk_group=kept,
                           routed_scaling_factor=2.5, norm_topk_prob=True, hidden_act="silu")
    cfg._experts_implementation = "eager"
    ref = DeepseekV3MoE(cfg)
    with torch.no_grad():
        ref.gate.weight.copy_(ours.gate.weight)
        ref.gate.e_score_correction_bias.copy_(ours.e_score_correction_bias)
        ref.experts.gate_up_proj.copy_(torch.stack([e.gate_up.weight for e in ours.experts]))
        ref.experts.down_proj.copy_(torch.stack([e.down.weight for e in ours.experts]))
        gate_w, up_w = ours.shared_experts.gate_up.weight.chunk(2, dim=0)
        ref.shared_experts.gate_proj.weight.copy_(gate_w)
        ref.shared_experts.up_proj.weight.copy_(up_w)
        ref.shared_experts.down_proj.weight.copy_(ours.shared_experts.down.weight)
    return ours, ref.to(device).eval()


def activated_only_fn(ours: MoE, x: torch.Tensor):
    """Lower bound: router scores, shared expert, and each activated expert run on its tokens, which are
    handed over already grouped by expert (routing, gather and scatter-back done outside the timing)."""
    flat = x.reshape(-1, x.shape[-1])
    with torch.no_grad():
        _, idx, _ = ours.router(flat)
    order = idx.reshape(-1).argsort(stable=True)
    counts = torch.bincount(idx.reshape(-1), minlength=ours.n_routed_experts).tolist()
    chunks = [(ours.experts[e], c) for e, c in enumerate(flat[order // idx.shape[1]].split(counts)) if counts[e]]
    shared = ours.shared_experts

    def run():
        F.linear(flat.float(), ours.gate.weight.float()).sigmoid()
        outs = [expert(c) for expert, c in chunks]
        return outs, (shared(flat) if shared is not None else None)
    return run


def one_matrix_fn(ours: MoE, x: torch.Tensor):
    """Idealised floor: the same FLOPs as one dense SwiGLU of the expert width over N*k rows (one weight
    matrix, so it also ignores the cost of reading every expert's weights from memory)."""
    flat = x.reshape(-1, x.shape[-1])
    rows = flat.repeat(ours.num_experts_per_tok, 1)
    expert = ours.experts[0]
    shared = ours.shared_experts

    def run():
        F.linear(flat.float(), ours.gate.weight.float()).sigmoid()
        return expert(rows), (shared(flat) if shared is not None else None)
    return run


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
        ours, ref = build(d, n_routed, n_shared, k, hidden, groups, kept, device)
        x = torch.randn(args.batch, args.seq, d, generator=torch.Generator().manual_seed(1)).to(device)
        loop = MoE(d_model=d, n_routed_experts=n_routed, n_shared_experts=n_shared, num_experts_per_tok=k,
                   moe_intermediate_size=hidden, n_group=groups, topk_group=kept, routed_scaling_factor=2.5,
                   dispatch="loop").to(device).eval()
        loop.load_state_dict(ours.state_dict())
        fns = {"course_lib sparse": lambda: ours(x)}
        if ref is not None:
            fns["transformers DeepseekV3MoE"] = lambda: ref(x)
        fns["lower bound: activated experts, pre-grouped"] = activated_only_fn(ours, x)
        fns["floor: one dense matrix, N*k rows"] = one_matrix_fn(ours, x)
        if not args.no_loop:
            fns["teaching loop"] = lambda: loop(x)
        with torch.no_grad():
            # same weights, same answer: check before timing
            if ref is not None:
                err = (ours(x) - ref(x)).abs().max().item()
                print(f"\n{title}: max |ours - transformers| = {err:.2e}")
            else:
                print(f"\n{title}: transformers not installed, its row is skipped")
            repeat = args.repeat
            times = compare(fns, repeat=repeat, warmup=1)
        base = times["course_lib sparse"]
        rows = [(name, t * 1e3, t / base) for name, t in times.items()]
        print_table(rows, ["variant", "ms", "x course_lib"])
        if ref is not None:
            print(f"course_lib is {times['transformers DeepseekV3MoE'] / base:.2f}x faster than transformers")
        print(f"course_lib takes {base / times['lower bound: activated experts, pre-grouped']:.2f}x the lower bound, "
              f"{base / times['floor: one dense matrix, N*k rows']:.2f}x the one-matrix floor")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
