"""Vectorised ray casting of procedural scenes in numpy: every pixel of every frame at once.

A scene is the inside of an axis-aligned room (floor, ceiling, four walls) holding axis-aligned
boxes and spheres. Intersections are analytic (slab test, quadratic); surfaces carry procedural
textures (checker x value noise, two colours per material) and view-independent Lambert shading,
so a surface point has the same colour in every frame: what photometric reprojection needs.
World axes: y up. Cameras: OpenCV (x right, y down, z forward).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Scene", "render"]

_EPS = 1e-4
_LIGHT = np.array([0.35, 0.85, 0.4]) / np.linalg.norm([0.35, 0.85, 0.4])


@dataclass
class Scene:
    """Geometry and materials. Material ids index the rows of colors_a, colors_b, texture_scale."""

    room_lo: np.ndarray  # [3]
    room_hi: np.ndarray  # [3]
    room_materials: np.ndarray  # int [6]: faces -x, +x, -y (floor), +y (ceiling), -z, +z
    box_lo: np.ndarray  # [B, 3]
    box_hi: np.ndarray  # [B, 3]
    box_materials: np.ndarray  # int [B]
    sphere_centers: np.ndarray  # [S, 3]
    sphere_radii: np.ndarray  # [S]
    sphere_materials: np.ndarray  # int [S]
    colors_a: np.ndarray  # [M, 3] in [0, 1]
    colors_b: np.ndarray  # [M, 3]
    texture_scale: np.ndarray  # [M] checker squares per metre
    noise: np.ndarray  # [N, N] value-noise table in [0, 1]
    detail: float = 1.0  # multiplies every texture frequency (checker and noise); < 1: coarser textures


def _room_exit(origin: np.ndarray, dirs: np.ndarray, lo: np.ndarray, hi: np.ndarray):
    """Distance to where rays from inside the room leave it, and which of the 6 faces they hit."""
    with np.errstate(divide="ignore", invalid="ignore"):
        bound = np.where(dirs > 0, hi, lo)
        t_axis = (bound - origin) / dirs
    t_axis = np.where(np.abs(dirs) < 1e-12, np.inf, t_axis)
    axis = np.argmin(t_axis, axis=-1)
    t = np.take_along_axis(t_axis, axis[:, None], -1)[:, 0]
    positive = np.take_along_axis(dirs, axis[:, None], -1)[:, 0] > 0
    face = 2 * axis + positive.astype(np.int64)
    normal = np.zeros_like(dirs)
    # The inward normal points against the ray along the exit axis.
    np.put_along_axis(normal, axis[:, None], np.where(positive, -1.0, 1.0)[:, None].astype(dirs.dtype), -1)
    return t, face, normal


def _hit_box(origin, dirs, lo, hi):
    with np.errstate(divide="ignore", invalid="ignore"):
        t1 = (lo - origin) / dirs
        t2 = (hi - origin) / dirs
    t_near = np.minimum(t1, t2)
    t_far = np.maximum(t1, t2)
    # Rays parallel to a slab: inside it the slab never limits, outside it there is no hit.
    parallel = np.abs(dirs) < 1e-12
    inside = (origin >= lo) & (origin <= hi)
    t_near = np.where(parallel, np.where(inside, -np.inf, np.inf), t_near)
    t_far = np.where(parallel, np.where(inside, np.inf, -np.inf), t_far)
    axis = np.argmax(t_near, axis=-1)
    t_enter = np.take_along_axis(t_near, axis[:, None], -1)[:, 0]
    t_exit = t_far.min(axis=-1)
    hit = (t_enter <= t_exit) & (t_enter > _EPS)
    return np.where(hit, t_enter, np.inf), axis


def _hit_sphere(origin, dirs, center, radius):
    oc = origin - center
    a = np.einsum("ij,ij->i", dirs, dirs)
    b = 2.0 * (dirs @ oc)
    c = oc @ oc - radius * radius
    disc = b * b - 4.0 * a * c
    with np.errstate(invalid="ignore"):
        t = (-b - np.sqrt(disc)) / (2.0 * a)
    return np.where((disc >= 0) & (t > _EPS), t, np.inf)


def _sample_noise(table: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Bilinear lookup in a tiling value-noise table at continuous coordinates (u, v)."""
    n = table.shape[0]
    u0 = np.floor(u)
    v0 = np.floor(v)
    fu = u - u0
    fv = v - v0
    i0 = u0.astype(np.int64) % n
    j0 = v0.astype(np.int64) % n
    i1 = (i0 + 1) % n
    j1 = (j0 + 1) % n
    top = table[j0, i0] * (1 - fu) + table[j0, i1] * fu
    bottom = table[j1, i0] * (1 - fu) + table[j1, i1] * fu
    return top * (1 - fv) + bottom * fv


def _shade(scene: Scene, points: np.ndarray, normals: np.ndarray, materials: np.ndarray) -> np.ndarray:
    # Texture coordinates: the two world coordinates across the dominant normal axis, so a
    # point's texture depends only on where it is, never on the camera.
    dominant = np.argmax(np.abs(normals), axis=-1)
    u = np.where(dominant == 0, points[:, 2], points[:, 0])
    v = np.where(dominant == 1, points[:, 2], points[:, 1])
    scale = scene.texture_scale[materials] * scene.detail
    checker = (np.floor(u * scale) + np.floor(v * scale)) % 2
    offset = materials * 17.0  # decorrelates the noise of different materials
    fine = _sample_noise(scene.noise, u * 6.0 * scene.detail + offset, v * 6.0 * scene.detail - offset)
    coarse = _sample_noise(scene.noise, u * 1.5 * scene.detail - offset, v * 1.5 * scene.detail + 2 * offset)
    pattern = np.clip(0.45 * checker + 0.35 * fine + 0.3 * coarse, 0.0, 1.0)[:, None]
    albedo = scene.colors_a[materials] * (1 - pattern) + scene.colors_b[materials] * pattern
    lambert = 0.55 + 0.45 * np.abs(normals @ _LIGHT)[:, None]
    return albedo * lambert


def render(scene: Scene, intrinsics: np.ndarray, c2w: np.ndarray, height: int, width: int):
    """Render frames of a scene.

    Args:
        intrinsics: [3, 3] or [T, 3, 3] pixel intrinsics; c2w: [T, 4, 4] camera-to-world.
    Returns:
        (rgb uint8 [T, H, W, 3], depth float32 [T, H, W]): depth is the z-depth along the
        camera axis, i.e. the z of the hit point in camera coordinates.
    """
    c2w = np.asarray(c2w, dtype=np.float64)
    num_frames = c2w.shape[0]
    K = np.broadcast_to(np.asarray(intrinsics, dtype=np.float64), (num_frames, 3, 3))
    vv, uu = np.meshgrid(np.arange(height) + 0.5, np.arange(width) + 0.5, indexing="ij")
    pix = np.stack([uu, vv, np.ones_like(uu)], -1).reshape(-1, 3)
    # Camera-space directions with z = 1: the ray parameter t of a hit is then its z-depth.
    dirs_cam = np.einsum("tij,pj->tpi", np.linalg.inv(K), pix)
    dirs = np.einsum("tij,tpj->tpi", c2w[:, :3, :3], dirs_cam).reshape(-1, 3)
    origin_per_ray = np.repeat(c2w[:, :3, 3], height * width, axis=0)

    depth, face, normals = _room_exit(origin_per_ray, dirs, scene.room_lo, scene.room_hi)
    materials = scene.room_materials[face]
    for lo, hi, material in zip(scene.box_lo, scene.box_hi, scene.box_materials):
        t, axis = _hit_box(origin_per_ray, dirs, lo, hi)
        closer = t < depth
        if closer.any():
            depth = np.where(closer, t, depth)
            materials = np.where(closer, material, materials)
            box_normal = np.zeros_like(dirs)
            sign = -np.sign(np.take_along_axis(dirs, axis[:, None], -1))
            np.put_along_axis(box_normal, axis[:, None], sign, -1)
            normals = np.where(closer[:, None], box_normal, normals)
    for center, radius, material in zip(scene.sphere_centers, scene.sphere_radii, scene.sphere_materials):
        # The quadratic's coefficients use one origin, so test the rays of each frame in turn.
        t = np.concatenate([
            _hit_sphere(c2w[i, :3, 3], dirs[i * height * width:(i + 1) * height * width], center, radius)
            for i in range(num_frames)
        ])
        closer = t < depth
        if closer.any():
            depth = np.where(closer, t, depth)
            materials = np.where(closer, material, materials)
            hit_points = origin_per_ray[closer] + t[closer, None] * dirs[closer]
            normals[closer] = (hit_points - center) / radius
    points = origin_per_ray + depth[:, None] * dirs
    rgb = _shade(scene, points, normals, materials)
    rgb = (np.clip(rgb, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    return rgb.reshape(num_frames, height, width, 3), depth.reshape(num_frames, height, width).astype(np.float32)
