"""nano-DeepSeek: every part of DeepSeek-V3 in one small network (notebook 10, the capstone).

The configuration uses the field names of transformers' ``DeepseekV3Config`` (the names of DeepSeek-V3's own
config.json), so a tiny model and the published 671B shape are the same kind of object:

  * MLA in every layer (V3 §2.1.1, Eq. 1-11; ``course_lib.mla.MLA``),
  * a dense SwiGLU FFN in the first ``first_k_dense_replace`` layers, DeepSeekMoE after them (V3 §2.1.2,
    Eq. 12-16; ``course_lib.moe.MoE``) with sigmoid affinities, group-limited routing, the aux-loss-free bias and the
    complementary sequence-wise balance loss (Eq. 17-20),
  * ``num_nextn_predict_layers`` MTP modules (V3 §2.2, Eq. 21-25; ``course_lib.mtp``).

The network itself is the course's ``TinyLM`` (pre-norm blocks: RMSNorm -> MLA -> RMSNorm -> SwiGLU or MoE) wrapped
in ``MTPModel``, so ``course_lib.model.generate`` and ``course_lib.mtp.speculative_generate`` work on it unchanged.
``course_lib.nano.export`` writes and reads it in the checkpoint layout of DeepSeek's release.

Parameter counting reuses ``course_lib.configs`` (the counter that reproduces V3's published 671B / 37B), so the tiny
model's table is computed exactly the way V3's is. The ``V3`` preset is for counting only: never instantiate it.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace

import torch.nn as nn

from course_lib import configs
from course_lib.kit.validate import non_negative_int, one_of, positive_int
from course_lib.model import ModelConfig, TinyLM
from course_lib.mtp import MTPModel

ATTENTIONS = ("mla", "mha")


@dataclass(frozen=True)
class NanoConfig:
    """A DeepSeek-V3-shaped model. Fields up to ``rms_norm_eps`` are transformers' DeepseekV3Config names.

    Course-only training knobs (not part of the checkpoint format) follow: the aux-loss-free bias update speed gamma
    (V3 §2.1.2 / §4.2: 0.001), the sequence-wise balance weight alpha (V3 §4.2: 0.0001), an optional expert-level
    auxiliary loss (the "aux loss" ablation; V2 §2.2.3), the MTP loss weight lambda (V3 §4.2: 0.3) and the
    attention kind ("mha" only for the ablation; it cannot be exported).
    """
    name: str = "custom"
    vocab_size: int = 256
    hidden_size: int = 96
    intermediate_size: int = 144          # dense FFN width of the first_k_dense_replace layers
    moe_intermediate_size: int = 48       # width of ONE expert
    num_hidden_layers: int = 3
    first_k_dense_replace: int = 1
    num_attention_heads: int = 4
    q_lora_rank: int | None = 48
    kv_lora_rank: int = 32
    qk_nope_head_dim: int = 16
    qk_rope_head_dim: int = 8
    v_head_dim: int = 16
    n_routed_experts: int = 8
    n_shared_experts: int = 1
    num_experts_per_tok: int = 2
    n_group: int = 4
    topk_group: int = 2
    routed_scaling_factor: float = 1.0
    norm_topk_prob: bool = True
    num_nextn_predict_layers: int = 1
    max_position_embeddings: int = 2048
    rope_theta: float = 10000.0
    rope_interleave: bool = True          # DeepSeek's released weights use interleaved RoPE pairs
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = False
    # ---- course-only (training)
    bias_update_speed: float = 0.001
    seq_aux_loss_alpha: float = 0.0001
    aux_loss_alpha: float = 0.0
    mtp_loss_weight: float = 0.3
    attention: str = "mla"

    def __post_init__(self):
        for name in ("vocab_size", "hidden_size", "intermediate_size", "moe_intermediate_size", "num_hidden_layers",
                     "num_attention_heads", "kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim",
                     "n_routed_experts", "num_experts_per_tok", "n_group", "topk_group", "max_position_embeddings"):
            positive_int(name, getattr(self, name))
        for name in ("first_k_dense_replace", "n_shared_experts", "num_nextn_predict_layers"):
            non_negative_int(name, getattr(self, name))
        if self.first_k_dense_replace > self.num_hidden_layers:
            raise ValueError(f"first_k_dense_replace must be at most num_hidden_layers={self.num_hidden_layers}, "
                             f"got {self.first_k_dense_replace}")
        if self.q_lora_rank is not None and (isinstance(self.q_lora_rank, bool) or self.q_lora_rank <= 0):
            raise ValueError(f"q_lora_rank must be a positive int or None, got {self.q_lora_rank!r}")
        if self.qk_rope_head_dim % 2:
            raise ValueError(f"qk_rope_head_dim must be even (RoPE rotates pairs), got {self.qk_rope_head_dim}")
        one_of("attention", self.attention, ATTENTIONS)
        if self.rms_norm_eps != 1e-6:
            raise ValueError(f"rms_norm_eps must be 1e-6 (the course's RMSNorm eps), got {self.rms_norm_eps!r}")
        if self.tie_word_embeddings:
            raise ValueError("tie_word_embeddings must be False (DeepSeek-V3 unties embedding and head)")

    # configs.count_params reads these three, so a NanoConfig is counted exactly like the published configs.
    @property
    def router_bias(self) -> bool:
        return True                        # every MoE layer holds V3's e_score_correction_bias

    @property
    def published_total(self) -> float:
        return 0.0

    @property
    def published_activated(self) -> float:
        return 0.0

    def replace(self, **changes) -> "NanoConfig":
        """A copy with some fields changed (validated again)."""
        unknown = set(changes) - {f.name for f in fields(self)}
        if unknown:
            raise ValueError(f"unknown NanoConfig field(s): {sorted(unknown)}")
        return replace(self, **changes)

    def to_dict(self) -> dict:
        return asdict(self)


# --------------------------------------------------------------------------------------------- presets
# Tiny: d = 96, 3 layers (the first dense), 8 routed experts of width 48 in 4 groups (top-2 groups), 2 routed + 1
# shared expert per token, one MTP module. Its dense width 144 = (2 + 1) * 48 is the activated expert width, the
# same rule V3 follows (18432 = (8 + 1) * 2048), so an all-dense model of width 144 is the iso-FLOP baseline.
TINY = NanoConfig(name="nano-tiny")

# Deep: TINY's widths and experts with 8 layers (the first dense), trained the same way. It exists for the decoding
# measurement of notebook 10 §5: a self-speculative draft runs ONE decoder layer (the MTP module) next to a main step
# of num_hidden_layers layers, so its relative cost falls with depth (3 layers: ~0.45 of a step, 8: ~0.16; V3's one
# MTP layer next to 61 is nearly free, V3 §5.4.3).
DEEP = TINY.replace(name="nano-deep", num_hidden_layers=8)

# The published DeepSeek-V3 shape (course_lib.configs.DEEPSEEK_V3 plus the routing fields of its config.json:
# n_group 8, topk_group 4, routed_scaling_factor 2.5). For counting parameters only: never build it.
V3 = NanoConfig(
    name="DeepSeek-V3", vocab_size=configs.DEEPSEEK_V3.vocab_size, hidden_size=configs.DEEPSEEK_V3.hidden_size,
    intermediate_size=configs.DEEPSEEK_V3.intermediate_size,
    moe_intermediate_size=configs.DEEPSEEK_V3.moe_intermediate_size,
    num_hidden_layers=configs.DEEPSEEK_V3.num_hidden_layers,
    first_k_dense_replace=configs.DEEPSEEK_V3.first_k_dense_replace,
    num_attention_heads=configs.DEEPSEEK_V3.num_attention_heads, q_lora_rank=configs.DEEPSEEK_V3.q_lora_rank,
    kv_lora_rank=configs.DEEPSEEK_V3.kv_lora_rank, qk_nope_head_dim=configs.DEEPSEEK_V3.qk_nope_head_dim,
    qk_rope_head_dim=configs.DEEPSEEK_V3.qk_rope_head_dim, v_head_dim=configs.DEEPSEEK_V3.v_head_dim,
    n_routed_experts=configs.DEEPSEEK_V3.n_routed_experts, n_shared_experts=configs.DEEPSEEK_V3.n_shared_experts,
    num_experts_per_tok=configs.DEEPSEEK_V3.num_experts_per_tok, n_group=8, topk_group=4,
    routed_scaling_factor=2.5, num_nextn_predict_layers=1, max_position_embeddings=163840)

PRESETS = {"tiny": TINY, "deep": DEEP, "v3": V3}


def get_preset(name: str) -> NanoConfig:
    return PRESETS[one_of("preset", name, sorted(PRESETS))]


def dense_baseline(cfg: NanoConfig, match: str = "activated") -> NanoConfig:
    """The same model with a dense SwiGLU in every layer, sized to match the MoE's activated or total FFN width.

    match="activated": width (K_r + N_s) * moe_intermediate_size, the experts one token runs (iso-FLOP);
    match="total":     width (N_r + N_s) * moe_intermediate_size, all experts' weights (iso-parameter).
    """
    h = cfg.moe_intermediate_size
    if match == "activated":
        width = (cfg.num_experts_per_tok + cfg.n_shared_experts) * h
    elif match == "total":
        width = (cfg.n_routed_experts + cfg.n_shared_experts) * h
    else:
        raise ValueError(f"match must be 'activated' or 'total', got {match!r}")
    return cfg.replace(name=f"dense ({match})", intermediate_size=width,
                       first_k_dense_replace=cfg.num_hidden_layers)


# --------------------------------------------------------------------------------------------- building
def is_moe(cfg: NanoConfig) -> bool:
    return cfg.first_k_dense_replace < cfg.num_hidden_layers


def moe_kwargs(cfg) -> dict:
    """The keyword arguments of V3's MoE layers (course_lib.moe.MoE) from a NanoConfig, NanoV4Config or NanoV41Config."""
    return dict(n_routed_experts=cfg.n_routed_experts, n_shared_experts=cfg.n_shared_experts,
                num_experts_per_tok=cfg.num_experts_per_tok, moe_intermediate_size=cfg.moe_intermediate_size,
                scoring_func="sigmoid", n_group=cfg.n_group, topk_group=cfg.topk_group,
                norm_topk_prob=cfg.norm_topk_prob, routed_scaling_factor=cfg.routed_scaling_factor,
                bias_update_speed=cfg.bias_update_speed, aux_loss_alpha=cfg.aux_loss_alpha,
                seq_aux_loss_alpha=cfg.seq_aux_loss_alpha)


def model_config(cfg: NanoConfig) -> ModelConfig:
    """The course ModelConfig that builds this network. Both use DeepseekV3Config's names, so the shared fields are
    copied as they are; the MLA and MoE fields go into the ``mla`` and ``moe`` keyword dicts of TinyLM's blocks."""
    mla = None
    if cfg.attention == "mla":
        mla = dict(kv_lora_rank=cfg.kv_lora_rank, q_lora_rank=cfg.q_lora_rank,
                   qk_nope_head_dim=cfg.qk_nope_head_dim, qk_rope_head_dim=cfg.qk_rope_head_dim,
                   v_head_dim=cfg.v_head_dim, rope_interleave=cfg.rope_interleave, rms_norm_eps=cfg.rms_norm_eps)
    shared = {f.name: getattr(cfg, f.name) for f in fields(ModelConfig) if f.name not in ("ffn", "moe", "mla")}
    return ModelConfig(**shared, ffn="moe" if is_moe(cfg) else "dense", moe=moe_kwargs(cfg) if is_moe(cfg) else None,
                       mla=mla)


def build_model(cfg: NanoConfig) -> nn.Module:
    """nano-DeepSeek: an ``MTPModel`` (main ``TinyLM`` in ``.model``, MTP modules in ``.mtp``), or a plain ``TinyLM``
    when ``num_nextn_predict_layers`` is 0. Uses the global torch seed for its initial weights."""
    if not isinstance(cfg, NanoConfig):
        raise ValueError(f"cfg must be a NanoConfig, got {type(cfg).__name__}")
    if cfg.hidden_size * cfg.vocab_size > 50_000_000 or cfg.num_hidden_layers > 64 and cfg.hidden_size > 1024:
        raise ValueError(f"cfg {cfg.name!r} is far too large to build here (it is for counting only)")
    main = TinyLM(model_config(cfg))
    if cfg.num_nextn_predict_layers == 0:
        return main
    return MTPModel(main, depth=cfg.num_nextn_predict_layers, lam=cfg.mtp_loss_weight)


def main_model(model: nn.Module) -> TinyLM:
    """The main network of a built model (the TinyLM inside an MTPModel)."""
    return model.model if isinstance(model, MTPModel) else model


# --------------------------------------------------------------------------------------------- counting
def param_table(cfg: NanoConfig) -> dict:
    """V3's way of counting (course_lib.configs): total and activated parameters of the main model, the embedding
    and the MTP modules, as integers. The router bias counts as a parameter, as in configs (it is a buffer in
    the course's MoE because gradients never set it)."""
    if cfg.attention != "mla":
        raise ValueError("attention must be 'mla' to count parameters V3's way")
    total, act = configs.count_params(cfg), configs.count_activated(cfg)
    if not is_moe(cfg):
        # configs' formulas assume MoE layers after the dense ones; an all-dense model has none to count
        total.update(routed_experts=0, shared_experts=0, router=0)
        act.update(routed_experts=0, shared_experts=0, router=0)
    return {"total": configs.main_total(total), "activated": configs.main_total(act),
            "embedding": total["embedding"], "head": total["head"], "mtp": total["mtp"]}


def format_param_table(cfgs) -> str:
    """Side-by-side text table of param_table for several configs (numbers in millions or billions)."""
    rows = [(c.name, param_table(c)) for c in cfgs]
    keys = ("total", "activated", "embedding", "mtp")
    lines = [f"{'model':<18}" + "".join(f"{k:>14}" for k in keys) + f"{'act/total':>11}"]
    for name, t in rows:
        fmt = (lambda v: f"{v / 1e9:.2f} B") if t["total"] > 1e9 else (lambda v: f"{v / 1e6:.3f} M")
        lines.append(f"{name:<18}" + "".join(f"{fmt(t[k]):>14}" for k in keys)
                     + f"{t['activated'] / t['total']:>10.1%}")
    return "\n".join(lines)
