"""course_lib.mla: Multi-head Latent Attention: caches, causality, naive == absorbed, validation.

(The MHA/GQA/MQA baselines it is compared with live in course_lib.layers: tests/test_layers.py.)
"""
import math

import pytest
import torch

from course_lib.mla import MLA

torch.set_num_threads(2)


def rand(*shape, seed=0, dtype=torch.float64):
    return torch.randn(*shape, dtype=dtype, generator=torch.Generator().manual_seed(seed))


def make_mla(seed=0, dtype=torch.float64, **kw):
    torch.manual_seed(seed)
    args = dict(kv_lora_rank=24, q_lora_rank=20, qk_nope_head_dim=12, qk_rope_head_dim=8, v_head_dim=10)
    args.update(kw)
    m = MLA(48, 4, **args).to(dtype)
    with torch.no_grad():                     # non-trivial norm weights so a forgotten norm is caught
        m.kv_norm.weight.uniform_(0.5, 1.5)
        if m.q_norm is not None:
            m.q_norm.weight.uniform_(0.5, 1.5)
    return m


def decode_stepwise(module, x, prompt_len, **kw):
    """Prefill prompt_len tokens, then feed one token at a time through the cache."""
    cache = {}
    outs = [module(x[:, :prompt_len], start_pos=0, cache=cache, **kw)]
    for t in range(prompt_len, x.shape[1]):
        outs.append(module(x[:, t:t + 1], start_pos=t, cache=cache, **kw))
    return torch.cat(outs, dim=1), cache


# ---------------------------------------------------------------------------------------------- MLA: two paths
@pytest.mark.parametrize("q_lora_rank", [20, None])
@pytest.mark.parametrize("interleaved", [False, True])
def test_naive_and_absorbed_agree_on_prefill_float64(q_lora_rank, interleaved):
    m = make_mla(q_lora_rank=q_lora_rank, rope_interleave=interleaved)
    x = rand(3, 11, 48, seed=1)
    with torch.no_grad():
        naive, absorbed = m(x, path="naive"), m(x, path="absorbed")
    assert naive.abs().mean() > 1e-3                          # not trivially zero
    assert (naive - absorbed).abs().max() < 1e-10


@pytest.mark.parametrize("path", ["naive", "absorbed"])
def test_decode_with_cache_equals_prefill_float64(path):
    m = make_mla(seed=2)
    x = rand(2, 12, 48, seed=3)
    with torch.no_grad():
        full = m(x, path="naive")
        stepped, cache = decode_stepwise(m, x, 5, path=path)
    assert (stepped - full).abs().max() < 1e-10
    assert cache["c_kv"].shape == (2, 12, 24) and cache["k_rope"].shape == (2, 12, 8)


def test_auto_path_agrees_with_both_paths():
    """path="auto" (the default) picks naive for prompts and absorbed for single-token steps: same numbers."""
    m = make_mla(seed=14)
    assert m.path == "auto"
    x = rand(2, 9, 48, seed=15)
    with torch.no_grad():
        stepped, _ = decode_stepwise(m, x, 4)
        assert (stepped - m(x, path="absorbed")).abs().max() < 1e-10


def test_naive_and_absorbed_agree_in_float32():
    """Float32: the two paths sum in different orders; agreement to 1e-5 (outputs are O(1))."""
    m = make_mla(seed=4, dtype=torch.float32)
    x = rand(2, 16, 48, seed=5, dtype=torch.float32)
    with torch.no_grad():
        naive, _ = decode_stepwise(m, x, 4, path="naive")
        absorbed, _ = decode_stepwise(m, x, 4, path="absorbed")
    assert (naive - absorbed).abs().max() < 1e-5


def test_mla_fused_float32_naive_path_matches_written_out_float64():
    """float32 naive MLA runs torch's SDPA (v padded to the q/k head size; is_causal for a prompt, the mask for a
    chunk after a cache), float64 the written-out softmax: same weights -> same outputs and gradients."""
    m64 = make_mla(seed=16)
    m32 = make_mla(seed=16, dtype=torch.float32)
    m32.load_state_dict(m64.state_dict())
    assert m32.qk_head_dim != m32.v_head_dim                                    # the padded case is the one tested
    x = rand(2, 9, 48, seed=17)
    full64 = m64(x, path="naive")
    full32 = m32(x.float(), path="naive")
    assert (full32.double() - full64).abs().max() < 1e-5
    with torch.no_grad():                                                       # prompt 4, then a chunk of 5 (T < S)
        cache = {}
        chunked = torch.cat([m32(x[:, :4].float(), cache=cache, path="naive"),
                             m32(x[:, 4:].float(), start_pos=4, cache=cache, path="naive")], dim=1)
    assert (chunked.double() - full64).abs().max() < 1e-5
    full64.pow(2).sum().backward()
    full32.pow(2).sum().backward()
    for (name, p64), p32 in zip(m64.named_parameters(), m32.parameters()):
        assert (p32.grad.double() - p64.grad).abs().max() < 1e-4 * (1 + p64.grad.abs().max()), name


def test_absorbed_gradients_match_naive():
    """The absorbed path is a re-association of the same products, so training sees the same gradients."""
    grads = []
    for path in ("naive", "absorbed"):
        m = make_mla(seed=6)
        m(rand(2, 7, 48, seed=7), path=path).pow(2).sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in m.parameters()]))
    assert (grads[0] - grads[1]).abs().max() < 1e-9


def test_merged_absorbed_matrices_give_the_same_output():
    """V2 Appendix C: W^UK folded into W^UQ and W^UV into W^O; recompute the output with the merged matrices."""
    m = make_mla(seed=8)
    x = rand(1, 6, 48, seed=9)
    w_q_lat, w_o_lat = m.absorbed_weights()
    assert w_q_lat.shape == (4, 24, 20) and w_o_lat.shape == (48, 4, 24)
    with torch.no_grad():
        c_q = m.q_norm(m.q_down(x))                                             # (1, 6, 20)
        q = m.q_up(c_q).view(1, 6, 4, 20).transpose(1, 2)
        from course_lib.rope import apply_rope, rope_cos_sin
        cos, sin = rope_cos_sin(torch.arange(6), 8, dtype=torch.float64)
        q_rope = apply_rope(q[..., 12:], cos, sin)
        c_kv, k_rope = m.kv_down(x).split([24, 8], dim=-1)
        c_kv, k_rope = m.kv_norm(c_kv), apply_rope(k_rope, cos, sin)
        q_lat = torch.einsum("hcq,btq->bhtc", w_q_lat, c_q)                     # merged query matrix
        scores = (q_lat @ c_kv.transpose(1, 2)[:, None] + q_rope @ k_rope.transpose(1, 2)[:, None]) * m.softmax_scale
        scores = scores.masked_fill(~torch.ones(6, 6, dtype=torch.bool).tril(), float("-inf"))
        o_lat = scores.softmax(-1) @ c_kv[:, None]                               # (1, H, 6, d_c)
        y = torch.einsum("dhc,bhtc->btd", w_o_lat, o_lat)                        # merged output matrix
        assert (y - m(x)).abs().max() < 1e-10


def test_mla_is_causal():
    m = make_mla(seed=10)
    x = rand(1, 9, 48, seed=11)
    x2 = x.clone()
    x2[:, 6:] += 1.0                                                             # change only the future
    with torch.no_grad():
        for path in ("naive", "absorbed"):
            a, b = m(x, path=path), m(x2, path=path)
            assert (a[:, :6] - b[:, :6]).abs().max() < 1e-12
            assert (a[:, 6:] - b[:, 6:]).abs().max() > 1e-3


def test_softmax_scale_default_is_paper_value():
    m = make_mla()
    assert m.softmax_scale == pytest.approx(1 / math.sqrt(12 + 8))              # V2 Eq. 18: sqrt(d_h + d^R_h)


def test_mla_defaults_follow_v2_ratios():
    m = MLA(128, 4)                                                              # d_h = 32
    assert (m.qk_nope_head_dim, m.qk_rope_head_dim, m.v_head_dim, m.kv_lora_rank) == (32, 16, 32, 128)
    assert m.cache_elements_per_token() == 4 * 32 + 32 // 2                      # = 4.5 d_h (V2 Table 1)


def test_mla_plugs_into_the_course_model():
    model_mod = pytest.importorskip("course_lib.model")
    torch.manual_seed(0)
    cfg = model_mod.ModelConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                attention="mla",
                                mla=dict(kv_lora_rank=16, q_lora_rank=24, path="absorbed"))
    model = model_mod.TinyLM(cfg).eval()
    idx = torch.randint(0, 50, (2, 10), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = model(idx).logits
        cache = model.new_cache()
        step = [model(idx[:, :4], cache=cache, start_pos=0).logits]
        for t in range(4, 10):
            step.append(model(idx[:, t:t + 1], cache=cache, start_pos=t).logits)
    assert (torch.cat(step, 1) - full).abs().max() < 1e-4
    assert cache[0]["c_kv"].shape == (2, 10, 16)


# ---------------------------------------------------------------------------------------------- validation
@pytest.mark.parametrize("kw,name", [
    ({"kv_lora_rank": 0}, "kv_lora_rank"), ({"q_lora_rank": -3}, "q_lora_rank"),
    ({"qk_rope_head_dim": 7}, "qk_rope_head_dim"), ({"qk_nope_head_dim": 0}, "qk_nope_head_dim"),
    ({"v_head_dim": 0}, "v_head_dim"), ({"path": "fast"}, "path"), ({"softmax_scale": 0.0}, "softmax_scale"),
])
def test_mla_rejects_bad_arguments(kw, name):
    with pytest.raises(ValueError, match=name):
        MLA(48, 4, **kw)


def test_heads_must_divide_dims():
    with pytest.raises(ValueError, match="n_heads"):
        MLA(50, 4)


def test_bad_cache_and_inputs_raise():
    m = make_mla()
    x = rand(2, 3, 48)
    with pytest.raises(ValueError, match="cache"):
        m(x, cache=[])
    f64 = dict(dtype=torch.float64)
    with pytest.raises(ValueError, match=r"cache\['c_kv'\] must have shape"):      # wrong latent size
        m(x, start_pos=2, cache={"c_kv": torch.zeros(2, 2, 99, **f64), "k_rope": torch.zeros(2, 2, 8, **f64)})
    with pytest.raises(ValueError, match=r"cache\['c_kv'\] must have shape"):      # wrong batch
        m(x, start_pos=2, cache={"c_kv": torch.zeros(3, 2, 24, **f64), "k_rope": torch.zeros(3, 2, 8, **f64)})
    with pytest.raises(ValueError, match="cache"):
        m(x, start_pos=2, cache={"k": torch.zeros(2, 4, 2, 8), "v": torch.zeros(2, 4, 2, 8)})
    with pytest.raises(ValueError, match="cache"):                             # float32 cache, float64 input
        m(x, start_pos=2, cache={"c_kv": torch.zeros(2, 2, 24), "k_rope": torch.zeros(2, 2, 8)})
    with pytest.raises(ValueError, match="start_pos"):
        m(x, start_pos=5, cache={"c_kv": torch.zeros(2, 2, 24, **f64), "k_rope": torch.zeros(2, 2, 8, **f64)})
    with pytest.raises(ValueError, match="x"):
        m(rand(2, 3, 40))
