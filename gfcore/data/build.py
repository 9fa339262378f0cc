"""Whole-clip readers from a data config node (data.kind synthetic, re10k or minecraft), as the
trainer and the sampler both take them: random_start off, so item i is clip i from its first
frame (the trainer cuts its windows itself)."""
from __future__ import annotations

import os
from typing import Optional

CLIP_KINDS = ("synthetic", "re10k", "minecraft")
# gfcore's split names -> the folder names of DFoT's RealEstate10K layout ({folder}_256, {folder}_poses;
# DFoT reads "validation" from its test split)
DFOT_SPLITS = {"train": "training", "training": "training", "val": "test", "validation": "test", "test": "test"}


def ensure_synthetic(root: str, num_clips: int, num_frames: int, resolution, seed: int, task: str,
                     split: str = "train", texture_detail: float = 1.0) -> None:
    """Generate the built-in scenes into root/split unless a matching generator.json is there."""
    import json

    from gfcore.data.synthetic import generate

    marker = os.path.join(root, split, "generator.json")
    if os.path.isfile(marker):
        with open(marker) as handle:
            meta = json.load(handle)
        wanted = {"num_clips": num_clips, "num_frames": num_frames, "seed": seed, "task": task}
        if all(meta.get(k) == v for k, v in wanted.items()) and meta.get("texture_detail", 1.0) == texture_detail:
            return
    generate(root, num_clips, num_frames, resolution, seed, task, split, texture_detail=texture_detail)


def split_clip_frames(cfg, split: str) -> int:
    """The clip length of data.kind synthetic's split as it was generated (its generator.json): a
    split may hold longer clips than data.clip_frames (the demo's test split). Any other kind, or a
    split not generated yet: data.clip_frames."""
    import json

    if cfg.kind != "synthetic":
        return int(cfg.clip_frames)
    marker = os.path.join(os.path.expanduser(cfg.root), split, "generator.json")
    if not os.path.isfile(marker):
        return int(cfg.clip_frames)
    with open(marker) as handle:
        return int(json.load(handle)["num_frames"])


def build_clip_dataset(cfg, with_depth: bool, split: str, generate_missing: bool,
                       split_length: Optional[bool] = None):
    """The gfcore.data reader of data.kind (CLIP_KINDS) yielding whole clips. generate_missing:
    write the built-in scenes first where the root lacks them or holds another generation.
    split_length: read a synthetic split at the clip length it was generated with
    (split_clip_frames), else at data.clip_frames; by default when not generating (the sampler
    and the evaluation). The trainer passes False: its other ranks build while rank 0 may still
    be regenerating the split and its generator.json."""
    kind = cfg.kind
    if kind not in CLIP_KINDS:
        raise ValueError(f"data.kind must be one of {CLIP_KINDS} for whole clips, got {kind!r}")
    resolution = list(cfg.resolution)
    if kind == "synthetic":
        root = os.path.expanduser(cfg.root)
        if generate_missing:
            ensure_synthetic(root, cfg.num_clips, cfg.clip_frames, resolution, cfg.seed, cfg.task, split,
                             float(cfg.get("texture_detail", 1.0)))
        own_length = not generate_missing if split_length is None else split_length
        frames = split_clip_frames(cfg, split) if own_length else int(cfg.clip_frames)
        if cfg.task == "action":
            from gfcore.data import Minecraft

            return Minecraft(root, split, num_frames=frames, resolution=resolution, random_start=False,
                             with_depth=with_depth)
        from gfcore.data import RealEstate10K

        return RealEstate10K(root, split, num_frames=frames, resolution=resolution, random_start=False,
                             with_depth=with_depth, layout="raw")
    if kind == "re10k":
        from gfcore.data import RealEstate10K

        return RealEstate10K(os.path.expanduser(cfg.root), split, num_frames=cfg.clip_frames, resolution=resolution,
                             frame_skip=cfg.get("frame_skip", 1), random_start=False, with_depth=with_depth)
    from gfcore.data import Minecraft

    return Minecraft(os.path.expanduser(cfg.root), split, num_frames=cfg.clip_frames, resolution=resolution,
                     frame_skip=cfg.get("frame_skip", 1), random_start=False, with_depth=with_depth)
