"""Unit tests for course_lib.moe: routing, balance losses, bias rule, dispatch, validation."""
import math

import pytest
import torch

from course_lib.moe import (MoE, bias_update, expert_balance_loss, group_limited_mask, max_violation, moe_layers, route,
                            sequence_balance_loss, update_biases)


def logit(p):
    """Inverse sigmoid, so tests can write affinities directly."""
    p = torch.as_tensor(p, dtype=torch.float64)
    return torch.log(p / (1 - p))


# -- routing ------------------------------------------------------------------------------------

def test_sigmoid_topk_normalised_by_hand():
    # affinities 0.9, 0.2, 0.6, 0.3 -> top-2 = experts 0 and 2; gates 0.9/1.5, 0.6/1.5, times scale 2
    w, idx, s = route(logit([[0.9, 0.2, 0.6, 0.3]]), top_k=2, routed_scaling_factor=2.0)
    assert idx.tolist() == [[0, 2]]
    torch.testing.assert_close(w, torch.tensor([[1.2, 0.8]], dtype=torch.float64))
    torch.testing.assert_close(s, torch.tensor([[0.9, 0.2, 0.6, 0.3]], dtype=torch.float64))


def test_softmax_without_normalisation_keeps_raw_probabilities():
    logits = torch.tensor([[1.0, 3.0, 2.0]], dtype=torch.float64)
    w, idx, _ = route(logits, top_k=2, scoring_func="softmax", norm_topk_prob=False)
    p = torch.softmax(logits, -1)[0]
    assert idx.tolist() == [[1, 2]]
    torch.testing.assert_close(w[0], p[[1, 2]])


def test_bias_changes_selection_not_gate_values():
    logits = logit([[0.9, 0.2, 0.6, 0.3]])
    bias = torch.tensor([0.0, 0.5, 0.0, 0.0], dtype=torch.float64)   # 0.2 + 0.5 = 0.7 beats 0.6
    w, idx, _ = route(logits, top_k=2, bias=bias)
    assert sorted(idx[0].tolist()) == [0, 1]
    # gates come from the unbiased affinities 0.9 and 0.2
    got = dict(zip(idx[0].tolist(), w[0].tolist()))
    assert got[0] == pytest.approx(0.9 / 1.1) and got[1] == pytest.approx(0.2 / 1.1)


def test_group_limited_routing_by_hand():
    # 3 groups of 2 experts. Group scores (top-2 sum): g0 = 0.95+0.05 = 1.0, g1 = 0.6+0.6 = 1.2, g2 = 0.5+0.1 = 0.6
    s = torch.tensor([[0.95, 0.05, 0.6, 0.6, 0.5, 0.1]], dtype=torch.float64)
    mask = group_limited_mask(s, n_group=3, topk_group=1, group_score="top2")
    assert mask.tolist() == [[False, False, True, True, False, False]]
    # ranking groups by their best expert (V2 style) keeps group 0 instead
    mask = group_limited_mask(s, n_group=3, topk_group=1, group_score="max")
    assert mask.tolist() == [[True, True, False, False, False, False]]
    # full route with one kept group: the best single expert (0.95) is NOT chosen
    w, idx, _ = route(logit(s), top_k=2, n_group=3, topk_group=1)
    assert sorted(idx[0].tolist()) == [2, 3]
    w, idx, _ = route(logit(s), top_k=2, n_group=3, topk_group=2)
    assert sorted(idx[0].tolist()) == [0, 2] or sorted(idx[0].tolist()) == [0, 3]


# -- balance --------------------------------------------------------------------------------------

def test_bias_update_rule_by_hand():
    bias = torch.tensor([0.0, 0.1, -0.2, 0.0])
    load = torch.tensor([10.0, 2.0, 4.0, 4.0])                      # mean 5: over, under, under, under
    new = bias_update(bias, load, gamma=0.01)
    torch.testing.assert_close(new, torch.tensor([-0.01, 0.11, -0.19, 0.01]))
    # exactly average load -> no change
    torch.testing.assert_close(bias_update(bias, torch.tensor([5.0, 5.0, 5.0, 5.0]), 0.01), bias)


def test_expert_balance_loss_by_hand():
    # T=2 tokens, E=4, k=1. Token 0 -> expert 0, token 1 -> expert 0.
    scores = torch.tensor([[0.4, 0.2, 0.2, 0.2], [0.7, 0.1, 0.1, 0.1]])
    idx = torch.tensor([[0], [0]])
    # f = 4/(1*2) * [2,0,0,0] = [4,0,0,0];  P_0 = (0.4+0.7)/2 = 0.55  -> loss 2.2
    assert expert_balance_loss(scores, idx, 4, 1).item() == pytest.approx(2.2)
    # perfectly uniform routing gives exactly 1
    uniform = torch.full((4, 4), 0.25)
    assert expert_balance_loss(uniform, torch.arange(4).unsqueeze(1), 4, 1).item() == pytest.approx(1.0)


def test_expert_balance_loss_normalises_sigmoid_scores():
    # sigmoid affinities need not sum to 1; P uses s' = s / sum_j s_j
    scores = torch.tensor([[0.8, 0.4], [0.8, 0.4]])
    idx = torch.tensor([[0], [0]])
    # f = 2/(1*2)*[2,0] = [2,0]; P_0 = 0.8/1.2 = 2/3 -> 4/3
    assert expert_balance_loss(scores, idx, 2, 1).item() == pytest.approx(4 / 3)


def test_balance_losses_follow_v3_eqs_17_to_20_by_hand():
    """N_r = 3, K_r = 1, two sequences of T = 2 tokens with sigmoid-like affinities (rows need not sum to 1)."""
    s = torch.tensor([[0.6, 0.3, 0.1], [0.2, 0.2, 0.4],        # sequence 1: row sums 1.0 and 0.8
                      [0.1, 0.1, 0.8], [0.5, 0.25, 0.25]])     # sequence 2: row sums 1.0 and 1.0
    idx = torch.tensor([[0], [2], [2], [2]])
    # Sequence 1. Eq. 19: s' rows [0.6, 0.3, 0.1], [0.25, 0.25, 0.5]; eq. 20: P = [0.425, 0.275, 0.3]
    # eq. 18: f = 3 / (1 * 2) * [1, 0, 1] = [1.5, 0, 1.5]; eq. 17: L = 1.5 * 0.425 + 1.5 * 0.3 = 1.0875
    # (with the raw s instead of s', P_0 would be 0.4 and P_2 0.25: L = 0.975, which this test rejects)
    seq1 = 1.0875
    # Sequence 2: P = [0.3, 0.175, 0.525], f = 3 / 2 * [0, 0, 2] = [0, 0, 3] -> L = 3 * 0.525 = 1.575
    seq2 = 1.575
    assert sequence_balance_loss(s, idx, 3, 1, seq_len=2).item() == pytest.approx((seq1 + seq2) / 2)
    # Over the whole batch (T = 4): P_0 = (0.6 + 0.25 + 0.1 + 0.5) / 4 = 0.3625, P_2 = (0.1 + 0.5 + 0.8 + 0.25) / 4
    # = 0.4125, f = 3 / 4 * [1, 0, 3] = [0.75, 0, 2.25] -> L = 0.75 * 0.3625 + 2.25 * 0.4125 = 1.2
    assert expert_balance_loss(s, idx, 3, 1).item() == pytest.approx(1.2)
    # Softmax affinities already sum to 1, so s' = s and the expert-level loss is DeepSeekMoE's / V2's unchanged.
    soft = torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.1, 0.8]])
    assert expert_balance_loss(soft, torch.tensor([[0], [2]]), 3, 1).item() == pytest.approx(1.5 * (0.3 + 0.5))


def test_sequence_balance_loss_is_per_sequence():
    # two sequences of 2 tokens; each sequence alone is balanced but the batch is not split the same way
    scores = torch.tensor([[0.9, 0.1], [0.1, 0.9], [0.9, 0.1], [0.9, 0.1]])
    idx = torch.tensor([[0], [1], [0], [0]])
    seq0 = 2 / 2 * (1 * 0.5 + 1 * 0.5)            # f = [1,1], P = [0.5,0.5] -> 1.0
    seq1 = 2 / 2 * (2 * 0.9 + 0 * 0.1)            # f = [2,0], P = [0.9,0.1] -> 1.8
    assert sequence_balance_loss(scores, idx, 2, 1, seq_len=2).item() == pytest.approx((seq0 + seq1) / 2)
    with pytest.raises(ValueError, match="seq_len"):
        sequence_balance_loss(scores, idx, 2, 1, seq_len=3)


def test_sequence_balance_loss_equals_expert_loss_per_sequence():
    """The vectorised per-sequence loss = the mean of expert_balance_loss on each sequence alone (random routing),
    and the gradient to the affinities agrees too."""
    g = torch.Generator().manual_seed(4)
    scores = torch.rand(5 * 7, 6, dtype=torch.float64, generator=g).requires_grad_(True)
    idx = torch.rand(5 * 7, 6, generator=g).topk(2, dim=-1).indices
    got = sequence_balance_loss(scores, idx, 6, 2, seq_len=7)
    want = torch.stack([expert_balance_loss(s, i, 6, 2) for s, i in zip(scores.split(7), idx.split(7))]).mean()
    torch.testing.assert_close(got, want)
    g_got, = torch.autograd.grad(got, scores)
    g_want, = torch.autograd.grad(want, scores)
    torch.testing.assert_close(g_got, g_want)


def test_max_violation():
    assert max_violation(torch.tensor([2.0, 2.0, 2.0])) == pytest.approx(0.0)
    assert max_violation(torch.tensor([6.0, 1.0, 1.0, 0.0])) == pytest.approx(6 / 2 - 1)


# -- the layer ------------------------------------------------------------------------------------

def small_moe(**kw):
    torch.manual_seed(0)
    cfg = dict(d_model=16, n_routed_experts=8, n_shared_experts=1, num_experts_per_tok=2,
               moe_intermediate_size=8, n_group=4, topk_group=2)
    cfg.update(kw)
    return MoE(**cfg).double()


def test_sparse_and_loop_dispatch_equal_with_gradients():
    moe = small_moe()
    x = torch.randn(3, 7, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(1), requires_grad=True)
    out_sparse = moe(x)
    g_sparse = torch.autograd.grad(out_sparse.pow(2).sum(), [x] + list(moe.parameters()))
    moe.dispatch = "loop"
    out_loop = moe(x)
    g_loop = torch.autograd.grad(out_loop.pow(2).sum(), [x] + list(moe.parameters()))
    torch.testing.assert_close(out_sparse, out_loop, rtol=1e-12, atol=1e-12)
    for a, b in zip(g_sparse, g_loop):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_sparse_dispatch_matches_dense_reference():
    """Independent check: run every expert on every token, then keep only the chosen ones."""
    moe = small_moe(n_shared_experts=0)
    x = torch.randn(2, 5, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    flat = x.reshape(-1, 16)
    w, idx, _ = moe.router(flat)
    all_out = torch.stack([moe.experts.expert(e, flat) for e in range(8)], dim=1)   # (N, E, d)
    dense_gates = torch.zeros(flat.shape[0], 8, dtype=torch.float64).scatter(1, idx, w)
    expected = (dense_gates.unsqueeze(-1) * all_out).sum(1)
    torch.testing.assert_close(moe(x).reshape(-1, 16), expected)
    # a single token (a batch-1 decode step) takes the direct path: same numbers, one row at a time
    for t in range(flat.shape[0]):
        torch.testing.assert_close(moe(flat[t].view(1, 1, 16)).view(16), expected[t])


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-6)])
def test_few_token_inference_path_equals_the_training_path(dtype, tol, monkeypatch):
    """Under no_grad, N*k <= N_r slots (a decode step, a speculative verify pass) take RoutedExperts.gathered; with
    autograd the same layer takes the sorted path of training. Both must give the same output, token for token."""
    from course_lib.experts import RoutedExperts

    calls = []
    gathered = RoutedExperts.gathered
    monkeypatch.setattr(RoutedExperts, "gathered",
                        lambda self, x, idx: calls.append(idx.shape) or gathered(self, x, idx))
    moe = small_moe(n_group=1, topk_group=1).to(dtype)
    with torch.no_grad():                          # spread the gate so routing differs from token to token
        moe.gate.weight.mul_(20)
    for n_tok in (1, 2, 3, 4):                      # 4 tokens x top-2 = 8 slots = N_r: the last size that gathers
        x = torch.randn(1, n_tok, 16, dtype=dtype, generator=torch.Generator().manual_seed(n_tok))
        with torch.no_grad():
            fast = moe(x)
        assert calls and calls[-1] == (n_tok, 2)
        calls.clear()
        trained_path = moe(x.clone().requires_grad_(True)).detach()
        assert not calls                            # with autograd: the training path, untouched
        torch.testing.assert_close(fast, trained_path, rtol=tol, atol=tol)
        # and the teaching loop, expert by expert
        flat = x.reshape(-1, 16)
        with torch.no_grad():
            w, idx, _ = moe.router(flat)
            loop = moe.experts_loop(flat, w, idx) + moe.shared_experts(flat)
        torch.testing.assert_close(fast.reshape(-1, 16), loop, rtol=tol, atol=tol)
    assert len({tuple(r) for r in idx.sort(-1).values.tolist()}) > 1   # the 4 tokens did not all pick the same pair
    with torch.no_grad():                           # 5 tokens = 10 slots > N_r: the sorted path again
        moe(torch.randn(1, 5, 16, dtype=dtype))
    assert not calls


def test_gathered_experts_can_fail():
    """The comparison above detects a wrong expert: gathering expert e+1's weights changes the output."""
    moe = small_moe()
    x = torch.randn(3, 16, dtype=torch.float64)
    idx = torch.tensor([[0, 5], [2, 3], [7, 1]])
    right = moe.experts.gathered(x, idx)
    torch.testing.assert_close(right[1, 0], moe.experts.expert(2, x[1]), rtol=1e-12, atol=1e-12)
    assert not torch.allclose(moe.experts.gathered(x, (idx + 1) % 8), right)


def test_plugin_interface_attributes():
    moe = small_moe(aux_loss_alpha=0.01, seq_aux_loss_alpha=0.001)
    x = torch.randn(2, 6, 16, dtype=torch.float64)
    out = moe(x)
    assert out.shape == x.shape
    assert moe.last_topk_idx.shape == (12, 2)
    assert moe.aux_loss.dim() == 0 and moe.aux_loss.item() > 0 and moe.aux_loss.requires_grad
    # the aux loss trains the router
    moe.aux_loss.backward()
    assert moe.gate.weight.grad.abs().sum() > 0
    # without alphas the aux loss is exactly zero
    plain = small_moe()
    plain(x)
    assert plain.aux_loss.item() == 0.0


def test_eval_and_no_grad_skip_the_balance_losses_but_not_the_output_or_the_counts():
    moe = small_moe(aux_loss_alpha=0.01, seq_aux_loss_alpha=0.001, bias_update_speed=0.01)
    x = torch.randn(2, 6, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    train_out = moe(x)
    assert moe.aux_loss.item() > 0
    train_idx, train_load = moe.last_topk_idx.clone(), moe.last_load.clone()
    counted = moe.load_since_update.clone()
    moe.eval()
    eval_out = moe(x)
    torch.testing.assert_close(eval_out, train_out.detach())             # the mode does not change the output
    assert moe.aux_loss.dim() == 0 and moe.aux_loss.item() == 0.0         # documented: zero in eval mode
    assert torch.equal(moe.last_topk_idx, train_idx) and torch.equal(moe.last_load, train_load)
    assert torch.equal(moe.load_since_update, counted)                    # eval forwards are not counted
    moe.train()
    with torch.no_grad():                                                 # training mode but no gradient step
        torch.testing.assert_close(moe(x), train_out.detach())
    assert moe.aux_loss.item() == 0.0
    assert torch.equal(moe.last_load, train_load)


def test_update_bias_in_training_only_and_balances():
    moe = small_moe(bias_update_speed=0.01)
    x = torch.randn(4, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    moe.eval()
    moe(x)
    update_biases(moe)
    assert moe.e_score_correction_bias.abs().sum() == 0                 # eval forwards are not counted
    moe.train()
    moe(x)
    load = moe.last_load.clone()
    update_biases(moe)
    expected = bias_update(torch.zeros(8, dtype=torch.float64), load, 0.01)
    torch.testing.assert_close(moe.e_score_correction_bias, expected)
    assert not moe.e_score_correction_bias.requires_grad
    # repeated updates on a fixed input shrink the imbalance
    start = max_violation(load)
    for _ in range(60):
        moe(x)
        moe.update_bias()
    assert max_violation(moe.last_load) < start


def test_no_bias_update_when_gamma_zero():
    moe = small_moe()
    moe.train()
    moe(torch.randn(1, 4, 16, dtype=torch.float64))
    moe.update_bias()
    assert moe.e_score_correction_bias.abs().sum() == 0


def test_deterministic():
    x = torch.randn(2, 5, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    assert torch.equal(small_moe()(x), small_moe()(x))


@pytest.mark.parametrize("kw, name", [
    (dict(num_experts_per_tok=9), "num_experts_per_tok"),
    (dict(n_group=3), "n_group"),
    (dict(topk_group=5), "topk_group"),
    (dict(n_group=4, topk_group=1, num_experts_per_tok=3), "topk_group"),
    (dict(scoring_func="relu"), "scoring_func"),
    (dict(dispatch="dense"), "dispatch"),
    (dict(bias_update_speed=-1.0), "bias_update_speed"),
    (dict(aux_loss_alpha=-0.1), "aux_loss_alpha"),
    (dict(n_routed_experts=0, n_group=1, topk_group=1), "n_routed_experts"),
    (dict(moe_intermediate_size=0), "moe_intermediate_size"),
])
def test_bad_config_raises_valueerror_naming_parameter(kw, name):
    with pytest.raises(ValueError, match=name):
        small_moe(**kw)


def test_bad_input_shape():
    with pytest.raises(ValueError, match="x must have shape"):
        small_moe()(torch.randn(4, 16, dtype=torch.float64))


def test_parameter_count_matches_formula():
    moe = MoE(d_model=16, n_routed_experts=8, n_shared_experts=2, num_experts_per_tok=2, moe_intermediate_size=4)
    per_expert = 3 * 16 * 4
    assert sum(p.numel() for p in moe.parameters()) == 8 * 16 + 8 * per_expert + 2 * per_expert
    assert math.isclose(moe.routed_scaling_factor, 1.0)


def test_ch02_exercise_answers_agree_with_course_lib():
    """The exercises' hand-worked answers, recomputed with course_lib.moe."""
    from course_lib.checks import ch02
    s = torch.tensor([[0.9, 0.05, 0.5, 0.5, 0.7, 0.6, 0.2, 0.3]], dtype=torch.float64)
    _, idx, _ = route(logit(s), top_k=2, n_group=4, topk_group=2)
    assert sorted(idx[0].tolist()) == ch02.group_limited_experts.reference()
    new = bias_update(torch.tensor([0.0, 0.02, -0.01, 0.0]), torch.tensor([3.0, 9.0, 2.0, 6.0]), 0.01)
    torch.testing.assert_close(new, torch.tensor(ch02.bias_after_one_update.reference()))
    logits = torch.randn(6, 8, generator=torch.Generator().manual_seed(7))
    w, idx, _ = route(logits, top_k=3)
    dense = torch.zeros_like(logits).scatter(1, idx, w)
    torch.testing.assert_close(ch02.sigmoid_gating.reference(logits, 3), dense)
    load = torch.tensor([10.0, 2.0, 4.0, 0.0])
    assert ch02.maxvio.reference(load) == pytest.approx(max_violation(load))


# -- analysis helpers ---------------------------------------------------------------------------

def test_byte_classes():
    from course_lib.figures.moe_analysis import BYTE_CLASSES, byte_classes
    ids = torch.tensor(list("aZ9 ,\n".encode()) + list("中".encode()))
    names = [BYTE_CLASSES[i] for i in byte_classes(ids).tolist()]
    assert names == ["letter", "letter", "digit", "space", "symbol", "space", "utf8-lead", "utf8-cont", "utf8-cont"]
    with pytest.raises(ValueError, match="ids"):
        byte_classes(torch.tensor([256]))


def test_mutual_information_by_hand():
    from course_lib.figures.moe_analysis import conditional_mutual_information, entropy, mutual_information
    a = torch.tensor([0, 0, 1, 1])
    assert mutual_information(a, a) == pytest.approx(1.0)                       # one fair bit
    assert mutual_information(a, torch.tensor([0, 1, 0, 1])) == pytest.approx(0.0)
    assert entropy(torch.tensor([0, 1, 2, 3])) == pytest.approx(2.0)
    # p(a,b): (0,0)=1/2, (1,0)=1/4, (1,1)=1/4 -> I = H(B) - H(B|A) = h(1/4) - 1/2 * h(1/2)
    h = lambda p: -p * math.log2(p) - (1 - p) * math.log2(1 - p)  # noqa: E731
    assert mutual_information(torch.tensor([0, 0, 1, 1]), torch.tensor([0, 0, 0, 1])) == pytest.approx(h(0.25) - 0.5)
    # B copies A but C already equals A: nothing left for B to tell
    assert conditional_mutual_information(a, a, a) == pytest.approx(0.0)
    # A = B xor C: B alone says nothing, B given C says everything
    b, c = torch.tensor([0, 0, 1, 1]), torch.tensor([0, 1, 0, 1])
    assert mutual_information(b ^ c, b) == pytest.approx(0.0)
    assert conditional_mutual_information(b ^ c, b, c) == pytest.approx(1.0)


def test_moe_inputs_capture_what_each_layer_sees():
    from course_lib.model import ModelConfig, TinyLM
    from course_lib.figures.moe_analysis import moe_inputs
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=32, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                      max_position_embeddings=8, ffn="moe",
                      moe=dict(n_routed_experts=4, num_experts_per_tok=2, moe_intermediate_size=8))
    model = TinyLM(cfg).eval()
    idx = torch.randint(0, 32, (2, 8))
    inputs = moe_inputs(model, idx)
    assert [u.shape for u in inputs] == [(16, 16), (16, 16)]
    layers = moe_layers(model)
    # routing the captured input again reproduces the model's own choice
    for u, layer in zip(inputs, layers):
        _, chosen, _ = layer.router(u)
        assert torch.equal(chosen, layer.last_topk_idx)
    assert all(not layer._forward_pre_hooks for layer in layers)          # hooks removed


def test_bench_runs_and_checks_equality(capsys):
    """Smoke test of `python -m course_lib.bench moe` on a tiny input (no timing claims)."""
    from course_lib.bench import moe as bench_moe
    assert bench_moe.main(["--batch", "1", "--seq", "8", "--repeat", "1", "--no-loop", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "course_lib sparse" in out and "lower bound" in out
    with pytest.raises(ValueError, match="--batch"):
        bench_moe.main(["--batch", "0"])


@pytest.mark.parametrize("kw, name", [(dict(top_k=5), "top_k"), (dict(scoring_func="tanh"), "scoring_func"),
                                      (dict(n_group=3), "n_group"), (dict(n_group=2, topk_group=3), "topk_group")])
def test_route_rejects_bad_arguments(kw, name):
    args = dict(top_k=2)
    args.update(kw)
    with pytest.raises(ValueError, match=name):
        route(torch.zeros(1, 4), **args)


def test_plot_routing_moves_selection_not_affinities():
    import matplotlib
    matplotlib.use("Agg")
    from course_lib.model import ModelConfig, TinyLM
    from course_lib.figures.moe_analysis import plot_routing
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=256, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                      max_position_embeddings=16, ffn="moe",
                      moe=dict(n_routed_experts=4, num_experts_per_tok=1, moe_intermediate_size=8))
    model = TinyLM(cfg).eval()
    before = [layer.e_score_correction_bias.clone() for layer in moe_layers(model)]
    fig0 = plot_routing(model, "hello", layer=2, expert=3)
    fig1 = plot_routing(model, "hello", layer=2, expert=3, extra_bias=5.0)
    # same affinity image; with a huge bias every byte picks expert 3 (one box per row, all in column 3)
    assert (fig0.axes[0].images[0].get_array() == fig1.axes[0].images[0].get_array()).all()
    assert [p.get_x() + 0.5 for p in fig1.axes[0].patches] == [3.0] * 5
    assert all(torch.equal(b, layer.e_score_correction_bias) for b, layer in zip(before, moe_layers(model)))
    for kw, name in [(dict(layer=3), "layer"), (dict(expert=4), "expert"), (dict(text=""), "text")]:
        with pytest.raises(ValueError, match=name):
            plot_routing(model, **{"text": "hi", **kw})


# -- the two ways to run the routed experts ----------------------------------------------------------

def _unused_expert_moe():
    """float32 MoE whose expert 3 never wins (its bias is hugely negative), so one group is empty."""
    torch.manual_seed(0)
    moe = MoE(d_model=16, n_routed_experts=8, n_shared_experts=1, num_experts_per_tok=2, moe_intermediate_size=8)
    with torch.no_grad():
        moe.e_score_correction_bias[3] = -10.0
    return moe


@pytest.mark.skipif(not hasattr(torch.nn.functional, "grouped_mm"), reason="this PyTorch has no F.grouped_mm")
def test_grouped_gemm_equals_per_expert_matmuls():
    moe = _unused_expert_moe()
    x = torch.randn(2, 9, 16, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        assert moe.experts._grouped_mm_ok(x)                  # inference on CPU in float32: the grouped kernel
        grouped = moe(x)
        assert moe.last_load[3] == 0                          # an empty group is part of the test
    x_grad = x.clone().requires_grad_(True)
    assert not moe.experts._grouped_mm_ok(x_grad)             # with autograd: the per-expert loop
    per_expert = moe(x_grad)
    torch.testing.assert_close(grouped, per_expert.detach(), rtol=1e-6, atol=1e-6)
    # and both equal the token-by-token teaching loop
    moe.dispatch = "loop"
    with torch.no_grad():
        torch.testing.assert_close(grouped, moe(x), rtol=1e-5, atol=1e-6)


def test_grouped_gemm_only_where_the_kernel_applies():
    moe = _unused_expert_moe()
    x = torch.randn(4, 16)
    with torch.no_grad():
        assert not moe.double().experts._grouped_mm_ok(x.double())          # no float64 kernel
        odd = MoE(d_model=16, n_routed_experts=8, moe_intermediate_size=6)  # 6 floats = 24 bytes: not 16-aligned
        assert not odd.experts._grouped_mm_ok(x)
        torch.testing.assert_close(odd(x[None]), odd(x[None].requires_grad_(True)).detach())


def test_stacked_expert_gradients():
    """Gradients reach each expert's slice of the stacked weights; an expert with no tokens gets exactly zero."""
    moe = _unused_expert_moe()
    moe(torch.randn(2, 9, 16, generator=torch.Generator().manual_seed(6))).pow(2).sum().backward()
    grad = moe.experts.gate_up.grad
    assert grad.shape == moe.experts.gate_up.shape
    assert torch.all(grad[3] == 0) and torch.all(moe.experts.down.grad[3] == 0)
    used = moe.last_load > 0
    assert bool((grad[used].abs().flatten(1).sum(1) > 0).all())
