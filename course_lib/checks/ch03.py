"""Exercises of 03_mla: KV-cache arithmetic and the shapes of MLA's absorbed matrices (DeepSeek-V2 §2.1)."""
import torch

from course_lib.checks.core import close, register


def _g(seed):
    return torch.Generator().manual_seed(seed)


@register(cases=[(60, 512, 64, 2), (61, 512, 64, 1), (2, 16, 8, 4), (27, 512, 64, 0.75)],
          hint=("What does MLA keep per token and layer (section 5): only the latent c^KV_t, or something next to "
                "it? And is that extra piece one per head, or one shared by all heads?",
                "V2 §2.1.3: the cache holds c^KV_t (d_c elements) and ONE shared RoPE key k^R_t (d^R_h elements) per "
                "token and layer: bytes = (d_c + d^R_h) * l * bytes_per_element.",
                "return (kv_lora_rank + rope_dim) * n_layers * bytes_per_element"),
          wrong=[lambda l, dc, dr, b: dc * l * b,                       # forgot the decoupled rope key
                 lambda l, dc, dr, b: 2 * (dc + dr) * l * b,             # a 'key and a value' copy: MLA has one latent
                 lambda l, dc, dr, b: (dc + dr) * b])                    # forgot the layers
def mla_cache_bytes_per_token(n_layers, kv_lora_rank, rope_dim, bytes_per_element):
    # V2 §2.1.3: (d_c + d^R_h) l elements per token.
    return (kv_lora_rank + rope_dim) * n_layers * bytes_per_element


@register(cases=[(32, 8, 128, 2), (80, 8, 128, 2), (30, 32, 128, 2), (4, 1, 16, 4)],
          hint=("What does each of GQA's n_g key/value heads store per token, in each layer (section 2)? Count the "
                "keys and the values.",
                "V2 Table 1: GQA caches 2 n_g d_h l elements per token (one key and one value per group, in every "
                "layer); multiply by bytes_per_element.",
                "return 2 * n_kv_heads * head_dim * n_layers * bytes_per_element"),
          wrong=[lambda l, g, d, b: g * d * l * b,                      # forgot the values
                 lambda l, g, d, b: 2 * g * d * b])                     # forgot the layers
def gqa_cache_bytes_per_token(n_layers, n_kv_heads, head_dim, bytes_per_element):
    # V2 Table 1: 2 n_g d_h l elements per token.
    return 2 * n_kv_heads * head_dim * n_layers * bytes_per_element


@register(cases=[(torch.randn(2, 3, 4, generator=_g(0)), torch.randn(2, 4, 6, generator=_g(1))),
                 (torch.randn(4, 5, 8, generator=_g(2)), torch.randn(4, 8, 16, generator=_g(3)))],
          hint=("Section 3 rewrites head i's score q_{t,i}^T W^UK_i c^KV_j as (W^UK_i^T q_{t,i})^T c^KV_j: which "
                "matrix does each head's query go through, and do the heads stay separate?",
                "Per head i: q_lat_i = q^C_i W^UK_i, the row form of W^UK_i^T q^C_{t,i} (V2 §2.1.2): "
                "(T, d_h) @ (d_h, d_c) -> (T, d_c), for each of the n_h heads.",
                "return q_nope @ w_uk   # a batched matmul over heads; or torch.einsum('htd,hdc->htc', q_nope, w_uk)"),
          wrong=[lambda q, w: q @ w.sum(0, keepdim=True),              # mixed all heads' W^UK together
                 lambda q, w: q @ w[:1]])                              # used head 0's matrix for every head
def absorb_query(q_nope, w_uk):
    # q_nope (n_h, T, d_h), w_uk (n_h, d_h, d_c): q^C_{t,i}^T (W^UK_i c_j) = (W^UK_i^T q^C_{t,i})^T c_j (V2 §2.1.2).
    return q_nope @ w_uk


@register(kind="value",
          hint=("The merged W^UK_i^T W^UQ_i takes the compressed query c^Q_t straight to a latent query that meets "
                "c^KV_j (section 6): what are the sizes of its input and output, and how many heads does V3 have?",
                "W^UK_i^T is (d_c x d_h) and W^UQ_i is (d_h x d'_c), so each head's product is (d_c x d'_c); "
                "V3 §2.1.1 / §4.2: n_h = 128, d_c = 512, d'_c = 1536.",
                "v3_shape = (128, 512, 1536)   # (n_h, d_c, d'_c)"),
          wrong=[(128, 1536, 512), (128, 128, 512), (128, 512, 128), (512, 1536)])
def v3_absorbed_query_shape():
    # V3: n_h = 128, d_c = 512, d'_c = 1536 (V3 §4.2).
    return (128, 512, 1536)


@register(kind="value",
          hint=("Exercise 1 at V3's shape ('What DeepSeek actually did'): elements per token, then bytes per token, "
                "then times the number of tokens in the sequence.",
                "GB = (d_c + d^R_h) * l * 2 bytes (bf16) * 131072 tokens / 1e9, with V3's d_c = 512, d^R_h = 64 and "
                "l = 61 layers (V3 §2.1.1, §4.2).",
                "v3_gb = (512 + 64) * 61 * 2 * 131072 / 1e9   # about 9.21"),
          wrong=[0.0755, 2 * 128 * 128 * 61 * 2 * 131072 / 1e9, 512 * 61 * 2 * 131072 / 1e9, 18.42],
          compare=lambda expected, got: close(expected, got, rtol=5e-3))     # 9.21 or 9.2107 both count
def v3_cache_gb_one_128k_sequence():
    # One sequence of 131072 tokens, DeepSeek-V3 (61 layers, d_c = 512, d^R_h = 64), bf16.
    return (512 + 64) * 61 * 2 * 131072 / 1e9
