"""The files of a RealEstate10K split as DFoT stores them after its download-time preprocessing.

    {root}/{split}_{res}/{key}.mp4   frames resized to cover res x res and centre-cropped (256: an
                 or {key}.npz        mp4, 64: an .npz holding "video" uint8 [T, 3, res, res]);
                                     gfcore.data.dfot_re10k.resize_crop_frames makes them
    {root}/{split}_poses/{key}.pt    float32 [T, 18]: the numbers after the timestamp of each
                                     camera-file line (fx fy cx cy 0 0, 3x4 world-to-camera)

DFoT's split names are "training" and "test". Videos are taken in the order of their sorted paths
(DFoT's metadata order, which its clip numbering follows). A video's length is its pose rows:
reading them all once at start-up validates every pose file before training begins.
"""
from __future__ import annotations

import os
from typing import List, Sequence

import numpy as np
import torch

from gfcore.data.dfot_re10k import POSE_NUMBERS, ROW_NUMBERS
from gfcore.data.errors import DataError

__all__ = ["DFoTFiles", "LAYOUT_HINT"]

FRAME_SUFFIXES = (".mp4", ".npz")
LAYOUT_HINT = "{split}_{res}/KEY.mp4 (or .npz) and {split}_poses/KEY.pt"


class DFoTFiles:
    """Frames and camera rows of one split of DFoT's RealEstate10K layout.

    Args:
        root: the dataset folder (DFoT's save_dir).
        split: "training" or "test" (DFoT's folder names).
        resolution: the side of the square frames stored there (256 or 64 in DFoT).
    """

    def __init__(self, root: str, split: str = "training", resolution: int = 256):
        self.root, self.split, self.resolution = os.fspath(root), split, int(resolution)
        layout = LAYOUT_HINT.format(split=split, res=self.resolution)
        if not os.path.isdir(self.root):
            raise DataError(f"{self.root}: data.root does not exist (expected DFoT's RealEstate10K layout: {layout})")
        self.frame_dir = os.path.join(self.root, f"{split}_{self.resolution}")
        self.pose_dir = os.path.join(self.root, f"{split}_poses")
        for folder in (self.frame_dir, self.pose_dir):
            if not os.path.isdir(folder):
                raise DataError(f"{folder}: no such folder (data.root must hold DFoT's RealEstate10K layout: {layout})")
        self.frame_paths = self._frame_paths()
        self.keys = [os.path.splitext(os.path.basename(p))[0] for p in self.frame_paths]
        self.pose_paths = [os.path.join(self.pose_dir, f"{key}.pt") for key in self.keys]
        self.lengths = [len(self.rows(i)) for i in range(len(self.keys))]

    def _frame_paths(self) -> List[str]:
        found = []
        for folder, _, names in os.walk(self.frame_dir):
            found += [os.path.join(folder, n) for n in names if n.endswith(FRAME_SUFFIXES) and not n.startswith(".")]
        if not found:
            raise DataError(f"{self.frame_dir}: no videos (*.mp4 or *.npz) in it")
        return sorted(found)  # DFoT sorts the paths as strings

    def __len__(self) -> int:
        return len(self.keys)

    def rows(self, video: int) -> torch.Tensor:
        """Camera rows float32 [T, 18] of video `video` (DataError naming the file otherwise)."""
        from gfcore.io.safe_load import load_weights_only

        path = self.pose_paths[video]
        if not os.path.isfile(path):
            raise DataError(f"{path}: pose file not found (one belongs beside {self.frame_paths[video]})")
        try:
            rows = load_weights_only(path, "pose file")
        except Exception as exc:
            raise DataError(f"{path}: cannot load poses ({type(exc).__name__}: {exc})") from exc
        rows = torch.as_tensor(rows) if isinstance(rows, np.ndarray) else rows
        if not isinstance(rows, torch.Tensor) or rows.dim() != 2 or rows.shape[1] != ROW_NUMBERS or not len(rows):
            shape = list(rows.shape) if isinstance(rows, torch.Tensor) else type(rows).__name__
            hint = (" (a DFoT 16-D pose; the file must hold the camera rows it is made from)"
                    if isinstance(rows, torch.Tensor) and rows.shape[-1:] == (POSE_NUMBERS,) else "")
            raise DataError(f"{path}: expected camera rows [T, 18] (fx fy cx cy 0 0 + 3x4 world-to-camera), "
                            f"got {shape}{hint}")
        return rows.to(torch.float32)

    def frames(self, video: int, indices: Sequence[int]) -> np.ndarray:
        """uint8 [len(indices), res, res, 3] frames of video `video`, in the order of `indices`."""
        path = self.frame_paths[video]
        index = np.asarray(indices, dtype=np.int64)
        if path.endswith(".npz"):
            frames = self._npz_frames(path, index, self.lengths[video])
        else:
            from gfcore.data.video import read_video

            frames = read_video(path, index.tolist())
        res = self.resolution
        if frames.shape[1:] != (res, res, 3):
            raise DataError(f"{path}: frames are {frames.shape[1]}x{frames.shape[2]}x{frames.shape[3]}, expected "
                            f"{res}x{res}x3 (data.resolution; DFoT stores them resized and centre-cropped: "
                            f"gfcore.data.dfot_re10k.resize_crop_frames)")
        return frames

    def _npz_frames(self, path: str, index: np.ndarray, length: int) -> np.ndarray:
        try:
            with np.load(path, allow_pickle=False) as archive:
                video = archive["video"]
        except Exception as exc:
            raise DataError(f"{path}: cannot read the 'video' array ({type(exc).__name__}: {exc})") from exc
        if video.dtype != np.uint8 or video.ndim != 4 or video.shape[1] != 3:
            raise DataError(f"{path}: expected 'video' uint8 [T, 3, H, W], got {video.dtype} {list(video.shape)}")
        if len(video) != length:
            raise DataError(f"{path}: {len(video)} frames but its pose file has {length} rows")
        return np.ascontiguousarray(video[index].transpose(0, 2, 3, 1))
