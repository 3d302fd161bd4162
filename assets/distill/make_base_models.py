"""Pretrain the two base models of notebook 06 and save them to assets/distill/base_models.pt.

    python assets/distill/make_base_models.py [--steps N] [--seed S] [--out PATH]

Both models (teacher size and student size, configs in course_lib.toys.r1_recipe) see the same pretraining mix
(`r1_recipe.base_samples`): mostly direct answers, some scratchpads whose steps switch between English and Chinese,
and some general 'a?b=' questions. They play DeepSeek-V3-Base and the Qwen/Llama base models of the R1 paper.
Runs on CPU in a few minutes; seeded, so a rerun gives the same weights on the same machine and torch version.
"""
import argparse
import random
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))   # run from a clone without installing the course

from course_lib import distill
from course_lib.toys import r1_recipe                            # noqa: E402
from course_lib.kit.device import seed_everything                        # noqa: E402
from course_lib.model import TinyLM                                  # noqa: E402
from course_lib.kit.train_loop import train_lm                                # noqa: E402


def pretrain(cfg, tok, steps, batch_size, lr, seed, log_every=500):
    seed_everything(seed)
    model = TinyLM(cfg)
    rng = random.Random(seed)

    def get_batch(step):
        return distill.sequence_batch(tok, r1_recipe.base_samples(batch_size, rng), r1_recipe.eos_id(tok))

    def callback(step, m):
        if (step + 1) % log_every == 0:
            stats = r1_recipe.held_out_metrics(m, tok)
            m.train()
            print(f"d={cfg.hidden_size} step {step + 1}:", {k: round(v, 3) for k, v in stats.items()}, flush=True)

    # constant learning rate: a shorter run is a prefix of a longer one, so step counts can be compared
    train_lm(model, get_batch, steps, lr=lr, warmup=50, schedule="constant", desc=f"pretrain d={cfg.hidden_size}",
             callback=callback)
    return model.eval()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", default=str(r1_recipe.CHECKPOINT))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)   # a model this small runs no faster on more threads
    tok = r1_recipe.make_tokenizer()
    t0 = time.perf_counter()
    # the same seed for both: the same initial random stream and the same pretraining data, only the size differs
    teacher = pretrain(r1_recipe.teacher_config(tok.vocab_size), tok, args.steps, args.batch_size, 3e-3, args.seed)
    student = pretrain(r1_recipe.student_config(tok.vocab_size), tok, args.steps, args.batch_size, 3e-3, args.seed)
    print(f"pretraining took {time.perf_counter() - t0:.0f} s")
    for name, m in (("teacher", teacher), ("student", student)):
        print(name, m.num_params(), {k: round(v, 3) for k, v in r1_recipe.held_out_metrics(m, tok).items()})
    r1_recipe.save_base_models(teacher, student, args.out)
    print("saved", args.out)


if __name__ == "__main__":
    main()
