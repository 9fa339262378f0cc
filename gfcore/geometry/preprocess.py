"""Resizing frames to VGGT's input size (518), on tensors and on any device.

Modes:
- "square": resize to size x size, ignoring the aspect ratio (what Geometry Forcing does).
- "crop": VGGT's own "crop" preprocessing: width -> size, height -> the same scale rounded to
  a multiple of the patch size; a height above `size` is centre-cropped to `size`.
- "pad": VGGT's "pad" preprocessing: the longer side -> size, the other scaled and rounded to
  a multiple of the patch size, then centred on a size x size canvas padded with white (1.0).
Resizing is bicubic with antialiasing (close to PIL's BICUBIC that VGGT uses), clamped to [0, 1].
"""
from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F

RESIZE_MODES = ("square", "crop", "pad")


def target_size(height: int, width: int, mode: str, size: int = 518, patch: int = 14) -> Tuple[int, int]:
    """(H, W) after resizing (before any crop or pad)."""
    if mode == "square":
        return size, size
    if mode == "crop":
        return max(patch, int(round(height * size / width / patch)) * patch), size
    if mode == "pad":
        if width >= height:
            return max(patch, int(round(height * size / width / patch)) * patch), size
        return size, max(patch, int(round(width * size / height / patch)) * patch)
    raise ValueError(f"resize mode {mode!r} is not one of {RESIZE_MODES}")


def resize_for_vggt(frames: torch.Tensor, mode: str = "square", size: int = 518, patch: int = 14) -> torch.Tensor:
    """frames [N, 3, H, W] in [0, 1] -> [N, 3, H', W'] with H', W' multiples of `patch`."""
    if frames.dim() != 4 or frames.shape[1] != 3:
        raise ValueError(f"frames must be [N, 3, H, W], got {tuple(frames.shape)}")
    if size % patch:
        raise ValueError(f"size={size} must be a multiple of patch={patch}")
    height, width = frames.shape[-2:]
    new_h, new_w = target_size(height, width, mode, size, patch)
    out = frames
    if (new_h, new_w) != (height, width):
        out = F.interpolate(frames.float(), size=(new_h, new_w), mode="bicubic", antialias=True,
                            align_corners=False).clamp_(0, 1).to(frames.dtype)
    if mode == "crop" and new_h > size:
        top = (new_h - size) // 2
        out = out[..., top:top + size, :]
    elif mode == "pad" and (new_h, new_w) != (size, size):
        pad_h, pad_w = size - new_h, size - new_w
        out = F.pad(out, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2), value=1.0)
    return out
