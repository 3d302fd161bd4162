"""V4.1's block (course_lib.nano.v41): single-pass mHC, Engram's gate, the encoder/decoder split and active
parameters, checked against the course's V4 modules and the released code's equations on hand-worked cases."""
import math

import pytest
import torch

from course_lib.csa2 import V41_FLASH, CSA2Layout
from course_lib.engram import Engram
from course_lib.mhc import HyperConnection
from course_lib.nano.v41 import (active_params, encoder_decoder, hc_coefficients, layer_active_params, one_hot_mix,
                                 single_pass_block)

D, N = 8, 4


def _hcs():
    torch.manual_seed(0)
    return HyperConnection(D, N, init_std=0.5), HyperConnection(D, N, init_std=0.5)


def test_hc_coefficients_match_the_course_mhc():
    hc, _ = _hcs()
    x = torch.randn(2, 3, N, D, dtype=torch.float64)
    hc = hc.double()
    pre, mix, post = hc_coefficients(hc, x)
    layer_input, mix_ref, post_ref = hc(x)
    assert torch.allclose((pre.unsqueeze(-1) * x).sum(2), layer_input)
    assert torch.allclose(mix, mix_ref) and torch.allclose(post, post_ref)
    assert torch.allclose(mix.sum(-1), torch.ones(2, 3, N, dtype=torch.float64), atol=1e-5)  # rows sum to 1


def test_single_pass_block_reads_through_the_previous_sites_mix():
    attn_hc, ffn_hc = (h.double() for h in _hcs())
    attn, ffn = torch.nn.Linear(D, D).double(), torch.nn.Linear(D, D).double()
    x = torch.randn(1, 5, N, D, dtype=torch.float64)
    carried = torch.softmax(torch.randn(1, 5, N, dtype=torch.float64), -1)
    out, next_mix = single_pass_block(x, carried, attn_hc, attn, ffn_hc, ffn)
    # by hand, with the course's V4 module for B and C of each site
    _, b1, c1 = attn_hc(x)
    a1 = hc_coefficients(attn_hc, x)[0]
    x1 = HyperConnection.combine(x, attn((carried.unsqueeze(-1) * x).sum(2)), b1, c1)
    _, b2, c2 = ffn_hc(x1)
    x2 = HyperConnection.combine(x1, ffn((a1.unsqueeze(-1) * x1).sum(2)), b2, c2)
    assert torch.allclose(out, x2)
    assert torch.allclose(next_mix, hc_coefficients(ffn_hc, x1)[0])
    # V4's order (each site reads through its own A) is a different function
    v4_x1 = HyperConnection.combine(x, attn(attn_hc(x)[0]), b1, c1)
    assert not torch.allclose(v4_x1, x1)


def test_first_block_reads_stream_zero():
    x = torch.randn(1, 2, N, D)
    seen = {}
    attn_hc, ffn_hc = _hcs()
    single_pass_block(x, one_hot_mix(x), attn_hc, lambda h: seen.setdefault("attn", h) * 0, ffn_hc, lambda h: h * 0)
    assert torch.equal(seen["attn"], x[:, :, 0])
    with pytest.raises(ValueError, match="carried"):
        single_pass_block(x, torch.zeros(1, 2), attn_hc, lambda h: h, ffn_hc, lambda h: h)


def test_engram_gate_is_the_released_formula_and_writes_before_attention():
    torch.manual_seed(1)
    eps = 1e-20                                        # V4.1-Flash's rms_norm_eps, which its Engram gate uses
    eng = Engram(D, vocab_size=16, table_size=17, max_ngram=3, n_heads=2, d_mem=4, hc_mult=2, short_conv=False,
                 norm_eps=eps)
    with torch.no_grad():
        for norm in list(eng.key_norms) + list(eng.query_norms):
            norm.weight.uniform_(0.5, 1.5)
    ids = torch.randint(0, 16, (1, 6))
    h = torch.randn(1, 6, 2, D)
    e = eng.lookup(ids)
    gates = eng.gates(h, e)[..., 0]
    for g in range(2):
        # engram.py DeepseekV41Engram.forward: dot = sum(h * (q_w k_w) * key) rstd(h) rstd(key) / sqrt(d)
        key = eng.key_projs[g](e)
        w = eng.query_norms[g].weight * eng.key_norms[g].weight
        rstd = torch.rsqrt(h[:, :, g].pow(2).mean(-1) + eps) * torch.rsqrt(key.pow(2).mean(-1) + eps)
        dot = (h[:, :, g] * w * key).sum(-1) * rstd / math.sqrt(D)
        ref = torch.sigmoid(torch.copysign(dot.abs().clamp_min(1e-6).sqrt(), dot))
        assert torch.allclose(gates[..., g], ref, atol=1e-6)
    # in a block the memory is added to the streams before the attention site reads them
    attn_hc, ffn_hc = (HyperConnection(D, 2, init_std=0.5) for _ in range(2))
    seen = {}
    mix = torch.tensor([0.25, 0.75]).expand(1, 6, 2)
    single_pass_block(h, mix, attn_hc, lambda y: seen.setdefault("in", y), ffn_hc, lambda y: y * 0, eng, ids)
    assert torch.allclose(seen["in"], (mix.unsqueeze(-1) * (h + eng(h, ids))).sum(2), atol=1e-6)
    with pytest.raises(ValueError, match="ids"):
        single_pass_block(h, mix, attn_hc, lambda y: y, ffn_hc, lambda y: y, eng)


def test_encoder_decoder_split_of_v41_flash():
    enc, dec = encoder_decoder()
    assert enc == tuple(range(20)) and dec == tuple(range(20, 40))
    bad = CSA2Layout("no decoder", (0, 2, 2), kv_sources=(1,), index_sources=(1,))
    with pytest.raises(ValueError, match="layout"):
        encoder_decoder(bad)


def test_active_parameters_by_hand():
    # layer 3 (Reuse): attention 5120*1280 + 1280*64*512 + 5120*512 + 64*512*1024 + 8*1024*5120,
    # experts (6 + 1) * 3 * 5120 * 2304 + router 384 * 5120, two mHC projections 2 * (6 * 4) * (4 * 5120)
    attn = 5120 * 1280 + 1280 * 32768 + 5120 * 512 + 32768 * 1024 + 8192 * 5120
    assert layer_active_params(3) == attn + 7 * 3 * 5120 * 2304 + 384 * 5120 + 2 * 24 * 20480
    # a Full ratio-2 layer adds its compressor (wkv, wgate), the indexer's wk, wq_b and weights_proj
    extra = 2 * 5120 * 512 + 512 * 128 + 1280 * 32 * 128 + 5120 * 32
    assert layer_active_params(2) - layer_active_params(3) == extra
    # the encoder/decoder reading gives about 8B active per prompt token and 16B per generated token
    assert active_params("prefill") / 1e9 == pytest.approx(7.9, abs=0.05)
    assert active_params("decode") / 1e9 == pytest.approx(16.1, abs=0.05)
    with pytest.raises(ValueError, match="phase"):
        active_params("train")
    assert V41_FLASH.mode(1) == "window"              # the Engram layers sit in the encoder


def test_single_pass_block_matches_nemo_automodel_v41_with_the_same_weights():
    """The same weights in NeMo AutoModel's port of the released V4.1 code (nemo-automodel >= 0.7.0, pure torch on a
    CPU): its DeepseekV41HyperConnection, collapse and expand in DeepseekV41Block's order."""
    from types import SimpleNamespace

    ref = pytest.importorskip("nemo_automodel.components.models.deepseek_v41.layers")
    cfg = SimpleNamespace(hc_mult=N, hc_sinkhorn_iters=20, hc_eps=1e-6, rms_norm_eps=1e-6, hidden_size=D,
                          initializer_range=0.5)
    torch.manual_seed(3)
    theirs = [ref.DeepseekV41HyperConnection(cfg) for _ in range(2)]
    ours = [HyperConnection(D, N, eps=1e-6, rms_eps=1e-6) for _ in range(2)]
    with torch.no_grad():
        for o, t in zip(ours, theirs):
            t.base.normal_()
            t.scale.uniform_(0.5, 1.5)
            o.fn.copy_(t.fn), o.base.copy_(t.base), o.scale.copy_(t.scale)
    attn, ffn = torch.nn.Linear(D, D), torch.nn.Linear(D, D)
    x = torch.randn(2, 5, N, D)
    carried = torch.softmax(torch.randn(2, 5, N), -1)
    m1 = theirs[0](x)
    x1 = ref.DeepseekV41HyperConnection.expand(attn(ref.DeepseekV41HyperConnection.collapse(x, carried)), x, m1)
    m2 = theirs[1](x1)
    x2 = ref.DeepseekV41HyperConnection.expand(ffn(ref.DeepseekV41HyperConnection.collapse(x1, m1.pre)), x1, m2)
    out, nxt = single_pass_block(x, carried, ours[0], attn, ours[1], ffn)
    assert torch.allclose(hc_coefficients(ours[0], x)[1], m1.comb.transpose(-1, -2), atol=1e-5)   # B = comb^T
    assert torch.allclose(out, x2, atol=1e-5) and torch.allclose(nxt, m2.pre, atol=1e-6)
