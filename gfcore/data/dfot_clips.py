"""DFoT's RealEstate10K training clips over the files of its layout: which clip the n-th of the
training stream is, and that clip with DFoT's stride and augmentations.

DFoT trains on subepochs of `subdataset_size` clips (a Lightning epoch each, the stride growing by
`frame_skip_increase` per subepoch); clip n of the stream is item n % size of subepoch n // size.
Without a subdataset_size every epoch is the whole dataset in one fixed order and the stride stays
`frame_skip`.
"""
from __future__ import annotations

import random
from typing import Dict, Optional, Tuple

import torch

from gfcore.data.dfot_files import DFoTFiles
from gfcore.data.dfot_re10k import ClipSchedule, back_and_forth, reverse, training_item

__all__ = ["DFoTTrainingClips"]


class DFoTTrainingClips:
    """The training stream of DFoT's RealEstate10K dataset.

    Args:
        files: the split's frames and camera rows.
        max_frames, frame_skip, frame_skip_increase, subdataset_size, maximize_training_data:
            DFoT's dataset settings (ClipSchedule).
        horizontal_flip_prob, back_and_forth_prob, reverse_prob: DFoT's augmentation probabilities.
    """

    def __init__(self, files: DFoTFiles, max_frames: int = 16, frame_skip: int = 10, frame_skip_increase: float = 1,
                 subdataset_size: Optional[int] = None, maximize_training_data: bool = True,
                 horizontal_flip_prob: float = 0.5, back_and_forth_prob: float = 0.1, reverse_prob: float = 0.5):
        if subdataset_size is None and frame_skip_increase != 0:
            raise ValueError("data.frame_skip_increase needs data.subdataset_size (the stride grows per subepoch)")
        if subdataset_size is not None and int(subdataset_size) < 1:
            raise ValueError(f"data.subdataset_size must be >= 1 or null, got {subdataset_size}")
        for name, p in (("horizontal_flip_prob", horizontal_flip_prob), ("back_and_forth_prob", back_and_forth_prob),
                        ("reverse_prob", reverse_prob)):
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"data.{name} must lie in [0, 1], got {p}")
        self.files = files
        self.schedule = ClipSchedule(files.lengths, max_frames, frame_skip, maximize_training_data,
                                     None if subdataset_size is None else int(subdataset_size), frame_skip_increase)
        self.max_frames = int(max_frames)
        self.probabilities = dict(horizontal_flip_prob=horizontal_flip_prob, back_and_forth_prob=back_and_forth_prob,
                                  reverse_prob=reverse_prob)

    def __len__(self) -> int:
        """Clips per subepoch."""
        return self.schedule.subdataset_size or self.schedule.num_clips

    def locate(self, position: int) -> Tuple[Optional[int], int]:
        """Clip `position` of the training stream -> (subepoch, item index in it); the subepoch is
        None without a subdataset_size."""
        if position < 0:
            raise IndexError(f"stream position {position} is negative")
        if self.schedule.subdataset_size is None:
            return None, position % len(self)
        return divmod(position, len(self))

    def item(self, subepoch: Optional[int], index: int, rng: Optional[random.Random]) -> Dict[str, object]:
        """Item `index` of `subepoch` as DFoT's dataset makes it (training_item: videos [T, 3, res,
        res] in [0, 1], conds [T, 16], augmentations), with the draws taken from `rng` (None: no
        augmentation), plus its key and the video's frame numbers in the item's frame order."""
        video, indices = self.schedule.item(index, subepoch)
        frames = self.files.frames(video, indices.tolist())
        rows = self.files.rows(video)[indices]
        out = training_item(frames, rows, range(len(indices)), rng, **self.probabilities,
                            source=self.files.pose_paths[video])
        out.update(key=self.files.keys[video], frame_indices=self.frame_order(indices, out["augmentations"]))
        return out

    def __getitem__(self, index: int) -> Dict[str, object]:
        """Item `index` of the first subepoch (0; None without a subdataset_size), unaugmented."""
        if not 0 <= index < len(self):
            raise IndexError(f"item {index} out of range for {len(self)} clips per subepoch")
        return self.item(None if self.schedule.subdataset_size is None else 0, index, None)

    @staticmethod
    def frame_order(indices: torch.Tensor, augmentations) -> torch.Tensor:
        """`indices` reordered as `augmentations` (names from `augment`) reorder the frames; the
        flip keeps the order."""
        for name in augmentations:
            if name == "back_and_forth":
                indices = back_and_forth(indices)
            elif name == "reverse":
                indices = reverse(indices)
        return indices
