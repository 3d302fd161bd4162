"""course_lib's MLA against transformers' DeepseekV3Attention with the same weights (tiny config).

Weight map (ours -> transformers): q_down -> q_a_proj, q_norm -> q_a_layernorm, q_up -> q_b_proj (or q_proj without
query compression), kv_down -> kv_a_proj_with_mqa, kv_norm -> kv_a_layernorm, kv_up -> kv_b_proj, out -> o_proj.
transformers' interleaved RoPE returns the pairs de-interleaved (evens then odds) for both q and k; the dot product
is unchanged by that shared permutation, so the attention outputs must still agree.
"""
import pytest
import torch

from course_lib.mla import MLA

from course_lib.kit.versions import transformers_problem  # noqa: E402

if why := transformers_problem():             # an older transformers computes other numbers: skip, saying which
    pytest.skip(why, allow_module_level=True)
from transformers import DeepseekV3Config  # noqa: E402
from transformers.cache_utils import DynamicCache  # noqa: E402
from transformers.models.deepseek_v3.modeling_deepseek_v3 import (  # noqa: E402
    DeepseekV3Attention, DeepseekV3RotaryEmbedding)

torch.set_num_threads(2)
D, H, DN, DR, DV, DC = 64, 4, 8, 6, 10, 16


def make_pair(q_lora_rank, interleave, path, seed=0):
    cfg = DeepseekV3Config(vocab_size=32, hidden_size=D, num_attention_heads=H, num_key_value_heads=H,
                           q_lora_rank=q_lora_rank, kv_lora_rank=DC, qk_nope_head_dim=DN, qk_rope_head_dim=DR,
                           v_head_dim=DV, num_hidden_layers=1, rope_interleave=interleave,
                           rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
    cfg._attn_implementation = "eager"
    torch.manual_seed(seed)
    ref = DeepseekV3Attention(cfg, layer_idx=0).double().eval()
    with torch.no_grad():
        for p in ref.parameters():                         # random weights, norms included (default init is ones)
            p.copy_(torch.randn_like(p) * 0.3 + (1.0 if p.dim() == 1 else 0.0))
    ours = MLA(D, H, kv_lora_rank=DC, q_lora_rank=q_lora_rank, qk_nope_head_dim=DN, qk_rope_head_dim=DR,
               v_head_dim=DV, path=path, rope_interleave=interleave).double().eval()
    names = {"kv_down.weight": "kv_a_proj_with_mqa.weight", "kv_norm.weight": "kv_a_layernorm.weight",
             "kv_up.weight": "kv_b_proj.weight", "out.weight": "o_proj.weight"}
    if q_lora_rank is None:
        names["q_up.weight"] = "q_proj.weight"
    else:
        names.update({"q_down.weight": "q_a_proj.weight", "q_norm.weight": "q_a_layernorm.weight",
                      "q_up.weight": "q_b_proj.weight"})
    ref_sd = ref.state_dict()
    ours.load_state_dict({k: ref_sd[v] for k, v in names.items()})
    return cfg, ref, ours, DeepseekV3RotaryEmbedding(cfg)


def ref_forward(ref, rot, x, start, mask, cache):
    pos = torch.arange(start, start + x.shape[1])[None]
    cos, sin = rot(x, pos)
    return ref(x, (cos, sin), mask, cache=cache)[0]


@pytest.mark.parametrize("q_lora_rank", [12, None])
@pytest.mark.parametrize("interleave", [True, False])
@pytest.mark.parametrize("path", ["naive", "absorbed"])
def test_prefill_matches_transformers(q_lora_rank, interleave, path):
    cfg, ref, ours, rot = make_pair(q_lora_rank, interleave, path)
    x = torch.randn(2, 9, D, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    mask = torch.full((9, 9), float("-inf"), dtype=torch.float64).triu(1)[None, None]   # additive causal mask
    with torch.no_grad():
        want = ref_forward(ref, rot, x, 0, mask, None)
        got = ours(x)
    # transformers computes the RoPE angles in float32, we in float64: differences of ~1e-7 are expected.
    assert torch.allclose(got, want, atol=1e-5, rtol=1e-5), (got - want).abs().max()


@pytest.mark.parametrize("interleave", [True, False])
@pytest.mark.parametrize("path", ["naive", "absorbed"])
def test_decode_with_cache_matches_transformers(interleave, path):
    cfg, ref, ours, rot = make_pair(10, interleave, path, seed=3)
    x = torch.randn(2, 8, D, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    P = 5                                                              # prompt length, then 3 single-token steps
    mask = torch.full((P, P), float("-inf"), dtype=torch.float64).triu(1)[None, None]
    ref_cache, our_cache = DynamicCache(config=cfg), {}
    with torch.no_grad():
        want = [ref_forward(ref, rot, x[:, :P], 0, mask, ref_cache)]
        got = [ours(x[:, :P], start_pos=0, cache=our_cache)]
        for t in range(P, x.shape[1]):
            want.append(ref_forward(ref, rot, x[:, t:t + 1], t, None, ref_cache))
            got.append(ours(x[:, t:t + 1], start_pos=t, cache=our_cache))
    want, got = torch.cat(want, 1), torch.cat(got, 1)
    assert torch.allclose(got, want, atol=1e-5, rtol=1e-5), (got - want).abs().max()
    # Our cache holds the normalised latent and the rotated rope key, (d_c + d^R_h) numbers per token.
    assert our_cache["c_kv"].shape == (2, 8, DC) and our_cache["k_rope"].shape == (2, 8, DR)


def test_reference_comparison_can_fail():
    """Sanity check on the test itself: a wrong softmax scale must be caught."""
    cfg, ref, ours, rot = make_pair(12, True, "absorbed")
    ours.softmax_scale = 1.0 / DN ** 0.5                                 # forgets the rope part: sqrt(d_h) only
    x = torch.randn(1, 6, D, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    mask = torch.full((6, 6), float("-inf"), dtype=torch.float64).triu(1)[None, None]
    with torch.no_grad():
        assert not torch.allclose(ours(x), ref_forward(ref, rot, x, 0, mask, None), atol=1e-5, rtol=1e-5)
