"""RPE (reprojection error): how well a clip's cameras and depth explain its own motion.

For each frame pair (i, j = i + offset):
  1. Geometry: every pixel p of frame i is lifted with depth_i and intrinsics K_i, moved
     from camera i to camera j (c2w_j^-1 c2w_i) and projected with K_j -> p_geo.
  2. Correspondence: dense optical flow from frame i to frame j
     (gfcore.metrics.optical_flow, pyramidal Lucas-Kanade on luminance) -> p_obs = p + flow.
  3. Co-visible pixels: depth_i > 0; p_geo in front of camera j and inside frame j; not
     occluded (depth_j at p_geo within depth_tolerance of the reprojected depth); p_obs
     inside frame j; flow forward-backward error < fb_threshold px; windowed gradient
     strength >= min_texture (flat regions have no defined flow).
  4. RPE = mean |p_geo - p_obs| (pixels, at the clip's resolution) over the co-visible
     pixels of all pairs.

How this differs from the paper: the paper runs DROID-SLAM on the video (cameras and depth
from its dense bundle adjustment, flow from its learned RAFT-style update operator,
intrinsics assumed fx = fy = 0.9 max(h, w)) and measures the same kind of distance between
reprojected points and flow targets. Here cameras and depth are inputs (ground truth of the
built-in scenes, or VGGT estimates from gfcore.metrics.geometry_estimate), the flow is classical
Lucas-Kanade (no learned weights; less accurate on large motion, blur and low texture), and
there is no bundle adjustment. Absolute values are therefore not comparable with the
paper's; the generated / ground-truth ratio computed with the same pipeline is.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch
import torch.nn.functional as F

from gfcore.metrics.optical_flow import forward_backward_error, lucas_kanade_flow
from gfcore.metrics.validate import check_floating, check_shape


@dataclass
class RPEResult:
    """Mean reprojection error in pixels over co-visible pixels, with the evidence behind it."""

    rpe: float  # nan when no pixel was co-visible
    covisible_pixels: int
    covisible_fraction: float
    per_pair: dict = field(default_factory=dict)  # "i-j" -> mean error of that pair


def pixel_grid(height: int, width: int, dtype=torch.float32, device=None) -> torch.Tensor:
    """Homogeneous pixel coordinates [3, H, W] (x = column, y = row, pixel centres at integers)."""
    like = dict(dtype=dtype, device=device)
    ys, xs = torch.meshgrid(torch.arange(height, **like), torch.arange(width, **like), indexing="ij")
    return torch.stack([xs, ys, torch.ones_like(xs)])


def reproject(
    depth_i: torch.Tensor, k_i: torch.Tensor, c2w_i: torch.Tensor, k_j: torch.Tensor, c2w_j: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Where pixels of frame i land in frame j: returns xy_j [2, H, W] and depth in camera j [H, W]."""
    height, width = depth_i.shape
    # composing poses in fp64 keeps the fp32 round-off out of the metric
    like = dict(dtype=torch.float64, device=depth_i.device)
    rays = torch.linalg.inv(k_i.to(**like)) @ pixel_grid(height, width, **like).reshape(3, -1)
    points_i = rays * depth_i.to(**like).reshape(1, -1)
    i_to_j = torch.linalg.inv(c2w_j.to(**like)) @ c2w_i.to(**like)
    points_j = i_to_j[:3, :3] @ points_i + i_to_j[:3, 3:]
    projected = k_j.to(**like) @ points_j
    z = projected[2]
    xy = projected[:2] / z.clamp_min(1e-12)
    return xy.reshape(2, height, width), z.reshape(height, width)


def _sample(image: torch.Tensor, xy: torch.Tensor) -> torch.Tensor:
    """Bilinear lookup of a [H, W] map at pixel positions xy [2, H, W]."""
    height, width = image.shape
    grid = torch.stack([xy[0] * (2.0 / (width - 1)) - 1, xy[1] * (2.0 / (height - 1)) - 1], dim=-1)
    return F.grid_sample(image[None, None], grid[None].to(image.dtype), align_corners=True, padding_mode="border")[0, 0]


def _inside(xy: torch.Tensor, height: int, width: int) -> torch.Tensor:
    return (xy[0] >= 0) & (xy[0] <= width - 1) & (xy[1] >= 0) & (xy[1] <= height - 1)


def pair_errors(
    frame_i: torch.Tensor,
    frame_j: torch.Tensor,
    depth_i: torch.Tensor,
    depth_j: torch.Tensor,
    k_i: torch.Tensor,
    k_j: torch.Tensor,
    c2w_i: torch.Tensor,
    c2w_j: torch.Tensor,
    fb_threshold: float = 1.0,
    min_texture: float = 1e-5,
    depth_tolerance: float = 0.05,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pixel |p_geo - p_obs| [H, W] (float64) and the co-visibility mask [H, W]."""
    height, width = depth_i.shape
    xy_geo, z_geo = reproject(depth_i, k_i, c2w_i, k_j, c2w_j)
    flow_ij, texture = lucas_kanade_flow(frame_i, frame_j)
    flow_ji, _ = lucas_kanade_flow(frame_j, frame_i)
    xy_obs = pixel_grid(height, width, torch.float64, frame_i.device)[:2] + flow_ij.double()

    depth_ok = torch.isfinite(depth_i) & (depth_i > 0)
    in_front = (z_geo > 0) & _inside(xy_geo, height, width)
    depth_j_there = _sample(depth_j.double(), xy_geo)
    not_occluded = (depth_j_there - z_geo).abs() <= depth_tolerance * z_geo.abs()
    flow_ok = (
        _inside(xy_obs, height, width)
        & (forward_backward_error(flow_ij, flow_ji) < fb_threshold)
        & (texture >= min_texture)
    )
    mask = depth_ok & in_front & not_occluded & flow_ok
    return (xy_geo - xy_obs).norm(dim=0), mask


def reprojection_error(
    frames: torch.Tensor,
    depth: torch.Tensor,
    intrinsics: torch.Tensor,
    c2w: torch.Tensor,
    offsets: Sequence[int] = (1,),
    **pair_kwargs,
) -> RPEResult:
    """RPE of one clip.

    frames [T, 3, H, W] in [0, 1]; depth [T, H, W] (z-depth in camera space); intrinsics
    [T, 3, 3] in pixels of this resolution; c2w [T, 4, 4] camera-to-world (OpenCV axes).
    offsets: frame distances j - i that are compared (default: neighbouring frames).
    """
    check_floating(frames, "frames")
    if frames.dim() != 4 or frames.shape[1] != 3:
        raise ValueError(f"frames: expected [T, 3, H, W], got {tuple(frames.shape)}")
    t, _, height, width = frames.shape
    check_shape(depth, "depth", "T,H,W", T=t, H=height, W=width)
    check_shape(intrinsics, "intrinsics", "T,3,3", T=t)
    check_shape(c2w, "c2w", "T,4,4", T=t)
    depth, intrinsics, c2w = (x.to(frames.device) for x in (depth, intrinsics, c2w))
    total, count, considered, per_pair = 0.0, 0, 0, {}
    with torch.no_grad():
        for offset in offsets:
            for i in range(t - offset):
                j = i + offset
                errors, mask = pair_errors(
                    frames[i], frames[j], depth[i], depth[j], intrinsics[i], intrinsics[j], c2w[i], c2w[j],
                    **pair_kwargs,
                )
                n = int(mask.sum())
                considered += mask.numel()
                per_pair[f"{i}-{j}"] = float(errors[mask].mean()) if n else float("nan")
                total += float(errors[mask].sum())
                count += n
    return RPEResult(
        rpe=total / count if count else float("nan"),
        covisible_pixels=count,
        covisible_fraction=count / considered if considered else 0.0,
        per_pair=per_pair,
    )


def rpe_summary(generated: Sequence[float], ground_truth: Sequence[float]) -> dict:
    """The paper's presentation: mean RPE of generated clips, of ground truth, and their ratio."""
    def mean(values):
        finite = [v for v in values if v == v]
        return sum(finite) / len(finite) if finite else float("nan")

    gen, gt = mean(generated), mean(ground_truth)
    ratio = gen / gt if gt == gt and gt > 0 and gen == gen else float("nan")
    return {"generated": gen, "ground_truth": gt, "ratio": ratio}


def paper_intrinsics(frames: int, height: int, width: int) -> torch.Tensor:
    """The paper's assumed intrinsics for RPE: fx = fy = 0.9 max(H, W), principal point at the
    image centre. [T, 3, 3]; for generated clips whose estimator gives no intrinsics."""
    focal = 0.9 * max(height, width)
    k = torch.tensor([[focal, 0.0, (width - 1) / 2], [0.0, focal, (height - 1) / 2], [0.0, 0.0, 1.0]])
    return k.expand(frames, 3, 3).clone()
