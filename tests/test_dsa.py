"""Unit tests of course_lib.dsa, course_lib.v4_attention and the sparse-attention calculator in course_lib.kv_cache_size.

Each expected value is computed independently: by hand in the comments, by dense MLA, or from the paper's formula.
(The comparisons with transformers' modules are in tests/test_sparse_attention_*_reference.py.)
"""
import math

import pytest
import torch

from course_lib import kv_cache_size
from course_lib.mla import MLA
from course_lib.configs_v4 import DEEPSEEK_V32, DEEPSEEK_V4_FLASH, DEEPSEEK_V4_PRO, DSAModel, V4Model
from course_lib.dsa import (DSA, LightningIndexer, attention_distribution, indexer_kl_loss, recall_at_k,
                            select_topk, topk_mask)
from course_lib.v4_attention import Compressor, V4Attention, V4Cache, visible_entries

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


# --------------------------------------------------------------------------------------------- V4
@pytest.mark.parametrize("kwargs,name", [({"compress_rate": 0}, "compress_rate"), ({"compress_rate": 1.5},
                                                                                     "compress_rate"),
                                         ({"window": 0}, "window"), ({"kind": "dense"}, "kind"),
                                         ({"index_topk": 0}, "index_topk"), ({"o_groups": 3}, "o_groups"),
                                         ({"rope_dim": 3}, "rope_dim")])
def test_v4_bad_configs_raise_naming_the_parameter(kwargs, name):
    with pytest.raises(ValueError, match=name):
        V4Attention(D, H, **kwargs)


def test_compressor_pools_with_softmax_weights_by_hand():
    # m = 2 tokens, 2 features, no overlap, zero bias. Feature 0: c = (1, 3), z = (0, ln 3) -> softmax (1/4, 3/4)
    # -> 1/4 + 9/4 = 2.5. Feature 1: c = (0, 2), z = (0, 0) -> (1/2, 1/2) -> 1. Then RMSNorm (weight 1).
    comp = Compressor(2, 2, 2, False, rope_dim=2)
    kv = torch.tensor([[[1.0, 0.0], [3.0, 2.0]]])               # two tokens, two features
    gate = torch.tensor([[[0.0, 0.0], [math.log(3.0), 0.0]]])
    entries, _ = comp.pool(kv, gate, first_position=0)
    pooled = torch.tensor([1 * 0.25 + 3 * 0.75, 0 * 0.5 + 2 * 0.5])  # (2.5, 1.0), softmax per feature
    want = pooled / pooled.pow(2).mean().add(1e-6).sqrt()       # RMSNorm, weight 1; RoPE at position 0 = identity
    assert torch.allclose(entries[0, 0], want, atol=1e-6)


def test_hca_with_rate_one_gives_every_token_its_own_entry():
    """m = 1, no overlap: one entry per token, equal to the sliding branch's key of that token when the weights
    are shared, so the compressed branch is plain attention over all earlier tokens."""
    torch.manual_seed(5)
    att = V4Attention(D, H, head_dim=16, rope_dim=4, kind="hca", compress_rate=1, window=1).double()
    with torch.no_grad():
        att.compressor.kv.weight.copy_(att.kv.weight)
        att.compressor.norm.weight.copy_(att.kv_norm.weight)
    x = torch.randn(1, 6, D, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    from course_lib.v4_attention import _rope_tail
    with torch.no_grad():
        entries = att.compressor(x)
        keys = _rope_tail(att.kv_norm(att.kv(x)), 0, 4, att.rope_base)
    assert torch.allclose(entries, keys, atol=1e-12)
    assert visible_entries(torch.arange(6), 6, 1).equal(torch.ones(6, 6, dtype=torch.bool).tril())


def test_visibility_rule_by_hand():
    # m = 4: entry 0 covers tokens 0-3, complete at t = 3; entry 1 at t = 7.
    vis = visible_entries(torch.tensor([2, 3, 6, 7]), 2, 4)
    assert vis.tolist() == [[False, False], [True, False], [True, False], [True, True]]


def test_v4_cache_bytes_per_token_by_hand():
    att = V4Attention(D, H, head_dim=16, rope_dim=4, kind="hca", compress_rate=4, window=4)
    cache = V4Cache()
    with torch.no_grad():
        att(torch.randn(1, 10, D), 0, cache)
    # window: 3 keys x 16; entries: 10 // 4 = 2 x 16; buffer: 10 % 4 = 2 tokens' C and Z, 2 x 16 each; float32.
    want = (3 * 16 + 2 * 16 + 2 * 2 * 16) * 4
    assert cache.nbytes() == want and cache.bytes_per_token() == want / 10
    with pytest.raises(ValueError, match="start_pos"):
        att(torch.randn(1, 1, D), 9, cache)


# --------------------------------------------------------------------------------------------- calculator
def test_sparse_cache_and_flops_by_hand():
    tiny = DSAModel("t", n_layers=2, n_heads=4, kv_lora_rank=8, rope_dim=2, index_n_heads=3, index_head_dim=5,
                    index_topk=10, activated_params=1.0)
    # bf16: per token per layer (8 + 2 + 5) * 2 = 30 bytes; 100 tokens, 2 layers -> 6000.
    assert kv_cache_size.sparse_cache_bytes(tiny, 100) == 6000
    assert kv_cache_size.sparse_cache_bytes(tiny, 100, dense=True) == 100 * 10 * 2 * 2
    # fp8: (8 * 1 + 2 * 2 + 5 * 1) = 17 bytes.
    assert kv_cache_size.sparse_cache_bytes(tiny, 100, "fp8") == 17 * 100 * 2
    # FLOPs: indexer 2 * 3 * 100 * 6 = 3600; attention 2 * 4 * 10 * (16 + 2) = 1440; x 2 layers.
    assert kv_cache_size.sparse_attention_flops(tiny, 100) == 2 * (3600 + 1440)
    assert kv_cache_size.sparse_attention_flops(tiny, 100, dense=True) == 2 * 2 * 4 * 100 * 18
    v4 = V4Model("v", (0, 4, 16), n_heads=2, head_dim=8, rope_dim=2, window=3, csa_rate=4, hca_rate=16,
                 index_n_heads=1, index_head_dim=4, index_topk=5, activated_params=1.0)
    # bf16 entry 8 * 2 = 16 B. Layer 0: window 3 x 16 = 48. Layer 1: 48 + 100 // 4 = 25 x (16 + 8) = 648.
    # Layer 2: 48 + 100 // 16 = 6 x 16 = 144.
    assert kv_cache_size.sparse_cache_bytes(v4, 100) == 48 + 648 + 144
    # FLOPs: window per layer 2 * 2 * 3 * 16 = 192; CSA: indexer 2 * 1 * 25 * 5 = 250 + 2 * 2 * 5 * 16 = 320;
    # HCA: 2 * 2 * 6 * 16 = 384.
    assert kv_cache_size.sparse_attention_flops(v4, 100) == 3 * 192 + 250 + 320 + 384
    assert kv_cache_size.sparse_token_flops(v4, 100) == 2e9 + 3 * 192 + 250 + 320 + 384


def test_v32_fp8_cache_matches_flashmla_format():
    # FlashMLA's V3.2 FP8 cache: 656 bytes per token and layer = 512 FP8 + 16 B scales + 64 BF16; we leave the
    # scales out and add the indexer key (128 FP8).
    assert kv_cache_size.sparse_cache_bytes(DEEPSEEK_V32, 1, "fp8", dense=True) / 61 == 656 - 16
    assert DEEPSEEK_V4_PRO.count("csa") + DEEPSEEK_V4_PRO.count("hca") == 61
    assert DEEPSEEK_V4_FLASH.count("sliding") == 2 and DEEPSEEK_V4_FLASH.n_layers == 43


def test_v4_headline_within_a_few_points_of_the_report():
    # V4 report: at 1M tokens V4-Pro ~27% of V3.2's single-token FLOPs and ~10% of its KV cache; Flash ~10% / 7%.
    r = kv_cache_size.v4_vs_v32(2 ** 20)
    assert abs(r["DeepSeek-V4-Pro"]["flops"] - 0.27) < 0.03 and abs(r["DeepSeek-V4-Pro"]["cache"] - 0.10) < 0.03
    assert abs(r["DeepSeek-V4-Flash"]["flops"] - 0.10) < 0.03 and abs(r["DeepSeek-V4-Flash"]["cache"] - 0.07) < 0.03


def test_sparse_calculator_rejects_bad_input():
    with pytest.raises(ValueError, match="context"):
        kv_cache_size.sparse_cache_bytes(DEEPSEEK_V32, 0)
    with pytest.raises(ValueError, match="storage"):
        kv_cache_size.sparse_cache_bytes(DEEPSEEK_V32, 10, "fp4")
    with pytest.raises(ValueError, match="models"):
        kv_cache_size.plot_sparse_curves(("GPT-5",))


def test_plot_sparse_curves_draws_both_panels():
    import matplotlib.pyplot as plt
    fig = kv_cache_size.plot_sparse_curves(("DeepSeek-V3.2", "DeepSeek-V4-Pro"), context=2 ** 17)
    assert len(fig.axes) == 2 and len(fig.axes[0].lines) == 3 * 2 + 1  # 3 curves + 3 markers + the context line
    plt.close(fig)


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


@pytest.mark.parametrize("overlap", [True, False])
def test_token_weights_are_each_entrys_softmax_over_its_tokens(overlap):
    comp = Compressor(8, 4, 4, overlap, rope_dim=2)
    with torch.no_grad():
        comp.position_bias.normal_()
    w = comp.token_weights(torch.randn(1, 13, 8))
    assert w.shape == (1, 3, 13)
    assert torch.allclose(w.sum(-1), torch.ones(1, 3))
    support = (w[0] > 0).int()
    # entry i covers tokens 4i .. 4i+3, and with overlap also the previous window 4(i-1) .. 4i-1.
    for i in range(3):
        lo = max(0, 4 * (i - 1)) if overlap else 4 * i
        assert support[i].nonzero().flatten().tolist() == list(range(lo, 4 * i + 4))


def test_plot_sparse_curves_accepts_a_named_model_set():
    import matplotlib.pyplot as plt
    fig = kv_cache_size.plot_sparse_curves("V3.2 vs V4-Flash", context=2 ** 16, storage="bf16", dense_v32=False)
    assert len(fig.axes[1].lines) == 2 * 2 + 1
    plt.close(fig)


def test_csa_with_rate_one_and_no_selection_reduces_to_hca_with_rate_one():
    """m = 1, k >= T and the overlap half switched off (its gate bias -inf): every CSA entry is one token's key and
    every query keeps all its entries, which is HCA with m = 1, i.e. dense attention over all earlier tokens."""
    torch.manual_seed(8)
    kw = dict(head_dim=16, rope_dim=4, compress_rate=1, window=2, index_topk=64)
    csa = V4Attention(D, H, kind="csa", **kw).double()
    hca = V4Attention(D, H, kind="hca", **kw).double()
    shared = {k: v for k, v in csa.state_dict().items() if not k.startswith(("compressor.", "indexer."))}
    hca.load_state_dict({**hca.state_dict(), **shared})
    with torch.no_grad():
        c = 16
        csa.compressor.kv.weight[c:] = hca.compressor.kv.weight           # Cb half = HCA's projection
        csa.compressor.gate.weight[c:] = hca.compressor.gate.weight
        csa.compressor.position_bias[:, :c] = float("-inf")               # the previous token's Ca half: weight 0
        csa.compressor.position_bias[:, c:] = hca.compressor.position_bias
        csa.compressor.norm.weight.copy_(hca.compressor.norm.weight)
    x = torch.randn(2, 9, D, dtype=torch.float64, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        assert torch.allclose(csa.compressor(x), hca.compressor(x), atol=1e-12)
        assert torch.allclose(csa(x), hca(x), atol=1e-12)


# ----------------------------------------------------------------------------------------------- CSA indexer training
def _csa(seed=0):
    torch.manual_seed(seed)
    return V4Attention(32, 4, head_dim=16, rope_dim=4, q_lora_rank=16, window=4, kind="csa", compress_rate=4,
                       index_n_heads=2, index_head_dim=8, index_topk=2)


def test_csa_index_loss_trains_only_the_indexer_and_only_in_training():
    att = _csa()
    x = torch.randn(2, 24, 32, generator=torch.Generator().manual_seed(1))
    out = att(x)
    loss = att.index_loss
    assert loss is not None and loss.dim() == 0 and loss.item() >= 0
    indexer = {id(p) for p in att.indexer.parameters()}
    grads = torch.autograd.grad(loss, list(att.parameters()), allow_unused=True)
    for p, g in zip(att.parameters(), grads):          # the KL reaches the indexer and nothing else
        assert (g is not None and g.abs().sum() > 0) == (id(p) in indexer)
    grads = torch.autograd.grad(out.sum(), list(att.indexer.parameters()), allow_unused=True)
    assert all(g is None for g in grads)                # and the output never reaches the indexer (top-k)
    att.eval()
    att(x)
    assert att.index_loss is None
    att.train()
    with torch.no_grad():
        att(x)
    assert att.index_loss is None


def test_csa_indexer_learns_the_main_attention_from_its_kl_loss():
    att = _csa()
    x = torch.randn(4, 32, 32, generator=torch.Generator().manual_seed(2))
    opt = torch.optim.Adam(att.indexer.parameters(), lr=1e-2)
    losses = []
    for _ in range(60):
        att(x)
        losses.append(att.index_loss.item())
        opt.zero_grad()
        att.index_loss.backward()
        opt.step()
    assert losses[-1] < 0.5 * losses[0], (losses[0], losses[-1])


def test_nano_v4_adds_the_index_loss_to_aux_loss_in_training():
    from course_lib.nano import v4 as nano_v4

    torch.manual_seed(0)
    model = nano_v4.build_model(nano_v4.TINY_V4)
    x = torch.randint(0, 256, (2, 64), generator=torch.Generator().manual_seed(0))
    out = model(x, x)
    kl = sum(b.attn.index_loss for b in model.blocks if b.attn.index_loss is not None)
    moe = sum(b.ffn.aux_loss for b in model.blocks if getattr(b.ffn, "aux_loss", None) is not None)
    assert kl.item() > 0
    torch.testing.assert_close(out.aux_loss, moe + kl)
