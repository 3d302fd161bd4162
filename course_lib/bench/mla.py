"""Benchmark: per-token decode latency and KV-cache bytes of MHA, naive MLA and absorbed MLA as the context grows.

    python -m course_lib.bench mla [--contexts 256,512,1024,2048,4096] [--heads 8] [--d-model 2048] [--batch 1]
                                   [--threads 1] [--repeat 5] [--record assets/mla/decode_bench.json]

Shape: DeepSeek-V3's head dimensions (d_h = 128, d^R_h = 64, d_v = 128, d_c = 512, d'_c = 1536; V3 §4.2) with a few
heads. One decode step = one new token attending to a cache of `context` earlier tokens. The caches are filled with
random numbers of the right shape (latency does not depend on their values), so no long prefill is needed.
All variants are timed on the same input, interleaved round by round (bench.core.compare).

Threads default to 1: on a shared 2-core machine, 2 intra-op threads spend most of a short decode step waiting for
each other and the timings become noise; pass --threads on an idle machine.

Our modules append to the cache with torch.cat (a copy of the cache per step): the same for every variant, and
cheap next to the naive path's decompression of the whole cache (n_h (d_h + d_v) d_c multiply-adds per cached token).
"""
from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import torch

from course_lib.mla import MHA, MLA
from course_lib.kit.device import get_device
from course_lib.bench.core import compare, parse_contexts, print_table

V3_HEAD_DIMS = dict(qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128, kv_lora_rank=512, q_lora_rank=1536)


def build(d_model: int, n_heads: int, device, dtype=torch.float32):
    """MHA with d_h = 128 and one MLA (V3 head dims); the MLA serves both paths (same weights)."""
    torch.manual_seed(0)
    mha = MHA(d_model, n_heads, head_dim=V3_HEAD_DIMS["v_head_dim"]).to(device, dtype).eval()
    mla = MLA(d_model, n_heads, **V3_HEAD_DIMS).to(device, dtype).eval()
    return mha, mla


def random_caches(mha: MHA, mla: MLA, batch: int, context: int, device, dtype):
    g = torch.Generator(device="cpu").manual_seed(1)

    def r(*shape):
        return torch.randn(*shape, generator=g, dtype=dtype).to(device)

    kv_shape = (batch, mha.n_kv_heads, context, mha.head_dim)
    return ({"k": r(*kv_shape), "v": r(*kv_shape)},
            {"c_kv": r(batch, context, mla.kv_lora_rank), "k_rope": r(batch, context, mla.qk_rope_head_dim)})


def cache_bytes_per_token(cache: dict, batch: int) -> float:
    """Bytes the cache holds per token (one layer), measured from the tensors themselves."""
    tokens = next(iter(cache.values())).shape[-2] * batch
    return sum(t.numel() * t.element_size() for t in cache.values()) / tokens


def run(contexts=(256, 512, 1024, 2048, 4096), d_model: int = 2048, n_heads: int = 8, batch: int = 1,
        repeat: int = 5, device=None, dtype=torch.float32) -> list[dict]:
    """Decode latency (seconds per token) and cache bytes per token for each context length."""
    device = device or get_device()
    mha, mla = build(d_model, n_heads, device, dtype)
    x = torch.randn(batch, 1, d_model, generator=torch.Generator().manual_seed(2), dtype=dtype).to(device)
    rows = []
    for context in contexts:
        mha_cache, mla_cache = random_caches(mha, mla, batch, context, device, dtype)
        # A fresh shallow copy per call: forward appends to the dict it gets, the stored tensors stay untouched.
        fns = {
            "MHA": lambda: mha(x, start_pos=context, cache=dict(mha_cache)),
            "MLA naive": lambda: mla(x, start_pos=context, cache=dict(mla_cache), path="naive"),
            "MLA absorbed": lambda: mla(x, start_pos=context, cache=dict(mla_cache), path="absorbed"),
        }
        with torch.no_grad():
            # The two paths must agree on this very input before we time them.
            a = fns["MLA naive"]()
            b = fns["MLA absorbed"]()
            if not torch.allclose(a, b, atol=1e-3, rtol=1e-3):
                raise RuntimeError(f"naive and absorbed MLA disagree at context {context}")
            times = compare(fns, repeat=repeat, warmup=1)
        rows.append({"context": context, "seconds": times,
                     "cache_bytes_per_token": {"MHA": cache_bytes_per_token(mha_cache, batch),
                                               "MLA naive": cache_bytes_per_token(mla_cache, batch),
                                               "MLA absorbed": cache_bytes_per_token(mla_cache, batch)}})
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m course_lib.bench mla", description=__doc__.split("\n")[0])
    p.add_argument("--contexts", default="256,512,1024,2048,4096")
    p.add_argument("--d-model", type=int, default=2048)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--record", default=None, help="write the results as JSON to this path")
    args = p.parse_args(argv)
    contexts = parse_contexts(args.contexts)
    torch.set_num_threads(args.threads)
    device = get_device()
    rows = run(contexts, args.d_model, args.heads, args.batch, args.repeat, device)

    dc, dr = V3_HEAD_DIMS["kv_lora_rank"], V3_HEAD_DIMS["qk_rope_head_dim"]
    print(f"decode one token, batch {args.batch}, d_model {args.d_model}, {args.heads} heads, V3 head dims, "
          f"float32, {device}, {torch.get_num_threads()} threads")
    table = []
    for r in rows:
        s = r["seconds"]
        table.append([r["context"], 1e3 * s["MHA"], 1e3 * s["MLA naive"], 1e3 * s["MLA absorbed"],
                      s["MLA naive"] / s["MLA absorbed"], r["cache_bytes_per_token"]["MHA"],
                      r["cache_bytes_per_token"]["MLA absorbed"]])
    print_table(table, ["context", "MHA ms", "naive ms", "absorbed ms", "naive/absorbed", "MHA B/tok",
                        "MLA B/tok"])
    print(f"MLA cache per token per layer: (d_c + d^R_h) * 4 bytes = ({dc} + {dr}) * 4 = {(dc + dr) * 4} bytes")
    if args.record:
        meta = {"command": "python -m course_lib.bench mla " + " ".join(argv or []), "torch": torch.__version__,
                "device": str(device), "threads": torch.get_num_threads(), "machine": platform.machine(),
                "processor": platform.processor() or "unknown", "d_model": args.d_model, "heads": args.heads,
                "batch": args.batch, "repeat": args.repeat, "head_dims": V3_HEAD_DIMS}
        path = Path(args.record)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
        print(f"recorded to {path}")
    return 0
