"""The DFoT pose conditioning: per-pixel camera rays relative to the first frame, mapped to 180
channels by NeRF-style sinusoids.

Pose vectors are stored as 16 numbers per frame: (fx, fy, px, py) of the intrinsics, normalised
by the frame size (pixel coordinates run over [0, 1]), then the 3x4 world-to-camera matrix
[R | t] flattened row by row.
"""
from __future__ import annotations

import math
from typing import Tuple

import torch

FREQUENCIES = 15  # per coordinate, for the origin and for the direction


def relative_to_first(rotation: torch.Tensor, translation: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """World-to-camera poses [B, T, 3, 3], [B, T, 3] re-expressed with the first frame's camera as
    the world: R_i R_0^T and t_i - (R_i R_0^T) t_0."""
    rotation = torch.einsum("btij,bkj->btik", rotation, rotation[:, 0])
    translation = translation - torch.einsum("btij,bj->bti", rotation, translation[:, 0])
    return rotation, translation


def camera_rays(pose: torch.Tensor, height: int, width: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Ray origins and (unnormalised, z = 1 in the camera) directions in the first frame's camera
    coordinates, each [B, T, H, W, 3], through pixel centres.

    The normalised intrinsics are scaled by the width for x (fx, px) and by the height for y
    (fy, py); the authors' code only handles square frames, where both are the resolution.
    """
    if pose.ndim != 3 or pose.shape[-1] != 16:
        raise ValueError(f"pose must be [B, T, 16] (4 intrinsics + 3x4 world-to-camera), got {list(pose.shape)}")
    intrinsics, extrinsics = pose.split([4, 12], dim=-1)
    extrinsics = extrinsics.unflatten(-1, (3, 4))
    rotation, translation = relative_to_first(extrinsics[..., :3], extrinsics[..., 3])
    dtype, device = pose.dtype, pose.device
    u = torch.linspace(0, width - 1, width, dtype=dtype, device=device) + 0.5
    v = torch.linspace(0, height - 1, height, dtype=dtype, device=device) + 0.5
    fx, fy, px, py = intrinsics.unbind(-1)
    fx, px = (a[..., None, None] * width for a in (fx, px))
    fy, py = (a[..., None, None] * height for a in (fy, py))
    x = (u.view(1, 1, 1, width) - px) / fx
    y = (v.view(1, 1, height, 1) - py) / fy
    x, y = torch.broadcast_tensors(x, y)
    camera_dirs = torch.stack([x, y, torch.ones_like(x)], dim=-1)  # [B, T, H, W, 3]
    to_world = rotation.transpose(-1, -2)  # camera-to-world rotation
    directions = torch.einsum("btij,bthwj->bthwi", to_world, camera_dirs)
    origins = -torch.einsum("btij,btj->bti", to_world, translation)
    origins = origins[:, :, None, None, :].expand_as(directions)
    return origins, directions


def sinusoids(values: torch.Tensor, frequencies: int = FREQUENCIES) -> torch.Tensor:
    """[..., 3] -> [..., 6 * frequencies]: sin(v * 2^k * pi) for each coordinate (k fastest), then
    the same shifted by pi/2 (cosines)."""
    scale = 2 ** torch.linspace(0, frequencies - 1, frequencies, dtype=values.dtype, device=values.device) * math.pi
    angles = (values[..., None] * scale).flatten(-2)
    return torch.sin(torch.cat([angles, angles + 0.5 * math.pi], dim=-1))


def ray_encoding(pose: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """[B, T, 16] poses -> [B, T, 180, H, W] ray map, the DFoT/Geometry Forcing pose input.

    Poses are made relative to each clip's first frame; channels are the sinusoids of the ray
    origin (90) then of the direction (90). Computed in float32 (float64 poses stay float64),
    like the authors' code: the highest frequencies (2^14 pi) amplify the last bits of the rays,
    so only the same arithmetic reproduces them exactly.
    """
    work = torch.float64 if pose.dtype == torch.float64 else torch.float32
    origins, directions = camera_rays(pose.to(work), height, width)
    encoding = torch.cat([sinusoids(origins), sinusoids(directions)], dim=-1)
    return encoding.permute(0, 1, 4, 2, 3)
