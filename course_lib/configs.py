"""Real DeepSeek configurations and a parameter counter that reproduces their published sizes.

Values are copied from the official config files (field names as in the Hugging Face config.json):
  DeepSeek-V3      huggingface.co/deepseek-ai/DeepSeek-V3/blob/main/config.json
                   and github.com/deepseek-ai/DeepSeek-V3/blob/main/inference/configs/config_671B.json
  DeepSeek-V2      huggingface.co/deepseek-ai/DeepSeek-V2/blob/main/config.json
                   and github.com/deepseek-ai/DeepSeek-V3/blob/main/inference/configs/config_236B.json
  DeepSeek-V2-Lite huggingface.co/deepseek-ai/DeepSeek-V2-Lite/blob/main/config.json
                   and github.com/deepseek-ai/DeepSeek-V3/blob/main/inference/configs/config_16B.json
Published sizes: V3 671B total / 37B activated (V3 paper abstract; README_WEIGHTS.md of the DeepSeek-V3 repo gives
36.7B activated and 11.5B for the MTP module; the model card says 685B on Hugging Face = 671B main + 14B MTP).
V2 236B / 21B (V2 paper abstract and §3.1.2). V2-Lite 15.7B / 2.4B (V2 paper Appendix B.1).

Counting convention (ours): "activated" counts what one token multiplies with: every attention and dense weight,
the shared experts, top-k routed experts, the router, the norms and the output head; the embedding is a table lookup,
so it is not counted as activated. DeepSeek counts it: README_WEIGHTS.md gives V3's 36.7B activated "including 0.9B
for Embedding and 0.9B for the output Head"; our count of the same model is 36.6B without the embedding.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from course_lib.kit.validate import one_of


@dataclass(frozen=True)
class DeepSeekConfig:
    name: str
    vocab_size: int
    hidden_size: int                 # d
    intermediate_size: int           # hidden size of the dense SwiGLU FFNs (the first_k_dense_replace layers)
    moe_intermediate_size: int       # hidden size of ONE expert
    num_hidden_layers: int           # l
    first_k_dense_replace: int       # the first k layers keep a dense FFN, the rest are MoE
    num_attention_heads: int         # n_h
    q_lora_rank: int | None          # d'_c (None: the query is not compressed)
    kv_lora_rank: int                # d_c
    qk_nope_head_dim: int            # d_h
    qk_rope_head_dim: int            # d^R_h
    v_head_dim: int
    n_routed_experts: int
    n_shared_experts: int
    num_experts_per_tok: int         # K routed experts per token
    router_bias: bool = False        # V3's e_score_correction_bias (one number per expert, aux-loss-free balancing)
    num_nextn_predict_layers: int = 0  # MTP modules shipped with the weights (V3: 1)
    tie_word_embeddings: bool = False
    rope_factor: float = 40.0        # rope_scaling.factor (YaRN) in all three configs
    mscale_all_dim: float = 1.0      # rope_scaling.mscale_all_dim
    published_total: float = 0.0     # billions
    published_activated: float = 0.0
    published_stored: float = 0.0    # billions in the released files, MTP included (V3 model card: 685)
    source: str = ""


DEEPSEEK_V3 = DeepSeekConfig(
    name="DeepSeek-V3", vocab_size=129280, hidden_size=7168, intermediate_size=18432, moe_intermediate_size=2048,
    num_hidden_layers=61, first_k_dense_replace=3, num_attention_heads=128, q_lora_rank=1536, kv_lora_rank=512,
    qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128, n_routed_experts=256, n_shared_experts=1,
    num_experts_per_tok=8, router_bias=True, num_nextn_predict_layers=1, mscale_all_dim=1.0,
    published_total=671, published_activated=37, published_stored=685,
    source="huggingface.co/deepseek-ai/DeepSeek-V3 config.json; DeepSeek-V3 repo inference/configs/config_671B.json")

DEEPSEEK_V2 = DeepSeekConfig(
    name="DeepSeek-V2", vocab_size=102400, hidden_size=5120, intermediate_size=12288, moe_intermediate_size=1536,
    num_hidden_layers=60, first_k_dense_replace=1, num_attention_heads=128, q_lora_rank=1536, kv_lora_rank=512,
    qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128, n_routed_experts=160, n_shared_experts=2,
    num_experts_per_tok=6, mscale_all_dim=0.707, published_total=236, published_activated=21,
    source="huggingface.co/deepseek-ai/DeepSeek-V2 config.json; DeepSeek-V3 repo inference/configs/config_236B.json")

DEEPSEEK_V2_LITE = DeepSeekConfig(
    name="DeepSeek-V2-Lite", vocab_size=102400, hidden_size=2048, intermediate_size=10944, moe_intermediate_size=1408,
    num_hidden_layers=27, first_k_dense_replace=1, num_attention_heads=16, q_lora_rank=None, kv_lora_rank=512,
    qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128, n_routed_experts=64, n_shared_experts=2,
    num_experts_per_tok=6, mscale_all_dim=0.707, published_total=15.7, published_activated=2.4,
    source="huggingface.co/deepseek-ai/DeepSeek-V2-Lite config.json; "
           "DeepSeek-V3 repo inference/configs/config_16B.json")

CONFIGS = {c.name: c for c in (DEEPSEEK_V2_LITE, DEEPSEEK_V2, DEEPSEEK_V3)}


def get_config(name: str) -> DeepSeekConfig:
    return CONFIGS[one_of("name", name, sorted(CONFIGS))]


# --------------------------------------------------------------------------------------------- counting
def attention_params(cfg: DeepSeekConfig) -> int:
    """One MLA layer (V2 Eq. 9-19 / V3 Eq. 1-11), with the two RMSNorms on the compressed latents."""
    d, H = cfg.hidden_size, cfg.num_attention_heads
    dn, dr, dv, dc = cfg.qk_nope_head_dim, cfg.qk_rope_head_dim, cfg.v_head_dim, cfg.kv_lora_rank
    if cfg.q_lora_rank:
        # W^DQ (d'_c x d), RMSNorm(d'_c), [W^UQ; W^QR] (n_h (d_h + d^R_h) x d'_c)
        q = d * cfg.q_lora_rank + cfg.q_lora_rank + cfg.q_lora_rank * H * (dn + dr)
    else:
        q = d * H * (dn + dr)                              # V2-Lite: one full query projection
    kv = d * (dc + dr) + dc + dc * H * (dn + dv)           # [W^DKV; W^KR], RMSNorm(d_c), [W^UK; W^UV]
    return q + kv + H * dv * d                             # + W^O


def swiglu_params(d: int, hidden: int) -> int:
    """gate, up and down projections of a SwiGLU FFN."""
    return 3 * d * hidden


def router_params(cfg: DeepSeekConfig) -> int:
    """Expert centroids e_i (one d-vector per routed expert), plus V3's per-expert bias."""
    return cfg.n_routed_experts * cfg.hidden_size + (cfg.n_routed_experts if cfg.router_bias else 0)


def mtp_module_params(cfg: DeepSeekConfig) -> int:
    """One V3 MTP module (V3 §2.2): two RMSNorms, projection M (d x 2d), one Transformer block (MLA + MoE),
    and the output head's norm; embedding and head are shared with the main model, so not counted."""
    d = cfg.hidden_size
    expert = swiglu_params(d, cfg.moe_intermediate_size)
    block = attention_params(cfg) + (cfg.n_routed_experts + cfg.n_shared_experts) * expert + router_params(cfg) + 2 * d
    return 2 * d + 2 * d * d + block + d


def count_params(cfg: DeepSeekConfig) -> dict:
    """Total parameters by component (integers). Keys: embedding, attention, dense_mlp, routed_experts,
    shared_experts, router, norms, head, mtp (the shipped MTP modules, kept apart from the main model)."""
    d, L = cfg.hidden_size, cfg.num_hidden_layers
    n_moe = L - cfg.first_k_dense_replace
    expert = swiglu_params(d, cfg.moe_intermediate_size)
    return {
        "embedding": cfg.vocab_size * d,
        "attention": L * attention_params(cfg),
        "dense_mlp": cfg.first_k_dense_replace * swiglu_params(d, cfg.intermediate_size),
        "routed_experts": n_moe * cfg.n_routed_experts * expert,
        "shared_experts": n_moe * cfg.n_shared_experts * expert,
        "router": n_moe * router_params(cfg),
        "norms": 2 * d * L + d,                            # two per block and the final one
        "head": 0 if cfg.tie_word_embeddings else cfg.vocab_size * d,
        "mtp": cfg.num_nextn_predict_layers * mtp_module_params(cfg),
    }


def count_activated(cfg: DeepSeekConfig) -> dict:
    """Parameters one token multiplies with (main model): top-K of the routed experts, no embedding lookup."""
    total = count_params(cfg)
    act = dict(total)
    act["embedding"] = 0
    act["routed_experts"] = total["routed_experts"] * cfg.num_experts_per_tok // cfg.n_routed_experts
    act["mtp"] = 0
    return act


def main_total(breakdown: dict) -> int:
    """Sum without the MTP modules (the number papers quote as 'total parameters')."""
    return sum(v for k, v in breakdown.items() if k != "mtp")


def report(cfg: DeepSeekConfig) -> str:
    """Text table of the breakdown and the comparison with the published figures."""
    tot, act = count_params(cfg), count_activated(cfg)
    lines = [f"{cfg.name}", f"{'component':<16}{'total (B)':>12}{'activated (B)':>15}"]
    for key in tot:
        if key == "mtp" and not tot[key]:
            continue
        lines.append(f"{key:<16}{tot[key] / 1e9:>12.3f}{act[key] / 1e9:>15.3f}")
    t, a = main_total(tot) / 1e9, main_total(act) / 1e9
    lines.append(f"{'main model':<16}{t:>12.2f}{a:>15.2f}")
    lines.append(f"{'published':<16}{cfg.published_total:>12g}{cfg.published_activated:>15g}")
    lines.append(f"{'difference':<16}{100 * (t / cfg.published_total - 1):>11.2f}%"
                 f"{100 * (a / cfg.published_activated - 1):>14.2f}%")
    return "\n".join(lines)


def stored_total(cfg: DeepSeekConfig) -> int:
    """Parameters as stored in the released checkpoint: main model + MTP modules, where each MTP layer in the files
    carries its own copy of the embedding and output head (README_WEIGHTS.md lists `embed_tokens` and
    `shared_head` under model.layers.61). This is what the V3 model card's "685B = 671B + 14B" adds up."""
    tot = count_params(cfg)
    copies = cfg.num_nextn_predict_layers * (tot["embedding"] + tot["head"])
    return main_total(tot) + tot["mtp"] + copies


def yarn_softmax_scale(cfg: DeepSeekConfig) -> float:
    """Softmax scale the released (YaRN-extended) checkpoints use: 1/sqrt(d_h + d^R_h) (V2 Eq. 18) times mscale^2,
    mscale = 0.1 * mscale_all_dim * ln(factor) + 1 (transformers' yarn_get_mscale; DeepSeek's inference model.py)."""
    base = (cfg.qk_nope_head_dim + cfg.qk_rope_head_dim) ** -0.5
    if cfg.rope_factor <= 1 or not cfg.mscale_all_dim:
        return base
    mscale = 0.1 * cfg.mscale_all_dim * math.log(cfg.rope_factor) + 1.0
    return base * mscale * mscale


def mla_kwargs(cfg: DeepSeekConfig, n_heads: int | None = None) -> dict:
    """Keyword arguments for course_lib.mla.MLA at this config's shapes (optionally fewer heads)."""
    return dict(d_model=cfg.hidden_size, n_heads=n_heads or cfg.num_attention_heads, kv_lora_rank=cfg.kv_lora_rank,
                q_lora_rank=cfg.q_lora_rank, qk_nope_head_dim=cfg.qk_nope_head_dim,
                qk_rope_head_dim=cfg.qk_rope_head_dim, v_head_dim=cfg.v_head_dim)
