"""Multi-token prediction (MTP) and self-speculative decoding with the MTP module.

DeepSeek-V3 (arXiv 2412.19437) §2.2 adds D sequential MTP modules on top of the main model. Module k predicts the
token k+1 steps ahead of each position and keeps the causal chain: it starts from the representation of depth k-1
(the main model's hidden state for k = 1) and the embedding of the token k steps ahead, runs one transformer block,
and reads the prediction out through the main model's output head. The embedding layer and the output head are
shared (the same tensors), so a module only adds its norms, one projection and one block.

At inference the modules can be dropped (the main model works alone) or used to draft the token after next for
speculative decoding (V3 §2.2 "MTP in Inference", §5.4.3): the main model checks the draft in its next forward pass,
and every accepted draft is a token that cost no forward pass of its own. `speculative_generate` does this greedily
and returns exactly the tokens plain greedy decoding returns.

Parameter names (hnorm, enorm, proj = M_k, block = TRM_k, norm) and those of the released checkpoint: docs/name_map.md.

Notation: the input is t_0 .. t_{T-1}; targets[:, i] = t_{i+1}. Module k at position i sees t_0 .. t_{i+k} and
predicts t_{i+k+1} = targets[:, i+k].
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from course_lib.kit.validate import int_at_least, positive_int
from course_lib.model import Block, RMSNorm, TinyLM

# V3 §4.2: lambda = 0.3 for the first 10T training tokens, 0.1 for the remaining 4.8T.
V3_LAMBDA = (0.3, 0.1)
V3_SWITCH = 10.0 / 14.8


def _check_depth(depth) -> int:
    return int_at_least("depth", depth, 1, " (V3 uses 1)")


def _check_lam(lam) -> float:
    if isinstance(lam, bool) or not isinstance(lam, (int, float)) or not 0.0 <= float(lam) <= 10.0:
        raise ValueError(f"lam (the MTP loss weight lambda) must be a number in [0, 10] (V3: 0.3 then 0.1), got {lam!r}")
    return float(lam)


def lambda_schedule(step: int, steps: int, start: float = V3_LAMBDA[0], end: float = V3_LAMBDA[1],
                    switch: float = V3_SWITCH) -> float:
    """The MTP loss weight at `step` of `steps`: `start` for the first `switch` fraction of training, then `end`.

    V3 §4.2 switches from 0.3 to 0.1 after 10T of its 14.8T tokens (switch = 0.676).
    """
    positive_int("steps", steps)
    if not 0.0 <= switch <= 1.0:
        raise ValueError(f"switch must be a fraction in [0, 1], got {switch!r}")
    _check_lam(start), _check_lam(end)
    return float(start) if step < switch * steps else float(end)


def mtp_targets(tokens: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """For a training sequence tokens = t_0 .. t_N (last dim), what depth k embeds and what it must predict.

    The model reads idx = t_0 .. t_{N-1}. Module k at position i embeds t_{i+k} and predicts t_{i+k+1}, for the
    positions i = 0 .. N-1-k where both exist: embedded = t_k .. t_{N-1}, predicted = t_{k+1} .. t_N.
    k = 0 is the main model itself (embeds t_i, predicts t_{i+1}).
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 0:
        raise ValueError(f"k must be a non-negative int, got {k!r}")
    n = tokens.shape[-1]
    if n < k + 2:
        raise ValueError(f"tokens must hold at least k+2={k + 2} tokens for depth {k}, got {n}")
    return tokens[..., k:n - 1], tokens[..., k + 1:]


# --------------------------------------------------------------------------------------------- the modules
class MTPModule(nn.Module):
    """MTP module k (V3 §2.2, Figure 3): two RMSNorms, the projection M_k, one transformer block, shared embed/head."""

    def __init__(self, model: TinyLM, k: int):
        super().__init__()
        cfg, d = model.cfg, model.cfg.hidden_size
        self.k = k
        self.hnorm = RMSNorm(d)                      # normalises h^{k-1}
        self.enorm = RMSNorm(d)                      # normalises Emb(t_{i+k})
        self.proj = nn.Linear(2 * d, d, bias=False)  # M_k in R^{d x 2d}
        # TRM_k: the course model's own block, numbered after the main layers as V3 numbers its MTP layer 61.
        self.block = Block(cfg, layer=cfg.num_hidden_layers + k - 1)
        # V3's checkpoints give each MTP module its own final norm before the shared output projection
        # ("shared_head.norm"); the paper folds it into OutHead.
        self.norm = RMSNorm(d)
        # Shared, not copied: these are the main model's modules, so their weights are one tensor each (V3 §2.2).
        self.embed = model.embed
        self.head = model.head
        for m in (self.hnorm, self.enorm, self.proj, self.block, self.norm):
            m.apply(TinyLM._init_weights)

    def forward(self, h_prev: torch.Tensor, tokens_ahead: torch.Tensor, start_pos: int = 0,
                cache: dict | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """h_prev (B, L, d): h^{k-1} at positions i; tokens_ahead (B, L): t_{i+k}. Returns (h^k, logits for t_{i+k+1})."""
        if h_prev.shape[:2] != tokens_ahead.shape:
            raise ValueError(f"h_prev {tuple(h_prev.shape)} and tokens_ahead {tuple(tokens_ahead.shape)} must cover "
                             "the same (batch, positions)")
        # V3 eq. (21): h'_i^k = M_k [RMSNorm(h_i^{k-1}); RMSNorm(Emb(t_{i+k}))]
        x = self.proj(torch.cat([self.hnorm(h_prev), self.enorm(self.embed(tokens_ahead))], dim=-1))
        # V3 eq. (22): h_{1:T-k}^k = TRM_k(h'_{1:T-k}^k)   (causal attention over the module's own positions)
        h = self.block(x, start_pos=start_pos, cache=cache)
        # V3 eq. (23): P_{i+k+1}^k = OutHead(h_i^k)   (logits; the softmax lives in the loss)
        return h, self.head(self.norm(h))


class MTPOutput(NamedTuple):
    logits: torch.Tensor              # main model's next-token logits (B, T, V)
    loss: torch.Tensor | None         # L_Main + L_MTP + MoE balance losses (what to backpropagate)
    main_loss: torch.Tensor | None    # L_Main: the next-token loss, comparable with a model trained without MTP
    mtp_losses: list                  # [L_MTP^1, ..., L_MTP^D]
    mtp_logits: list                  # depth k: (B, T-k, V), position i predicts t_{i+k+1}
    hidden: torch.Tensor              # main model's last hidden state
    aux_loss: torch.Tensor


class MTPModel(nn.Module):
    """A TinyLM plus D sequential MTP modules. `self.model` is the main model, usable (and savable) on its own."""

    def __init__(self, model: TinyLM, depth: int = 1, lam: float = V3_LAMBDA[0]):
        super().__init__()
        if not isinstance(model, TinyLM):
            raise ValueError(f"model must be a course_lib.model.TinyLM, got {type(model).__name__}")
        self.depth = _check_depth(depth)
        self.lam = _check_lam(lam)
        self.model = model
        self.mtp = nn.ModuleList(MTPModule(model, k) for k in range(1, depth + 1))

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, lam: float | None = None) -> MTPOutput:
        lam = self.lam if lam is None else _check_lam(lam)
        T = idx.shape[-1]
        if idx.dim() != 2 or T <= self.depth:
            raise ValueError(f"idx must be (batch, time) with time > depth={self.depth}, got shape {tuple(idx.shape)}")
        if targets is not None and targets.shape != idx.shape:
            raise ValueError(f"targets must have idx's shape {tuple(idx.shape)}, got {tuple(targets.shape)}")
        out = self.model(idx, targets)
        h, aux = out.hidden, out.aux_loss
        mtp_logits, mtp_losses = [], []
        for module in self.mtp:
            k = module.k
            # depth k covers positions i = 0 .. T-1-k: h^{k-1} there, and the token k steps ahead
            h, logits = module(h[:, :T - k], idx[:, k:])
            mtp_logits.append(logits)
            if getattr(module.block.ffn, "aux_loss", None) is not None:
                aux = aux + module.block.ffn.aux_loss
            if targets is not None:
                # V3 eq. (24): L_MTP^k = CrossEntropy(P^k_{2+k:T+1}, t_{2+k:T+1}), the mean over the positions
                # that have a target k+1 steps ahead (targets[:, i+k] = t_{i+k+1}; -100 = not counted)
                mtp_losses.append(F.cross_entropy(logits.flatten(0, 1), targets[:, k:].flatten(), ignore_index=-100))
        loss = None
        if targets is not None:
            # V3 eq. (25): L_MTP = (lambda / D) * sum_k L_MTP^k, added to the main next-token loss
            loss = out.loss + lam / self.depth * torch.stack(mtp_losses).sum() + aux
        return MTPOutput(out.logits, loss, out.loss, mtp_losses, mtp_logits, out.hidden, aux)


def train_mtp(mtp_model: MTPModel, get_batch, steps: int, lam_start: float = V3_LAMBDA[0],
              lam_end: float = V3_LAMBDA[1], switch: float = V3_SWITCH, **train_kwargs) -> dict:
    """course_lib.kit.train_loop.train_lm with the MTP loss and V3's two-stage lambda; history gains 'main_loss', 'mtp_loss', 'lam'."""
    from course_lib.kit.train_loop import train_lm

    calls = [0]  # train_lm's loss_fn does not receive the step, so count the calls (one per optimizer step)

    def loss_fn(m, x, y):
        lam = lambda_schedule(calls[0], steps, lam_start, lam_end, switch)
        calls[0] += 1
        out = m(x, y, lam=lam)
        return out.loss, {"main_loss": out.main_loss.item(),
                          "mtp_loss": torch.stack(out.mtp_losses).mean().item(), "lam": lam}

    return train_lm(mtp_model, get_batch, steps, loss_fn=loss_fn, **train_kwargs)


# --------------------------------------------------------------------------------------------- speculative decoding
def truncate_cache(cache: list[dict], length: int) -> None:
    """Forget every cached position >= length (in place), e.g. the keys/values of a rejected draft token.

    Assumes each cached tensor stores positions along dim -2, which holds for the course's attention caches
    (MHA keys/values (B, H, S, head_dim); MLA latents c_kv (B, S, d_c) and k_rope (B, S, d_r)); a tensor that is
    shorter than `length` raises instead of being cut wrongly.
    """
    for layer in cache:
        for key, value in layer.items():
            if not torch.is_tensor(value):
                continue
            if value.dim() < 2 or value.shape[-2] < length:
                raise ValueError(f"cannot truncate cache entry {key!r} of shape {tuple(value.shape)} to length {length}")
            layer[key] = value[..., :length, :]


@dataclass
class SpecStats:
    """What one speculative generation did. Acceptance = accepted / drafted; tokens per main-model forward pass."""
    new_tokens: int = 0
    forwards: int = 0                 # main-model forward passes (the prompt's prefill counts as one)
    drafted: int = 0
    accepted: int = 0
    steps: list = field(default_factory=list)  # one dict per verify pass: draft, verified tokens, accepted?

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.drafted if self.drafted else float("nan")

    @property
    def tokens_per_forward(self) -> float:
        return self.new_tokens / self.forwards if self.forwards else float("nan")


@torch.no_grad()
def speculative_generate(mtp_model: MTPModel, idx: torch.Tensor, max_new_tokens: int,
                         use_mtp_cache: bool = True) -> tuple[torch.Tensor, SpecStats]:
    """Greedy self-speculative decoding: MTP module 1 drafts the token after next, the main model verifies it.

    Each loop does one main forward pass over [last token, draft] (positions n-1, n):
      * its argmax at n-1 is the true next token g1 (it only depends on committed tokens);
      * if the draft equals g1, the argmax at n is also a true greedy token: two tokens for one pass;
      * otherwise only g1 is kept and the draft's key/value are cut from the cache.
    The output equals plain greedy decoding token for token. The one caveat is float rounding: the verify pass
    computes position n-1 inside a 2-token pass, plain decoding in a 1-token pass, and the two can round an exact
    argmax tie differently. tests/test_mtp.py therefore checks equality in float64 on random, half-trained and
    trained models (both accept and reject paths), and in float32 on trained models and the shipped checkpoint;
    in float32 such ties do occur rarely: 0 of 120 random-model generations differed, but one of 8 benchmark
    generations of a wider (d_model 96) trained toy diverged at two logits 4e-6 apart, and agreed in float64.
    `python -m course_lib.bench mtp` checks float64 equality and counts float32 divergences. With a batch, a draft is accepted only when every row's draft
    is right, which keeps the rows aligned and the output exact. Returns (B, T + max_new_tokens) tokens and stats.
    use_mtp_cache=False recomputes the MTP block over the whole sequence at each step instead of caching it.
    """
    if not isinstance(mtp_model, MTPModel):
        raise ValueError(f"mtp_model must be an MTPModel, got {type(mtp_model).__name__}")
    positive_int("max_new_tokens", max_new_tokens)
    if idx.dim() != 2 or idx.shape[1] < 1:
        raise ValueError(f"idx must be (batch, time) prompt ids with time >= 1, got shape {tuple(idx.shape)}")
    model, drafter = mtp_model.model, mtp_model.mtp[0]
    P = idx.shape[1]
    if P + max_new_tokens > model.cfg.max_position_embeddings:
        raise ValueError(f"prompt {P} + max_new_tokens {max_new_tokens} exceeds "
                         f"max_position_embeddings={model.cfg.max_position_embeddings}")
    was_training = mtp_model.training
    mtp_model.eval()
    stats = SpecStats()
    cache, mtp_cache = model.new_cache(), {}

    # Prefill: the prompt gives t_P (main head) ...
    out = model(idx, cache=cache, start_pos=0)
    stats.forwards += 1
    tokens = torch.cat([idx, out.logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    # ... and MTP positions 0..P-1, each pairing h_i with t_{i+1}; the last one drafts t_{P+1}.
    hiddens = out.hidden
    _, mtp_logits = drafter(hiddens, tokens[:, 1:], start_pos=0, cache=mtp_cache if use_mtp_cache else None)
    draft = mtp_logits[:, -1].argmax(-1)

    while tokens.shape[1] - P < max_new_tokens:
        n = tokens.shape[1]                              # committed tokens t_0..t_{n-1}; cache holds 0..n-2
        verify = model(torch.stack([tokens[:, -1], draft], dim=1), cache=cache, start_pos=n - 1)
        stats.forwards += 1
        greedy = verify.logits.argmax(-1)                # (B, 2): true t_n, and t_{n+1} if the draft was t_n
        accepted = bool((greedy[:, 0] == draft).all())
        stats.drafted += 1
        stats.accepted += int(accepted)
        stats.steps.append({"pos": n, "draft": draft.tolist(), "verified": greedy.tolist(), "accepted": accepted})
        keep = 2 if accepted else 1
        if not accepted:
            truncate_cache(cache, n)                     # drop the rejected draft at position n
        new = greedy[:, :keep]
        tokens = torch.cat([tokens, new], dim=1)
        if tokens.shape[1] - P >= max_new_tokens:
            break
        # Extend the MTP chain with the new positions (h_j, t_{j+1}); its last output drafts the next token.
        if use_mtp_cache:
            _, mtp_logits = drafter(verify.hidden[:, :keep], new, start_pos=n - 1, cache=mtp_cache)
        else:
            hiddens = torch.cat([hiddens, verify.hidden[:, :keep]], dim=1)
            _, mtp_logits = drafter(hiddens, tokens[:, 1:], start_pos=0)
        draft = mtp_logits[:, -1].argmax(-1)

    tokens = tokens[:, :P + max_new_tokens]
    stats.new_tokens = max_new_tokens
    mtp_model.train(was_training)
    return tokens, stats


def residual_distribution(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Where to resample after a rejected draft (Leviathan et al. 2023, arXiv 2211.17192, §2.3):
    p'(x) = max(0, p(x) - q(x)) / sum_x max(0, p(x) - q(x)).  When p == q nothing is ever rejected; return p."""
    r = (p - q).clamp_min(0)
    total = r.sum(-1, keepdim=True)
    return torch.where(total > 0, r / total.clamp_min(1e-30), p)


@torch.no_grad()
def speculative_sample(mtp_model: MTPModel, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
                       generator: torch.Generator | None = None) -> tuple[torch.Tensor, SpecStats]:
    """Sampling version of `speculative_generate` (batch of 1): the MTP module samples a draft from its q, the main
    model's verify pass gives p, and the draft is kept with probability min(1, p(d) / q(d)); otherwise the token is
    resampled from the residual distribution. Each token then follows the main model's p exactly in distribution
    (Leviathan et al. 2023, Theorem 1; Chen et al. 2023, arXiv 2302.01318)."""
    if idx.dim() != 2 or idx.shape[0] != 1:
        raise ValueError(f"idx must be one prompt of shape (1, time), got {tuple(idx.shape)}")
    if not isinstance(temperature, (int, float)) or temperature <= 0:
        raise ValueError(f"temperature must be a positive number (use speculative_generate for greedy), got {temperature!r}")
    positive_int("max_new_tokens", max_new_tokens)
    model, drafter = mtp_model.model, mtp_model.mtp[0]
    P = idx.shape[1]
    if P + max_new_tokens > model.cfg.max_position_embeddings:
        raise ValueError(f"prompt {P} + max_new_tokens {max_new_tokens} exceeds "
                         f"max_position_embeddings={model.cfg.max_position_embeddings}")
    probs = lambda logits: torch.softmax(logits.float() / temperature, dim=-1)
    draw = lambda dist: torch.multinomial(dist, 1, generator=generator)          # (1, 1)
    was_training = mtp_model.training
    mtp_model.eval()
    stats = SpecStats()
    cache, mtp_cache = model.new_cache(), {}
    out = model(idx, cache=cache)
    stats.forwards += 1
    tokens = torch.cat([idx, draw(probs(out.logits[:, -1]))], dim=1)
    _, mtp_logits = drafter(out.hidden, tokens[:, 1:], cache=mtp_cache)
    while tokens.shape[1] - P < max_new_tokens:
        n = tokens.shape[1]
        q = probs(mtp_logits[:, -1])
        draft = draw(q)                                                         # (1, 1)
        verify = model(torch.cat([tokens[:, -1:], draft], dim=1), cache=cache, start_pos=n - 1)
        stats.forwards += 1
        p_now, p_next = probs(verify.logits[:, 0]), probs(verify.logits[:, 1])
        d = int(draft)
        # Accept the draft with probability min(1, p(d) / q(d)).
        u = torch.rand(1, generator=generator, device=q.device)
        accepted = bool(u * q[0, d] <= p_now[0, d])
        stats.drafted += 1
        stats.accepted += int(accepted)
        stats.steps.append({"pos": n, "draft": [d], "verified": [[d]], "accepted": accepted})
        if accepted:
            new = torch.cat([draft, draw(p_next)], dim=1)                       # the draft, then a token from p
        else:
            truncate_cache(cache, n)
            new = draw(residual_distribution(p_now, q))
        stats.steps[-1]["verified"] = new.tolist()
        keep = new.shape[1]
        tokens = torch.cat([tokens, new], dim=1)
        if tokens.shape[1] - P >= max_new_tokens:
            break
        _, mtp_logits = drafter(verify.hidden[:, :keep], new, start_pos=n - 1, cache=mtp_cache)
    stats.new_tokens = max_new_tokens
    mtp_model.train(was_training)
    return tokens[:, :P + max_new_tokens], stats
