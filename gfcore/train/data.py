"""Training data: the dataset named in the config and a step-indexed, deterministic batcher.

The batch of step s is a function of (seed, s) only: clip indices and window starts come
from a generator seeded with (seed, s), so a resumed run sees exactly the batches it would
have seen, and every DDP rank can take its own slice of the same global batch.
"""
from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from typing import Dict, List, Optional

import torch

from gfcore.data.build import CLIP_KINDS, build_clip_dataset
from gfcore.data.geometry import plucker_rays, relative_to_first

DATA_KINDS = CLIP_KINDS + ("dfot_re10k",)


def build_dataset(cfg, with_depth: bool, split: str = "train", generate_missing: bool = True):
    """The run's data: DFoT's training stream for dfot_re10k (gfcore.train.dfot_data.DFoTTrainData),
    else a whole-clip reader (gfcore.data.build.build_clip_dataset; windows are cut here)."""
    kind = cfg.kind
    if kind not in DATA_KINDS:
        raise ValueError(f"data.kind must be one of {DATA_KINDS}, got {kind!r}")
    if kind == "dfot_re10k":
        from gfcore.train.dfot_data import build_dfot_data

        if with_depth:
            raise ValueError("data.kind=dfot_re10k has no ground-truth depth; the teacher needs it "
                             "(use teacher=vggt or teacher=dinov2)")
        return build_dfot_data(cfg, split)
    return build_clip_dataset(cfg, with_depth, split, generate_missing, split_length=False)  # every rank alike


def build_batcher(cfg, dataset, batch_size: int, rank: int = 0, world_size: int = 1):
    """The batcher of the run's data: DFoTStepBatcher for data.kind=dfot_re10k (with Pluecker rays
    only when the objective reads them: not train.objective=dfot), else StepBatcher."""
    camera = bool(cfg.data.camera)
    if cfg.data.kind == "dfot_re10k":
        from gfcore.train.dfot_data import DFoTStepBatcher

        rays = camera and cfg.train.get("objective", "flow") != "dfot"
        return DFoTStepBatcher(dataset, cfg.train.num_frames, batch_size, cfg.seed, rays, rank, world_size)
    return StepBatcher(dataset, cfg.train.num_frames, batch_size, cfg.seed, camera=camera,
                       cache=cfg.data.get("cache_in_memory", True), rank=rank, world_size=world_size)


def check_feature_cache(data_cfg, cached: bool) -> None:
    """A teacher feature cache holds the features of the stored frames: it cannot serve mirrored
    clips (dfot_re10k's horizontal flip)."""
    if cached and data_cfg.kind == "dfot_re10k" and float(data_cfg.horizontal_flip_prob) > 0:
        raise ValueError(f"teacher.cache holds features of unflipped frames; data.horizontal_flip_prob="
                         f"{data_cfg.horizontal_flip_prob} flips clips: set it to 0 or use a live teacher")


def add_rays(item: Dict, patch_size: int = 1) -> Dict:
    """Pluecker rays [T, 6, H, W] of a clip window, poses made relative to the window's first frame."""
    height, width = item["frames"].shape[-2:]
    c2w = relative_to_first(item["c2w"].double()).float()
    item["c2w"] = c2w
    item["rays"] = plucker_rays(item["intrinsics"], c2w, height, width, patch_size)
    return item


class StepBatcher:
    """batch(step) -> the global batch of that step (or this rank's slice of it).

    Clips are loaded once and kept in memory when `cache` (the built-in scenes are small);
    each sample is a random window of `num_frames` frames of a random clip.
    """

    def __init__(self, dataset, num_frames: int, batch_size: int, seed: int, camera: bool,
                 cache: bool = True, rank: int = 0, world_size: int = 1):
        if batch_size % world_size:
            raise ValueError(f"train.batch_size={batch_size} must be divisible by the world size {world_size}")
        if len(dataset) == 0:
            raise ValueError("the training dataset is empty")
        self.dataset, self.num_frames, self.batch_size, self.seed = dataset, num_frames, batch_size, seed
        self.camera, self.cache = camera, cache
        self.rank, self.world_size = rank, world_size
        self._clips: Dict[int, Dict] = {}

    def _clip(self, index: int) -> Dict:
        if index in self._clips:
            return self._clips[index]
        clip = self.dataset[index]
        total = clip["frames"].shape[0]
        if total < self.num_frames:
            raise ValueError(f"clip {clip.get('key', index)!r} has {total} frames, fewer than train num_frames "
                             f"{self.num_frames}")
        if self.cache:
            self._clips[index] = clip
        return clip

    def plan(self, step: int) -> List[tuple]:
        """(clip index, window start) for every sample of the global batch of `step`."""
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        indices = torch.randint(len(self.dataset), (self.batch_size,), generator=generator).tolist()
        fractions = torch.rand(self.batch_size, generator=generator).tolist()
        return list(zip(indices, fractions))

    def batch(self, step: int, device: Optional[torch.device] = None) -> Dict:
        per_rank = self.batch_size // self.world_size
        plan = self.plan(step)[self.rank * per_rank:(self.rank + 1) * per_rank]
        items = []
        for index, fraction in plan:
            clip = self._clip(index)
            total = clip["frames"].shape[0]
            start = int(fraction * (total - self.num_frames + 1))
            window = slice(start, start + self.num_frames)
            item = {k: v[window] for k, v in clip.items() if isinstance(v, torch.Tensor) and v.dim() > 0
                    and v.shape[0] == total}
            item["key"] = clip.get("key", str(index))  # frame_indices come along: a per-frame tensor
            if self.camera:
                add_rays(item)
            items.append(item)
        batch = {}
        for key in items[0]:
            values = [item[key] for item in items]
            batch[key] = torch.stack(values) if isinstance(values[0], torch.Tensor) else values
        return batch_to_device(batch, device)


def batch_to_device(batch: Dict, device: Optional[torch.device], pin: bool = False) -> Dict:
    """Tensors of a batch moved to device (pinned first when `pin`, so the copy can overlap)."""
    if device is None:
        return batch
    moved = {}
    for key, value in batch.items():
        if isinstance(value, torch.Tensor):
            if pin and device.type == "cuda":
                value = value.pin_memory()
            value = value.to(device, non_blocking=True)
        moved[key] = value
    return moved


class BatchPrefetcher:
    """The batches of steps start, start + 1, ... built `depth` steps ahead on `workers` threads.

    A batch is a function of its step alone, so prefetching changes no value: get(step) returns
    exactly batcher.batch(step). Video decoding and image loading release the GIL, which is
    what the threads overlap with the training step. A batch that fails to build raises its
    error from get() of that step.
    """

    def __init__(self, batcher: StepBatcher, start: int, end: int, depth: int = 2, workers: int = 2):
        if depth < 1 or workers < 1:
            raise ValueError(f"prefetch depth and workers must be >= 1, got {depth} and {workers}")
        self.batcher, self.end, self.depth = batcher, end, depth
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="gfcore-batches")
        self._pending: Dict[int, Future] = {}
        self._next = start
        self._fill()

    def _fill(self) -> None:
        while len(self._pending) < self.depth and self._next < self.end:
            self._pending[self._next] = self._pool.submit(self.batcher.batch, self._next)
            self._next += 1

    def get(self, step: int) -> Dict:
        if step not in self._pending:
            raise KeyError(f"step {step} was not prefetched (steps are taken in order from the start)")
        batch = self._pending.pop(step).result()
        self._fill()
        return batch

    def close(self) -> None:
        for future in self._pending.values():
            future.cancel()
        self._pool.shutdown(wait=True)

    def __enter__(self) -> "BatchPrefetcher":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
