"""nano-V4: the capstone's nano-DeepSeek rebuilt with DeepSeek-V4's residual and attention (notebook 10, last row).

DeepSeek-V4 technical report ("DeepSeek-V4: Towards Highly Efficient Million-Token Context Intelligence", 2026)
changes two things around V3's MoE that this model puts together at the capstone's scale:

  * mHC residual streams (§2.2, Eq. 1-8; ``course_lib.mhc.HyperConnection``): every sub-layer reads from, mixes and
    writes back to n = 4 streams, X_{l+1} = B_l X_l + C_l F_l(A_l X_l), with B_l doubly stochastic (Sinkhorn-Knopp);
    the embedding is copied into the n streams and ``course_lib.mhc.HyperHead`` collapses them before the final norm.
  * hybrid attention (§2.3; ``course_lib.v4_attention.V4Attention``): shared-KV multi-query attention over a sliding
    window plus, layer by layer, CSA (compressed entries of m tokens, the indexer keeps the top-k) or HCA (entries of
    m' tokens, all of them), with attention sinks and the grouped output projection.

The FFNs are nano-DeepSeek's (``course_lib.nano.TINY``): a dense SwiGLU in the first layer, then DeepSeekMoE
(``course_lib.moe.MoE``: 8 routed + 1 shared experts of width 48, top-2, sigmoid, 4 groups / best 2, aux-loss-free bias
and the sequence-wise loss). Left out, so that the row differs from nano-DeepSeek only in residual and attention:
V4's hash routing of the first MoE layers (``course_lib.hash_routing``), its sqrt-softplus affinities, and MTP (V4
keeps one MTP module; compare this model with the "without MTP" run).

Scaled-down values (the toy trains on 64-byte windows; V4-Flash's are for up to 1M tokens, configs_v4):

  ================  ==============================  ==========================================================
  field             V4-Flash                        nano-V4 (why)
  ================  ==============================  ==========================================================
  hc_mult           4                               4 (as V4; the streams cost n x d per token, not n x params)
  layer_types       sliding, sliding, CSA, HCA, ... sliding, CSA, HCA (3 layers: one of each kind, V4's order)
  sliding_window    128                             16 (a quarter of the 64-token context, so the compressed
                                                    branches carry everything further back)
  CSA rate m        4                               4 (as V4; 16 entries over 64 tokens)
  index_topk        512                             4 (a quarter of the 16 entries: still a real selection)
  HCA rate m'       128                             16 (128 would not finish one entry in 64 tokens; 16 gives 4)
  ================  ==============================  ==========================================================

The CSA indexer's top-k passes no gradient, so it learns from its own loss: V3.2's KL towards the main attention
(V4Attention._indexer_loss), added to aux_loss in training; its inputs are detached, so that loss trains only the
indexer. Known limit: course_lib.nano.train's FLOP counter charges V4Attention as full causal attention, which
overstates the model's training FLOPs by about 4% at 64 tokens (attention is about 7% of them).

The configuration uses the field names of transformers' ``DeepseekV4Config`` where it has them (hc_mult,
hc_sinkhorn_iters, sliding_window, o_groups, o_lora_rank, index_n_heads, index_head_dim, index_topk, layer_types with
the course's kind names). ``course_lib.nano.train.train(cfg, steps, model=build_model(cfg))`` trains it with V3's recipe.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace

import torch
import torch.nn as nn
import torch.nn.functional as F

from course_lib.kit.validate import non_negative_int, positive_int
from course_lib.layers import RMSNorm, SwiGLU
from course_lib.mhc import HyperConnection, HyperHead
from course_lib.model import ModelOutput, TinyLM
from course_lib.moe import MoE
from course_lib.nano import moe_kwargs
from course_lib.v4_attention import KINDS, V4Attention


@dataclass(frozen=True)
class NanoV4Config:
    """A DeepSeek-V4-shaped toy: nano-DeepSeek's sizes and MoE, V4's attention blocks and mHC residual."""
    name: str = "nano-V4 (mHC + CSA/HCA)"
    vocab_size: int = 256
    hidden_size: int = 96
    intermediate_size: int = 144          # dense FFN of the first_k_dense_replace layers (as nano.TINY)
    moe_intermediate_size: int = 48
    num_hidden_layers: int = 3
    first_k_dense_replace: int = 1
    num_attention_heads: int = 4
    head_dim: int = 32                    # the ONE shared key/value head and each query head
    qk_rope_head_dim: int = 8             # RoPE on the last 8 features of each head
    q_lora_rank: int = 48
    o_groups: int = 2
    o_lora_rank: int = 32
    sliding_window: int = 16
    layer_types: tuple = ("sliding", "csa", "hca")
    compress_rate_csa: int = 4
    compress_rate_hca: int = 16
    index_n_heads: int = 2
    index_head_dim: int = 16
    index_topk: int = 4
    hc_mult: int = 4
    hc_sinkhorn_iters: int = 20
    n_routed_experts: int = 8
    n_shared_experts: int = 1
    num_experts_per_tok: int = 2
    n_group: int = 4
    topk_group: int = 2
    routed_scaling_factor: float = 1.0
    norm_topk_prob: bool = True
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-6
    # ---- course-only (training), as nano.NanoConfig
    bias_update_speed: float = 0.001
    seq_aux_loss_alpha: float = 0.0001
    aux_loss_alpha: float = 0.0

    def __post_init__(self):
        for name in ("vocab_size", "hidden_size", "intermediate_size", "moe_intermediate_size", "num_hidden_layers",
                     "num_attention_heads", "head_dim", "qk_rope_head_dim", "q_lora_rank", "o_groups",
                     "o_lora_rank", "sliding_window", "compress_rate_csa", "compress_rate_hca", "index_n_heads",
                     "index_head_dim", "index_topk", "hc_mult", "hc_sinkhorn_iters", "n_routed_experts",
                     "num_experts_per_tok", "n_group", "topk_group"):
            positive_int(name, getattr(self, name))
        for name in ("first_k_dense_replace", "n_shared_experts"):
            non_negative_int(name, getattr(self, name))
        if self.first_k_dense_replace > self.num_hidden_layers:
            raise ValueError(f"first_k_dense_replace must be at most num_hidden_layers={self.num_hidden_layers}, "
                             f"got {self.first_k_dense_replace}")
        types = tuple(self.layer_types) if isinstance(self.layer_types, (list, tuple)) else None
        if types is None or len(types) != self.num_hidden_layers or any(t not in KINDS for t in types):
            raise ValueError(f"layer_types must list one of {KINDS} per layer ({self.num_hidden_layers}), "
                             f"got {self.layer_types!r}")
        object.__setattr__(self, "layer_types", types)       # a list from JSON becomes a tuple (hashable, frozen)
        if self.qk_rope_head_dim % 2 or self.qk_rope_head_dim > self.head_dim:
            raise ValueError(f"qk_rope_head_dim must be even and at most head_dim={self.head_dim}, "
                             f"got {self.qk_rope_head_dim}")
        if self.num_attention_heads % self.o_groups:
            raise ValueError(f"o_groups must divide num_attention_heads={self.num_attention_heads}, "
                             f"got {self.o_groups}")
        if self.rms_norm_eps != 1e-6:
            raise ValueError(f"rms_norm_eps must be 1e-6 (the course's RMSNorm eps), got {self.rms_norm_eps!r}")

    def replace(self, **changes) -> "NanoV4Config":
        """A copy with some fields changed (validated again)."""
        unknown = set(changes) - {f.name for f in fields(self)}
        if unknown:
            raise ValueError(f"unknown NanoV4Config field(s): {sorted(unknown)}")
        return replace(self, **changes)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["layer_types"] = list(self.layer_types)
        return d

    def compress_rate(self, layer: int) -> int:
        """m of a CSA layer, m' of an HCA layer, 0 for a sliding-window-only layer (V4's compress_ratios)."""
        kind = self.layer_types[layer]
        return {"sliding": 0, "csa": self.compress_rate_csa, "hca": self.compress_rate_hca}[kind]


TINY_V4 = NanoV4Config()


# --------------------------------------------------------------------------------------------- the network
class V4Block(nn.Module):
    """One V4 decoder layer: two sub-layers (V4 attention, then SwiGLU or MoE), each behind its own mHC connection.

    V4 §2.2, Eq. 1 per sub-layer F:  X <- B X + C F(RMSNorm(A X)), on the n streams X (B, T, n, d)."""

    def __init__(self, cfg: NanoV4Config, layer: int):
        super().__init__()
        d, kind = cfg.hidden_size, cfg.layer_types[layer]
        self.attn_norm, self.ffn_norm = RMSNorm(d, cfg.rms_norm_eps), RMSNorm(d, cfg.rms_norm_eps)
        self.attn = V4Attention(d, cfg.num_attention_heads, head_dim=cfg.head_dim, rope_dim=cfg.qk_rope_head_dim,
                                q_lora_rank=cfg.q_lora_rank, o_groups=cfg.o_groups, o_lora_rank=cfg.o_lora_rank,
                                window=cfg.sliding_window, kind=kind,
                                compress_rate=cfg.compress_rate(layer) or 1, index_n_heads=cfg.index_n_heads,
                                index_head_dim=cfg.index_head_dim, index_topk=cfg.index_topk,
                                rope_base=cfg.rope_theta, norm_eps=cfg.rms_norm_eps)
        if layer < cfg.first_k_dense_replace:
            self.ffn = SwiGLU(d, cfg.intermediate_size)
        else:
            self.ffn = MoE(d_model=d, **moe_kwargs(cfg))
        hc = dict(n_streams=cfg.hc_mult, sinkhorn_iters=cfg.hc_sinkhorn_iters, rms_eps=cfg.rms_norm_eps)
        self.attn_hc, self.ffn_hc = HyperConnection(d, **hc), HyperConnection(d, **hc)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        inp, mix, post = self.attn_hc(x)                                        # A X, B, C  (Eq. 3-8)
        x = HyperConnection.combine(x, self.attn(self.attn_norm(inp)), mix, post)
        inp, mix, post = self.ffn_hc(x)
        return HyperConnection.combine(x, self.ffn(self.ffn_norm(inp)), mix, post)


class NanoV4(nn.Module):
    """embed -> copy into hc_mult streams -> V4Blocks -> HyperHead -> RMSNorm -> head.

    forward(idx (B, T), targets=None) -> course_lib.model.ModelOutput (logits, loss, hidden, aux_loss), the same
    output as TinyLM, so course_lib.nano.train trains and evaluates it unchanged."""

    def __init__(self, cfg: NanoV4Config):
        super().__init__()
        if not isinstance(cfg, NanoV4Config):
            raise ValueError(f"cfg must be a NanoV4Config, got {type(cfg).__name__}")
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.blocks = nn.ModuleList(V4Block(cfg, i) for i in range(cfg.num_hidden_layers))
        self.hc_head = HyperHead(cfg.hidden_size, cfg.hc_mult, rms_eps=cfg.rms_norm_eps)
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self.apply(TinyLM._init_weights)             # the course's small init: first loss about log(vocab)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None) -> ModelOutput:
        if idx.dim() != 2:
            raise ValueError(f"idx must be (batch, time) token ids, got shape {tuple(idx.shape)}")
        x = self.embed(idx)
        # as transformers' DeepseekV4Model: every stream starts as the embedding
        x = x.unsqueeze(2).expand(-1, -1, self.cfg.hc_mult, -1).contiguous()
        for block in self.blocks:
            x = block(x)
        hidden = self.hc_head(x)
        logits = self.head(self.norm(hidden))
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-100)
        aux = [b.ffn.aux_loss for b in self.blocks if getattr(b.ffn, "aux_loss", None) is not None]
        # CSA's indexer learns only from its KL loss towards the main attention (V4Attention._indexer_loss)
        aux += [b.attn.index_loss for b in self.blocks if b.attn.index_loss is not None]
        aux_loss = torch.stack(aux).sum() if aux else logits.new_zeros(())
        return ModelOutput(logits, loss, hidden, aux_loss)


def build_model(cfg: NanoV4Config = TINY_V4) -> NanoV4:
    """A NanoV4 with initial weights from the global torch seed."""
    return NanoV4(cfg)


# --------------------------------------------------------------------------------------------- counting
def count_params(cfg: NanoV4Config) -> dict:
    """Parameter count per part, from the shapes the modules are made of (written out, not read off a model):
    tests/nano/test_nano_v4.py compares it with the tensors of a built model."""
    d, H, D, n = cfg.hidden_size, cfg.num_attention_heads, cfg.head_dim, cfg.hc_mult
    h = cfg.moe_intermediate_size
    attn = hc = ffn = 0
    for layer in range(cfg.num_hidden_layers):
        kind, m = cfg.layer_types[layer], cfg.compress_rate(layer)
        # q: W^DQ, RMSNorm, W^UQ; shared kv: W^KV, RMSNorm; grouped output: o_a (g blocks), o_b; one sink per head
        attn += d * cfg.q_lora_rank + cfg.q_lora_rank + cfg.q_lora_rank * H * D + d * D + D
        attn += H * D * cfg.o_lora_rank + cfg.o_groups * cfg.o_lora_rank * d + H
        if kind != "sliding":
            w = 2 * D if kind == "csa" else D                   # CSA's compressor is 2c wide (overlap, Eq. 9-10)
            attn += 2 * d * w + m * w + D                        # W^KV, W^Z, positional bias B, RMSNorm
        if kind == "csa":                                       # indexer: its own 2c^I-wide compressor, W^IUQ, W^w
            c = cfg.index_head_dim
            attn += 2 * d * 2 * c + m * 2 * c + c + cfg.q_lora_rank * cfg.index_n_heads * c + d * cfg.index_n_heads
        # two mHC connections: W (pre, post, res) on the flattened streams, the static parts S, three alphas
        hc += 2 * ((2 + n) * n * n * d + (2 + n) * n + 3)
        if layer < cfg.first_k_dense_replace:
            ffn += 3 * d * cfg.intermediate_size
        else:                                                   # router, routed experts, shared experts (SwiGLU)
            ffn += cfg.n_routed_experts * d + cfg.n_routed_experts * 3 * d * h + 3 * d * h * cfg.n_shared_experts
    norms = 2 * d * cfg.num_hidden_layers + d
    table = dict(embedding=cfg.vocab_size * d, attention=attn, ffn=ffn, hyper_connections=hc + n * n * d + n + 1,
                 norms=norms, head=d * cfg.vocab_size)
    table["total"] = sum(table.values())
    return table
