"""DeepSeek-V4.1's block around CSA2: single-pass mHC, Engram inside a layer, and the encoder/decoder split.

Sources: the released DeepSeek-V4.1-Flash code (huggingface.co/deepseek-ai/DeepSeek-V4.1-Flash, revision df42c109)
as ported in NVIDIA-NeMo/Automodel nemo_automodel/components/models/deepseek_v41/ (model.py DeepseekV41Block and
DeepseekV41Model, layers.py DeepseekV41HyperConnection, engram.py DeepseekV41Engram, config.py
DeepseekV41TextConfig; file names as in NeMo-Automodel 0.7.0). course_lib.nano.v41_model assembles these pieces
into a trainable toy (nano-V4.1).

Single-pass mHC. V4 (course_lib.mhc, V4 §2.2) computes at each site A_l, B_l, C_l from the streams X_l and feeds the
sub-layer A_l X_l. V4.1 computes the same three coefficients from the same streams, but the sub-layer reads the
streams through the A of the PREVIOUS site: the attention site through the last block's FFN-site A, the FFN site
through this block's attention-site A (model.py DeepseekV41Block.forward; the first block reads stream 0, a one-hot
A set up in DeepseekV41Model.forward). The collapse no longer waits for this site's coefficients, so one pass over the streams
serves both. The Sinkhorn projection of B is unchanged: the released config keeps hc_sinkhorn_iters = 20.

Engram (engram.py): layers 1 and 14 add an n-gram memory to the streams before their attention site, one key per
stream and a shared value: x_m <- x_m + sigmoid(ssqrt(<RMSNorm(x_m), w * RMSNorm(k_m)> / sqrt(d))) v, which is
course_lib.engram.Engram with hc_mult streams and no short convolution (its gate; biases aside).

Encoder/decoder. The schedule splits the 40 layers at the first ratio-1 layer: layers 0-19 (window or ratio-2
compression) and layers 20-39 (ratio 1), whose only compressed cache is written by layer 20 from the output of
layer 19. Described as a causal encoder/decoder (the port's README); in the reading this module computes, a prompt
token needs only the encoder and layer 20's compressor to fill every cache the decoder reads, while a generated
token runs all 40 layers. The port itself runs every layer at prefill (its README: bounded decoder replay is not
implemented), so `active_params` is our arithmetic from the released dimensions, not a measured serving number.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from course_lib.csa2 import V41_FLASH, CSA2Layout
from course_lib.mhc import HyperConnection, sinkhorn_knopp


def hc_coefficients(hc: HyperConnection, streams: torch.Tensor):
    """A_l (B, T, n), B_l (B, T, n, n), C_l (B, T, n) of a constrained HyperConnection (mhc.HyperConnection.forward,
    V4 §2.2: A = sigmoid(.) + eps, C = 2 sigmoid(.), B = Sinkhorn(.)), without applying A."""
    if not hc.constrained:
        raise ValueError("hc must be a constrained (mHC) HyperConnection")
    n = hc.n_streams
    flat = streams.flatten(2)
    flat = flat * torch.rsqrt(flat.pow(2).mean(-1, keepdim=True) + hc.rms_eps)
    pre_w, post_w, res_w = F.linear(flat, hc.fn.to(flat.dtype)).split([n, n, n * n], dim=-1)
    pre_b, post_b, res_b = hc.base.to(flat.dtype).split([n, n, n * n])
    a_pre, a_post, a_res = hc.scale.to(flat.dtype).unbind(0)
    pre = torch.sigmoid(a_pre * pre_w + pre_b) + hc.eps
    post = 2 * torch.sigmoid(a_post * post_w + post_b)
    mix = sinkhorn_knopp(a_res * res_w.unflatten(-1, (n, n)).transpose(-1, -2) + res_b.view(n, n).t(),
                         hc.sinkhorn_iters, hc.eps)
    return pre, mix, post


def one_hot_mix(streams: torch.Tensor) -> torch.Tensor:
    """The first block's carried A: read stream 0 (model.py DeepseekV41Model.forward: pre_mix[..., 0] = 1)."""
    mix = torch.zeros(streams.shape[:3], dtype=streams.dtype, device=streams.device)
    mix[..., 0] = 1.0
    return mix


def single_pass_block(x, carried, attn_hc: HyperConnection, attn, ffn_hc: HyperConnection, ffn,
                      engram=None, ids=None):
    """One V4.1 block on streams x (B, T, n, d) with the carried A (B, T, n); returns (streams, A for the next block).
    model.py DeepseekV41Block.forward:
        x <- x + Engram(x)                                  (Engram layers only)
        A1, B1, C1 = coeff(x);   x <- B1 x + C1 attn(carried . x)
        A2, B2, C2 = coeff(x);   x <- B2 x + C2 ffn(A1 . x)
        return x, A2
    attn and ffn map (B, T, d) -> (B, T, d) (each with its own norm)."""
    if x.dim() != 4 or carried.shape != x.shape[:3]:
        raise ValueError(f"x must be (B, T, n, d) and carried (B, T, n), got {tuple(x.shape)} and "
                         f"{tuple(carried.shape)}")
    if engram is not None:
        if ids is None:
            raise ValueError("ids are required when the block has an engram")
        x = x + engram(x, ids)
    a1, b1, c1 = hc_coefficients(attn_hc, x)
    x = HyperConnection.combine(x, attn((carried.unsqueeze(-1) * x).sum(2)), b1, c1)
    a2, b2, c2 = hc_coefficients(ffn_hc, x)
    x = HyperConnection.combine(x, ffn((a1.unsqueeze(-1) * x).sum(2)), b2, c2)
    return x, a2


# --------------------------------------------------------------------------------------------- encoder / decoder
def encoder_decoder(layout: CSA2Layout = V41_FLASH) -> tuple[tuple, tuple]:
    """(encoder layers, decoder layers): the decoder starts at the first ratio-1 layer, which must be a KV source."""
    ones = [i for i, r in enumerate(layout.compress_ratios) if r == 1]
    if not ones or ones[0] not in layout.kv_sources or ones != list(range(ones[0], layout.n_layers)):
        raise ValueError("layout must end with a run of ratio-1 layers whose first layer is a KV source")
    return tuple(range(ones[0])), tuple(ones)


# config.py defaults (the released Flash text_config).
V41_FLASH_DIMS = dict(hidden=5120, q_lora=1280, heads=64, head_dim=512, o_groups=8, o_lora=1024, moe_inter=2304,
                      routed=384, top_k=6, shared=1, index_heads=32, index_head_dim=128, vocab=129280, hc_mult=4,
                      engram_layers=(1, 14), engram_max_ngram=4, engram_heads=8, engram_head_dim=256)


def layer_active_params(layer: int, layout: CSA2Layout = V41_FLASH, dims: dict = V41_FLASH_DIMS) -> int:
    """Weights one token multiplies in one layer: attention (wq_a, wq_b, wkv, grouped wo_a, wo_b), its compressor
    and indexer if it owns them, routed top-k + shared experts (3 matrices each) and the router, two mHC
    projections ((2 + n) n x n d each), and Engram's rows and wkv in an Engram layer."""
    d, m = dims["hidden"], layout.mode(layer)
    n = dims["heads"] * dims["head_dim"]
    attn = d * dims["q_lora"] + dims["q_lora"] * n + d * dims["head_dim"] + n * dims["o_lora"] \
        + dims["o_groups"] * dims["o_lora"] * d
    if m == "full":
        attn += d * dims["head_dim"] * (2 if layout.compress_ratios[layer] > 1 else 1)   # compressor wkv (+ wgate)
        attn += dims["head_dim"] * dims["index_head_dim"]                                 # indexer wk
    if m in ("full", "reindex"):
        attn += dims["q_lora"] * dims["index_heads"] * dims["index_head_dim"] + d * dims["index_heads"]
    ffn = (dims["top_k"] + dims["shared"]) * 3 * d * dims["moe_inter"] + dims["routed"] * d
    hc = 2 * (2 + dims["hc_mult"]) * dims["hc_mult"] * dims["hc_mult"] * d
    engram = 0
    if layer in dims["engram_layers"]:
        rows = (dims["engram_max_ngram"] - 1) * dims["engram_heads"] * dims["engram_head_dim"]
        engram = rows + rows * d * (dims["hc_mult"] + 1)
    return attn + ffn + hc + engram


def active_params(phase: str, layout: CSA2Layout = V41_FLASH, dims: dict = V41_FLASH_DIMS) -> int:
    """Active weights per token. "decode": all layers and the output head. "prefill": a prompt token runs the
    encoder and the first decoder layer's compressor and index-key projection (the decoder's whole compressed
    cache); the decoder's own layers run only for the last window of the prompt and the head only for its last
    token, which this per-token count leaves out."""
    if phase not in ("prefill", "decode"):
        raise ValueError(f"phase must be 'prefill' or 'decode', got {phase!r}")
    enc, dec = encoder_decoder(layout)
    if phase == "decode":
        return sum(layer_active_params(i, layout, dims) for i in enc + dec) + dims["hidden"] * dims["vocab"]
    return sum(layer_active_params(i, layout, dims) for i in enc) \
        + dims["hidden"] * dims["head_dim"] + dims["head_dim"] * dims["index_head_dim"]
