"""course_lib.v4_attention: DeepSeek-V4's attention (sliding window, CSA, HCA), its compressor, visibility rule,
cache and the CSA indexer's training signal.

Each expected value is computed independently: by hand in the comments, or by a configuration that reduces to a
known one (rate 1: every token its own entry, i.e. dense attention). The comparisons with transformers' V4 modules
are in tests/reference/test_v4_attention_reference.py.
"""
import math

import pytest
import torch

from course_lib.v4_attention import Compressor, V4Attention, V4Cache, partial_rope, visible_entries

torch.set_num_threads(2)
D, H = 32, 4


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
    with torch.no_grad():
        entries = att.compressor(x)
        keys = partial_rope(att.kv_norm(att.kv(x)), 0, 4, att.rope_base)
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


def test_partial_rope_by_hand():
    """V4 §2.3.3: only the last rope_dim features turn. One token at position 1, base 1, rope_dim 2: the single
    pair (x_4, x_5) = (1, 0) turns by 1 radian to (cos 1, sin 1); features 0-3 stay; sign = -1 turns it back."""
    x = torch.tensor([[[0.5, -1.0, 2.0, 3.0, 1.0, 0.0]]], dtype=torch.float64)      # (1, T=1, D=6)
    y = partial_rope(x, 1, 2, 1.0)
    want = torch.tensor([0.5, -1.0, 2.0, 3.0, math.cos(1.0), math.sin(1.0)], dtype=torch.float64)
    torch.testing.assert_close(y[0, 0], want)
    torch.testing.assert_close(partial_rope(y, 1, 2, 1.0, sign=-1.0), x)
    # Explicit positions give the same rotation as a start position.
    torch.testing.assert_close(partial_rope(x, 0, 2, 1.0, positions=torch.tensor([1])), y)


def test_partial_rope_scores_depend_on_distance_only():
    """Rotating a query at t and a key at s makes q . k depend on t - s only (the relative-position property the
    report relies on); the output's rotation by -t undoes the key's rotation when the key sits at t."""
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(1, 1, 8, generator=g, dtype=torch.float64), torch.randn(1, 1, 8, generator=g,
                                                                               dtype=torch.float64)
    a = (partial_rope(q, 7, 4, 100.0) * partial_rope(k, 4, 4, 100.0)).sum()
    b = (partial_rope(q, 13, 4, 100.0) * partial_rope(k, 10, 4, 100.0)).sum()
    c = (partial_rope(q, 13, 4, 100.0) * partial_rope(k, 9, 4, 100.0)).sum()
    torch.testing.assert_close(a, b)
    assert not torch.isclose(a, c)


@pytest.mark.parametrize("kwargs,name", [({"rope_dim": 3}, "rope_dim"), ({"rope_dim": 10}, "rope_dim"),
                                         ({"rope_dim": 2, "positions": torch.arange(3)}, "positions")])
def test_partial_rope_rejects_bad_input(kwargs, name):
    args = {"rope_dim": 4, **kwargs}
    with pytest.raises(ValueError, match=name):
        partial_rope(torch.zeros(1, 2, 8), 0, args.pop("rope_dim"), 10000.0, **args)
