"""Self-speculative decoding with the MTP module vs plain greedy decoding, side by side in one run.

    python -m course_lib.bench mtp [--new-tokens 160] [--prompts 2] [--repeat 3] [--threads 2]

Uses the trained toy from assets/mtp (assets/mtp/make_checkpoint.py). For prompts drawn from each domain of the
course corpus's validation split it checks that both decoders return the same tokens, then reports the drafted
token's acceptance rate, new tokens per main-model forward pass and wall-clock tokens/s (median of --repeat runs,
interleaved so machine load hits both alike; also as CPU time, which a busy shared machine distorts less), and the
acceptance rate per bin of the main model's confidence in the token it chose. V3 reports 85-90 % acceptance and
about 1.8x tokens/s (§5.4.3).
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from course_lib.bench.core import print_table


def _interleaved(fns: dict, repeat: int) -> tuple[dict, dict]:
    """Median wall time and median CPU time (this process) of each function, run round-robin after one warm-up.

    CPU time is what the run would take on an idle machine with these threads; wall time is what you waited for."""
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    for fn in fns.values():
        fn()
    wall, cpu = {k: [] for k in fns}, {k: [] for k in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            sync()
            w, c = time.perf_counter(), time.process_time()
            fn()
            sync()
            wall[name].append(time.perf_counter() - w)
            cpu[name].append(time.process_time() - c)
    return {k: statistics.median(v) for k, v in wall.items()}, {k: statistics.median(v) for k, v in cpu.items()}


def main(argv=None) -> int:
    from course_lib.toys.corpus import Corpus
    from course_lib.kit.device import get_device
    from course_lib.model import generate
    from course_lib.mtp import speculative_generate
    from course_lib.figures.mtp_analysis import acceptance_by_confidence, load_checkpoint

    p = argparse.ArgumentParser(prog="python -m course_lib.bench mtp", description=__doc__.splitlines()[0])
    p.add_argument("--new-tokens", type=int, default=160)
    p.add_argument("--prompts", type=int, default=2, help="prompts per corpus domain")
    p.add_argument("--prompt-len", type=int, default=32)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--checkpoint", default="mtp_tiny", help="name of a checkpoint in assets/mtp")
    args = p.parse_args(argv)
    if args.new_tokens < 1 or args.prompts < 1 or args.prompt_len < 1 or args.repeat < 1:
        raise ValueError("--new-tokens, --prompts, --prompt-len and --repeat must be positive")
    torch.set_num_threads(args.threads)
    device = get_device()
    model, meta = load_checkpoint(args.checkpoint, device=device)
    corpus = Corpus()
    g = torch.Generator().manual_seed(0)
    prompts = [corpus.get_batch("val", 1, args.prompt_len, generator=g, domain=d)[0].to(device)
               for d in corpus.domains for _ in range(args.prompts)]

    # Correctness and counts first (not timed). Float32 outputs can differ only where two logits tie to float32
    # precision (a 2-token verify pass rounds differently from a 1-token pass); float64 must agree exactly.
    drafted = accepted = forwards = differ32 = 0
    max_tie_gap = 0.0
    for x in prompts:
        plain = generate(model.model, x, args.new_tokens, temperature=0)
        spec, stats = speculative_generate(model, x, args.new_tokens)
        if not torch.equal(plain, spec):
            differ32 += 1
            j = int((plain != spec).nonzero()[0, 1])
            with torch.no_grad():
                top2 = model.model(plain[:, :j]).logits[0, -1].topk(2).values
            max_tie_gap = max(max_tie_gap, float(top2[0] - top2[1]))
        drafted, accepted, forwards = drafted + stats.drafted, accepted + stats.accepted, forwards + stats.forwards
    model.double()
    same64 = all(torch.equal(generate(model.model, x, args.new_tokens, temperature=0),
                             speculative_generate(model, x, args.new_tokens)[0]) for x in prompts)
    model.float()
    if not same64:
        print("MISMATCH: speculative output differs from plain greedy in float64")
        return 1
    check = (f"outputs identical in float64; in float32 {len(prompts) - differ32}/{len(prompts)} identical"
             + (f" (the others diverge at a tie: top-2 logit gap <= {max_tie_gap:.1e})" if differ32 else ""))
    n_tokens = args.new_tokens * len(prompts)

    def run_plain():
        for x in prompts:
            generate(model.model, x, args.new_tokens, temperature=0)

    def run_spec(cache=True):
        for x in prompts:
            speculative_generate(model, x, args.new_tokens, use_mtp_cache=cache)

    methods = {"plain greedy": run_plain, "speculative (MTP cache)": run_spec,
               "speculative (MTP recomputed)": lambda: run_spec(False)}
    wall, cpu = _interleaved(methods, args.repeat)
    acc = accepted / drafted
    rows = []
    for name in methods:
        spec = name != "plain greedy"
        rows.append([name, f"{acc:.1%}" if spec else "-", n_tokens / forwards if spec else 1.0,
                     n_tokens / wall[name], wall["plain greedy"] / wall[name],
                     n_tokens / cpu[name], cpu["plain greedy"] / cpu[name]])
    print(f"model: {meta['config']} + 1 MTP module, {meta['steps']} training steps; device {device}, "
          f"{args.threads} threads; {len(prompts)} prompts x {args.new_tokens} new tokens; {check}")
    print_table(rows, ["decoder", "acceptance", "tokens/forward", "tokens/s", "speed-up",
                       "tokens/CPU-s", "speed-up (CPU)"])

    # Why the rate is what it is: acceptance per bin of the main model's confidence in the token it chose
    table = acceptance_by_confidence(model, prompts, args.new_tokens)
    print("\nacceptance by the main model's top-1 probability (a strong model is confident far more often):")
    print_table([[lab, n, f"{sh:.0%}", f"{a:.0%}" if n else "-"] for lab, n, sh, a in
                 zip(table.labels, table.drafted, table.share, table.acceptance)],
                ["top-1 probability", "drafts", "share", "acceptance"])

    # The speed-up formula's three costs, one step each at the end of a prompt: (1 + a) * c_plain / (c_verify + c_draft)
    x = prompts[0]
    S = x.shape[1]
    with torch.no_grad():
        cache = model.model.new_cache()
        h = model.model(x, cache=cache).hidden
        mtp_cache = {}
        model.mtp[0](h[:, :-1], x[:, 1:], cache=mtp_cache)
        steps = {"plain": lambda: model.model(x[:, :1], cache=[dict(c) for c in cache], start_pos=S),
                 "verify": lambda: model.model(x[:, :2], cache=[dict(c) for c in cache], start_pos=S),
                 "draft": lambda: model.mtp[0](h[:, -1:], x[:, :1], start_pos=S - 1, cache=dict(mtp_cache))}
        loops = {k: (lambda f=f: [f() for _ in range(20)]) for k, f in steps.items()}
        c_wall, c_cpu = _interleaved(loops, args.repeat)
    c = c_cpu if device.type == "cpu" else c_wall
    c = {k: v / 20 for k, v in c.items()}
    print(f"one step ({'CPU' if device.type == 'cpu' else 'wall'} time): plain {c['plain'] * 1e3:.2f} ms, "
          f"verify 2 tokens {c['verify'] * 1e3:.2f} ms, MTP draft {c['draft'] * 1e3:.2f} ms -> predicted speed-up "
          f"(1 + {acc:.2f}) * c_plain / (c_verify + c_draft) = {(1 + acc) * c['plain'] / (c['verify'] + c['draft']):.2f}x; "
          f"ideal (free drafts) {n_tokens / forwards:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
