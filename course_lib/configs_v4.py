"""Attention configurations of DeepSeek-V3.2 (DSA) and DeepSeek-V4-Flash / V4-Pro (CSA + HCA + sliding window).

Numbers from the official config files (field names as there), checked 2026-11-29 (docs/fact_audit.md):
  DeepSeek-V3.2      github.com/deepseek-ai/DeepSeek-V3.2-Exp `inference/config_671B_v3.2.json`, and the config.json
                     of huggingface.co/deepseek-ai/DeepSeek-V3.2 (same attention fields): 61 layers, 128 heads,
                     kv_lora_rank 512, qk_rope_head_dim 64, qk_nope_head_dim 128, v_head_dim 128, q_lora_rank 1536,
                     index_n_heads 64, index_head_dim 128, index_topk 2048.
  DeepSeek-V4-Flash  huggingface.co/deepseek-ai/DeepSeek-V4-Flash config.json (revision 60d8d70): 43 layers,
                     hidden 4096, 64 heads, num_key_value_heads 1, head_dim 512, qk_rope_head_dim 64,
                     q_lora_rank 1024, o_groups 8, o_lora_rank 1024, sliding_window 128, index_n_heads 64,
                     index_head_dim 128, index_topk 512,
                     compress_ratios [0, 0, 4, 128, 4, 128, ..., 4, 128, 4, 0]: 44 entries, the last for the MTP layer.
  DeepSeek-V4-Pro    huggingface.co/deepseek-ai/DeepSeek-V4-Pro config.json (revision b5968e9): 61 layers, hidden 7168,
                     128 heads, num_key_value_heads 1, head_dim 512, qk_rope_head_dim 64, q_lora_rank 1536, o_groups 16,
                     o_lora_rank 1024, sliding_window 128, index 64 x 128, index_topk 1024,
                     compress_ratios [128, 128, 4, 128, 4, ..., 128, 4, 0]: 62 entries, the last for the MTP layer.
The two V4 files were read in byte-for-byte copies that name those Hugging Face revisions (NVIDIA aiconfigurator,
`model_configs/deepseek-ai--DeepSeek-V4-{Flash,Pro}_config.json`); the full `compress_ratios` lists are below.
compress_ratios per layer: 0 = sliding window only, 4 = CSA (m = 4), 128 = HCA (m' = 128); every layer also has the
sliding-window branch. Decoder layers: V4-Flash 2 sliding-only + 21 CSA + 20 HCA, V4-Pro 30 CSA + 31 HCA.
Activated parameters (for the FLOPs of everything but attention): V4-Flash 13B and V4-Pro 49B (V4 model cards and
report abstract); V3.2 37B is V3's count (DeepSeek-V3 README), since V3.2 adds only DSA to V3.1-Terminus's architecture
(V3.2-Exp report §1). DSA's indexer adds about 14M weights per layer (wq_b 1536 x 8192, wk 7168 x 128, weights_proj
7168 x 64 in the official `inference/model.py`), 0.85B over 61 layers, about 2% of 37B; we keep 37B.
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
        rates = {"sliding": 0, "csa": self.csa_rate, "hca": self.hca_rate}
        if kind not in rates:
            raise ValueError(f"kind must be one of {tuple(rates)}, got {kind!r}")
        rate = rates[kind]
        return sum(r == rate for r in self.layer_ratios)


# `compress_ratios` exactly as in the official config.json files (see the module docstring); the last entry of each
# belongs to the MTP layer, so the models below use only the first n_layers entries.
V4_FLASH_COMPRESS_RATIOS = (0, 0) + (4, 128) * 20 + (4, 0)
V4_PRO_COMPRESS_RATIOS = (128, 128) + (4, 128) * 29 + (4, 0)


def v4_layer_ratios(n_layers: int, head: tuple, csa: int = 4, hca: int = 128) -> tuple:
    """`head` (the first layers' ratios) then CSA and HCA alternating, starting with CSA, n_layers in all.

    The rule behind both official lists: v4_layer_ratios(43, (0, 0)) and v4_layer_ratios(61, (128, 128)) equal the
    first 43 / 61 entries of V4_FLASH_COMPRESS_RATIOS / V4_PRO_COMPRESS_RATIOS."""
    rest = [csa if i % 2 == 0 else hca for i in range(n_layers - len(head))]
    return tuple(head) + tuple(rest)


DEEPSEEK_V32 = DSAModel("DeepSeek-V3.2", n_layers=61, n_heads=128, kv_lora_rank=512, rope_dim=64, index_n_heads=64,
                        index_head_dim=128, index_topk=2048, activated_params=37.0,
                        source="github.com/deepseek-ai/DeepSeek-V3.2-Exp inference/config_671B_v3.2.json")
DEEPSEEK_V4_FLASH = V4Model("DeepSeek-V4-Flash", V4_FLASH_COMPRESS_RATIOS[:43], n_heads=64, head_dim=512, rope_dim=64,
                            window=128, csa_rate=4, hca_rate=128, index_n_heads=64, index_head_dim=128,
                            index_topk=512, activated_params=13.0,
                            source="huggingface.co/deepseek-ai/DeepSeek-V4-Flash config.json")
DEEPSEEK_V4_PRO = V4Model("DeepSeek-V4-Pro", V4_PRO_COMPRESS_RATIOS[:61], n_heads=128, head_dim=512, rope_dim=64,
                          window=128, csa_rate=4, hca_rate=128, index_n_heads=64, index_head_dim=128,
                          index_topk=1024, activated_params=49.0,
                          source="huggingface.co/deepseek-ai/DeepSeek-V4-Pro config.json")

MODELS = {m.name: m for m in (DEEPSEEK_V32, DEEPSEEK_V4_FLASH, DEEPSEEK_V4_PRO)}
