"""Train the small MTP model that notebook 04 and `python -m course_lib.bench mtp` use for speculative decoding.

    python assets/mtp/make_checkpoint.py            # writes assets/mtp/mtp_tiny.pt and assets/mtp/mtp_tiny.json

A TinyLM (byte-level, 8 layers, hidden_size 64) with one MTP module (V3 §2.2, D = 1), trained on the course corpus
(assets/corpus) with V3's two-stage lambda (0.3, then 0.1 for the last third; V3 §4.2). The main model is deeper
than the notebook's quick models on purpose: the MTP module costs one block, so the deeper the main model, the
cheaper each draft is relative to a main forward pass (V3: 1 MTP block on 61 layers).
Weights are stored in float16 to keep the file small and loaded back as float32 (`load_checkpoint`).
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
CONFIG = dict(vocab_size=256, hidden_size=64, num_hidden_layers=8, num_attention_heads=4,
              max_position_embeddings=256)


def main(argv=None):
    from course_lib.toys.corpus import Corpus
    from course_lib.kit.device import seed_everything
    from course_lib.model import ModelConfig, TinyLM
    from course_lib.mtp import MTPModel, train_mtp

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--hidden-size", type=int, default=CONFIG["hidden_size"])
    p.add_argument("--layers", type=int, default=CONFIG["num_hidden_layers"])
    p.add_argument("--out", default=str(HERE / "mtp_tiny"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    seed_everything(0)
    corpus = Corpus()

    def get_batch(step):
        return corpus.get_batch("train", args.batch, args.seq_len, generator=torch.Generator().manual_seed(step))

    config = dict(CONFIG, hidden_size=args.hidden_size, num_hidden_layers=args.layers)
    model = MTPModel(TinyLM(ModelConfig(**config)), depth=1)
    t0 = time.time()
    hist = train_mtp(model, get_batch, args.steps, lr=args.lr)
    seconds = time.time() - t0
    g = torch.Generator().manual_seed(1234)
    val = [corpus.get_batch("val", 32, args.seq_len, generator=g) for _ in range(8)]
    model.eval()
    with torch.no_grad():
        outs = [model(x, y) for x, y in val]
    meta = {
        "config": config, "mtp_depth": 1, "steps": args.steps, "batch": args.batch, "seq_len": args.seq_len,
        "lr": args.lr, "lambda": [0.3, 0.1], "threads": args.threads, "train_seconds": round(seconds, 1),
        "val_main_loss": round(sum(o.main_loss.item() for o in outs) / len(outs), 4),
        "val_mtp_loss": round(sum(o.mtp_losses[0].item() for o in outs) / len(outs), 4),
        "final_train_loss": round(sum(hist["main_loss"][-20:]) / len(hist["main_loss"][-20:]), 4),
        "torch": torch.__version__, "python": platform.python_version(),
    }
    state = {k: v.half() if v.is_floating_point() else v for k, v in model.state_dict().items()
             if not k.split(".")[-2] in ("embed", "head") or k.startswith("model.")}
    torch.save(state, args.out + ".pt")
    Path(args.out + ".json").write_text(json.dumps(meta, indent=2) + "\n")
    print(json.dumps(meta, indent=2))


if __name__ == "__main__":
    main()
