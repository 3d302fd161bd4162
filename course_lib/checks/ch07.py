"""Exercises of 07_sparse_attention: the lightning indexer, top-k selection, a compressed entry, HCA's compressor,
V4's cache at 1M."""
import torch

from course_lib.checks.core import close, register
from course_lib.v4_attention import Compressor, partial_rope


def _g(seed):
    return torch.Generator().manual_seed(seed)


def _r(*shape, seed):
    return torch.randn(*shape, generator=_g(seed), dtype=torch.float64)


@register(cases=[(torch.randn(3, 4, generator=_g(0)), torch.randn(6, 4, generator=_g(1)),
                  torch.rand(3, generator=_g(2))),
                 (torch.randn(2, 8, generator=_g(3)), torch.randn(5, 8, generator=_g(4)),
                  torch.rand(2, generator=_g(5)))],
          hint=("Each head j compares its query q_j with every key, the ReLU drops negative dot products, and the "
                "head weights w_j mix the heads into one score per token.",
                "V3.2 Eq. 1 for one query: I_s = sum_j w_j * ReLU(q_j . k_s).",
                "dots = q @ keys.T  (H, S);  return w @ torch.relu(dots)"),
          wrong=[lambda q, k, w: w @ (q @ k.T),                          # forgot the ReLU
                 lambda q, k, w: torch.relu(w @ (q @ k.T)),              # ReLU after the sum over heads
                 lambda q, k, w: torch.relu(q @ k.T).sum(0)])            # forgot the head weights
def index_scores(q, keys, w):
    # q (H, d): one query's indexer heads, keys (S, d): one key per token, w (H,): the head weights.
    return w @ torch.relu(q @ keys.T)


@register(cases=[(torch.tensor([0.3, 2.0, -1.0, 0.7, 1.5]), 2), (torch.tensor([5.0, 1.0, 4.0, 3.0]), 3),
                 (torch.tensor([0.1, 0.9, 0.4]), 1)],
          hint=("Keep the k tokens with the LARGEST scores, and answer with their positions, not their scores.",
                "V3.2 Eq. 2: the tokens s whose I_s is in Top-k(I); return the positions sorted in increasing order.",
                "return torch.topk(scores, k).indices.sort().values"),
          wrong=[lambda s, k: torch.arange(k),                            # the first k tokens
                 lambda s, k: torch.arange(len(s) - k, len(s)),           # the last k tokens (a sliding window)
                 lambda s, k: s.argsort()[:k].sort().values],             # the smallest scores
          compare=lambda expected, got: torch.equal(torch.as_tensor(got).long(), expected))
def topk_tokens(scores, k):
    # V3.2 Eq. 2's selection for one query, as sorted positions.
    return scores.topk(k).indices.sort().values


@register(cases=[(torch.randn(4, 3, generator=_g(6)), torch.randn(4, 3, generator=_g(7)),
                  torch.randn(4, 3, generator=_g(8))),
                 (torch.randn(2, 5, generator=_g(9)), torch.zeros(2, 5), torch.zeros(2, 5))],
          hint=("The gate logits plus the bias decide how much each of the window's m tokens contributes, "
                "separately for every feature; the weights of one feature sum to 1 over the tokens.",
                "V4 §2.3.1 Eq. 9-12 (CSA) / §2.3.2 Eq. 20-23 (HCA): C^Comp = sum over the window's tokens j of "
                "Softmax_j(Z_j + B_j) * C_j, the softmax over the tokens (dim 0). The RMSNorm comes after: leave "
                "it out.",
                "return (c * torch.softmax(z + b, dim=0)).sum(0)"),
          wrong=[lambda c, z, b: (c * torch.softmax(z + b, dim=1)).sum(0),   # softmax over the features
                 lambda c, z, b: c.mean(0),                                  # a plain average
                 lambda c, z, b: (c * torch.softmax(z, dim=0)).sum(0)])      # forgot the positional bias
def pool_window(c, z, b):
    # c, z, b: (m, d) projections C, gate logits Z and positional bias B of one window's m tokens.
    return (c * torch.softmax(z + b, dim=0)).sum(0)


def _rms(v, eps=1e-6):
    return v * torch.rsqrt(v.pow(2).mean(-1, keepdim=True) + eps)


@register(cases=[(_r(12, 8, seed=10), _r(6, 8, seed=11), _r(6, 8, seed=12), _r(4, 6, seed=13)),
                 (_r(10, 5, seed=14), _r(4, 5, seed=15), _r(4, 5, seed=16), _r(3, 4, seed=17)),    # 1 token left over
                 (_r(8, 6, seed=18), _r(6, 6, seed=19), torch.zeros(6, 6, dtype=torch.float64),
                  torch.zeros(2, 6, dtype=torch.float64))],                                       # equal weights
          hint=("Three steps: project the tokens to C and Z; group them into windows of m = bias.shape[0] tokens "
                "and pool each window as in exercise 3; RMS-normalise each pooled entry.",
                "C = x @ w_kv.T, Z = x @ w_z.T, each (L, c); keep the first (L // m) * m tokens and view them as "
                "(n, m, c); entry_i = sum_j softmax_j(Z_ij + B_j) * C_ij (softmax over the m tokens); then "
                "entry / sqrt(mean(entry^2) + 1e-6) over its c features (V4 §2.3.2 Eq. 20-23, §2.3.3).",
                "m, c = bias.shape; n = len(x) // m\n"
                "   C = (x[:n * m] @ w_kv.T).view(n, m, c); Z = (x[:n * m] @ w_z.T).view(n, m, c) + bias\n"
                "   e = (torch.softmax(Z, dim=1) * C).sum(1)\n"
                "   return e * torch.rsqrt(e.pow(2).mean(-1, keepdim=True) + 1e-6)"),
          wrong=[lambda x, wk, wz, b: _rms(x[:len(x) // len(b) * len(b)].matmul(wk.T)
                                           .view(-1, len(b), wk.shape[0]).mean(1)),                 # a plain mean
                 lambda x, wk, wz, b: _rms((torch.softmax((x[:len(x) // len(b) * len(b)] @ wz.T)
                                                          .view(-1, len(b), wz.shape[0]) + b, dim=2)
                                            * (x[:len(x) // len(b) * len(b)] @ wk.T)
                                            .view(-1, len(b), wk.shape[0])).sum(1)),               # softmax over features
                 lambda x, wk, wz, b: _rms((torch.softmax((x[:len(x) // len(b) * len(b)] @ wz.T)
                                                          .view(-1, len(b), wz.shape[0]), dim=1)
                                            * (x[:len(x) // len(b) * len(b)] @ wk.T)
                                            .view(-1, len(b), wk.shape[0])).sum(1)),               # forgot the bias
                 lambda x, wk, wz, b: (torch.softmax((x[:len(x) // len(b) * len(b)] @ wz.T)
                                                     .view(-1, len(b), wz.shape[0]) + b, dim=1)
                                       * (x[:len(x) // len(b) * len(b)] @ wk.T)
                                       .view(-1, len(b), wk.shape[0])).sum(1)])                    # forgot the RMSNorm
def compress_entries(x, w_kv, w_z, bias):
    # HCA's compressor (V4 §2.3.2) on x (L, d) with course_lib's Compressor and the given weights; its RoPE on the
    # last 2 features is rotated back, so the result is the entries after RMSNorm and before RoPE, (L // m, c).
    m, c = bias.shape
    comp = Compressor(x.shape[1], c, m, overlap=False, rope_dim=2).to(x.dtype)
    with torch.no_grad():
        comp.kv.weight.copy_(w_kv)
        comp.gate.weight.copy_(w_z)
        comp.position_bias.copy_(bias)
        entries = comp(x[None])[0]
        positions = torch.arange(entries.shape[0]) * m
        return partial_rope(entries, 0, 2, comp.rope_base, sign=-1.0, positions=positions)


@register(kind="value",
          hint=("Count, per layer, the entries a 2^20-token sequence leaves in the cache and the bytes of each; "
                "then add up the layers.",
                "Per CSA layer: 2^20 / 4 entries x (448 + 2 * 64 + 128 / 2) bytes (FP8 content, BF16 RoPE, FP4 "
                "indexer key); per HCA layer: 2^20 / 128 entries x (448 + 128) bytes; every layer: 128 window "
                "entries x 576 bytes.",
                "(30 * 2**18 * 640 + 31 * 2**13 * 576 + 61 * 128 * 576) / 1e9"),
          wrong=[49.15, 5.69, 5.54, 2 * 5.18, 0.146],      # 5.69: indexer keys in FP8 instead of FP4
          compare=lambda expected, got: close(expected, got, rtol=1e-2))
def v4_pro_cache_gb_1m():
    csa = 2 ** 20 // 4 * (448 + 2 * 64 + 128 // 2)
    hca = 2 ** 20 // 128 * (448 + 2 * 64)
    window = 128 * (448 + 2 * 64)
    return (30 * csa + 31 * hca + 61 * window) / 1e9


@register(kind="value",
          hint=("A CSA layer's query reads two sources: the indexer's selected compressed entries and the sliding "
                "window. Neither grows with the context.",
                "V4-Flash: index_topk = 512 entries and a window of 128 tokens (config.json, V4 §4.2.1).",
                "512 + 128"),
          wrong=[512, 128, 2048, 2 ** 20 // 4])
def v4_flash_csa_entries_per_query():
    return 512 + 128
