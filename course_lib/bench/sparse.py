"""Benchmark: time per decoded token against context for dense absorbed MLA, DSA, and V4's CSA and HCA blocks.

    python -m course_lib.bench sparse [--contexts 1024,2048,4096,8192,16384,32768] [--heads 8] [--d-model 2048]
                                      [--dsa-topk 2048] [--csa-topk 512] [--threads 1] [--repeat 5] [--record PATH]

Shapes: MLA/DSA with DeepSeek-V3.2's head dimensions (d_h 128, d^R_h 64, d_c 512, d'_c 1536) and V4 blocks with
V4-Flash's (head 512, RoPE 64, q_lora 1024, window 128, m = 4, m' = 128), with a few heads. The indexer keeps the
real models' ratio of indexer to attention work: n_heads / 2 indexer heads of 128 (V3.2: 64 of 128 for 128 heads).
One decode step = one new token after `context` cached tokens; the caches are random tensors of the right shapes.
Dense MLA is the same DSA module with k >= context (it then skips the indexer and runs MLA's absorbed path), so
both use the same weights and the same in-place cache (GrowingCache below): the timing is the attention, not a copy.
The V4 step shown is a typical one (no window completes; one in m steps also pools m tokens, O(m) work).
All variants are timed interleaved, round by round (bench.core.compare), on one thread by default.
"""
from __future__ import annotations

import argparse
import copy
import json
import platform
from pathlib import Path

import torch

from course_lib.kit.device import get_device
from course_lib.dsa import DSA
from course_lib.v4_attention import V4Attention, V4Cache
from course_lib.bench.core import compare, parse_contexts, print_table

class GrowingCache(dict):
    """A cache dict (same keys and shapes as the plain one) that appends in place, for inference.

    Each entry is a view of the first S rows of a buffer with spare room (its capacity doubles when full), so a
    decode step writes one row instead of copying the whole cache as torch.cat does; what an inference engine's
    paged cache achieves. Not for training (the buffers are written in place)."""

    def __init__(self):
        super().__init__()
        self._buffers = {}

    def append(self, key: str, new: torch.Tensor) -> torch.Tensor:
        n = self[key].shape[1] if key in self else 0
        buf = self._buffers.get(key)
        if buf is None or n + new.shape[1] > buf.shape[1]:
            grown = new.new_empty(new.shape[0], max(256, 2 * (n + new.shape[1])), *new.shape[2:])
            if n:
                grown[:, :n] = self[key]
            self._buffers[key] = buf = grown
        buf[:, n:n + new.shape[1]] = new
        self[key] = buf[:, :n + new.shape[1]]
        return self[key]

    def truncate(self, length: int) -> None:
        """Forget everything after the first `length` tokens (the buffers keep their room)."""
        for key in list(self):
            self[key] = self._buffers[key][:, :length]

    def bytes_per_token(self) -> float:
        """Bytes of the live (viewed) part per token and sequence; spare room not counted."""
        t = next(iter(self.values()))
        return sum(v.numel() * v.element_size() for v in self.values()) / (t.shape[0] * t.shape[1])


class InPlaceCacheDSA(DSA):
    """course_lib.dsa.DSA whose decode cache is a GrowingCache (appended in place instead of by torch.cat)."""

    @staticmethod
    def cache_append(cache: GrowingCache, name: str, new: torch.Tensor) -> torch.Tensor:
        if not isinstance(cache, GrowingCache):
            raise TypeError(f"cache must be a GrowingCache, got {type(cache).__name__}")
        return cache.append(name, new)


V32_DIMS = dict(qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128, kv_lora_rank=512, q_lora_rank=1536)
V4_DIMS = dict(head_dim=512, rope_dim=64, q_lora_rank=1024, o_lora_rank=1024, window=128)


def build(d_model: int, n_heads: int, dsa_topk: int, csa_topk: int, device, dtype=torch.float32):
    torch.manual_seed(0)
    dsa = InPlaceCacheDSA(d_model, n_heads, index_topk=dsa_topk, index_n_heads=max(1, n_heads // 2), index_head_dim=128,
              **V32_DIMS).to(device, dtype).eval()
    common = dict(o_groups=2 if n_heads % 2 == 0 else 1, index_n_heads=max(1, n_heads // 2), index_head_dim=128,
                  **V4_DIMS)
    csa = V4Attention(d_model, n_heads, kind="csa", compress_rate=4, index_topk=csa_topk, **common)
    hca = V4Attention(d_model, n_heads, kind="hca", compress_rate=128, **common)
    return dsa, csa.to(device, dtype).eval(), hca.to(device, dtype).eval()


def _r(g, device, dtype, *shape):
    return torch.randn(*shape, generator=g, dtype=dtype).to(device)


def dsa_cache(dsa: DSA, context: int, device, dtype) -> GrowingCache:
    g = torch.Generator().manual_seed(1)
    cache = GrowingCache()
    cache.append("c_kv", _r(g, device, dtype, 1, context, dsa.kv_lora_rank))
    cache.append("k_rope", _r(g, device, dtype, 1, context, dsa.qk_rope_head_dim))
    cache.append("k_index", _r(g, device, dtype, 1, context, dsa.indexer.head_dim))
    return cache


def v4_cache(att: V4Attention, context: int, device, dtype) -> V4Cache:
    """A cache after `context` tokens (context a multiple of m: the buffer is empty)."""
    g = torch.Generator().manual_seed(2)
    m, D = att.compressor.rate, att.head_dim
    cache = V4Cache()
    cache.length = context
    cache.window = _r(g, device, dtype, 1, att.window - 1, D)
    cache.main.entries = _r(g, device, dtype, 1, context // m, D)
    width = 2 * D if att.kind == "csa" else D
    cache.main.buf_kv = cache.main.buf_gate = _r(g, device, dtype, 1, 0, width)
    if att.kind == "csa":
        cache.main.prior_kv, cache.main.prior_gate = _r(g, device, dtype, 1, m, D), _r(g, device, dtype, 1, m, D)
        di = att.indexer.head_dim
        cache.index.entries = _r(g, device, dtype, 1, context // m, di)
        cache.index.buf_kv = cache.index.buf_gate = _r(g, device, dtype, 1, 0, 2 * di)
        cache.index.prior_kv, cache.index.prior_gate = _r(g, device, dtype, 1, m, di), _r(g, device, dtype, 1, m, di)
    return cache


def _fresh(cache: V4Cache) -> V4Cache:
    """A copy whose tensors are shared and whose fields the step may reassign without touching the original."""
    new = copy.copy(cache)
    new.main, new.index = copy.copy(cache.main), copy.copy(cache.index)
    return new


def run(contexts=(1024, 2048, 4096, 8192, 16384, 32768), d_model: int = 2048, n_heads: int = 8,
        dsa_topk: int = 2048, csa_topk: int = 512, repeat: int = 5, device=None, dtype=torch.float32) -> list[dict]:
    device = device or get_device()
    dsa, csa, hca = build(d_model, n_heads, dsa_topk, csa_topk, device, dtype)
    x = torch.randn(1, 1, d_model, generator=torch.Generator().manual_seed(3), dtype=dtype).to(device)
    rows = []
    for context in contexts:
        if context % 128:
            raise ValueError(f"contexts must be multiples of 128 (HCA's m'), got {context}")
        mla_c, dsa_c = dsa_cache(dsa, context, device, dtype), dsa_cache(dsa, context, device, dtype)
        csa_c, hca_c = v4_cache(csa, context, device, dtype), v4_cache(hca, context, device, dtype)

        def dense_step():
            mla_c.truncate(context)
            saved, dsa.index_topk = dsa.index_topk, 10 ** 9
            try:
                return dsa(x, context, mla_c, path="absorbed")
            finally:
                dsa.index_topk = saved

        def dsa_step():
            dsa_c.truncate(context)
            return dsa(x, context, dsa_c, path="absorbed")

        fns = {"MLA absorbed": dense_step, "DSA": dsa_step,
               "CSA": lambda: csa(x, context, _fresh(csa_c)), "HCA": lambda: hca(x, context, _fresh(hca_c))}
        with torch.no_grad():
            times = compare(fns, repeat=repeat, warmup=1, rewarm=1)
        rows.append({"context": context, "seconds": times})
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m course_lib.bench sparse", description=__doc__.split("\n")[0])
    p.add_argument("--contexts", default="1024,2048,4096,8192,16384,32768")
    p.add_argument("--d-model", type=int, default=2048)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--dsa-topk", type=int, default=2048)
    p.add_argument("--csa-topk", type=int, default=512)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--record", default=None, help="write the results as JSON to this path")
    args = p.parse_args(argv)
    contexts = parse_contexts(args.contexts, multiple=128)
    torch.set_num_threads(args.threads)
    device = get_device()
    rows = run(contexts, args.d_model, args.heads, args.dsa_topk, args.csa_topk, args.repeat, device)
    print(f"decode one token, d_model {args.d_model}, {args.heads} heads, float32, {device}, "
          f"{torch.get_num_threads()} threads; DSA k={args.dsa_topk}, CSA k={args.csa_topk}")
    table = []
    for r in rows:
        s = r["seconds"]
        table.append([r["context"]] + [1e3 * s[k] for k in ("MLA absorbed", "DSA", "CSA", "HCA")]
                     + [s["MLA absorbed"] / s["DSA"], s["MLA absorbed"] / s["CSA"], s["MLA absorbed"] / s["HCA"]])
    print_table(table, ["context", "MLA ms", "DSA ms", "CSA ms", "HCA ms", "MLA/DSA", "MLA/CSA", "MLA/HCA"])
    first, last = rows[0]["seconds"], rows[-1]["seconds"]
    growth = {k: last[k] / first[k] for k in first}
    print(f"time at {rows[-1]['context']} / time at {rows[0]['context']}: "
          + ", ".join(f"{k} x{v:.2f}" for k, v in growth.items()))
    if args.record:
        meta = {"command": "python -m course_lib.bench sparse " + " ".join(argv or []), "torch": torch.__version__,
                "device": str(device), "threads": torch.get_num_threads(), "machine": platform.machine(),
                "processor": platform.processor() or "unknown", "d_model": args.d_model, "heads": args.heads,
                "repeat": args.repeat, "dsa_topk": args.dsa_topk, "csa_topk": args.csa_topk}
        path = Path(args.record)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
        print(f"recorded to {path}")
    return 0
