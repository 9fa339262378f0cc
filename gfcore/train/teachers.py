"""Teachers: where Geometry Forcing's alignment targets come from.

- `pointmap`: the ORACLE POINTMAP TEACHER. Features are computed from the ground-truth depth
  and cameras of the built-in synthetic scenes (no learned model). It is for offline runs and
  tests only; every output of a run that uses it is labelled "oracle pointmap teacher".
- `vggt`: frozen VGGT features (gfcore.geometry.VGGTTeacher from a local checkpoint), or a
  precomputed gfcore.geometry.FeatureCache.
- `none`: the baseline, no alignment.

Every teacher maps a batch to targets [B, T, P, D] (or [B, T, P, L, D] for L VGGT layers)
on the model's patch grid (P = grid_h * grid_w, row-major).
"""
from __future__ import annotations

import math
from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F

ORACLE_LABEL = "oracle pointmap teacher"
TEACHER_LABELS = {"none": "baseline (no alignment)", "pointmap": ORACLE_LABEL, "vggt": "VGGT teacher"}


def backproject(depth: torch.Tensor, intrinsics: torch.Tensor, c2w: torch.Tensor) -> torch.Tensor:
    """World points [..., H, W, 3] of every pixel centre from z-depth [..., H, W], K [..., 3, 3], c2w [..., 4, 4]."""
    height, width = depth.shape[-2:]
    v = torch.arange(height, dtype=torch.float32, device=depth.device) + 0.5
    u = torch.arange(width, dtype=torch.float32, device=depth.device) + 0.5
    vv, uu = torch.meshgrid(v, u, indexing="ij")
    pix = torch.stack([uu, vv, torch.ones_like(uu)], dim=-1)  # [H, W, 3]
    rays = torch.einsum("...ij,hwj->...hwi", torch.linalg.inv(intrinsics.float()), pix)
    cam = rays * depth.float()[..., None]
    R, t = c2w.float()[..., :3, :3], c2w.float()[..., :3, 3]
    return torch.einsum("...ij,...hwj->...hwi", R, cam) + t[..., None, None, :]


class PointmapTeacher(torch.nn.Module):
    """Oracle features from ground truth: per patch, the mean world point (in the clip's first
    camera frame), the camera-space point and log depth, then a fixed sinusoidal encoding.

    num_frequencies F gives feature_dim = 7 * (1 + 2F). No parameters, deterministic.
    """

    label = ORACLE_LABEL

    def __init__(self, grid: Tuple[int, int], num_frequencies: int = 4):
        super().__init__()
        self.grid = tuple(grid)
        self.num_frequencies = int(num_frequencies)

    @property
    def feature_dim(self) -> int:
        return 7 * (1 + 2 * self.num_frequencies)

    @torch.no_grad()
    def forward(self, batch: Dict[str, torch.Tensor]) -> torch.Tensor:
        for key in ("depth", "intrinsics", "c2w"):
            if key not in batch:
                raise KeyError(f"the pointmap teacher needs batch[{key!r}] (ground-truth depth and cameras; "
                               f"load the data with_depth=True)")
        depth = batch["depth"]
        if depth.dim() != 4:
            raise ValueError(f"batch['depth'] must be [B, T, H, W], got {tuple(depth.shape)}")
        world = backproject(depth, batch["intrinsics"], batch["c2w"])  # [B, T, H, W, 3]
        identity = torch.eye(4, device=depth.device).expand_as(batch["c2w"])
        camera = backproject(depth, batch["intrinsics"], identity)
        log_depth = depth.float().clamp_min(1e-3).log()[..., None]
        base = torch.cat([world, camera, log_depth], dim=-1)  # [B, T, H, W, 7]
        pooled = F.adaptive_avg_pool2d(base.flatten(0, 1).permute(0, 3, 1, 2), self.grid)
        pooled = pooled.permute(0, 2, 3, 1).reshape(*depth.shape[:2], -1, 7)  # [B, T, P, 7]
        freqs = 2.0 ** torch.arange(self.num_frequencies, device=depth.device, dtype=torch.float32) * math.pi / 4
        angles = pooled[..., None] * freqs  # [B, T, P, 7, F]
        encoded = torch.cat([angles.sin(), angles.cos()], dim=-1).flatten(-2)
        return torch.cat([pooled, encoded], dim=-1)


class VGGTFeatureTeacher(torch.nn.Module):
    """VGGT features on the model's grid, from a live VGGTTeacher or a FeatureCache.

    checkpoint: local VGGT weights (required for live features; no download is attempted).
    cache: a FeatureCache directory (keys are the clips' keys; frame_indices select frames).
    """

    label = TEACHER_LABELS["vggt"]

    def __init__(self, grid: Tuple[int, int], checkpoint: Optional[str] = None, cache: Optional[str] = None,
                 layers=(-1,), frames_per_call: int = 16, dtype: str = "bfloat16", config: Optional[dict] = None,
                 device: Optional[str] = None, image_size: int = 518):
        super().__init__()
        self.grid = tuple(grid)
        self.cache = None
        self.teacher = None
        if cache:
            from gfcore.geometry.cache import FeatureCache

            self.cache = FeatureCache(cache)
            if tuple(self.cache.grid) != self.grid:
                raise ValueError(f"teacher.cache {cache!r} holds a {self.cache.grid} grid, the model needs {self.grid}")
            self._feature_dim, self.num_layers = self.cache.feature_dim, len(self.cache.layers)
        elif checkpoint:
            from gfcore.geometry import VGGTTeacher

            self.teacher = VGGTTeacher(checkpoint, layers=tuple(layers), dtype=getattr(torch, dtype),
                                       frames_per_call=frames_per_call, config=config, device=device,
                                       out_dtype=torch.float32, image_size=image_size)
            self._feature_dim, self.num_layers = self.teacher.feature_dim, len(self.teacher.layers)
        else:
            raise ValueError("teacher=vggt needs teacher.checkpoint (a local VGGT checkpoint) or teacher.cache "
                             "(a feature cache directory); nothing is downloaded")

    @property
    def feature_dim(self) -> int:
        return self._feature_dim

    @torch.no_grad()
    def forward(self, batch: Dict[str, torch.Tensor]) -> torch.Tensor:
        frames = batch["frames"]
        if self.cache is not None:
            feats = torch.stack([self.cache.features(key, idx.tolist(), frames.device).float()
                                 for key, idx in zip(batch["key"], batch["frame_indices"])])
        else:
            feats = self.teacher((frames + 1) / 2, grid=self.grid).float()  # [B, T, L, h, w, C]
        feats = feats.permute(0, 1, 3, 4, 2, 5).flatten(2, 3)  # [B, T, P, L, C]
        return feats[:, :, :, 0] if feats.shape[3] == 1 else feats


def build_teacher(cfg, grid: Tuple[int, int], device: Optional[str] = None):
    """The teacher named by cfg.name ('none' -> None)."""
    name = cfg.get("name", "none")
    if name == "none":
        return None
    if name == "pointmap":
        return PointmapTeacher(grid, cfg.get("num_frequencies", 4))
    if name == "vggt":
        return VGGTFeatureTeacher(grid, cfg.get("checkpoint"), cfg.get("cache"), list(cfg.get("layers", [-1])),
                                  cfg.get("frames_per_call", 16), cfg.get("dtype", "bfloat16"),
                                  cfg.get("vggt_config"), device, cfg.get("image_size", 518))
    raise ValueError(f"teacher.name must be one of {sorted(TEACHER_LABELS)}, got {name!r}")
