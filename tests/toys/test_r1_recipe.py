"""course_lib.toys.r1_recipe: notebook 06's toy R1 recipe: bilingual scratchpads, the data mixes, held-out metrics,
the results table and figures.

Scratchpads are re-read independently (words back to symbols, then the column sums); the figures are read back from
their matplotlib objects and compared with the results they were drawn from.
"""
import math
import random

import matplotlib
import pytest
import torch

from course_lib import rewards
from course_lib.model import ModelConfig, TinyLM
from course_lib.toys import arith, r1_recipe

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

RES = {"base": {"accuracy": 0.25, "think_share": 0.5, "language": float("nan"), "length": 12.0},
       "student": {"accuracy": 0.75, "think_share": 1.0, "language": 1.0, "length": 30.0}}


def _sum_from_steps(pad: str) -> int:
    # independent re-reading of a bilingual scratchpad: words -> symbols, then the column sums of 05's format
    pad = pad.replace(r1_recipe.EN_PLUS, "+").replace(r1_recipe.EN_IS, "=")
    pad = pad.replace(r1_recipe.ZH_PLUS, "+").replace(r1_recipe.ZH_IS, "=")
    sums = [int(step.split("=")[1]) for step in pad.split(",")]
    digits = [s % 10 for s in sums] + ([1] if sums[-1] >= 10 else [])
    return int("".join(map(str, reversed(digits))))


def test_bilingual_scratchpads_say_the_same_arithmetic():
    rng = random.Random(0)
    for a, b in arith.sample_problems(200, rng):
        en, zh = r1_recipe.scratchpad(a, b, "en"), r1_recipe.scratchpad(a, b, "zh")
        mix = r1_recipe.scratchpad(a, b, "mix", rng)
        assert _sum_from_steps(en) == _sum_from_steps(zh) == _sum_from_steps(mix) == a + b
        assert rewards.language_consistency(f"<think>{en}</think>", "en") == 1.0
        assert rewards.language_consistency(f"<think>{zh}</think>", "zh") == 1.0
    assert r1_recipe.scratchpad(358, 467, "en") == "8 plus 7 plus 0 is 15,5 plus 6 plus 1 is 12,3 plus 4 plus 1 is 08"
    assert r1_recipe.scratchpad(358, 467, "zh") == "8加7加0得15,5加6加1得12,3加4加1得08"


def test_mixed_scratchpads_really_mix_and_every_text_round_trips():
    rng, tok = random.Random(1), r1_recipe.make_tokenizer()
    pads = [r1_recipe.scratchpad(123, 456, "mix", rng) for _ in range(200)]
    shares = [rewards.language_consistency(f"<think>{p}</think>", "en") for p in pads]
    assert 0.4 < sum(shares) / len(shares) < 0.6                     # a fair coin per step
    assert any(0 < s < 1 for s in shares)                            # some traces mix both languages
    for p, c in r1_recipe.base_samples(100, random.Random(2), think_share=0.5):
        assert tok.decode(tok.encode(p + c)) == p + c
        assert len(tok.encode(c)) <= r1_recipe.MAX_NEW_TOKENS


def test_samples_and_prompts_carry_correct_answers():
    for p, c in r1_recipe.general_samples(50, random.Random(3)):
        a, b = map(int, p.rstrip("=").split(r1_recipe.GENERAL_OP))
        assert rewards.accuracy_reward([c], [max(a, b)]) == [1.0] and not arith.is_thinking(c)
    for p, c in r1_recipe.reasoning_samples(50, random.Random(4), "en"):
        a, b = map(int, p.rstrip("=").split("+"))
        assert rewards.accuracy_reward([c], [a + b]) == [1.0] and rewards.format_reward([c]) == [1.0]
        assert arith.is_thinking(c) and rewards.language_consistency(c, "en") == 1.0
    prompts, answers = r1_recipe.sample_prompts(0.5)(200, random.Random(5))
    n_general = sum(r1_recipe.GENERAL_OP in p for p in prompts)
    assert 60 < n_general < 140
    for p, ans in zip(prompts, answers):
        op = r1_recipe.GENERAL_OP if r1_recipe.GENERAL_OP in p else "+"
        a, b = map(int, p.rstrip("=").split(op))
        assert ans == (max(a, b) if op == r1_recipe.GENERAL_OP else a + b)


def test_base_mix_shares():
    samples = r1_recipe.base_samples(2000, random.Random(6), think_share=0.3, general_share=0.2)
    general = sum(r1_recipe.GENERAL_OP in p for p, _ in samples) / len(samples)
    thinking = [arith.is_thinking(c) for p, c in samples if r1_recipe.GENERAL_OP not in p]
    assert abs(general - 0.2) < 0.03 and abs(sum(thinking) / len(thinking) - 0.3) < 0.03


def test_held_out_metrics_reports_shares_for_a_random_model():
    tok = r1_recipe.make_tokenizer()
    torch.manual_seed(0)
    model = TinyLM(ModelConfig(vocab_size=tok.vocab_size, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                               max_position_embeddings=64))
    r = r1_recipe.held_out_metrics(model, tok, n=8)
    again = r1_recipe.held_out_metrics(model, tok, n=8)                       # seeded: the same numbers twice
    assert all(r[k] == again[k] or (r[k] != r[k] and again[k] != again[k]) for k in r)
    for key in ("accuracy", "think_share", "general"):
        assert 0.0 <= r[key] <= 1.0
    assert 1 <= r["length"] <= r1_recipe.MAX_NEW_TOKENS


def test_results_table_and_token_labels():
    table = r1_recipe.results_table(RES, ["accuracy", "language", "length"]).splitlines()
    assert table[1].split() == ["base", "0.25", "-", "12.0"] and table[2].split() == ["student", "0.75", "1.00", "30.0"]
    assert r1_recipe.token_label(r1_recipe.EN_PLUS) == repr(" plus ")
    assert r1_recipe.token_label(r1_recipe.ZH_IS) in (repr(r1_recipe.ZH_IS), repr("de"))


def test_stages_figure_draws_each_metric_of_each_stage():
    fig = r1_recipe.stages_figure(RES)
    ax = fig.axes[0]
    heights = [p.get_height() for p in ax.patches]
    # metric by metric (accuracy, think_share, language), stage by stage (base, student); NaN where not measured
    assert heights[:4] + heights[5:] == [0.25, 0.75, 0.5, 1.0, 1.0] and math.isnan(heights[4]) and len(heights) == 6
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [r1_recipe.COLUMNS[m] for m in
                                                                   ("accuracy", "think_share", "language")]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["base", "student"]
    assert ax.get_ylim() == (0, 1.05)
    plt.close(fig)
    fig = r1_recipe.stages_figure(RES, metrics=("accuracy",))
    assert [p.get_height() for p in fig.axes[0].patches] == [0.25, 0.75]
    plt.close(fig)


def test_students_figure_draws_accuracy_and_length_per_student():
    fig = r1_recipe.students_figure(RES, ["student", "base"])
    acc, length = fig.axes
    assert [p.get_height() for p in acc.patches] == [0.75, 0.25]          # in the order asked for
    assert [p.get_height() for p in length.patches] == [30.0, 12.0]
    assert (acc.get_title(), length.get_title()) == ("held-out accuracy", "response length (tokens)")
    assert [t.get_text() for t in length.get_xticklabels()] == ["student", "base"]
    plt.close(fig)


def test_shipped_base_models_load_with_weights_only():
    if not r1_recipe.CHECKPOINT.exists():
        pytest.skip("assets/distill/base_models.pt not built")
    teacher, student = r1_recipe.load_base_models()
    assert student.num_params() < teacher.num_params()
    assert teacher.cfg.vocab_size == student.cfg.vocab_size == r1_recipe.make_tokenizer().vocab_size


@pytest.mark.parametrize("call,match", [
    (lambda: r1_recipe.scratchpad(123, 456, "fr"), "lang must be one of"),
    (lambda: r1_recipe.scratchpad(123, 456, "mix"), "rng"),
    (lambda: r1_recipe.general_prompt(12, 456), "a must be an int with exactly 3 digits"),
    (lambda: r1_recipe.sample_prompts(1.5), "general_share"),
    (lambda: r1_recipe.reward_fns("accuracy", "speed"), "names must be some of"),
    (lambda: r1_recipe.reward_fns(), "names"),
    (lambda: r1_recipe.held_out_metrics(None, r1_recipe.make_tokenizer(), n=0), "n must be between 1 and 256"),
    (lambda: r1_recipe.results_table({"a": {}}, ["nope"]), "columns"),
    (lambda: r1_recipe.stages_figure({}), "results"),
    (lambda: r1_recipe.stages_figure(RES, metrics=("length",)), "metrics"),
    (lambda: r1_recipe.students_figure({"a": {}}, ["b"]), "names"),
])
def test_pipeline_validation_names_the_parameter(call, match):
    with pytest.raises(ValueError, match=match):
        call()
