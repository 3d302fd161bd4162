"""Engram: a conditional memory of hashed n-grams, looked up per token and gated into the residual stream.

Paper: Cheng et al., "Conditional Memory via Scalable Lookup: A New Axis of Sparsity for Large Language Models"
(DeepSeek-AI and Peking University, arXiv 2601.07372), §2 (the Engram module; we could read only the paper's
abstract, so its section numbers below are not re-checked), with DeepSeek's official demo code
github.com/deepseek-ai/Engram, `engram_demo_v1.py` (Apache-2.0). This module follows the demo's forward pass:

  1. tokenizer compression (§2.2): a surjective map of token ids to canonical ids (e.g. 'Apple' and 'apple' -> one id)
  2. n-gram hashing (§2.2): for each order n = 2..N and each of K heads, the ids of the last n tokens are mixed with
     odd multipliers and XOR, then reduced modulo a prime table size (every head has its own prime):
         mix_n(t) = (x_t * m_0) XOR (x_{t-1} * m_1) XOR ... XOR (x_{t-n+1} * m_{n-1})
         idx_{n,k}(t) = mix_n(t) mod p_{n,k}
  3. lookup: one embedding row per (n, k) -- (N - 1) * K rows per token, whatever the table size -- concatenated
     into e_t
  4. context-aware gating (§2.3): the hidden state is the query, the memory the key and value
         alpha_t = sigmoid( RMSNorm(h_t)^T RMSNorm(W_k e_t) / sqrt(d) )
     (the demo takes a signed square root of the score before the sigmoid: sign(s) * sqrt(|s|))
  5. v_t = alpha_t * W_v e_t, then a short causal depthwise convolution (kernel 4, dilation N, SiLU) adds local
     context: out = v + SiLU(Conv(RMSNorm(v))). The block adds `out` to the residual stream before attention.

DeepSeek-V4.1-Flash (2026-09) ships Engram at two of its 40 layers (1 and 14), n-grams up to order 4 (NeMo's port of
the released report, config and code: deepseek_v41/README.md and config.py); its
released inference code, as ported by NVIDIA NeMo AutoModel
(`nemo_automodel/components/models/deepseek_v41/engram.py`), keeps the hashing and the signed-square-root gate but has
no short convolution and no projection biases (`short_conv=False` gives the first of these).

Where the demo and this module differ: the demo compresses DeepSeek-V3's 129k-token vocabulary with a text normaliser
(the `tokenizers` library's NFKC, NFD, StripAccents, Lowercase and whitespace steps; a token whose decoded text
contains U+FFFD keeps its raw token string) and draws its hash multipliers with numpy; here `compression_map` applies
the same normalisation (`normalize_token`, in Python's unicodedata) to any list of token strings and the multipliers come from a seeded torch generator (the same recipe: odd numbers below a
bound that keeps x * m inside int64). The demo's mocked hyper-connections (hc_mult branches, notebook 08's mHC) are
supported: hidden states of shape (B, T, hc_mult, d) get one gate per branch; (B, T, d) means hc_mult = 1.
"""
from __future__ import annotations

import math
import re
import unicodedata
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from course_lib.kit.validate import int_at_least, positive_int, positive_number
from course_lib.layers import RMSNorm

PRIME_STRIDE = 10007          # the demo's per-layer seed offset: seed + 10007 * layer_id
INT64_MAX = 2 ** 63 - 1


# ----------------------------------------------------------------------------------------------------------------
# Tokenizer compression (§2.2)
# ----------------------------------------------------------------------------------------------------------------

def normalize_token(text: str) -> str:
    """The demo's normaliser for one token's text (its `tokenizers` pipeline: NFKC, NFD, StripAccents, Lowercase,
    then whitespace): NFKC, NFD, drop every combining mark (General_Category Mn, Mc and Me, as StripAccents does),
    lowercase character by character (as Lowercase does: no final-sigma rule, unlike str.lower() on a whole
    string), collapse whitespace to one space and strip it (a token that is only whitespace stays a single space).
    An empty result falls back to the original text, as in the demo."""
    s = unicodedata.normalize("NFD", unicodedata.normalize("NFKC", text))
    s = "".join(c.lower() for c in s if not unicodedata.category(c).startswith("M"))
    s = re.sub(r"[ \t\r\n]+", " ", s)
    s = s if s == " " else s.strip()
    return s or text


def compression_map(tokens: Sequence[str]) -> tuple[torch.Tensor, int]:
    """(map, n_canonical): map[token_id] = canonical id, the first-seen order of the normalised strings (§2.2)."""
    if len(tokens) == 0:
        raise ValueError("tokens must list at least one token string")
    key_to_new: dict[str, int] = {}
    ids = [key_to_new.setdefault(normalize_token(t), len(key_to_new)) for t in tokens]
    return torch.tensor(ids, dtype=torch.long), len(key_to_new)


# ----------------------------------------------------------------------------------------------------------------
# Hashing
# ----------------------------------------------------------------------------------------------------------------

def is_prime(n: int) -> bool:
    if n < 2:
        return False
    if n % 2 == 0:
        return n == 2
    return all(n % d for d in range(3, math.isqrt(n) + 1, 2))


def head_table_sizes(table_sizes: Sequence[int], n_heads: int, n_layers: int = 1) -> list[list[list[int]]]:
    """The demo's prime table sizes: sizes[layer][n - 2][head]. For each order the first head gets the smallest prime
    >= table_sizes[n - 2], each next head the next prime; no prime is used twice across orders and layers, so two
    heads never collide on the same pair of n-grams for the same reason."""
    seen: set[int] = set()
    out = []
    for _ in range(n_layers):
        layer = []
        for size in table_sizes:
            heads, p = [], size - 1
            for _ in range(n_heads):
                p += 1
                while not is_prime(p) or p in seen:
                    p += 1
                seen.add(p)
                heads.append(p)
            layer.append(heads)
        out.append(layer)
    return out


def hash_multipliers(vocab_size: int, max_ngram: int, seed: int = 0, layer_id: int = 0) -> torch.Tensor:
    """max_ngram odd multipliers drawn below a bound that keeps token_id * m < 2^63 (the demo's recipe)."""
    half_bound = max(1, (INT64_MAX // vocab_size) // 2)
    gen = torch.Generator().manual_seed(seed + PRIME_STRIDE * layer_id)
    r = torch.randint(0, half_bound, (max_ngram,), generator=gen, dtype=torch.long)
    return r * 2 + 1


def ngram_hashes(ids: torch.Tensor, multipliers: torch.Tensor, primes: Sequence[Sequence[int]],
                 pad_id: int) -> torch.Tensor:
    """(B, T) canonical ids -> (B, T, (N - 1) * K) row indices, order-major then head (the demo's layout).

    mix_n(t) = XOR_{k < n} x_{t-k} * m_k, with x_{t-k} = pad_id before the sequence starts; index = mix_n mod p_{n,k}.
    """
    B, T = ids.shape
    max_ngram = len(primes) + 1
    shifted = [ids] + [F.pad(ids, (k, 0), value=pad_id)[:, :T] for k in range(1, max_ngram)]
    out = []
    for n in range(2, max_ngram + 1):
        mix = shifted[0] * multipliers[0]
        for k in range(1, n):
            mix = torch.bitwise_xor(mix, shifted[k] * multipliers[k])
        for p in primes[n - 2]:
            out.append(torch.remainder(mix, p))
    return torch.stack(out, dim=-1)


# ----------------------------------------------------------------------------------------------------------------
# The module
# ----------------------------------------------------------------------------------------------------------------

class ShortConv(nn.Module):
    """Causal depthwise convolution over time on the gated memory, per hyper-connection branch (§2.3):
    y = SiLU(Conv1d(RMSNorm(v))), kernel `kernel_size`, dilation = the largest n-gram order."""

    def __init__(self, d_model: int, kernel_size: int = 4, dilation: int = 3, hc_mult: int = 1, eps: float = 1e-5):
        super().__init__()
        self.hc_mult, self.pad = hc_mult, (kernel_size - 1) * dilation
        ch = d_model * hc_mult
        self.norms = nn.ModuleList(RMSNorm(d_model, eps) for _ in range(hc_mult))
        self.conv = nn.Conv1d(ch, ch, kernel_size, groups=ch, bias=False, dilation=dilation)

    def forward(self, v: torch.Tensor) -> torch.Tensor:          # (B, T, G, d) -> (B, T, G, d)
        B, T, G, d = v.shape
        x = torch.cat([self.norms[g](v[:, :, g]) for g in range(G)], dim=-1).transpose(1, 2)
        y = self.conv(F.pad(x, (self.pad, 0)))                    # left padding only: position t sees t and earlier
        return F.silu(y).transpose(1, 2).reshape(B, T, G, d)


class Engram(nn.Module):
    """One Engram layer: hashed n-gram lookup + context-aware gate + short conv. Returns what to ADD to the residual.

    vocab_size: ids the hash sees (after compression: pass token_map and its n_canonical as vocab_size).
    pad_id: the id the n-grams see before the sequence starts; with token_map, an id of the ORIGINAL vocabulary
        (any of its len(token_map) ids), compressed like every other id, as the demo does (its pad_id = 2).
    table_size: rows per head for every order (int) or one per order 2..max_ngram; each head's table is the next
        unused prime >= it. Must be >= vocab_size (the demo uses 5x DeepSeek-V3's vocabulary).
    d_mem: memory width per order (the demo's n_embed_per_ngram); each head has d_mem / n_heads columns.
    layer_id / layer_ids: this layer and all Engram layers of the model (they seed the multipliers and share out
        the primes, as in the demo).
    short_conv: False leaves out step 5's convolution, as DeepSeek-V4.1-Flash's released code does.
    norm_eps: epsilon of the gate's key and query RMSNorms; None (default) is the demo's nn.RMSNorm default, the
        machine epsilon of the input's dtype; V4.1's released code uses the model's rms_norm_eps.
    """

    def __init__(self, d_model: int, vocab_size: int, table_size: int | Sequence[int], max_ngram: int = 3,
                 n_heads: int = 4, d_mem: int = 32, kernel_size: int = 4, hc_mult: int = 1, pad_id: int = 0,
                 layer_id: int = 0, layer_ids: Sequence[int] | None = None, seed: int = 0,
                 token_map: torch.Tensor | None = None, short_conv: bool = True, norm_eps: float | None = None):
        super().__init__()
        sizes, token_map, layer_ids = _check_engram_args(d_model, vocab_size, table_size, max_ngram, n_heads, d_mem,
                                                         kernel_size, hc_mult, pad_id, layer_id, layer_ids, token_map,
                                                         norm_eps)
        if token_map is not None:
            pad_id = int(token_map[pad_id])                       # the demo compresses the pad id too
        self.d_model, self.vocab_size, self.max_ngram, self.n_heads = d_model, vocab_size, max_ngram, n_heads
        self.hc_mult, self.pad_id = hc_mult, pad_id
        # primes are handed out over all Engram layers in order, so no two heads anywhere share a table size
        self.primes = head_table_sizes(sizes, n_heads, len(layer_ids))[layer_ids.index(layer_id)]
        self.register_buffer("token_map", token_map, persistent=False)
        self.register_buffer("multipliers", hash_multipliers(vocab_size, max_ngram, seed, layer_id))
        flat = [p for heads in self.primes for p in heads]
        self.register_buffer("offsets", torch.tensor([0] + flat[:-1]).cumsum(0))
        self.table = nn.Embedding(sum(flat), d_mem // n_heads)    # all heads' tables stacked, one gather
        d_e = (max_ngram - 1) * d_mem
        self.value_proj = nn.Linear(d_e, d_model)
        self.key_projs = nn.ModuleList(nn.Linear(d_e, d_model) for _ in range(hc_mult))
        # default: the demo's nn.RMSNorm(hidden_size), eps=None, i.e. the machine epsilon of the input's dtype
        # (1.19e-7 in float32); V4.1's released code uses the model's rms_norm_eps: pass it as norm_eps
        self.key_norms = nn.ModuleList(nn.RMSNorm(d_model, eps=norm_eps) for _ in range(hc_mult))
        self.query_norms = nn.ModuleList(nn.RMSNorm(d_model, eps=norm_eps) for _ in range(hc_mult))
        # V4.1-Flash's released inference code drops the convolution (see NVIDIA NeMo AutoModel's port of it)
        self.short_conv = ShortConv(d_model, kernel_size, max_ngram, hc_mult) if short_conv else None

    @property
    def rows_per_token(self) -> int:
        """Embedding rows gathered per token: (max_ngram - 1) * n_heads, independent of the table size (O(1))."""
        return (self.max_ngram - 1) * self.n_heads

    @property
    def table_rows(self) -> int:
        return self.table.num_embeddings

    def hash(self, ids: torch.Tensor) -> torch.Tensor:
        """(B, T) token ids -> (B, T, rows_per_token) row indices into each head's own table."""
        if ids.dim() != 2 or ids.dtype != torch.long:
            raise ValueError(f"ids must be (batch, time) int64 token ids, got {tuple(ids.shape)} {ids.dtype}")
        if self.token_map is not None:
            ids = self.token_map[ids]
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.vocab_size):
            raise ValueError(f"ids must lie in [0, vocab_size={self.vocab_size})")
        return ngram_hashes(ids, self.multipliers, self.primes, self.pad_id)

    def lookup(self, ids: torch.Tensor) -> torch.Tensor:
        """e_t: the concatenated memory rows, (B, T, (max_ngram - 1) * d_mem)."""
        return self.table(self.hash(ids) + self.offsets).flatten(-2)

    def gates(self, hidden: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        """alpha: (B, T, G, 1), one scalar gate per token and branch."""
        out = []
        for g in range(self.hc_mult):
            k = self.key_norms[g](self.key_projs[g](e))
            q = self.query_norms[g](hidden[:, :, g])
            # s = RMSNorm(h)^T RMSNorm(W_k e) / sqrt(d); the demo squashes it with a signed square root first
            s = (k * q).sum(-1) / math.sqrt(self.d_model)
            s = s.abs().clamp_min(1e-6).sqrt() * s.sign()
            out.append(torch.sigmoid(s).unsqueeze(-1))
        return torch.stack(out, dim=2)

    def forward(self, hidden: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        squeeze = hidden.dim() == 3
        h = hidden.unsqueeze(2) if squeeze else hidden
        if h.dim() != 4 or h.shape[2] != self.hc_mult or h.shape[-1] != self.d_model:
            raise ValueError(f"hidden must be (B, T, {self.d_model}) or (B, T, hc_mult={self.hc_mult}, "
                             f"{self.d_model}), got {tuple(hidden.shape)}")
        if ids.shape != h.shape[:2]:
            raise ValueError(f"ids shape {tuple(ids.shape)} must match hidden's (B, T) {tuple(h.shape[:2])}")
        e = self.lookup(ids)
        v = self.gates(h, e) * self.value_proj(e).unsqueeze(2)     # v_t = alpha_t * W_v e_t, per branch
        out = v if self.short_conv is None else v + self.short_conv(v)
        return out.squeeze(2) if squeeze else out


# ----------------------------------------------------------------------------------------------------------------
# A toy LM with Engram layers (the notebook's experiment)
# ----------------------------------------------------------------------------------------------------------------

class EngramLM(nn.Module):
    """A `model.TinyLM` whose listed blocks first add an Engram output to the residual (as the demo's block does:
    h = h + Engram(h, ids), then attention, then FFN). engram_layers=() gives the plain TinyLM baseline with the
    same initial weights for the shared parts. Training/scoring only: no KV cache."""

    def __init__(self, cfg, engram_layers: Sequence[int] = (0,), **engram_kwargs):
        super().__init__()
        from course_lib.model import TinyLM

        self.lm = TinyLM(cfg)
        bad = [i for i in engram_layers if not 0 <= i < cfg.num_hidden_layers]
        if bad:
            raise ValueError(f"engram_layers must be block indices in [0, {cfg.num_hidden_layers}), got {bad}")
        engram_kwargs.setdefault("vocab_size", cfg.vocab_size)
        self.engrams = nn.ModuleDict({str(i): Engram(cfg.hidden_size, layer_id=i, layer_ids=list(engram_layers),
                                                     **engram_kwargs)
                                      for i in engram_layers})

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        from course_lib.model import ModelOutput

        x = self.lm.embed(idx)
        for i, block in enumerate(self.lm.blocks):
            if str(i) in self.engrams:
                x = x + self.engrams[str(i)](x, idx)
            x = block(x)
        logits = self.lm.head(self.lm.norm(x))
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-100)
        return ModelOutput(logits, loss, x, logits.new_zeros(()))


# ----------------------------------------------------------------------------------------------------------------
# Experiment helpers for the notebook (pure functions; the notebook shows the calls and the numbers)
# ----------------------------------------------------------------------------------------------------------------

def flops_per_token(model: nn.Module, seq_len: int) -> int:
    """Forward FLOPs per token as counted by torch.utils.flop_counter (matmuls and convolutions; a table lookup is a
    gather and counts zero, which is the point of Engram)."""
    from torch.utils.flop_counter import FlopCounterMode

    device = next(model.parameters()).device
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        model(torch.zeros(1, seq_len, dtype=torch.long, device=device))
    return fc.get_total_flops() // seq_len


def train_on_corpus(model: nn.Module, corpus, steps: int, batch_size: int = 16, seq_len: int = 64, lr: float = 3e-3,
                    table_lr_mult: float = 1.0, seed: int = 0, desc: str = "training", progress: bool = True) -> list:
    """AdamW on random training windows of `corpus` (the same windows for every model with the same seed); the
    Engram tables may get a larger learning rate (a row only gets a gradient when its n-gram occurs). Returns the
    training losses."""
    from tqdm.auto import tqdm

    int_at_least("steps", steps, 1)
    positive_number("table_lr_mult", table_lr_mult)
    tables = [p for n, p in model.named_parameters() if n.endswith("table.weight")]
    rest = [p for n, p in model.named_parameters() if not n.endswith("table.weight")]
    groups = [{"params": rest, "lr": lr}] + ([{"params": tables, "lr": lr * table_lr_mult}] if tables else [])
    opt = torch.optim.AdamW(groups, betas=(0.9, 0.95), weight_decay=0.0)
    device = next(model.parameters()).device
    gen = torch.Generator().manual_seed(seed)
    losses = []
    model.train()
    for _ in tqdm(range(steps), desc=desc, disable=not progress, leave=False, mininterval=1.0):
        x, y = corpus.get_batch("train", batch_size, seq_len, generator=gen)
        loss = model(x.to(device), y.to(device)).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    model.eval()
    return losses


@torch.no_grad()
def per_token_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of every next-token prediction, (B, T)."""
    logits = model(x).logits
    return F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none").view_as(y)


def top_ngram_gains(loss_base: torch.Tensor, loss_new: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
                    decode, n: int = 3, top: int = 10, min_count: int = 5) -> list[tuple[str, int, float]]:
    """Which n-grams (the n - 1 context tokens and the predicted one) gain most: [(text, count, total gain in nats)],
    sorted by the total loss the new model saves on them (gain = loss_base - loss_new, summed over occurrences)."""
    if loss_base.shape != loss_new.shape or loss_base.shape != y.shape or x.shape != y.shape:
        raise ValueError("loss_base, loss_new, x and y must all have the same (B, T) shape")
    if n < 1 or top < 1:
        raise ValueError(f"n and top must be >= 1, got n={n}, top={top}")
    gains: dict[tuple, list] = {}
    diff = (loss_base - loss_new).tolist()
    xs, ys = x.tolist(), y.tolist()
    for b in range(len(xs)):
        for t in range(n - 2, len(xs[b])):
            key = tuple(xs[b][t - n + 2:t + 1]) + (ys[b][t],)
            g = gains.setdefault(key, [0, 0.0])
            g[0] += 1
            g[1] += diff[b][t]
    rows = [(decode(list(k)), c, s) for k, (c, s) in gains.items() if c >= min_count]
    return sorted(rows, key=lambda r: -r[2])[:top]


def gains_figure(curves: dict, gains: list, smooth: int = 10):
    """Left: training loss of each model (moving average); right: the n-grams with the largest total gain."""
    from course_lib.kit.style import COLORS, subplots

    if not curves or not gains:
        raise ValueError("curves and gains must both be non-empty")
    fig, (ax1, ax2) = subplots(1, 2, width=11, height=3.4)
    colours = [COLORS["grey"], COLORS["orange"], COLORS["blue"], COLORS["green"]]
    for (name, losses), c in zip(curves.items(), colours):
        v = torch.tensor(losses)
        k = max(1, min(smooth, len(v)))
        avg = v.unfold(0, k, 1).mean(1) if len(v) >= k else v
        ax1.plot(range(k, k + len(avg)), avg, color=c, label=name)
    ax1.set_xlabel("step")
    ax1.set_ylabel("training loss (nats/token)")
    ax1.legend()
    labels = [repr(t) for t, _, _ in gains][::-1]
    ax2.barh(range(len(gains)), [s for _, _, s in gains][::-1], color=COLORS["orange"])
    ax2.set_yticks(range(len(gains)), labels, fontfamily="monospace")
    ax2.set_xlabel("total validation loss saved (nats)")
    ax2.set_title("n-grams that gain most")
    return fig


@torch.no_grad()
def gate_figure(model: "EngramLM", ids: torch.Tensor, decode, layer: int = 0):
    """alpha_t of one Engram layer under each character of a text: where does the memory get let in?"""
    from course_lib.kit.style import subplots

    if ids.dim() != 1:
        raise ValueError(f"ids must be a 1-D sequence of token ids, got shape {tuple(ids.shape)}")
    if str(layer) not in model.engrams:
        raise ValueError(f"layer must be one of the Engram layers {list(model.engrams)}, got {layer}")
    eng = model.engrams[str(layer)]
    x = model.lm.embed(ids[None])
    for i, block in enumerate(model.lm.blocks):
        if i == layer:
            break
        if str(i) in model.engrams:
            x = x + model.engrams[str(i)](x, ids[None])
        x = block(x)
    alpha = eng.gates(x.unsqueeze(2), eng.lookup(ids[None]))[0, :, 0, 0]
    fig, ax = subplots(width=min(14, 0.22 * len(ids) + 1), height=1.6)
    ax.imshow(alpha[None].numpy(), aspect="auto", cmap="Oranges", vmin=0, vmax=1)
    ax.set_xticks(range(len(ids)), [decode([i]) for i in ids.tolist()], fontfamily="monospace")
    ax.set_yticks([])
    ax.set_title(f"Engram gate alpha_t at layer {layer} (darker = more memory let in)")
    return fig


# ----------------------------------------------------------------------------------------------------------------
# Argument checks
# ----------------------------------------------------------------------------------------------------------------

def _check_engram_args(d_model, vocab_size, table_size, max_ngram, n_heads, d_mem, kernel_size, hc_mult, pad_id,
                       layer_id, layer_ids, token_map, norm_eps) -> tuple[list[int], torch.Tensor | None, list[int]]:
    """Engram's arguments, each bad one a one-line ValueError naming it. Returns the table size of each order
    2..max_ngram, token_map as an int64 tensor (or None) and the model's Engram layers (layer_ids)."""
    for name, v in (("d_model", d_model), ("vocab_size", vocab_size), ("n_heads", n_heads), ("d_mem", d_mem),
                    ("kernel_size", kernel_size), ("hc_mult", hc_mult)):
        positive_int(name, v)
    int_at_least("max_ngram", max_ngram, 2, " (bigrams and up)")
    sizes = [table_size] * (max_ngram - 1) if isinstance(table_size, int) else list(table_size)
    if len(sizes) != max_ngram - 1:
        raise ValueError(f"table_size must be an int or {max_ngram - 1} sizes (orders 2..{max_ngram}), got {sizes}")
    if any(not isinstance(s, int) or s < vocab_size for s in sizes):
        raise ValueError(f"table_size must be >= vocab_size={vocab_size} for every order, got {sizes}")
    if d_mem % n_heads:
        raise ValueError(f"d_mem={d_mem} must be divisible by n_heads={n_heads}")
    if token_map is not None:
        token_map = torch.as_tensor(token_map, dtype=torch.long)
        if token_map.dim() != 1 or int(token_map.min()) < 0 or int(token_map.max()) >= vocab_size:
            raise ValueError(f"token_map must be a 1-D map into [0, vocab_size={vocab_size})")
        if not isinstance(pad_id, int) or not 0 <= pad_id < len(token_map):
            raise ValueError(f"pad_id must be an original token id in [0, len(token_map)={len(token_map)}), "
                             f"got {pad_id!r}")
    elif not isinstance(pad_id, int) or not 0 <= pad_id < vocab_size:
        raise ValueError(f"pad_id must be in [0, vocab_size={vocab_size}), got {pad_id!r}")
    layer_ids = [layer_id] if layer_ids is None else list(layer_ids)
    if layer_id not in layer_ids:
        raise ValueError(f"layer_id={layer_id} must be one of layer_ids={layer_ids}")
    positive_number("norm_eps", norm_eps, allow_none=True)
    return sizes, token_map, layer_ids
