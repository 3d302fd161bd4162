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
