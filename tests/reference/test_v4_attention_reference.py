"""course_lib.v4_attention against transformers' DeepSeek-V4 modules with the same weights (tiny configs).

Weight map (ours -> transformers' DeepseekV4Attention): q_down -> q_a_proj, q_norm -> q_a_norm, q_up -> q_b_proj,
kv -> kv_proj, kv_norm -> kv_norm, o_a -> o_a_proj (its (G * d_g, in/G) weight viewed as (G, d_g, in/G)),
o_b -> o_b_proj, sinks -> sinks; compressor.{kv, gate, position_bias, norm} -> compressor.{kv_proj, gate_proj,
position_bias, kv_norm}; indexer.compressor.* -> compressor.indexer.* (same names), indexer.wq ->
compressor.indexer.q_b_proj, indexer.weights -> compressor.indexer.scorer.weights_proj.
"""
import pytest
import torch

from course_lib.v4_attention import Compressor, V4Attention, V4Cache

from course_lib.kit.versions import transformers_problem  # noqa: E402

if why := transformers_problem():             # an older transformers computes other numbers: skip, saying which
    pytest.skip(why, allow_module_level=True)
from transformers.cache_utils import DynamicCache  # noqa: E402
from transformers.models.deepseek_v4.configuration_deepseek_v4 import DeepseekV4Config  # noqa: E402
from transformers.models.deepseek_v4.modeling_deepseek_v4 import (  # noqa: E402
    DeepseekV4Attention, DeepseekV4RotaryEmbedding)

torch.set_num_threads(2)
D, H, HD, R, QL, G, OL, W, M, MH, HI, DI, K = 32, 4, 16, 4, 12, 2, 8, 4, 2, 4, 2, 8, 2
LAYER = {"sliding": 0, "csa": 1, "hca": 2}


def make_config(topk=K):
    cfg = DeepseekV4Config(vocab_size=32, hidden_size=D, num_attention_heads=H, head_dim=HD, q_lora_rank=QL,
                           partial_rotary_factor=R / HD, o_groups=G, o_lora_rank=OL, sliding_window=W,
                           num_hidden_layers=3, n_routed_experts=4, num_experts_per_tok=2, moe_intermediate_size=8,
                           layer_types=["sliding_attention", "compressed_sparse_attention",
                                        "heavily_compressed_attention"],
                           compress_rates={"compressed_sparse_attention": M, "heavily_compressed_attention": MH},
                           index_n_heads=HI, index_head_dim=DI, index_topk=topk, rope_theta=10000.0,
                           compress_rope_theta=40000.0)
    cfg._attn_implementation = "eager"
    return cfg


def make_pair(kind, topk=K, seed=0, dtype=torch.float64):
    cfg = make_config(topk)
    torch.manual_seed(seed)
    ref = DeepseekV4Attention(cfg, LAYER[kind]).to(dtype).eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.copy_(torch.randn_like(p) * 0.3 + (1.0 if p.dim() == 1 and p.shape[0] != H else 0.0))
    base = cfg.rope_theta if kind == "sliding" else cfg.compress_rope_theta
    ours = V4Attention(D, H, HD, R, QL, G, OL, W, kind, M if kind == "csa" else MH, HI, DI, topk,
                       rope_base=base).to(dtype).eval()
    sd = ref.state_dict()
    names = {"q_down.weight": "q_a_proj.weight", "q_norm.weight": "q_a_norm.weight", "q_up.weight": "q_b_proj.weight",
             "kv.weight": "kv_proj.weight", "kv_norm.weight": "kv_norm.weight", "o_b.weight": "o_b_proj.weight",
             "sinks": "sinks"}
    comp = {"kv.weight": "kv_proj.weight", "gate.weight": "gate_proj.weight", "position_bias": "position_bias",
            "norm.weight": "kv_norm.weight"}
    if kind != "sliding":
        names.update({f"compressor.{a}": f"compressor.{b}" for a, b in comp.items()})
    if kind == "csa":
        names.update({f"indexer.compressor.{a}": f"compressor.indexer.{b}" for a, b in comp.items()})
        names.update({"indexer.wq.weight": "compressor.indexer.q_b_proj.weight",
                      "indexer.weights.weight": "compressor.indexer.scorer.weights_proj.weight"})
    mine = {k: sd[v] for k, v in names.items()}
    mine["o_a"] = sd["o_a_proj.weight"].view(G, OL, H * HD // G)
    ours.load_state_dict(mine)
    return cfg, ref, ours


def ref_forward(cfg, ref, x, start, cache=None):
    T = x.shape[1]
    pos = torch.arange(start, start + T)
    rot = DeepseekV4RotaryEmbedding(cfg)
    pe = {t: rot(x, pos[None], layer_type=t) for t in ("main", "compress")}
    prior = min(start, W - 1) if cache is not None else 0
    k_pos = torch.arange(start - prior, start + T)
    ok = (k_pos[None] <= pos[:, None]) & (k_pos[None] > pos[:, None] - W)
    mask = torch.zeros(T, len(k_pos), dtype=x.dtype).masked_fill(~ok, float("-inf"))
    mask = mask[None, None].expand(x.shape[0], 1, -1, -1)
    return ref(x, pe, pos[None], mask, cache=cache)[0]


@pytest.mark.parametrize("overlap", [True, False])
def test_compressed_entries_match_transformers(overlap):
    kind = "csa" if overlap else "hca"
    cfg, ref, ours = make_pair(kind)
    x = torch.randn(2, 13, D, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    pos = torch.arange(13)[None]
    with torch.no_grad():
        want, _ = ref.compressor(x, ref.q_a_norm(ref.q_a_proj(x)), pos, None, LAYER[kind])
        got = ours.compressor(x)
    assert got.shape == (2, 13 // ours.compressor.rate, HD)
    assert torch.allclose(got, want[:, 0], atol=1e-5, rtol=1e-5), (got - want[:, 0]).abs().max()


def test_indexer_selection_matches_transformers():
    cfg, ref, ours = make_pair("csa", topk=3)
    x = torch.randn(2, 14, D, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    pos = torch.arange(14)[None]
    with torch.no_grad():
        q_res = ref.q_a_norm(ref.q_a_proj(x))
        want = ref.compressor.indexer(x, q_res, pos, None, LAYER["csa"])
        got = ours.indexer(x, ours.q_norm(ours.q_down(x)))
    # Same selected sets per query (order within the top-k may differ on ties of -inf; both mark those -1).
    assert torch.equal(got.sort(-1).values, want.sort(-1).values)
    assert (got == -1).any() and (got >= 0).any()


@pytest.mark.parametrize("kind", ["sliding", "csa", "hca"])
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-5), (torch.float32, 1e-5)])
def test_prefill_matches_transformers(kind, dtype, tol):
    cfg, ref, ours = make_pair(kind, dtype=dtype)
    x = torch.randn(2, 17, D, generator=torch.Generator().manual_seed(3)).to(dtype)
    with torch.no_grad():
        want = ref_forward(cfg, ref, x, 0)
        got = ours(x)
    assert torch.allclose(got, want, atol=tol, rtol=tol), (got - want).abs().max()


@pytest.mark.parametrize("kind", ["sliding", "csa", "hca"])
def test_decode_with_cache_matches_transformers(kind):
    cfg, ref, ours = make_pair(kind, seed=4)
    x = torch.randn(2, 19, D, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    P = 7                                                      # a prompt that ends mid-window, then 12 steps
    ref_cache, our_cache = DynamicCache(config=cfg), V4Cache()
    # transformers keeps one cache per layer index; pad the earlier layers so ours lines up.
    with torch.no_grad():
        for layer in range(LAYER[kind]):
            ref_cache.update(torch.zeros(2, 1, P, HD, dtype=x.dtype), torch.zeros(2, 1, P, HD, dtype=x.dtype), layer)
        want = [ref_forward(cfg, ref, x[:, :P], 0, ref_cache)]
        got = [ours(x[:, :P], 0, our_cache)]
        for t in range(P, x.shape[1]):
            want.append(ref_forward(cfg, ref, x[:, t:t + 1], t, ref_cache))
            got.append(ours(x[:, t:t + 1], t, our_cache))
    want, got = torch.cat(want, 1), torch.cat(got, 1)
    assert torch.allclose(got, want, atol=1e-5, rtol=1e-5), (got - want).abs().max()
    assert our_cache.length == 19 and our_cache.window.shape[1] == W - 1


def test_prefill_equals_token_by_token_decode():
    """Streaming compression (buffer + overlap state) gives the same entries as compressing the whole prompt."""
    comp = Compressor(D, HD, 3, True, R).double()
    with torch.no_grad():
        comp.position_bias.normal_()
    x = torch.randn(1, 14, D, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    from course_lib.v4_attention import CompressorState
    state = CompressorState()
    with torch.no_grad():
        for t in range(14):
            comp(x[:, t:t + 1], state)
        assert torch.allclose(state.entries, comp(x), atol=1e-12)
    assert state.buf_kv.shape[1] == 14 % 3 and state.prior_kv.shape[1] == 3
