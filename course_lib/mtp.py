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

Notation: the input is t_0 .. t_{T-1}; targets[:, i] = t_{i+1}. Module k at position i sees t_0 .. t_{i+k} and
predicts t_{i+k+1} = targets[:, i+k].
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .model import Block, RMSNorm, TinyLM

# V3 §4.2: lambda = 0.3 for the first 10T training tokens, 0.1 for the remaining 4.8T.
V3_LAMBDA = (0.3, 0.1)
V3_SWITCH = 10.0 / 14.8


def _check_depth(depth) -> int:
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
        raise ValueError(f"depth must be a positive int (V3 uses 1), got {depth!r}")
    return depth


def _check_lam(lam) -> float:
    if isinstance(lam, bool) or not isinstance(lam, (int, float)) or not 0.0 <= float(lam) <= 10.0:
        raise ValueError(f"lam (the MTP loss weight lambda) must be a number in [0, 10] (V3: 0.3 then 0.1), got {lam!r}")
    return float(lam)


def lambda_schedule(step: int, steps: int, start: float = V3_LAMBDA[0], end: float = V3_LAMBDA[1],
                    switch: float = V3_SWITCH) -> float:
    """The MTP loss weight at `step` of `steps`: `start` for the first `switch` fraction of training, then `end`.

    V3 §4.2 switches from 0.3 to 0.1 after 10T of its 14.8T tokens (switch = 0.676).
    """
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
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
        cfg, d = model.cfg, model.cfg.d_model
        self.k = k
        self.hnorm = RMSNorm(d)                      # normalises h^{k-1}
        self.enorm = RMSNorm(d)                      # normalises Emb(t_{i+k})
        self.proj = nn.Linear(2 * d, d, bias=False)  # M_k in R^{d x 2d}
        # TRM_k: the course model's own block, numbered after the main layers as V3 numbers its MTP layer 61.
        self.block = Block(cfg, layer=cfg.n_layers + k - 1)
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
    """course_lib.train.train_lm with the MTP loss and V3's two-stage lambda; history gains 'main_loss', 'mtp_loss', 'lam'."""
    from .train import train_lm

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
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be a positive int, got {max_new_tokens!r}")
    if idx.dim() != 2 or idx.shape[1] < 1:
        raise ValueError(f"idx must be (batch, time) prompt ids with time >= 1, got shape {tuple(idx.shape)}")
    model, drafter = mtp_model.model, mtp_model.mtp[0]
    P = idx.shape[1]
    if P + max_new_tokens > model.cfg.max_seq_len:
        raise ValueError(f"prompt {P} + max_new_tokens {max_new_tokens} exceeds max_seq_len={model.cfg.max_seq_len}")
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
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be a positive int, got {max_new_tokens!r}")
    model, drafter = mtp_model.model, mtp_model.mtp[0]
    P = idx.shape[1]
    if P + max_new_tokens > model.cfg.max_seq_len:
        raise ValueError(f"prompt {P} + max_new_tokens {max_new_tokens} exceeds max_seq_len={model.cfg.max_seq_len}")
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


# --------------------------------------------------------------------------------------------- checkpoint
CHECKPOINT = "mtp_tiny"


def load_checkpoint(name: str = CHECKPOINT, device=None) -> tuple[MTPModel, dict]:
    """The trained toy MTP model from assets/mtp/<name>.pt (made by assets/mtp/make_checkpoint.py) and its metadata.

    The file stores the weights in float16 without the duplicated shared embed/head entries; they load back as
    float32 with weights_only=True (no code is unpickled).
    """
    import json

    from . import asset_path
    from .model import ModelConfig

    meta = json.loads(asset_path("mtp", f"{name}.json").read_text())
    model = MTPModel(TinyLM(ModelConfig(**meta["config"])), depth=meta["mtp_depth"])
    state = torch.load(asset_path("mtp", f"{name}.pt"), map_location="cpu", weights_only=True)
    missing, unexpected = model.load_state_dict({k: v.float() for k, v in state.items()}, strict=False)
    shared = {k for k in model.state_dict() if k.startswith("mtp.") and k.split(".")[2] in ("embed", "head")}
    if unexpected or set(missing) - shared:
        raise ValueError(f"checkpoint {name!r} does not match the model: missing {missing}, unexpected {unexpected}")
    return model.to(device or "cpu").eval(), meta


CONFIDENCE_EDGES = (0.0, 0.5, 0.7, 0.9, 0.97, 1.0)


@dataclass
class ConfidenceTable:
    """Drafts and accepted drafts per bin of the main model's confidence (its top-1 probability) in the token drafted."""
    edges: tuple
    drafted: list
    accepted: list

    @property
    def acceptance(self) -> list:
        return [a / d if d else float("nan") for a, d in zip(self.accepted, self.drafted)]

    @property
    def share(self) -> list:
        """Fraction of all drafts that fall in each bin."""
        total = sum(self.drafted)
        return [d / total if total else float("nan") for d in self.drafted]

    @property
    def labels(self) -> list:
        return [f"{lo:.2f}-{hi:.2f}" for lo, hi in zip(self.edges[:-1], self.edges[1:])]


@torch.no_grad()
def acceptance_by_confidence(mtp_model: MTPModel, prompts, max_new_tokens: int,
                             edges=CONFIDENCE_EDGES) -> ConfidenceTable:
    """Run greedy speculative decoding on each prompt (a list of (1, P) tensors) and sort every draft by how sure
    the main model was of the token it then chose: its top-1 probability p at that position.

    A draft is accepted when the MTP module's argmax equals the main model's argmax, so where the main model is
    confident (p near 1) the module usually agrees, and where p is low both are guessing among several
    tokens. The mix of the two explains the overall rate: acceptance = sum over bins of share * acceptance.
    """
    edges = tuple(float(e) for e in edges)
    if len(edges) < 2 or any(b <= a for a, b in zip(edges[:-1], edges[1:])) or edges[0] > 0 or edges[-1] < 1:
        raise ValueError(f"edges must increase strictly from <= 0 to >= 1, got {edges}")
    drafted, accepted = [0] * (len(edges) - 1), [0] * (len(edges) - 1)
    inner = torch.tensor(edges[1:-1])
    for idx in prompts:
        if idx.dim() != 2 or idx.shape[0] != 1:
            raise ValueError(f"each prompt must have shape (1, P), got {tuple(idx.shape)}")
        tokens, stats = speculative_generate(mtp_model, idx, max_new_tokens)
        # p(t_n) for the token at n comes from the logits at n - 1, given the committed prefix t_0 .. t_{n-1}
        top1 = mtp_model.model(tokens).logits[0].float().softmax(-1).amax(-1).cpu()
        for step in stats.steps:
            b = int(torch.bucketize(top1[step["pos"] - 1], inner, right=True))
            drafted[b] += 1
            accepted[b] += int(step["accepted"])
    return ConfidenceTable(edges, drafted, accepted)


def plot_acceptance_by_confidence(table: ConfidenceTable, title: str = ""):
    """Bars: acceptance rate per confidence bin, each labelled with the share (and number) of drafts in that bin."""
    import matplotlib.pyplot as plt

    from .style import COLORS

    fig, ax = plt.subplots(figsize=(7.5, 3.6))
    x = range(len(table.drafted))
    acc = [0.0 if a != a else a for a in table.acceptance]          # an empty bin draws as a zero-height bar
    bars = ax.bar(x, acc, color=COLORS["green"], alpha=0.7)
    for bar, share, n in zip(bars, table.share, table.drafted):
        ax.text(bar.get_x() + bar.get_width() / 2, bar.get_height() + 0.02, f"{share:.0%} of drafts\n(n={n})",
                ha="center", fontsize=8, color=COLORS["grey"])
    ax.set(xticks=list(x), xticklabels=table.labels, ylim=(0, 1.2), ylabel="draft acceptance",
           yticks=[0, 0.25, 0.5, 0.75, 1], yticklabels=["0%", "25%", "50%", "75%", "100%"],
           xlabel="main model's top-1 probability for the token it chose",
           title=title or "Drafts are accepted where the main model is sure")
    return fig


# --------------------------------------------------------------------------------------------- figures
def _show_byte(b: int) -> str:
    special = {10: "⏎", 9: "⇥", 32: "·"}
    return special[b] if b in special else chr(b) if 32 < b < 127 else f"\\x{b:02x}"


def plot_speculation(tokens, steps: list, step: int, prompt_len: int, window: int = 10):
    """Verify passes step-window+1 .. step of a B=1 speculative generation, one row each: the committed text so far,
    the MTP draft (green = accepted, red = rejected) and the tokens the main model's pass committed.

    tokens: the generated ids (1D or (1, T)); steps: SpecStats.steps; byte-level tokens are shown as characters.
    """
    import matplotlib.pyplot as plt

    from .style import COLORS

    tokens = torch.as_tensor(tokens).reshape(-1).tolist()
    if not 1 <= step <= len(steps):
        raise ValueError(f"step must be between 1 and {len(steps)}, got {step}")
    rows = steps[max(0, step - window):step]
    fig, ax = plt.subplots(figsize=(10, 0.45 * window + 1.2))
    ax.set_xlim(0, 62)
    ax.set_ylim(window + 0.5, -0.8)
    ax.axis("off")
    for col, title in ((0, "committed text (last 30 tokens)"), (33, "draft"), (40, "main pass keeps")):
        ax.text(col, -0.5, title, fontsize=9, color=COLORS["grey"])
    for r, s in enumerate(rows):
        n = s["pos"]
        before = "".join(_show_byte(t) for t in tokens[max(prompt_len - 5, n - 30):n])
        ax.text(0, r + 0.5, before.rjust(30), family="monospace", fontsize=10)
        ok = s["accepted"]
        ax.text(34, r + 0.5, _show_byte(s["draft"][0]), family="monospace", fontsize=11, ha="center",
                bbox=dict(boxstyle="round", fc=COLORS["green" if ok else "red"], alpha=0.35, lw=0))
        kept = s["verified"][0][:2 if ok else 1]
        label = " ".join(_show_byte(t) for t in kept) + ("   (2 tokens)" if ok else "   (1 token)")
        ax.text(40, r + 0.5, label, family="monospace", fontsize=10, color=COLORS["blue"])
    acc = sum(s["accepted"] for s in steps[:step])
    ax.set_title(f"verify pass {step} of {len(steps)}: {acc}/{step} drafts accepted so far", fontsize=11)
    return fig


def plot_mtp_architectures():
    """Gloeckle et al. (2024)'s parallel heads vs DeepSeek-V3's sequential MTP modules (V3 §2.2, Figure 3), for
    one position i and D = 2: which representation each extra prediction is made from."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyBboxPatch

    from .style import COLORS

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))

    def box(ax, x, y, text, color, w=2.4, h=0.7):
        ax.add_patch(FancyBboxPatch((x - w / 2, y - h / 2), w, h, boxstyle="round,pad=0.05",
                                    fc=color, alpha=0.25, ec=color))
        ax.text(x, y, text, ha="center", va="center", fontsize=9)

    def arrow(ax, a, b):
        ax.annotate("", xy=b, xytext=a, arrowprops=dict(arrowstyle="->", color=COLORS["grey"]))

    ax = axes[0]
    box(ax, 3, 0.5, "shared trunk  (t_1 .. t_i)", COLORS["blue"], w=4)
    for j, x in enumerate((1, 3, 5)):
        box(ax, x, 2.2, f"head {j + 1}", COLORS["orange"], w=1.6)
        box(ax, x, 3.6, f"t_(i+{j + 1})", COLORS["grey"], w=1.4)
        arrow(ax, (3, 0.85), (x, 1.85))
        arrow(ax, (x, 2.55), (x, 3.25))
    ax.set_title("parallel heads (Gloeckle et al. 2024)\nall predictions from the same h_i", fontsize=10)
    ax = axes[1]
    box(ax, 1, 0.5, "main model\n(t_1 .. t_i)", COLORS["blue"], w=2.0, h=0.9)
    box(ax, 3.2, 1.6, "MTP 1: [h_i ; Emb(t_(i+1))]", COLORS["green"], w=2.9)
    box(ax, 5.4, 2.7, "MTP 2: [h¹_i ; Emb(t_(i+2))]", COLORS["green"], w=2.9)
    for x, y, t in ((1, 2.3, "t_(i+1)"), (3.2, 3.4, "t_(i+2)"), (5.4, 4.1, "t_(i+3)")):
        box(ax, x, y, t, COLORS["grey"], w=1.4)
    arrow(ax, (1, 0.95), (1, 1.95))
    arrow(ax, (1.9, 0.7), (2.2, 1.3))
    arrow(ax, (3.2, 1.95), (3.2, 3.05))
    arrow(ax, (4.2, 1.9), (4.6, 2.35))
    arrow(ax, (5.4, 3.05), (5.4, 3.75))
    ax.set_title("sequential modules (DeepSeek-V3 §2.2)\neach depth builds on the previous one and sees the next token",
                 fontsize=10)
    for ax in axes:
        ax.set_xlim(-0.5, 7)
        ax.set_ylim(0, 4.5)
        ax.axis("off")
    return fig
