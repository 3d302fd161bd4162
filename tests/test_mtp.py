"""Tests for course_lib.mtp: V3 §2.2 MTP modules and loss, and greedy self-speculative decoding."""
import pytest
import torch
import torch.nn.functional as F

from course_lib.model import ModelConfig, TinyLM, generate
from course_lib.mtp import (MTPModel, lambda_schedule, mtp_targets, speculative_generate, train_mtp,
                            truncate_cache)

V = 12


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models: a second thread only adds synchronisation (and suffers most on a busy CPU)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny(depth=1, seed=0, n_layers=2, max_len=96, dtype=torch.float32):
    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=V, hidden_size=32, num_hidden_layers=n_layers, num_attention_heads=2,
                      max_position_embeddings=max_len)
    return MTPModel(TinyLM(cfg), depth=depth).to(dtype)


def counting_batch(step, B=8, T=24):
    """t_{i+1} = t_i + 1 (mod V) from a random start: the token k+1 steps ahead is start + i + k + 1."""
    g = torch.Generator().manual_seed(step)
    start = torch.randint(0, V, (B, 1), generator=g)
    seq = (start + torch.arange(T + 1)) % V
    return seq[:, :-1], seq[:, 1:]


@pytest.fixture(scope="module")
def counter():
    """A depth-2 model trained on counting sequences, where every depth's right answer is known."""
    m = tiny(depth=2)
    train_mtp(m, counting_batch, steps=80, lr=1e-2, progress=False)
    return m.eval()


# --------------------------------------------------------------------------------------------- targets and shapes
def test_mtp_targets_hand_built():
    t = torch.tensor([10, 11, 12, 13, 14])      # idx = 10..13, next tokens 11..14
    emb, tgt = mtp_targets(t, 1)
    assert emb.tolist() == [11, 12, 13] and tgt.tolist() == [12, 13, 14]
    emb, tgt = mtp_targets(t, 2)
    assert emb.tolist() == [12, 13] and tgt.tolist() == [13, 14]
    emb, tgt = mtp_targets(t, 0)                # depth 0 is the main model's next-token task
    assert emb.tolist() == [10, 11, 12, 13] and tgt.tolist() == [11, 12, 13, 14]


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_shapes_per_depth(depth):
    m = tiny(depth=depth)
    idx = torch.randint(0, V, (3, 10))
    out = m(idx, idx)
    assert out.logits.shape == (3, 10, V)
    assert len(out.mtp_logits) == depth and len(out.mtp_losses) == depth
    for k, logits in enumerate(out.mtp_logits, start=1):
        assert logits.shape == (3, 10 - k, V)
    assert out.loss.shape == () and torch.isfinite(out.loss)


@pytest.mark.parametrize("depth", [1, 2])
def test_causal_alignment_by_perturbation(depth):
    """Depth k at position i sees t_0..t_{i+k}: changing t_j changes exactly the positions i >= j - k."""
    m = tiny(depth=depth).eval()
    idx = torch.randint(0, V, (1, 12))
    base = m(idx).mtp_logits
    for j in (3, 7, 11):
        idx2 = idx.clone()
        idx2[0, j] = (idx2[0, j] + 1) % V
        new = m(idx2).mtp_logits
        for k in range(1, depth + 1):
            diff = (base[k - 1] - new[k - 1]).abs().amax(-1)[0]          # per position i
            unaffected = diff[:max(0, j - k)]
            assert torch.all(unaffected < 1e-6), (k, j)
            assert diff[j - k] > 1e-4, (k, j)                             # position j-k embeds t_j itself


def test_loss_matches_eq_24_25_written_out():
    m = tiny(depth=2)
    idx = torch.randint(0, V, (2, 9))
    tgt = torch.randint(0, V, (2, 9))
    tgt[0, 5] = -100
    lam = 0.3
    out = m(idx, tgt, lam=lam)
    # eq. (24) by hand: mean over counted positions of -log P^k_i[target t_{i+k+1}] = -log P[tgt[i+k]]
    losses = []
    for k, logits in enumerate(out.mtp_logits, start=1):
        terms = [-F.log_softmax(logits[b, i], -1)[tgt[b, i + k]]
                 for b in range(2) for i in range(9 - k) if tgt[b, i + k] != -100]
        losses.append(torch.stack(terms).mean())
    main = torch.stack([-F.log_softmax(out.logits[b, i], -1)[tgt[b, i]]
                        for b in range(2) for i in range(9) if tgt[b, i] != -100]).mean()
    for got, want in zip(out.mtp_losses, losses):
        torch.testing.assert_close(got, want)
    torch.testing.assert_close(out.main_loss, main)
    # eq. (25): L = L_main + lambda / D * sum_k L_k
    torch.testing.assert_close(out.loss, main + lam / 2 * (losses[0] + losses[1]))


def test_trained_depths_predict_the_right_future_token(counter):
    """On counting data the right answer of depth k at position i is t_i + k + 1; off-by-one would score ~0."""
    idx, _ = counting_batch(999, B=8, T=20)
    out = counter(idx)
    assert (out.logits.argmax(-1) == (idx + 1) % V).float().mean() > 0.95
    for k, logits in enumerate(out.mtp_logits, start=1):
        want = (idx[:, :20 - k] + k + 1) % V
        assert (logits.argmax(-1) == want).float().mean() > 0.9, k


# --------------------------------------------------------------------------------------------- sharing
def test_embedding_and_head_are_shared_tensors():
    m = tiny(depth=2)
    for module in m.mtp:
        assert module.embed.weight is m.model.embed.weight
        assert module.head.weight is m.model.head.weight
    unique = sum(p.numel() for n, p in m.mtp.named_parameters() if not n.split(".")[1] in ("embed", "head"))
    assert sum(p.numel() for p in m.parameters()) == m.model.num_params() + unique
    # The MTP loss alone sends gradient into the shared tensors ...
    idx = torch.randint(0, V, (2, 8))
    out = m(idx, idx)
    sum(out.mtp_losses).backward()
    assert m.model.embed.weight.grad.abs().sum() > 0 and m.model.head.weight.grad.abs().sum() > 0
    # ... and editing the main head changes the MTP logits (one tensor, not a copy).
    before = m(idx).mtp_logits[0].detach().clone()
    with torch.no_grad():
        m.model.head.weight.mul_(2.0)
    assert not torch.allclose(m(idx).mtp_logits[0], before)


# --------------------------------------------------------------------------------------------- validation
@pytest.mark.parametrize("depth", [0, -1, 1.5, True, "1"])
def test_bad_depth(depth):
    with pytest.raises(ValueError, match="depth"):
        MTPModel(TinyLM(ModelConfig(vocab_size=V, hidden_size=32, num_attention_heads=2)), depth=depth)


@pytest.mark.parametrize("lam", [-0.1, "0.3", None, 11.0])
def test_bad_lambda(lam):
    with pytest.raises(ValueError, match="lam"):
        MTPModel(TinyLM(ModelConfig(vocab_size=V, hidden_size=32, num_attention_heads=2)), lam=lam)


def test_bad_shapes_and_lengths():
    m = tiny(depth=2)
    with pytest.raises(ValueError, match="depth"):
        m(torch.zeros(1, 2, dtype=torch.long))                      # T must exceed depth
    with pytest.raises(ValueError, match="targets"):
        m(torch.zeros(1, 5, dtype=torch.long), torch.zeros(1, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="model"):
        MTPModel(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="max_new_tokens"):
        speculative_generate(m, torch.zeros(1, 3, dtype=torch.long), 0)
    with pytest.raises(ValueError, match="max_position_embeddings"):
        speculative_generate(m, torch.zeros(1, 90, dtype=torch.long), 10)
    with pytest.raises(ValueError, match="k"):
        mtp_targets(torch.arange(3), 2)


def test_lambda_schedule_follows_v3():
    steps = 1000
    lams = [lambda_schedule(s, steps) for s in range(steps)]
    assert lams[0] == 0.3 and lams[-1] == 0.1
    first_low = lams.index(0.1)
    assert abs(first_low / steps - 10 / 14.8) < 2 / steps        # V3 §4.2: 10T of 14.8T tokens at 0.3
    with pytest.raises(ValueError, match="switch"):
        lambda_schedule(0, 10, switch=1.5)


def test_truncate_cache():
    cache = [{"k": torch.zeros(1, 2, 7, 4), "v": torch.ones(1, 2, 7, 4)}]
    truncate_cache(cache, 5)
    assert cache[0]["k"].shape == (1, 2, 5, 4) and cache[0]["v"].shape == (1, 2, 5, 4)
    with pytest.raises(ValueError, match="truncate"):
        truncate_cache(cache, 6)


# --------------------------------------------------------------------------------------------- speculative decoding
def _check_exact(m, n_trials, batch, seed):
    g = torch.Generator().manual_seed(seed)
    accepted = rejected = 0
    for _ in range(n_trials):
        P = int(torch.randint(1, 12, (), generator=g))
        N = int(torch.randint(1, 50, (), generator=g))
        idx = torch.randint(0, V, (batch, P), generator=g)
        plain = generate(m.model, idx, N, temperature=0)
        spec, stats = speculative_generate(m, idx, N)
        assert torch.equal(spec, plain), (P, N)
        assert stats.forwards == 1 + stats.drafted and stats.new_tokens == N
        accepted += stats.accepted
        rejected += stats.drafted - stats.accepted
    return accepted, rejected


@pytest.mark.parametrize("batch", [1, 3])
def test_speculative_equals_greedy_float64(counter, batch):
    """Token-for-token equality with plain greedy decoding, in float64 so that a 1-token and a 2-token forward pass
    cannot round a near-tie differently. Three models give both branches: random (drafts mostly rejected),
    half-trained and trained on counting (drafts mostly accepted)."""
    half = tiny(depth=1, seed=1)
    train_mtp(half, counting_batch, steps=25, lr=1e-2, progress=False)
    totals = [0, 0]
    for i, m in enumerate([tiny(depth=1, seed=2), half, counter]):
        m64 = m.double()
        a, r = _check_exact(m64, n_trials=10 if batch == 1 else 5, batch=batch, seed=10 * i + batch)
        totals[0] += a
        totals[1] += r
        m.float()
    assert totals[0] > 10 and totals[1] > 10, totals         # both the accept and the reject path ran


def test_speculative_equals_greedy_float32_trained(counter):
    """In float32 the trained model's logits have clear winners, so the same holds without float64."""
    _check_exact(counter, n_trials=10, batch=1, seed=5)


def test_mtp_cache_and_recompute_agree(counter):
    idx = torch.tensor([[3, 4, 5]])
    a, sa = speculative_generate(counter, idx, 30)
    b, sb = speculative_generate(counter, idx, 30, use_mtp_cache=False)
    assert torch.equal(a, b) and sa.accepted == sb.accepted and sa.drafted == sb.drafted
    assert sa.acceptance_rate > 0.9 and sa.tokens_per_forward > 1.5   # counting is easy to draft


def test_speculative_with_mla_attention_cache():
    """truncate_cache also fits MLA's latent cache (c_kv, k_rope: (B, S, .)); MLA decodes 1 token on its absorbed
    path and verifies 2 on its naive path, so compare in float64."""
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                      max_position_embeddings=96, attention="mla", mla={})
    m = MTPModel(TinyLM(cfg)).double()
    _check_exact(m, n_trials=5, batch=1, seed=3)


def test_shipped_checkpoint_loads_shares_and_decodes_exactly():
    from course_lib.toys.corpus import Corpus
    from course_lib.figures.mtp_analysis import load_checkpoint

    m, meta = load_checkpoint()
    assert m.mtp[0].embed.weight is m.model.embed.weight and m.mtp[0].head.weight is m.model.head.weight
    assert m.model.cfg.num_hidden_layers == meta["config"]["num_hidden_layers"] and not m.training
    corpus = Corpus()
    g = torch.Generator().manual_seed(11)
    accepted = 0
    for domain in corpus.domains:                         # float32, the way the notebook and the benchmark run it
        x, _ = corpus.get_batch("val", 1, 24, generator=g, domain=domain)
        spec, stats = speculative_generate(m, x, 48)
        assert torch.equal(spec, generate(m.model, x, 48, temperature=0)), domain
        accepted += stats.accepted
    assert accepted > 0                                    # the trained module drafts something useful


def test_bench_runs_and_checks_equality(capsys):
    from course_lib.bench.mtp import main

    assert main(["--new-tokens", "8", "--prompts", "1", "--repeat", "1", "--threads", "1"]) == 0
    assert "outputs identical" in capsys.readouterr().out


def test_figures_are_pure_functions_with_clear_errors():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from course_lib.figures.mtp_analysis import plot_mtp_architectures, plot_speculation

    m = tiny()
    x = torch.tensor([[1, 2, 3]])
    ids, stats = speculative_generate(m, x, 12)
    fig = plot_speculation(ids, stats.steps, step=len(stats.steps), prompt_len=3)
    assert f"{len(stats.steps)} of {len(stats.steps)}" in fig.axes[0].get_title()
    with pytest.raises(ValueError, match="step"):
        plot_speculation(ids, stats.steps, step=0, prompt_len=3)
    assert len(plot_mtp_architectures().axes) == 2
    from course_lib.figures.mtp_analysis import ConfidenceTable, plot_acceptance_by_confidence
    fig = plot_acceptance_by_confidence(ConfidenceTable((0.0, 0.5, 1.0), [4, 0], [1, 0]))   # an empty bin draws as 0
    assert [round(b.get_height(), 2) for b in fig.axes[0].patches] == [0.25, 0.0]
    plt.close("all")


def test_residual_rule_reproduces_p_exactly():
    """Leviathan et al. Theorem 1 written out: q(x) min(1, p/q) + P(reject) * residual(x) = p(x)."""
    from course_lib.mtp import residual_distribution

    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        p = torch.softmax(3 * torch.randn(1, 7, generator=g, dtype=torch.float64), -1)
        q = torch.softmax(3 * torch.randn(1, 7, generator=g, dtype=torch.float64), -1)
        keep = torch.minimum(torch.ones_like(p), p / q)
        out = q * keep + (q * (1 - keep)).sum() * residual_distribution(p, q)
        torch.testing.assert_close(out, p)
    p = torch.tensor([[0.2, 0.8]])
    torch.testing.assert_close(residual_distribution(p, p), p)        # nothing to resample: fall back to p


def test_speculative_sampling_matches_the_main_model_distribution():
    """Sample (t1, t2) many times; compare with the exact p(t1) p(t2 | t1) of the main model. At a low temperature the
    random model's MTP q differs a lot from p, so a wrong acceptance rule would show."""
    from course_lib.mtp import speculative_sample

    torch.manual_seed(3)
    m = MTPModel(TinyLM(ModelConfig(vocab_size=4, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                    max_position_embeddings=16))).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.mul_(8.0)                                              # sharper, more different p and q
    temp, x = 1.0, torch.tensor([[1, 2]])
    with torch.no_grad():
        out = m(x)
        p1 = torch.softmax(out.logits[0, -1] / temp, -1)
        exact = torch.stack([p1[a] * torch.softmax(m.model(torch.cat([x, torch.tensor([[a]])], 1)).logits[0, -1]
                                                    / temp, -1) for a in range(4)])     # (t1, t2)
        q2 = torch.stack([torch.softmax(m(torch.cat([x, torch.tensor([[a]])], 1)).mtp_logits[0][0, -1] / temp, -1)
                          for a in range(4)])                                            # MTP draft q(t2 | t1)
    assert 0.5 * (p1[:, None] * q2 - exact).abs().sum() > 0.15       # the draft alone would be clearly wrong
    g = torch.Generator().manual_seed(0)
    counts = torch.zeros(4, 4)
    n = 3000
    for _ in range(n):
        ids, _ = speculative_sample(m, x, 2, temperature=temp, generator=g)
        counts[ids[0, 2], ids[0, 3]] += 1
    assert 0.5 * (counts / n - exact).abs().sum() < 0.05


# -- acceptance by the main model's confidence ---------------------------------------------------------

def test_acceptance_by_confidence_counts_every_draft_once():
    from course_lib.figures.mtp_analysis import acceptance_by_confidence

    m = tiny()
    prompts = [torch.tensor([[1, 2, 3]]), torch.tensor([[4, 5, 6, 7]])]
    table = acceptance_by_confidence(m, prompts, 10, edges=(0, 0.3, 1))
    runs = [speculative_generate(m, p, 10)[1] for p in prompts]
    assert sum(table.drafted) == sum(r.drafted for r in runs)
    assert sum(table.accepted) == sum(r.accepted for r in runs)
    assert sum(table.share) == pytest.approx(1.0) and len(table.labels) == 2


def test_acceptance_by_confidence_bins_by_the_main_models_top1_probability():
    """Rebuild the binning by hand: the main model's top-1 probability at position pos - 1 decides the bin."""
    from course_lib.figures.mtp_analysis import acceptance_by_confidence

    m = tiny()
    x = torch.tensor([[3, 1, 4, 1, 5]])
    edges = (0.0, 0.1, 0.2, 1.0)
    table = acceptance_by_confidence(m, [x], 12, edges=edges)
    ids, stats = speculative_generate(m, x, 12)
    with torch.no_grad():
        top1 = m.model(ids).logits[0].softmax(-1).amax(-1)
    drafted = [0, 0, 0]
    for s in stats.steps:
        p = float(top1[s["pos"] - 1])
        drafted[0 if p < 0.1 else 1 if p < 0.2 else 2] += 1
    assert table.drafted == drafted


@pytest.mark.parametrize("edges", [(0.2, 1.0), (0.0, 0.5), (0.0, 0.6, 0.4, 1.0), (0.0,)])
def test_acceptance_by_confidence_rejects_bad_edges(edges):
    from course_lib.figures.mtp_analysis import acceptance_by_confidence

    with pytest.raises(ValueError, match="edges"):
        acceptance_by_confidence(tiny(), [torch.tensor([[1, 2]])], 4, edges=edges)


def test_shipped_checkpoint_accepts_confident_drafts_more_often():
    """The notebook's explanation of the low overall rate, checked on the shipped model: drafts where the main
    model is sure (top-1 p >= 0.9) are accepted far more often than those where it is not (p < 0.5)."""
    from course_lib.toys.corpus import Corpus
    from course_lib.figures.mtp_analysis import acceptance_by_confidence, load_checkpoint

    m, _ = load_checkpoint()
    corpus = Corpus()
    g = torch.Generator().manual_seed(0)
    prompts = [corpus.get_batch("val", 1, 32, generator=g, domain=d)[0] for d in corpus.domains]
    table = acceptance_by_confidence(m, prompts, 96, edges=(0.0, 0.5, 0.9, 1.0))
    low, _, high = table.acceptance
    assert table.drafted[0] >= 20 and table.drafted[2] >= 20
    assert high > low + 0.3
