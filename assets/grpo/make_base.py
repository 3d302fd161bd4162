"""Make the base policy of notebook 05: a TinyLM pretrained briefly on the addition task (course_lib.toys.arith).

    python assets/grpo/make_base.py            # writes assets/grpo/base.pt (state_dict) and base.json (config + stats)

The mix is arith.THINK_SHARE scratchpad answers and the rest direct answers. Pretraining is deliberately cut
short: the learning-rate schedule (course_lib.kit.train_loop.lr_at: warm-up, cosine) is planned for --steps, but training
stops at --stop, while direct answers are still mostly wrong and the scratchpad is mostly right -- the model reasons
well when it happens to start a scratchpad, but rarely starts one. (Trained to the end of the schedule, it also
learns to answer directly and there is little left for RL to find.) This takes a few minutes, too long for the
notebook's 2-minute budget on a laptop CPU, so the result is shipped; rerunning the script on CPU with the same
torch version and thread count reproduces the same weights.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent))   # run from a clone without installing the package

from course_lib.toys import arith  # noqa: E402
from course_lib.model import ModelConfig, TinyLM  # noqa: E402
from course_lib.kit.train_loop import lr_at  # noqa: E402

MODEL = arith.BASE_MODEL


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=4000, help="length of the planned learning-rate schedule")
    ap.add_argument("--stop", type=int, default=2000, help="the step at which pretraining stops")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--think-share", type=float, default=arith.THINK_SHARE)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(HERE / "base"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    tok = arith.make_tokenizer()
    cfg = ModelConfig(vocab_size=tok.vocab_size, **MODEL)
    model = TinyLM(cfg)
    rng = random.Random(args.seed)
    # the same optimizer and update as course_lib.kit.train_loop.train_lm, stopped early
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0, betas=(0.9, 0.95))
    t0, losses = time.time(), []
    model.train()
    for step in range(args.stop):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, args.steps, args.lr, warmup=10, schedule="cosine")
        x, y = arith.pretrain_batch(tok, args.batch, rng, args.think_share)
        loss = model(x, y).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        if (step + 1) % 500 == 0:
            print(f"step {step + 1}/{args.stop}  loss {sum(losses[-100:]) / 100:.4f}  {time.time() - t0:.0f} s", flush=True)
    model.eval()
    seconds = time.time() - t0
    stats = arith.held_out_pass_at_1(model, tok)
    forced = {}
    for name, think in (("direct", False), ("scratchpad", True)):
        forced[name] = arith.evaluate_forced(model, tok, think)
    info = {"model": MODEL, "vocab_size": tok.vocab_size, "schedule_steps": args.steps, "stop": args.stop,
            "batch": args.batch, "lr": args.lr, "think_share": args.think_share, "seed": args.seed,
            "threads": args.threads, "final_loss": sum(losses[-100:]) / 100,
            "train_seconds": round(seconds, 1), "held_out": stats, "held_out_forced": forced,
            "torch": torch.__version__}
    torch.save(model.state_dict(), args.out + ".pt")
    Path(args.out + ".json").write_text(json.dumps(info, indent=2) + "\n")
    print(json.dumps(info, indent=2))


if __name__ == "__main__":
    main()
