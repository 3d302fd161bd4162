"""Attention configurations of DeepSeek-V3.2 (DSA) and DeepSeek-V4-Flash / V4-Pro (CSA + HCA + sliding window).

Numbers from the official config.json files (field names as there):
  DeepSeek-V3.2      huggingface.co/deepseek-ai/DeepSeek-V3.2-Exp config.json (and DeepSeek-V3.2, same attention):
                     61 layers, 128 heads, kv_lora_rank 512, qk_rope_head_dim 64, qk_nope_head_dim 128,
                     v_head_dim 128, q_lora_rank 1536, index_n_heads 64, index_head_dim 128, index_topk 2048.
  DeepSeek-V4-Flash  huggingface.co/deepseek-ai/DeepSeek-V4-Flash config.json: 43 layers, hidden 4096, 64 heads,
                     num_key_value_heads 1, head_dim 512, qk_rope_head_dim 64, q_lora_rank 1024, o_groups 8,
                     o_lora_rank 1024, sliding_window 128, index_n_heads 64, index_head_dim 128, index_topk 512,
                     compress_ratios [0, 0, 4, 128, 4, 128, ..., 4] (+ a trailing entry for the MTP layer).
  DeepSeek-V4-Pro    huggingface.co/deepseek-ai/DeepSeek-V4-Pro config.json: 61 layers, hidden 7168, 128 heads,
                     head_dim 512, qk_rope_head_dim 64, q_lora_rank 1536, o_groups 16, o_lora_rank 1024,
                     sliding_window 128, index 64 x 128, index_topk 1024, compress_ratios [128, 128, 4, 128, 4, ...].
compress_ratios per layer: 0 = sliding window only, 4 = CSA (m = 4), 128 = HCA (m' = 128); every layer also has the
sliding-window branch. Activated parameters (for the FLOPs of everything but attention): V3.2 37B (V3's, the
indexer adds <1%), V4-Flash 13B, V4-Pro 49B (V4 report, abstract / model cards).
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DSAModel:
    """An MLA model with DeepSeek Sparse Attention in every layer (V3.2)."""
    name: str
    n_layers: int
    n_heads: int
    kv_lora_rank: int
    rope_dim: int
    index_n_heads: int
    index_head_dim: int
    index_topk: int
    activated_params: float          # billions
    source: str = ""


@dataclass(frozen=True)
class V4Model:
    """A DeepSeek-V4 model: shared-KV MQA (one head_dim-wide entry per token or compressed block)."""
    name: str
    layer_ratios: tuple              # per layer: 0 sliding only, m (CSA rate) or m' (HCA rate)
    n_heads: int
    head_dim: int
    rope_dim: int
    window: int
    csa_rate: int
    hca_rate: int
    index_n_heads: int
    index_head_dim: int
    index_topk: int
    activated_params: float          # billions
    source: str = ""

    @property
    def n_layers(self) -> int:
        return len(self.layer_ratios)

    def count(self, kind: str) -> int:
        rate = {"sliding": 0, "csa": self.csa_rate, "hca": self.hca_rate}[kind]
        return sum(r == rate for r in self.layer_ratios)


def v4_layer_ratios(n_layers: int, head: tuple, csa: int = 4, hca: int = 128) -> tuple:
    """`head` (the first layers' ratios) then CSA and HCA alternating, starting with CSA, n_layers in all."""
    rest = [csa if i % 2 == 0 else hca for i in range(n_layers - len(head))]
    return tuple(head) + tuple(rest)


DEEPSEEK_V32 = DSAModel("DeepSeek-V3.2", n_layers=61, n_heads=128, kv_lora_rank=512, rope_dim=64, index_n_heads=64,
                        index_head_dim=128, index_topk=2048, activated_params=37.0,
                        source="huggingface.co/deepseek-ai/DeepSeek-V3.2-Exp config.json")
DEEPSEEK_V4_FLASH = V4Model("DeepSeek-V4-Flash", v4_layer_ratios(43, (0, 0)), n_heads=64, head_dim=512, rope_dim=64,
                            window=128, csa_rate=4, hca_rate=128, index_n_heads=64, index_head_dim=128,
                            index_topk=512, activated_params=13.0,
                            source="huggingface.co/deepseek-ai/DeepSeek-V4-Flash config.json")
DEEPSEEK_V4_PRO = V4Model("DeepSeek-V4-Pro", v4_layer_ratios(61, (128, 128)), n_heads=128, head_dim=512, rope_dim=64,
                          window=128, csa_rate=4, hca_rate=128, index_n_heads=64, index_head_dim=128,
                          index_topk=1024, activated_params=49.0,
                          source="huggingface.co/deepseek-ai/DeepSeek-V4-Pro config.json")

MODELS = {m.name: m for m in (DEEPSEEK_V32, DEEPSEEK_V4_FLASH, DEEPSEEK_V4_PRO)}
