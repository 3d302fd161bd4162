"""The toy addition task: formatting, the scratchpad's arithmetic, held-out split, pretraining batches."""
import random

import pytest
import torch

from course_lib.toys import arith
from course_lib import rewards

torch.set_num_threads(1)


def _answer_from_scratchpad(pad: str) -> int:
    # read the answer back out of the scratchpad: last digit of each column sum, plus the final carry
    sums = [int(step.split("=")[1]) for step in pad.split(",")]
    digits = [s % 10 for s in sums]
    if sums[-1] >= 10:
        digits.append(1)
    return int("".join(map(str, reversed(digits))))


def test_scratchpad_is_correct_arithmetic():
    rng = random.Random(0)
    for a, b in arith.sample_problems(500, rng):
        pad = arith.scratchpad(a, b)
        assert _answer_from_scratchpad(pad) == a + b
        for step in pad.split(","):                      # every step is x+y+c=ss with a true sum
            lhs, rhs = step.split("=")
            assert len(rhs) == 2 and sum(map(int, lhs.split("+"))) == int(rhs)


def test_example_strings():
    assert arith.prompt(358, 467) == "358+467="
    assert arith.scratchpad(358, 467) == "8+7+0=15,5+6+1=12,3+4+1=08"
    assert arith.completion(358, 467, think=False) == "<think></think><answer>825</answer>"
    assert arith.completion(999, 999, think=True) == \
        "<think>9+9+0=18,9+9+1=19,9+9+1=19</think><answer>1998</answer>"


def test_completions_earn_full_reward_and_fit_the_budget():
    tok = arith.make_tokenizer()
    for a, b in [(100, 100), (999, 999), (358, 467)]:
        for think in (False, True):
            c = arith.completion(a, b, think)
            assert rewards.accuracy_reward([c], [a + b]) == [1.0]
            assert rewards.format_reward([c]) == [1.0]
            assert arith.is_thinking(c) == think
            assert len(tok.encode(c)) <= arith.max_completion_tokens()
            assert tok.decode(tok.encode(c)) == c
    assert len(tok.encode(arith.completion(999, 999, True))) == arith.max_completion_tokens()


def test_reward_fns_score_both_styles_as_well_formed():
    # called exactly as grpo.grpo_train and bench.rl.train_variant call them: fn(texts, answers)
    texts = [arith.completion(358, 467, think=False), arith.completion(358, 467, think=True), "<answer>825</answer>"]
    answers = [825, 825, 825]
    fns = arith.reward_fns()
    assert fns["format"](texts, answers) == [1.0, 1.0, 0.0]        # a direct answer is well formed too
    assert fns["accuracy"](texts, answers) == [1.0, 1.0, 1.0]
    # the old dict handed `answers` to format_reward's second parameter, silently requiring a non-empty <think>;
    # require_thinking is keyword-only now, so that call fails loudly instead
    assert rewards.format_reward(texts, require_thinking=True) == [0.0, 1.0, 0.0]
    with pytest.raises(TypeError):
        rewards.format_reward(texts, answers)


def test_held_out_is_fixed_and_never_trained_on():
    held = arith.held_out_problems()
    assert held == arith.held_out_problems() and len(set(held)) == arith.HELD_OUT_SIZE
    train = set(arith.sample_problems(20_000, random.Random(1)))
    assert not train & set(held)


def test_sampling_is_seeded():
    assert arith.sample_problems(5, random.Random(3)) == arith.sample_problems(5, random.Random(3))
    assert arith.sample_problems(5, random.Random(3)) != arith.sample_problems(5, random.Random(4))
    prompts, answers = arith.sample_prompts(4, random.Random(0))
    assert all(eval_free_sum(p) == ans for p, ans in zip(prompts, answers))


def eval_free_sum(p: str) -> int:
    a, b = p.rstrip("=").split("+")
    return int(a) + int(b)


def test_pretrain_batch_masks_the_prompt():
    tok = arith.make_tokenizer()
    x, y = arith.pretrain_batch(tok, 16, random.Random(0), think_share=0.5)
    n_prompt = len(tok.encode("123+456="))
    assert x.shape == y.shape and x.shape[0] == 16
    assert (y[:, :n_prompt - 1] == -100).all()                     # prompt tokens are not learned
    assert (y[:, n_prompt - 1] == tok.id_of("<think>")).all()      # the first learned token opens the think block
    # targets are the inputs shifted by one wherever they count
    valid = y[:, :-1] != -100
    assert (x[:, 1:][valid] == y[:, :-1][valid]).all()
    # both styles occur at think_share=0.5, neither at the extremes
    second = y[:, n_prompt]
    assert (second == tok.id_of("</think>")).any() and (second != tok.id_of("</think>")).any()
    _, y0 = arith.pretrain_batch(tok, 16, random.Random(0), think_share=0.0)
    assert (y0[:, n_prompt] == tok.id_of("</think>")).all()


@pytest.mark.parametrize("call", [
    lambda: arith.prompt(12, 345),
    lambda: arith.prompt(1000, 345),
    lambda: arith.scratchpad(123, 45.0),
    lambda: arith.sample_problems(0, random.Random(0)),
    lambda: arith.pretrain_batch(arith.make_tokenizer(), 4, random.Random(0), think_share=1.5),
])
def test_validation(call):
    with pytest.raises(ValueError):
        call()


# ---------------------------------------------------------------- the shipped base policy and the R1-Zero run

def test_shipped_base_policy_is_the_promised_starting_point():
    import json

    from course_lib import asset_path

    model, tok = arith.load_base()
    stats = arith.held_out_pass_at_1(model, tok)
    direct = arith.evaluate_forced(model, tok, think=False)
    scratch = arith.evaluate_forced(model, tok, think=True)
    assert stats["accuracy"] <= 0.5                           # the starting point
    assert 0.05 < stats["think_share"] < 0.6                  # it sometimes thinks, mostly not
    assert scratch > direct + 0.3                             # thinking pays: the signal RL can find
    recorded = json.loads(asset_path("grpo", "base.json").read_text())
    assert recorded["held_out"]["accuracy"] == pytest.approx(stats["accuracy"], abs=0.03)


def test_r1_zero_reaches_090_quickly():
    # the goal with the default settings: held-out accuracy from <= 0.5 to >= 0.9 (here within 30 steps)
    model, tok = arith.load_base()
    hist = arith.r1_zero(model, tok, arith.grpo_config(steps=30), progress=False)
    acc = hist["eval_accuracy"]
    assert acc[0] <= 0.5 and max(acc) >= 0.9
    assert hist["eval_length"][-1] > hist["eval_length"][0] + 10    # responses got longer: they think now
    assert hist["eval_think_share"][-1] > 0.9
