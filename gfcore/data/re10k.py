"""RealEstate10K clips with cameras, in the raw layout or DFoT's processed layout.

raw:   {root}/{split}/{key}.txt camera files, frames as {root}/{split}/{key}.mp4 (one video frame
       per camera line) or as images {root}/{split}/{key}/{timestamp}.png|jpg;
       optional ground-truth depth {root}/{split}/{key}.depth.npz (the synthetic scenes).
dfot:  {root}/{split}_256/{key}.mp4 with {root}/{split}_poses/{key}.pt, a [T, 18] tensor of the camera
       file's numbers after the timestamp (as DFoT's download step saves them)
       (fx fy cx cy normalised, then the 3x4 world-to-camera matrix).
"""
from __future__ import annotations

import os
from typing import Optional, Sequence, Union

import numpy as np
import torch

from gfcore.data.base import ClipDataset, list_keys, read_depth
from gfcore.data.camera_file import read_camera_file
from gfcore.data.errors import DataError
from gfcore.data.geometry import dfot_poses_to_cameras, flip_horizontal, re10k_rows_to_cameras, relative_to_first
from gfcore.data.transforms import as_hw, frames_to_tensor, resize_crop_clip
from gfcore.data.video import read_video, video_num_frames
from gfcore.io.safe_load import load_weights_only

__all__ = ["RealEstate10K"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")


def _read_images(paths: Sequence[str]) -> np.ndarray:
    from PIL import Image

    frames = []
    for path in paths:
        try:
            with Image.open(path) as image:
                frames.append(np.asarray(image.convert("RGB")))
        except Exception as exc:  # PIL.UnidentifiedImageError, OSError on truncated files
            raise DataError(f"{path}: cannot read image ({type(exc).__name__}: {exc})") from exc
        if frames[-1].shape != frames[0].shape:
            raise DataError(f"{path}: image size {frames[-1].shape[:2]} differs from {paths[0]} {frames[0].shape[:2]}")
    return np.stack(frames)


class RealEstate10K(ClipDataset):
    """Camera-conditioned clips. Each item is a dict:

    frames [T, 3, H, W] float32 in [-1, 1]; intrinsics [T, 3, 3] float32 in pixels of the returned
    H x W; c2w [T, 4, 4] float32 camera-to-world relative to the clip's first frame (OpenCV
    axes); key str; frame_indices [T] int64 (rows of the camera file); flipped bool; and with
    with_depth=True depth [T, H, W] float32 (z-depth).

    Args:
        root, split: where the data lies (see the module docstring for the layouts).
        num_frames: T. frame_skip: stride between returned frames.
        resolution: output size, int or (H, W); frames are resized to cover it and centre-cropped.
        layout: "auto" (dfot when {root}/{split}_poses exists, else raw), "raw" or "dfot".
        random_start: random clip start; defaults to True for split "train", else start at 0.
        hflip_prob: probability of a horizontal flip (images, intrinsics and poses mirrored).
        with_depth: also return ground-truth depth from {key}.depth.npz (raw layout).
        on_error: "raise" or "skip" (log, count in num_skipped, return the next clip).
    """

    def __init__(
        self,
        root: str,
        split: str = "train",
        num_frames: int = 16,
        resolution: Union[int, Sequence[int]] = 256,
        frame_skip: int = 1,
        layout: str = "auto",
        random_start: Optional[bool] = None,
        hflip_prob: float = 0.0,
        with_depth: bool = False,
        on_error: str = "raise",
    ):
        super().__init__(num_frames, frame_skip, split == "train" if random_start is None else random_start, on_error)
        self.root = os.fspath(root)
        self.split = split
        self.resolution = as_hw(resolution)
        if not 0.0 <= hflip_prob <= 1.0:
            raise ValueError(f"hflip_prob must lie in [0, 1], got {hflip_prob}")
        self.hflip_prob = float(hflip_prob)
        self.with_depth = bool(with_depth)
        self.raw_dir = os.path.join(self.root, split)
        self.video_dir = os.path.join(self.root, f"{split}_256")
        self.pose_dir = os.path.join(self.root, f"{split}_poses")
        if layout == "auto":
            layout = "dfot" if os.path.isdir(self.pose_dir) else "raw"
        if layout not in ("raw", "dfot"):
            raise ValueError(f"layout must be 'auto', 'raw' or 'dfot', got {layout!r}")
        if layout == "dfot" and with_depth:
            raise ValueError("with_depth needs the raw layout ({key}.depth.npz next to the camera file)")
        self.layout = layout
        if layout == "raw":
            self.keys = list_keys(self.raw_dir, ".txt", "RealEstate10K camera")
        else:
            self.keys = list_keys(self.pose_dir, ".pt", "DFoT pose")

    # Loading the source: all frames' cameras (normalised rows) and a way to read chosen frames.
    def _load_raw(self, key: str, indices_for):
        camera_path = os.path.join(self.raw_dir, f"{key}.txt")
        cameras = read_camera_file(camera_path)
        total = len(cameras)
        video_path = os.path.join(self.raw_dir, f"{key}.mp4")
        image_dir = os.path.join(self.raw_dir, key)
        if os.path.isfile(video_path):
            video_frames = video_num_frames(video_path)
            if video_frames != total:
                raise DataError(
                    f"{camera_path}: {total} camera lines but {video_path} has {video_frames} frames"
                )
            indices = indices_for(total, camera_path)
            frames = read_video(video_path, indices.tolist())
        elif os.path.isdir(image_dir):
            by_stamp = {}
            for name in os.listdir(image_dir):
                stem, ext = os.path.splitext(name)
                if ext.lower() in IMAGE_EXTENSIONS and stem.isdigit():
                    by_stamp[int(stem)] = os.path.join(image_dir, name)
            if len(by_stamp) != total:
                raise DataError(f"{camera_path}: {total} camera lines but {image_dir} holds {len(by_stamp)} frames")
            indices = indices_for(total, camera_path)
            paths = []
            for i in indices.tolist():
                stamp = int(cameras.timestamps[i])
                if stamp not in by_stamp:
                    raise DataError(
                        f"{camera_path}:{i + 2}: no image for timestamp {stamp} in {image_dir}"
                    )
                paths.append(by_stamp[stamp])
            frames = _read_images(paths)
        else:
            raise DataError(f"{camera_path}: no frames: neither {video_path} nor the folder {image_dir} exists")
        rows = torch.from_numpy(cameras.rows[indices.numpy()])
        height, width = frames.shape[1:3]
        depth = None
        if self.with_depth:
            depth = read_depth(os.path.join(self.raw_dir, f"{key}.depth.npz"), indices, total, (height, width))
        K, _, c2w = re10k_rows_to_cameras(rows, width, height)
        return frames, K, c2w, indices, depth

    def _load_dfot(self, key: str, indices_for):
        pose_path = os.path.join(self.pose_dir, f"{key}.pt")
        video_path = os.path.join(self.video_dir, f"{key}.mp4")
        try:
            poses = load_weights_only(pose_path, "pose file")
        except Exception as exc:
            raise DataError(f"{pose_path}: cannot load poses ({type(exc).__name__}: {exc})") from exc
        if not isinstance(poses, torch.Tensor):
            raise DataError(f"{pose_path}: expected a tensor of camera rows [T, 18], got {type(poses).__name__}")
        from gfcore.data.dfot_re10k import pose_from_rows

        # DFoT stores each camera file's 18 numbers per frame; its loader keeps rows[:, :4] ++ rows[:, 6:]
        poses = pose_from_rows(poses, pose_path)
        total = poses.shape[0]
        video_frames = video_num_frames(video_path)
        if video_frames != total:
            raise DataError(f"{pose_path}: {total} poses but {video_path} has {video_frames} frames")
        indices = indices_for(total, pose_path)
        frames = read_video(video_path, indices.tolist())
        height, width = frames.shape[1:3]
        K, _, c2w = dfot_poses_to_cameras(poses[indices].double(), width, height)
        return frames, K, c2w, indices, None

    def _load(self, index: int) -> dict:
        key = self.keys[index]
        loader = self._load_raw if self.layout == "raw" else self._load_dfot
        frames_u8, K, c2w, indices, depth = loader(key, self.frame_indices)
        frames, K, depth = resize_crop_clip(frames_to_tensor(frames_u8), K, self.resolution, depth)
        c2w = relative_to_first(c2w)
        flipped = self.hflip_prob > 0 and bool(torch.rand(()) < self.hflip_prob)
        if flipped:
            frames = frames.flip(-1)
            depth = None if depth is None else depth.flip(-1)
            K, c2w = flip_horizontal(K, c2w, self.resolution[1])
        item = {
            "frames": frames.contiguous(),
            "intrinsics": K.float(),
            "c2w": c2w.float(),
            "key": key,
            "frame_indices": indices,
            "flipped": flipped,
        }
        if depth is not None:
            item["depth"] = depth.contiguous()
        return item
