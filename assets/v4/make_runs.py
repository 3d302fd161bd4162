"""Record the longer runs that notebooks 08 (mHC, Muon) and 09 (hash routing) plot (their live runs are shorter to
stay within CI time).

    python assets/v4/make_runs.py [mhc|muon|hash ...]      (default: all three; about 15 min of CPU on one thread)

* mhc_runs.json: a deep, narrow byte-level LM (course_lib.mhc.StreamLM) trained with a plain residual,
  unconstrained hyper-connections (HC) and mHC; per step: loss, gradient norm before clipping; every 25 steps the
  forward / backward gain of the composed mixing matrices at each depth, on a fixed validation batch.
* muon_runs.json: the course TinyLM trained with AdamW and with Muon (V4's hybrid Newton-Schulz), after a short
  learning-rate sweep for each; per step: loss and wall / CPU time.
* hash_runs.json: a TinyLM with MoE feed-forward layers, learned top-k routing everywhere vs hash routing in the
  first two layers; per step: loss and each layer's expert load.
Everything is seeded; the course corpus (assets/corpus) is the data.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent))

from course_lib import hash_routing, mhc, muon  # noqa: E402
from course_lib.toys.corpus import Corpus  # noqa: E402
from course_lib.model import ModelConfig, TinyLM  # noqa: E402
from course_lib.moe import max_violation  # noqa: E402
from course_lib.kit.train_loop import lr_at  # noqa: E402

MHC = dict(hidden_size=32, num_hidden_layers=24, num_attention_heads=4, n_streams=4, sinkhorn_iters=20, batch=8,
           seq=32, steps=200, lr=3e-3)
MUON = dict(hidden_size=64, num_hidden_layers=4, num_attention_heads=4, batch=8, seq=64, steps=300, sweep_steps=100,
            adamw_lrs=[1e-3, 3e-3, 1e-2], muon_lrs=[3e-3, 1e-2, 3e-2])
HASH = dict(hidden_size=64, num_hidden_layers=4, num_attention_heads=4, batch=8, seq=64, steps=300, lr=3e-3,
            n_experts=8, top_k=2, n_hash_layers=2)


def run_mhc(corpus):
    out = {"config": MHC, "runs": {}}
    val_x, _ = corpus.get_batch("val", 4, MHC["seq"], generator=torch.Generator().manual_seed(123))
    for residual in mhc.RESIDUALS:
        torch.manual_seed(0)
        model = mhc.StreamLM(256, MHC["hidden_size"], MHC["num_hidden_layers"], MHC["num_attention_heads"], residual,
                             MHC["n_streams"], MHC["sinkhorn_iters"])
        opt = torch.optim.AdamW(model.parameters(), lr=MHC["lr"], betas=(0.9, 0.95))
        g = torch.Generator().manual_seed(0)
        rec = {"loss": [], "grad_norm": [], "gain_steps": [], "fwd_gain": [], "bwd_gain": []}
        t0 = time.time()
        for step in range(MHC["steps"] + 1):
            if residual != "plain" and step % 25 == 0:
                with torch.no_grad():
                    model(val_x)
                fwd, bwd = mhc.composite_gains(mhc.mixing_matrices(model))
                rec["gain_steps"].append(step)
                rec["fwd_gain"].append(fwd.tolist())
                rec["bwd_gain"].append(bwd.tolist())
            if step == MHC["steps"]:
                break
            for group in opt.param_groups:
                group["lr"] = lr_at(step, MHC["steps"], MHC["lr"], warmup=10)
            x, y = corpus.get_batch("train", MHC["batch"], MHC["seq"], generator=g)
            _, loss = model(x, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            rec["grad_norm"].append(float(torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)))
            opt.step()
            rec["loss"].append(loss.item())
        rec["seconds"] = time.time() - t0
        print(f"mhc {residual}: final loss {sum(rec['loss'][-20:]) / 20:.3f} in {rec['seconds']:.0f} s", flush=True)
        out["runs"][residual] = rec
    return out


def tiny_lm(cfg, **extra):
    return TinyLM(ModelConfig(vocab_size=256, hidden_size=cfg["hidden_size"],
                              num_hidden_layers=cfg["num_hidden_layers"],
                              num_attention_heads=cfg["num_attention_heads"], max_position_embeddings=cfg["seq"],
                              **extra))


def train(model, corpus, cfg, steps, make_opt, lr, seed=0):
    torch.manual_seed(seed)
    opt = make_opt(model, lr)
    base_lrs = [grp["lr"] for grp in opt.param_groups]
    g = torch.Generator().manual_seed(seed)
    rec = {"loss": [], "wall": [], "cpu": []}
    w0, c0 = time.perf_counter(), time.process_time()
    for step in range(steps):
        for grp, base in zip(opt.param_groups, base_lrs):
            grp["lr"] = lr_at(step, steps, base, warmup=10)
        x, y = corpus.get_batch("train", cfg["batch"], cfg["seq"], generator=g)
        out = model(x, y)
        loss = out.loss + out.aux_loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        rec["loss"].append(out.loss.item())
        rec["wall"].append(time.perf_counter() - w0)
        rec["cpu"].append(time.process_time() - c0)
    return rec


OPTS = {
    "adamw": lambda m, lr: torch.optim.AdamW(m.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.1),
    "muon": lambda m, lr: muon.MuonAdamW.for_model(m, lr=lr, weight_decay=0.1),
}


def run_muon(corpus):
    out = {"config": MUON, "sweep": {}, "runs": {}}
    for name, lrs in (("adamw", MUON["adamw_lrs"]), ("muon", MUON["muon_lrs"])):
        finals = {}
        for lr in lrs:
            torch.manual_seed(0)
            rec = train(tiny_lm(MUON), corpus, MUON, MUON["sweep_steps"], OPTS[name], lr)
            finals[lr] = sum(rec["loss"][-20:]) / 20
            print(f"muon sweep {name} lr={lr}: {finals[lr]:.3f}", flush=True)
        out["sweep"][name] = {str(k): v for k, v in finals.items()}
        best = min(finals, key=finals.get)
        torch.manual_seed(0)
        rec = train(tiny_lm(MUON), corpus, MUON, MUON["steps"], OPTS[name], best)
        rec["lr"] = best
        out["runs"][name] = rec
        print(f"muon {name} lr={best}: final {sum(rec['loss'][-20:]) / 20:.3f} in {rec['wall'][-1]:.0f} s", flush=True)
    return out


def run_hash(corpus):
    out = {"config": HASH, "runs": {}}
    moe = dict(n_routed_experts=HASH["n_experts"], n_shared_experts=1, num_experts_per_tok=HASH["top_k"],
               bias_update_speed=0.001)
    for name in ("learned", "hash"):
        torch.manual_seed(0)
        base = tiny_lm(HASH, ffn="moe", moe=moe)
        model = base if name == "learned" else hash_routing.use_hash_routing(
            base, HASH["n_hash_layers"], n_routed_experts=HASH["n_experts"], num_experts_per_tok=HASH["top_k"],
            score_func="sigmoid")
        loads = [[] for _ in base.blocks]

        def log(step, m):
            for i, b in enumerate(base.blocks):
                loads[i].append(max_violation(b.ffn.last_load))
            for b in base.blocks:
                if hasattr(b.ffn, "update_bias"):
                    b.ffn.update_bias()

        torch.manual_seed(0)
        opt = torch.optim.AdamW(model.parameters(), lr=HASH["lr"], betas=(0.9, 0.95))
        g = torch.Generator().manual_seed(0)
        rec = {"loss": []}
        for step in range(HASH["steps"]):
            for grp in opt.param_groups:
                grp["lr"] = lr_at(step, HASH["steps"], HASH["lr"], warmup=10)
            x, y = corpus.get_batch("train", HASH["batch"], HASH["seq"], generator=g)
            o = model(x, y)
            opt.zero_grad(set_to_none=True)
            (o.loss + o.aux_loss).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            log(step, model)
            rec["loss"].append(o.loss.item())
        rec["maxvio"] = loads
        out["runs"][name] = rec
        print(f"hash {name}: final {sum(rec['loss'][-20:]) / 20:.3f}", flush=True)
    return out


def main(argv):
    torch.set_num_threads(1)
    corpus = Corpus()
    for part in argv or ["mhc", "muon", "hash"]:
        result = {"mhc": run_mhc, "muon": run_muon, "hash": run_hash}[part](corpus)
        (HERE / f"{part}_runs.json").write_text(json.dumps(result))
        print("wrote", HERE / f"{part}_runs.json", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
