"""RoPE: the two layouts agree up to a permutation, and both equal transformers' DeepseekV3 helpers."""
import pytest
import torch

from course_lib.rope import apply_rope, interleaved_to_half, rope_cos_sin

torch.set_num_threads(2)


def rand(*shape, seed=0, dtype=torch.float64):
    return torch.randn(*shape, dtype=dtype, generator=torch.Generator().manual_seed(seed))


def test_layouts_agree_up_to_the_permutation():
    """Rotating interleaved pairs then de-interleaving == de-interleaving then rotating halves."""
    x = rand(2, 3, 7, 16)
    cos, sin = rope_cos_sin(torch.arange(7), 16, dtype=torch.float64)
    inter = apply_rope(x, cos, sin, interleaved=True)
    half = apply_rope(interleaved_to_half(x), cos, sin, interleaved=False)
    assert torch.allclose(interleaved_to_half(inter), half, atol=1e-12)
    # Without the permutation they differ: the layouts really are different.
    assert not torch.allclose(inter, apply_rope(x, cos, sin, interleaved=False), atol=1e-3)


@pytest.mark.parametrize("interleaved", [False, True])
def test_scores_depend_only_on_relative_position(interleaved):
    q, k = rand(16, seed=1), rand(16, seed=2)
    cos, sin = rope_cos_sin(torch.arange(40), 16, dtype=torch.float64)

    def score(m, n):
        return (apply_rope(q, cos[m], sin[m], interleaved) @ apply_rope(k, cos[n], sin[n], interleaved)).item()

    assert score(10, 7) == pytest.approx(score(33, 30), abs=1e-12)
    assert score(10, 7) != pytest.approx(score(10, 3), abs=1e-6)


@pytest.mark.parametrize("interleaved", [False, True])
def test_rotation_preserves_norm(interleaved):
    x = rand(5, 8, seed=3)
    cos, sin = rope_cos_sin(torch.arange(5), 8, dtype=torch.float64)
    assert torch.allclose(apply_rope(x, cos, sin, interleaved).norm(dim=-1), x.norm(dim=-1), atol=1e-12)


def test_matches_transformers_deepseek_v3_helpers():
    """Same cos/sin as DeepseekV3RotaryEmbedding; rotate-half == apply_rotary_pos_emb; interleaved ==
    apply_rotary_pos_emb_interleave, whose output is laid out evens-then-odds (our interleaved_to_half)."""
    tf = pytest.importorskip("transformers")
    from transformers.models.deepseek_v3 import modeling_deepseek_v3 as ds
    cfg = tf.DeepseekV3Config(hidden_size=32, num_attention_heads=4, qk_rope_head_dim=8, qk_nope_head_dim=8,
                              v_head_dim=8, kv_lora_rank=8, q_lora_rank=8, num_hidden_layers=1,
                              rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
    rot = ds.DeepseekV3RotaryEmbedding(cfg)
    T, d = 6, cfg.qk_rope_head_dim
    x32 = rand(1, 4, T, d, seed=4, dtype=torch.float32)
    hf_cos, hf_sin = rot(x32, torch.arange(T)[None])                       # (1, T, d), float32
    cos, sin = rope_cos_sin(torch.arange(T), d, base=10000.0)
    assert torch.allclose(cos, hf_cos[0], atol=1e-6) and torch.allclose(sin, hf_sin[0], atol=1e-6)

    q, k = x32, rand(1, 1, T, d, seed=5, dtype=torch.float32)
    hf_q, hf_k = ds.apply_rotary_pos_emb(q, k, hf_cos, hf_sin)
    assert torch.allclose(apply_rope(q, cos, sin), hf_q, atol=1e-5)
    assert torch.allclose(apply_rope(k, cos, sin), hf_k, atol=1e-5)
    hf_qi, hf_ki = ds.apply_rotary_pos_emb_interleave(q, k, hf_cos, hf_sin)
    assert torch.allclose(interleaved_to_half(apply_rope(q, cos, sin, interleaved=True)), hf_qi, atol=1e-5)
    assert torch.allclose(interleaved_to_half(apply_rope(k, cos, sin, interleaved=True)), hf_ki, atol=1e-5)


def test_bad_rope_arguments():
    with pytest.raises(ValueError, match="dim"):
        rope_cos_sin(torch.arange(3), 7)
    cos, sin = rope_cos_sin(torch.arange(3), 8)
    with pytest.raises(ValueError, match="dim"):
        apply_rope(torch.zeros(3, 6), cos, sin)
