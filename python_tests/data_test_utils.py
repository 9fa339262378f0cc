"""Helpers for the data tests: independent (numpy) reprojection and tiny test clips."""
import os

import numpy as np

REAL_CAMERA_DIR = os.path.join(os.path.dirname(__file__), "data", "re10k")
REAL_CAMERA_KEYS = sorted(name[:-4] for name in os.listdir(REAL_CAMERA_DIR) if name.endswith(".txt"))


def reproject(depth0, K0, K1, c2w0, c2w1):
    """Where each pixel centre of frame 0 (with z-depth depth0 [H, W]) lands in frame 1.

    Returns (u1, v1, z1), each [H, W]: pixel coordinates (pixel u covers [u, u+1)) and the
    z-depth in camera 1. Written with plain numpy, independently of gfcore.data.geometry.
    """
    depth0 = np.asarray(depth0, dtype=np.float64)
    height, width = depth0.shape
    v, u = np.meshgrid(np.arange(height) + 0.5, np.arange(width) + 0.5, indexing="ij")
    pix = np.stack([u, v, np.ones_like(u)], -1)
    cam0 = (pix @ np.linalg.inv(np.asarray(K0, np.float64)).T) * depth0[..., None]
    world = cam0 @ np.asarray(c2w0, np.float64)[:3, :3].T + np.asarray(c2w0, np.float64)[:3, 3]
    w2c1 = np.linalg.inv(np.asarray(c2w1, np.float64))
    cam1 = world @ w2c1[:3, :3].T + w2c1[:3, 3]
    proj = cam1 @ np.asarray(K1, np.float64).T
    return proj[..., 0] / proj[..., 2], proj[..., 1] / proj[..., 2], cam1[..., 2]


def depth_agreement(depth0, depth1, K0, K1, c2w0, c2w1, rel_tol=0.02):
    """Fraction of frame-0 pixels landing inside frame 1 whose predicted depth matches frame 1's
    depth there, and how many landed inside.

    Frame 1's inverse depth is interpolated bilinearly between pixel centres: on a plane, inverse
    depth is affine in pixel coordinates, so only depth edges and occlusions disagree.
    """
    u1, v1, z1 = reproject(depth0, K0, K1, c2w0, c2w1)
    inv1 = 1.0 / np.asarray(depth1, np.float64)
    height, width = inv1.shape
    x, y = u1 - 0.5, v1 - 0.5
    inside = (x >= 0) & (x <= width - 1) & (y >= 0) & (y <= height - 1) & (z1 > 0)
    x0 = np.clip(np.floor(x).astype(int), 0, width - 2)
    y0 = np.clip(np.floor(y).astype(int), 0, height - 2)
    fx, fy = np.clip(x - x0, 0, 1), np.clip(y - y0, 0, 1)
    inv = (inv1[y0, x0] * (1 - fx) * (1 - fy) + inv1[y0, x0 + 1] * fx * (1 - fy)
           + inv1[y0 + 1, x0] * (1 - fx) * fy + inv1[y0 + 1, x0 + 1] * fx * fy)
    agree = np.abs(inv * z1 - 1.0) < rel_tol
    return (agree[inside].mean() if inside.any() else 0.0), int(inside.sum())


def smooth_frames(num_frames, height, width, seed=0):
    """uint8 frames [T, H, W, 3] with smooth, frame-dependent content (compresses well)."""
    rng = np.random.default_rng(seed)
    v, u = np.meshgrid(np.linspace(0, 1, height), np.linspace(0, 1, width), indexing="ij")
    frames = []
    for t in range(num_frames):
        phase = rng.uniform(0, 2 * np.pi, size=3)
        channels = [0.5 + 0.4 * np.sin(np.pi * (u + 0.5 * (c + 1) * v) + phase[c] + 0.3 * t) for c in range(3)]
        frames.append(np.stack(channels, -1))
    return (np.stack(frames) * 255).round().astype(np.uint8)
