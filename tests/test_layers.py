"""course_lib.layers: RMSNorm, SwiGLU, the causal mask, attend, the KV cache, and the MHA/GQA/MQA baselines.

Each expected value is computed independently: by the paper's formula written out in float64 (loops over heads,
queries and keys), by hand in the comments, or by torch's own scaled_dot_product_attention. MLA, built on these
layers, is tested in tests/test_mla.py.
"""
import math

import pytest
import torch
import torch.nn.functional as F

from course_lib.layers import (GQA, MHA, MQA, RMSNorm, SwiGLU, append_to_cache, apply_rope, attend, causal_mask,
                               rope_cos_sin, swiglu)

torch.set_num_threads(2)


def rand(*shape, seed=0, dtype=torch.float64):
    return torch.randn(*shape, dtype=dtype, generator=torch.Generator().manual_seed(seed))


def decode_stepwise(module, x, prompt_len):
    """Prefill prompt_len tokens, then feed one token at a time through the cache."""
    cache = {}
    outs = [module(x[:, :prompt_len], start_pos=0, cache=cache)]
    for t in range(prompt_len, x.shape[1]):
        outs.append(module(x[:, t:t + 1], start_pos=t, cache=cache))
    return torch.cat(outs, dim=1), cache


# ---------------------------------------------------------------------------------------------- RMSNorm
def test_rmsnorm_by_hand():
    # x = (3, 4): mean of squares (9 + 16) / 2 = 12.5; weight (2, 0.5) -> (2 * 3, 0.5 * 4) / sqrt(12.5 + eps).
    n = RMSNorm(2, eps=1e-6).double()
    with torch.no_grad():
        n.weight.copy_(torch.tensor([2.0, 0.5]))
    got = n(torch.tensor([[3.0, 4.0]], dtype=torch.float64))
    rms = math.sqrt(12.5 + 1e-6)
    assert got[0].tolist() == pytest.approx([6.0 / rms, 2.0 / rms], rel=1e-14)


def test_rmsnorm_equals_the_formula_row_by_row_and_subtracts_no_mean():
    n = RMSNorm(6, eps=1e-5).double()
    with torch.no_grad():
        n.weight.uniform_(0.5, 1.5, generator=torch.Generator().manual_seed(1))
    x = rand(2, 3, 6, seed=2) + 5.0                                   # a large mean: RMSNorm keeps it (LayerNorm would not)
    got = n(x)
    for b in range(2):
        for t in range(3):
            row = x[b, t].tolist()
            rms = math.sqrt(sum(v * v for v in row) / 6 + 1e-5)
            want = [w * v / rms for w, v in zip(n.weight.tolist(), row)]
            assert got[b, t].tolist() == pytest.approx(want, rel=1e-12)
    assert (got.mean(-1) > 0.5).all()


def test_rmsnorm_normalises_bfloat16_in_float32():
    """bf16 input: the mean of squares is taken in float32 (as DeepSeek-V3's code does), then cast back."""
    n = RMSNorm(64).to(torch.bfloat16)
    x = (rand(4, 64, seed=3) * 30).to(torch.bfloat16)
    got = n(x)
    assert got.dtype == torch.bfloat16
    x64 = x.double()
    want = x64 / x64.pow(2).mean(-1, keepdim=True).add(1e-6).sqrt()
    assert (got.double() - want).abs().max() < 2e-2                  # bf16 rounding of the result only


# ---------------------------------------------------------------------------------------------- SwiGLU
def test_swiglu_by_hand():
    # SiLU(z) = z / (1 + e^-z): SiLU(0) = 0, SiLU(2) = 2 / (1 + e^-2); times the up values (5, 3).
    got = swiglu(torch.tensor([0.0, 2.0], dtype=torch.float64), torch.tensor([5.0, 3.0], dtype=torch.float64))
    assert got.tolist() == pytest.approx([0.0, 3 * 2 / (1 + math.exp(-2))], rel=1e-15)


def test_swiglu_module_is_w2_of_silu_w1_times_w3():
    torch.manual_seed(0)
    ffn = SwiGLU(4, 3).double()
    x = rand(5, 4, seed=4)
    w1, w3, w2 = ffn.w1.weight.tolist(), ffn.w3.weight.tolist(), ffn.w2.weight.tolist()
    got = ffn(x)
    for n, row in enumerate(x.tolist()):
        gate = [sum(w1[j][i] * row[i] for i in range(4)) for j in range(3)]
        up = [sum(w3[j][i] * row[i] for i in range(4)) for j in range(3)]
        h = [g / (1 + math.exp(-g)) * u for g, u in zip(gate, up)]
        want = [sum(w2[o][j] * h[j] for j in range(3)) for o in range(4)]
        assert got[n].tolist() == pytest.approx(want, rel=1e-12, abs=1e-15)
    assert [p.shape for p in (ffn.w1.weight, ffn.w3.weight, ffn.w2.weight)] == [(3, 4), (3, 4), (4, 3)]
    assert all(lin.bias is None for lin in (ffn.w1, ffn.w2, ffn.w3))


# ---------------------------------------------------------------------------------------------- mask, attend, cache
def test_causal_mask_by_hand():
    # 3 new queries after 2 cached tokens: query i (absolute position 2 + i) sees keys 0 .. 2 + i.
    T, F_ = True, False
    assert causal_mask(3, 5).tolist() == [[T, T, T, F_, F_], [T, T, T, T, F_], [T, T, T, T, T]]
    assert causal_mask(3, 3).tolist() == [[T, F_, F_], [T, T, F_], [T, T, T]]
    assert causal_mask(1, 4) is None                                  # one new token sees every cached one


def test_attend_is_the_softmax_weighted_sum():
    q, k, v = rand(3, 2, seed=5), rand(4, 2, seed=6), rand(4, 3, seed=7)
    mask = causal_mask(3, 4)
    got = attend(q, k, v, 0.5, mask)
    for i in range(3):
        seen = [j for j in range(4) if mask[i, j]]
        s = [0.5 * sum(q[i, d].item() * k[j, d].item() for d in range(2)) for j in seen]
        z = sum(math.exp(a) for a in s)
        want = [sum(math.exp(a) / z * v[j, c].item() for a, j in zip(s, seen)) for c in range(3)]
        assert got[i].tolist() == pytest.approx(want, rel=1e-12)


def test_append_to_cache_concatenates_along_the_token_axis():
    a, b = torch.zeros(1, 2, 3), torch.ones(1, 1, 3)
    assert append_to_cache(None, 1, k=a)[0] is a                      # no cache: the tensor comes back unchanged
    cache = {}
    (k,) = append_to_cache(cache, 1, k=a)
    assert k is a and cache["k"] is a
    k, v = append_to_cache(cache, 1, k=b, v=b)                        # v is new: created from this call alone
    assert k.tolist() == [[[0.0] * 3, [0.0] * 3, [1.0] * 3]] and v.shape == (1, 1, 3)
    assert cache["k"] is k and cache["v"] is v


# ---------------------------------------------------------------------------------------------- MHA / GQA / MQA
def loop_gqa(m: GQA, x):
    """V2 Eq. 1-8 written out in float64: head i reads kv head i // (n_heads / n_kv_heads); RoPE rotates pair
    (x_j, x_{j + d/2}) by position * base^(-2j/d); causal softmax over keys 0..t."""
    B, T, _ = x.shape
    H, G, hd = m.n_heads, m.n_kv_heads, m.head_dim
    W = m.qkv.weight.double()
    q_all, k_all, v_all = (x.double() @ W.T).split([H * hd, G * hd, G * hd], dim=-1)

    def rot(vec, pos):
        out = vec.clone()
        for j in range(hd // 2):
            phi = pos * m.rope_base ** (-2 * j / hd)
            a, b = vec[j].item(), vec[j + hd // 2].item()
            out[j], out[j + hd // 2] = a * math.cos(phi) - b * math.sin(phi), a * math.sin(phi) + b * math.cos(phi)
        return out

    heads = torch.zeros(B, T, H * hd, dtype=torch.float64)
    for b in range(B):
        for i in range(H):
            g = i // (H // G)
            keys = [rot(k_all[b, s, g * hd:(g + 1) * hd], s) for s in range(T)]
            for t in range(T):
                qv = rot(q_all[b, t, i * hd:(i + 1) * hd], t)
                s = torch.tensor([float(qv @ keys[j]) / math.sqrt(hd) for j in range(t + 1)])
                p = torch.softmax(s.double(), 0)
                heads[b, t, i * hd:(i + 1) * hd] = sum(p[j] * v_all[b, j, g * hd:(g + 1) * hd] for j in range(t + 1))
    return heads @ m.out.weight.double().T


@pytest.mark.parametrize("n_kv_heads", [4, 2, 1])
def test_gqa_equals_the_written_out_formula(n_kv_heads):
    torch.manual_seed(1)
    m = GQA(16, 4, n_kv_heads).double()
    x = rand(1, 5, 16, seed=8)
    with torch.no_grad():
        assert torch.allclose(m(x), loop_gqa(m, x), atol=1e-12)


def test_gqa_with_as_many_kv_heads_as_heads_is_mha_and_with_one_is_mqa():
    torch.manual_seed(2)
    x = rand(2, 6, 32, seed=9)
    gqa4, mha = GQA(32, 4, 4).double(), MHA(32, 4).double()
    mha.load_state_dict(gqa4.state_dict())
    gqa1, mqa = GQA(32, 4, 1).double(), MQA(32, 4).double()
    mqa.load_state_dict(gqa1.state_dict())
    with torch.no_grad():
        assert torch.equal(gqa4(x), mha(x)) and torch.equal(gqa1(x), mqa(x))
    assert (mha.n_kv_heads, mqa.n_kv_heads) == (4, 1)


def test_gqa_is_causal():
    torch.manual_seed(3)
    m = GQA(32, 4, 2).double()
    x = rand(1, 8, 32, seed=10)
    x2 = x.clone()
    x2[:, 5:] += 1.0                                                             # change only the future
    with torch.no_grad():
        a, b = m(x), m(x2)
    assert (a[:, :5] - b[:, :5]).abs().max() < 1e-12
    assert (a[:, 5:] - b[:, 5:]).abs().max() > 1e-3


def reference_gqa(m: GQA, x):
    """Independent GQA: copy each kv head to its query heads and use torch's SDPA."""
    B, T, _ = x.shape
    H, G, hd = m.n_heads, m.n_kv_heads, m.head_dim
    q, k, v = m.qkv(x).split([H * hd, G * hd, G * hd], dim=-1)
    q, k, v = (t.view(B, T, -1, hd).transpose(1, 2) for t in (q, k, v))
    cos, sin = rope_cos_sin(torch.arange(T), hd, dtype=x.dtype)
    q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    k, v = k.repeat_interleave(H // G, dim=1), v.repeat_interleave(H // G, dim=1)
    y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    return m.out(y.transpose(1, 2).reshape(B, T, -1))


@pytest.mark.parametrize("cls,kw,groups", [(MHA, {}, 4), (GQA, {"n_kv_heads": 2}, 2), (MQA, {}, 1)])
def test_baselines_match_reference_and_cache(cls, kw, groups):
    torch.manual_seed(0)
    m = cls(32, 4, **kw).double()
    x = rand(2, 9, 32, seed=12)
    with torch.no_grad():
        full = m(x)
        assert (full - reference_gqa(m, x)).abs().max() < 1e-10
        stepped, cache = decode_stepwise(m, x, 3)
    assert (stepped - full).abs().max() < 1e-10
    assert cache["k"].shape == (2, groups, 9, 8)
    assert m.cache_elements_per_token() == 2 * groups * 8


@pytest.mark.parametrize("cls,kw", [(MHA, {}), (GQA, {"n_kv_heads": 2}), (MQA, {})])
def test_fused_float32_path_matches_written_out_float64(cls, kw):
    """float32 runs torch's fused SDPA, float64 the written-out softmax: same weights -> same outputs (to float32
    rounding), for a full causal pass and for cached decoding."""
    torch.manual_seed(0)
    m64 = cls(32, 4, **kw).double()
    m32 = cls(32, 4, **kw)
    m32.load_state_dict(m64.state_dict())
    x = rand(2, 9, 32, seed=14)
    with torch.no_grad():
        full64, full32 = m64(x), m32(x.float())
        stepped32, _ = decode_stepwise(m32, x.float(), 4)
    assert full64.abs().mean() > 1e-3
    assert (full32.double() - full64).abs().max() < 1e-5
    assert (stepped32.double() - full64).abs().max() < 1e-5


def test_tiny_lm_uses_the_shared_mha():
    """One MHA in the course: TinyLM's attention is course_lib.layers.MHA (no second copy in model.py)."""
    from course_lib.model import ModelConfig, TinyLM
    m = TinyLM(ModelConfig(vocab_size=11, hidden_size=32, num_attention_heads=4, num_hidden_layers=2,
                           max_position_embeddings=16))
    assert all(type(b.attn) is MHA for b in m.blocks)
    with pytest.raises(ValueError, match="max_position_embeddings"):
        m(torch.zeros(1, 17, dtype=torch.long))


# ---------------------------------------------------------------------------------------------- validation
@pytest.mark.parametrize("args,kw,name", [
    ((0, 4, 4), {}, "d_model"), ((32, 0, 1), {}, "n_heads"), ((32, True, 1), {}, "n_heads"),
    ((32, 4, 0), {}, "n_kv_heads"), ((48, 6, 4), {}, "n_kv_heads"), ((50, 4, 4), {}, "n_heads"),
    ((42, 6, 2), {}, "head_dim"), ((32, 4, 2), {"head_dim": 0}, "head_dim"), ((32, 4, 2), {"head_dim": 5}, "head_dim"),
])
def test_gqa_rejects_bad_arguments_naming_them(args, kw, name):
    with pytest.raises(ValueError, match=name):
        GQA(*args, **kw)


def test_mha_rejects_heads_that_do_not_divide_d_model():
    with pytest.raises(ValueError, match="n_heads"):
        MHA(50, 4)


def test_bad_inputs_and_caches_raise_naming_them():
    g = GQA(32, 4, 2, max_seq_len=8)
    x = torch.zeros(1, 3, 32)
    with pytest.raises(ValueError, match="x must have shape"):
        g(torch.zeros(1, 3, 30))
    with pytest.raises(ValueError, match="x must have shape"):
        g(torch.zeros(3, 32))
    with pytest.raises(ValueError, match="start_pos"):
        g(x, start_pos=-1)
    with pytest.raises(ValueError, match="max_seq_len"):
        g(torch.zeros(1, 9, 32))
    with pytest.raises(ValueError, match="start_pos"):                        # empty cache: start_pos must be 0
        g(x, start_pos=2, cache={})
    with pytest.raises(ValueError, match="cache must be a dict"):
        g(x, cache=[])
    with pytest.raises(ValueError, match="cache"):                             # 4 kv heads cached, the module has 2
        g(torch.zeros(1, 1, 32), start_pos=3, cache={"k": torch.zeros(1, 4, 3, 8), "v": torch.zeros(1, 4, 3, 8)})
    with pytest.raises(ValueError, match="start_pos=2 but the cache holds 3"):
        g(torch.zeros(1, 1, 32), start_pos=2, cache={"k": torch.zeros(1, 2, 3, 8), "v": torch.zeros(1, 2, 3, 8)})
