"""Rotate-half RoPE tables for the factorized attention ops.

A table pair (cos, sin) has shape [S, D]: row s holds the angles of position s. Channel d and
d + D/2 form one rotation pair and share an angle, matching rotate_half in the ops.
"""
from typing import Optional, Tuple

import torch


def _inverse_frequencies(num_pairs: int, base: float) -> torch.Tensor:
    return base ** (-torch.arange(num_pairs, dtype=torch.float64) / num_pairs)


def _tables_from_angles(angles: torch.Tensor, dtype: torch.dtype,
                        device: Optional[torch.device]) -> Tuple[torch.Tensor, torch.Tensor]:
    """angles [S, D/2] -> (cos, sin) [S, D] with each angle used by channels d and d + D/2."""
    full = torch.cat((angles, angles), dim=-1)
    return full.cos().to(dtype=dtype, device=device), full.sin().to(dtype=dtype, device=device)


def rope_1d(length: int, head_dim: int, base: float = 10000.0,
            dtype: torch.dtype = torch.float32,
            device: Optional[torch.device] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Tables for positions 0..length-1 (the temporal pass: [T, D])."""
    if head_dim % 2 or head_dim <= 0:
        raise ValueError(f"rope_1d: head_dim must be a positive even number, got {head_dim}")
    if length <= 0:
        raise ValueError(f"rope_1d: length must be positive, got {length}")
    positions = torch.arange(length, dtype=torch.float64)
    angles = positions[:, None] * _inverse_frequencies(head_dim // 2, base)[None, :]
    return _tables_from_angles(angles, dtype, device)


def rope_2d(height: int, width: int, head_dim: int, base: float = 10000.0,
            dtype: torch.dtype = torch.float32,
            device: Optional[torch.device] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Tables for a height x width patch grid in row-major order (the spatial pass: [P, D]).

    The first half of the D/2 rotation pairs encodes the row, the second half the column.
    """
    if head_dim % 4 or head_dim <= 0:
        raise ValueError(f"rope_2d: head_dim must be a positive multiple of 4, got {head_dim}")
    if height <= 0 or width <= 0:
        raise ValueError(f"rope_2d: grid must be positive, got {height} x {width}")
    pairs_per_axis = head_dim // 4
    inv_freq = _inverse_frequencies(pairs_per_axis, base)
    rows = torch.arange(height, dtype=torch.float64).repeat_interleave(width)
    cols = torch.arange(width, dtype=torch.float64).repeat(height)
    angles = torch.cat((rows[:, None] * inv_freq, cols[:, None] * inv_freq), dim=-1)
    return _tables_from_angles(angles, dtype, device)
