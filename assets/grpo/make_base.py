"""Make the base policy of notebook 05: a TinyLM pretrained briefly on the addition task (course_lib.arith).

    python assets/grpo/make_base.py            # writes assets/grpo/base.pt (state_dict) and base.json (config + stats)

The mix is arith.THINK_SHARE scratchpad answers and the rest direct answers; pretraining is deliberately short, so
the model reasons correctly when it happens to start a scratchpad but rarely starts one. It is too slow for the
notebook's 2-minute budget on a laptop CPU, so its result is shipped; rerunning this script on CPU with the same
torch version and thread count gives the same file.
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

from course_lib import arith  # noqa: E402
from course_lib.model import ModelConfig, TinyLM  # noqa: E402
from course_lib.train import train_lm  # noqa: E402

MODEL = arith.BASE_MODEL


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--think-share", type=float, default=arith.THINK_SHARE)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(HERE / "base"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    tok = arith.make_tokenizer()
    cfg = ModelConfig(vocab_size=tok.vocab_size, **MODEL)
    model = TinyLM(cfg)
    rng = random.Random(args.seed)
    t0 = time.time()
    hist = train_lm(model, lambda step: arith.pretrain_batch(tok, args.batch, rng, args.think_share), args.steps,
                    lr=args.lr, desc="pretraining the base policy")
    seconds = time.time() - t0
    stats = arith.evaluate(model, tok)
    forced = {}
    for name, think in (("direct", False), ("scratchpad", True)):
        forced[name] = arith.evaluate_forced(model, tok, think)
    info = {"model": MODEL, "vocab_size": tok.vocab_size, "steps": args.steps, "batch": args.batch, "lr": args.lr,
            "think_share": args.think_share, "seed": args.seed, "final_loss": sum(hist["loss"][-50:]) / 50,
            "train_seconds": round(seconds, 1), "held_out": stats, "held_out_forced": forced,
            "torch": torch.__version__}
    torch.save(model.state_dict(), args.out + ".pt")
    Path(args.out + ".json").write_text(json.dumps(info, indent=2) + "\n")
    print(json.dumps(info, indent=2))


if __name__ == "__main__":
    main()
