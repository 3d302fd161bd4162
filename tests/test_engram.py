"""course_lib.engram against a transcription of DeepSeek's official Engram demo, and its O(1) lookup.

The reference below transcribes the forward pass of `engram_demo_v1.py` from github.com/deepseek-ai/Engram
(Apache-2.0; Cheng et al., arXiv 2601.07372): numpy n-gram hashing with the demo's multiplier and prime recipe
(sympy's isprime, not ours), one stacked embedding table with per-head offsets, the per-branch gate with its signed
square root, and the short convolution with torch's own nn.RMSNorm / nn.Conv1d. Only the tokenizer is left out: the
demo loads DeepSeek-V3's tokenizer, here a given compression lookup array plays its role.
"""
import math

import numpy as np
import pytest
import torch
import torch.nn as nn
from sympy import isprime
from torch.utils.flop_counter import FlopCounterMode

from course_lib.engram import (Engram, EngramLM, compression_map, hash_multipliers, head_table_sizes, is_prime,
                               ngram_hashes, normalize_token)
from course_lib.model import ModelConfig, TinyLM


# ------------------------------------------------------------------------------------------- the transcription
def ref_primes(vocab_per_ngram, max_ngram, n_head, layer_ids):
    seen, out = set(), {}
    for layer in layer_ids:
        per_n = []
        for n in range(2, max_ngram + 1):
            start, heads = vocab_per_ngram[n - 2] - 1, []
            for _ in range(n_head):
                c = start + 1
                while not (isprime(c) and c not in seen):
                    c += 1
                seen.add(c)
                heads.append(c)
                start = c
            per_n.append(heads)
        out[layer] = per_n
    return out


def ref_multipliers(seed, layer_id, max_ngram, compressed_vocab):
    half_bound = max(1, int(np.iinfo(np.int64).max // compressed_vocab) // 2)
    r = np.random.default_rng(int(seed + 10007 * layer_id)).integers(0, half_bound, size=(max_ngram,), dtype=np.int64)
    return r * 2 + 1


def ref_hash(ids, lookup, pad_id, multipliers, primes, max_ngram):
    x = lookup[np.asarray(ids, dtype=np.int64)]
    pad = int(lookup[pad_id])
    B, T = x.shape
    shifts = [x] + [np.pad(x, ((0, 0), (k, 0)), mode="constant", constant_values=pad)[:, :T]
                    for k in range(1, max_ngram)]
    cols = []
    for n in range(2, max_ngram + 1):
        mix = shifts[0] * multipliers[0]
        for k in range(1, n):
            mix = np.bitwise_xor(mix, shifts[k] * multipliers[k])
        for p in primes[n - 2]:
            cols.append((mix % int(p)).astype(np.int64))
    return np.stack(cols, axis=2)


class RefEngram(nn.Module):
    def __init__(self, primes, d_head, d_model, hc_mult, max_ngram, kernel_size, d_mem):
        super().__init__()
        flat = [p for heads in primes for p in heads]
        offsets = [0]
        for n in flat[:-1]:
            offsets.append(offsets[-1] + n)
        self.offsets = torch.tensor(offsets)
        self.embedding = nn.Embedding(sum(flat), d_head)
        d_e = (max_ngram - 1) * d_mem
        self.value_proj = nn.Linear(d_e, d_model)
        self.key_projs = nn.ModuleList([nn.Linear(d_e, d_model) for _ in range(hc_mult)])
        self.norm1 = nn.ModuleList([nn.RMSNorm(d_model) for _ in range(hc_mult)])
        self.norm2 = nn.ModuleList([nn.RMSNorm(d_model) for _ in range(hc_mult)])
        ch = d_model * hc_mult
        self.conv = nn.Conv1d(ch, ch, kernel_size, groups=ch, bias=False, padding=(kernel_size - 1) * max_ngram,
                              dilation=max_ngram)
        self.conv_norms = nn.ModuleList([nn.RMSNorm(d_model, eps=1e-5) for _ in range(hc_mult)])
        self.hc_mult, self.d_model = hc_mult, d_model

    def short_conv(self, x):
        B, T, G, C = x.shape
        xn = torch.cat([self.conv_norms[i](x[:, :, i, :]) for i in range(G)], dim=-1)
        y = self.conv(xn.transpose(1, 2))[..., :T]
        return nn.functional.silu(y).transpose(1, 2).reshape(B, T, G, C)

    def forward(self, hidden, hash_ids):
        emb = self.embedding(torch.from_numpy(hash_ids) + self.offsets).flatten(start_dim=-2)
        gates = []
        for g in range(self.hc_mult):
            key = self.norm1[g](self.key_projs[g](emb))
            query = self.norm2[g](hidden[:, :, g, :])
            gate = (key * query).sum(dim=-1) / math.sqrt(self.d_model)
            gate = gate.abs().clamp_min(1e-6).sqrt() * gate.sign()
            gates.append(gate.sigmoid().unsqueeze(-1))
        value = torch.stack(gates, dim=2) * self.value_proj(emb).unsqueeze(2)
        return value + self.short_conv(value)


def copy_into_ref(mine: Engram, ref: RefEngram):
    with torch.no_grad():
        ref.embedding.weight.copy_(mine.table.weight)
        ref.value_proj.load_state_dict(mine.value_proj.state_dict())
        for g in range(mine.hc_mult):
            ref.key_projs[g].load_state_dict(mine.key_projs[g].state_dict())
            ref.norm1[g].weight.copy_(mine.key_norms[g].weight)
            ref.norm2[g].weight.copy_(mine.query_norms[g].weight)
            ref.conv_norms[g].weight.copy_(mine.short_conv.norms[g].weight)
        ref.conv.weight.copy_(mine.short_conv.conv.weight)


def randomise(module, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5 + (1.0 if p.dim() == 1 else 0.0))


# ------------------------------------------------------------------------------------------- tests
@pytest.mark.parametrize("hc_mult,max_ngram,n_heads,layer_ids,layer_id",
                         [(1, 3, 2, [0], 0), (4, 3, 8, [1, 15], 15), (2, 4, 3, [2, 5], 2)])
def test_forward_matches_demo_transcription(hc_mult, max_ngram, n_heads, layer_ids, layer_id):
    vocab, table, d_model, d_mem, seed, pad = 40, [97, 131, 160][:max_ngram - 1], 16, 4 * n_heads, 3, 2
    # a compression that merges pairs of ids (like 'Apple'/'apple'): 40 ids -> 20 canonical ids
    lookup = np.arange(vocab) // 2
    mine = Engram(d_model, 20, table, max_ngram, n_heads, d_mem, 4, hc_mult, pad, layer_id, layer_ids, seed,
                  token_map=torch.from_numpy(lookup))
    primes = ref_primes(table, max_ngram, n_heads, layer_ids)[layer_id]
    assert mine.primes == primes
    mults = ref_multipliers(seed, layer_id, max_ngram, 20)
    mine.multipliers.copy_(torch.from_numpy(mults))          # the demo draws them with numpy: copy, like weights
    randomise(mine, 7)
    ref = RefEngram(primes, d_mem // n_heads, d_model, hc_mult, max_ngram, 4, d_mem)
    copy_into_ref(mine, ref)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, vocab, (3, 11), generator=g)
    hidden = torch.randn(3, 11, hc_mult, d_model, generator=g)
    want_hash = ref_hash(ids.numpy(), lookup, pad, mults, primes, max_ngram)
    assert np.array_equal(mine.hash(ids).numpy(), want_hash)
    torch.testing.assert_close(mine(hidden, ids), ref(hidden, want_hash), rtol=1e-5, atol=1e-5)


def test_demo_scale_multipliers_do_not_overflow():
    # DeepSeek-V3's vocabulary and the demo's recipe: ids * multipliers must stay below 2^63 (then XOR is exact)
    m = hash_multipliers(129280, 3, seed=0, layer_id=15)
    assert (m % 2 == 1).all() and (m > 0).all()
    assert all(int(x) * 129279 < 2 ** 63 for x in m)
    ids = torch.tensor([[129279, 5, 129279, 0]])
    h = ngram_hashes(ids, m, [[1000003], [1000033]], pad_id=0)
    mix = (5 * int(m[0])) ^ (129279 * int(m[1]))      # the bigram ending at position 1 (x_1 m_0 XOR x_0 m_1), by hand
    assert int(h[0, 1, 0]) == mix % 1000003


def test_hand_hash_of_a_bigram():
    # x = [3, 5], pad 0, m = (1, 3): position 1's bigram mixes 5*1 XOR 3*3 = 5 ^ 9 = 12; mod 7 = 5
    h = ngram_hashes(torch.tensor([[3, 5]]), torch.tensor([1, 3]), [[7]], pad_id=0)
    assert h.tolist() == [[[3 ^ 0], [(5 ^ 9) % 7]]]


def test_primes_distinct_and_at_least_the_table_size():
    sizes = head_table_sizes([100, 100], 3, 2)
    flat = [p for layer in sizes for heads in layer for p in heads]
    assert len(set(flat)) == len(flat) and all(isprime(p) and p >= 100 for p in flat)
    assert sizes[0][0] == [101, 103, 107] and sizes[0][1] == [109, 113, 127]
    assert [n for n in range(60) if is_prime(n)] == [n for n in range(60) if isprime(n)]


def test_lookup_cost_does_not_grow_with_table_size():
    """Same FLOPs and the same number of gathered rows per token for a 1K-row and a 1M-row table."""
    ids = torch.randint(0, 50, (2, 16), generator=torch.Generator().manual_seed(0))
    hidden = torch.randn(2, 16, 16)
    flops, rows = [], []
    for size in (1_000, 1_000_000):
        m = Engram(16, 50, size, max_ngram=3, n_heads=1, d_mem=4)
        gathered = []
        m.table.register_forward_hook(lambda mod, inp, out: gathered.append(inp[0].numel()))
        with FlopCounterMode(display=False) as fc:
            m(hidden, ids)
        flops.append(fc.get_total_flops())
        rows.append(gathered[0] / ids.numel())
        assert m.table_rows >= 2 * size
    assert flops[0] == flops[1] > 0
    assert rows[0] == rows[1] == 2                              # (max_ngram - 1) * n_heads rows per token


def test_engram_lm_adds_memory_to_the_residual_only_where_asked():
    cfg = ModelConfig(vocab_size=30, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                      max_position_embeddings=32)
    torch.manual_seed(0)
    plain = TinyLM(cfg)
    lm = EngramLM(cfg, engram_layers=(), table_size=64)
    lm.lm.load_state_dict(plain.state_dict())
    ids = torch.randint(0, 30, (2, 9))
    torch.testing.assert_close(lm(ids).logits, plain(ids).logits)
    lm2 = EngramLM(cfg, engram_layers=(1,), table_size=64)
    lm2.lm.load_state_dict(plain.state_dict())
    out = lm2(ids, ids)
    assert out.loss is not None and not torch.allclose(out.logits, plain(ids).logits)
    # causal: changing the last token changes no earlier position's logits
    ids2 = ids.clone()
    ids2[:, -1] = (ids2[:, -1] + 1) % 30
    torch.testing.assert_close(lm2(ids2).logits[:, :-1], out.logits[:, :-1])


def test_compression_map_merges_case_and_whitespace():
    m, n = compression_map(["Apple", "apple", " apple", "\t", "  ", "é", "e", "x"])
    assert m.tolist() == [0, 0, 0, 1, 1, 2, 2, 3] and n == 4
    assert normalize_token("Ｈｅｌｌｏ") == "hello"


@pytest.mark.parametrize("kwargs,name", [(dict(table_size=10), "table_size"), (dict(max_ngram=1), "max_ngram"),
                                         (dict(d_mem=6, n_heads=4), "d_mem"), (dict(pad_id=50), "pad_id"),
                                         (dict(table_size=[64]), "table_size"), (dict(n_heads=0), "n_heads")])
def test_bad_config_raises_one_line_value_error(kwargs, name):
    args = dict(d_model=8, vocab_size=20, table_size=64)
    args.update(kwargs)
    with pytest.raises(ValueError, match=name) as err:
        Engram(**args)
    assert "\n" not in str(err.value)


def test_bad_input_raises():
    m = Engram(8, 20, 64)
    with pytest.raises(ValueError, match="ids"):
        m(torch.randn(1, 4, 8), torch.tensor([[1, 2, 3, 25]]))
    with pytest.raises(ValueError, match="hidden"):
        m(torch.randn(1, 4, 9), torch.tensor([[1, 2, 3, 4]]))


def test_without_short_conv_the_output_is_the_gated_value():
    m = Engram(8, 20, 64, short_conv=False)
    ids, h = torch.randint(0, 20, (2, 5)), torch.randn(2, 5, 8)
    e = m.lookup(ids)
    torch.testing.assert_close(m(h, ids), (m.gates(h.unsqueeze(2), e) * m.value_proj(e).unsqueeze(2)).squeeze(2))


# ------------------------------------------------------------------------------------------- notebook helpers
def test_top_ngram_gains_sums_the_saved_loss_per_trigram_by_hand():
    from course_lib.engram import top_ngram_gains

    # one row "abab" -> next "baba": trigrams at t = 1..3 are (a,b|a), (b,a|b), (a,b|a)
    x, y = torch.tensor([[0, 1, 0, 1]]), torch.tensor([[1, 0, 1, 0]])
    base, new = torch.tensor([[9.0, 2.0, 3.0, 4.0]]), torch.tensor([[0.0, 1.0, 3.0, 1.0]])
    got = top_ngram_gains(base, new, x, y, lambda ids: "".join("ab"[i] for i in ids), n=3, min_count=1)
    assert got == [("aba", 2, 1.0 + 3.0), ("bab", 1, 0.0)]       # position 0 has no full trigram context


def test_flops_per_token_counts_the_projections_not_the_table():
    cfg = ModelConfig(vocab_size=30, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                      max_position_embeddings=16)
    small = EngramLM(cfg, table_size=64, max_ngram=3, n_heads=2, d_mem=8, short_conv=False)
    big = EngramLM(cfg, table_size=6400, max_ngram=3, n_heads=2, d_mem=8, short_conv=False)
    plain = EngramLM(cfg, engram_layers=(), table_size=64)
    from course_lib.engram import flops_per_token
    # the Engram layer adds its key and value projections, each (2 orders x d_mem 8 = 16) in, d_model 16 out:
    # 2 projections x 16 x 16 multiply-adds x 2 FLOPs; the table gather counts nothing
    assert flops_per_token(small, 16) == flops_per_token(big, 16)
    assert flops_per_token(small, 16) - flops_per_token(plain, 16) == 2 * (16 * 16 * 2)


def test_train_on_corpus_is_seeded_and_figures_draw():
    import matplotlib
    matplotlib.use("Agg")
    from course_lib.engram import gains_figure, gate_figure, train_on_corpus

    class Tiny:                                             # a stand-in corpus with the same get_batch signature
        def get_batch(self, split, batch_size, seq_len, generator=None):
            x = torch.randint(0, 30, (batch_size, seq_len), generator=generator)
            return x, (x + 1) % 30

    cfg = ModelConfig(vocab_size=30, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                      max_position_embeddings=16)
    runs = []
    for _ in range(2):
        torch.manual_seed(0)
        lm = EngramLM(cfg, table_size=64, d_mem=8, n_heads=2)
        runs.append(train_on_corpus(lm, Tiny(), 5, batch_size=4, seq_len=16, table_lr_mult=5.0, progress=False))
    assert runs[0] == runs[1] and len(runs[0]) == 5
    gains_figure({"a": runs[0], "b": runs[1]}, [("abc", 3, 1.5)])
    gate_figure(lm, torch.tensor([1, 2, 3, 4]), lambda ids: "x")
    with pytest.raises(ValueError, match="steps"):
        train_on_corpus(lm, Tiny(), 0)
    with pytest.raises(ValueError, match="layer"):
        gate_figure(lm, torch.tensor([1, 2]), str, layer=3)


# ------------------------------------------------------------------------------- against engram_demo_v1.py details
def test_gate_norms_use_the_demos_rmsnorm_epsilon():
    # the demo's norm1 / norm2 are nn.RMSNorm(hidden_size): eps = float32 machine epsilon, not 1e-6; it matters
    # for small hidden states, where mean(x^2) is comparable to 1e-6
    m = Engram(8, 20, 64)
    x = torch.full((1, 3, 8), 1e-3)
    ref = nn.RMSNorm(8)
    for norm in list(m.key_norms) + list(m.query_norms):
        torch.testing.assert_close(norm(x), ref(x), rtol=1e-6, atol=0)
        assert not torch.allclose(norm(x), x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6), rtol=1e-4)
    v41 = Engram(8, 20, 64, norm_eps=1e-6)                      # an explicit epsilon (V4.1: its rms_norm_eps)
    torch.testing.assert_close(v41.query_norms[0](x), x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6))
    with pytest.raises(ValueError, match="norm_eps"):
        Engram(8, 20, 64, norm_eps=0.0)


def test_normaliser_strips_every_combining_mark_and_lowercases_per_character():
    # tokenizers' StripAccents drops every combining mark (General_Category M: Mn, Mc and Me), not only Mn
    assert normalize_token("a\u0903") == "a"                      # Devanagari visarga, category Mc
    assert normalize_token("x\u20dd") == "x"                      # enclosing circle, category Me
    assert normalize_token("Café") == "cafe"                      # NFD then Mn
    # tokenizers' Lowercase maps each character alone: a word-final capital sigma becomes sigma, not final sigma
    assert normalize_token("ΟΔΟΣ") == "οδοσ" != "ΟΔΟΣ".lower()
    assert normalize_token("\u0903") == "\u0903"                  # empty after normalising: the original text


def test_pad_id_is_an_original_token_id_compressed_like_the_demo():
    # the demo's pad_id = 2 is an id of DeepSeek-V3's vocabulary, mapped through the lookup table; any original id
    # is valid, also one at or above the compressed vocabulary size
    lookup = torch.arange(40) // 2                                 # 40 original ids -> 20 canonical ids
    m = Engram(8, 20, 64, pad_id=31, token_map=lookup)
    assert m.pad_id == 15
    ids = torch.tensor([[4, 7]])
    ref = ref_hash(ids.numpy(), lookup.numpy(), 31, m.multipliers.numpy(), m.primes, 3)
    assert np.array_equal(m.hash(ids).numpy(), ref)
    with pytest.raises(ValueError, match="pad_id"):
        Engram(8, 20, 64, pad_id=40, token_map=lookup)
    with pytest.raises(ValueError, match="pad_id"):
        Engram(8, 20, 64, pad_id=20)                              # no token_map: ids of the hashed vocabulary
