"""Teachers: where Geometry Forcing's (and REPA's) alignment targets come from.

Every teacher implements the protocol of gfcore.geometry.protocol: frames [B, T, 3, H, W] in
[0, 1] -> features [B, T, L, h, w, D]. TeacherTargets turns one (or a feature cache it
filled) into the trainer's targets.

- `pointmap`: the ORACLE POINTMAP TEACHER. Features are computed from the ground-truth depth
  and cameras of the built-in synthetic scenes (no learned model). It is for offline runs and
  tests only; every output of a run that uses it is labelled "oracle pointmap teacher".
- `vggt`: frozen VGGT aggregator features (gfcore.geometry.VGGTTeacher from a local checkpoint).
- `dinov2`: frozen DINOv2 features (gfcore.geometry.DINOv2Teacher, REPA's teacher, from a
  local official checkpoint): `teacher=dinov2` is the paper's REPA baseline.
- `none`: the baseline, no alignment.
- `vggt` and `dinov2` also read a precomputed gfcore.geometry.FeatureCache (teacher.cache).

Targets are [B, T, P, D] (or [B, T, P, L, D] for L layers) on the model's patch grid
(P = grid_h * grid_w, row-major).
"""
from __future__ import annotations

import math
from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F

from gfcore.geometry.protocol import check_teacher, teacher_features

ORACLE_LABEL = "oracle pointmap teacher"
TEACHER_LABELS = {"none": "baseline (no alignment)", "pointmap": ORACLE_LABEL, "vggt": "VGGT teacher",
                  "dinov2": "DINOv2 teacher"}


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

    Teacher protocol: teacher(frames, grid=None, depth=, intrinsics=, c2w=) -> [B, T, 1, h, w, D]
    (the frames only give the shapes; grid None: the grid given at construction).
    num_frequencies F gives feature_dim = 7 * (1 + 2F). No parameters, deterministic.
    """

    name = "pointmap"
    label = ORACLE_LABEL
    layers = [0]
    requires = ("depth", "intrinsics", "c2w")

    def __init__(self, grid: Tuple[int, int], num_frequencies: int = 4):
        super().__init__()
        self.grid = tuple(grid)
        self.num_frequencies = int(num_frequencies)

    @property
    def feature_dim(self) -> int:
        return 7 * (1 + 2 * self.num_frequencies)

    def cache_info(self) -> Dict:
        return {"teacher": self.name, "num_frequencies": self.num_frequencies}

    @torch.no_grad()
    def forward(self, frames: Optional[torch.Tensor] = None, grid: Optional[Tuple[int, int]] = None,
                depth: Optional[torch.Tensor] = None, intrinsics: Optional[torch.Tensor] = None,
                c2w: Optional[torch.Tensor] = None) -> torch.Tensor:
        for key, value in (("depth", depth), ("intrinsics", intrinsics), ("c2w", c2w)):
            if value is None:
                raise KeyError(f"the pointmap teacher needs batch[{key!r}] (ground-truth depth and cameras; "
                               f"load the data with_depth=True)")
        if depth.dim() != 4:
            raise ValueError(f"batch['depth'] must be [B, T, H, W], got {tuple(depth.shape)}")
        grid = tuple(grid) if grid is not None else self.grid
        world = backproject(depth, intrinsics, c2w)  # [B, T, H, W, 3]
        identity = torch.eye(4, device=depth.device).expand_as(c2w)
        camera = backproject(depth, intrinsics, identity)
        log_depth = depth.float().clamp_min(1e-3).log()[..., None]
        base = torch.cat([world, camera, log_depth], dim=-1)  # [B, T, H, W, 7]
        pooled = F.adaptive_avg_pool2d(base.flatten(0, 1).permute(0, 3, 1, 2), grid)
        pooled = pooled.permute(0, 2, 3, 1).reshape(*depth.shape[:2], 1, *grid, 7)  # [B, T, 1, h, w, 7]
        freqs = 2.0 ** torch.arange(self.num_frequencies, device=depth.device, dtype=torch.float32) * math.pi / 4
        angles = pooled[..., None] * freqs  # [..., 7, F]
        encoded = torch.cat([angles.sin(), angles.cos()], dim=-1).flatten(-2)
        return torch.cat([pooled, encoded], dim=-1)


class TeacherTargets(torch.nn.Module):
    """The trainer's targets from any protocol teacher, or from a feature cache it filled.

    targets(batch) -> [B, T, P, D] ([B, T, P, L, D] for L layers) on `grid`. The batch's frames
    ([-1, 1]) are handed to the teacher in [0, 1], with the batch entries it `requires`; with a
    cache, the clip keys and frame indices of the batch select the stored features.
    """

    def __init__(self, grid: Tuple[int, int], teacher=None, cache: Optional[str] = None,
                 name: Optional[str] = None):
        super().__init__()
        self.grid = tuple(grid)
        self.cache = None
        self.teacher = None
        if cache:
            from gfcore.geometry.cache import FeatureCache

            self.cache = FeatureCache(cache)
            if tuple(self.cache.grid) != self.grid:
                raise ValueError(f"teacher.cache {cache!r} holds a {self.cache.grid} grid, the model needs {self.grid}")
            if name is not None and self.cache.teacher != name:
                raise ValueError(f"teacher.cache {cache!r} holds {self.cache.teacher} features, "
                                 f"but teacher.name is {name!r}")
            self.name = self.cache.teacher
            self._feature_dim, self.num_layers = self.cache.feature_dim, len(self.cache.layers)
            self.requires: Tuple[str, ...] = ()
        elif teacher is not None:
            check_teacher(teacher)
            self.teacher = teacher
            self.name = teacher.name
            self._feature_dim, self.num_layers = int(teacher.feature_dim), len(teacher.layers)
            self.requires = tuple(teacher.requires)
        else:
            raise ValueError("TeacherTargets needs a teacher or a feature cache")
        self.label = TEACHER_LABELS.get(self.name, getattr(teacher, "label", self.name))

    @property
    def feature_dim(self) -> int:
        return self._feature_dim

    @torch.no_grad()
    def forward(self, batch: Dict[str, torch.Tensor]) -> torch.Tensor:
        frames = batch["frames"]
        if self.cache is not None:
            indices = [torch.as_tensor(idx).tolist() for idx in batch["frame_indices"]]
            if len({len(idx) for idx in indices}) > 1:
                raise ValueError(f"the clips of a batch need the same number of frames, got {[len(i) for i in indices]}")
            c = self.cache
            feats = torch.empty((len(indices), len(indices[0]), len(c.layers), *c.grid, c.feature_dim),
                                dtype=torch.float32, device=frames.device)
            for row, (key, idx) in enumerate(zip(batch["key"], indices)):  # float16 -> float32 in one copy
                c.read_into(key, idx, feats[row])
        else:
            for key in self.requires:
                if key not in batch:
                    raise KeyError(f"the {self.name} teacher needs batch[{key!r}]"
                                   + (" (ground-truth depth and cameras; load the data with_depth=True)"
                                      if key == "depth" else ""))
            inputs = {k: batch[k] for k in self.requires}
            feats = teacher_features(self.teacher, (frames + 1) / 2, self.grid, **inputs).float()
        feats = feats.permute(0, 1, 3, 4, 2, 5).flatten(2, 3)  # [B, T, P, L, C]
        return feats[:, :, :, 0] if feats.shape[3] == 1 else feats


def _planning(checkpoint, cache, random_weights: bool):
    """(checkpoint, cache, where to build) of a live teacher. random_weights (memory planning):
    no checkpoint is read and no cache opened; a run that a cache would serve gets the teacher
    on the meta device (its sizes only: no weights are allocated, as none would be on the GPU)."""
    import contextlib

    if not random_weights:
        return checkpoint, cache, contextlib.nullcontext()
    return None, None, torch.device("meta") if cache else contextlib.nullcontext()


def teacher_weights_dtype(cfg) -> torch.dtype:
    """teacher.weights_dtype (vggt): auto (bf16 when the teacher computes in bf16, teacher.dtype),
    fp32, or bf16 (needs teacher.dtype=bfloat16: its features are then those of the fp32 weights)."""
    value, compute = cfg.get("weights_dtype", "auto"), cfg.get("dtype", "bfloat16")
    if value == "auto":
        return torch.bfloat16 if compute == "bfloat16" else torch.float32
    if value not in ("fp32", "bf16"):
        raise ValueError(f"teacher.weights_dtype must be auto, fp32 or bf16, got {value!r}")
    if value == "bf16" and compute != "bfloat16":
        raise ValueError(f"teacher.weights_dtype=bf16 needs teacher.dtype=bfloat16, got teacher.dtype={compute!r}")
    return torch.bfloat16 if value == "bf16" else torch.float32


class VGGTFeatureTeacher(TeacherTargets):
    """TeacherTargets of a live VGGTTeacher (from a local checkpoint) or of a feature cache. With
    a cache the VGGT is never built (memory planning: on the meta device only), so no teacher
    weights are loaded or put on the device."""

    def __init__(self, grid: Tuple[int, int], checkpoint: Optional[str] = None, cache: Optional[str] = None,
                 layers=(-1,), frames_per_call: int = 16, dtype: str = "bfloat16", config: Optional[dict] = None,
                 device: Optional[str] = None, image_size: int = 518, random_weights: bool = False,
                 weights_dtype: str = "auto"):
        teacher = None
        checkpoint, cache, where = _planning(checkpoint, cache, random_weights)
        if not cache:
            if not checkpoint and not random_weights:
                raise ValueError("teacher=vggt needs teacher.checkpoint (a local VGGT checkpoint) or teacher.cache "
                                 "(a feature cache directory); nothing is downloaded")
            from gfcore.geometry import VGGTTeacher

            with where:
                teacher = VGGTTeacher(checkpoint, layers=tuple(layers), dtype=getattr(torch, dtype),
                                      frames_per_call=frames_per_call, config=config, device=device,
                                      out_dtype=torch.float32, image_size=image_size,
                                      weights_dtype=teacher_weights_dtype({"weights_dtype": weights_dtype,
                                                                           "dtype": dtype}))
        super().__init__(grid, teacher, cache, name="vggt")


class DINOv2FeatureTeacher(TeacherTargets):
    """TeacherTargets of a live DINOv2Teacher (from a local official checkpoint) or of a feature cache."""

    def __init__(self, grid: Tuple[int, int], checkpoint: Optional[str] = None, cache: Optional[str] = None,
                 variant: str = "dinov2_vitb14", layers=(-1,), norm: bool = True, frames_per_call: int = 64,
                 dtype: str = "bfloat16", config: Optional[dict] = None, device: Optional[str] = None,
                 image_size: int = 224, random_weights: bool = False):
        teacher = None
        checkpoint, cache, where = _planning(checkpoint, cache, random_weights)
        if not cache:
            if not checkpoint and not random_weights:
                raise ValueError("teacher=dinov2 needs teacher.checkpoint (a local official DINOv2 backbone "
                                 "checkpoint, e.g. dinov2_vitb14_pretrain.pth) or teacher.cache (a feature cache "
                                 "directory); nothing is downloaded")
            from gfcore.geometry.dinov2 import DINOv2Teacher

            with where:
                teacher = DINOv2Teacher(checkpoint, variant=variant, layers=tuple(layers), norm=norm,
                                        dtype=getattr(torch, dtype), frames_per_call=frames_per_call,
                                        image_size=image_size, config=config, device=device, out_dtype=torch.float32)
        super().__init__(grid, teacher, cache, name="dinov2")


def build_teacher(cfg, grid: Tuple[int, int], device: Optional[str] = None, random_weights: bool = False):
    """The trainer's targets (a TeacherTargets) for the teacher named by cfg.name ('none' -> None).
    random_weights: VGGT / DINOv2 built with random weights, reading neither checkpoint nor cache
    (gfcore.train.plan plans memory with them)."""
    name = cfg.get("name", "none")
    if name == "none":
        return None
    if name == "pointmap":
        return TeacherTargets(grid, PointmapTeacher(grid, cfg.get("num_frequencies", 4)))
    if name == "vggt":
        return VGGTFeatureTeacher(grid, cfg.get("checkpoint"), cfg.get("cache"), list(cfg.get("layers", [-1])),
                                  cfg.get("frames_per_call", 16), cfg.get("dtype", "bfloat16"),
                                  cfg.get("vggt_config"), device, cfg.get("image_size", 518), random_weights,
                                  cfg.get("weights_dtype", "auto"))
    if name == "dinov2":
        config = cfg.get("dinov2_config")
        if config is not None and not isinstance(config, dict):
            from omegaconf import OmegaConf

            config = OmegaConf.to_container(config, resolve=True)
        return DINOv2FeatureTeacher(grid, cfg.get("checkpoint"), cfg.get("cache"), cfg.get("variant", "dinov2_vitb14"),
                                    list(cfg.get("layers", [-1])), bool(cfg.get("norm", True)),
                                    cfg.get("frames_per_call", 64), cfg.get("dtype", "bfloat16"), config, device,
                                    cfg.get("image_size", 224), random_weights)
    raise ValueError(f"teacher.name must be one of {sorted(TEACHER_LABELS)}, got {name!r}")
