"""What the clip datasets share: choosing frame indices and the on_error policy."""
from __future__ import annotations

import logging
import os
from typing import List

import numpy as np
import torch
from torch.utils.data import Dataset

from gfcore.data.errors import DataError

__all__ = ["ClipDataset", "list_keys", "read_npz", "read_depth"]

logger = logging.getLogger("gfcore.data")


class ClipDataset(Dataset):
    """Base class: subclasses list `self.keys` and implement `_load(index) -> dict`.

    on_error="raise" propagates a DataError (naming the file and line); "skip" logs it,
    counts it in `num_skipped` / `skipped_keys` and returns the next loadable clip instead.
    With DataLoader workers each worker keeps its own counts.
    """

    def __init__(self, num_frames: int, frame_skip: int, random_start: bool, on_error: str):
        if num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, got {num_frames}")
        if frame_skip < 1:
            raise ValueError(f"frame_skip must be >= 1, got {frame_skip}")
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        self.num_frames = int(num_frames)
        self.frame_skip = int(frame_skip)
        self.random_start = bool(random_start)
        self.on_error = on_error
        self.keys: List[str] = []
        self.num_skipped = 0
        self.skipped_keys: List[str] = []

    def __len__(self) -> int:
        return len(self.keys)

    def _load(self, index: int) -> dict:  # pragma: no cover - abstract
        raise NotImplementedError

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < len(self.keys):
            raise IndexError(f"index {index} out of range for {len(self.keys)} clips")
        if self.on_error == "raise":
            return self._load(index)
        for attempt in range(len(self.keys)):
            candidate = (index + attempt) % len(self.keys)
            try:
                return self._load(candidate)
            except DataError as exc:
                self.num_skipped += 1
                self.skipped_keys.append(self.keys[candidate])
                logger.warning("skipping clip %s: %s", self.keys[candidate], exc)
        raise DataError(f"every one of the {len(self.keys)} clips failed to load")

    def frame_indices(self, total: int, source: str) -> torch.Tensor:
        """Indices of the frames to return from a clip of `total` frames (`source` names it in errors).

        Random start (uniform over valid starts, torch's RNG so DataLoader workers differ) when
        random_start, else the first frames.
        """
        span = (self.num_frames - 1) * self.frame_skip + 1
        if total < span:
            raise DataError(
                f"{source}: has {total} frames, fewer than the {span} needed for "
                f"num_frames={self.num_frames} with frame_skip={self.frame_skip}"
            )
        start = int(torch.randint(0, total - span + 1, ()).item()) if self.random_start else 0
        return torch.arange(self.num_frames) * self.frame_skip + start


def list_keys(directory: str, suffix: str, what: str) -> List[str]:
    """Sorted keys of the files `{directory}/{key}{suffix}`; DataError when there are none."""
    if not os.path.isdir(directory):
        raise DataError(f"{what} directory not found: {directory}")
    keys = sorted(name[: -len(suffix)] for name in os.listdir(directory)
                  if name.endswith(suffix) and not name.startswith("."))
    if not keys:
        raise DataError(f"no {what} files (*{suffix}) in {directory}")
    return keys


def read_npz(path: str, required: List[str]) -> dict:
    """Arrays of an .npz file; DataError naming the file when it is missing, corrupt or lacks a key."""
    if not os.path.isfile(path):
        raise DataError(f"file not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as archive:
            missing = [k for k in required if k not in archive.files]
            if missing:
                raise DataError(f"{path}: missing key(s) {missing}; found {archive.files}")
            return {k: archive[k] for k in archive.files}
    except DataError:
        raise
    except Exception as exc:  # zipfile.BadZipFile, ValueError, EOFError, OSError
        raise DataError(f"{path}: cannot read .npz ({type(exc).__name__}: {exc})") from exc


def read_depth(path: str, frame_indices: torch.Tensor, total: int, frame_hw=None) -> torch.Tensor:
    """Depth [T, H, W] float32 of the given frames from a `{key}.depth.npz` holding `total` frames
    (of size frame_hw, when given, so that depth and frames share their pixels)."""
    depth = read_npz(path, ["depth"])["depth"]
    expected = f"[{total}, {frame_hw[0]}, {frame_hw[1]}]" if frame_hw else f"[{total}, H, W]"
    if depth.ndim != 3 or depth.shape[0] != total or (frame_hw and tuple(depth.shape[1:]) != tuple(frame_hw)):
        raise DataError(f"{path}: depth must have shape {expected} (one per video frame), got {list(depth.shape)}")
    return torch.from_numpy(depth[frame_indices.numpy()].astype("float32"))
