"""DSpark at toy scale: a parallel draft block, a low-rank Markov head and a confidence head on the capstone model.

DSpark (Cheng et al. 2026, "DSpark: Confidence-Scheduled Speculative Decoding with Semi-Autoregressive Generation",
DSpark_paper.pdf in deepseek-ai/DeepSpec; code deepspec/modeling/dspark/ and deepspec/eval/dspark/) drafts gamma
tokens in ONE forward pass of a small model that reads the target's hidden states (paper §2.2, DFlash's "KV
injection"), then adds a cheap sequential Markov bias so each draft token knows the one before it (§3.1), and a
confidence head that says how many of the gamma tokens are worth verifying (§3.2). The target model verifies the
chosen prefix in one pass; greedy verification keeps the output identical to plain greedy decoding.

Where the paper and the released code differ, this module follows the code and says so:
  * loss position weights: paper §3.3 writes w_k = exp(-(k-1)/gamma); loss.py uses exp(-k/loss_decay_gamma) with
    k = 0..gamma-1 and loss_decay_gamma = 4 for gamma = 7 (config/dspark/dspark_qwen3_4b.py). `loss_decay` here.
  * the block input: the anchor token (the target's last, not yet verified-through token) then gamma-1 mask
    tokens; all gamma slots predict (paper §3.1; create_noise_embed in common.py). The byte vocabulary of the
    capstone has no spare id, so the mask is a learned vector instead of a reserved token's embedding.
The draft shares the target's embedding and output head, frozen (paper §3.3), and has its own layers.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from course_lib.kit.validate import in_unit_interval
from course_lib.layers import RMSNorm, SwiGLU, apply_rope, attend, rope_cos_sin
from course_lib.model import TinyLM

# Paper Eq. 12 and config/dspark/dspark_qwen3_4b.py: alpha_ce = 0.1, alpha_tv = 0.9, alpha_conf = 1.0.
DEEPSPEC_ALPHAS = (0.1, 0.9, 1.0)


def _pos_int(name, value, low=1):
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    return value


@dataclass
class DSparkConfig:
    block_size: int = 4              # gamma: draft tokens per pass (DeepSpec 7, V4.1-Flash 5)
    n_layers: int = 1                # draft layers (DeepSpec 5)
    n_heads: int = 4
    target_layers: tuple = ()        # target blocks whose outputs feed the draft; () = spread over the model
    markov_rank: int = 32            # r of B = W1 W2 (paper Eq. 5; 256 in DeepSpec and V4.1)
    loss_decay: float = 4.0          # loss_decay_gamma of loss.py
    alphas: tuple = DEEPSPEC_ALPHAS

    def __post_init__(self):
        _pos_int("block_size", self.block_size)
        _pos_int("n_layers", self.n_layers)
        _pos_int("n_heads", self.n_heads)
        _pos_int("markov_rank", self.markov_rank)
        if not self.loss_decay > 0:
            raise ValueError(f"loss_decay must be positive, got {self.loss_decay!r}")
        if len(self.alphas) != 3 or min(self.alphas) < 0:
            raise ValueError(f"alphas must be three non-negative weights (ce, tv, conf), got {self.alphas!r}")

    def layers_for(self, n_target_layers: int) -> tuple:
        ids = tuple(self.target_layers) or tuple(sorted({1 % n_target_layers, n_target_layers // 2,
                                                         max(n_target_layers - 2, 0)}))
        # common.py validate_target_layer_ids: strictly increasing ids inside the target.
        if any(not 0 <= i < n_target_layers for i in ids) or list(ids) != sorted(set(ids)):
            raise ValueError(f"target_layers must be strictly increasing block indices in [0, {n_target_layers}), "
                             f"got {ids!r}")
        return ids


def _main(target) -> TinyLM:
    model = getattr(target, "model", target)
    if not isinstance(model, TinyLM):
        raise ValueError(f"target must be a TinyLM or an MTPModel, got {type(target).__name__}")
    return model


def target_forward(model: TinyLM, idx, layers, cache=None, start_pos: int = 0):
    """The target's ModelOutput and the outputs of blocks `layers` concatenated, (B, T, len(layers) * d).
    common.py extract_context_feature: torch.cat([hidden_states[l + 1] for l in layer_ids], -1)."""
    seen = {}
    hooks = [model.blocks[i].register_forward_hook(lambda m, a, out, i=i: seen.__setitem__(i, out)) for i in layers]
    try:
        out = model(idx, cache=cache, start_pos=start_pos)
    finally:
        for h in hooks:
            h.remove()
    return out, torch.cat([seen[i] for i in layers], dim=-1)


class DraftBlock(nn.Module):
    """A pre-norm block whose keys/values are [W_K H_ctx; W_K H_d] (paper Eq. 3): the injected target context, then
    the draft block itself. Queries come from the block only (qwen3/modeling.py Qwen3DSparkAttention)."""

    def __init__(self, d: int, n_heads: int):
        super().__init__()
        if d % n_heads or (d // n_heads) % 2:
            raise ValueError(f"n_heads={n_heads} must divide d_model={d} into an even head size")
        self.h, self.dh = n_heads, d // n_heads
        self.q, self.k, self.v, self.o = (nn.Linear(d, d, bias=False) for _ in range(4))
        self.attn_norm, self.ffn_norm = RMSNorm(d), RMSNorm(d)
        self.ffn = SwiGLU(d, int(math.ceil(8 * d / 3 / 16) * 16))

    def forward(self, x, ctx, q_pos, kv_pos, mask):
        B, Q, d = x.shape
        y = self.attn_norm(x)
        kv_in = torch.cat([ctx, y], dim=1)
        heads = lambda t: t.view(B, t.shape[1], self.h, self.dh).transpose(1, 2)  # noqa: E731
        dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
        cq, sq = rope_cos_sin(q_pos.cpu(), self.dh, dtype=dtype)
        ck, sk = rope_cos_sin(kv_pos.cpu(), self.dh, dtype=dtype)
        q = apply_rope(heads(self.q(y)), cq.to(x.device), sq.to(x.device))
        k = apply_rope(heads(self.k(kv_in)), ck.to(x.device), sk.to(x.device))
        a = attend(q, k, heads(self.v(kv_in)), self.dh ** -0.5, mask[:, None])
        x = x + self.o(a.transpose(1, 2).reshape(B, Q, d))
        return x + self.ffn(self.ffn_norm(x))


class MarkovHead(nn.Module):
    """Low-rank first-order transition bias, paper Eq. 5: B(x_{k-1}, .) = W1[x_{k-1}] W2 (markov_head.py
    VanillaMarkov: W1 an embedding table V x r, W2 a linear r -> V). Eq. 4: p_k = softmax(U_k + B(x_{k-1}, .))."""

    def __init__(self, vocab: int, rank: int):
        super().__init__()
        self.w1 = nn.Embedding(vocab, rank)
        self.w2 = nn.Linear(rank, vocab, bias=False)

    def bias(self, prev):
        return self.w2(self.w1(prev))

    def greedy(self, base_logits, first_prev):
        """Left-to-right over the block (sample_block_tokens at temperature 0): (B, gamma) tokens, corrected logits."""
        prev, toks, logits = first_prev, [], []
        for k in range(base_logits.shape[1]):
            step = base_logits[:, k] + self.bias(prev)
            prev = step.argmax(-1)
            toks.append(prev)
            logits.append(step)
        return torch.stack(toks, 1), torch.stack(logits, 1)


class DSparkDraft(nn.Module):
    """The draft model. Context features (paper Eq. 2): H_ctx = RMSNorm(W_c [H^(l1); ...; H^(lm)])."""

    def __init__(self, target, cfg: DSparkConfig | None = None):
        super().__init__()
        model = _main(target)
        self.cfg = cfg = cfg or DSparkConfig()
        d, V = model.cfg.hidden_size, model.cfg.vocab_size
        self.layers = cfg.layers_for(len(model.blocks))
        self.fc = nn.Linear(len(self.layers) * d, d, bias=False)
        self.hidden_norm = RMSNorm(d)
        self.mask_embed = nn.Parameter(torch.randn(d) * 0.02)
        self.blocks = nn.ModuleList(DraftBlock(d, cfg.n_heads) for _ in range(cfg.n_layers))
        self.norm = RMSNorm(d)
        self.markov = MarkovHead(V, cfg.markov_rank)
        # Paper Eq. 7: c_k = sigmoid(w^T [h_k; W1[x_{k-1}]]) (common.py AcceptRatePredictor over hidden + rank).
        self.confidence = nn.Linear(d + cfg.markov_rank, 1)

    def hidden(self, target, feats, anchor_tok, anchors):
        """Draft hidden states (B, A, gamma, d) for A blocks per row; block a starts at position anchors[:, a] with
        the token anchor_tok[:, a] and sees the context features of positions < anchors[:, a] plus its own block
        (common.py create_dspark_attention_mask: kv < anchor_pos, or the same block)."""
        model, g = _main(target), self.cfg.block_size
        B, A = anchors.shape
        S = feats.shape[1]
        ctx = self.hidden_norm(self.fc(feats))
        x = self.mask_embed.expand(B, A, g, -1).clone()
        x[:, :, 0] = model.embed(anchor_tok)
        x = x.reshape(B, A * g, -1)
        q_pos = (anchors[..., None] + torch.arange(g, device=anchors.device)).reshape(B, A * g)
        blk = torch.arange(A * g, device=anchors.device) // g
        ctx_ok = torch.arange(S, device=anchors.device)[None, None] < anchors.repeat_interleave(g, 1)[..., None]
        mask = torch.cat([ctx_ok, (blk[:, None] == blk[None, :]).expand(B, -1, -1)], dim=-1)
        if B != 1 and not torch.equal(q_pos, q_pos[:1].expand_as(q_pos)):
            raise ValueError("anchors must be the same in every row (positions are shared by the batch)")
        kv_pos = torch.cat([torch.arange(S, device=anchors.device), q_pos[0]])
        for b in self.blocks:
            x = b(x, ctx, q_pos[0], kv_pos, mask)
        return self.norm(x).view(B, A, g, -1)

    def conf_logits(self, h, prev):
        return self.confidence(torch.cat([h, self.markov.w1(prev)], dim=-1)).squeeze(-1)


def dspark_loss(draft: DSparkDraft, target, x, n_anchors: int = 8, generator=None):
    """DeepSpec's loss (loss.py compute_dspark_loss, paper Eq. 9-12) on anchors drawn from the windows x (B, T):
        w_k = exp(-k / loss_decay)                                   k = 0 .. gamma-1
        L_ce   = sum_k w_k (-log p^d_k(x*_k)) / sum_k w_k
        L_tv   = sum_k w_k ||p^d_k - p^t_k||_1 / sum_k w_k           (Eq. 10)
        L_conf = sum_k w_k BCE(c_k, c*_k) / sum_k w_k,  c*_k = 1 - ||p^d_k - p^t_k||_1 / 2   (Eq. 8, 11)
        L = a_ce L_ce + a_tv L_tv + a_conf L_conf
    Draft logits are teacher-forced through the Markov head: the previous token of slot k is the true x*_{k-1}."""
    model, g = _main(target), draft.cfg.block_size
    B, T = x.shape
    _pos_int("n_anchors", n_anchors)
    if T < g + 2:
        raise ValueError(f"windows of {T} tokens are too short for block_size={g}")
    with torch.no_grad():
        out, feats = target_forward(model, x, draft.layers)
    # anchors 1 .. T-g-1: each block has some context and all gamma labels inside the window
    anchors = torch.randperm(T - g - 1, generator=generator)[:n_anchors].sort().values.to(x.device) + 1
    anchors = anchors[None].expand(B, -1)
    lab_idx = anchors[..., None] + torch.arange(1, g + 1, device=x.device)          # (B, A, g)
    labels = x.gather(1, lab_idx.flatten(1)).view_as(lab_idx)
    tgt_logits = out.logits.gather(1, (lab_idx - 1).flatten(1)[..., None].expand(-1, -1, out.logits.shape[-1]))
    tgt_p = tgt_logits.view(*lab_idx.shape, -1).softmax(-1)
    anchor_tok = x.gather(1, anchors)
    h = draft.hidden(model, feats, anchor_tok, anchors)
    prev = torch.cat([anchor_tok[..., None], labels[..., :-1]], dim=-1)
    logits = model.head(h) + draft.markov.bias(prev)
    return loss_terms(logits, tgt_p, labels, draft.conf_logits(h, prev), draft.cfg.loss_decay, draft.cfg.alphas)


def loss_terms(logits, target_p, labels, conf_logits, loss_decay: float = 4.0, alphas=DEEPSPEC_ALPHAS):
    """The three terms of dspark_loss from draft logits (..., gamma, V), target probabilities (..., gamma, V),
    labels and confidence logits (..., gamma); every block counts fully (DeepSpec's eval_mask all ones)."""
    g = logits.shape[-2]
    w = torch.exp(-torch.arange(g, device=logits.device, dtype=logits.dtype) / loss_decay)
    norm = w.sum() * (labels.numel() // g)
    ce = (F.cross_entropy(logits.flatten(0, -2), labels.flatten(), reduction="none").view_as(labels) * w).sum() / norm
    l1 = (logits.softmax(-1) - target_p).abs().sum(-1)
    tv = (l1 * w).sum() / norm
    c_star = (1 - 0.5 * l1).clamp(0, 1).detach()
    conf = (F.binary_cross_entropy_with_logits(conf_logits, c_star, reduction="none") * w).sum() / norm
    a_ce, a_tv, a_conf = alphas
    loss = a_ce * ce + a_tv * tv + a_conf * conf
    return loss, {"ce": ce.item(), "tv": tv.item(), "conf": conf.item(), "accept": (c_star * w).sum().item() / norm.item()}


def train_dspark(target, corpus, cfg: DSparkConfig | None = None, steps: int = 300, batch: int = 16,
                 seq_len: int = 64, n_anchors: int = 8, lr: float = 3e-3, seed: int = 0, progress: bool = False):
    """Train a draft on the corpus's train split with the target frozen (paper §3.3); returns (draft, history).
    Batch n is drawn from a generator seeded with n + seed, so a run is reproducible."""
    from course_lib.kit.train_loop import train_lm

    model = _main(target)
    for name, v in (("steps", steps), ("batch", batch), ("seq_len", seq_len)):
        _pos_int(name, v)
    torch.manual_seed(seed)
    draft = DSparkDraft(model, cfg).to(next(model.parameters()).device)
    flags = [p.requires_grad for p in model.parameters()]
    model.requires_grad_(False)

    def get_batch(step):
        return corpus.get_batch("train", batch, seq_len, generator=torch.Generator().manual_seed(seed + step))

    def loss_fn(m, x, y):
        return dspark_loss(m, model, x, n_anchors)

    hist = train_lm(draft, get_batch, steps, lr=lr, loss_fn=loss_fn, progress=progress,
                    desc="DSpark draft")
    for p, flag in zip(model.parameters(), flags):
        p.requires_grad_(flag)
    draft.eval()
    return draft, hist


def confident_prefix(conf_logits, threshold: float) -> int:
    """Tokens to verify: all before the first c_k < threshold (draft_ops.py _confident_prefix_length);
    threshold 0 verifies the whole block. conf_logits: the block's gamma confidence logits, one dimension."""
    in_unit_interval("threshold", threshold)
    if conf_logits.dim() != 1:
        raise ValueError(f"conf_logits must be one block's (gamma,) logits, got shape {tuple(conf_logits.shape)}")
    if threshold == 0.0:
        return conf_logits.shape[-1]
    low = (conf_logits.sigmoid() < threshold).nonzero()
    return int(low[0, 0]) if len(low) else conf_logits.shape[-1]


def schedule_prefixes(conf, sps) -> list[int]:
    """Paper Algorithm 1 (hardware-aware prefix scheduler) for R requests with confidences conf (R, gamma) in (0, 1)
    and a profiled steps-per-second curve sps(batch_tokens). a_{r,j} = prod_{i<=j} c_{r,i}; admit candidates in
    descending a, B += 1 and tau += a each time, keep going while Theta = tau * SPS(B) grows; stop at the first drop."""
    conf = torch.as_tensor(conf, dtype=torch.float64)
    if conf.dim() != 2 or ((conf < 0) | (conf > 1)).any():
        raise ValueError(f"conf must be (requests, gamma) probabilities, got shape {tuple(conf.shape)}")
    R = conf.shape[0]
    a = conf.cumprod(-1)
    order = sorted(((float(a[r, j]), r, j + 1) for r in range(R) for j in range(conf.shape[1]) if a[r, j] > 0),
                   key=lambda t: -t[0])
    lengths, best = [0] * R, [0] * R
    B, tau = R, float(R)
    theta_best = tau * sps(B)
    for prob, r, j in order:
        lengths[r], B, tau = j, B + 1, tau + prob
        theta = tau * sps(B)
        if theta <= theta_best:
            break
        theta_best, best = theta, list(lengths)
    return best


@dataclass
class DSparkStats:
    new_tokens: int = 0
    forwards: int = 0                 # target forward passes, the prefill included
    drafted: int = 0                  # draft tokens sent to verification
    accepted: int = 0
    lengths: list = field(default_factory=list)   # accepted drafts + 1 per verify pass (the acceptance length)

    @property
    def acceptance_length(self) -> float:
        return sum(self.lengths) / len(self.lengths) if self.lengths else float("nan")


@torch.no_grad()
def dspark_generate(draft: DSparkDraft, target, idx, max_new_tokens: int, threshold: float = 0.0):
    """Greedy speculative decoding with a DSpark draft (base_evaluator.py generate_decoding_sample at temperature 0):
    the anchor is the last committed token t_{n-1}, not yet run through the target; the draft proposes gamma tokens,
    the confidence head keeps a prefix of l, the target runs [t_{n-1}, d_1..d_l] in one pass; d_i is accepted while
    it equals the target's argmax, and the target's next argmax is the bonus token. The output equals plain greedy
    decoding (up to float rounding of exact ties: tests check it in float64). Batch 1, as in DeepSpec's evaluator."""
    model = _main(target)
    _pos_int("max_new_tokens", max_new_tokens)
    if idx.dim() != 2 or idx.shape[0] != 1 or idx.shape[1] < 1:
        raise ValueError(f"idx must be one prompt of shape (1, T), got {tuple(idx.shape)}")
    P, g = idx.shape[1], draft.cfg.block_size
    if P + max_new_tokens + g > model.cfg.max_position_embeddings:
        raise ValueError(f"prompt {P} + max_new_tokens {max_new_tokens} + block {g} exceeds max_position_embeddings")
    model.eval(), draft.eval()
    stats, cache = DSparkStats(), model.new_cache()
    out, feats = target_forward(model, idx, draft.layers, cache=cache)
    stats.forwards += 1
    tokens = torch.cat([idx, out.logits[:, -1:].argmax(-1)], dim=1)
    while tokens.shape[1] - P < max_new_tokens:
        n = tokens.shape[1]                               # target cache and feats hold positions 0 .. n-2
        anchor = tokens[:, -1:]
        h = draft.hidden(model, feats, anchor, torch.tensor([[n - 1]], device=idx.device))[:, 0]
        drafts, _ = draft.markov.greedy(model.head(h), anchor[:, 0])
        prev = torch.cat([anchor, drafts[:, :-1]], dim=1)
        ell = confident_prefix(draft.conf_logits(h, prev)[0], threshold)
        verify, vfeats = target_forward(model, torch.cat([anchor, drafts[:, :ell]], 1), draft.layers, cache, n - 1)
        stats.forwards += 1
        greedy = verify.logits.argmax(-1)[0]              # greedy[i] = the true token after [.., d_i]
        a = 0
        while a < ell and int(drafts[0, a]) == int(greedy[a]):
            a += 1
        stats.drafted, stats.accepted = stats.drafted + ell, stats.accepted + a
        stats.lengths.append(a + 1)
        if a < ell:
            from course_lib.mtp import truncate_cache
            truncate_cache(cache, n + a)                  # keep t_{n-1}, d_1..d_a; drop the rejected tail
        feats = torch.cat([feats, vfeats[:, :a + 1]], dim=1)
        tokens = torch.cat([tokens, greedy[None, :a + 1]], dim=1)
    stats.new_tokens = max_new_tokens
    return tokens[:, :P + max_new_tokens], stats
