"""Exercises of 10_nano_deepseek: DeepSeek-V3's training loss and a DeepSeekMoE layer (build them from tensors), the
checkpoint layout of the MTP projection and the speed-up estimate of self-speculative decoding."""
import torch
import torch.nn.functional as F

from course_lib.checks.core import register
from course_lib.moe import MoE, expert_balance_loss, sequence_balance_loss

_G = torch.Generator().manual_seed(9)


def _loss_case(B, T, V, E, K, D, lam, alpha):
    """Seeded random inputs of v3_training_loss: logits, D MTP logits, targets, one MoE layer's routing."""
    logits = torch.randn(B, T, V, generator=_G)
    mtp_logits = tuple(torch.randn(B, T - k, V, generator=_G) for k in range(1, D + 1))
    targets = torch.randint(0, V, (B, T), generator=_G)
    scores = torch.sigmoid(2 * torch.randn(B * T, E, generator=_G))
    indices = scores.topk(K, dim=-1).indices
    return logits, mtp_logits, targets, scores, indices, lam, alpha


def _ce(logits, targets):
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten())


def _main_and_mtp(logits, mtp_logits, targets):
    return _ce(logits, targets), [_ce(m, targets[:, k:]) for k, m in enumerate(mtp_logits, 1)]


def _wrong_no_shift(logits, mtp_logits, targets, scores, indices, lam, alpha):
    T = targets.shape[1]
    mtp = [_ce(m, targets[:, :T - k]) for k, m in enumerate(mtp_logits, 1)]      # module k compared with t_{i+1}
    return (_ce(logits, targets) + lam * torch.stack(mtp).mean()
            + alpha * sequence_balance_loss(scores, indices, scores.shape[1], indices.shape[1], T))


def _wrong_batch_balance(logits, mtp_logits, targets, scores, indices, lam, alpha):
    main, mtp = _main_and_mtp(logits, mtp_logits, targets)                      # balance over the whole batch
    return main + lam * torch.stack(mtp).mean() + alpha * expert_balance_loss(scores, indices, scores.shape[1],
                                                                               indices.shape[1])


def _wrong_raw_scores(logits, mtp_logits, targets, scores, indices, lam, alpha):
    main, mtp = _main_and_mtp(logits, mtp_logits, targets)                      # P_i from s, not s' (Eq. 19)
    T, E, K = targets.shape[1], scores.shape[1], indices.shape[1]
    f = F.one_hot(indices, E).sum(1).view(-1, T, E).sum(1) * E / (K * T)
    P = scores.view(-1, T, E).mean(1)
    return main + lam * torch.stack(mtp).mean() + alpha * (f * P).sum(-1).mean()


def _wrong_mtp_sum(logits, mtp_logits, targets, scores, indices, lam, alpha):
    main, mtp = _main_and_mtp(logits, mtp_logits, targets)                      # lambda * sum, not lambda / D * sum
    return main + lam * torch.stack(mtp).sum() + alpha * sequence_balance_loss(
        scores, indices, scores.shape[1], indices.shape[1], targets.shape[1])


def _wrong_no_balance(logits, mtp_logits, targets, scores, indices, lam, alpha):
    main, mtp = _main_and_mtp(logits, mtp_logits, targets)
    return main + lam * torch.stack(mtp).mean()


@register(cases=[_loss_case(2, 6, 10, 8, 2, 1, 0.3, 0.1), _loss_case(3, 5, 7, 8, 2, 2, 0.3, 0.5),
                 _loss_case(2, 8, 12, 16, 4, 2, 0.1, 1.0)],
          hint=("Three terms. The main model's next-token cross-entropy; each MTP module's cross-entropy, where "
                "module k at position i predicts targets[:, i + k]; and the sequence-wise balance loss, counted "
                "inside each sequence of T = targets.shape[1] tokens and then averaged over the sequences.",
                "L = CE(logits, targets) + lam * mean_k CE(mtp_logits[k-1], targets[:, k:]) + alpha * L_Bal, "
                "L_Bal = mean over sequences b of sum_i f_bi * P_bi, f_bi = N_r / (K_r T) * (slots of b routed "
                "to expert i), P_bi = mean over the tokens t of b of s_it / sum_j s_jt (V3 Eq. 17-20, 24-25).",
                "ce = lambda l, t: F.cross_entropy(l.flatten(0, 1), t.flatten())\n"
                "   T, E, K = targets.shape[1], scores.shape[1], indices.shape[1]\n"
                "   mtp = torch.stack([ce(m, targets[:, k:]) for k, m in enumerate(mtp_logits, 1)]).mean()\n"
                "   f = F.one_hot(indices, E).sum(1).view(-1, T, E).sum(1) * E / (K * T)\n"
                "   P = (scores / scores.sum(-1, keepdim=True)).view(-1, T, E).mean(1)\n"
                "   return ce(logits, targets) + lam * mtp + alpha * (f * P).sum(-1).mean()"),
          wrong=[_wrong_no_shift, _wrong_batch_balance, _wrong_raw_scores, _wrong_mtp_sum, _wrong_no_balance])
def v3_training_loss(logits, mtp_logits, targets, scores, indices, lam, alpha):
    """DeepSeek-V3's training loss (Eq. 17-20, 24-25) of a model with D = len(mtp_logits) MTP modules and one MoE
    layer: logits (B, T, V), mtp_logits[k-1] (B, T-k, V), targets (B, T), scores (B*T, N_r) sigmoid affinities,
    indices (B*T, K_r) the experts each token used."""
    main, mtp = _main_and_mtp(logits, mtp_logits, targets)
    balance = sequence_balance_loss(scores, indices, scores.shape[1], indices.shape[1], targets.shape[1])
    return main + lam / len(mtp) * torch.stack(mtp).sum() + alpha * balance


@register(cases=[(torch.randn(4, 8, generator=_G),), (torch.randn(6, 12, generator=_G),),
                 (torch.arange(8.0).view(2, 4),)],
          hint=("The paper's M_k acts on [h; Emb], the release's eh_proj on [Emb; h]: which columns of w read h?",
                "Columns 0..d-1 of w read h, columns d..2d-1 read the embedding; swap the two column blocks.",
                "d = w.shape[1] // 2\n   return torch.cat([w[:, d:], w[:, :d]], dim=1)"),
          wrong=[lambda w: w.clone(),                                   # unchanged
                 lambda w: w.flip(1),                                   # reverses the columns inside each block too
                 lambda w: torch.cat([w[w.shape[0] // 2:], w[:w.shape[0] // 2]])])   # swaps rows, not columns
def eh_proj_from_paper(w):
    """The release's eh_proj weight (d, 2d) from the paper-order projection M_k (d, 2d) (V3 Eq. 21)."""
    d = w.shape[1] // 2
    return torch.cat([w[:, d:], w[:, :d]], dim=1)


@register(cases=[(0.8, 1.1, 0.3), (1.0, 1.0, 0.0), (0.0, 1.0, 0.2), (0.9, 1.2, 0.25), (0.5, 1.05, 0.5)],
          hint=("Compare tokens per unit of time: what does one loop yield, and what does it cost in plain steps?",
                "Per loop: one verify pass (c_verify plain steps) plus one MTP draft (c_draft) yield 1 + a tokens; "
                "plain greedy yields 1 token per step of cost 1.",
                "return (1 + acceptance) / (c_verify + c_draft)"),
          wrong=[lambda a, cv, cd: 1 + a,                                 # ignores what the passes cost
                 lambda a, cv, cd: (1 + a) / cv,                          # forgets the draft's cost
                 lambda a, cv, cd: 2 * a / (cv + cd)])
def speculative_speedup(acceptance, c_verify, c_draft):
    """Expected tokens/s of greedy self-speculative decoding relative to plain greedy decoding."""
    return (1 + acceptance) / (c_verify + c_draft)


def _moe_case(N, d, E, K, h, n_group, topk_group):
    """Seeded random tokens and weights of one DeepSeekMoE layer (one shared expert of width h)."""
    u = torch.randn(N, d, generator=_G)
    e = torch.randn(E, d, generator=_G) / d ** 0.5                   # router centroids e_i
    b = 0.3 * torch.randn(E, generator=_G)                           # aux-loss-free bias
    gate_up = torch.randn(E, 2 * h, d, generator=_G) / d ** 0.5      # [W1; W3] of each routed expert
    down = torch.randn(E, d, h, generator=_G) / h ** 0.5             # W2 of each routed expert
    w1, w3 = (torch.randn(h, d, generator=_G) / d ** 0.5 for _ in range(2))
    w2 = torch.randn(d, h, generator=_G) / h ** 0.5
    return u, e, b, gate_up, down, w1, w3, w2, K, n_group, topk_group


def _moe_wrong(score="sigmoid", gate_with_bias=False, normalise=True, groups=True, shared=True):
    def ffn(u, e, b, gate_up, down, w1, w3, w2, k, n_group, topk_group):
        N, E = u.shape[0], e.shape[0]
        s = torch.sigmoid(u @ e.T) if score == "sigmoid" else torch.softmax(u @ e.T, -1)
        choice = s + b
        if groups:
            best = choice.view(N, n_group, -1).topk(min(2, E // n_group), -1).values.sum(-1).topk(topk_group, -1).indices
            keep = torch.zeros(N, n_group, dtype=torch.bool).scatter(1, best, True).repeat_interleave(E // n_group, 1)
            choice = choice.masked_fill(~keep, float("-inf"))
        idx = choice.topk(k, -1).indices
        g = (s + b if gate_with_bias else s).gather(1, idx)
        if normalise:
            g = g / g.sum(-1, keepdim=True)
        gt, up = torch.einsum("nd,nkhd->nkh", u, gate_up[idx]).chunk(2, -1)
        y = (g[..., None] * torch.einsum("nkh,nkdh->nkd", F.silu(gt) * up, down[idx])).sum(1)
        return y + (F.silu(u @ w1.T) * (u @ w3.T)) @ w2.T if shared else y
    return ffn


@register(cases=[_moe_case(12, 16, 8, 2, 8, 4, 2), _moe_case(10, 12, 16, 4, 6, 4, 2), _moe_case(6, 8, 6, 3, 4, 1, 1)],
          hint=("Four steps per token: affinities, choose the experts (bias and groups only choose), gate values, "
                "then the weighted sum of the chosen experts' SwiGLUs plus the shared expert.",
                "s = sigmoid(u e^T) (Eq. 15); choose the top-k of s + b among the experts of the topk_group groups "
                "with the largest sum of their two best s + b (Eq. 16); g = s of the chosen, divided by their sum "
                "(Eq. 13); y = sum_k g_k W2_k (SiLU(W1_k u) * W3_k u) + W2 (SiLU(W1 u) * W3 u) (Eq. 12), where "
                "gate_up[i] stacks [W1_i; W3_i].",
                "N, E = u.shape[0], e.shape[0]\n"
                "   s = torch.sigmoid(u @ e.T); c = s + b\n"
                "   best = c.view(N, n_group, -1).topk(min(2, E // n_group), -1).values.sum(-1).topk(topk_group, -1).indices\n"
                "   keep = torch.zeros(N, n_group, dtype=torch.bool).scatter(1, best, True).repeat_interleave(E // n_group, 1)\n"
                "   idx = c.masked_fill(~keep, float('-inf')).topk(k, -1).indices\n"
                "   g = s.gather(1, idx); g = g / g.sum(-1, keepdim=True)\n"
                "   gate, up = torch.einsum('nd,nkhd->nkh', u, gate_up[idx]).chunk(2, -1)\n"
                "   y = (g[..., None] * torch.einsum('nkh,nkdh->nkd', F.silu(gate) * up, down[idx])).sum(1)\n"
                "   return y + (F.silu(u @ w1.T) * (u @ w3.T)) @ w2.T"),
          wrong=[_moe_wrong(score="softmax"), _moe_wrong(gate_with_bias=True), _moe_wrong(normalise=False),
                 _moe_wrong(groups=False), _moe_wrong(shared=False)])
def deepseek_moe_ffn(u, e, b, gate_up, down, w1, w3, w2, k, n_group, topk_group):
    """DeepSeekMoE (V3 Eq. 12-16, node-limited routing) on tokens u (N, d): course_lib.moe.MoE with these weights."""
    E, h = e.shape[0], down.shape[2]
    moe = MoE(u.shape[1], n_routed_experts=E, n_shared_experts=1, num_experts_per_tok=k, moe_intermediate_size=h,
              scoring_func="sigmoid", n_group=n_group, topk_group=topk_group).eval()
    with torch.no_grad():
        moe.gate.weight.copy_(e)
        moe.e_score_correction_bias.copy_(b)
        moe.experts.gate_up.copy_(gate_up)
        moe.experts.down.copy_(down)
        for name, w in (("w1", w1), ("w3", w3), ("w2", w2)):
            getattr(moe.shared_experts, name).weight.copy_(w)
        return moe(u[None])[0]
