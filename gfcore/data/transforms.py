"""Image-side transforms of a clip that keep its cameras consistent: resize + centre crop, flip."""
from __future__ import annotations

from typing import Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F

from gfcore.data.geometry import resize_crop_geometry, resize_crop_intrinsics

__all__ = ["as_hw", "frames_to_tensor", "resize_crop_frames", "resize_crop_depth", "resize_crop_clip"]


def as_hw(resolution: Union[int, Sequence[int]], name: str = "resolution") -> Tuple[int, int]:
    """An int or (height, width) -> (height, width), both positive."""
    if isinstance(resolution, (int, np.integer)):
        hw = (int(resolution), int(resolution))
    elif isinstance(resolution, (tuple, list)) and len(resolution) == 2:
        hw = (int(resolution[0]), int(resolution[1]))
    else:
        raise ValueError(f"{name} must be an int or (height, width), got {resolution!r}")
    if min(hw) <= 0:
        raise ValueError(f"{name} must be positive, got {resolution!r}")
    return hw


def frames_to_tensor(frames: np.ndarray) -> torch.Tensor:
    """uint8 [T, H, W, 3] -> float32 [T, 3, H, W] in [-1, 1]."""
    tensor = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float()
    return tensor / 127.5 - 1.0


def resize_crop_frames(frames: torch.Tensor, out_hw: Tuple[int, int]) -> torch.Tensor:
    """[T, C, H, W] float -> [T, C, H_out, W_out]: antialiased bilinear resize to cover, centre crop."""
    in_hw = tuple(frames.shape[-2:])
    if in_hw == tuple(out_hw):
        return frames
    (rh, rw), (top, left) = resize_crop_geometry(in_hw, out_hw)
    if (rh, rw) != in_hw:
        # align_corners=False maps pixel centres (u + 0.5) * scale, as resize_crop_intrinsics assumes.
        frames = F.interpolate(frames, size=(rh, rw), mode="bilinear", align_corners=False, antialias=True)
    return frames[..., top:top + out_hw[0], left:left + out_hw[1]].clamp(-1.0, 1.0)


def resize_crop_depth(depth: torch.Tensor, out_hw: Tuple[int, int]) -> torch.Tensor:
    """[T, H, W] depth -> [T, H_out, W_out], nearest sampling (never blends across depth edges)."""
    in_hw = tuple(depth.shape[-2:])
    if in_hw == tuple(out_hw):
        return depth
    (rh, rw), (top, left) = resize_crop_geometry(in_hw, out_hw)
    resized = F.interpolate(depth[:, None], size=(rh, rw), mode="nearest-exact")[:, 0]
    return resized[..., top:top + out_hw[0], left:left + out_hw[1]]


def resize_crop_clip(
    frames: torch.Tensor, K: torch.Tensor, out_hw: Tuple[int, int], depth: Optional[torch.Tensor] = None
):
    """Resize + crop frames [T, 3, H, W] (and depth [T, H, W]) and adjust K [T, 3, 3] to match."""
    in_hw = tuple(frames.shape[-2:])
    K_out = resize_crop_intrinsics(K, in_hw, out_hw)
    depth_out = None if depth is None else resize_crop_depth(depth, out_hw)
    return resize_crop_frames(frames, out_hw), K_out, depth_out
