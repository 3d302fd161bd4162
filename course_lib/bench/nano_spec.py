"""Self-speculative decoding of notebook 10's shipped models (nano-tiny, nano-deep) against plain greedy decoding.

    python -m course_lib.bench nano_spec [--model tiny|deep|both] [--prompts 3] [--new 48] [--repeat 5]
                                         [--threads 1] [--min-acceptance 0.8] [--min-speedup 1.3]

Per domain of the course corpus (nano_analysis.speculative_by_domain; notebook 10 calls it with timed=False and
prints only the counts): acceptance of the MTP drafts and tokens per main forward pass over --prompts validation
prompts, whether the output equals plain greedy decoding in float64, and tokens/s of both decoders on the first prompt
(fastest of --repeat interleaved runs); then the per-step costs of the speed-up formula
(1 + a) / (c_verify + c_draft) (nano_analysis.step_costs).

Last, on the most predictable domain, three checks of what these models were built to show: acceptance of at least
--min-acceptance, a speed-up in tokens/s of at least --min-speedup on this machine, and output identical to greedy.
DeepSeek-V3 reports 85-90% acceptance and about 1.8x tokens/s with its MTP module (V3 report §5.4.3). The speed-up is
wall time: it depends on the machine and on what else runs on it, so it is judged here, not in the notebook. Exit
status 1 only when the outputs differ from greedy decoding in float64 (a bug); a slower machine is not an error.
"""
from __future__ import annotations

import argparse

import torch

MODELS = {"tiny": ("nano_tiny", "nano-tiny (3 layers)"), "deep": ("nano_deep", "nano-deep (8 layers)")}


def judge(results: dict, min_acceptance: float = 0.8, min_speedup: float = 1.3) -> tuple[str, bool, list[str]]:
    """On the most predictable domain of `results` (from nano_analysis.speculative_by_domain): is acceptance >=
    min_acceptance, the measured speed-up >= min_speedup and the output identical to greedy in float64? Returns
    (that domain, all three hold, one line per check ending in yes/no)."""
    from course_lib.figures.nano_analysis import most_predictable

    if not 0 < min_acceptance <= 1:
        raise ValueError(f"min_acceptance must be in (0, 1], got {min_acceptance}")
    if min_speedup <= 0:
        raise ValueError(f"min_speedup must be positive, got {min_speedup}")
    best, _ = most_predictable(results)
    r = results[best]
    checks = [(f"acceptance {r['acceptance']:.1%} >= {min_acceptance:.0%}", r["acceptance"] >= min_acceptance),
              (f"speed-up {r['speedup']:.2f}x >= {min_speedup:g}x on this machine", r["speedup"] >= min_speedup),
              ("identical to greedy decoding in float64", r["identical_float64"] is True)]
    lines = [f"{text}: {'yes' if ok else 'no'}" for text, ok in checks]
    return best, all(ok for _, ok in checks), lines


def main(argv=None) -> int:
    from course_lib import asset_path
    from course_lib.figures import nano_analysis
    from course_lib.nano import export as nano_export
    from course_lib.toys.corpus import Corpus

    p = argparse.ArgumentParser(prog="python -m course_lib.bench nano_spec", description=__doc__.splitlines()[0])
    p.add_argument("--model", choices=(*MODELS, "both"), default="both")
    p.add_argument("--prompts", type=int, default=3, help="validation prompts per domain")
    p.add_argument("--prompt-len", type=int, default=32)
    p.add_argument("--new", type=int, default=48, help="new tokens per prompt")
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--min-acceptance", type=float, default=0.8)
    p.add_argument("--min-speedup", type=float, default=1.3)
    a = p.parse_args(argv)
    for name in ("prompts", "prompt_len", "new", "repeat", "threads"):
        if getattr(a, name) < 1:
            raise SystemExit(f"--{name.replace('_', '-')} must be >= 1, got {getattr(a, name)}")
    if not 0 < a.min_acceptance <= 1 or a.min_speedup <= 0:
        raise SystemExit("--min-acceptance must be in (0, 1] and --min-speedup positive")
    torch.set_num_threads(a.threads)
    corpus = Corpus()
    exact = True
    for key in (MODELS if a.model == "both" else (a.model,)):
        folder, label = MODELS[key]
        model = nano_export.from_transformers(asset_path("nano", folder))
        spec = nano_analysis.speculative_by_domain(model, corpus, n_prompts=a.prompts, prompt_len=a.prompt_len,
                                                   new=a.new, repeat=a.repeat)
        print(f"\n{label}: {a.prompts} prompt(s) of {a.prompt_len} tokens per domain, {a.new} new tokens, "
              f"{torch.get_num_threads()} thread(s)")
        print(nano_analysis.format_spec_table(spec))
        best, ok, lines = judge(spec, a.min_acceptance, a.min_speedup)
        costs = nano_analysis.step_costs(model, nano_analysis.domain_prompts(corpus, best, 1, a.prompt_len)[0])
        acc = spec[best]["acceptance"]
        print(f"step costs: plain {costs['plain'] * 1e3:.2f} ms, c_verify {costs['c_verify']:.2f}, c_draft "
              f"{costs['c_draft']:.2f} -> predicted speed-up on {best} {(1 + acc) / (costs['c_verify'] + costs['c_draft']):.2f}x")
        print(f"{label}, most predictable domain {best}:")
        for line in lines:
            print("  " + line)
        exact &= all(r["identical_float64"] is True for r in spec.values())
    if not exact:
        print("MISMATCH: self-speculative decoding differs from plain greedy decoding in float64")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
