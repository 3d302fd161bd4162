"""course_lib.figures.nano_analysis: the notebook's measurements run on a small model and reject bad input."""
import matplotlib
import pytest
import torch

from course_lib import nano
from course_lib.figures import nano_analysis
from course_lib.toys.corpus import Corpus

matplotlib.use("Agg")
torch.set_num_threads(1)
CFG = nano.TINY.replace(hidden_size=32, intermediate_size=48, moe_intermediate_size=16, num_attention_heads=2,
                        q_lora_rank=16, kv_lora_rank=16, qk_nope_head_dim=8, qk_rope_head_dim=4, v_head_dim=8)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return nano.build_model(CFG).eval()


def test_speculative_by_domain_counts_and_is_exact(model):
    corpus = Corpus(max_chars=4000)
    res = nano_analysis.speculative_by_domain(model, corpus, n_prompts=1, prompt_len=8, new=12, repeat=1)
    assert set(res) == set(corpus.domains)
    for r in res.values():
        assert 0 <= r["acceptance"] <= 1 and r["identical_float64"] is True
        # tokens per forward = new tokens / passes, with passes = prefill + one per loop
        assert 1 <= r["tokens_per_forward"] <= 2


def test_untimed_run_counts_the_same_without_reading_the_clock(model, monkeypatch):
    corpus = Corpus(max_chars=4000)
    timed = nano_analysis.speculative_by_domain(model, corpus, n_prompts=2, prompt_len=8, new=12, repeat=1)
    assert all(r["speedup"] > 0 and r["plain_tok_s"] > 0 for r in timed.values())

    def no_clock():
        raise AssertionError("timed=False read the clock")

    monkeypatch.setattr(nano_analysis.time, "perf_counter", no_clock)
    counted = nano_analysis.speculative_by_domain(model, corpus, n_prompts=2, prompt_len=8, new=12, timed=False)
    for d, r in counted.items():
        assert set(r) == {"acceptance", "tokens_per_forward", "identical_float64"}
        assert r == {k: timed[d][k] for k in r}                 # the counts do not depend on timing
    table = nano_analysis.format_spec_table(counted)
    assert "tok/s" not in table and "measured" not in table and len(table.splitlines()) == 1 + len(corpus.domains)
    assert "tok/s" in nano_analysis.format_spec_table(timed)
    with pytest.raises(ValueError, match="timed"):
        nano_analysis.speculative_by_domain(model, corpus, n_prompts=1, prompt_len=8, new=4, timed="no")


def test_sample_is_seeded_and_checks_input(model):
    a = nano_analysis.sample_text(model, "def ", 10, 0.8, seed=1)
    assert a == nano_analysis.sample_text(model, "def ", 10, 0.8, seed=1)
    with pytest.raises(ValueError, match="temperature"):
        nano_analysis.sample_text(model, "def ", 10, 3.0)
    with pytest.raises(ValueError, match="domain"):
        nano_analysis.plot_sample(model, domain="klingon")


def test_architecture_figure_shows_the_configs_sizes():
    import matplotlib.pyplot as plt

    cfg = nano.TINY
    fig = nano_analysis.plot_architecture(cfg)
    texts = " | ".join(t.get_text() for t in fig.axes[0].texts)
    assert f"embed  (vocab {cfg.vocab_size} x d {cfg.hidden_size})" in texts
    assert f"first_k_dense_replace = {cfg.first_k_dense_replace}" in texts
    assert f"top-{cfg.num_experts_per_tok} of {cfg.n_routed_experts}" in texts
    assert f"MTP module (stored as layer {cfg.num_hidden_layers})" in texts
    assert "nano-tiny" in fig.axes[0].get_title()
    plt.close(fig)
    fig = nano_analysis.plot_architecture(cfg.replace(num_nextn_predict_layers=0, first_k_dense_replace=2))
    texts = " | ".join(t.get_text() for t in fig.axes[0].texts)
    assert "MTP module" not in texts and "layers 0..1: dense FFN" in texts
    plt.close(fig)


def test_each_run_gets_its_own_colour_line_style_and_marker():
    import matplotlib.pyplot as plt

    runs = nano_analysis.load_runs(("nano", "mha", "no_mtp", "aux_loss", "nano_v4"))
    fig = nano_analysis.plot_runs(runs)
    for ax in fig.axes:
        looks = [(ln.get_color(), str(ln.get_linestyle()), ln.get_marker()) for ln in ax.lines]
        assert len(set(looks)) == len(runs) == 5
        assert [ln.get_label() for ln in ax.lines] == [r["label"] for r in runs.values()]
    assert fig.axes[0].lines[1].get_markevery() == (1, 5)           # markers staggered run by run
    assert [t.get_text() for t in fig.legends[0].get_texts()] == [r["label"] for r in runs.values()]
    plt.close(fig)


def test_architecture_figure_writes_the_symbols_as_math():
    import matplotlib.pyplot as plt

    cfg = nano.TINY
    fig = nano_analysis.plot_architecture(cfg)
    texts = [t.get_text() for t in fig.axes[0].texts]
    joined = " | ".join(texts)
    for label in (r"$c^{KV}_t$ + $k^R_t$", f"$d_c$ {cfg.kv_lora_rank}", f"$d'_c$ {cfg.q_lora_rank}",
                  "P($t_{i+1}$)", "P($t_{i+2}$)", r"enorm(embed($t_{i+1}$))  hnorm($h_i$)"):
        assert label in joined, label
    assert "$h_i$" in texts                                        # the arrow's label, on its own
    assert "c_kv" not in joined and "k_rope" not in joined
    assert all(t.count("$") % 2 == 0 for t in texts)              # every math span is closed
    fig.canvas.draw()                                              # mathtext parses every label
    plt.close(fig)


def test_dense_baselines_carry_the_names_the_notebook_teaches():
    runs = nano_analysis.load_runs(("nano", "dense_iso_flop", "dense_iso_param"))
    assert runs["dense_iso_flop"]["label"] == "dense, iso-FLOP"
    assert runs["dense_iso_param"]["label"] == "dense, iso-parameter"
    assert "iso" not in runs["nano"]["label"]
    table = nano_analysis.runs_table(runs)
    assert "dense, iso-FLOP" in table and "dense, iso-parameter" in table and "dense (" not in table


def _weights_per_token(module, cfg):
    """Weights one token multiplies with, counted on a built module: every matrix except the embedding, the routed
    experts' stacks scaled by the share K_r / N_r a token uses."""
    share = cfg.num_experts_per_tok / cfg.n_routed_experts
    return sum(p.numel() * (share if ".experts." in n else 1)
               for n, p in module.named_parameters() if p.dim() >= 2 and "embed" not in n)


@pytest.mark.parametrize("cfg", [nano.TINY, nano.DEEP], ids=["tiny", "deep"])
def test_draft_weight_fraction_matches_the_built_modules(cfg):
    net = nano.build_model(cfg)
    plain, draft = _weights_per_token(nano.main_model(net), cfg), _weights_per_token(net.mtp[0], cfg)
    # the config count also holds the router bias and MLA's inner norm weights: under 0.1% apart
    assert nano_analysis.draft_weight_fraction(cfg) == pytest.approx(draft / plain, rel=1e-3)


def test_draft_weight_fraction_falls_with_depth_and_rejects_configs_without_a_draft():
    tiny, deep = nano_analysis.draft_weight_fraction(nano.TINY), nano_analysis.draft_weight_fraction(nano.DEEP)
    v3 = nano_analysis.draft_weight_fraction(nano.V3)
    assert tiny > deep > v3
    # V3 by README_WEIGHTS.md: the MTP module activates 2.4B with the 0.9B embedding, the main model 36.7B with it
    assert v3 == pytest.approx((2.4 - 0.9) / (36.7 - 0.9), rel=0.1)
    with pytest.raises(ValueError, match="MoE layers"):                 # a dense model's MTP layer is no MoE layer
        nano_analysis.draft_weight_fraction(nano.dense_baseline(nano.TINY, "activated"))


def test_runs_figure_plots_the_recorded_losses_and_the_table_lists_them():
    import math

    import matplotlib.pyplot as plt

    runs = nano_analysis.load_runs(("nano",))
    h = runs["nano"]["history"]
    fig = nano_analysis.plot_runs(runs, title="t")
    steps_ax, flops_ax = fig.axes
    (by_step,), (by_flops,) = steps_ax.lines, flops_ax.lines
    assert list(by_step.get_xdata()) == h["val_step"] and list(by_step.get_ydata()) == h["val_loss"]
    assert list(by_flops.get_xdata()) == h["val_flops"] and list(by_flops.get_ydata()) == h["val_loss"]
    assert (steps_ax.get_xlabel(), steps_ax.get_title(), flops_ax.get_xscale()) == ("training step", "t", "log")
    assert [t.get_text() for t in fig.legends[0].get_texts()] == [runs["nano"]["label"]]
    plt.close(fig)
    table = nano_analysis.runs_table(runs).splitlines()
    assert "val loss" in table[0] and len(table) == 2
    assert table[1].startswith(runs["nano"]["label"][:30])
    assert f"{h['val_loss'][-1]:.4f}" in table[1] and f"{math.exp(h['val_loss'][-1]):.3f}" in table[1]


def test_shipped_deep_model_decodes_exactly_as_greedy():
    """The 8-layer model notebook 10 §5 claims its speed-up on: self-speculative decoding returns greedy's tokens,
    in float64 (the exactness claim) and in float32 (how the notebook times it), on a prompt of every domain; its
    drafts are mostly accepted (a trained MTP module; an untrained one agrees with the main model by chance only)."""
    import copy

    from course_lib import asset_path
    from course_lib.nano import export as nano_export
    from course_lib.model import generate
    from course_lib.mtp import speculative_generate

    directory = asset_path("nano", "nano_deep")
    if not (directory / "model.safetensors").exists():
        pytest.skip("nano_deep not built")
    model = nano_export.from_transformers(directory)
    assert model.nano_config == nano.DEEP
    m64 = copy.deepcopy(model).double()
    corpus = Corpus()
    drafted = accepted = 0
    for d in corpus.domains:
        p = nano_analysis.domain_prompts(corpus, d, 1, 32)[0]
        for m in (m64, model):
            spec, stats = speculative_generate(m, p, 48)
            assert torch.equal(spec, generate(m.model, p, 48, temperature=0)), (d, m.model.embed.weight.dtype)
        drafted, accepted = drafted + stats.drafted, accepted + stats.accepted
    assert accepted / drafted > 0.5


def test_deep_run_is_recorded_with_its_config():
    run = nano_analysis.load_runs(("nano_deep",))["nano_deep"]
    assert run["config"] == nano.DEEP.to_dict() and run["steps"] == 800
    assert (run["batch_size"], run["seq_len"], run["threads"]) == (16, 64, 1)


def _results(**best):
    base = dict(acceptance=0.6, tokens_per_forward=1.6, speedup=1.0, identical_float64=True)
    return {"english": dict(base), "chinese": {**base, **best}}


def test_most_predictable_domain_is_stated_without_wall_time():
    best, line = nano_analysis.most_predictable(_results(acceptance=0.9, tokens_per_forward=1.9, speedup=1.35))
    assert best == "chinese"
    assert line == ("most predictable domain: chinese, acceptance 90.0%, 1.90 tokens per main forward pass, "
                    "identical to greedy (fp64): True")
    slow, _ = nano_analysis.most_predictable(_results(acceptance=0.9, speedup=0.5))
    assert slow == "chinese"                                   # chosen by acceptance, not by the clock
    with pytest.raises(ValueError, match="results"):
        nano_analysis.most_predictable({})


def test_bench_judges_the_most_predictable_domain_from_the_numbers():
    from course_lib.bench.nano_spec import judge

    best, ok, lines = judge(_results(acceptance=0.9, speedup=1.35))
    assert (best, ok) == ("chinese", True) and all(line.endswith(": yes") for line in lines)
    assert lines[1] == "speed-up 1.35x >= 1.3x on this machine: yes"
    for bad, which in ((dict(acceptance=0.9, speedup=1.29), 1), (dict(acceptance=0.79, speedup=2.0), 0),
                       (dict(acceptance=0.9, speedup=1.5, identical_float64=False), 2),
                       (dict(acceptance=0.9, speedup=1.5, identical_float64=None), 2)):
        best, ok, lines = judge(_results(**bad))
        assert best == "chinese" and not ok
        assert [line.endswith(": no") for line in lines] == [i == which for i in range(3)], (bad, lines)
    with pytest.raises(ValueError, match="min_speedup"):
        judge(_results(), min_speedup=0)
    with pytest.raises(ValueError, match="results"):
        judge({})


def test_bench_nano_spec_runs_and_answers_yes_or_no(capsys):
    from course_lib.bench.nano_spec import main

    assert main(["--model", "tiny", "--prompts", "1", "--new", "8", "--repeat", "1"]) == 0
    out = capsys.readouterr().out
    assert "nano-tiny (3 layers), most predictable domain" in out
    assert "on this machine: yes" in out or "on this machine: no" in out
    assert "identical to greedy decoding in float64: yes" in out
    with pytest.raises(SystemExit):
        main(["--repeat", "0"])
