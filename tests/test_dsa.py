"""course_lib.dsa: DeepSeek Sparse Attention (V3.2), its lightning indexer, the indexer's KL loss and the growing cache.

Each expected value is computed independently: by hand in the comments, or by dense MLA (with k >= context DSA keeps
every token, so it must equal MLA). The comparisons with the official code are in tests/reference/test_dsa_reference.py;
V4's attention is tested in tests/test_v4_attention.py and the sparse cache/FLOPs calculator in
tests/test_kv_cache_size.py.
"""
import math

import pytest
import torch

from course_lib.dsa import (DSA, LightningIndexer, attention_distribution, indexer_kl_loss, recall_at_k,
                            select_topk, topk_mask)
from course_lib.mla import MLA

torch.set_num_threads(2)
D, H = 32, 4


def dsa_and_mla(topk, path="naive", seed=0):
    torch.manual_seed(seed)
    dsa = DSA(D, H, index_topk=topk, q_lora_rank=12, path=path).double().eval()
    mla = MLA(D, H, q_lora_rank=12, path=path).double().eval()
    mla.load_state_dict({k: v for k, v in dsa.state_dict().items() if not k.startswith("indexer.")})
    return dsa, mla


# --------------------------------------------------------------------------------------------- DSA
@pytest.mark.parametrize("path", ["naive", "absorbed"])
def test_dsa_with_k_at_least_context_equals_dense_mla(path):
    dsa, mla = dsa_and_mla(topk=12, path=path)
    x = torch.randn(2, 12, D, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        got, want = dsa(x), mla(x)
    if path == "naive":
        assert torch.equal(got, want)           # the same operations, every mask entry kept: bit for bit
    else:
        assert torch.allclose(got, want, atol=1e-12)


def test_dsa_decode_with_k_at_least_context_equals_dense_mla():
    dsa, mla = dsa_and_mla(topk=16)
    x = torch.randn(1, 10, D, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    c1, c2 = {}, {}
    with torch.no_grad():
        a = [dsa(x[:, :4], 0, c1)] + [dsa(x[:, t:t + 1], t, c1) for t in range(4, 10)]
        b = [mla(x[:, :4], 0, c2)] + [mla(x[:, t:t + 1], t, c2) for t in range(4, 10)]
    assert torch.allclose(torch.cat(a, 1), torch.cat(b, 1), atol=1e-12)


def test_dsa_with_small_k_differs_and_keeps_k_tokens():
    dsa, mla = dsa_and_mla(topk=3)
    x = torch.randn(1, 12, D, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        out, idx = dsa(x, return_indices=True)
    assert idx.shape == (1, 12, 3)
    assert not torch.allclose(out, mla(x))
    # Query 0 sees one token, so only token 0 can carry weight: its output equals dense MLA's for query 0.
    assert torch.allclose(out[:, 0], mla(x)[:, 0], atol=1e-12)


def test_indexer_scores_by_hand():
    # 2 heads of size 2, 3 keys; q_1 = (1, 0), q_2 = (0, 1); keys k_0 = (2, 0), k_1 = (0, -2), k_2 = (1, 1).
    # q_1 . k = (2, 0, 1), q_2 . k = (0, -2, 1); ReLU -> (2, 0, 1), (0, 0, 1); scale 1/sqrt(2).
    # w = (0.5, 2):  I = (0.5 * 2 + 0, 0, 0.5 * 1 + 2 * 1) / sqrt(2) = (1, 0, 2.5) / sqrt(2).
    idx = LightningIndexer(4, 4, n_heads=2, head_dim=2, rope_dim=2)
    q = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]]])                # (B=1, T=1, H=2, d=2)
    k = torch.tensor([[[2.0, 0.0], [0.0, -2.0], [1.0, 1.0]]])     # (1, S=3, 2)
    w = torch.tensor([[[0.5, 2.0]]])
    got = idx.scores(q, k, w)
    assert torch.allclose(got, torch.tensor([[[1.0, 0.0, 2.5]]]) / math.sqrt(2))
    assert select_topk(got, 2).tolist() == [[[0, 2]]]
    assert topk_mask(select_topk(got, 2), 3).tolist() == [[[True, False, True]]]


def test_kl_loss_and_recall_by_hand():
    # p = (0.5, 0.5) against softmax(0, ln 3) = (1/4, 3/4): KL = 0.5 ln 2 + 0.5 ln(2/3) = 0.5 ln(4/3).
    scores = torch.tensor([[[0.0, math.log(3.0)]]])
    target = torch.tensor([[[0.5, 0.5]]])
    assert indexer_kl_loss(scores, target).item() == pytest.approx(0.5 * math.log(4 / 3))
    # Future tokens (-inf score, 0 target) add nothing.
    s2 = torch.tensor([[[0.0, math.log(3.0), float("-inf")]]])
    t2 = torch.tensor([[[0.5, 0.5, 0.0]]])
    assert indexer_kl_loss(s2, t2).item() == pytest.approx(0.5 * math.log(4 / 3))
    # The most-attended token (index 1 here: 0.7) is in the top-1 of scores (0, 5, 1) but not of (5, 0, 1).
    t3 = torch.tensor([[[0.2, 0.7, 0.1]]])
    assert recall_at_k(torch.tensor([[[0.0, 5.0, 1.0]]]), t3, 1) == 1.0
    assert recall_at_k(torch.tensor([[[5.0, 0.0, 1.0]]]), t3, 1) == 0.0


def test_attention_distribution_is_dense_mla_probabilities():
    mla = MLA(D, H, q_lora_rank=12).double()
    x = torch.randn(1, 6, D, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    p = attention_distribution(mla, x)
    assert torch.allclose(p.sum(-1), torch.ones(1, 6, dtype=torch.float64))
    assert (p.triu(1) == 0).all() and p[0, 0, 0] == 1.0      # causal; the first token sees only itself


def test_dsa_cache_holds_latent_rope_key_and_index_key():
    dsa = DSA(D, H, index_topk=4, index_head_dim=16)
    cache = {}
    with torch.no_grad():
        dsa(torch.randn(1, 5, D), 0, cache)
    per_token = sum(t.numel() * t.element_size() for t in cache.values()) / 5
    assert per_token == (dsa.kv_lora_rank + dsa.qk_rope_head_dim + 16) * 4 == dsa.cache_elements_per_token() * 4


@pytest.mark.parametrize("kwargs,name", [({"index_topk": 0}, "index_topk"), ({"index_topk": 2.5}, "index_topk"),
                                         ({"index_topk": 9, "max_context": 8}, "index_topk"),
                                         ({"index_n_heads": 0}, "index_n_heads")])
def test_dsa_bad_configs_raise_naming_the_parameter(kwargs, name):
    with pytest.raises(ValueError, match=name):
        DSA(D, H, **kwargs)


@pytest.mark.parametrize("topk", [3, 100])
def test_growing_cache_gives_the_same_outputs_as_the_plain_cache(topk):
    from course_lib.bench.sparse import GrowingCache, InPlaceCacheDSA
    dsa, _ = dsa_and_mla(topk=topk)
    in_place = InPlaceCacheDSA(D, H, index_topk=topk, q_lora_rank=12).double().eval()
    in_place.load_state_dict(dsa.state_dict())
    x = torch.randn(2, 9, D, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    plain, grow = {}, GrowingCache()
    with torch.no_grad():
        a = [dsa(x[:, :5], 0, plain)] + [dsa(x[:, t:t + 1], t, plain) for t in range(5, 9)]
        b = [in_place(x[:, :5], 0, grow)] + [in_place(x[:, t:t + 1], t, grow) for t in range(5, 9)]
    assert torch.allclose(torch.cat(a, 1), torch.cat(b, 1), atol=1e-12)
    assert all(torch.equal(plain[k], grow[k]) for k in plain)
    assert grow.bytes_per_token() == dsa.cache_elements_per_token() * 8
    grow.truncate(6)
    assert grow["c_kv"].shape[1] == 6
