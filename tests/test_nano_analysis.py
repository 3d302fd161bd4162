"""course_lib.nano_analysis: the notebook's measurements run on a small model and reject bad input."""
import matplotlib
import pytest
import torch

from course_lib import nano, nano_analysis
from course_lib.corpus import Corpus

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


def test_sample_is_seeded_and_checks_input(model):
    a = nano_analysis.sample_text(model, "def ", 10, 0.8, seed=1)
    assert a == nano_analysis.sample_text(model, "def ", 10, 0.8, seed=1)
    with pytest.raises(ValueError, match="temperature"):
        nano_analysis.sample_text(model, "def ", 10, 3.0)
    with pytest.raises(ValueError, match="domain"):
        nano_analysis.plot_sample(model, domain="klingon")


def test_figures_draw():
    assert nano_analysis.plot_architecture(nano.TINY) is not None
    runs = nano_analysis.load_runs(("nano",))
    assert nano_analysis.plot_runs(runs) is not None and "val loss" in nano_analysis.runs_table(runs)


def test_shipped_deep_model_decodes_exactly_as_greedy():
    """The 8-layer model notebook 09 §5 claims its speed-up on: self-speculative decoding returns greedy's tokens,
    in float64 (the exactness claim) and in float32 (how the notebook times it), on a prompt of every domain; its
    drafts are mostly accepted (a trained MTP module; an untrained one agrees with the main model by chance only)."""
    import copy

    from course_lib import asset_path, nano_export
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


def test_speculative_goal_is_judged_from_the_numbers():
    def res(**best):
        base = dict(acceptance=0.6, speedup=1.0, identical_float64=True)
        return {"english": dict(base), "chinese": {**base, **best}}
    best, met, line = nano_analysis.speculative_goal(res(acceptance=0.9, speedup=1.35))
    assert (best, met) == ("chinese", True) and line.endswith(": met")
    for bad in (dict(acceptance=0.9, speedup=1.29), dict(acceptance=0.79, speedup=2.0),
                dict(acceptance=0.9, speedup=1.5, identical_float64=False),
                dict(acceptance=0.9, speedup=1.5, identical_float64=None)):
        best, met, line = nano_analysis.speculative_goal(res(**bad))
        assert best == "chinese" and not met and line.endswith("NOT met")
    with pytest.raises(ValueError, match="results"):
        nano_analysis.speculative_goal({})
