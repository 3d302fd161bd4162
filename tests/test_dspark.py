"""DSpark (course_lib.dspark): speculative output equals greedy decoding in float64, the heads' equations on
hand-worked cases, DeepSpec's loss terms, Algorithm 1's scheduler, and bad settings."""
import copy
import math

import pytest
import torch

from course_lib import asset_path
from course_lib.nano import export as nano_export
from course_lib.toys.corpus import Corpus
from course_lib.dspark import (DSparkConfig, DSparkDraft, MarkovHead, confident_prefix, dspark_generate, dspark_loss,
                               loss_terms, schedule_prefixes, target_forward, train_dspark)
from course_lib.model import generate
from course_lib.figures.nano_analysis import domain_prompts


@pytest.fixture(scope="module")
def shipped():
    return nano_export.from_transformers(asset_path("nano", "nano_tiny"))


@pytest.fixture(scope="module")
def corpus():
    return Corpus()


@pytest.fixture(scope="module")
def trained(shipped, corpus):
    torch.set_num_threads(1)
    draft, hist = train_dspark(shipped, corpus, DSparkConfig(block_size=4), steps=40, batch=8, seq_len=48)
    return draft, hist


def test_markov_head_is_w1_row_times_w2():
    head = MarkovHead(vocab=3, rank=2)
    with torch.no_grad():
        head.w1.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]]))
        head.w2.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 1.0]]))    # (V, r): row v = W2[:, v]
    # B(x=1, .) = W1[1] W2 = (0, 2) @ [[1, 0, -1], [0, 1, 1]] = (0, 2, 2)
    assert torch.equal(head.bias(torch.tensor([1])), torch.tensor([[0.0, 2.0, 2.0]]))
    # Greedy over a block: U_1 = (0, 1, 1.5) after x_0 = 0: + (1, 0, -1) -> (1, 1, 0.5): token 0 (first max)
    # U_2 = (0, 0, 0) after 0: (1, 0, -1) -> token 0;  a Markov-free parallel draft would take token 2 at slot 1.
    toks, logits = head.greedy(torch.tensor([[[0.0, 1.0, 1.5], [0.0, 0.0, 0.0]]]), torch.tensor([0]))
    assert toks.tolist() == [[0, 0]]
    assert torch.equal(logits[0, 0], torch.tensor([1.0, 1.0, 0.5]))


def test_confidence_head_equation(shipped):
    draft = DSparkDraft(shipped, DSparkConfig(markov_rank=4))
    h, prev = torch.randn(2, 3, 96), torch.tensor([[1, 2, 3], [4, 5, 6]])
    w, b = draft.confidence.weight[0], draft.confidence.bias[0]
    expect = torch.cat([h, draft.markov.w1(prev)], -1) @ w + b          # paper Eq. 7 before the sigmoid
    assert torch.allclose(draft.conf_logits(h, prev), expect, atol=1e-6)
    assert draft.conf_logits(h, prev).shape == (2, 3)


def test_confident_prefix_and_threshold():
    probs = torch.tensor([0.9, 0.6, 0.3, 0.8])
    logits = torch.log(probs / (1 - probs))
    assert confident_prefix(logits, 0.5) == 2          # 0.3 is the first below 0.5
    assert confident_prefix(logits, 0.0) == 4          # threshold 0 verifies the whole block
    assert confident_prefix(logits, 0.95) == 0
    with pytest.raises(ValueError, match="threshold"):
        confident_prefix(logits, 1.5)


def test_scheduler_algorithm_1_by_hand():
    conf = [[0.9, 0.9], [0.5, 0.5]]                    # a = (0.9, 0.81) and (0.5, 0.25)
    # start B = 2, tau = 2, Theta = 2. Admit (r0, 1): B = 3, tau = 2.9, Theta = 2.9. Admit (r0, 2): B = 4 where the
    # engine halves its steps/s: Theta = 3.71 * 0.5 = 1.855 < 2.9, stop.
    assert schedule_prefixes(conf, lambda B: 1.0 if B <= 3 else 0.5) == [1, 0]
    assert schedule_prefixes(conf, lambda B: 1.0) == [2, 2]          # an idle engine verifies everything
    assert schedule_prefixes(conf, lambda B: 1.0 / B) == [0, 0]     # cost linear in tokens: nothing pays
    with pytest.raises(ValueError, match="conf"):
        schedule_prefixes([[1.5, 0.2]], lambda B: 1.0)


def test_loss_terms_by_hand():
    # one block of gamma = 2 over a 2-token vocabulary; loss_decay 1 -> w = (1, e^-1)
    logits = torch.tensor([[[0.0, 0.0], [math.log(3.0), 0.0]]])      # p_d = (.5, .5), (.75, .25)
    target_p = torch.tensor([[[1.0, 0.0], [0.75, 0.25]]])
    labels = torch.tensor([[0, 1]])
    conf = torch.tensor([[0.0, 0.0]])                                 # c = 0.5 at both slots
    loss, logs = loss_terms(logits, target_p, labels, conf, loss_decay=1.0, alphas=(1.0, 1.0, 1.0))
    w0, w1 = 1.0, math.exp(-1)
    ce = (w0 * math.log(2) + w1 * math.log(4)) / (w0 + w1)
    tv = (w0 * 1.0 + w1 * 0.0) / (w0 + w1)                            # ||p_d - p_t||_1 = 1 and 0
    # c* = 1 - l1/2 = (0.5, 1); BCE(0.5 | c*) = log 2 whatever the target
    conf_loss = math.log(2)
    assert logs["ce"] == pytest.approx(ce, rel=1e-6)
    assert logs["tv"] == pytest.approx(tv, rel=1e-6)
    assert logs["conf"] == pytest.approx(conf_loss, rel=1e-6)
    assert logs["accept"] == pytest.approx((w0 * 0.5 + w1 * 1.0) / (w0 + w1), rel=1e-6)
    assert loss.item() == pytest.approx(ce + tv + conf_loss, rel=1e-6)


def test_block_sees_only_context_before_its_anchor(shipped):
    torch.manual_seed(0)
    draft = DSparkDraft(shipped).eval()
    x = torch.randint(0, 256, (1, 20))
    _, feats = target_forward(shipped.model, x, draft.layers)
    anchors, tok = torch.tensor([[6, 12]]), x[:, [6, 12]]
    h = draft.hidden(shipped, feats, tok, anchors)
    late = feats.clone()
    late[:, 12:] += 1.0                                  # positions >= 12 are invisible to both blocks
    assert torch.equal(draft.hidden(shipped, late, tok, anchors), h)
    seen = feats.clone()
    seen[:, 11] += 1.0                                   # visible to the block at 12 only
    h2 = draft.hidden(shipped, seen, tok, anchors)
    assert torch.equal(h2[:, 0], h[:, 0]) and not torch.allclose(h2[:, 1], h[:, 1])


def test_training_lowers_the_loss(trained):
    _, hist = trained
    assert sum(hist["loss"][-5:]) / 5 < 0.8 * sum(hist["loss"][:5]) / 5


@pytest.mark.parametrize("threshold", [0.0, 0.5])
def test_speculative_output_equals_greedy_in_float64(shipped, trained, corpus, threshold):
    draft, _ = trained
    m64, d64 = copy.deepcopy(shipped).double(), copy.deepcopy(draft).double()
    accepted = rejected = 0
    for dom in corpus.domains:
        p = domain_prompts(corpus, dom, 1, 24)[0]
        toks, stats = dspark_generate(d64, m64, p, 24, threshold=threshold)
        assert torch.equal(toks, generate(m64.model, p, 24, temperature=0)), dom
        assert toks.shape == (1, 48) and stats.new_tokens == 24
        accepted += stats.accepted
        rejected += stats.drafted - stats.accepted
        assert stats.forwards == len(stats.lengths) + 1
    assert accepted > 0 and rejected > 0              # both paths of the verifier ran


def test_untrained_draft_in_float64_still_exact(shipped):
    torch.manual_seed(1)
    m64 = copy.deepcopy(shipped).double()
    d64 = DSparkDraft(m64, DSparkConfig(block_size=3, n_layers=2)).double()
    p = torch.randint(0, 256, (1, 10))
    toks, stats = dspark_generate(d64, m64, p, 12)
    assert torch.equal(toks, generate(m64.model, p, 12, temperature=0))
    assert stats.drafted == 3 * len(stats.lengths)


@pytest.mark.parametrize("kwargs, name", [({"block_size": 0}, "block_size"), ({"markov_rank": 0}, "markov_rank"),
                                          ({"n_layers": -1}, "n_layers"), ({"loss_decay": 0.0}, "loss_decay"),
                                          ({"alphas": (1.0, -1.0, 1.0)}, "alphas")])
def test_bad_config_raises(kwargs, name):
    with pytest.raises(ValueError, match=name):
        DSparkConfig(**kwargs)


def test_bad_inputs_raise(shipped):
    with pytest.raises(ValueError, match="target_layers"):
        DSparkDraft(shipped, DSparkConfig(target_layers=(2, 1)))
    with pytest.raises(ValueError, match="n_heads"):
        DSparkDraft(shipped, DSparkConfig(n_heads=5))
    with pytest.raises(ValueError, match="target"):
        DSparkDraft(torch.nn.Linear(2, 2))
    draft = DSparkDraft(shipped)
    with pytest.raises(ValueError, match="idx"):
        dspark_generate(draft, shipped, torch.zeros(2, 4, dtype=torch.long), 4)
    with pytest.raises(ValueError, match="max_new_tokens"):
        dspark_generate(draft, shipped, torch.zeros(1, 4, dtype=torch.long), 0)
    with pytest.raises(ValueError, match="n_anchors"):
        dspark_loss(draft, shipped, torch.zeros(2, 16, dtype=torch.long), n_anchors=0)


def test_training_leaves_the_target_untouched(shipped, trained):
    fresh = nano_export.from_transformers(asset_path("nano", "nano_tiny"))
    for (name, a), b in zip(shipped.state_dict().items(), fresh.state_dict().values()):
        assert torch.equal(a, b), name
    assert all(p.requires_grad for p in shipped.parameters())


def test_markov_head_and_loss_match_nemo_automodel_dspark():
    """The same weights and logits in NeMo AutoModel's DSpark port of DeepSpec (nemo-automodel >= 0.7.0: its
    markov_head.VanillaMarkov and loss.compute_dspark_loss, which follow deepspec/modeling/dspark/ line by line)."""
    markov = pytest.importorskip("nemo_automodel.components.speculative.dspark.markov_head")
    loss_mod = pytest.importorskip("nemo_automodel.components.speculative.dspark.loss")
    from nemo_automodel.components.speculative.dspark.common import DSparkForwardOutput

    torch.manual_seed(0)
    V, r, B, A, g = 50, 8, 2, 3, 5
    ref = markov.VanillaMarkov(vocab_size=V, markov_rank=r).double()
    ours = MarkovHead(V, r).double()
    ours.load_state_dict({"w1.weight": ref.markov_w1.weight, "w2.weight": ref.markov_w2.weight})
    prev = torch.randint(0, V, (B, A, g))
    assert torch.allclose(ref.compute_step_bias(prev, None), ours.bias(prev))
    base, first = torch.randn(B, g, V, dtype=torch.float64), torch.randint(0, V, (B,))
    t_ref, l_ref = ref.sample_block_tokens(base, first_prev_token_ids=first, hidden_states=None, temperature=0.0)
    t_ours, l_ours = ours.greedy(base, first)
    assert torch.equal(t_ref, t_ours) and torch.allclose(l_ref, l_ours)
    logits, tgt = torch.randn(B, A, g, V), torch.randn(B, A, g, V) * 2
    labels, conf = torch.randint(0, V, (B, A, g)), torch.randn(B, A, g)
    out = DSparkForwardOutput(draft_logits=logits, target_ids=labels, eval_mask=torch.ones(B, A, g, dtype=torch.bool),
                              block_keep_mask=torch.ones(B, A, dtype=torch.bool), confidence_pred=conf,
                              aligned_target_logits=tgt)
    expect = loss_mod.compute_dspark_loss(outputs=out, loss_decay_gamma=4.0, ce_loss_alpha=0.1, l1_loss_alpha=0.9,
                                          confidence_head_alpha=1.0)
    got, _ = loss_terms(logits, tgt.softmax(-1), labels, conf, 4.0, (0.1, 0.9, 1.0))
    assert got.item() == pytest.approx(expect.item(), rel=1e-5)


def test_confident_prefix_wants_one_block():
    """A (1, gamma) batch would otherwise give a row index, not a length."""
    import pytest
    import torch
    from course_lib.dspark import confident_prefix
    assert confident_prefix(torch.tensor([3.0, 3.0, -3.0, 3.0]), 0.5) == 2
    with pytest.raises(ValueError, match="conf_logits must be one block"):
        confident_prefix(torch.tensor([[3.0, 3.0, -3.0, 3.0]]), 0.5)
