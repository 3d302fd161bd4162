"""Notebook 07's toy long-context task: find the needle, and the training and measuring around it.

The toy task ("find the needle"): a sequence of T tokens, each carrying a key and a value (embedded as the sum of a
key and a value embedding); the last token asks for a key that occurs exactly once earlier; the answer is that
token's value. One attention layer solves it by content matching, and exactly ONE earlier token matters, so we can
measure whether a sparse attention keeps it: the indexer's recall, and the accuracy with only k tokens kept.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from course_lib.dsa import (DSA, attention_distribution, indexer_kl_loss, prefill_cache, recall_at_k, select_topk,
                            topk_mask)
from course_lib.kit.validate import positive_int
from course_lib.layers import RMSNorm


def needle_batch(batch: int, length: int, n_keys: int = 256, n_values: int = 16, generator=None):
    """keys (B, T), values (B, T), needle position (B,), answer (B,). keys[:, -1] is the query key; it occurs once
    before, at the needle position; every other key is drawn from the remaining n_keys - 1 (repeats allowed)."""
    for name, v in (("batch", batch), ("length", length), ("n_keys", n_keys), ("n_values", n_values)):
        positive_int(name, v)
    if length < 2 or n_keys < 2:
        raise ValueError(f"length and n_keys must be >= 2, got length={length}, n_keys={n_keys}")
    g = generator
    query = torch.randint(0, n_keys, (batch,), generator=g)
    keys = torch.randint(0, n_keys - 1, (batch, length), generator=g)
    keys = keys + (keys >= query[:, None]).long()                      # skip the query key
    values = torch.randint(0, n_values, (batch, length), generator=g)
    needle = torch.randint(0, length - 1, (batch,), generator=g)
    rows = torch.arange(batch)
    keys[rows, needle] = query
    keys[:, -1] = query
    return keys, values, needle, values[rows, needle]


class NeedleModel(nn.Module):
    """Embedding -> one DSA layer -> RMSNorm -> value logits, read at the last token only.

    Only the last query matters, so forward() builds the other tokens' cache from their projections
    (dsa.prefill_cache) and runs one decode step: dense with k=None (every token kept, = MLA), sparse with k."""

    def __init__(self, attention: DSA, d_model: int, n_keys: int = 256, n_values: int = 16):
        super().__init__()
        self.key_emb = nn.Embedding(n_keys, d_model)
        self.value_emb = nn.Embedding(n_values + 1, d_model)           # the last id marks the query token
        self.attention = attention
        self.norm = RMSNorm(d_model)
        self.head = nn.Linear(d_model, n_values, bias=False)
        self.n_values = n_values

    def embed(self, keys, values):
        values = values.clone()
        values[:, -1] = self.n_values                                  # the query token carries no value
        return self.key_emb(keys) + self.value_emb(values)

    def forward(self, keys, values, k: int | None = None):
        """Logits (B, n_values) for the last token; k=None: dense attention, else DSA keeping k tokens."""
        x = self.embed(keys, values)
        att, T = self.attention, x.shape[1]
        cache = prefill_cache(att, x[:, :-1])
        saved, att.index_topk = att.index_topk, (T if k is None else k)
        try:
            o = att(x[:, -1:], T - 1, cache, path="absorbed")
        finally:
            att.index_topk = saved
        return self.head(self.norm(x[:, -1] + o[:, 0]))


def make_needle_model(d_model: int = 64, n_heads: int = 4, n_keys: int = 32, n_values: int = 16,
                      index_n_heads: int = 2, index_head_dim: int = 16, seed: int = 0):
    """A NeedleModel with small MLA sizes: d_c = 32, d'_c = 32, d_h = 16, d^R_h = 8, v = 16."""
    torch.manual_seed(seed)
    att = DSA(d_model, n_heads, index_topk=1, index_n_heads=index_n_heads, index_head_dim=index_head_dim,
              kv_lora_rank=32, q_lora_rank=32, qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=16)
    return NeedleModel(att, d_model, n_keys, n_values)


def accuracy(logits, answer) -> float:
    return (logits.argmax(-1) == answer).float().mean().item()


def _batches(model, steps, length, batch, seed, progress):
    g = torch.Generator().manual_seed(seed)          # drawn on the CPU (the same batches everywhere), then moved
    device = model.key_emb.weight.device
    for _ in (progress(range(steps)) if progress else range(steps)):
        yield tuple(t.to(device) for t in needle_batch(batch, length, model.key_emb.num_embeddings, model.n_values, g))


def train_dense(model: NeedleModel, steps: int, length: int, batch: int = 32, lr: float = 3e-3, seed: int = 1,
                progress=None):
    """Train everything but the indexer with dense attention (cross-entropy on the answer). Returns the losses."""
    params = [p for n, p in model.named_parameters() if ".indexer." not in f".{n}"]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    losses = []
    for keys, values, _, answer in _batches(model, steps, length, batch, seed, progress):
        loss = F.cross_entropy(model(keys, values), answer)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def indexer_scores_and_target(model: NeedleModel, keys, values):
    """The last query's index scores I_{T-1,:} (B, 1, T) and its dense attention target p_{T-1,:} (V3.2 §2.1.1)."""
    x = model.embed(keys, values)
    att, T = model.attention, x.shape[1]
    idx = att.indexer
    c_q = att.q_norm(att.q_down(x[:, -1:]))
    scores = idx.scores(idx.queries(c_q, T - 1), idx.keys(x, 0), idx.head_weights(x[:, -1:]))
    with torch.no_grad():
        target = attention_distribution(att, x, last_only=True)
    return scores, target


def warmup_indexer(model: NeedleModel, steps: int, length: int, batch: int = 16, lr: float = 3e-3, seed: int = 2,
                   progress=None):
    """V3.2's dense warm-up (§2.1.1): everything frozen but the indexer, trained with
    KL(p_{t,:} || softmax(I_{t,:})) towards the dense attention distribution. V3.2 sums over all queries; our
    model is trained on its last query only, so only that row is meaningful and only that row is used."""
    opt = torch.optim.AdamW(model.attention.indexer.parameters(), lr=lr, weight_decay=0.0)
    losses = []
    for keys, values, _, _ in _batches(model, steps, length, batch, seed, progress):
        scores, target = indexer_scores_and_target(model, keys, values)
        loss = indexer_kl_loss(scores, target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


@torch.no_grad()
def accuracy_and_recall(model: NeedleModel, length: int, ks, batch: int = 128, seed: int = 3) -> dict:
    """Accuracy dense and with DSA at each k; the indexer's recall of the needle and of the token the dense
    attention weights most, at each k (last query)."""
    g = torch.Generator().manual_seed(seed)
    keys, values, needle, answer = (t.to(model.key_emb.weight.device) for t in
                                    needle_batch(batch, length, model.key_emb.num_embeddings, model.n_values, g))
    out = {"dense": accuracy(model(keys, values), answer), "sparse": {}, "recall_needle": {}, "recall_top1": {}}
    scores, target = indexer_scores_and_target(model, keys, values)
    for k in ks:
        out["sparse"][k] = accuracy(model(keys, values, k), answer)
        chosen = topk_mask(select_topk(scores, k), length)[:, 0]
        out["recall_needle"][k] = chosen[torch.arange(batch), needle].float().mean().item()
        out["recall_top1"][k] = recall_at_k(scores, target, k)
    return out


