"""RealEstate10K as DFoT prepares it for training (the pipeline Geometry Forcing trains with).

What DFoT does (datasets/video/realestate10k.py and base_video.py of the authors' code; the
numbers are from configurations/dataset/realestate10k.yaml and
configurations/dataset_experiment/realestate10k_video_generation.yaml):

* Frames, once, at download time: every frame is resized with PIL's LANCZOS filter so that it
  covers resolution x resolution (scale max(res/H, res/W), each side rounded with Python's
  round), then centre-cropped at row (H' - res) // 2, column (W' - res) // 2. Stored as uint8
  (256: an mp4 at 10 fps, 64: an .npz). `resize_crop_frames`.
* Poses: the 18 numbers after the timestamp of each camera-file line, as float32, then
  `rows[:, :4] ++ rows[:, 6:]`: 4 normalised intrinsics (fx/W, fy/H, cx/W, cy/H of the source
  video) and the 3x4 world-to-camera [R|t] row by row. The intrinsics are NOT changed for the
  crop: DFoT's ray map multiplies them by the square resolution (`pose_from_rows`;
  `crop_adjusted_pose` gives what they would be for the cropped frames, which DFoT does not use).
* Pixels: uint8 / 255 (float64, then float32) in [0, 1]; the model normalises (x - mean) / std
  per channel with mean (0.577, 0.517, 0.461), std (0.249, 0.249, 0.268) directly on the [0, 1]
  values: there is no [-1, 1] step (`frames_to_unit`, `normalize`).
* Training clips: the clip's start frame comes from a deterministic shuffle of all clip starts
  (`ClipSchedule`), the stride is min((L - start - 1) // (max_frames - 1),
  frame_skip + int(subepoch * frame_skip_increase)) (`clip_frame_skip`), frames
  start, start + stride, ... (max_frames of them).
* Augmentation, in this order, each a draw of Python's random (skipped, no draw, when its
  probability is 0): horizontal flip (frames mirrored; pose entries 5, 6, 7, 8, 12, i.e. r12,
  r13, t1, r21, r31, negated: E' = F E F with F = diag(-1, 1, 1, 1); cx is left as it is),
  back-and-forth (0 2 4 ... then the odd frames backwards), reversal (`augment`).
"""
from __future__ import annotations

import bisect
import os
import random
import threading
from collections import OrderedDict
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from gfcore.data.camera_file import read_camera_file
from gfcore.data.errors import DataError

__all__ = [
    "DFOT_MEAN",
    "DFOT_STD",
    "FLIP_NEGATED",
    "crop_geometry",
    "resize_crop_frames",
    "pose_from_rows",
    "crop_adjusted_pose",
    "frames_to_unit",
    "normalize",
    "unnormalize",
    "flip_horizontal",
    "back_and_forth",
    "reverse",
    "augment",
    "training_frame_skip",
    "clip_frame_skip",
    "clip_frame_indices",
    "ClipSchedule",
    "training_item",
    "load_raw_clip",
]

DFOT_MEAN = (0.577, 0.517, 0.461)
DFOT_STD = (0.249, 0.249, 0.268)
# Entries of the 16-D pose a horizontal flip negates: r12, r13, t1, r21, r31 (4 + row-major 3x4).
FLIP_NEGATED = (5, 6, 7, 8, 12)
ROW_NUMBERS = 18  # numbers after the timestamp on a camera-file line
POSE_NUMBERS = 16

ArrayLike = Union[np.ndarray, torch.Tensor]


def _shape(x) -> List[int]:
    return list(x.shape) if hasattr(x, "shape") else [type(x).__name__]


def _check_pose(pose: torch.Tensor, name: str = "pose") -> None:
    if not isinstance(pose, torch.Tensor) or pose.dim() != 2 or pose.shape[1] != POSE_NUMBERS:
        hint = " (camera-file rows: convert them with pose_from_rows)" if _shape(pose)[-1:] == [ROW_NUMBERS] else ""
        raise DataError(f"{name}: expected a [T, 16] tensor (4 intrinsics + 3x4 world-to-camera), "
                        f"got {_shape(pose)}{hint}")


# ---------------------------------------------------------------------------------------------
# frames
# ---------------------------------------------------------------------------------------------

def crop_geometry(height: int, width: int, resolution: int) -> Tuple[Tuple[int, int], Tuple[int, int]]:
    """((H', W'), (row, col)): the size DFoT resizes an H x W frame to and the crop's corner."""
    if min(height, width, resolution) <= 0:
        raise ValueError(f"sizes must be positive, got {height}x{width} to {resolution}")
    scale = max(resolution / height, resolution / width)
    scaled = (round(height * scale), round(width * scale))
    return scaled, ((scaled[0] - resolution) // 2, (scaled[1] - resolution) // 2)


def resize_crop_frames(
    frames: np.ndarray, resolution: int = 256, allow_upscale: bool = False, source: str = "frames"
) -> np.ndarray:
    """uint8 [T, H, W, 3] -> uint8 [T, res, res, 3]: PIL LANCZOS resize to cover, centre crop.

    Frames with a side shorter than `resolution` are refused (DFoT would upscale them; pass
    allow_upscale=True to do the same). `source` names the frames in errors.
    """
    from PIL import Image

    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise DataError(f"{source}: expected uint8 frames [T, H, W, 3], got {frames.dtype} {list(frames.shape)}")
    height, width = frames.shape[1:3]
    if min(height, width) < resolution and not allow_upscale:
        raise DataError(f"{source}: frames of {height}x{width} are smaller than the {resolution}x{resolution} "
                        f"crop (DFoT would upscale them; pass allow_upscale=True to do the same)")
    (scaled_h, scaled_w), (row, col) = crop_geometry(height, width, resolution)
    out = np.empty((len(frames), resolution, resolution, 3), dtype=np.uint8)
    for t, frame in enumerate(frames):
        image = Image.fromarray(frame).resize((scaled_w, scaled_h), Image.Resampling.LANCZOS)
        out[t] = np.asarray(image)[row:row + resolution, col:col + resolution]
    return out


def frames_to_unit(frames: np.ndarray) -> torch.Tensor:
    """uint8 [T, H, W, 3] -> float32 [T, 3, H, W] in [0, 1], as DFoT loads them (x / 255 in
    float64, then float32)."""
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise DataError(f"frames: expected uint8 [T, H, W, 3], got {frames.dtype} {list(frames.shape)}")
    return torch.from_numpy(frames.transpose(0, 3, 1, 2) / 255.0).float()


def _stats(like: torch.Tensor, values: Sequence[float]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32, device=like.device).view(-1, 1, 1)


def normalize(frames: torch.Tensor, mean: Sequence[float] = DFOT_MEAN, std: Sequence[float] = DFOT_STD) -> torch.Tensor:
    """[..., 3, H, W] in [0, 1] -> (x - mean) / std per channel (the model's input)."""
    if frames.dim() < 3 or frames.shape[-3] != len(mean):
        raise ValueError(f"frames: expected [..., {len(mean)}, H, W], got {list(frames.shape)}")
    return (frames - _stats(frames, mean)) / _stats(frames, std)


def unnormalize(frames: torch.Tensor, mean: Sequence[float] = DFOT_MEAN, std: Sequence[float] = DFOT_STD) -> torch.Tensor:
    """Inverse of `normalize`: x * std + mean."""
    if frames.dim() < 3 or frames.shape[-3] != len(mean):
        raise ValueError(f"frames: expected [..., {len(mean)}, H, W], got {list(frames.shape)}")
    return frames * _stats(frames, std) + _stats(frames, mean)


# ---------------------------------------------------------------------------------------------
# poses
# ---------------------------------------------------------------------------------------------

def pose_from_rows(rows: ArrayLike, source: str = "rows") -> torch.Tensor:
    """Camera-file rows [T, 18] (fx fy cx cy 0 0 then 3x4 world-to-camera) -> float32 [T, 16]
    DFoT pose: rows[:, :4] ++ rows[:, 6:], intrinsics as in the file (normalised by the source
    video's size, not changed for the crop). `source` (e.g. the camera file) names it in errors."""
    rows = torch.as_tensor(np.asarray(rows) if not isinstance(rows, torch.Tensor) else rows)
    if rows.dim() != 2 or rows.shape[1] != ROW_NUMBERS:
        hint = " (already a DFoT pose?)" if rows.dim() == 2 and rows.shape[1] == POSE_NUMBERS else ""
        raise DataError(f"{source}: expected camera rows [T, 18] (fx fy cx cy 0 0 + 3x4 world-to-camera), "
                        f"got {list(rows.shape)}{hint}")
    rows = rows.to(torch.float32)
    return torch.cat([rows[:, :4], rows[:, 6:]], dim=-1)


def crop_adjusted_pose(pose: torch.Tensor, source_hw: Tuple[int, int], resolution: int) -> torch.Tensor:
    """The pose with its intrinsics re-normalised to the cropped res x res frames (fx' = fx W'/res,
    cx' = (cx W' - col)/res, likewise y). DFoT does NOT do this: its poses keep the source video's
    normalisation (`pose_from_rows`); use this only where geometrically right rays are wanted."""
    _check_pose(pose)
    (scaled_h, scaled_w), (row, col) = crop_geometry(int(source_hw[0]), int(source_hw[1]), resolution)
    out = pose.clone()
    out[:, 0] = pose[:, 0] * scaled_w / resolution
    out[:, 1] = pose[:, 1] * scaled_h / resolution
    out[:, 2] = (pose[:, 2] * scaled_w - col) / resolution
    out[:, 3] = (pose[:, 3] * scaled_h - row) / resolution
    return out


# ---------------------------------------------------------------------------------------------
# augmentation
# ---------------------------------------------------------------------------------------------

def flip_horizontal(frames: torch.Tensor, pose: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Mirrored frames [T, C, H, W] and the pose with entries FLIP_NEGATED negated (E' = F E F,
    F = diag(-1, 1, 1, 1)); the intrinsics (cx too) stay as they are, as in DFoT."""
    _check_pose(pose)
    pose = pose.clone()
    pose[:, list(FLIP_NEGATED)] *= -1
    return frames.flip(-1), pose


def back_and_forth(x: torch.Tensor) -> torch.Tensor:
    """Frames 0 1 2 ... 2k+1 -> 0 2 4 ... 2k 2k+1 ... 3 1 (along dim 0)."""
    return torch.cat([x[::2], x[1::2].flip(0)], dim=0).contiguous()


def reverse(x: torch.Tensor) -> torch.Tensor:
    """Frames in reverse order (along dim 0)."""
    return x.flip(0).contiguous()


def _draw(rng: random.Random, p: float) -> bool:
    # DFoT's random_bool: no draw at all when p == 0.
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"probabilities must lie in [0, 1], got {p}")
    return p != 0 and rng.random() < p


def augment(
    frames: torch.Tensor,
    pose: torch.Tensor,
    rng: random.Random,
    horizontal_flip_prob: float = 0.5,
    back_and_forth_prob: float = 0.1,
    reverse_prob: float = 0.5,
) -> Tuple[torch.Tensor, torch.Tensor, Tuple[str, ...]]:
    """DFoT's training augmentation: flip, then back-and-forth, then reversal, each with its
    probability drawn from `rng` (a random.Random; seeded alike, it draws what DFoT's global
    Python random draws). Defaults: the RE10K training configuration. Returns (frames, pose,
    names of the augmentations applied)."""
    _check_pose(pose)
    if len(frames) != len(pose):
        raise ValueError(f"frames ({len(frames)}) and pose ({len(pose)}) differ in length")
    applied = []
    if _draw(rng, horizontal_flip_prob):
        frames, pose = flip_horizontal(frames, pose)
        applied.append("flip")
    if _draw(rng, back_and_forth_prob):
        frames, pose = back_and_forth(frames), back_and_forth(pose)
        applied.append("back_and_forth")
    if _draw(rng, reverse_prob):
        frames, pose = reverse(frames), reverse(pose)
        applied.append("reverse")
    return frames, pose, tuple(applied)


# ---------------------------------------------------------------------------------------------
# which frames: the stride schedule and the clip order
# ---------------------------------------------------------------------------------------------

def training_frame_skip(frame_skip: int = 10, subepoch: Optional[int] = None, frame_skip_increase: float = 1) -> int:
    """The stride DFoT aims for in a training subepoch: frame_skip + int(subepoch * increase)
    (a Lightning epoch of `subdataset_size` clips is one subepoch)."""
    if frame_skip_increase == 0:
        return int(frame_skip)
    if subepoch is None:
        raise ValueError("subepoch is needed when frame_skip_increase is not 0")
    return int(frame_skip) + int(subepoch * frame_skip_increase)


def clip_frame_skip(video_length: int, start_frame: int, max_frames: int, training_skip: int) -> int:
    """The stride of one training clip: the schedule's, capped so that max_frames frames fit from
    start_frame: min((L - start - 1) // (max_frames - 1), training_skip)."""
    if max_frames < 2:
        raise ValueError(f"max_frames must be >= 2, got {max_frames}")
    skip = min((video_length - start_frame - 1) // (max_frames - 1), training_skip)
    if skip <= 0:
        raise DataError(f"a clip of {max_frames} frames from frame {start_frame} does not fit in "
                        f"{video_length} frames")
    return skip


def clip_frame_indices(start_frame: int, frame_skip: int, max_frames: int) -> torch.Tensor:
    """start, start + skip, ..., max_frames of them (int64)."""
    return torch.arange(max_frames, dtype=torch.int64) * frame_skip + start_frame


class ClipSchedule:
    """DFoT's training clips over a list of videos: which videos are used, the clip starts, their
    order per subepoch and each clip's frames.

    Args:
        video_lengths: frames of each video (in DFoT's metadata order, sorted paths).
        max_frames, frame_skip: as in the config (16, 10 for RE10K); a clip spans
            1 + (max_frames - 1) * frame_skip frames, every start with such a span is a clip
            (a shorter video: one clip at frame 0).
        maximize_training_data: keep videos of >= max_frames frames (else >= the span).
        subdataset_size: clips per subepoch; None: one epoch is every clip, shuffled once (seed 0).
        frame_skip_increase: added to the stride per subepoch.
    """

    def __init__(
        self,
        video_lengths: Sequence[int],
        max_frames: int = 16,
        frame_skip: int = 10,
        maximize_training_data: bool = True,
        subdataset_size: Optional[int] = None,
        frame_skip_increase: float = 1,
    ):
        self.max_frames = int(max_frames)
        self.frame_skip = int(frame_skip)
        self.span = 1 + (self.max_frames - 1) * self.frame_skip
        self.frame_skip_increase = frame_skip_increase
        min_frames = min(self.span, self.max_frames) if maximize_training_data else self.span
        self.videos = [i for i, n in enumerate(video_lengths) if n >= min_frames]
        if not self.videos:
            raise DataError(f"no video has the {min_frames} frames a clip needs")
        self.lengths = [int(video_lengths[i]) for i in self.videos]
        self.cumulative = np.cumsum([max(n - self.span + 1, 1) for n in self.lengths]).tolist()
        self.subdataset_size = subdataset_size
        # item() is called per clip; the order of a subepoch shuffles every clip (millions for
        # RE10K), so the last two orders are kept (a batch may straddle two subepochs).
        self._orders: "OrderedDict[Optional[int], np.ndarray]" = OrderedDict()
        self._orders_lock = threading.Lock()

    @property
    def num_clips(self) -> int:
        return self.cumulative[-1]

    def order(self, subepoch: Optional[int] = None) -> List[int]:
        """Clip numbers of the subepoch, in order (DFoT's idx_remap)."""
        total = self.num_clips
        if self.subdataset_size is None or subepoch is None:
            order = list(range(total))
            random.Random(0).shuffle(order)
            return order
        size = int(self.subdataset_size)
        first_epoch, first = divmod(size * subepoch, total)
        last_epoch, last = divmod(size - 1 + size * subepoch, total)
        if last_epoch - first_epoch > 1:
            raise ValueError(f"subdataset_size {size} exceeds the {total} clips")
        shuffled = {}
        for epoch in range(first_epoch, last_epoch + 1):
            shuffled[epoch] = list(range(total))
            random.Random(epoch).shuffle(shuffled[epoch])
        if first_epoch == last_epoch:
            return shuffled[first_epoch][first:last + 1]
        return shuffled[first_epoch][first:] + shuffled[last_epoch][:last + 1]

    def _cached_order(self, subepoch: Optional[int]) -> np.ndarray:
        with self._orders_lock:
            if subepoch not in self._orders:
                self._orders[subepoch] = np.asarray(self.order(subepoch), dtype=np.int64)
                while len(self._orders) > 2:
                    self._orders.popitem(last=False)
            return self._orders[subepoch]

    def _locate(self, clip: int) -> Tuple[int, int]:
        """Clip number -> (index into self.videos, start frame)."""
        clip = int(clip)
        if not 0 <= clip < self.num_clips:
            raise IndexError(f"clip {clip} out of range for {self.num_clips} clips")
        k = bisect.bisect_right(self.cumulative, clip)
        return k, clip - (self.cumulative[k - 1] if k else 0)

    def locate(self, clip: int) -> Tuple[int, int]:
        """Clip number -> (video index into video_lengths, start frame)."""
        k, start = self._locate(clip)
        return self.videos[k], start

    def item(self, index: int, subepoch: Optional[int] = None) -> Tuple[int, torch.Tensor]:
        """Dataset item `index` of the subepoch -> (video index, frame indices [max_frames])."""
        k, start = self._locate(self._cached_order(subepoch)[index])
        skip = clip_frame_skip(self.lengths[k], start, self.max_frames,
                               training_frame_skip(self.frame_skip, subepoch, self.frame_skip_increase))
        return self.videos[k], clip_frame_indices(start, skip, self.max_frames)


# ---------------------------------------------------------------------------------------------
# one training item
# ---------------------------------------------------------------------------------------------

def training_item(
    frames: np.ndarray,
    rows: ArrayLike,
    frame_indices: Sequence[int],
    rng: Optional[random.Random] = None,
    horizontal_flip_prob: float = 0.5,
    back_and_forth_prob: float = 0.1,
    reverse_prob: float = 0.5,
    source: str = "clip",
) -> Dict[str, object]:
    """A DFoT training item from a preprocessed video (uint8 [L, res, res, 3], see
    `resize_crop_frames`) and its camera rows [L, 18]: videos [T, 3, res, res] float32 in [0, 1]
    (normalise with `normalize` before the model), conds [T, 16], nonterminal [T], and the
    augmentations applied (none when rng is None)."""
    frames = np.asarray(frames)
    pose_all = pose_from_rows(rows, source)
    if len(frames) != len(pose_all):
        raise DataError(f"{source}: {len(frames)} frames but {len(pose_all)} camera rows")
    index = np.asarray(frame_indices, dtype=np.int64)
    if index.min() < 0 or index.max() >= len(frames):
        raise DataError(f"{source}: frame indices {index.tolist()} out of range for {len(frames)} frames")
    videos, conds = frames_to_unit(frames[index]), pose_all[torch.from_numpy(index)]
    applied: Tuple[str, ...] = ()
    if rng is not None:
        videos, conds, applied = augment(videos, conds, rng, horizontal_flip_prob, back_and_forth_prob, reverse_prob)
    return {"videos": videos, "conds": conds, "nonterminal": torch.ones(len(index), dtype=torch.bool),
            "augmentations": applied}


def load_raw_clip(camera_path: str, frames_path: Optional[str] = None) -> Tuple[np.ndarray, np.ndarray]:
    """A raw RealEstate10K clip: (uint8 frames [T, H, W, 3], camera rows float64 [T, 18]).

    Frames from `frames_path` (an .mp4 with one frame per camera line, or a folder of
    {timestamp}.png|jpg); default: {camera file without .txt}.mp4, else that folder.
    """
    from gfcore.data.re10k import IMAGE_EXTENSIONS, _read_images
    from gfcore.data.video import read_video

    cameras = read_camera_file(camera_path)
    stem = os.path.splitext(os.fspath(camera_path))[0]
    if frames_path is None:
        frames_path = stem + ".mp4" if os.path.isfile(stem + ".mp4") else stem
    if os.path.isfile(frames_path):
        frames = read_video(frames_path)
    elif os.path.isdir(frames_path):
        paths = []
        for stamp in cameras.timestamps.tolist():
            found = [os.path.join(frames_path, f"{stamp}{ext}") for ext in IMAGE_EXTENSIONS]
            found = [p for p in found if os.path.isfile(p)]
            if not found:
                raise DataError(f"{camera_path}: no image for timestamp {stamp} in {frames_path}")
            paths.append(found[0])
        frames = _read_images(paths)
    else:
        raise DataError(f"{camera_path}: no frames: {frames_path} is neither a video nor a folder")
    if len(frames) != len(cameras):
        raise DataError(f"{camera_path}: {len(cameras)} camera lines but {frames_path} has {len(frames)} frames")
    return frames, cameras.rows
