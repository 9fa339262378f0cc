"""The teacher protocol: what any Geometry Forcing / REPA teacher provides.

A teacher maps frames [B, T, 3, H, W] with values in [0, 1] to features [B, T, L, h, w, D]:
L chosen layers, an (h, w) patch grid (resampled to `grid` when one is given), D channels.
VGGT (gfcore.geometry.VGGTTeacher), DINOv2 (gfcore.geometry.DINOv2Teacher) and the oracle
pointmap teacher (gfcore.train.teachers.PointmapTeacher) implement it; the trainer, the
feature cache (gfcore.geometry.cache) and the benchmarks take any object that does.

Attributes:
    name         short name ("vggt", "dinov2", "pointmap"); stored in a feature cache index
    label        what run outputs call the teacher (e.g. "VGGT teacher")
    layers       the L layer indices the features come from (non-negative)
    feature_dim  D
    requires     batch keys the teacher needs besides the frames, passed as keyword arguments
                 (the oracle teacher: ("depth", "intrinsics", "c2w"); learned teachers: ())
    cache_info() a JSON-able dict that identifies the features (weights aside): resize mode,
                 image size, normalisation, ...; stored in a feature cache index
"""
from __future__ import annotations

from typing import Dict, Optional, Protocol, Sequence, Tuple, runtime_checkable

import torch


@runtime_checkable
class FeatureTeacher(Protocol):
    name: str
    label: str
    layers: Sequence[int]
    requires: Tuple[str, ...]

    @property
    def feature_dim(self) -> int: ...

    def cache_info(self) -> Dict: ...

    def __call__(self, frames: torch.Tensor, grid: Optional[Tuple[int, int]] = None,
                 **inputs: torch.Tensor) -> torch.Tensor: ...


def check_teacher(teacher) -> None:
    """Raise TypeError naming what `teacher` lacks of the FeatureTeacher protocol."""
    missing = [a for a in ("name", "label", "layers", "requires", "feature_dim", "cache_info")
               if not hasattr(teacher, a)]
    if not callable(teacher):
        missing.append("__call__")
    if missing:
        raise TypeError(f"{type(teacher).__name__} is not a FeatureTeacher: it lacks {', '.join(missing)} "
                        "(see gfcore.geometry.protocol)")


def teacher_features(teacher, frames: torch.Tensor, grid: Optional[Tuple[int, int]] = None,
                     **inputs: torch.Tensor) -> torch.Tensor:
    """Call `teacher` on frames in [0, 1] (with the ground truth it requires, taken from `inputs`)
    and check that the result is [B, T, L, h, w, D] as the protocol promises."""
    check_teacher(teacher)
    absent = [k for k in teacher.requires if k not in inputs]
    if absent:
        raise KeyError(f"the {teacher.name} teacher needs {', '.join(repr(k) for k in absent)} besides the frames")
    feats = teacher(frames, grid=grid, **{k: inputs[k] for k in teacher.requires})
    expected_lead = (frames.shape[0], frames.shape[1], len(teacher.layers))
    if feats.dim() != 6 or tuple(feats.shape[:3]) != expected_lead or feats.shape[-1] != teacher.feature_dim \
            or (grid is not None and tuple(feats.shape[3:5]) != tuple(grid)):
        raise ValueError(f"the {teacher.name} teacher returned {tuple(feats.shape)}; the protocol expects "
                         f"[B, T, L, h, w, D] = [{expected_lead[0]}, {expected_lead[1]}, {expected_lead[2]}, "
                         f"{'h, w' if grid is None else f'{grid[0]}, {grid[1]}'}, {teacher.feature_dim}]")
    return feats
