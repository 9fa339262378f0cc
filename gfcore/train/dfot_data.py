"""data.kind=dfot_re10k: DFoT's RealEstate10K training stream as the trainer's step-indexed batches.

The global batch of step s holds clips s B ... s B + B - 1 of DFoT's training stream (B: the clips
of one optimizer step, train.batch_size x train.grad_accum), so the subepochs, and with them the
clip order and the stride schedule, advance as DFoT's Lightning epochs of subdataset_size clips
do. DFoT draws its augmentations from Python's global `random`; here clip b of step s draws from
its own random.Random seeded by (seed, s, b), so a batch is a function of (seed, s) only: a
resumed run sees the batches it would have seen and each DDP rank takes its slice of the same
global batch (gfcore.train.data's contract). Two differences from DFoT's loader, neither in what a
clip is: its last batch of a subepoch is short (drop_last off) where a batch here may straddle two
subepochs, and its DistributedSampler interleaves the ranks where here they take contiguous slices.

Items come in the trainer's convention:
  frames      [T, 3, res, res] float32 in [-1, 1] (DFoT's [0, 1] pixels x 2 - 1)
  intrinsics  [T, 3, 3]: DFoT's normalised intrinsics x res. They are the camera file's, not
              changed for the crop, as DFoT's ray map uses them (the released model saw these).
  c2w         [T, 4, 4]: inverse of the item's (flipped) world-to-camera, relative to the clip's
              first frame (DFoT normalises by the first frame before its ray map). So
              cameras_to_dfot_poses(intrinsics, c2w, res, res) is the item's 16-D pose made
              relative to its first frame, and its ray_encoding is the item's.
  key, frame_indices (the video's frame numbers in the clip's order), flipped, augmentations.
"""
from __future__ import annotations

import random
from typing import Dict, List, Optional, Tuple

import torch

from gfcore.data.build import DFOT_SPLITS
from gfcore.data.dfot_clips import DFoTTrainingClips
from gfcore.data.geometry import dfot_poses_to_cameras, plucker_rays, relative_to_first

__all__ = ["DFoTTrainData", "DFoTStepBatcher", "item_rng", "to_trainer_item", "build_dfot_data"]



def item_rng(seed: int, step: int, sample: int) -> random.Random:
    """The augmentation draws of sample `sample` of step `step`'s global batch. A str seed is
    hashed with SHA-512 by random.Random: the same in every process, whatever PYTHONHASHSEED."""
    return random.Random(f"gfcore.dfot_re10k/{int(seed)}/{int(step)}/{int(sample)}")


def to_trainer_item(item: Dict[str, object], resolution: int) -> Dict[str, object]:
    """A DFoTTrainingClips item in the trainer's convention (see the module docstring)."""
    K, _, c2w = dfot_poses_to_cameras(item["conds"].double(), resolution, resolution)
    return {
        "frames": (item["videos"] * 2 - 1).contiguous(),
        "intrinsics": K.float(),
        "c2w": relative_to_first(c2w).float(),
        "key": item["key"],
        "frame_indices": item["frame_indices"],
        "flipped": torch.tensor("flip" in item["augmentations"]),
        "augmentations": item["augmentations"],
    }


class DFoTTrainData:
    """The dataset data.kind=dfot_re10k builds: `clips` (the training stream the batcher reads)
    and, for samplers, item i = the unaugmented item i of the first subepoch, converted."""

    def __init__(self, clips: DFoTTrainingClips, resolution: int):
        self.clips, self.resolution = clips, int(resolution)

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, index: int) -> Dict[str, object]:
        return to_trainer_item(self.clips[index], self.resolution)


def build_dfot_data(cfg, split: str = "train") -> DFoTTrainData:
    """DFoTTrainData from the data config (gfcore/configs/data/dfot_re10k.yaml)."""
    import os

    from gfcore.data.dfot_files import DFoTFiles

    resolution = list(cfg.resolution)
    if len(resolution) != 2 or resolution[0] != resolution[1]:
        raise ValueError(f"data.kind=dfot_re10k takes square frames (DFoT's res x res crop), "
                         f"data.resolution is {resolution}")
    if split not in DFOT_SPLITS:
        raise ValueError(f"data.kind=dfot_re10k: split must be one of {sorted(DFOT_SPLITS)}, got {split!r}")
    files = DFoTFiles(os.path.expanduser(str(cfg.root)), DFOT_SPLITS[split], resolution[0])
    clips = DFoTTrainingClips(files, max_frames=cfg.clip_frames, frame_skip=cfg.frame_skip,
                              frame_skip_increase=cfg.frame_skip_increase, subdataset_size=cfg.subdataset_size,
                              maximize_training_data=cfg.maximize_training_data,
                              horizontal_flip_prob=cfg.horizontal_flip_prob,
                              back_and_forth_prob=cfg.back_and_forth_prob, reverse_prob=cfg.reverse_prob)
    return DFoTTrainData(clips, resolution[0])


class DFoTStepBatcher:
    """batch(step) -> the global batch of that step (or this rank's slice of it), as StepBatcher.

    rays: also Pluecker rays [T, 6, H, W] (the flow objective's pose input; the DFoT objective
    makes its ray map from intrinsics and c2w, which every batch carries).
    """

    def __init__(self, data: DFoTTrainData, num_frames: int, batch_size: int, seed: int, rays: bool,
                 rank: int = 0, world_size: int = 1):
        if batch_size % world_size:
            raise ValueError(f"train.batch_size={batch_size} must be divisible by the world size {world_size}")
        if num_frames != data.clips.max_frames:
            raise ValueError(f"train.num_frames={num_frames} must equal data.clip_frames={data.clips.max_frames} "
                             f"(DFoT's max_frames: every training clip has that many frames)")
        self.data, self.batch_size, self.seed, self.rays = data, batch_size, seed, rays
        self.rank, self.world_size = rank, world_size

    def plan(self, step: int) -> List[Tuple[Optional[int], int]]:
        """(subepoch, item index) of every sample of the global batch of `step`."""
        return [self.data.clips.locate(step * self.batch_size + b) for b in range(self.batch_size)]

    def sample(self, step: int, b: int) -> Dict[str, object]:
        """Sample b of the global batch of `step`, in the trainer's convention."""
        subepoch, index = self.data.clips.locate(step * self.batch_size + b)
        item = to_trainer_item(self.data.clips.item(subepoch, index, item_rng(self.seed, step, b)),
                               self.data.resolution)
        if self.rays:
            res = self.data.resolution
            item["rays"] = plucker_rays(item["intrinsics"], item["c2w"], res, res)
        return item

    def batch(self, step: int, device: Optional[torch.device] = None) -> Dict:
        from gfcore.train.data import batch_to_device

        per_rank = self.batch_size // self.world_size
        items = [self.sample(step, b) for b in range(self.rank * per_rank, (self.rank + 1) * per_rank)]
        batch = {}
        for key in items[0]:
            values = [item[key] for item in items]
            batch[key] = torch.stack(values) if isinstance(values[0], torch.Tensor) else values
        return batch_to_device(batch, device)
