"""Distillation pieces: the KD loss against KL worked out by hand, the rejection filter, the SFT batches."""
import math

import pytest
import torch
import torch.nn.functional as F

from course_lib import distill, grpo, rewards
from course_lib.model import CharTokenizer, ModelConfig, TinyLM

torch.set_num_threads(1)


# ------------------------------------------------------------------------------------------------ kd_loss
def test_kd_loss_is_the_exact_kl_on_a_hand_case():
    # teacher (1/2, 1/4, 1/4), student (1/4, 1/2, 1/4):
    # KL = 1/2 ln(2) + 1/4 ln(1/2) + 1/4 ln(1) = 1/4 ln 2
    t = torch.log(torch.tensor([[0.5, 0.25, 0.25]]))
    s = torch.log(torch.tensor([[0.25, 0.5, 0.25]]))
    assert distill.kd_loss(s, t, 1.0).item() == pytest.approx(0.25 * math.log(2), rel=1e-6)
    # forward KL, not reverse: KL(q || p) = 1/4 ln(1/2) + 1/2 ln 2 = 1/4 ln 2 as well here, so use an asymmetric pair
    t2 = torch.log(torch.tensor([[0.9, 0.1]]))
    s2 = torch.log(torch.tensor([[0.5, 0.5]]))
    forward = 0.9 * math.log(0.9 / 0.5) + 0.1 * math.log(0.1 / 0.5)
    assert distill.kd_loss(s2, t2, 1.0).item() == pytest.approx(forward, rel=1e-6)


def test_kd_loss_temperature_softens_both_and_scales_by_t_squared():
    # at T = 2 the probabilities become proportional to sqrt(p)
    T = 2.0
    p = [0.9 ** 0.5, 0.1 ** 0.5]
    p = [v / sum(p) for v in p]
    q = [0.5, 0.5]
    expected = T ** 2 * sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))
    t = torch.log(torch.tensor([[0.9, 0.1]]))
    s = torch.log(torch.tensor([[0.5, 0.5]]))
    assert distill.kd_loss(s, t, T).item() == pytest.approx(expected, rel=1e-6)


def test_kd_loss_matches_torch_kl_div_on_random_logits_with_a_mask():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(3, 5, 7, generator=g), torch.randn(3, 5, 7, generator=g)
    mask = torch.rand(3, 5, generator=g) > 0.4
    T = 3.0
    per_pos = F.kl_div(F.log_softmax(s / T, -1), F.log_softmax(t / T, -1), reduction="none", log_target=True).sum(-1)
    expected = T ** 2 * per_pos[mask].mean()
    assert torch.allclose(distill.kd_loss(s, t, T, mask), expected, rtol=1e-5)


def test_kd_loss_is_zero_for_identical_distributions():
    z = torch.randn(4, 6, 11, generator=torch.Generator().manual_seed(1))
    for T in (0.5, 1.0, 4.0):
        assert distill.kd_loss(z, z.clone(), T).item() == pytest.approx(0.0, abs=1e-6)
    # a constant shift of the logits gives the same distribution
    assert distill.kd_loss(z + 3.0, z, 2.0).item() == pytest.approx(0.0, abs=1e-5)


def test_kd_gradient_at_high_temperature_is_the_logit_difference():
    # Hinton §2.1: with zero-mean logits and T large, dC/dz_i ~ (z_i - v_i) / (N T^2); times T^2 -> (z_i - v_i) / N
    g = torch.Generator().manual_seed(2)
    z, v = torch.randn(1, 6, generator=g), torch.randn(1, 6, generator=g)
    z, v = (z - z.mean()).requires_grad_(), v - v.mean()
    distill.kd_loss(z, v, temperature=100.0).backward()
    assert torch.allclose(z.grad, (z - v).detach() / 6, atol=1e-3)


def test_kd_loss_fn_mixes_kd_and_hard_labels():
    cfg = ModelConfig(vocab_size=9, d_model=16, n_layers=1, n_heads=2, max_seq_len=16)
    torch.manual_seed(0)
    teacher, student = TinyLM(cfg), TinyLM(cfg)
    x = torch.randint(0, 9, (2, 6), generator=torch.Generator().manual_seed(3))
    y = x.roll(-1, 1)
    y[:, :2] = -100
    with torch.no_grad():
        s_out, t_out = student(x, y), teacher(x)
        kd = distill.kd_loss(s_out.logits, t_out.logits, 2.0, mask=y != -100)
        loss, logs = distill.kd_loss_fn(teacher, 2.0, alpha=0.3)(student, x, y)
    assert loss.item() == pytest.approx(0.3 * kd.item() + 0.7 * s_out.loss.item(), rel=1e-5)
    assert logs["kd"] == pytest.approx(kd.item(), rel=1e-5)


# ------------------------------------------------------------------------------------------------ rejection sampling
RF = {"accuracy": rewards.accuracy_reward,
      "format": lambda c, a: rewards.format_reward(c),
      "language": lambda c, a: rewards.language_reward(c, "en")}


def test_rejection_filter_keeps_exactly_the_completions_that_pass():
    cases = [("<think>one plus two</think><answer>3</answer>", 3, True),
             ("<think>one plus two</think><answer>4</answer>", 3, False),    # wrong answer
             ("<think>one 加 two</think><answer>3</answer>", 3, False),      # mixed languages
             ("<answer>3</answer>", 3, False),                               # no think block: bad format
             ("<think></think><answer>12</answer>", 12, True),                # empty reasoning is allowed
             ("<think>x</think><answer>3</answer><answer>3</answer>", 3, False),
             ("", 0, False)]
    completions, answers, want = zip(*cases)
    assert distill.rejection_filter(completions, answers, RF) == list(want)
    # the same decision as asking each reward by hand for full marks
    by_hand = [all(fn([c], [a])[0] == 1.0 for fn in RF.values()) for c, a in zip(completions, answers)]
    assert by_hand == list(want)


def test_rejection_filter_thresholds():
    c = ["<think>one 加 two three</think><answer>3</answer>"]     # 3 of 4 language tokens are English
    assert distill.rejection_filter(c, [3], RF) == [False]
    assert distill.rejection_filter(c, [3], RF, thresholds={"language": 0.75}) == [True]
    assert distill.rejection_filter(c, [3], RF, thresholds={"language": 0.8}) == [False]


def _tiny_policy():
    tok = CharTokenizer("0123456789+=", specials=["<think>", "</think>", "<answer>", "</answer>"])
    torch.manual_seed(0)
    model = TinyLM(ModelConfig(vocab_size=tok.vocab_size, d_model=16, n_layers=1, n_heads=2, max_seq_len=32))
    return tok, model


def test_rejection_sample_keeps_the_passing_subset_of_the_same_rollout():
    tok, model = _tiny_policy()
    eos = tok.id_of("</answer>")
    prompts, answers = ["12+34=", "55+11="], [46, 66]
    # an arbitrary rule so that some but not all random completions pass: an even number of characters
    rule = {"even": lambda c, a: [float(len(t) % 2 == 0) for t in c]}
    out = distill.rejection_sample(model, tok, prompts, answers, k=8, reward_fns=rule, max_new_tokens=6,
                                   eos_id=eos, generator=torch.Generator().manual_seed(7))
    roll = grpo.rollout(model, tok, prompts, 8, 6, 1.0, eos, torch.Generator().manual_seed(7))
    expected = [(prompts[i // 8], t) for i, t in enumerate(roll["texts"]) if len(t) % 2 == 0]
    assert out["samples"] == expected
    assert 0 < len(expected) < 16                                  # the rule really filters
    assert out["n_sampled"] == 16 and out["accept_rate"] == pytest.approx(len(expected) / 16)
    solved = sum(any(len(t) % 2 == 0 for t in roll["texts"][i * 8:(i + 1) * 8]) for i in range(2)) / 2
    assert out["solved"] == pytest.approx(solved)


# ------------------------------------------------------------------------------------------------ SFT data
def test_sequence_batch_learns_only_the_completion():
    tok = CharTokenizer("0123456789+=?", specials=["<answer>", "</answer>"])
    pad = tok.id_of("</answer>")
    samples = [("1+2=", "<answer>3</answer>"), ("10?7=", "<answer>10</answer>")]
    x, y = distill.sequence_batch(tok, samples, pad)
    for i, (p, c) in enumerate(samples):
        full = tok.encode(p + c)
        n_p, n = len(tok.encode(p)), len(full)
        assert x[i, :n - 1].tolist() == full[:-1]
        assert (y[i, :n_p - 1] == -100).all()                         # prompt positions are not learned
        assert y[i, n_p - 1:n - 1].tolist() == tok.encode(c)           # the completion is, from its first token
        assert (y[i, n - 1:] == -100).all() and (x[i, n - 1:] == pad).all()
    assert x.shape == (2, max(len(tok.encode(p + c)) for p, c in samples) - 1)


def test_batch_sampler_is_seeded_and_visits_every_row_once_per_epoch():
    x = torch.arange(10).unsqueeze(1).repeat(1, 3)
    get = distill.batch_sampler(x, x.clone(), 5, seed=0)
    epoch = torch.cat([get(0)[0][:, 0], get(1)[0][:, 0]])
    assert sorted(epoch.tolist()) == list(range(10))
    again = distill.batch_sampler(x, x.clone(), 5, seed=0)
    assert torch.equal(again(3)[0], get(3)[0]) and torch.equal(again(0)[0], get(0)[0])


@pytest.mark.parametrize("call", [
    lambda: distill.kd_loss(torch.zeros(2, 3), torch.zeros(2, 4)),
    lambda: distill.kd_loss(torch.zeros(2, 3), torch.zeros(2, 3), temperature=0.0),
    lambda: distill.kd_loss(torch.zeros(2, 3), torch.zeros(2, 3), mask=torch.ones(3)),
    lambda: distill.kd_loss_fn(None, alpha=1.5),
    lambda: distill.rejection_filter("<answer>1</answer>", [1], RF),
    lambda: distill.rejection_filter(["a"], [1, 2], RF),
    lambda: distill.rejection_filter(["a"], [1], {}),
    lambda: distill.rejection_filter(["a"], [1], RF, thresholds={"speed": 1.0}),
    lambda: distill.sequence_batch(CharTokenizer("01"), [], 0),
    lambda: distill.sequence_batch(CharTokenizer("01"), [("0", "")], 0),
    lambda: distill.batch_sampler(torch.zeros(4, 2), torch.zeros(4, 3), 2),
    lambda: distill.batch_sampler(torch.zeros(4, 2), torch.zeros(4, 2), 0),
])
def test_validation(call):
    with pytest.raises(ValueError):
        call()


# ------------------------------------------------------------------------------------------------ the toy pipeline
import random  # noqa: E402

import matplotlib  # noqa: E402

from course_lib.toys import arith, r1_recipe  # noqa: E402


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


def test_evaluate_reports_shares_for_a_random_model():
    tok = r1_recipe.make_tokenizer()
    torch.manual_seed(0)
    model = TinyLM(ModelConfig(vocab_size=tok.vocab_size, d_model=16, n_layers=1, n_heads=2, max_seq_len=64))
    r = r1_recipe.held_out_metrics(model, tok, n=8)
    again = r1_recipe.held_out_metrics(model, tok, n=8)                       # seeded: the same numbers twice
    assert all(r[k] == again[k] or (r[k] != r[k] and again[k] != again[k]) for k in r)
    for key in ("accuracy", "think_share", "general"):
        assert 0.0 <= r[key] <= 1.0
    assert 1 <= r["length"] <= r1_recipe.MAX_NEW_TOKENS


def test_reporting_helpers():
    matplotlib.use("Agg")
    res = {"base": {"accuracy": 0.25, "think_share": 0.5, "language": float("nan"), "length": 12.0},
           "student": {"accuracy": 0.75, "think_share": 1.0, "language": 1.0, "length": 30.0}}
    table = r1_recipe.results_table(res, ["accuracy", "language", "length"]).splitlines()
    assert table[1].split() == ["base", "0.25", "-", "12.0"] and table[2].split() == ["student", "0.75", "1.00", "30.0"]
    assert r1_recipe.stages_figure(res) is not None
    assert r1_recipe.students_figure(res, ["base", "student"]) is not None
    assert distill.temperature_figure(torch.tensor([2.0, 1.0, 0.0]), 2.0, ["a", "b", "c"]) is not None
    assert r1_recipe.token_label(r1_recipe.EN_PLUS) == repr(" plus ")
    assert r1_recipe.token_label(r1_recipe.ZH_IS) in (repr(r1_recipe.ZH_IS), repr("de"))


def test_shipped_base_models_load_with_weights_only():
    if not r1_recipe.CHECKPOINT.exists():
        pytest.skip("assets/distill/base_models.pt not built")
    teacher, student = r1_recipe.load_base_models()
    assert student.num_params() < teacher.num_params()
    assert teacher.cfg.vocab_size == student.cfg.vocab_size == r1_recipe.make_tokenizer().vocab_size


@pytest.mark.parametrize("call", [
    lambda: r1_recipe.scratchpad(123, 456, "fr"),
    lambda: r1_recipe.scratchpad(123, 456, "mix"),
    lambda: r1_recipe.general_prompt(12, 456),
    lambda: r1_recipe.sample_prompts(1.5),
    lambda: r1_recipe.reward_fns("accuracy", "speed"),
    lambda: r1_recipe.reward_fns(),
    lambda: r1_recipe.held_out_metrics(None, r1_recipe.make_tokenizer(), n=0),
    lambda: r1_recipe.results_table({"a": {}}, ["nope"]),
    lambda: r1_recipe.stages_figure({}),
    lambda: r1_recipe.students_figure({"a": {}}, ["b"]),
    lambda: distill.temperature_figure(torch.zeros(3), 0.0),
    lambda: distill.temperature_figure(torch.zeros(3), 1.0, ["a"]),
])
def test_pipeline_validation(call):
    with pytest.raises(ValueError):
        call()


# ------------------------------------------------------------------------------------------ on-policy distillation
def test_reverse_kl_is_the_student_first_kl_on_a_hand_case():
    # student q = (0.75, 0.25), teacher p = (0.5, 0.5):
    # KL(q || p) = 0.75 ln 1.5 + 0.25 ln 0.5 = 0.1308, while the forward KL(p || q) = 0.5 ln(2/3) + 0.5 ln 2 = 0.1438
    q, p = torch.tensor([[0.75, 0.25]]), torch.tensor([[0.5, 0.5]])
    got = distill.reverse_kl(q.log(), p.log())
    assert got.item() == pytest.approx(0.75 * math.log(1.5) + 0.25 * math.log(0.5), abs=1e-6)
    assert got.item() != pytest.approx(distill.kd_loss(q.log(), p.log()).item(), abs=1e-3)


def test_reverse_kl_gradient_and_mask_by_hand():
    # d KL(q || p) / d z_i = q_i (log q_i - log p_i - KL), the softmax Jacobian worked out by hand
    g = torch.Generator().manual_seed(0)
    zs, zt = torch.randn(2, 3, 5, generator=g, requires_grad=True), torch.randn(2, 3, 5, generator=g)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    loss = distill.reverse_kl(zs, zt, mask)
    loss.backward()
    log_q, log_p = F.log_softmax(zs.detach(), -1), F.log_softmax(zt, -1)
    kl = (log_q.exp() * (log_q - log_p)).sum(-1)
    assert loss.item() == pytest.approx(kl[mask.bool()].mean().item(), abs=1e-6)
    grad = log_q.exp() * (log_q - log_p - kl.unsqueeze(-1)) * mask.unsqueeze(-1) / mask.sum()
    torch.testing.assert_close(zs.grad, grad)
    # and torch's own KL with the student's log-probs as the target
    ref = F.kl_div(log_p[mask.bool()], log_q[mask.bool()], log_target=True, reduction="batchmean")
    assert loss.item() == pytest.approx(ref.item(), abs=1e-6)


def test_on_policy_distill_moves_the_student_towards_the_teacher_on_its_own_samples():
    tok, teacher = _tiny_policy()
    torch.manual_seed(1)
    student = TinyLM(ModelConfig(vocab_size=tok.vocab_size, d_model=16, n_layers=1, n_heads=2, max_seq_len=32))
    teacher_state = {k: v.clone() for k, v in teacher.state_dict().items()}
    sampler = lambda n, rng: ([f"{rng.randint(10, 99)}+{rng.randint(10, 99)}=" for _ in range(n)], [0] * n)
    eos = tok.id_of("</answer>")

    def kl_on_fixed_rollout():
        roll = grpo.rollout(student, tok, ["12+34=", "56+78="], 4, 6, 1.0, eos, torch.Generator().manual_seed(9))
        with torch.no_grad():
            n = roll["n_prompt"]
            return distill.reverse_kl(student(roll["ids"]).logits[:, n - 1:-1],
                                      teacher(roll["ids"]).logits[:, n - 1:-1], roll["mask"]).item()

    before = kl_on_fixed_rollout()
    hist = distill.on_policy_distill(student, teacher, tok, sampler, steps=15, prompts_per_step=2, group_size=4,
                                     max_new_tokens=6, lr=1e-2, eos_id=eos, progress=False)
    assert len(hist["loss"]) == 15 and all(1 <= n <= 6 for n in hist["length"])
    assert kl_on_fixed_rollout() < 0.5 * before
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in teacher_state.items())   # the teacher is frozen


def test_on_policy_distill_of_a_copy_of_the_teacher_has_zero_loss():
    import copy

    tok, teacher = _tiny_policy()
    student = copy.deepcopy(teacher)
    sampler = lambda n, rng: (["12+34="] * n, [46] * n)
    hist = distill.on_policy_distill(student, teacher, tok, sampler, steps=1, prompts_per_step=2, group_size=2,
                                     max_new_tokens=5, progress=False)
    assert hist["loss"][0] == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("call,name", [
    (lambda: distill.reverse_kl(torch.zeros(2, 3), torch.zeros(2, 4)), "teacher_logits"),
    (lambda: distill.reverse_kl(torch.zeros(2, 3), torch.zeros(2, 3), mask=torch.ones(3)), "mask"),
    (lambda: distill.on_policy_distill(*_opd_args(), steps=0), "steps"),
    (lambda: distill.on_policy_distill(*_opd_args(), steps=1, group_size=0), "group_size"),
    (lambda: distill.on_policy_distill(*_opd_args(), steps=1, lr=0.0), "lr"),
])
def test_opd_validation(call, name):
    with pytest.raises(ValueError, match=name) as err:
        call()
    assert "\n" not in str(err.value)


def _opd_args():
    tok, model = _tiny_policy()
    return model, TinyLM(model.cfg), tok, lambda n, rng: (["1+1="] * n, [2] * n)
