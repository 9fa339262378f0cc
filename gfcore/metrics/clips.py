"""Reading clips and per-clip geometry for evaluation.

Clips: .npy, .npz (array "video" or "frames", or the only array), .pt (a tensor, or a dict
with "video"/"frames"), laid out [T, H, W, 3] (as video readers return) or [T, 3, H, W];
uint8 in [0, 255] or floats in [0, 1]. Video files (.mp4, .avi, .mov, .webm, .mkv) are read
with gfcore.data.video.read_video, imported only when needed.
Geometry: .npz with depth [T, H, W], intrinsics [T, 3, 3] (pixels) and c2w [T, 4, 4].
Everything is returned as float32 tensors; clips as [T, 3, H, W] in [0, 1].
"""
from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from gfcore.io.safe_load import load_weights_only

ARRAY_SUFFIXES = (".npy", ".npz", ".pt")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".webm", ".mkv")
GEOMETRY_KEYS = ("depth", "intrinsics", "c2w")


def _read_raw(path: Path):
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            return np.load(path, allow_pickle=False)
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as archive:
                for key in ("video", "frames"):
                    if key in archive.files:
                        return archive[key]
                if len(archive.files) == 1:
                    return archive[archive.files[0]]
                raise ValueError(f"{path}: .npz holds {archive.files}; expected an array named 'video' or 'frames'")
        if suffix == ".pt":
            data = load_weights_only(path, "clip")
            if isinstance(data, dict):
                data = data.get("video", data.get("frames"))
                if data is None:
                    raise ValueError(f"{path}: .pt dict has no 'video' or 'frames' entry")
            if not isinstance(data, torch.Tensor):
                raise ValueError(f"{path}: .pt holds a {type(data).__name__}, expected a tensor")
            return data
        if suffix in VIDEO_SUFFIXES:
            try:
                from gfcore.data.video import read_video
            except ImportError as exc:
                raise ValueError(f"{path}: reading {suffix} files needs gfcore.data.video ({exc})") from exc
            return read_video(str(path))
    except (OSError, zipfile.BadZipFile, EOFError, RuntimeError, ValueError, TypeError,
            pickle.UnpicklingError) as exc:  # the last: a damaged .pt (safe_load names no file)
        if str(path) in str(exc):
            raise
        raise ValueError(f"{path}: cannot read clip ({exc})") from exc
    raise ValueError(f"{path}: unsupported clip format {suffix!r} (use {ARRAY_SUFFIXES + VIDEO_SUFFIXES})")


def to_frames(video, name: str) -> torch.Tensor:
    """[T, H, W, 3] or [T, 3, H, W], uint8 or float in [0, 1] -> float32 [T, 3, H, W] in [0, 1]."""
    video = torch.as_tensor(np.asarray(video) if not isinstance(video, torch.Tensor) else video)
    if video.dim() != 4:
        raise ValueError(f"{name}: expected a clip [T, H, W, 3] or [T, 3, H, W], got shape {tuple(video.shape)}")
    if video.shape[-1] == 3:
        video = video.permute(0, 3, 1, 2)
    elif video.shape[1] != 3:
        raise ValueError(f"{name}: expected 3 colour channels first or last, got shape {tuple(video.shape)}")
    if video.dtype == torch.uint8:
        return video.float() / 255.0
    if not video.is_floating_point():
        raise ValueError(f"{name}: expected uint8 or floating-point frames, got {video.dtype}")
    video = video.float()
    low, high = float(video.min()), float(video.max())
    if low < -1e-3 or high > 1 + 1e-3:
        raise ValueError(f"{name}: float frames must lie in [0, 1], found values in [{low:.3f}, {high:.3f}]")
    return video.clamp(0, 1)


def load_clip(path: Path | str) -> torch.Tensor:
    """Read one clip as float32 [T, 3, H, W] in [0, 1]; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"clip not found: {path}")
    return to_frames(_read_raw(path), str(path))


def load_geometry(path: Path | str, frames: Optional[torch.Tensor] = None) -> dict:
    """Read depth / intrinsics / c2w from an .npz, checking shapes against frames [T, 3, H, W]."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as archive:
            missing = [k for k in GEOMETRY_KEYS if k not in archive.files]
            if missing:
                raise ValueError(f"{path}: geometry file lacks {missing} (has {archive.files})")
            geometry = {k: torch.from_numpy(np.asarray(archive[k], dtype=np.float32)) for k in GEOMETRY_KEYS}
    except (OSError, zipfile.BadZipFile, EOFError) as exc:
        raise ValueError(f"{path}: cannot read geometry ({exc})") from exc
    t = geometry["depth"].shape[0]
    expected = {"depth": (t, *geometry["depth"].shape[1:]), "intrinsics": (t, 3, 3), "c2w": (t, 4, 4)}
    if geometry["depth"].dim() != 3:
        raise ValueError(f"{path}: depth must be [T, H, W], got {tuple(geometry['depth'].shape)}")
    for key, shape in expected.items():
        if tuple(geometry[key].shape) != shape:
            raise ValueError(f"{path}: {key} must have shape {list(shape)}, got {list(geometry[key].shape)}")
    if frames is not None and (t, *geometry["depth"].shape[1:]) != (frames.shape[0], *frames.shape[2:]):
        raise ValueError(
            f"{path}: depth {list(geometry['depth'].shape)} does not match the clip's [T, H, W] = "
            f"{[frames.shape[0], *frames.shape[2:]]}"
        )
    return geometry


GEOMETRY_SUFFIX = ".depth.npz"  # a dataset split's per-clip geometry ({key}.depth.npz): not a clip


def list_clips(folder: Path | str) -> dict[str, Path]:
    """Clip files in a folder keyed by name (the file stem); a dataset's {key}.depth.npz
    geometry files are not clips and are left out."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"clip folder not found: {folder}")
    clips = {}
    for path in sorted(folder.iterdir()):
        if path.name.lower().endswith(GEOMETRY_SUFFIX):
            continue
        if path.suffix.lower() in ARRAY_SUFFIXES + VIDEO_SUFFIXES:
            if path.stem in clips:
                raise ValueError(f"{folder}: two clips named {path.stem!r} ({clips[path.stem].name}, {path.name})")
            clips[path.stem] = path
    return clips
