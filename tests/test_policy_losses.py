"""course_lib.policy_losses checked against hand-worked cases and the papers' equations written out with plain Python
floats and loops (no torch op shared with the module), and Keep Routing on the nano-DeepSeek MoE policy."""
import math

import pytest
import torch

from course_lib import grpo, nano
from course_lib import policy_losses as pl
from course_lib.model import token_logprobs

torch.set_num_threads(1)


# ---------------------------------------------------------------- a small case: two groups of two, three positions

def _case():
    """B = 4 completions (two groups of G = 2), T = 3; lengths 3, 2, 3, 1."""
    logp = torch.tensor([[-0.5, -1.0, -0.2], [-0.7, -0.3, 0.0], [-1.2, -0.4, -0.9], [-0.1, 0.0, 0.0]],
                        dtype=torch.float64)
    old = torch.tensor([[-0.6, -0.8, -0.2], [-0.4, -0.3, 0.0], [-1.0, -0.9, -0.9], [-0.5, 0.0, 0.0]],
                       dtype=torch.float64)
    ref = torch.tensor([[-0.4, -1.3, -0.1], [-0.9, -0.2, 0.0], [-1.5, -0.4, -0.6], [-0.3, 0.0, 0.0]],
                       dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 1, 1], [1, 0, 0]], dtype=torch.float64)
    adv = torch.tensor([1.0, -1.0, 0.5, -0.5], dtype=torch.float64)
    return logp, old, ref, mask, adv


def _rows(x):
    return x.tolist()


def _tokens(mask):
    return [[t for t in range(len(row)) if row[t] > 0] for row in _rows(mask)]


def _clip(x, lo, hi):
    return min(max(x, lo), hi)


def _k3(lp, rf):
    return math.exp(rf - lp) - (rf - lp) - 1


def _loss_by_hand(variant, logp, old, ref, mask, adv, eps=0.2, eps_high=None, beta=0.0, unbiased=False, L=None):
    """The papers' objectives, negated: DeepSeekMath eq. 3, Dr. GRPO §3.2, DAPO eq. 10-12, GSPO eq. 5/7,
    MiniMax-M1 eq. 4-5, V3.2 eq. 7."""
    lp, od, rf, A = _rows(logp), _rows(old), _rows(ref), adv.tolist()
    toks = _tokens(mask)
    eh = eps if eps_high is None else eps_high
    per_tok = []
    for i, ts in enumerate(toks):
        row = []
        s = math.exp(sum(lp[i][t] - od[i][t] for t in ts) / len(ts))
        for t in ts:
            r = math.exp(lp[i][t] - od[i][t])
            if variant == "cispo":
                obj = min(r, 1 + eh) * A[i] * lp[i][t]
            elif variant == "gspo":
                obj = min(s * A[i], _clip(s, 1 - eps, 1 + eh) * A[i])
            else:
                obj = min(r * A[i], _clip(r, 1 - eps, 1 + eh) * A[i])
            kl = _k3(lp[i][t], rf[i][t]) * (r if unbiased else 1.0)
            row.append(-obj + beta * kl)
        per_tok.append(row)
    if variant in ("grpo", "gspo"):
        return sum(sum(row) / len(row) for row in per_tok) / len(per_tok)
    if variant == "dr_grpo":
        return sum(sum(row) for row in per_tok) / (len(per_tok) * L)
    return sum(sum(row) for row in per_tok) / sum(len(row) for row in per_tok)       # dapo, cispo


@pytest.mark.parametrize("variant,kw", [("grpo", {}), ("dr_grpo", {"max_completion_length": 5}),
                                        ("dapo", {"epsilon_high": 0.28}), ("gspo", {"epsilon_high": 0.25}),
                                        ("cispo", {"epsilon_high": 0.1})])
@pytest.mark.parametrize("beta,unbiased", [(0.0, False), (0.05, False), (0.05, True)])
def test_each_variant_matches_its_equation(variant, kw, beta, unbiased):
    logp, old, ref, mask, adv = _case()
    loss, _ = pl.policy_loss(logp, old, adv, mask, variant, ref_logp=ref, beta=beta, unbiased_kl=unbiased, **kw)
    want = _loss_by_hand(variant, logp, old, ref, mask, adv, eps_high=kw.get("epsilon_high"), beta=beta,
                         unbiased=unbiased, L=kw.get("max_completion_length"))
    assert loss.item() == pytest.approx(want, rel=1e-12, abs=1e-14)


def test_grpo_variant_is_course_lib_grpo_loss():
    logp, old, ref, mask, adv = _case()
    ours, _ = pl.policy_loss(logp, old, adv, mask, "dapo", epsilon_high=0.28, ref_logp=ref, beta=0.04)
    theirs, _ = grpo.grpo_loss(logp, old, adv, mask, ref_logp=ref, beta=0.04, epsilon_high=0.28, loss_type="dapo")
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-13)


def test_dr_grpo_advantages_have_no_std_and_grpo_ones_do():
    r = torch.tensor([1.0, 0.0, 1.0, 1.0, 3.0, 1.0])
    assert pl.advantages(r, 2, "dr_grpo").tolist() == [0.5, -0.5, 0.0, 0.0, 1.0, -1.0]
    # GRPO divides by the sample std of each group: std([1, 0]) = 0.7071..., std([3, 1]) = 1.4142...
    a = pl.advantages(r, 2, "grpo")
    assert a[0].item() == pytest.approx(0.5 / (math.sqrt(0.5) + 1e-4)) and a[4].item() == pytest.approx(
        1.0 / (math.sqrt(2.0) + 1e-4))


def test_clip_higher_keeps_the_gradient_of_a_rising_token():
    """Ratio 1.25 on a positive advantage: clipped by eps = 0.2 (no gradient), not by eps_high = 0.28 (DAPO eq. 10)."""
    logp = torch.tensor([[math.log(1.25)]], dtype=torch.float64, requires_grad=True)
    old, mask, adv = torch.zeros(1, 1, dtype=torch.float64), torch.ones(1, 1, dtype=torch.float64), torch.ones(1)
    sym, st = pl.policy_loss(logp, old, adv.double(), mask, "dapo")
    (g_sym,) = torch.autograd.grad(sym, logp)
    hi, st_hi = pl.policy_loss(logp, old, adv.double(), mask, "dapo", epsilon_high=0.28)
    (g_hi,) = torch.autograd.grad(hi, logp)
    assert g_sym.item() == 0.0 and st["clip_frac"] == 1.0
    assert g_hi.item() == pytest.approx(-1.25) and st_hi["clip_frac"] == 0.0     # d(-r A)/dlogp = -r A


def test_gspo_gradient_is_sequence_ratio_times_mean_token_gradient():
    """GSPO eq. 10: grad J = 1/G sum_i s_i A_i 1/|o_i| sum_t grad log pi(o_it) (unclipped). GSPO-token, with one
    advantage per sequence, has the same value and the same gradient (§4.3)."""
    logp, old, _, mask, adv = _case()
    old = logp + 0.01 * torch.tensor([[1.0, -1.0, 0.5], [0.2, 0.1, 0.0], [-0.3, 0.4, 0.1], [0.2, 0.0, 0.0]],
                                     dtype=torch.float64)
    lp = logp.clone().requires_grad_(True)
    loss, st = pl.policy_loss(lp, old, adv, mask, "gspo")
    (grad,) = torch.autograd.grad(loss, lp)
    assert st["clip_frac"] == 0.0
    toks, B = _tokens(mask), logp.shape[0]
    for i, ts in enumerate(toks):
        s = math.exp(sum(logp[i, t].item() - old[i, t].item() for t in ts) / len(ts))
        for t in range(logp.shape[1]):
            want = -s * adv[i].item() / len(ts) / B if t in ts else 0.0
            assert grad[i, t].item() == pytest.approx(want, rel=1e-12, abs=1e-15)
    lp2 = logp.clone().requires_grad_(True)
    loss_tok, _ = pl.policy_loss(lp2, old, adv, mask, "gspo_token")
    (grad_tok,) = torch.autograd.grad(loss_tok, lp2)
    assert loss_tok.item() == pytest.approx(loss.item(), rel=1e-13)
    torch.testing.assert_close(grad_tok, grad, rtol=1e-12, atol=1e-15)


def test_gspo_clips_whole_sequences():
    """s_i = exp(mean log-ratio) of sequence 0 is exp(0.3) > 1.2 with A > 0: the whole sequence loses its gradient."""
    logp = torch.tensor([[0.3, 0.3], [0.0, 0.0]], dtype=torch.float64, requires_grad=True)
    old, mask = torch.zeros(2, 2, dtype=torch.float64), torch.ones(2, 2, dtype=torch.float64)
    loss, st = pl.policy_loss(logp, old, torch.tensor([1.0, -1.0], dtype=torch.float64), mask, "gspo")
    (g,) = torch.autograd.grad(loss, logp)
    assert g[0].abs().sum().item() == 0.0 and g[1].abs().sum().item() > 0 and st["clip_frac"] == 0.5


def test_cispo_keeps_the_gradient_of_clipped_tokens_with_the_capped_weight():
    """MiniMax-M1 eq. 4: grad of -sg(min(r, 1 + eps_high)) A log pi / N is -min(r, cap) A / N for every token."""
    logp, old, _, mask, adv = _case()
    lp = logp.clone().requires_grad_(True)
    loss, st = pl.policy_loss(lp, old, adv, mask, "cispo", epsilon_high=0.1)
    (grad,) = torch.autograd.grad(loss, lp)
    n = mask.sum().item()
    for i, ts in enumerate(_tokens(mask)):
        for t in ts:
            w = min(math.exp(logp[i, t].item() - old[i, t].item()), 1.1)
            assert grad[i, t].item() == pytest.approx(-w * adv[i].item() / n, rel=1e-12)
    assert st["clip_frac"] > 0       # some weights hit the cap, yet every token above kept a gradient


def test_unbiased_kl_gradient_is_ratio_times_log_ratio():
    """d/dlogp [r * k3] = r * (log pi_theta - log pi_ref): V3.2 eq. 7 gives the k1 gradient, importance-weighted."""
    logp, old, ref, mask, _ = _case()
    lp = logp.clone().requires_grad_(True)
    zero = torch.zeros(4, dtype=torch.float64)
    loss, _ = pl.policy_loss(lp, old, zero, mask, "dapo", ref_logp=ref, beta=1.0, unbiased_kl=True)
    (grad,) = torch.autograd.grad(loss, lp)
    n = mask.sum().item()
    for i, ts in enumerate(_tokens(mask)):
        for t in ts:
            r = math.exp(logp[i, t].item() - old[i, t].item())
            assert grad[i, t].item() == pytest.approx(r * (logp[i, t].item() - ref[i, t].item()) / n, rel=1e-10)


def test_off_policy_sequence_mask_drops_only_stale_negative_sequences():
    """V3.2 eq. 9 by hand: mean log(pi_old/pi_theta) of the rows is 0.1, 0.1, 0.1, 0.0; delta = 0.05."""
    logp = torch.zeros(4, 2, dtype=torch.float64)
    old = torch.tensor([[0.1, 0.1], [0.1, 0.1], [0.2, 0.0], [0.0, 0.0]], dtype=torch.float64)
    mask = torch.ones(4, 2, dtype=torch.float64)
    adv = torch.tensor([1.0, -1.0, -1.0, -1.0], dtype=torch.float64)
    assert pl.off_policy_mask(logp, old, adv, mask, 0.05).tolist() == [1.0, 0.0, 0.0, 1.0]
    loss, st = pl.policy_loss(logp, old, adv, mask, "grpo", epsilon=10.0, off_policy_delta=0.05)
    # kept rows 0 and 3: -(r A) per token with r = exp(-0.1) and 1; the masked rows count in 1/G with 0
    want = -(math.exp(-0.1) * 1.0 + 1.0 * -1.0) / 4
    assert loss.item() == pytest.approx(want, rel=1e-12) and st["masked_frac"] == 0.5
    # the sampler's own log-probs, when given, decide instead of old_logp
    none_stale, _ = pl.policy_loss(logp, old, adv, mask, "grpo", epsilon=10.0, off_policy_delta=0.05,
                                   sampling_logp=logp)
    assert none_stale.item() != pytest.approx(loss.item())


def test_truncated_completions_leave_the_loss():
    logp, old, _, mask, adv = _case()
    cut = torch.tensor([False, True, False, False])
    loss, _ = pl.policy_loss(logp, old, adv, mask, "dapo", truncated=cut)
    mask2 = mask.clone()
    mask2[1] = 0
    per = [-min(math.exp(logp[i, t].item() - old[i, t].item()) * adv[i].item(),
                _clip(math.exp(logp[i, t].item() - old[i, t].item()), 0.8, 1.2) * adv[i].item())
           for i, ts in enumerate(_tokens(mask2)) for t in ts]
    want = sum(per) / len(per)
    assert loss.item() == pytest.approx(want, rel=1e-12)


def test_informative_groups_and_overlong_penalty_by_hand():
    r = torch.tensor([1.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.5, 0.5])
    assert pl.informative_groups(r, 2).tolist() == [False, True, False, False]
    # DAPO eq. 13 with L_max = 20, L_cache = 4: 0 up to 16, then (16 - |y|) / 4, -1 beyond 20
    assert pl.overlong_penalty(torch.tensor([10, 16, 17, 18, 20, 21]), 20, 4).tolist() == [0.0, 0.0, -0.25, -0.5,
                                                                                           -1.0, -1.0]


def test_truncation_mask_and_kept_logprobs_by_hand():
    logits = torch.log(torch.tensor([[0.6, 0.3, 0.1]], dtype=torch.float64))
    assert pl.truncation_mask(logits, top_p=0.5).tolist() == [[True, False, False]]
    assert pl.truncation_mask(logits, top_p=0.7).tolist() == [[True, True, False]]
    assert pl.truncation_mask(logits, top_k=2).tolist() == [[True, True, False]]
    assert pl.truncation_mask(logits, top_k=2, top_p=0.5).tolist() == [[True, False, False]]
    keep = pl.truncation_mask(logits, top_k=2)
    lp = pl.kept_logprobs(logits.unsqueeze(0), torch.tensor([[1]]), keep.unsqueeze(0))
    assert lp.item() == pytest.approx(math.log(0.3 / 0.9), rel=1e-12)


def test_keep_sampling_mask_makes_the_ratio_one_when_nothing_changed():
    """A top-k sampler's pi_old is renormalised over the kept tokens; pi_theta over the full vocabulary is not the
    same distribution, so the importance ratio is off even with unchanged weights -- unless the mask is kept."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 11, generator=g, dtype=torch.float64)
    keep = pl.truncation_mask(logits, top_k=3)
    tokens = logits.argmax(-1)
    old = pl.kept_logprobs(logits, tokens, keep)                         # the sampler's log-probs
    ratio_full = torch.exp(pl.kept_logprobs(logits, tokens) - old)
    ratio_kept = torch.exp(pl.kept_logprobs(logits, tokens, keep) - old)
    assert (ratio_full < 0.99).all() and torch.equal(ratio_kept, torch.ones_like(ratio_kept))


@pytest.mark.parametrize("kwargs,name", [
    (dict(variant="ppo"), "variant"), (dict(variant="cispo"), "epsilon_high"),
    (dict(unbiased_kl=True), "unbiased_kl"), (dict(beta=0.1), "beta"),
    (dict(variant="grpo", max_completion_length=5), "max_completion_length"),
    (dict(variant="grpo", num_tokens=10), "num_tokens"), (dict(variant="dr_grpo"), "max_completion_length"),
    (dict(sampling_logp=torch.zeros(4, 3, dtype=torch.float64)), "sampling_logp"),
    (dict(variant="gspo", epsilon=0.0), "epsilon"), (dict(truncated=torch.zeros(3, dtype=torch.bool)), "truncated")])
def test_bad_combinations_raise_one_line_errors(kwargs, name):
    logp, old, _, mask, adv = _case()
    with pytest.raises(ValueError, match=name) as err:
        pl.policy_loss(logp, old, adv, mask, **kwargs)
    assert "\n" not in str(err.value)


# ---------------------------------------------------------------- Keep Routing on nano-DeepSeek (TINY) as a policy

@pytest.fixture(scope="module")
def policy():
    torch.manual_seed(0)
    model = nano.main_model(nano.build_model(nano.TINY)).double()
    ids = torch.randint(0, nano.TINY.vocab_size, (3, 12), generator=torch.Generator().manual_seed(1))
    return model, ids


def _set_bias(model, seed):
    g = torch.Generator().manual_seed(seed)
    for layer in pl.moe_layers(model):
        layer.e_score_correction_bias.copy_(0.3 * torch.randn(layer.n_routed_experts, generator=g))


def test_keep_routing_reproduces_rollout_logprobs_when_the_router_bias_moved(policy):
    """The rollout chose experts with one aux-loss-free bias; the bias moved before training (it does after every
    step). Without Keep Routing the training forward picks other experts and its log-probs differ; with the rollout's
    routes replayed they are the rollout's exactly (the bias only steers the choice, V3 eq. 16)."""
    model, ids = policy
    model.eval()
    _set_bias(model, 1)
    with torch.no_grad(), pl.record_routes(model) as rec:
        rollout_lp = token_logprobs(model, ids)
    routes = pl.routes_for_training(rec, ids.shape[1])
    _set_bias(model, 2)
    model.train()
    free_lp = token_logprobs(model, ids)
    changed = sum((layer.last_topk_idx.sort(-1).values != r.sort(-1).values).any(-1).float().mean().item()
                  for layer, r in zip(pl.moe_layers(model), routes))
    with pl.replay_routes(model, routes):
        kept_lp = token_logprobs(model, ids)
    assert changed > 0.05 and (free_lp - rollout_lp).abs().max().item() > 1e-4
    torch.testing.assert_close(kept_lp.detach(), rollout_lp, rtol=0, atol=1e-12)
    assert kept_lp.requires_grad and all(layer.replay_topk_idx is None for layer in pl.moe_layers(model))
    _set_bias(model, 3)


def test_keep_routing_exact_when_nothing_changed_and_router_still_learns(policy):
    model, ids = policy
    for layer in pl.moe_layers(model):
        layer.e_score_correction_bias.zero_()
    model.eval()
    with torch.no_grad(), pl.record_routes(model) as rec:
        rollout_lp = token_logprobs(model, ids)
    model.train()
    model.zero_grad()
    with pl.replay_routes(model, pl.routes_for_training(rec, ids.shape[1])):
        lp = token_logprobs(model, ids)
    torch.testing.assert_close(lp.detach(), rollout_lp, rtol=0, atol=1e-12)
    lp.sum().backward()
    assert all(layer.gate.weight.grad.abs().sum() > 0 for layer in pl.moe_layers(model))


def test_routes_recorded_while_decoding_line_up_with_the_training_forward(policy):
    """generate() runs the prompt, then one token per step through the KV cache (a few tokens: the gathered-expert
    path). routes_for_training puts those routes in the order of one full forward: replayed, the training forward
    uses them verbatim, and they agree with the experts the full forward would choose by itself (same weights)."""
    from course_lib.model import generate

    model, ids = policy
    model.eval()
    with pl.record_routes(model) as rec:
        out = generate(model, ids[:, :4], 6, temperature=1.0, generator=torch.Generator().manual_seed(0))
    routes = pl.routes_for_training(rec, out.shape[1])
    with torch.no_grad():
        token_logprobs(model, out)
        own = [layer.last_topk_idx.sort(-1).values for layer in pl.moe_layers(model)]
        with pl.replay_routes(model, routes):
            token_logprobs(model, out)
            used = [layer.last_topk_idx for layer in pl.moe_layers(model)]
    assert all(torch.equal(u, r) for u, r in zip(used, routes))
    # all but the last position (never fed back while decoding) were routed exactly like the full forward
    B, T = out.shape
    for o, r in zip(own, routes):
        assert torch.equal(o.view(B, T, -1)[:, :-1], r.sort(-1).values.view(B, T, -1)[:, :-1])


def test_replay_shape_is_checked(policy):
    model, ids = policy
    layers = pl.moe_layers(model)
    with pytest.raises(ValueError, match="replay"):
        with pl.replay_routes(model, [torch.zeros(5, 2, dtype=torch.long)] * len(layers)):
            token_logprobs(model, ids)
    with pytest.raises(ValueError, match="routes"):
        with pl.replay_routes(model, []):
            pass


def test_losses_and_keep_routing_stay_on_the_inputs_device(monkeypatch):
    """Under tests/test_cuda_path.py's fake device (a CPU tensor made inside would raise, as on CUDA)."""
    from test_cuda_path import DEV, off_cpu

    torch.manual_seed(0)
    model = nano.main_model(nano.build_model(nano.TINY))
    with off_cpu(monkeypatch):
        lp = torch.randn(4, 3, device=DEV, requires_grad=True)
        old, ref, mask = torch.randn(4, 3, device=DEV), torch.randn(4, 3, device=DEV), torch.ones(4, 3, device=DEV)
        adv, cut = torch.randn(4, device=DEV), torch.zeros(4, dtype=torch.bool, device=DEV)
        for variant, kw in [("grpo", {}), ("dr_grpo", {"max_completion_length": 3}), ("dapo", {}), ("gspo", {}),
                            ("gspo_token", {}), ("cispo", {"epsilon_high": 0.2})]:
            loss, _ = pl.policy_loss(lp, old, adv, mask, variant, ref_logp=ref, beta=0.1, unbiased_kl=True,
                                     off_policy_delta=0.1, sampling_logp=old, truncated=cut, **kw)
            loss.backward()
            assert loss.device == DEV and lp.grad.device == DEV
        logits = torch.randn(2, 3, 5, device=DEV)
        keep = pl.truncation_mask(logits, top_k=2, top_p=0.9)
        assert pl.kept_logprobs(logits, torch.zeros(2, 3, dtype=torch.long, device=DEV), keep).device == DEV
        assert pl.overlong_penalty(torch.tensor([1, 4], device=DEV), 5, 2).device == DEV
        model = model.to(DEV)
        ids = torch.randint(0, nano.TINY.vocab_size, (2, 6), device=DEV)
        with torch.no_grad(), pl.record_routes(model) as rec:
            token_logprobs(model, ids)
        with pl.replay_routes(model, pl.routes_for_training(rec, 6)):
            out = token_logprobs(model, ids)
        out.sum().backward()
        assert out.device == DEV
