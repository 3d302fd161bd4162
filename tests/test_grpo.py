"""GRPO maths checked against independent, loop-by-loop computations written from the papers' formulas.

The reference functions below use plain Python floats and loops (no torch ops shared with course_lib.grpo), so a
mistake in the vectorised code cannot cancel out.
"""
import math
import statistics

import pytest
import torch

from course_lib import grpo

torch.set_num_threads(1)


# ---------------------------------------------------------------- fixed small inputs

def _inputs(seed=0, B=6, T=5):
    g = torch.Generator().manual_seed(seed)
    logp = -torch.rand(B, T, generator=g, dtype=torch.float64) * 3          # log-probs in (-3, 0)
    old = logp + 0.4 * torch.randn(B, T, generator=g, dtype=torch.float64)  # some ratios beyond 1 +- 0.2
    ref = logp + 0.5 * torch.randn(B, T, generator=g, dtype=torch.float64)
    lengths = [5, 2, 4, 1, 3, 5][:B]
    mask = torch.tensor([[1.0 if t < n else 0.0 for t in range(T)] for n in lengths], dtype=torch.float64)
    adv = torch.randn(B, generator=g, dtype=torch.float64)
    return logp, old, ref, mask, adv


def _ref_loss(logp, old, ref, mask, adv, beta, eps_low, eps_high, loss_type, L=None):
    """From the formulas: DeepSeekMath eq. (3)-(4), DAPO eq. (8), Dr. GRPO §3.2; plain loops."""
    B, T = len(logp), len(logp[0])
    per_tok = [[0.0] * T for _ in range(B)]
    for i in range(B):
        for t in range(T):
            ratio = math.exp(logp[i][t] - old[i][t])
            clip = min(max(ratio, 1 - eps_low), 1 + eps_high)
            obj = min(ratio * adv[i], clip * adv[i])
            kl = math.exp(ref[i][t] - logp[i][t]) - (ref[i][t] - logp[i][t]) - 1
            per_tok[i][t] = -(obj - beta * kl)
    lens = [sum(mask[i]) for i in range(B)]
    sums = [sum(per_tok[i][t] * mask[i][t] for t in range(T)) for i in range(B)]
    if loss_type == "grpo":
        return sum(sums[i] / lens[i] for i in range(B)) / B
    if loss_type in ("bnpo", "dapo"):
        return sum(sums) / sum(lens)
    if loss_type == "dr_grpo":
        return sum(sums) / (B * L)
    raise AssertionError(loss_type)


@pytest.mark.parametrize("loss_type", grpo.LOSS_TYPES)
@pytest.mark.parametrize("beta,eps_high", [(0.0, None), (0.04, None), (0.04, 0.28)])
def test_loss_variants_match_formula(loss_type, beta, eps_high):
    logp, old, ref, mask, adv = _inputs()
    loss, _ = grpo.grpo_loss(logp, old, adv, mask, ref_logp=ref, beta=beta, epsilon=0.2, epsilon_high=eps_high,
                             loss_type=loss_type, max_completion_length=7)
    want = _ref_loss(logp.tolist(), old.tolist(), ref.tolist(), mask.tolist(), adv.tolist(), beta, 0.2,
                     0.2 if eps_high is None else eps_high, loss_type, L=7)
    assert loss.item() == pytest.approx(want, rel=1e-10, abs=1e-12)


def test_variants_really_differ():
    # if two variants reduced the same way, the parametrised test above could not tell them apart
    logp, old, ref, mask, adv = _inputs()
    vals = {lt: grpo.grpo_loss(logp, old, adv, mask, loss_type=lt, max_completion_length=7)[0].item()
            for lt in ("grpo", "bnpo", "dr_grpo")}
    assert len({round(v, 9) for v in vals.values()}) == 3


def test_dapo_uses_global_token_count():
    logp, old, ref, mask, adv = _inputs()
    local, _ = grpo.grpo_loss(logp, old, adv, mask, loss_type="dapo")
    glob, _ = grpo.grpo_loss(logp, old, adv, mask, loss_type="dapo", num_tokens=2 * mask.sum().item())
    assert glob.item() == pytest.approx(local.item() / 2)


def test_clip_higher_changes_only_positive_side():
    logp, old, _, mask, adv = _inputs()
    a, _ = grpo.grpo_loss(logp, old, adv.abs(), mask, epsilon=0.2)
    b, _ = grpo.grpo_loss(logp, old, adv.abs(), mask, epsilon=0.2, epsilon_high=0.28)
    c, _ = grpo.grpo_loss(logp, old, -adv.abs(), mask, epsilon=0.2)
    d, _ = grpo.grpo_loss(logp, old, -adv.abs(), mask, epsilon=0.2, epsilon_high=0.28)
    assert a.item() != pytest.approx(b.item())       # positive advantages: the upper clip moved
    assert c.item() == pytest.approx(d.item())       # negative advantages only ever meet the lower clip


def test_on_policy_gradient_is_advantage_over_length():
    # mu = 1: old = logp.detach(), so d loss / d logp_it = -A_i / |o_i| / B on real tokens (grpo), 0 on padding
    logp, _, _, mask, adv = _inputs()
    logp = logp.clone().requires_grad_(True)
    loss, _ = grpo.grpo_loss(logp, logp.detach(), adv, mask, loss_type="grpo")
    loss.backward()
    B = logp.size(0)
    want = -adv[:, None] / mask.sum(1, keepdim=True) / B * mask
    torch.testing.assert_close(logp.grad, want)


# ---------------------------------------------------------------- advantages

def test_group_advantages_match_formula():
    r = [1.0, 0.0, 0.0, 1.0, 1.0, 0.5, 0.0, 2.0, 1.0, 1.0, 1.0, 1.0]
    G = 4
    got = grpo.group_advantages(torch.tensor(r), G).tolist()
    for k in range(0, len(r), G):
        grp = r[k:k + G]
        m, s = statistics.mean(grp), statistics.stdev(grp)
        for i in range(G):
            assert got[k + i] == pytest.approx((grp[i] - m) / (s + 1e-4), abs=1e-5)
    assert got[8:] == [0.0] * 4  # all equal rewards: no signal, not NaN


def test_group_advantage_scales():
    r = torch.tensor([1.0, 0.0, 0.0, 0.0, 3.0, 1.0, 1.0, 1.0])
    none = grpo.group_advantages(r, 4, scale="none")
    torch.testing.assert_close(none, torch.tensor([0.75, -0.25, -0.25, -0.25, 1.5, -0.5, -0.5, -0.5]))
    batch = grpo.group_advantages(r, 4, scale="batch")
    torch.testing.assert_close(batch, none / (statistics.stdev(r.tolist()) + 1e-4))
    grp = grpo.group_advantages(r, 4, scale="group")
    assert not torch.allclose(grp, batch)
    for k in (0, 4):  # within each group the advantages sum to zero
        assert abs(grp[k:k + 4].sum().item()) < 1e-5


@pytest.mark.parametrize("bad", [
    dict(rewards=torch.ones(8), group_size=1),
    dict(rewards=torch.ones(8), group_size=3),
    dict(rewards=torch.ones(2, 4), group_size=4),
    dict(rewards=torch.ones(8), group_size=4, scale="std"),
])
def test_group_advantages_validation(bad):
    with pytest.raises(ValueError):
        grpo.group_advantages(**bad)


def test_loss_validation():
    logp, old, ref, mask, adv = _inputs()
    with pytest.raises(ValueError, match="mask"):
        grpo.grpo_loss(logp, old, adv, mask[:, :3])
    with pytest.raises(ValueError, match="advantages"):
        grpo.grpo_loss(logp, old, adv[:3], mask)
    with pytest.raises(ValueError, match="loss_type"):
        grpo.grpo_loss(logp, old, adv, mask, loss_type="ppo")
    with pytest.raises(ValueError, match="max_completion_length"):
        grpo.grpo_loss(logp, old, adv, mask, loss_type="dr_grpo")
    with pytest.raises(ValueError, match="ref_logp"):
        grpo.grpo_loss(logp, old, adv, mask, beta=0.1)


# ---------------------------------------------------------------- k3 KL

def test_k3_nonnegative_and_zero_at_equality():
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(1000, generator=g) * 5, torch.randn(1000, generator=g) * 5
    assert (grpo.kl_k3(a, b) >= 0).all()
    assert grpo.kl_k3(a, a).abs().max().item() == 0.0


def test_k3_is_unbiased_for_kl():
    # small categoricals: sample from pi, average k3 over the samples, compare with the exact KL(pi || pi_ref)
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        pi = torch.softmax(torch.randn(5, generator=g, dtype=torch.float64), 0)
        ref = torch.softmax(torch.randn(5, generator=g, dtype=torch.float64), 0)
        exact = (pi * (pi.log() - ref.log())).sum().item()
        idx = torch.multinomial(pi, 200_000, replacement=True, generator=g)
        mc = grpo.kl_k3(pi.log()[idx], ref.log()[idx])
        stderr = mc.std().item() / math.sqrt(idx.numel())
        assert abs(mc.mean().item() - exact) < 4 * stderr + 1e-4
        # k3's exact expectation under pi is the KL itself
        assert (pi * grpo.kl_k3(pi.log(), ref.log())).sum().item() == pytest.approx(exact, rel=1e-9)
        # ... while the reverse direction is a different number: the test knows which KL it checks
        rev = (ref * (ref.log() - pi.log())).sum().item()
        assert abs(rev - exact) > 4 * stderr


# ---------------------------------------------------------------- rollout helpers and the training loop

def test_completion_mask_stops_after_first_eos():
    comp = torch.tensor([[5, 6, 9, 9, 9], [5, 5, 5, 5, 5], [9, 9, 9, 9, 9]])
    want = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]], dtype=torch.float32)
    torch.testing.assert_close(grpo.completion_mask(comp, eos_id=9), want)
    assert grpo.completion_mask(comp, eos_id=None).sum().item() == 15


def _toy_policy():
    from course_lib.model import CharTokenizer, ModelConfig, TinyLM

    tok = CharTokenizer("abxy.")
    torch.manual_seed(0)
    model = TinyLM(ModelConfig(vocab_size=tok.vocab_size, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                               max_position_embeddings=16))
    return model, tok


def _x_reward(completions, answers):
    # reward 1 when the completion starts with 'x': one decision for the policy to learn
    return [1.0 if c.startswith("x") else 0.0 for c in completions]


def _prompts(n, rng):
    return [rng.choice(["ab", "ba"]) for _ in range(n)], [None] * n


def test_grpo_train_raises_reward_and_is_deterministic():
    cfg = grpo.GRPOConfig(steps=25, prompts_per_step=4, group_size=8, max_new_tokens=3, lr=3e-2, eval_every=25)
    runs = []
    for _ in range(2):
        model, tok = _toy_policy()
        x = tok.encode("x")[0]
        probe = torch.tensor([tok.encode("ab")])
        before = torch.softmax(model(probe).logits[0, -1], -1)[x].item()
        hist = grpo.grpo_train(model, tok, _prompts, {"x": _x_reward}, cfg, eos_id=tok.encode(".")[0],
                               evaluate=lambda m: {"p_x": torch.softmax(m(probe).logits[0, -1], -1)[x].item()},
                               progress=False)
        runs.append(hist)
    assert before < 0.4 and hist["eval_p_x"][-1] > 0.9             # the rewarded first token took over
    assert hist["eval_step"] == [0, 25] and len(hist["reward"]) == 25
    assert sum(hist["reward"][-5:]) > sum(hist["reward"][:5])
    assert hist["kl"][0] == 0.0 and hist["kl"][-1] > 0.0           # starts at the reference, then moves away
    assert runs[0]["reward"] == runs[1]["reward"] and runs[0]["loss"] == runs[1]["loss"]  # same seed, same run


@pytest.mark.parametrize("bad", [dict(group_size=1), dict(loss_type="ppo"), dict(scale_rewards="std"),
                                 dict(steps=0), dict(lr=0.0)])
def test_config_validation(bad):
    with pytest.raises(ValueError):
        grpo.GRPOConfig(**bad)


def test_rollout_validation():
    model, tok = _toy_policy()
    with pytest.raises(ValueError, match="same number of tokens"):
        grpo.rollout(model, tok, ["ab", "abx"], 2, 3)
    with pytest.raises(ValueError, match="reward_fns"):
        grpo.grpo_train(model, tok, _prompts, {}, grpo.GRPOConfig(steps=1), progress=False)
