"""A tiny analytic scene with exact depth and cameras, for testing RPE and the eval command.

The world is the textured plane Z = plane_z + slope * X (OpenCV world axes); its colour
is a smooth sum of sinusoids of the world coordinates. Each camera looks roughly along +Z;
every pixel's ray is intersected with the plane analytically, so frames, depth, intrinsics
and camera-to-world poses agree exactly.
"""
from __future__ import annotations

import math

import torch


def yaw_matrix(angle_rad: float) -> torch.Tensor:
    """Rotation about the vertical (y) axis."""
    c, s = math.cos(angle_rad), math.sin(angle_rad)
    return torch.tensor([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]], dtype=torch.float64)


def _texture(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    r = 0.5 + 0.2 * torch.sin(7.0 * x + 2.0 * y) + 0.15 * torch.cos(9.0 * y - 3.0 * x) + 0.1 * torch.sin(5.0 * (x + y))
    g = 0.5 + 0.2 * torch.cos(6.0 * x - 4.0 * y) + 0.15 * torch.sin(8.0 * y + 1.0) + 0.1 * torch.cos(11.0 * x)
    b = 0.5 + 0.2 * torch.sin(10.0 * y + 3.0 * x) + 0.15 * torch.cos(5.0 * x + 2.0) + 0.1 * torch.sin(7.0 * (x - y))
    return torch.stack([r, g, b]).clamp(0, 1)


def camera_path(frames: int, step: float = 0.08, yaw_step_deg: float = 0.5) -> torch.Tensor:
    """c2w [T, 4, 4]: sideways translation with a slow yaw."""
    poses = torch.eye(4, dtype=torch.float64).repeat(frames, 1, 1)
    for t in range(frames):
        poses[t, :3, :3] = yaw_matrix(math.radians(yaw_step_deg * t))
        poses[t, 0, 3] = step * t
        poses[t, 1, 3] = 0.3 * step * t
    return poses


def render_plane_scene(
    c2w: torch.Tensor,
    height: int = 48,
    width: int = 64,
    focal: float = 60.0,
    plane_z: float = 4.0,
    slope: float = 0.3,
) -> dict:
    """Render frames [T, 3, H, W] in [0, 1] with depth [T, H, W], intrinsics [T, 3, 3], c2w."""
    t = c2w.shape[0]
    k = torch.tensor([[focal, 0, (width - 1) / 2], [0, focal, (height - 1) / 2], [0, 0, 1]], dtype=torch.float64)
    ys, xs = torch.meshgrid(torch.arange(height, dtype=torch.float64), torch.arange(width, dtype=torch.float64), indexing="ij")
    rays_cam = torch.linalg.inv(k) @ torch.stack([xs, ys, torch.ones_like(xs)]).reshape(3, -1)  # z = 1
    normal = torch.tensor([-slope, 0.0, 1.0], dtype=torch.float64)  # plane: normal . X = plane_z
    frames, depths = [], []
    for pose in c2w.to(torch.float64):
        origin, rays_world = pose[:3, 3], pose[:3, :3] @ rays_cam
        distance = (plane_z - normal @ origin) / (normal @ rays_world)  # z-depth, since ray z = 1
        points = origin[:, None] + rays_world * distance
        frames.append(_texture(points[0], points[1]).reshape(3, height, width))
        depths.append(distance.reshape(height, width))
    return {
        "frames": torch.stack(frames).float(),
        "depth": torch.stack(depths).float(),
        "intrinsics": k.float().expand(t, 3, 3).clone(),
        "c2w": c2w.float(),
    }
