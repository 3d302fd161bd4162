"""Rotary position embeddings (RoPE; Su et al. 2021, arXiv 2104.09864).

RoPE rotates pairs of features by an angle proportional to the position, so the dot product of a rotated query
and a rotated key depends only on their distance. Frequencies: theta_j = base^(-2j/d) for j = 0..d/2-1.

Two memory layouts exist for "which features form a pair":
  * rotate-half (GPT-NeoX, transformers): pair j is (x[j], x[j + d/2])
  * interleaved (original paper, DeepSeek's own inference code): pair j is (x[2j], x[2j+1])
They compute the same thing up to a fixed permutation of the features.
"""
from __future__ import annotations

import torch


def rope_frequencies(dim: int, base: float = 10000.0, dtype=torch.float32) -> torch.Tensor:
    """theta_j = base^(-2j/dim), shape (dim/2,)."""
    if dim <= 0 or dim % 2:
        raise ValueError(f"rope dim must be a positive even number, got {dim}")
    return base ** (-torch.arange(0, dim, 2, dtype=torch.float64) / dim).to(dtype)


def rope_cos_sin(positions, dim: int, base: float = 10000.0, dtype=torch.float32):
    """cos and sin of position * theta_j, each (T, dim) in rotate-half layout (the dim/2 angles written twice)."""
    positions = torch.as_tensor(positions)
    freqs = rope_frequencies(dim, base, torch.float64).to(positions.device)   # positions' device, CUDA too
    angles = positions.to(torch.float64)[:, None] * freqs[None, :]          # (T, dim/2)
    angles = torch.cat([angles, angles], dim=-1)                            # (T, dim)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """(x1, x2) -> (-x2, x1) on the two halves of the last dim."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, interleaved: bool = False) -> torch.Tensor:
    """Rotate x (..., T, dim) by the angles in cos/sin (T, dim, rotate-half layout from rope_cos_sin).

    Rotating the pair (a, b) by angle phi gives (a cos phi - b sin phi, a sin phi + b cos phi).
    """
    if x.shape[-1] != cos.shape[-1]:
        raise ValueError(f"x's last dim {x.shape[-1]} does not match the rope dim {cos.shape[-1]}")
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    if not interleaved:
        return x * cos + rotate_half(x) * sin
    # Interleaved pairs (x[2j], x[2j+1]) use angle j: take the first half of the angles, repeat each twice.
    half = cos.shape[-1] // 2
    cos_i = cos[..., :half].repeat_interleave(2, dim=-1)
    sin_i = sin[..., :half].repeat_interleave(2, dim=-1)
    a, b = x[..., 0::2], x[..., 1::2]
    rotated = torch.stack([-b, a], dim=-1).flatten(-2)                      # (-x1, x0, -x3, x2, ...)
    return x * cos_i + rotated * sin_i


def interleaved_to_half(x: torch.Tensor) -> torch.Tensor:
    """Permute features from interleaved pairs to rotate-half layout: (x0, x1, x2, x3) -> (x0, x2 | x1, x3)."""
    return torch.cat([x[..., 0::2], x[..., 1::2]], dim=-1)
