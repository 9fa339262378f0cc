"""Camera geometry helpers: VGGT pose encoding <-> OpenCV cameras, SE(3) inverse, unprojection.

Extrinsics are camera-from-world [..., 3, 4] (OpenCV: x right, y down, z forward). The pose
encoding is 9 numbers: translation (3), rotation quaternion XYZW (scalar last), fov_h, fov_w.
"""
from __future__ import annotations

from typing import Tuple

import torch


def _check_last_dims(name: str, tensor: torch.Tensor, dims: Tuple[int, ...]) -> None:
    if tensor.dim() < len(dims) or tuple(tensor.shape[-len(dims):]) != dims:
        raise ValueError(f"{name} must have trailing shape {list(dims)}, got {tuple(tensor.shape)}")


def quaternion_to_matrix(quat: torch.Tensor) -> torch.Tensor:
    """XYZW quaternions [..., 4] (any norm) -> rotation matrices [..., 3, 3]."""
    _check_last_dims("quat", quat, (4,))
    x, y, z, w = quat.unbind(-1)
    s = 2.0 / (quat * quat).sum(-1)
    rows = [
        1 - s * (y * y + z * z), s * (x * y - z * w), s * (x * z + y * w),
        s * (x * y + z * w), 1 - s * (x * x + z * z), s * (y * z - x * w),
        s * (x * z - y * w), s * (y * z + x * w), 1 - s * (x * x + y * y),
    ]
    return torch.stack(rows, dim=-1).reshape(quat.shape[:-1] + (3, 3))


def matrix_to_quaternion(rot: torch.Tensor) -> torch.Tensor:
    """Rotation matrices [..., 3, 3] -> unit XYZW quaternions with w >= 0.

    Builds the four candidate quaternions (each best conditioned when its own component is
    largest) and keeps, per matrix, the one with the largest denominator.
    """
    _check_last_dims("rot", rot, (3, 3))
    m = rot
    m00, m11, m22 = m[..., 0, 0], m[..., 1, 1], m[..., 2, 2]
    # 4 * component^2 for w, x, y, z
    squares = torch.stack([1 + m00 + m11 + m22, 1 + m00 - m11 - m22,
                           1 - m00 + m11 - m22, 1 - m00 - m11 + m22], dim=-1)
    roots = squares.clamp_min(0).sqrt()  # 2 * |component|
    d21, d02, d10 = m[..., 2, 1] - m[..., 1, 2], m[..., 0, 2] - m[..., 2, 0], m[..., 1, 0] - m[..., 0, 1]
    s21, s02, s10 = m[..., 2, 1] + m[..., 1, 2], m[..., 0, 2] + m[..., 2, 0], m[..., 1, 0] + m[..., 0, 1]
    # candidates in (w, x, y, z), each scaled by 2 * its own leading component
    candidates = torch.stack([
        torch.stack([roots[..., 0] ** 2, d21, d02, d10], dim=-1),
        torch.stack([d21, roots[..., 1] ** 2, s10, s02], dim=-1),
        torch.stack([d02, s10, roots[..., 2] ** 2, s21], dim=-1),
        torch.stack([d10, s02, s21, roots[..., 3] ** 2], dim=-1),
    ], dim=-2)
    candidates = candidates / (2.0 * roots.clamp_min(0.1))[..., None]
    best = roots.argmax(dim=-1)
    wxyz = torch.gather(candidates, -2, best[..., None, None].expand(best.shape + (1, 4))).squeeze(-2)
    wxyz = torch.nn.functional.normalize(wxyz, dim=-1)
    xyzw = torch.cat([wxyz[..., 1:], wxyz[..., :1]], dim=-1)
    return torch.where(xyzw[..., 3:] < 0, -xyzw, xyzw)


def pose_encoding_to_cameras(encoding: torch.Tensor, image_hw: Tuple[int, int]) -> Tuple[torch.Tensor, torch.Tensor]:
    """[B, S, 9] pose encoding -> (extrinsics [B, S, 3, 4], intrinsics [B, S, 3, 3]).

    fy = (H/2) / tan(fov_h/2), fx = (W/2) / tan(fov_w/2), principal point at (W/2, H/2).
    """
    if encoding.dim() != 3 or encoding.shape[-1] != 9:
        raise ValueError(f"encoding must be [B, S, 9], got {tuple(encoding.shape)}")
    height, width = image_hw
    rot = quaternion_to_matrix(encoding[..., 3:7])
    extrinsics = torch.cat([rot, encoding[..., :3, None]], dim=-1)
    fy = (height / 2.0) / torch.tan(encoding[..., 7] / 2.0)
    fx = (width / 2.0) / torch.tan(encoding[..., 8] / 2.0)
    intrinsics = encoding.new_zeros(encoding.shape[:2] + (3, 3))
    intrinsics[..., 0, 0] = fx
    intrinsics[..., 1, 1] = fy
    intrinsics[..., 0, 2] = width / 2.0
    intrinsics[..., 1, 2] = height / 2.0
    intrinsics[..., 2, 2] = 1.0
    return extrinsics, intrinsics


def cameras_to_pose_encoding(extrinsics: torch.Tensor, intrinsics: torch.Tensor,
                             image_hw: Tuple[int, int]) -> torch.Tensor:
    """(extrinsics [B, S, 3, 4], intrinsics [B, S, 3, 3]) -> float32 pose encoding [B, S, 9]."""
    if extrinsics.dim() != 4 or tuple(extrinsics.shape[-2:]) != (3, 4):
        raise ValueError(f"extrinsics must be [B, S, 3, 4], got {tuple(extrinsics.shape)}")
    if intrinsics.shape[:2] != extrinsics.shape[:2] or tuple(intrinsics.shape[-2:]) != (3, 3):
        raise ValueError(f"intrinsics must be [B, S, 3, 3] matching extrinsics, got {tuple(intrinsics.shape)}")
    height, width = image_hw
    quat = matrix_to_quaternion(extrinsics[..., :3, :3])
    fov_h = 2 * torch.atan((height / 2) / intrinsics[..., 1, 1])
    fov_w = 2 * torch.atan((width / 2) / intrinsics[..., 0, 0])
    return torch.cat([extrinsics[..., :3, 3], quat, fov_h[..., None], fov_w[..., None]], dim=-1).float()


def se3_inverse(transform: torch.Tensor) -> torch.Tensor:
    """Closed-form inverse of rigid transforms [..., 3, 4] or [..., 4, 4] -> [..., 4, 4]: (R^T, -R^T t)."""
    if transform.dim() < 2 or tuple(transform.shape[-2:]) not in ((3, 4), (4, 4)):
        raise ValueError(f"transform must be [..., 3, 4] or [..., 4, 4], got {tuple(transform.shape)}")
    rot_t = transform[..., :3, :3].transpose(-1, -2)
    trans = -(rot_t @ transform[..., :3, 3:])
    bottom = torch.zeros(transform.shape[:-2] + (1, 4), dtype=transform.dtype, device=transform.device)
    bottom[..., 0, 3] = 1
    return torch.cat([torch.cat([rot_t, trans], dim=-1), bottom], dim=-2)


def unproject_depth(depth: torch.Tensor, extrinsics: torch.Tensor, intrinsics: torch.Tensor) -> torch.Tensor:
    """Depth maps [..., H, W] (or [..., H, W, 1]) -> world points [..., H, W, 3], in float64.

    Pixel (u, v) uses integer coordinates (column, row), no half-pixel offset:
    x_cam = (u - cx) z / fx, y_cam = (v - cy) z / fy, then world = R^T (x_cam - t).
    """
    if depth.dim() >= 3 and depth.shape[-1] == 1 and depth.shape[:-3] == extrinsics.shape[:-2] \
            and depth.dim() == extrinsics.dim() + 1:
        depth = depth[..., 0]
    batch_shape = depth.shape[:-2]
    if extrinsics.shape[:-2] != batch_shape or tuple(extrinsics.shape[-2:]) not in ((3, 4), (4, 4)):
        raise ValueError(f"extrinsics must be {list(batch_shape)} + [3, 4], got {tuple(extrinsics.shape)}")
    if intrinsics.shape != batch_shape + (3, 3):
        raise ValueError(f"intrinsics must be {list(batch_shape)} + [3, 3], got {tuple(intrinsics.shape)}")
    depth = depth.double()
    k = intrinsics.double()
    height, width = depth.shape[-2:]
    v, u = torch.meshgrid(torch.arange(height, dtype=torch.float64, device=depth.device),
                          torch.arange(width, dtype=torch.float64, device=depth.device), indexing="ij")
    fx, fy = k[..., 0, 0, None, None], k[..., 1, 1, None, None]
    cx, cy = k[..., 0, 2, None, None], k[..., 1, 2, None, None]
    cam = torch.stack([(u - cx) * depth / fx, (v - cy) * depth / fy, depth], dim=-1)
    world_from_cam = se3_inverse(extrinsics.double())
    rot = world_from_cam[..., None, :3, :3]  # broadcast over rows
    trans = world_from_cam[..., None, None, :3, 3]
    return torch.einsum("...ij,...wj->...wi", rot, cam) + trans
