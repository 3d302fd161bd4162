"""course_lib.dsa against transformers' DeepseekV32Attention / DeepseekV32Indexer with the same weights (tiny config).

Weight map (ours -> transformers): MLA as in tests/reference/test_mla_reference.py; indexer.wq -> indexer.wq_b,
indexer.wk -> indexer.wk, indexer.k_norm -> indexer.k_norm (LayerNorm, weight and bias),
indexer.weights -> indexer.weights_proj.
transformers' main attention uses interleaved RoPE (DeepSeek's layout) and the indexer rotate-half RoPE.
"""
import pytest
import torch

from course_lib.dsa import DSA, select_topk

from course_lib.kit.versions import transformers_problem  # noqa: E402

if why := transformers_problem():             # an older transformers computes other numbers: skip, saying which
    pytest.skip(why, allow_module_level=True)
from transformers.cache_utils import DynamicCache  # noqa: E402
from transformers.models.deepseek_v32.configuration_deepseek_v32 import DeepseekV32Config  # noqa: E402
from transformers.models.deepseek_v32.modeling_deepseek_v32 import (  # noqa: E402
    DeepseekV32Attention, DeepseekV32RotaryEmbedding)

torch.set_num_threads(2)
D, H, DN, DR, DV, DC, QL, HI, DI = 64, 4, 8, 6, 10, 16, 12, 3, 16


def make_pair(topk, path="naive", seed=0, dtype=torch.float64):
    cfg = DeepseekV32Config(vocab_size=32, hidden_size=D, num_attention_heads=H, num_key_value_heads=H,
                            q_lora_rank=QL, kv_lora_rank=DC, qk_nope_head_dim=DN, qk_rope_head_dim=DR, v_head_dim=DV,
                            num_hidden_layers=1, index_topk=topk, index_head_dim=DI, index_n_heads=HI,
                            rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
    cfg._attn_implementation = "eager"
    torch.manual_seed(seed)
    ref = DeepseekV32Attention(cfg, layer_idx=0).to(dtype).eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.copy_(torch.randn_like(p) * 0.3 + (1.0 if p.dim() == 1 else 0.0))
    ours = DSA(D, H, index_topk=topk, index_n_heads=HI, index_head_dim=DI, kv_lora_rank=DC, q_lora_rank=QL,
               qk_nope_head_dim=DN, qk_rope_head_dim=DR, v_head_dim=DV, path=path, rope_interleave=True).to(dtype)
    names = {"q_down.weight": "q_a_proj.weight", "q_norm.weight": "q_a_layernorm.weight",
             "q_up.weight": "q_b_proj.weight", "kv_down.weight": "kv_a_proj_with_mqa.weight",
             "kv_norm.weight": "kv_a_layernorm.weight", "kv_up.weight": "kv_b_proj.weight",
             "out.weight": "o_proj.weight", "indexer.wq.weight": "indexer.wq_b.weight",
             "indexer.wk.weight": "indexer.wk.weight", "indexer.k_norm.weight": "indexer.k_norm.weight",
             "indexer.k_norm.bias": "indexer.k_norm.bias", "indexer.weights.weight": "indexer.weights_proj.weight"}
    sd = ref.state_dict()
    ours.load_state_dict({k: sd[v] for k, v in names.items()})
    return cfg, ref, ours.eval(), DeepseekV32RotaryEmbedding(cfg)


def causal(T, S, dtype):
    return torch.full((T, S), float("-inf"), dtype=dtype).triu(S - T + 1)[None, None]


def ref_forward(ref, rot, x, start, cache=None):
    T = x.shape[1]
    S = start + T
    pos = torch.arange(start, S)[None]
    cos, sin = rot(x, pos)
    return ref(x, (cos, sin), causal(T, S, x.dtype), cache=cache, position_ids=pos)[0]


def ref_indices(ref, rot, x):
    """The indexer's top-k of transformers, for the whole prompt."""
    T = x.shape[1]
    pos = torch.arange(T)[None]
    cos, sin = rot(x, pos)
    q_resid = ref.q_a_layernorm(ref.q_a_proj(x))
    return ref.indexer(x, q_resid, (cos, sin), causal(T, T, x.dtype)[:, 0], pos).long()


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-6), (torch.float32, 1e-5)])
def test_indexer_scores_and_selection_match_transformers(dtype, tol):
    cfg, ref, ours, rot = make_pair(topk=4, dtype=dtype)
    x = torch.randn(2, 11, D, generator=torch.Generator().manual_seed(1)).to(dtype)
    with torch.no_grad():
        want = ref_indices(ref, rot, x)
        c_q = ours.q_norm(ours.q_down(x))
        scores, _ = ours.indexer(x, c_q)
        got = select_topk(scores, 4)
        # transformers returns the top-k in score order; we sort by position. Compare as sets, on the rows where
        # at least k tokens are visible (earlier rows pick arbitrary -inf entries in both).
        assert torch.equal(got[:, 3:], want[:, 3:].sort(-1).values)
        # Scores by hand from transformers' own projections (Eq. 1 with its scalings); its RoPE angles are float32.
        pos = torch.arange(11)[None]
        cos, sin = rot(x, pos)
        from transformers.models.deepseek_v32.modeling_deepseek_v32 import apply_rotary_pos_emb
        q = ref.indexer.wq_b(ref.q_a_layernorm(ref.q_a_proj(x))).view(2, 11, HI, DI)
        k = ref.indexer.k_norm(ref.indexer.wk(x))[:, :, None]
        q_r, q_p = q.split([DR, DI - DR], -1)
        k_r, k_p = k.split([DR, DI - DR], -1)
        q_r, k_r = apply_rotary_pos_emb(q_r, k_r, cos, sin, unsqueeze_dim=2)
        q, k = torch.cat([q_r, q_p], -1), torch.cat([k_r, k_p], -1)[:, :, 0]
        w = ref.indexer.weights_proj(x) * HI ** -0.5
        by_hand = torch.einsum("bth,bths->bts", w, torch.relu(torch.einsum("bthd,bsd->bths", q, k) * DI ** -0.5))
        mask = torch.ones(11, 11, dtype=torch.bool).tril()
        assert torch.allclose(scores[:, mask], by_hand[:, mask], atol=tol, rtol=tol)
        assert torch.isinf(scores[:, ~mask]).all()


@pytest.mark.parametrize("path", ["naive", "absorbed"])
@pytest.mark.parametrize("topk", [3, 5, 64])
def test_prefill_matches_transformers(path, topk):
    cfg, ref, ours, rot = make_pair(topk, path)
    x = torch.randn(2, 12, D, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want = ref_forward(ref, rot, x, 0)
        got = ours(x)
    assert torch.allclose(got, want, atol=1e-5, rtol=1e-5), (got - want).abs().max()


@pytest.mark.parametrize("path", ["naive", "absorbed"])
def test_prefill_float32_matches_transformers(path):
    cfg, ref, ours, rot = make_pair(4, path, dtype=torch.float32)
    x = torch.randn(1, 10, D, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        want = ref_forward(ref, rot, x, 0)
        got = ours(x)
    assert torch.allclose(got, want, atol=1e-5, rtol=1e-4), (got - want).abs().max()


@pytest.mark.parametrize("path", ["naive", "absorbed", "auto"])
def test_decode_with_cache_matches_transformers(path):
    cfg, ref, ours, rot = make_pair(4, path, seed=3)
    x = torch.randn(2, 10, D, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    P = 6
    ref_cache, our_cache = DynamicCache(config=cfg), {}
    with torch.no_grad():
        want = [ref_forward(ref, rot, x[:, :P], 0, ref_cache)]
        got = [ours(x[:, :P], start_pos=0, cache=our_cache)]
        for t in range(P, x.shape[1]):
            want.append(ref_forward(ref, rot, x[:, t:t + 1], t, ref_cache))
            got.append(ours(x[:, t:t + 1], start_pos=t, cache=our_cache))
    want, got = torch.cat(want, 1), torch.cat(got, 1)
    assert torch.allclose(got, want, atol=1e-5, rtol=1e-5), (got - want).abs().max()
    assert our_cache["k_index"].shape == (2, 10, DI)
