"""The course's one small decoder-only language model.

Every notebook that trains or samples text uses this model: 02 swaps its feed-forward for DeepSeekMoE, 03 swaps its
attention for MLA, 04 adds MTP modules on top of its hidden states, 05 and 06 use it as the RL policy. It is a
pre-norm transformer like DeepSeek-V3's (RMSNorm, RoPE, SwiGLU, untied embedding and output head), just tiny.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from course_lib.experts import RoutedExperts
from course_lib.kit.validate import positive_int
from course_lib.moe import MoE
from course_lib.layers import MHA, RMSNorm, SwiGLU  # noqa: F401  (RMSNorm, SwiGLU re-exported for the notebooks)


# --------------------------------------------------------------------------------------------- tokenizers
class ByteTokenizer:
    """UTF-8 bytes as tokens (vocab 256): any text, including Chinese, with no vocabulary to learn."""

    vocab_size = 256

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids) -> str:
        return bytes(int(i) for i in ids).decode("utf-8", errors="replace")


class CharTokenizer:
    """One token per character of a fixed alphabet, plus whole-string special tokens such as '<think>'.

    Specials are matched first when encoding, so '<answer>' is one token, not eight.
    """

    def __init__(self, chars: str, specials: list[str] | tuple[str, ...] = ()):
        if len(set(chars)) != len(chars):
            raise ValueError("chars must not contain duplicates")
        self.specials = list(specials)
        self.itos = list(chars) + self.specials
        if len(set(self.itos)) != len(self.itos):
            raise ValueError("specials must differ from the single characters and from each other")
        self.stoi = {s: i for i, s in enumerate(self.itos)}
        # Longest specials first so '<answer>' wins over a shorter special that is its prefix.
        self._specials_by_len = sorted(self.specials, key=len, reverse=True)

    @property
    def vocab_size(self) -> int:
        return len(self.itos)

    def id_of(self, token: str) -> int:
        if token not in self.stoi:
            raise ValueError(f"token {token!r} is not in this tokenizer's vocabulary")
        return self.stoi[token]

    def encode(self, text: str) -> list[int]:
        ids, i = [], 0
        while i < len(text):
            for sp in self._specials_by_len:
                if text.startswith(sp, i):
                    ids.append(self.stoi[sp])
                    i += len(sp)
                    break
            else:
                ch = text[i]
                if ch not in self.stoi:
                    raise ValueError(f"character {ch!r} at position {i} is not in this tokenizer's alphabet")
                ids.append(self.stoi[ch])
                i += 1
        return ids

    def decode(self, ids) -> str:
        return "".join(self.itos[int(i)] for i in ids)


# --------------------------------------------------------------------------------------------- config
@dataclass
class ModelConfig:
    """TinyLM's shape. The fields that DeepSeek-V3 also has carry the names of transformers' ``DeepseekV3Config``,
    so ``course_lib.nano.NanoConfig`` hands them over unchanged; ``ffn``, ``moe``, ``attention`` and ``mla`` are the
    course's switches between the notebooks' building blocks."""
    vocab_size: int
    hidden_size: int = 128            # d, the residual stream width
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    max_position_embeddings: int = 256  # longest sequence (prompt + generated tokens) the model accepts
    ffn: str = "dense"                # "dense" (SwiGLU) or "moe" (course_lib.moe.MoE, notebook 02)
    moe: dict | None = None           # keyword arguments for MoE(d_model=hidden_size, **moe)
    first_k_dense_replace: int = 0    # with ffn="moe": the first layers keep a dense FFN
    attention: str = "mha"            # "mha" or "mla" (course_lib.mla.MLA, notebook 03)
    mla: dict | None = None           # MLA(d_model=hidden_size, n_heads=num_attention_heads, **mla)
    intermediate_size: int | None = None  # SwiGLU hidden size; default about 8/3 * hidden_size, rounded to 16
    rope_theta: float = 10000.0       # RoPE frequency base

    def __post_init__(self):
        for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                     "max_position_embeddings"):
            positive_int(name, getattr(self, name))
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"num_attention_heads={self.num_attention_heads} must divide "
                             f"hidden_size={self.hidden_size}")
        if (self.hidden_size // self.num_attention_heads) % 2:
            raise ValueError(f"head dim hidden_size/num_attention_heads="
                             f"{self.hidden_size // self.num_attention_heads} must be even for RoPE")
        if self.ffn not in ("dense", "moe"):
            raise ValueError(f"ffn must be 'dense' or 'moe', got {self.ffn!r}")
        if self.attention not in ("mha", "mla"):
            raise ValueError(f"attention must be 'mha' or 'mla', got {self.attention!r}")
        if not 0 <= self.first_k_dense_replace <= self.num_hidden_layers:
            raise ValueError(f"first_k_dense_replace must be between 0 and num_hidden_layers="
                             f"{self.num_hidden_layers}, got {self.first_k_dense_replace}")
        if self.intermediate_size is None:
            self.intermediate_size = int(math.ceil(8 * self.hidden_size / 3 / 16) * 16)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        """A config from a stored dict (``dataclasses.asdict`` of one), also one saved with the older names."""
        return cls(**rename_old_config_names(d))


# Earlier versions of the course named these fields in its own notation. A stored config that still uses them is
# read through this one map (ModelConfig.from_dict; tools/migrate_config_names.py rewrites files with it).
OLD_CONFIG_NAMES = {
    "d_model": "hidden_size", "n_layers": "num_hidden_layers", "n_heads": "num_attention_heads",
    "max_seq_len": "max_position_embeddings", "n_dense_layers": "first_k_dense_replace",
    "ffn_hidden": "intermediate_size", "rope_base": "rope_theta",
    "rope_interleaved": "rope_interleave", "norm_eps": "rms_norm_eps",     # keys of the ``mla`` dict
}


def rename_old_config_names(obj):
    """A copy of obj with every dict key in OLD_CONFIG_NAMES renamed (nested dicts and lists too; order kept).

    Idempotent. A dict holding an old name and its new name with different values is an error."""
    if isinstance(obj, list):
        return [rename_old_config_names(v) for v in obj]
    if not isinstance(obj, dict):
        return obj
    out = {}
    for key, value in obj.items():
        new = OLD_CONFIG_NAMES.get(key, key)
        value = rename_old_config_names(value)
        if new in out and out[new] != value:
            raise ValueError(f"config has both {key!r} and {new!r} with different values")
        out[new] = value
    return out


# --------------------------------------------------------------------------------------------- layers
class Block(nn.Module):
    """Pre-norm residual block: h = x + Attn(RMSNorm(x)); out = h + FFN(RMSNorm(h))."""

    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        d = cfg.hidden_size
        self.attn_norm = RMSNorm(d)
        self.ffn_norm = RMSNorm(d)
        if cfg.attention == "mla":
            from course_lib.mla import MLA  # imported here so the dense model needs nothing from notebook 03
            self.attn = MLA(d_model=d, n_heads=cfg.num_attention_heads,
                            **{"rope_base": cfg.rope_theta, **(cfg.mla or {})})
        else:
            self.attn = MHA(d, cfg.num_attention_heads, max_seq_len=cfg.max_position_embeddings,
                            rope_base=cfg.rope_theta)
        if cfg.ffn == "moe" and layer >= cfg.first_k_dense_replace:
            self.ffn = MoE(d_model=d, **(cfg.moe or {}))
        else:
            self.ffn = SwiGLU(d, cfg.intermediate_size)

    def forward(self, x, start_pos: int = 0, cache: dict | None = None):
        x = x + self.attn(self.attn_norm(x), start_pos=start_pos, cache=cache)
        return x + self.ffn(self.ffn_norm(x))


class ModelOutput(NamedTuple):
    logits: torch.Tensor
    loss: torch.Tensor | None
    hidden: torch.Tensor          # last block's output, before the final norm (MTP modules start from it)
    aux_loss: torch.Tensor        # sum of the MoE layers' balance losses (0 for a dense model)


class TinyLM(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size)
        self.head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module):
        # Small normal init (GPT-2 / nanoGPT): keeps early logits near uniform so the first loss is about log(vocab).
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, RoutedExperts):
            # stacked expert matrices (notebook 02's MoE): the same init, expert by expert
            for e in range(len(module)):
                nn.init.normal_(module.gate_up[e], mean=0.0, std=0.02)
                nn.init.normal_(module.down[e], mean=0.0, std=0.02)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def new_cache(self) -> list[dict]:
        """One empty dict per layer; the attention modules fill them during generation."""
        return [{} for _ in self.blocks]

    def forward(self, idx, targets=None, cache: list[dict] | None = None, start_pos: int = 0) -> ModelOutput:
        if idx.dim() != 2:
            raise ValueError(f"idx must be (batch, time) token ids, got shape {tuple(idx.shape)}")
        if cache is not None and len(cache) != len(self.blocks):
            raise ValueError(f"cache has {len(cache)} layers, the model has {len(self.blocks)}; use model.new_cache()")
        if start_pos + idx.shape[1] > self.cfg.max_position_embeddings:
            raise ValueError(f"start_pos + T = {start_pos + idx.shape[1]} exceeds "
                             f"max_position_embeddings={self.cfg.max_position_embeddings}")
        x = self.embed(idx)
        for i, block in enumerate(self.blocks):
            x = block(x, start_pos=start_pos, cache=None if cache is None else cache[i])
        logits = self.head(self.norm(x))
        loss = None
        if targets is not None:
            # -100 marks positions that do not count (prompt tokens, padding).
            loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-100)
        aux = [b.ffn.aux_loss for b in self.blocks if getattr(b.ffn, "aux_loss", None) is not None]
        aux_loss = torch.stack(aux).sum() if aux else logits.new_zeros(())
        return ModelOutput(logits, loss, x, aux_loss)


# --------------------------------------------------------------------------------------------- sampling
@torch.no_grad()
def generate(model: TinyLM, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
             top_k: int | None = None, eos_id: int | None = None, generator: torch.Generator | None = None,
             use_cache: bool = True) -> torch.Tensor:
    """Sample continuations for a batch of equal-length prompts idx (B, T); returns (B, T + new).

    temperature=0 means greedy. After a row emits eos_id it keeps emitting eos_id (so rows stay aligned);
    generation stops early once every row has finished.
    """
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1 or None, got {top_k}")
    was_training = model.training
    model.eval()
    cache = model.new_cache() if use_cache else None
    out, step_input, pos = idx, idx, 0
    done = torch.zeros(idx.shape[0], dtype=torch.bool, device=idx.device)
    for _ in range(max_new_tokens):
        if use_cache:
            logits = model(step_input, cache=cache, start_pos=pos).logits[:, -1]
            pos += step_input.shape[1]
        else:
            logits = model(out).logits[:, -1]
        nxt = sample_next(logits, temperature, top_k, generator)
        if eos_id is not None:
            nxt = torch.where(done, torch.full_like(nxt, eos_id), nxt)
            done |= nxt == eos_id
        out = torch.cat([out, nxt[:, None]], dim=1)
        step_input = nxt[:, None]
        if eos_id is not None and bool(done.all()):
            break
    model.train(was_training)
    return out


def sample_next(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """One token per row from logits (B, V): greedy at temperature 0, else softmax(logits / T) over the top_k."""
    if temperature == 0:
        return logits.argmax(-1)
    logits = logits / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits.float(), dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def token_logprobs(model: TinyLM, idx: torch.Tensor) -> torch.Tensor:
    """log p(idx[:, t+1] | idx[:, :t+1]) for every position: (B, T-1). Differentiable (the RL losses need it)."""
    logits = model(idx).logits[:, :-1].float()
    return torch.log_softmax(logits, dim=-1).gather(-1, idx[:, 1:, None]).squeeze(-1)
