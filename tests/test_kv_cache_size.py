"""KV-cache calculator: formulas checked against the caches the course's attention modules actually fill; the
sparse-attention calculator (V3.2 DSA, V4 CSA/HCA) against hand counts and the published figures."""
import matplotlib
import pytest
import torch

matplotlib.use("Agg")

from course_lib import kv_cache_size  # noqa: E402
from course_lib.mla import GQA, MHA, MLA, MQA  # noqa: E402
from course_lib.kv_cache_size import AttentionShape  # noqa: E402
from course_lib.configs_v4 import DEEPSEEK_V32, DSAModel, V4Model  # noqa: E402

torch.set_num_threads(2)


def cached_elements_per_token(module, B=2, T=5, d_model=64):
    cache = {}
    with torch.no_grad():
        module(torch.randn(B, T, d_model, generator=torch.Generator().manual_seed(0)), cache=cache)
    return sum(t.numel() for t in cache.values()) / (B * T)


@pytest.mark.parametrize("module,shape", [
    (MHA(64, 8), AttentionShape("m", "mha", 1, 8, 8)),
    (GQA(64, 8, 2), AttentionShape("g", "gqa", 1, 8, 8, n_kv_heads=2)),
    (MQA(64, 8), AttentionShape("q", "mqa", 1, 8, 8)),
    (MLA(64, 8, kv_lora_rank=24, qk_rope_head_dim=6), AttentionShape("l", "mla", 1, 8, 8, kv_lora_rank=24, rope_dim=6)),
])
def test_formula_matches_what_the_modules_cache(module, shape):
    assert kv_cache_size.elements_per_token_per_layer(shape) == cached_elements_per_token(module)
    assert kv_cache_size.elements_per_token_per_layer(shape) == module.cache_elements_per_token()


def test_v2_table1_mla_equals_gqa_with_2_25_groups():
    # V2 §2.1.4: with d_c = 4 d_h and d^R_h = d_h / 2, MLA caches as much as GQA with 2.25 groups.
    v2 = kv_cache_size.PRESETS["DeepSeek-V2"]
    assert kv_cache_size.gqa_equivalent_groups(v2) == pytest.approx(2.25)
    table = kv_cache_size.v2_table1(n_heads=128, head_dim=128, n_layers=60, n_groups=8)
    l, d_h = 60, 128
    assert table["MHA"] == 2 * 128 * d_h * l and table["MQA"] == 2 * d_h * l
    assert table["MLA"] == pytest.approx(4.5 * d_h * l)                       # "≈ 9/2 d_h l"


def test_v2_kv_cache_reduction_against_67b():
    # V2 abstract: KV cache reduced by 93.3% vs DeepSeek 67B (V2 cache at 6 bits on average, §3.2.3).
    assert kv_cache_size.v2_vs_67b_reduction() == pytest.approx(0.933, abs=0.001)
    assert kv_cache_size.v2_vs_67b_reduction(2.0, 2.0) < 0.9                        # elements alone do not give 93.3%


def test_per_token_numbers_of_real_models():
    v3 = kv_cache_size.PRESETS["DeepSeek-V3"]
    assert kv_cache_size.elements_per_token(v3) == (512 + 64) * 61
    llama = kv_cache_size.PRESETS["Llama-3-8B"]
    assert kv_cache_size.bytes_per_token(llama, "bf16") == 2 * 8 * 128 * 32 * 2
    rows = kv_cache_size.per_token_table()
    assert {r[0] for r in rows} == set(kv_cache_size.PRESETS)


def test_cache_gb_scales_linearly():
    s = kv_cache_size.PRESETS["DeepSeek-V2"]
    one = kv_cache_size.cache_gb(s, 1000, 1, "bf16")
    assert kv_cache_size.cache_gb(s, 4000, 3, "bf16") == pytest.approx(12 * one)
    assert kv_cache_size.cache_gb(s, 1000, 1, "fp8") == pytest.approx(one / 2)
    assert one == pytest.approx(kv_cache_size.elements_per_token(s) * 2 * 1000 / 1e9)


def test_bad_inputs_raise():
    s = kv_cache_size.PRESETS["DeepSeek-V2"]
    with pytest.raises(ValueError, match="dtype"):
        kv_cache_size.bytes_per_token(s, "int3")
    with pytest.raises(ValueError, match="context"):
        kv_cache_size.cache_gb(s, 0)
    with pytest.raises(ValueError, match="batch"):
        kv_cache_size.cache_gb(s, 10, batch=-1)
    with pytest.raises(ValueError, match="kind"):
        AttentionShape("x", "sparse", 1, 4, 8)
    with pytest.raises(ValueError, match="n_kv_heads"):
        AttentionShape("x", "gqa", 1, 8, 8, n_kv_heads=3)
    with pytest.raises(ValueError, match="kv_lora_rank"):
        AttentionShape("x", "mla", 1, 8, 8, rope_dim=4)
    with pytest.raises(ValueError, match="preset"):
        kv_cache_size.plot_cache_sizes(preset="GPT-5")


def test_plot_function_draws_one_bar_per_kind():
    fig = kv_cache_size.plot_cache_sizes(context=4096, batch=2, dtype="fp8", preset="Llama-3-8B")
    ax = fig.axes[0]
    heights = [p.get_height() for p in ax.patches]
    assert len(heights) == 4
    expected = [kv_cache_size.cache_gb(s, 4096, 2, "fp8") for s in kv_cache_size.variants(kv_cache_size.PRESETS["Llama-3-8B"]).values()]
    assert heights == pytest.approx(expected)
    matplotlib.pyplot.close(fig)


def test_benchmark_cache_bytes_are_exactly_latent_plus_rope_key():
    """Smoke-run the benchmark at a tiny context: MLA caches exactly (d_c + d^R_h) float32 numbers per token."""
    from course_lib.bench import mla as bench
    rows = bench.run(contexts=(8,), d_model=64, n_heads=2, repeat=1, device=torch.device("cpu"))
    dims = bench.V3_HEAD_DIMS
    assert rows[0]["cache_bytes_per_token"]["MLA absorbed"] == (dims["kv_lora_rank"] + dims["qk_rope_head_dim"]) * 4
    assert rows[0]["cache_bytes_per_token"]["MHA"] == 2 * 2 * dims["v_head_dim"] * 4
    assert set(rows[0]["seconds"]) == {"MHA", "MLA naive", "MLA absorbed"}


def test_matches_v2_table9_cache_sizes():
    """V2 Appendix D.2, Table 9 reports KV cache per token (elements): small MoE w/ MLA 15.6K and its MHA twin 110.6K
    (V2-Lite's shape: 27 layers, 16 heads of 128), large MoE w/ MLA 34.6K (V2's shape)."""
    lite, v2 = kv_cache_size.PRESETS["DeepSeek-V2-Lite"], kv_cache_size.PRESETS["DeepSeek-V2"]
    assert round(kv_cache_size.elements_per_token(lite) / 1e3, 1) == 15.6
    assert round(kv_cache_size.elements_per_token(v2) / 1e3, 1) == 34.6
    mha_twin = kv_cache_size.variants(lite)["MHA"]
    assert round(kv_cache_size.elements_per_token(mha_twin) / 1e3, 1) == 110.6


def test_benchmark_command_line_prints_and_records(tmp_path, capsys):
    import json

    from course_lib.bench import mla as bench
    out = tmp_path / "run.json"
    assert bench.main(["--contexts", "4,8", "--d-model", "64", "--heads", "2", "--repeat", "1",
                       "--record", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "naive/absorbed" in printed and "(512 + 64) * 4 = 2304 bytes" in printed
    rows = json.loads(out.read_text())["rows"]
    assert [r["context"] for r in rows] == [4, 8]


# --------------------------------------------------------------------------------------------- sparse attention (V3.2, V4)
def test_sparse_cache_and_flops_by_hand():
    tiny = DSAModel("t", n_layers=2, n_heads=4, kv_lora_rank=8, rope_dim=2, index_n_heads=3, index_head_dim=5,
                    index_topk=10, activated_params=1.0)
    # bf16: per token per layer (8 + 2 + 5) * 2 = 30 bytes; 100 tokens, 2 layers -> 6000.
    assert kv_cache_size.sparse_cache_bytes(tiny, 100) == 6000
    assert kv_cache_size.sparse_cache_bytes(tiny, 100, dense=True) == 100 * 10 * 2 * 2
    # fp8: (8 * 1 + 2 * 2 + 5 * 1) = 17 bytes.
    assert kv_cache_size.sparse_cache_bytes(tiny, 100, "fp8") == 17 * 100 * 2
    # FLOPs: indexer 2 * 3 * 100 * 6 = 3600; attention 2 * 4 * 10 * (16 + 2) = 1440; x 2 layers.
    assert kv_cache_size.sparse_attention_flops(tiny, 100) == 2 * (3600 + 1440)
    assert kv_cache_size.sparse_attention_flops(tiny, 100, dense=True) == 2 * 2 * 4 * 100 * 18
    v4 = V4Model("v", (0, 4, 16), n_heads=2, head_dim=8, rope_dim=2, window=3, csa_rate=4, hca_rate=16,
                 index_n_heads=1, index_head_dim=4, index_topk=5, activated_params=1.0)
    # bf16 entry 8 * 2 = 16 B. Layer 0: window 3 x 16 = 48. Layer 1: 48 + 100 // 4 = 25 x (16 + 8) = 648.
    # Layer 2: 48 + 100 // 16 = 6 x 16 = 144.
    assert kv_cache_size.sparse_cache_bytes(v4, 100) == 48 + 648 + 144
    # FLOPs: window per layer 2 * 2 * 3 * 16 = 192; CSA: indexer 2 * 1 * 25 * 5 = 250 + 2 * 2 * 5 * 16 = 320;
    # HCA: 2 * 2 * 6 * 16 = 384.
    assert kv_cache_size.sparse_attention_flops(v4, 100) == 3 * 192 + 250 + 320 + 384
    assert kv_cache_size.sparse_token_flops(v4, 100) == 2e9 + 3 * 192 + 250 + 320 + 384


def test_v32_fp8_cache_matches_flashmla_format():
    # FlashMLA's V3.2 FP8 cache: 656 bytes per token and layer = 512 FP8 + 16 B scales + 64 BF16; we leave the
    # scales out and add the indexer key (128 FP8).
    assert kv_cache_size.sparse_cache_bytes(DEEPSEEK_V32, 1, "fp8", dense=True) / 61 == 656 - 16


def test_v4_headline_within_a_few_points_of_the_report():
    # V4 report: at 1M tokens V4-Pro ~27% of V3.2's single-token FLOPs and ~10% of its KV cache; Flash ~10% / 7%.
    r = kv_cache_size.v4_vs_v32(2 ** 20)
    assert abs(r["DeepSeek-V4-Pro"]["flops"] - 0.27) < 0.03 and abs(r["DeepSeek-V4-Pro"]["cache"] - 0.10) < 0.03
    assert abs(r["DeepSeek-V4-Flash"]["flops"] - 0.10) < 0.03 and abs(r["DeepSeek-V4-Flash"]["cache"] - 0.07) < 0.03


def test_sparse_calculator_rejects_bad_input():
    with pytest.raises(ValueError, match="context"):
        kv_cache_size.sparse_cache_bytes(DEEPSEEK_V32, 0)
    with pytest.raises(ValueError, match="storage"):
        kv_cache_size.sparse_cache_bytes(DEEPSEEK_V32, 10, "fp4")
    with pytest.raises(ValueError, match="models"):
        kv_cache_size.plot_sparse_curves(("GPT-5",))


def test_plot_sparse_curves_draws_both_panels():
    from course_lib.configs_v4 import DEEPSEEK_V4_PRO
    ctx = 2 ** 17
    fig = kv_cache_size.plot_sparse_curves(("DeepSeek-V3.2", "DeepSeek-V4-Pro"), context=ctx)
    cache_ax, flops_ax = fig.axes
    assert len(cache_ax.lines) == 3 * 2 + 1                  # 3 curves + 3 markers + the context line
    assert [t.get_text() for t in cache_ax.get_legend().get_texts()] == ["V3.2 run dense (MLA)", "DeepSeek-V3.2",
                                                                        "DeepSeek-V4-Pro"]
    assert (cache_ax.get_ylabel(), flops_ax.get_ylabel()) == ("KV cache of one sequence (GB, fp8)",
                                                              "GFLOPs per decoded token")
    assert cache_ax.get_xscale() == flops_ax.get_xscale() == "log"
    # the curves are the calculator's numbers: dense V3.2 first, then each model, each followed by its marker
    dense_curve, dense_marker, v32_curve, v32_marker, pro_curve, pro_marker, context_line = cache_ax.lines
    assert list(context_line.get_xdata()) == [ctx, ctx]
    xs = [int(x) for x in dense_curve.get_xdata()]
    assert ctx in xs and xs == sorted(xs) and xs[0] == 4096 and xs[-1] == 2 ** 20
    assert list(pro_curve.get_ydata()) == pytest.approx([kv_cache_size.sparse_cache_bytes(DEEPSEEK_V4_PRO, s, "fp8") / 1e9
                                                         for s in xs])
    assert list(dense_marker.get_xdata()) == [ctx] and list(pro_marker.get_ydata()) == pytest.approx(
        [kv_cache_size.sparse_cache_bytes(DEEPSEEK_V4_PRO, ctx, "fp8") / 1e9])
    assert list(dense_curve.get_ydata()) == pytest.approx([kv_cache_size.sparse_cache_bytes(DEEPSEEK_V32, s, "fp8",
                                                                                            dense=True) / 1e9 for s in xs])
    assert list(v32_curve.get_ydata()) == pytest.approx([kv_cache_size.sparse_cache_bytes(DEEPSEEK_V32, s, "fp8") / 1e9
                                                         for s in xs])
    assert list(v32_marker.get_xdata()) == [ctx]
    flops_pro = flops_ax.lines[4]
    assert list(flops_pro.get_ydata()) == pytest.approx([kv_cache_size.sparse_token_flops(DEEPSEEK_V4_PRO, s) / 1e9
                                                         for s in xs])
    f = kv_cache_size.sparse_token_flops(DEEPSEEK_V4_PRO, ctx) / kv_cache_size.sparse_token_flops(DEEPSEEK_V32, ctx)
    assert fig._suptitle.get_text().startswith(f"at {ctx:,} tokens vs V3.2: DeepSeek-V4-Pro: {100 * f:.0f}% FLOPs")
    matplotlib.pyplot.close(fig)


def test_plot_sparse_curves_accepts_a_named_model_set():
    fig = kv_cache_size.plot_sparse_curves("V3.2 vs V4-Flash", context=2 ** 16, storage="bf16", dense_v32=False)
    assert len(fig.axes[1].lines) == 2 * 2 + 1
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert legend == list(kv_cache_size.SPARSE_MODEL_SETS["V3.2 vs V4-Flash"]) and "bf16" in fig.axes[0].get_ylabel()
    matplotlib.pyplot.close(fig)
