"""Exercises of 13_after_v4: DSpark's confident prefix and Markov-corrected draft, CSA2's hierarchical top-k, and
V4.1-Flash's shared cache."""
import torch

from course_lib.checks.core import close, register
from course_lib.csa2 import V41_FLASH, cache_bytes, candidate_blocks, select_topk
from course_lib.dspark import MarkovHead, confident_prefix


def _g(seed):
    return torch.Generator().manual_seed(seed)


def _logit(p):
    p = torch.tensor(p, dtype=torch.float64)
    return torch.log(p / (1 - p))


# ------------------------------------------------------------------------------------------ DSpark: confident prefix
@register(cases=[(_logit([0.9, 0.6, 0.3, 0.8]), 0.5), (_logit([0.9, 0.6, 0.3, 0.8]), 0.0),
                 (_logit([0.4, 0.9, 0.9, 0.9]), 0.5), (_logit([0.8, 0.7, 0.9, 0.6, 0.95]), 0.65),
                 (torch.randn(7, generator=_g(1), dtype=torch.float64) * 2, 0.3),
                 (torch.randn(7, generator=_g(2), dtype=torch.float64) * 2 + 1, 0.6),
                 (torch.full((5,), 3.0, dtype=torch.float64), 0.5)],
          hint=("The confidence head gives logits; turn them into probabilities c_k first. Then walk along the "
                "block and stop at the first slot that is not confident enough: everything before it is verified.",
                "c_k = sigmoid(logit_k); the verification length is the number of slots before the first k with "
                "c_k < threshold (the whole block, gamma, if there is none; threshold 0 keeps the whole block).",
                "low = (conf_logits.sigmoid() < threshold).nonzero()\n"
                "   return int(low[0, 0]) if len(low) else conf_logits.shape[-1]"),
          wrong=[lambda c, t: int((c.sigmoid() >= t).sum()),                 # counts confident slots anywhere
                 lambda c, t: next((i for i, v in enumerate(c.tolist()) if v < t), len(c)),   # logits, not c_k
                 lambda c, t: next((i + 1 for i, v in enumerate(c.sigmoid().tolist()) if v < t), len(c)),
                 lambda c, t: len(c)])                                        # always the whole block
def confident_prefix_length(conf_logits, threshold):
    # DeepSpec draft_ops.py _confident_prefix_length, as course_lib.dspark.confident_prefix
    return confident_prefix(conf_logits, threshold)


# ------------------------------------------------------------------------------------------ DSpark: Markov head
def _markov_case(seed, gamma, V, r):
    g = _g(seed)
    return (torch.randn(gamma, V, generator=g, dtype=torch.float64), torch.randn(V, r, generator=g, dtype=torch.float64),
            torch.randn(r, V, generator=g, dtype=torch.float64) * 2, int(torch.randint(0, V, (1,), generator=g)))


def _no_update(base, w1, w2, first):
    return (base + w1[first] @ w2).argmax(-1)


@register(cases=[_markov_case(3, 4, 6, 2), _markov_case(4, 5, 8, 3), _markov_case(5, 7, 10, 4),
                 _markov_case(6, 3, 5, 2)],
          hint=("The draft's parallel pass gives base logits U_k for every slot at once; the Markov head adds, slot "
                "by slot from left to right, a bias that depends on the token chosen at the slot before.",
                "DSpark paper Eq. 4-5: at slot k, logits_k = U_k + W1[x_{k-1}] W2 and x_k = argmax(logits_k), with "
                "x_0 = first_prev (the anchor token) for the first slot.",
                "prev, out = first_prev, []\n"
                "   for k in range(len(base_logits)):\n"
                "       prev = int((base_logits[k] + w1[prev] @ w2).argmax())\n"
                "       out.append(prev)\n"
                "   return torch.tensor(out)"),
          wrong=[lambda base, w1, w2, first: base.argmax(-1),                 # no Markov bias: a parallel draft
                 _no_update,                                                  # the anchor's bias at every slot
                 lambda base, w1, w2, first: (base + (w2.T @ w1.T)[:, first]).argmax(-1)],   # same, transposed
          compare=lambda expected, got: torch.equal(torch.as_tensor(got).long().flatten(), expected))
def markov_draft(base_logits, w1, w2, first_prev):
    # base_logits (gamma, V), w1 (V, r), w2 (r, V): B(x, .) = W1[x] W2 (paper Eq. 5); course_lib.dspark.MarkovHead
    head = MarkovHead(w1.shape[0], w1.shape[1]).to(w1.dtype)
    with torch.no_grad():
        head.w1.weight.copy_(w1)
        head.w2.weight.copy_(w2.T)
        toks, _ = head.greedy(base_logits[None], torch.tensor([first_prev]))
    return toks[0]


# ------------------------------------------------------------------------------------------ CSA2: hierarchical top-k
def _scores(seed, P, visible):
    s = torch.randn(P, generator=_g(seed), dtype=torch.float64)
    s[visible:] = float("-inf")
    return s


_HAND = torch.tensor([5.0, 0.0, 0.0, 0.0, 1.0, 9.0, 2.0, 0.0, 0.0, 3.0, 0.0, 0.0, float("-inf"), float("-inf")],
                     dtype=torch.float64)


@register(cases=[(_HAND, 2, 4, 2), (_scores(7, 24, 24), 2, 4, 3), (_scores(8, 30, 27), 3, 3, 4),
                 (_scores(9, 16, 10), 1, 4, 6), (_scores(10, 40, 37), 2, 8, 5)],
          hint=("Two levels: first keep a few whole blocks of block_size consecutive vectors (each block scores "
                "its best vector, and the block holding the newest visible vector is always kept), then take the "
                "k best vectors inside the kept blocks.",
                "Block b's score = max of scores[b*block_size:(b+1)*block_size]; the block of the last finite score "
                "gets +inf; keep the n_blocks best blocks; mask everything else to -inf; return the positions of the "
                "k largest, sorted increasing, with -1 for each slot that finds no finite score.",
                "P = len(scores); nb = -(-P // block_size)\n"
                "   blocks = torch.full((nb * block_size,), float('-inf'), dtype=scores.dtype); blocks[:P] = scores\n"
                "   blocks = blocks.view(nb, block_size).amax(-1)\n"
                "   blocks[int(torch.isfinite(scores).nonzero().max()) // block_size] = float('inf')\n"
                "   keep = torch.zeros(P, dtype=torch.bool)\n"
                "   for b in blocks.topk(min(n_blocks, nb)).indices.tolist(): keep[b * block_size:(b + 1) * block_size] = True\n"
                "   s = scores.masked_fill(~keep, float('-inf')); idx = s.topk(min(k, P)).indices.sort().values\n"
                "   return torch.where(torch.isfinite(s[idx]), idx, -1)"),
          wrong=[lambda s, nb, bs, k: select_topk(s[None], k)[0],             # one level: no candidate blocks
                 lambda s, nb, bs, k: select_topk(s[None], k, _mean_blocks(s, nb, bs))[0],   # blocks by their mean
                 lambda s, nb, bs, k: select_topk(s[None], k, _no_newest(s, nb, bs))[0],     # newest block not forced
                 lambda s, nb, bs, k: s.topk(k).indices],                     # unsorted, no -1
          compare=lambda expected, got: torch.equal(torch.as_tensor(got).long().flatten(), expected))
def hierarchical_topk(scores, n_blocks, block_size, k):
    # One query over P compressed vectors (ratio 1; -inf where not yet visible): layers.py select_candidate_blocks,
    # then the indexer's top-k inside the candidates (course_lib.csa2.candidate_blocks, select_topk).
    newest = torch.isfinite(scores).nonzero().max()
    keep = candidate_blocks(scores[None], n_blocks, block_size, 1, positions=newest[None])
    return select_topk(scores[None], k, keep)[0]


def _block_keep(score_per_block, scores, n_blocks, block_size):
    top = score_per_block.topk(min(n_blocks, len(score_per_block))).indices
    keep = torch.zeros(len(score_per_block), dtype=torch.bool)
    keep[top] = True
    return (keep.repeat_interleave(block_size)[:len(scores)] & torch.isfinite(scores))[None]


def _mean_blocks(scores, n_blocks, block_size):
    P = len(scores)
    padded = torch.cat([scores.nan_to_num(neginf=0.0), scores.new_zeros(-P % block_size)]).view(-1, block_size)
    per_block = padded.mean(-1)
    per_block[int(torch.isfinite(scores).nonzero().max()) // block_size] = float("inf")
    return _block_keep(per_block, scores, n_blocks, block_size)


def _no_newest(scores, n_blocks, block_size):
    P = len(scores)
    padded = torch.cat([scores, scores.new_full((-P % block_size,), float("-inf"))]).view(-1, block_size)
    return _block_keep(padded.amax(-1), scores, n_blocks, block_size)


# ------------------------------------------------------------------------------------------ V4.1-Flash's cache
@register(kind="value",
          hint=("A layer writes compressed KV only if it owns a compressor (Full mode); Reindex and Reuse layers "
                "read another layer's.",
                "V4.1-Flash's kv_source_layer_ids (config.py): the Full layers.",
                "len((2, 8, 14, 20))"),
          wrong=[38, 40, 8, 20])
def v41_flash_cache_writers():
    return len(V41_FLASH.kv_sources)


@register(kind="value",
          hint=("Add up every layer's window and the compressed caches of the four layers that write one, then "
                "divide by the context.",
                "40 windows x 128 vectors x 528 bytes, plus (3 x 2^20 / 2 + 2^20) compressed vectors x (288 + 68) "
                "bytes (NVFP4 KV entry + MXFP4 index key), divided by 2^20.",
                "(40 * 128 * 528 + (3 * 2**19 + 2**20) * 356) / 2**20"),
          wrong=[cache_bytes(V41_FLASH, 2 ** 20, shared=False) / 2 ** 20,            # every compressed layer its own
                 (cache_bytes(V41_FLASH, 2 ** 20) - 40 * 128 * 528) / 2 ** 20,   # forgot the windows
                 (3 * 2 ** 19 + 2 ** 20) * 288 / 2 ** 20,                        # forgot the index keys
                 4 * 356.0],                                                     # every Full layer at ratio 1
          compare=lambda expected, got: close(expected, got, rtol=2e-3))
def v41_cache_bytes_per_token_1m():
    return cache_bytes(V41_FLASH, 2 ** 20) / 2 ** 20
