"""Self-speculative decoding with the MTP module vs plain greedy decoding, side by side in one run.

    python -m course_lib.bench mtp [--new-tokens 160] [--prompts 2] [--repeat 3] [--threads 2]

Uses the trained toy from assets/mtp (assets/mtp/make_checkpoint.py). For prompts drawn from each domain of the
course corpus's validation split it checks that both decoders return the same tokens, then reports the drafted
token's acceptance rate, new tokens per main-model forward pass and wall-clock tokens/s (median of --repeat runs,
interleaved so machine load hits both alike). V3 reports 85-90 % acceptance and about 1.8x tokens/s (§5.4.3).
"""
from __future__ import annotations

import argparse

import torch

from .core import compare, print_table


def main(argv=None) -> int:
    from ..corpus import Corpus
    from ..device import get_device
    from ..model import generate
    from ..mtp import load_checkpoint, speculative_generate

    p = argparse.ArgumentParser(prog="python -m course_lib.bench mtp", description=__doc__.splitlines()[0])
    p.add_argument("--new-tokens", type=int, default=160)
    p.add_argument("--prompts", type=int, default=2, help="prompts per corpus domain")
    p.add_argument("--prompt-len", type=int, default=32)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    if args.new_tokens < 1 or args.prompts < 1 or args.prompt_len < 1 or args.repeat < 1:
        raise ValueError("--new-tokens, --prompts, --prompt-len and --repeat must be positive")
    torch.set_num_threads(args.threads)
    device = get_device()
    model, meta = load_checkpoint(device=device)
    corpus = Corpus()
    g = torch.Generator().manual_seed(0)
    prompts = [corpus.get_batch("val", 1, args.prompt_len, generator=g, domain=d)[0].to(device)
               for d in corpus.domains for _ in range(args.prompts)]

    # Correctness and counts first (not timed): same tokens, acceptance, forward passes.
    drafted = accepted = forwards = 0
    for x in prompts:
        plain = generate(model.model, x, args.new_tokens, temperature=0)
        spec, stats = speculative_generate(model, x, args.new_tokens)
        if not torch.equal(plain, spec):
            print("MISMATCH: speculative output differs from plain greedy for a prompt")
            return 1
        drafted, accepted, forwards = drafted + stats.drafted, accepted + stats.accepted, forwards + stats.forwards
    n_tokens = args.new_tokens * len(prompts)

    def run_plain():
        for x in prompts:
            generate(model.model, x, args.new_tokens, temperature=0)

    def run_spec(cache=True):
        for x in prompts:
            speculative_generate(model, x, args.new_tokens, use_mtp_cache=cache)

    times = compare({"plain greedy": run_plain, "speculative (MTP cache)": run_spec,
                     "speculative (MTP recomputed)": lambda: run_spec(False)}, repeat=args.repeat, warmup=1)
    acc = accepted / drafted
    rows = []
    for name, sec in times.items():
        spec = name != "plain greedy"
        rows.append([name, f"{acc:.1%}" if spec else "-", n_tokens / forwards if spec else 1.0,
                     n_tokens / sec, times["plain greedy"] / sec])
    print(f"model: {meta['config']} + 1 MTP module, {meta['steps']} training steps; device {device}, "
          f"{args.threads} threads; {len(prompts)} prompts x {args.new_tokens} new tokens; outputs identical")
    print_table(rows, ["decoder", "acceptance", "tokens/forward", "tokens/s", "speed-up"])
    print(f"ideal speed-up if a draft were free: tokens/forward = {n_tokens / forwards:.2f}; the gap is the cost of "
          "the MTP block and of verifying 2 positions per pass")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
