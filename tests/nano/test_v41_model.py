"""nano-V4.1 (course_lib.nano.v41_model): CSA2 sharing between layers, causality, the counts written out by hand,
the equal-FLOPs sizing and the config's checks."""
import pytest
import torch

from course_lib import nano
from course_lib.csa2 import index_scores, trace
from course_lib.nano import v41_model as m
from course_lib.nano.v4 import TINY_V4

CFG = m.TINY_V41


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _model(seed=0):
    torch.manual_seed(seed)
    return m.build_model(CFG).eval()


def _states(model, x):
    """The CSA2 state each layer hands to the next."""
    states, orig = [], [b.attn.forward for b in model.blocks]
    for b, f in zip(model.blocks, orig):
        def wrapped(h, state, f=f):
            out, new = f(h, state)
            states.append(new)
            return out, new
        b.attn.forward = wrapped
    with torch.no_grad():
        model(x)
    return states


def test_layer_modes_follow_the_schedule():
    model = _model()
    assert [b.attn.mode for b in model.blocks] == ["full", "reuse", "full", "reindex"]
    assert [b.engram is not None for b in model.blocks] == [False, True, False, False]
    assert model.blocks[1].engram.short_conv is None                 # V4.1's Engram has no convolution
    assert not hasattr(model.blocks[1].attn, "comp_wkv") and not hasattr(model.blocks[1].attn, "idx_wq_b")
    assert not hasattr(model.blocks[3].attn, "comp_wkv") and hasattr(model.blocks[3].attn, "idx_wq_b")


def test_reuse_takes_its_sources_cache_and_topk_and_reindex_scores_only_candidates():
    model = _model()
    x = torch.randint(0, 256, (2, 32))
    s = _states(model, x)
    assert s[1]["kv"] is s[0]["kv"] and s[1]["topk"] is s[0]["topk"]          # Reuse: nothing new
    assert s[0]["kv"].shape[1] == 32 // 2 and s[2]["kv"].shape[1] == 32          # ratio 2, then ratio 1
    assert s[3]["kv"] is s[2]["kv"] and s[3]["keys"] is s[2]["keys"]            # Reindex reads layer 2's cache
    assert not torch.equal(s[3]["topk"], s[2]["topk"])                          # ... with its own selection
    cand, top = s[3]["cand"], s[3]["topk"]
    chosen = top >= 0
    assert chosen.any()
    assert cand.gather(-1, top.clamp_min(0))[chosen].all()                      # inside the candidates
    # at most candidate_topk_blocks blocks of candidate_block_size positions per query
    assert int(cand.sum(-1).max()) <= CFG.candidate_topk_blocks * CFG.candidate_block_size


def test_batched_index_scores_equal_csa2_index_scores():
    torch.manual_seed(1)
    attn = _model().blocks[0].attn
    x, keys = torch.randn(2, 12, CFG.hidden_size), torch.randn(2, 6, CFG.index_head_dim)
    q_lat = attn.q_norm(attn.wq_a(x))
    got = attn._index(x, q_lat, keys)
    q = attn.idx_wq_b(q_lat).unflatten(-1, (attn.idx_heads, attn.idx_dim))
    from course_lib.v4_attention import partial_rope
    q = partial_rope(q.transpose(1, 2), 0, attn.rope_dim, attn.rope_base).transpose(1, 2)
    w = attn.idx_weights(x) * (attn.idx_dim ** -0.5 * attn.idx_heads ** -0.5)
    for b in range(2):
        torch.testing.assert_close(got[b], index_scores(q[b], keys[b], w[b], ratio=2))


@pytest.mark.parametrize("training", [False, True])
def test_the_model_is_causal(training):
    model = _model().train(training)
    x = torch.randint(0, 256, (2, 40))
    y = x.clone()
    y[:, 25:] = (y[:, 25:] + 7) % 256
    with torch.no_grad():
        a, b = model(x).logits, model(y).logits
    torch.testing.assert_close(a[:, :25], b[:, :25])
    assert not torch.allclose(a[:, 25:], b[:, 25:])


def _written_out_activated(cfg):
    """Weights a token multiplies in nano-V4.1, from the shapes (independent of the model code)."""
    d, H, D, ql, n = cfg.hidden_size, cfg.num_attention_heads, cfg.head_dim, cfg.q_lora_rank, cfg.hc_mult
    di, ih, h = cfg.index_head_dim, cfg.index_n_heads, cfg.moe_intermediate_size
    total = d + d * cfg.vocab_size                                           # final norm, head
    for layer, r in enumerate(cfg.compress_ratios):
        total += d * ql + ql + ql * H * D + d * D + D + H * D * cfg.o_lora_rank + cfg.o_groups * cfg.o_lora_rank * d
        total += H                                                           # sinks
        if layer in cfg.kv_source_layer_ids:
            total += d * D * (2 if r > 1 else 1) + D + D * di + di           # compressor (+gate), norm, wk, k_norm
        if layer in cfg.index_source_layer_ids:
            total += ql * ih * di + d * ih
        total += 2 * ((2 + n) * n * n * d + (2 + n) * n + 3) + 2 * d          # two mHC sites, two norms
        if layer < cfg.first_k_dense_replace:
            total += 3 * d * cfg.intermediate_size
        else:
            total += cfg.n_routed_experts * d + (cfg.num_experts_per_tok + cfg.n_shared_experts) * 3 * d * h
        if layer in cfg.engram_layer_ids:
            de = (cfg.engram_max_ngram - 1) * cfg.engram_heads * cfg.engram_head_dim
            total += (n + 1) * (de * d + d) + 2 * n * d + de                  # projections, norms, rows read
    return total


def test_activated_params_equal_the_written_out_count():
    assert m.activated_params(_model()) == _written_out_activated(CFG)
    other = CFG.replace(compress_ratios=(2, 2, 1, 1), engram_layer_ids=(0, 3), first_k_dense_replace=0)
    torch.manual_seed(0)
    assert m.activated_params(m.build_model(other)) == _written_out_activated(other)


def test_prefill_counts_the_encoder_and_the_decoders_cache_writer():
    model = _model()
    enc = torch.nn.ModuleList(model.blocks[:2])
    d, D, di = CFG.hidden_size, CFG.head_dim, CFG.index_head_dim
    writer = d * D + D + D * di + di                     # layer 2 (ratio 1): compressor, its norm, wk, k_norm
    assert m.active_params(CFG, "prefill") == m.activated_params(enc) + writer
    assert m.active_params(CFG, "decode") == m.activated_params(model)
    with pytest.raises(ValueError, match="phase"):
        m.active_params(CFG, "train")


def test_index_scores_per_token_match_csa2_trace():
    T = 64
    _, scored = m.attention_terms(CFG, T)
    rows = trace(CFG.layout(), T)
    assert scored == pytest.approx(sum(r["index_scores"] for r in rows) / T * CFG.index_n_heads * CFG.index_head_dim)


def test_attention_terms_by_hand():
    ds = nano.TINY
    pairs, scored = m.attention_terms(ds, 4)                          # causal: 1, 2, 3, 4 keys -> 2.5 on average
    assert pairs == pytest.approx(3 * 2.5 * 4 * (16 + 8 + 16)) and scored == 0
    # nano-V4 at T = 8: window 16 sees all (mean 4.5) in 3 layers; CSA m = 4: entries (s+1)//4 = 0,0,0,1,1,1,1,2 (sum 6)
    pairs, scored = m.attention_terms(TINY_V4, 8)
    assert pairs == pytest.approx((3 * 4.5 + 6 / 8) * 4 * 2 * 32)
    assert scored == pytest.approx(6 / 8 * 2 * 16)


def test_kv_cache_by_hand():
    S = 64
    # windows: 4 layers x 16 vectors x 32; Full layers: 32 (ratio 2) and 64 (ratio 1) vectors of 32 + index keys of 16
    values = 4 * 16 * 32 + 32 * (32 + 16) + 64 * (32 + 16)
    assert m.kv_cache_bytes_per_token(CFG, S) == values * 2 / S
    unshared = 4 * 16 * 32 + 2 * 32 * (32 + 16) + 2 * 64 * (32 + 16)      # every compressed layer its own cache
    assert m.kv_cache_bytes_per_token(CFG, S, shared=False) == unshared * 2 / S
    assert m.kv_cache_bytes_per_token(nano.TINY, S, bytes_per_value=1) == 3 * (32 + 8)
    with pytest.raises(ValueError, match="context"):
        m.kv_cache_bytes_per_token(CFG, 0)


def test_equal_flops_sizing_holds_and_is_reproduced():
    cfgs = m.equal_flops_configs()
    flops = {k: m.train_flops_per_token(c) for k, c in cfgs.items()}
    ref = flops["nano-V4.1"]
    for k, f in flops.items():
        assert abs(f - ref) <= m.FLOPS_TOLERANCE * ref, (k, f, ref)
    for k in ("nano-DeepSeek", "nano-V4", "nano-V4.1 without Engram"):
        assert m.fit_ffn_width(cfgs[k], ref) == m.EQUAL_FLOPS_WIDTHS[k]
    assert cfgs["nano-V4.1 without Engram"].engram_layer_ids == ()
    # the unsized capstone models are NOT at equal FLOPs: the sizing does something
    assert abs(m.train_flops_per_token(nano.TINY.replace(num_nextn_predict_layers=0)) - ref) > 0.2 * ref


def test_nano_train_trains_it():
    from course_lib.nano.train import train
    torch.manual_seed(0)
    model = m.build_model(CFG)
    _, hist = train(CFG, 3, batch_size=2, seq_len=32, eval_every=3, eval_batches=1, progress=False, model=model)
    assert len(hist["main_loss"]) == 3 and all(torch.isfinite(torch.tensor(hist["main_loss"])))
    assert hist["main_loss"][0] == pytest.approx(torch.log(torch.tensor(256.0)).item(), abs=0.3)


@pytest.mark.parametrize("change, name", [
    (dict(index_topk=0), "index_topk"),
    (dict(compress_ratios=(2, 2, 1)), "compress_ratios"),
    (dict(kv_source_layer_ids=(0,)), "kv_source_layer_ids"),
    (dict(candidate_source_layer_id=3), "candidate_source_layer_id"),
    (dict(engram_layer_ids=(4,)), "engram_layer_ids"),
    (dict(engram_table_size=100), "engram_table_size"),
    (dict(o_groups=3), "o_groups"),
    (dict(hidden=1), "hidden"),
])
def test_bad_config_is_a_one_line_value_error_naming_the_field(change, name):
    with pytest.raises(ValueError, match=name) as e:
        CFG.replace(**change)
    assert "\n" not in str(e.value)


def test_build_model_rejects_other_configs():
    with pytest.raises(ValueError, match="cfg"):
        m.build_model(TINY_V4)
    with pytest.raises(ValueError, match="cfg"):
        m.attention_terms(object(), 8)


def test_v41_defaults_are_nano_v4s_where_the_fields_are_shared():
    """nano-V4.1 keeps nano-V4's sizes and MoE; only its depth and the index top-k start different."""
    import dataclasses

    from course_lib import nano
    from course_lib.nano import v4
    v4_defaults = {f.name: f.default for f in dataclasses.fields(v4.NanoV4Config)}
    differ = [f.name for f in dataclasses.fields(m.NanoV41Config)
              if f.name in v4_defaults and f.default != v4_defaults[f.name]]
    assert differ == ["name", "num_hidden_layers", "index_topk"]
    assert nano.moe_kwargs(m.NanoV41Config()) == nano.moe_kwargs(v4.TINY_V4)
