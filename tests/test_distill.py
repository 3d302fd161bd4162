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
    cfg = ModelConfig(vocab_size=9, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                      max_position_embeddings=16)
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
    model = TinyLM(ModelConfig(vocab_size=tok.vocab_size, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                               max_position_embeddings=32))
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


# ------------------------------------------------------------------------------------------------ temperature figure
def test_temperature_figure_draws_softmax_at_1_and_at_t():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    logits = [2.0, 1.0, 0.0]
    fig = distill.temperature_figure(torch.tensor(logits), 2.0, ["a", "b", "c"])
    ax = fig.axes[0]
    heights = [p.get_height() for p in ax.patches]
    z1 = [math.exp(v) for v in logits]
    z2 = [math.exp(v / 2) for v in logits]
    p1, p2 = [v / sum(z1) for v in z1], [v / sum(z2) for v in z2]
    assert heights == pytest.approx(p1 + p2, rel=1e-6)
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["T = 1", "T = 2"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["a", "b", "c"]
    entropy = -sum(p * math.log(p) for p in p2)
    assert ax.get_title().endswith(f"(entropy at T: {entropy:.2f} nats)")
    plt.close(fig)


@pytest.mark.parametrize("call,match", [
    (lambda: distill.temperature_figure(torch.zeros(3), 0.0), "temperature"),
    (lambda: distill.temperature_figure(torch.zeros(3), 1.0, ["a"]), "labels"),
    (lambda: distill.temperature_figure(torch.zeros(1), 1.0), "logits"),
])
def test_temperature_figure_validation(call, match):
    with pytest.raises(ValueError, match=match):
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
    student = TinyLM(ModelConfig(vocab_size=tok.vocab_size, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                 max_position_embeddings=32))
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
