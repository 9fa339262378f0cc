"""Rotary position tables (rotate-half layout): 1-D over frames, 2-D over the patch grid."""
from __future__ import annotations

from typing import Tuple

import torch


def rope_1d(positions: torch.Tensor, dim: int, base: float = 10000.0) -> Tuple[torch.Tensor, torch.Tensor]:
    """cos, sin tables [len(positions), dim] for float positions; dim must be even."""
    if dim % 2:
        raise ValueError(f"rope dim must be even, got {dim}")
    inv_freq = base ** (-torch.arange(0, dim, 2, dtype=torch.float64, device=positions.device) / dim)
    angles = positions.double()[:, None] * inv_freq[None]  # [N, dim / 2]
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos().float(), angles.sin().float()


def rope_2d(height: int, width: int, dim: int, device=None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Tables [height * width, dim] for a row-major patch grid: the first half of each
    rotate-half pair encodes the row, the second the column (dim divisible by 4)."""
    if dim % 4:
        raise ValueError(f"2-D rope needs a head dim divisible by 4, got {dim}")
    rows = torch.arange(height, device=device).repeat_interleave(width)
    cols = torch.arange(width, device=device).repeat(height)
    cos_r, sin_r = rope_1d(rows, dim // 2)
    cos_c, sin_c = rope_1d(cols, dim // 2)
    half = dim // 4  # each 1-D table is [N, dim / 2] = two copies of dim / 4 frequencies

    def merge(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        # rotate_half pairs channel i with i + dim / 2: keep rows and columns in matching halves.
        return torch.cat([a[:, :half], b[:, :half], a[:, half:], b[:, half:]], dim=-1)

    return merge(cos_r, cos_c), merge(sin_r, sin_c)
