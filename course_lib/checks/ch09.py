"""Exercises of 09_routing_memory: the hash router (build it), an Engram n-gram hash, the Engram gate (build it),
Engram's rows per token."""
import math

import torch
import torch.nn.functional as F

from course_lib import engram, hash_routing
from course_lib.checks.core import register

_g9 = torch.Generator().manual_seed(9)


# ---------------------------------------------------------------- hash routing (section 1)
def _router_cases():
    out = []
    for n_tok, d, vocab, E, k in ((4, 8, 5, 4, 2), (10, 16, 50, 8, 2), (7, 6, 20, 6, 3)):
        table = hash_routing.hash_table(vocab, E, k, seed=n_tok)
        out.append((torch.randn(n_tok, d, generator=_g9), torch.randn(E, d, generator=_g9) / d ** 0.5, table,
                    torch.randint(0, vocab, (n_tok,), generator=_g9)))
    return out


def _router_softmax(x, w, table, ids):       # wrong: softmax affinities (V2), not V4's sqrt(softplus)
    idx = table[ids]
    s = torch.softmax(x @ w.T, -1).gather(1, idx)
    return s / s.sum(-1, keepdim=True), idx


def _router_learned(x, w, table, ids):       # wrong: a learned top-k choice, ignoring the table
    s = F.softplus(x @ w.T).sqrt()
    val, idx = s.topk(table.shape[1], dim=-1)
    return val / val.sum(-1, keepdim=True), idx


def _router_unnormalised(x, w, table, ids):  # wrong: forgot to normalise over the chosen experts
    idx = table[ids]
    return F.softplus(x @ w.T).sqrt().gather(1, idx), idx


@register(cases=_router_cases(),
          hint=("The experts come from the table alone; only their weights use the hidden state.",
                "E_t = tid2eid[id_t];  s = sqrt(softplus(x W^T));  g = s[E_t] / sum of s[E_t] (V4 §2.1).",
                "idx = table[input_ids]; s = F.softplus(x @ gate_weight.T).sqrt().gather(1, idx); "
                "return s / s.sum(-1, keepdim=True), idx"),
          wrong=[_router_softmax, _router_learned, _router_unnormalised])
def hash_router(x, gate_weight, table, input_ids):
    """Build the module: V4's hash router. x (N, d), gate_weight (E, d), table (vocab, k), input_ids (N,)
    -> (weights (N, k), experts (N, k)), as course_lib.hash_routing.HashMoE.router computes them."""
    E, d = gate_weight.shape
    layer = hash_routing.HashMoE(d, table.shape[0], E, num_experts_per_tok=table.shape[1], table=table)
    with torch.no_grad():
        layer.gate.weight.copy_(gate_weight)
    weights, indices, _ = layer.router(x, input_ids)
    return weights.detach(), indices


# ---------------------------------------------------------------- Engram (section 2)
_g9 = torch.Generator().manual_seed(9)

_HASH_CASES = [
    (torch.tensor([115, 101, 108]), torch.tensor([3, 5]), 7, 2),            # the notebook's hand case
    (torch.tensor([115, 101, 108]), torch.tensor([3, 5]), 11, 2),
    (torch.tensor([5, 9, 2, 7, 7, 1]), torch.tensor([7, 11, 13]), 101, 3),
    (torch.randint(0, 256, (20,), generator=_g9), torch.tensor([2 ** 40 + 1, 2 ** 33 + 3, 2 ** 35 + 5]), 1_000_003, 3),
    (torch.tensor([4]), torch.tensor([3, 5, 9]), 13, 3),                     # shorter than the n-gram: padding only
]


def _hash_sum(ids, m, p, n):        # wrong: adds the products instead of XOR
    out = ids * m[0]
    for k in range(1, n):
        out = out + torch.cat([ids.new_zeros(k), ids[:-k] if k < len(ids) else ids[:0]])[:len(ids)] * m[k]
    return out % p


def _hash_unshifted(ids, m, p, n):  # wrong: every factor is the current token
    out = ids * m[0]
    for k in range(1, n):
        out = out ^ (ids * m[k])
    return out % p


def _hash_swapped(ids, m, p, n):    # wrong: multipliers applied to the tokens in the opposite order
    return engram_ngram_hash.reference(ids, m.flip(0)[-n:] if len(m) >= n else m, p, n)


@register(cases=_HASH_CASES,
          hint=("The token k places back is the ids shifted right by k, with 0 in front; multiply, XOR, then mod.",
                "mix_t = XOR_{k<n} ids[t-k] * m[k] (ids[t-k] = 0 before the start); row = mix_t mod prime "
                "(Engram, arXiv 2601.07372, §2.2).",
                "prev_k = torch.cat([ids.new_zeros(k), ids[:-k]]); mix = ids * m[0], then mix = mix ^ (prev_k * m[k]) "
                "for k = 1..n-1; return mix % prime"),
          wrong=[_hash_sum, _hash_unshifted, _hash_swapped])
def engram_ngram_hash(ids, multipliers, prime, n):
    """Engram (arXiv 2601.07372, §2.2; official demo): multiplicative-XOR hash of the n-gram ending at each
    position."""
    T = len(ids)
    mix = ids * multipliers[0]
    for k in range(1, n):
        prev = torch.cat([ids.new_zeros(min(k, T)), ids[:max(T - k, 0)]])
        mix = torch.bitwise_xor(mix, prev * multipliers[k])
    return torch.remainder(mix, prime)


def _gate_cases():
    out = []
    for T, d, d_e in ((3, 4, 6), (8, 16, 32), (5, 8, 12)):
        out.append((torch.randn(T, d, generator=_g9), torch.randn(T, d_e, generator=_g9),
                    torch.randn(d, d_e, generator=_g9) / d_e ** 0.5, torch.randn(d, generator=_g9) * 0.1,
                    torch.randn(d, d_e, generator=_g9) / d_e ** 0.5, torch.randn(d, generator=_g9) * 0.1))
    return out


def _rms(x):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)


def _gate_no_sqrt(h, e, wk, bk, wv, bv):     # wrong: no signed square root before the sigmoid
    s = (_rms(e @ wk.T + bk) * _rms(h)).sum(-1, keepdim=True) / math.sqrt(h.shape[-1])
    return torch.sigmoid(s) * (e @ wv.T + bv)


def _gate_no_norm(h, e, wk, bk, wv, bv):     # wrong: no RMSNorm on key and query
    s = ((e @ wk.T + bk) * h).sum(-1, keepdim=True) / math.sqrt(h.shape[-1])
    return torch.sigmoid(s.sign() * s.abs().sqrt()) * (e @ wv.T + bv)


def _gate_ungated(h, e, wk, bk, wv, bv):     # wrong: the value without its gate
    return e @ wv.T + bv


@register(cases=_gate_cases(),
          hint=("Key from the memory, query from the hidden state; both RMS-normalised; one scalar gate per token.",
                "s = RMSNorm(h) . RMSNorm(W_k e + b_k) / sqrt(d);  alpha = sigmoid(sign(s) sqrt(|s|));  "
                "out = alpha (W_v e + b_v) (Engram §2.3, the official demo's signed square root).",
                "k = rms(e @ w_k.T + b_k); q = rms(hidden); s = (k * q).sum(-1, keepdim=True) / math.sqrt(d); "
                "alpha = torch.sigmoid(s.sign() * s.abs().sqrt()); return alpha * (e @ w_v.T + b_v), "
                "with rms(x) = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)"),
          wrong=[_gate_no_sqrt, _gate_no_norm, _gate_ungated])
def engram_gate(hidden, e, w_k, b_k, w_v, b_v):
    """Build the module: Engram's gated value alpha_t * (W_v e_t + b_v) for hidden (T, d) and memory rows e (T, d_e),
    as course_lib.engram.Engram (short_conv=False) computes it from the same weights."""
    d, d_e = w_k.shape
    m = engram.Engram(d_model=d, vocab_size=8, table_size=8, max_ngram=2, n_heads=1, d_mem=d_e, short_conv=False)
    with torch.no_grad():
        m.key_projs[0].weight.copy_(w_k)
        m.key_projs[0].bias.copy_(b_k)
        m.value_proj.weight.copy_(w_v)
        m.value_proj.bias.copy_(b_v)
        alpha = m.gates(hidden[None, :, None], e[None])[0, :, 0]         # (T, 1)
        return alpha * m.value_proj(e)


@register(kind="value", hint=("Every (n-gram order, hash head) pair reads one row.",
                              "Orders 2 and 3 are 2 orders, times 8 heads per order."),
          wrong=[8, 24, 2, 646_400])
def engram_rows_per_token():
    """Rows one Engram layer gathers per token in the official demo: (max_ngram - 1) * n_heads = 2 * 8."""
    return 16
