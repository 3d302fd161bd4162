"""course_lib.mhc's block and model with their hyper-connections run through the fused kernels of this package.

``FusedStreamBlock`` / ``FusedStreamLM`` subclass ``mhc.StreamBlock`` / ``mhc.StreamLM``: the same constructor
arguments and parameters (a state dict loads into either), the same numbers up to rounding
(tests/bonus/test_fused_mhc.py compares losses, every gradient and the recorded mixing matrices). Only forward
differs. Where the kernels cannot run (no C compiler, CUDA, bfloat16, more than 8 streams; ``supported``) and for the
"plain" residual, forward is the parent's PyTorch code.

cpp_nodes (constructor argument, default True): the kernels behind the C++ autograd nodes where they could be built;
False: behind the Python ``autograd.Function``s (the bench compares the two).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from course_lib import mhc
from course_lib.bonus.fused_mhc import combine, combine_then_pre, pre, supported


class FusedStreamBlock(mhc.StreamBlock):
    """mhc.StreamBlock whose hyper-connections run in the fused kernels.

    mHC: three kernel calls (autograd nodes) per block: read-in, then the attention's write-back merged with the
    FFN's read-in, then the FFN's write-back. HC (unconstrained): A, B, C from the PyTorch code, write-backs fused."""

    def __init__(self, *args, cpp_nodes: bool = True, **kwargs):
        super().__init__(*args, **kwargs)
        self.cpp_nodes = bool(cpp_nodes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.residual == "plain" or not supported(x):
            return super().forward(x)
        nodes = self.cpp_nodes
        if self.residual == "mhc":
            inp, mix, post = pre(self.attn_hc, x, nodes)
            x, inp, mix, post = combine_then_pre(x, self.attn(self.attn_norm(inp)), mix, post, self.ffn_hc, nodes)
        else:
            inp, mix, post = self.attn_hc(x)
            x = combine(x, self.attn(self.attn_norm(inp)), mix, post, nodes)
            inp, mix, post = self.ffn_hc(x)
        return combine(x, self.ffn(self.ffn_norm(inp)), mix, post, nodes)


class FusedStreamLM(mhc.StreamLM):
    """mhc.StreamLM built from FusedStreamBlocks. With mHC each block's last write-back is also merged with the next
    block's read-in: 2 kernel calls (autograd nodes) per block where a block on its own needs 3."""

    def __init__(self, *args, cpp_nodes: bool = True, **kwargs):
        super().__init__(*args, **kwargs)
        self.cpp_nodes = bool(cpp_nodes)
        # the same modules and weights (so the same initialisation as StreamLM's for a seed); forward: the kernels
        for block in self.blocks:
            block.__class__, block.cpp_nodes = FusedStreamBlock, self.cpp_nodes

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        if self.residual != "mhc" or idx.dim() != 2:
            return super().forward(idx, targets)       # the blocks are FusedStreamBlocks; the parent checks idx
        x = self.embed(idx).unsqueeze(2).expand(-1, -1, self.n_streams, -1).contiguous()
        if not supported(x):
            return super().forward(idx, targets)
        x = self.hc_head(_stack(self.blocks, x, self.cpp_nodes))
        logits = self.head(self.norm(x))
        loss = None if targets is None else F.cross_entropy(logits.flatten(0, 1), targets.flatten())
        return logits, loss


def _stack(blocks, x: torch.Tensor, cpp_nodes: bool) -> torch.Tensor:
    """mHC StreamBlocks through the fused kernels, each write-back merged with the next read-in, also across
    blocks. The same operations as calling the blocks one after the other."""
    inp, mix, post = pre(blocks[0].attn_hc, x, cpp_nodes)
    for i, block in enumerate(blocks):
        x, inp, mix, post = combine_then_pre(x, block.attn(block.attn_norm(inp)), mix, post, block.ffn_hc, cpp_nodes)
        out = block.ffn(block.ffn_norm(inp))
        if i + 1 < len(blocks):
            x, inp, mix, post = combine_then_pre(x, out, mix, post, blocks[i + 1].attn_hc, cpp_nodes)
        else:
            x = combine(x, out, mix, post, cpp_nodes)
    return x
