"""Hash routing: the layer against transformers' DeepseekV4HashRouter / SparseMoeBlock; tables; the TinyLM hook."""
import pytest
import torch

from course_lib import hash_routing as hr
from course_lib.model import ModelConfig, TinyLM

D, H, E, K, V = 16, 8, 4, 2, 32


def _pair(score_func, scaling=1.5, seed=0):
    """transformers' DeepseekV4SparseMoeBlock and our HashMoE with the same weights and table. Only the tests that
    compare with transformers call it, so only they are skipped where transformers (with DeepSeek-V4) is missing."""
    ds4 = pytest.importorskip("transformers.models.deepseek_v4.modeling_deepseek_v4")
    from transformers import DeepseekV4Config
    cfg = DeepseekV4Config(vocab_size=V, hidden_size=D, moe_intermediate_size=H, n_routed_experts=E,
                           num_experts_per_tok=K, n_shared_experts=1, scoring_func=score_func,
                           routed_scaling_factor=scaling, swiglu_limit=1e6, num_hidden_layers=1,
                           mlp_layer_types=["hash_moe"], num_attention_heads=2)
    ref = ds4.DeepseekV4SparseMoeBlock(cfg, layer_idx=0).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in ref.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
        ref.gate.tid2eid.copy_(hr.hash_table(V, E, K, seed=seed))
    ours = hr.HashMoE(D, V, n_routed_experts=E, n_shared_experts=1, num_experts_per_tok=K, moe_intermediate_size=H,
                      score_func=score_func, routed_scaling_factor=scaling, table=ref.gate.tid2eid)
    with torch.no_grad():
        ours.gate.weight.copy_(ref.gate.weight)
        ours.experts.gate_up.copy_(ref.experts.gate_up_proj)
        ours.experts.down.copy_(ref.experts.down_proj)
        ours.shared_experts.w1.weight.copy_(ref.shared_experts.gate_proj.weight)
        ours.shared_experts.w3.weight.copy_(ref.shared_experts.up_proj.weight)
        ours.shared_experts.w2.weight.copy_(ref.shared_experts.down_proj.weight)
    return ref, ours


def _ours(score_func, seed=0):
    """Our HashMoE alone (no transformers): random weights, a seeded random table."""
    torch.manual_seed(seed)
    return hr.HashMoE(D, V, n_routed_experts=E, n_shared_experts=1, num_experts_per_tok=K, moe_intermediate_size=H,
                      score_func=score_func, table=hr.hash_table(V, E, K, seed=seed))


@pytest.mark.parametrize("score_func", ["sqrtsoftplus", "sigmoid"])   # transformers has no softmax here
def test_hash_moe_equals_transformers_sparse_moe_block(score_func):
    ref, ours = _pair(score_func)
    x = torch.randn(2, 7, D)
    ids = torch.randint(0, V, (2, 7))
    with torch.no_grad():
        expected = ref(x, input_ids=ids)
        got = ours(x, ids)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_router_equals_transformers_hash_router():
    ref, ours = _pair("sqrtsoftplus", seed=3)
    x = torch.randn(10, D)
    ids = torch.randint(0, V, (10,))
    _, w_ref, idx_ref = ref.gate(x, ids)
    w, idx, _ = ours.router(x, ids)
    assert torch.equal(idx, idx_ref)
    torch.testing.assert_close(w, w_ref, atol=1e-6, rtol=1e-6)


def test_same_token_same_experts_whatever_the_context():
    ours = _ours("sigmoid")
    ids = torch.tensor([[5, 9, 5, 1]])
    _, idx, _ = ours.router(torch.randn(4, D), ids.flatten())
    assert torch.equal(idx[0], idx[2]) and torch.equal(idx[0], ours.tid2eid[5])


def test_gates_are_learned_but_the_table_is_not():
    ours = _ours("sqrtsoftplus")
    x = torch.randn(1, 5, D)
    ours(x, torch.randint(0, V, (1, 5))).sum().backward()
    assert ours.gate.weight.grad is not None and ours.gate.weight.grad.abs().sum() > 0
    assert "tid2eid" not in dict(ours.named_parameters())


def test_random_table_rows_hold_distinct_experts():
    t = hr.hash_table(200, 8, 3, seed=1)
    assert t.shape == (200, 3) and all(len(set(r)) == 3 for r in t.tolist())
    assert torch.equal(t, hr.hash_table(200, 8, 3, seed=1))


def test_balanced_table_evens_out_a_skewed_frequency():
    counts = torch.tensor([1000.0, 500, 400, 300, 200, 100, 50, 50] + [10.0] * 24)
    balanced = hr.expert_load_of_table(hr.hash_table(32, 4, 1, token_counts=counts), counts, 4)
    # greedy largest-first: the spread ends far below a random table's
    assert balanced.sum() == counts.sum()
    assert balanced.max() / balanced.mean() - 1 < 0.5
    assert balanced.max() == 1000           # the most frequent token alone fills one expert


def test_use_hash_routing_replaces_the_first_ffns_and_trains():
    torch.manual_seed(0)
    model = TinyLM(ModelConfig(vocab_size=V, hidden_size=D, num_hidden_layers=3, num_attention_heads=2,
                               max_position_embeddings=32))
    wrapped = hr.use_hash_routing(model, 2, n_routed_experts=E, num_experts_per_tok=K)
    assert isinstance(model.blocks[0].ffn, hr.HashMoE) and isinstance(model.blocks[1].ffn, hr.HashMoE)
    assert not isinstance(model.blocks[2].ffn, hr.HashMoE)
    idx = torch.randint(0, V, (2, 12))
    out = wrapped(idx, idx)
    out.loss.backward()
    assert model.blocks[0].ffn.gate.weight.grad is not None
    assert model.blocks[0].ffn.last_load.sum() == 2 * 12 * K


@pytest.mark.parametrize("call,match", [
    (lambda: hr.HashMoE(D, V, table=torch.zeros(V - 1, 2, dtype=torch.long)), "table"),
    (lambda: hr.HashMoE(D, V, n_routed_experts=4, table=torch.full((V, 2), 4)), "table"),
    (lambda: hr.HashMoE(D, V, n_routed_experts=0), "n_routed_experts"),
    (lambda: hr.HashMoE(D, V, num_experts_per_tok=9, n_routed_experts=8), "num_experts_per_tok"),
    (lambda: hr.HashMoE(D, V, score_func="relu"), "score_func"),
    (lambda: hr.HashMoE(D, V)(torch.zeros(1, 3, D)), "input_ids"),
    (lambda: hr.HashMoE(D, V)(torch.zeros(1, 3, D), torch.full((1, 3), V)), "input_ids"),
    (lambda: hr.hash_table(10, 4, 5), "top_k"),
    (lambda: hr.hash_table(0, 4, 1), "vocab_size"),
    (lambda: hr.use_hash_routing(TinyLM(ModelConfig(vocab_size=V, hidden_size=D, num_hidden_layers=2,
                                                    num_attention_heads=2)), 3),
     "n_hash_layers"),
])
def test_bad_input_raises_one_line_value_error(call, match):
    with pytest.raises(ValueError, match=match) as err:
        call()
    assert "\n" not in str(err.value)
