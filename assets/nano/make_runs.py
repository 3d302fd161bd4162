"""Recorded runs for notebook 10 (nano-DeepSeek): the three arms, the three ablations, the V4-style variant
(course_lib.nano.v4) and the 8-layer nano-deep (for the decoding speed-up of §5), longer than the notebook can
afford. Writes assets/nano/runs/<name>.json and, for nano and nano_deep, the trained model in transformers' layout
(assets/nano/nano_tiny/ and assets/nano/nano_deep/: config.json + model.safetensors, read with
course_lib.nano.export.from_transformers).

    python assets/nano/make_runs.py                      # all runs (defaults below), one CPU thread each
    python assets/nano/make_runs.py nano mha --steps 800 # some of them
"""
import argparse
import json
import math
import time
from pathlib import Path

import torch

from course_lib import nano
from course_lib.nano import export as nano_export, v4 as nano_v4, train as train_v3
from course_lib.toys.corpus import Corpus
from course_lib.moe import max_violation, moe_layers

HERE = Path(__file__).resolve().parent
ARMS = {
    "nano": nano.TINY,                                                      # MLA + DeepSeekMoE (aux-loss-free) + MTP
    "dense_iso_flop": nano.dense_baseline(nano.TINY, "activated"),          # same activated parameters per token
    "dense_iso_param": nano.dense_baseline(nano.TINY, "total"),             # same total parameters
    "mha": nano.TINY.replace(name="MHA instead of MLA", attention="mha"),
    "no_mtp": nano.TINY.replace(name="without MTP", num_nextn_predict_layers=0),
    "aux_loss": nano.TINY.replace(name="aux loss instead of aux-loss-free", bias_update_speed=0.0,
                                  seq_aux_loss_alpha=0.0, aux_loss_alpha=0.003),   # V2 §3.1.2: alpha_1 = 0.003
    "nano_v4": nano_v4.TINY_V4,                 # mHC streams + V4 sliding/CSA/HCA attention, the same MoE, no MTP
    "nano_deep": nano.DEEP,                     # nano with 8 layers: cheap MTP drafts relative to a step (§5)
}
EXPORTS = {"nano": "nano_tiny", "nano_deep": "nano_deep"}    # arms whose trained model is shipped, and where


@torch.no_grad()
def measure(model, corpus, seq_len, batches=8):
    """Validation loss per domain (main model) and the MaxVio of the expert loads over those batches."""
    lm = nano.main_model(model).eval()
    per_domain, loads = {}, None
    for d in corpus.domains:
        losses = []
        for i in range(batches):
            x, y = corpus.get_batch("val", 16, seq_len, generator=torch.Generator().manual_seed(10_000 + i), domain=d)
            losses.append(lm(x, y).loss.item())
            step = [m.last_load.clone() for m in moe_layers(lm)]
            loads = step if loads is None else [a + b for a, b in zip(loads, step)]
        per_domain[d] = sum(losses) / len(losses)
    maxvio = sum(max_violation(l) for l in loads) / len(loads) if loads else None
    return per_domain, maxvio


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("names", nargs="*", default=list(ARMS))
    p.add_argument("--steps", type=int, default=800)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    corpus = Corpus()
    (HERE / "runs").mkdir(exist_ok=True)
    for name in a.names:
        cfg = ARMS[name]
        model = None
        if isinstance(cfg, nano_v4.NanoV4Config):     # not a NanoConfig: built here from the seed train() would use
            torch.manual_seed(0)
            model = nano_v4.build_model(cfg)
        t0 = time.time()
        model, hist = train_v3.train(cfg, a.steps, corpus=corpus, batch_size=a.batch_size, seq_len=a.seq_len,
                                     eval_every=25, eval_batches=8, desc=name, model=model)
        seconds = time.time() - t0
        per_domain, maxvio = measure(model, corpus, a.seq_len)
        total = sum(p.numel() for p in nano.main_model(model).parameters())
        record = dict(name=name, label=cfg.name, config=cfg.to_dict(), steps=a.steps, batch_size=a.batch_size,
                      seq_len=a.seq_len, threads=a.threads, torch=torch.__version__, train_seconds=round(seconds, 1),
                      params_main=total, activated_per_token=train_v3.activated_params(model),
                      val_loss_by_domain=per_domain, maxvio=maxvio,
                      history={k: hist[k] for k in ("val_step", "val_loss", "val_flops", "flops_per_token",
                                                    "tokens_per_step")},
                      train_loss_every_25=[sum(hist["main_loss"][i:i + 25]) / 25
                                           for i in range(0, len(hist["main_loss"]), 25)])
        (HERE / "runs" / f"{name}.json").write_text(json.dumps(record, indent=1))
        print(f"{name}: val {hist['val_loss'][-1]:.4f} ({math.exp(hist['val_loss'][-1]):.3f} ppl/byte), "
              f"maxvio {maxvio}, {seconds:.0f} s")
        if name in EXPORTS:
            nano_export.to_transformers(model, HERE / EXPORTS[name], cfg)


if __name__ == "__main__":
    main()
