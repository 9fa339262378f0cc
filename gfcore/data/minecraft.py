"""Action-conditioned clips in the Minecraft layout.

{root}/{split}/{key}.mp4 with {root}/{split}/{key}.npz holding `actions` [T, A] (one row per
video frame; row t is the action that led to frame t). Optional: {key}.depth.npz (depth
[T, H, W], intrinsics [T, 3, 3], c2w [T, 4, 4]) as the synthetic walker writes.
"""
from __future__ import annotations

import os
from typing import Optional, Sequence, Union

import numpy as np
import torch

from gfcore.data.base import ClipDataset, list_keys, read_depth, read_npz
from gfcore.data.errors import DataError
from gfcore.data.geometry import relative_to_first, resize_crop_intrinsics
from gfcore.data.transforms import as_hw, frames_to_tensor, resize_crop_depth, resize_crop_frames
from gfcore.data.video import read_video, video_num_frames

__all__ = ["Minecraft"]


class Minecraft(ClipDataset):
    """Action-conditioned clips. Each item is a dict:

    frames [T, 3, H, W] float32 in [-1, 1]; actions [T, A] float32; key str; frame_indices [T]
    int64; and with with_depth=True (clips from the synthetic walker) depth [T, H, W] float32,
    intrinsics [T, 3, 3] in pixels of the returned size and c2w [T, 4, 4] relative to frame 0.

    Args:
        root, split: clips lie in {root}/{split}/.
        num_frames: T. frame_skip: stride between returned frames (actions are those of the
            returned frames; with frame_skip > 1 the skipped frames' actions are dropped).
        resolution: output size, int or (H, W), resized to cover and centre-cropped; None keeps
            the stored size.
        random_start: random clip start; defaults to True for split "train".
        with_depth: also return depth, intrinsics and c2w from {key}.depth.npz.
        on_error: "raise" or "skip" (log, count in num_skipped, return the next clip).
    """

    def __init__(
        self,
        root: str,
        split: str = "train",
        num_frames: int = 16,
        resolution: Optional[Union[int, Sequence[int]]] = None,
        frame_skip: int = 1,
        random_start: Optional[bool] = None,
        with_depth: bool = False,
        on_error: str = "raise",
    ):
        super().__init__(num_frames, frame_skip, split == "train" if random_start is None else random_start, on_error)
        self.root = os.fspath(root)
        self.split = split
        self.resolution = None if resolution is None else as_hw(resolution)
        self.with_depth = bool(with_depth)
        self.directory = os.path.join(self.root, split)
        self.keys = list_keys(self.directory, ".mp4", "Minecraft video")

    def _load(self, index: int) -> dict:
        key = self.keys[index]
        video_path = os.path.join(self.directory, f"{key}.mp4")
        action_path = os.path.join(self.directory, f"{key}.npz")
        actions = read_npz(action_path, ["actions"])["actions"]
        if actions.ndim != 2 or not np.issubdtype(actions.dtype, np.number):
            raise DataError(f"{action_path}: 'actions' must be a numeric [T, A] array, got "
                            f"{actions.dtype} {list(actions.shape)}")
        total = video_num_frames(video_path)
        if actions.shape[0] != total:
            raise DataError(f"{action_path}: {actions.shape[0]} action rows but {video_path} has {total} frames")
        indices = self.frame_indices(total, video_path)
        frames = frames_to_tensor(read_video(video_path, indices.tolist()))
        item = {
            "actions": torch.from_numpy(actions[indices.numpy()].astype(np.float32)),
            "key": key,
            "frame_indices": indices,
        }
        if self.with_depth:
            item.update(self._load_geometry(key, indices, total, tuple(frames.shape[-2:])))
        if self.resolution is not None:
            frames = resize_crop_frames(frames, self.resolution)
        item["frames"] = frames.contiguous()
        return item

    def _load_geometry(self, key: str, indices: torch.Tensor, total: int, frame_hw) -> dict:
        """depth, intrinsics and relative c2w of the chosen frames from {key}.depth.npz, resized."""
        path = os.path.join(self.directory, f"{key}.depth.npz")
        depth = read_depth(path, indices, total, frame_hw)
        stored = read_npz(path, ["intrinsics", "c2w"])
        if stored["intrinsics"].shape != (total, 3, 3) or stored["c2w"].shape != (total, 4, 4):
            raise DataError(f"{path}: intrinsics must be [{total}, 3, 3] and c2w [{total}, 4, 4], got "
                            f"{list(stored['intrinsics'].shape)} and {list(stored['c2w'].shape)}")
        K = torch.from_numpy(stored["intrinsics"][indices.numpy()]).double()
        c2w = relative_to_first(torch.from_numpy(stored["c2w"][indices.numpy()]).double())
        if self.resolution is not None:
            K = resize_crop_intrinsics(K, frame_hw, self.resolution)
            depth = resize_crop_depth(depth, self.resolution)
        return {"depth": depth, "intrinsics": K.float(), "c2w": c2w.float()}
