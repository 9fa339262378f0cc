"""Camera geometry for the data path: RealEstate10K rows <-> (K, w2c, c2w), image resize/crop/flip
of intrinsics and poses, and Pluecker ray maps for camera conditioning.

Conventions (OpenCV): camera axes x right, y down, z forward; c2w maps camera to world
coordinates; pixel (u, v) of an image covers [u, u+1) x [v, v+1), so its centre is at
(u + 0.5, v + 0.5) and a principal point at the image centre is cx = W / 2.
All functions are batched over leading dimensions.
"""
from __future__ import annotations

from typing import Tuple

import torch

__all__ = [
    "intrinsics_from_normalized",
    "normalized_from_intrinsics",
    "re10k_rows_to_cameras",
    "cameras_to_re10k_rows",
    "dfot_poses_to_cameras",
    "cameras_to_dfot_poses",
    "invert_rigid",
    "relative_to_first",
    "resize_crop_intrinsics",
    "resize_crop_geometry",
    "flip_horizontal",
    "plucker_rays",
]


def _check_last_dims(x: torch.Tensor, shape: Tuple[int, ...], name: str) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if tuple(x.shape[x.dim() - len(shape):]) != shape or x.dim() < len(shape):
        raise ValueError(f"{name} must have shape [..., {', '.join(map(str, shape))}], got {list(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {x.dtype}")


def intrinsics_from_normalized(fxfycxcy: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """[..., 4] (fx, cx over width; fy, cy over height) -> pixel intrinsics K [..., 3, 3]."""
    _check_last_dims(fxfycxcy, (4,), "fxfycxcy")
    fx, fy, cx, cy = fxfycxcy.unbind(-1)
    K = fxfycxcy.new_zeros(fxfycxcy.shape[:-1] + (3, 3))
    K[..., 0, 0] = fx * width
    K[..., 1, 1] = fy * height
    K[..., 0, 2] = cx * width
    K[..., 1, 2] = cy * height
    K[..., 2, 2] = 1.0
    return K


def normalized_from_intrinsics(K: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Pixel intrinsics K [..., 3, 3] -> [..., 4] (fx/W, fy/H, cx/W, cy/H)."""
    _check_last_dims(K, (3, 3), "K")
    return torch.stack(
        [K[..., 0, 0] / width, K[..., 1, 1] / height, K[..., 0, 2] / width, K[..., 1, 2] / height], -1
    )


def invert_rigid(T: torch.Tensor) -> torch.Tensor:
    """Inverse of rigid transforms [..., 4, 4] ([R|t] -> [R^T | -R^T t]), exact for rotations."""
    _check_last_dims(T, (4, 4), "T")
    R = T[..., :3, :3]
    t = T[..., :3, 3:]
    out = torch.zeros_like(T)
    Rt = R.transpose(-1, -2)
    out[..., :3, :3] = Rt
    out[..., :3, 3:] = -Rt @ t
    out[..., 3, 3] = 1.0
    return out


def _rigid_from_3x4(rows12: torch.Tensor) -> torch.Tensor:
    T = rows12.new_zeros(rows12.shape[:-1] + (4, 4))
    T[..., :3, :] = rows12.reshape(rows12.shape[:-1] + (3, 4))
    T[..., 3, 3] = 1.0
    return T


def re10k_rows_to_cameras(
    rows: torch.Tensor, width: int, height: int
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """RealEstate10K rows -> (K [..., 3, 3] in pixels, w2c [..., 4, 4], c2w [..., 4, 4]).

    rows: [..., 18], the numbers of a camera-file line after the timestamp:
    fx fy cx cy 0 0 r11 r12 r13 t1 r21 r22 r23 t2 r31 r32 r33 t3 (normalised intrinsics,
    world-to-camera [R|t]). A [..., 19] row with the timestamp first is accepted too.
    """
    if isinstance(rows, torch.Tensor) and rows.shape[-1:] == (19,):
        rows = rows[..., 1:]
    _check_last_dims(rows, (18,), "rows")
    K = intrinsics_from_normalized(rows[..., :4], width, height)
    w2c = _rigid_from_3x4(rows[..., 6:])
    return K, w2c, invert_rigid(w2c)


def cameras_to_re10k_rows(K: torch.Tensor, w2c: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """(K [..., 3, 3] in pixels, w2c [..., 4, 4]) -> RealEstate10K rows [..., 18] (no timestamp)."""
    _check_last_dims(w2c, (4, 4), "w2c")
    normalized = normalized_from_intrinsics(K, width, height)
    zeros = normalized.new_zeros(normalized.shape[:-1] + (2,))
    rt = w2c[..., :3, :].reshape(w2c.shape[:-2] + (12,)).to(normalized.dtype)
    return torch.cat([normalized, zeros, rt], -1)


def dfot_poses_to_cameras(
    poses: torch.Tensor, width: int, height: int
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """DFoT pose rows [..., 16] (fx fy cx cy normalised, then the 3x4 w2c) -> (K, w2c, c2w)."""
    _check_last_dims(poses, (16,), "poses")
    K = intrinsics_from_normalized(poses[..., :4], width, height)
    w2c = _rigid_from_3x4(poses[..., 4:])
    return K, w2c, invert_rigid(w2c)


def cameras_to_dfot_poses(K: torch.Tensor, c2w: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """(K [..., 3, 3] in pixels of the width x height frames, c2w [..., 4, 4] camera-to-world,
    OpenCV axes) -> DFoT pose rows [..., 16]: (fx/W, fy/H, cx/W, cy/H), then the world-to-camera
    [R|t] = inverse(c2w)[:3, :4] row by row. The inverse of dfot_poses_to_cameras; the trainer
    feeds these rows to gfcore.models.dfot.ray_encoding (which makes them relative to the first
    frame itself, so any world frame gives the same ray map)."""
    _check_last_dims(c2w, (4, 4), "c2w")
    normalized = normalized_from_intrinsics(K, width, height)
    w2c = invert_rigid(c2w)
    rt = w2c[..., :3, :].reshape(w2c.shape[:-2] + (12,)).to(normalized.dtype)
    return torch.cat([normalized, rt], -1)


def relative_to_first(c2w: torch.Tensor) -> torch.Tensor:
    """c2w [..., T, 4, 4] re-expressed in the first frame's camera coordinates (frame 0 -> I)."""
    _check_last_dims(c2w, (4, 4), "c2w")
    if c2w.dim() < 3:
        raise ValueError(f"c2w must have shape [..., T, 4, 4], got {list(c2w.shape)}")
    return invert_rigid(c2w[..., :1, :, :]) @ c2w


def resize_crop_intrinsics(
    K: torch.Tensor, in_hw: Tuple[int, int], out_hw: Tuple[int, int]
) -> torch.Tensor:
    """Intrinsics after `resize_crop_geometry(in_hw, out_hw)`: scale to cover, then centre crop."""
    _check_last_dims(K, (3, 3), "K")
    (resized_h, resized_w), (top, left) = resize_crop_geometry(in_hw, out_hw)
    sx = resized_w / in_hw[1]
    sy = resized_h / in_hw[0]
    out = K.clone()
    out[..., 0, 0] = K[..., 0, 0] * sx
    out[..., 0, 1] = K[..., 0, 1] * sx
    out[..., 0, 2] = K[..., 0, 2] * sx - left
    out[..., 1, 1] = K[..., 1, 1] * sy
    out[..., 1, 2] = K[..., 1, 2] * sy - top
    return out


def resize_crop_geometry(in_hw: Tuple[int, int], out_hw: Tuple[int, int]) -> Tuple[Tuple[int, int], Tuple[int, int]]:
    """Size to resize an image to so that it covers out_hw keeping its aspect, and the crop offset.

    Returns ((resized_h, resized_w), (top, left)); cropping [top:top+H_out, left:left+W_out]
    of the resized image gives the output.
    """
    in_h, in_w = int(in_hw[0]), int(in_hw[1])
    out_h, out_w = int(out_hw[0]), int(out_hw[1])
    if min(in_h, in_w, out_h, out_w) <= 0:
        raise ValueError(f"image sizes must be positive, got in_hw={in_hw}, out_hw={out_hw}")
    scale = max(out_h / in_h, out_w / in_w)
    # The side that decides the scale is set exactly; the other is rounded but never below out.
    resized_h = max(out_h, int(round(in_h * scale)))
    resized_w = max(out_w, int(round(in_w * scale)))
    return (resized_h, resized_w), ((resized_h - out_h) // 2, (resized_w - out_w) // 2)


# Mirroring x in camera and world coordinates: F T F keeps a rigid transform rigid.
def flip_horizontal(K: torch.Tensor, c2w: torch.Tensor, width: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Cameras of horizontally flipped images: cx -> W - cx and c2w -> F c2w F, F = diag(-1, 1, 1, 1).

    The flipped images show the mirror image of the scene (world x negated), seen by cameras
    whose poses are mirrored the same way, so that poses stay rotations and a point seen in
    two flipped frames lands where the mirrored geometry says.
    """
    _check_last_dims(K, (3, 3), "K")
    _check_last_dims(c2w, (4, 4), "c2w")
    K_out = K.clone()
    K_out[..., 0, 2] = width - K[..., 0, 2]
    K_out[..., 0, 1] = -K[..., 0, 1]
    sign = c2w.new_tensor([-1.0, 1.0, 1.0, 1.0])
    c2w_out = c2w * sign[:, None] * sign[None, :]
    return K_out, c2w_out


def plucker_rays(
    intrinsics: torch.Tensor, c2w: torch.Tensor, height: int, width: int, patch_size: int = 1
) -> torch.Tensor:
    """Pluecker ray map of each camera: [..., 6, H / p, W / p] = (direction d, moment o x d).

    One ray per pixel (patch_size 1) or per p x p patch, through the patch centre. d is the
    unit world-space direction, o the camera centre. Computed in float32 (float64 inputs
    stay float64) and returned in the dtype of c2w.

    Args:
        intrinsics: [..., 3, 3] pixel intrinsics of an H x W image.
        c2w: [..., 4, 4] camera-to-world poses, same leading dims (broadcastable).
        height, width: image size in pixels; must be divisible by patch_size.
        patch_size: p.
    """
    _check_last_dims(intrinsics, (3, 3), "intrinsics")
    _check_last_dims(c2w, (4, 4), "c2w")
    if patch_size < 1 or height % patch_size or width % patch_size:
        raise ValueError(f"height {height} and width {width} must be divisible by patch_size {patch_size}")
    out_dtype = c2w.dtype
    work = torch.float64 if torch.float64 in (c2w.dtype, intrinsics.dtype) else torch.float32
    K = intrinsics.to(work)
    pose = c2w.to(work)
    p = patch_size
    # Patch centres in pixel coordinates (pixel u covers [u, u+1)).
    v = torch.arange(height // p, dtype=work, device=c2w.device) * p + p / 2.0
    u = torch.arange(width // p, dtype=work, device=c2w.device) * p + p / 2.0
    vv, uu = torch.meshgrid(v, u, indexing="ij")
    pix = torch.stack([uu, vv, torch.ones_like(uu)], -1)  # [h, w, 3]
    K_inv = torch.linalg.inv(K)
    dirs_cam = torch.einsum("...ij,hwj->...hwi", K_inv, pix)
    dirs = torch.einsum("...ij,...hwj->...hwi", pose[..., :3, :3], dirs_cam)
    dirs = dirs / dirs.norm(dim=-1, keepdim=True)
    origin = pose[..., None, None, :3, 3].expand_as(dirs)
    moment = torch.cross(origin, dirs, dim=-1)
    rays = torch.cat([dirs, moment], -1)  # [..., h, w, 6]
    return rays.movedim(-1, -3).contiguous().to(out_dtype)
