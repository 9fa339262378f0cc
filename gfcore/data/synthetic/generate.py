"""Writing synthetic clips to disk in the RealEstate10K (camera task) or Minecraft (action task) layout.

Camera task, per clip in {root}/{split}/:
    {key}.txt        RealEstate10K camera file (URL line, then one 19-number line per frame)
    {key}.mp4        the frames, one per camera line
    {key}.depth.npz  depth float16 [T, H, W] (z-depth, metres), intrinsics float32 [T, 3, 3]
                     (pixels), c2w float64 [T, 4, 4] (world), path kind
Action task, per clip in {root}/{split}/:
    {key}.mp4        the frames
    {key}.npz        actions float32 [T, 7] one-hot (order: action_names), action_ids,
                     action_names, c2w, intrinsics
    {key}.depth.npz  as above
{root}/{split}/generator.json records the arguments. Clip i depends only on (seed, i).
"""
from __future__ import annotations

import json
import os
from typing import Sequence, Tuple, Union

import numpy as np
import torch

from gfcore.data.camera_file import write_camera_file
from gfcore.data.geometry import cameras_to_re10k_rows, invert_rigid
from gfcore.data.synthetic.raycast import render
from gfcore.data.synthetic.scenes import place_objects, random_room
from gfcore.data.synthetic.trajectories import (
    ACTION_NAMES,
    PATH_KINDS,
    camera_path,
    path_keep_free_points,
    walker_path,
)
from gfcore.data.video import write_video

__all__ = ["generate", "generate_clip", "FPS"]

FPS = 10
TASKS = ("camera", "action")


def _as_hw(resolution: Union[int, Sequence[int]]) -> Tuple[int, int]:
    if isinstance(resolution, int):
        return resolution, resolution
    if len(resolution) != 2:
        raise ValueError(f"resolution must be an int or (height, width), got {resolution!r}")
    return int(resolution[0]), int(resolution[1])


def _intrinsics(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    fov_x = np.deg2rad(rng.uniform(60.0, 75.0))
    focal = width / (2.0 * np.tan(fov_x / 2.0))
    return np.array([[focal, 0.0, width / 2.0], [0.0, focal, height / 2.0], [0.0, 0.0, 1.0]])


def generate_clip(seed: int, index: int, num_frames: int, resolution, task: str = "camera",
                  texture_detail: float = 1.0) -> dict:
    """Render clip `index` of a seed: a dict with frames uint8 [T, H, W, 3], depth float32 [T, H, W],
    intrinsics [3, 3], c2w [T, 4, 4], kind, and for the action task actions int64 [T]."""
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    height, width = _as_hw(resolution)
    rng = np.random.default_rng([int(seed), int(index), TASKS.index(task)])
    room = random_room(rng)
    K = _intrinsics(rng, height, width)
    clip = {"intrinsics": K}
    if task == "camera":
        kind = PATH_KINDS[index % len(PATH_KINDS)]  # an even mix of the four kinds
        c2w = camera_path(rng, kind, room, num_frames)
        scene = place_objects(rng, room, keep_free=path_keep_free_points(c2w))
    else:
        kind = "walker"
        scene = place_objects(rng, room)
        objects = (scene.box_lo, scene.box_hi, scene.sphere_centers, scene.sphere_radii)
        c2w, actions = walker_path(rng, room, objects, num_frames)
        clip["actions"] = actions
    if texture_detail != 1.0:  # the same scene and path, textures at another frequency (no extra draws)
        scene.detail = float(texture_detail)
    frames, depth = render(scene, K, c2w, height, width)
    clip.update(frames=frames, depth=depth, c2w=c2w, kind=kind, room_kind=room["kind"])
    return clip


def _write_depth(path: str, clip: dict) -> None:
    num_frames = len(clip["c2w"])
    np.savez_compressed(
        path,
        depth=clip["depth"].astype(np.float16),
        intrinsics=np.repeat(clip["intrinsics"][None], num_frames, 0).astype(np.float32),
        c2w=clip["c2w"],
        kind=np.array(clip["kind"]),
    )


def _write_clip(directory: str, key: str, clip: dict, task: str) -> None:
    num_frames, height, width, _ = clip["frames"].shape
    write_video(os.path.join(directory, f"{key}.mp4"), clip["frames"], fps=FPS)
    _write_depth(os.path.join(directory, f"{key}.depth.npz"), clip)
    if task == "camera":
        K = torch.from_numpy(np.repeat(clip["intrinsics"][None], num_frames, 0))
        w2c = invert_rigid(torch.from_numpy(clip["c2w"]))
        rows = cameras_to_re10k_rows(K, w2c, width, height).numpy()
        timestamps = np.arange(num_frames) * (1_000_000 // FPS)
        url = f"synthetic://gfcore/{clip['room_kind']}/{clip['kind']}/{key}"
        write_camera_file(os.path.join(directory, f"{key}.txt"), url, timestamps, rows)
    else:
        one_hot = np.eye(len(ACTION_NAMES), dtype=np.float32)[clip["actions"]]
        np.savez_compressed(
            os.path.join(directory, f"{key}.npz"),
            actions=one_hot,
            action_ids=clip["actions"],
            action_names=np.array(ACTION_NAMES),
            c2w=clip["c2w"],
            intrinsics=np.repeat(clip["intrinsics"][None], num_frames, 0).astype(np.float32),
        )


def clip_key(seed: int, index: int, task: str) -> str:
    return f"{task}_s{seed}_{index:05d}"


def generate(
    root: str,
    num_clips: int,
    num_frames: int,
    resolution: Union[int, Sequence[int]] = 128,
    seed: int = 0,
    task: str = "camera",
    split: str = "train",
    start_index: int = 0,
    texture_detail: float = 1.0,
) -> list:
    """Render `num_clips` synthetic clips into {root}/{split}/ and return their keys.

    Deterministic: the same (seed, clip index) gives the same scene, path and frames.
    Camera-task clips cycle through the path kinds forward, pan, orbit, turn360.
    """
    if num_clips < 1 or num_frames < 2:
        raise ValueError(f"need num_clips >= 1 and num_frames >= 2, got {num_clips}, {num_frames}")
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    height, width = _as_hw(resolution)
    directory = os.path.join(os.fspath(root), split)
    os.makedirs(directory, exist_ok=True)
    keys = []
    for index in range(start_index, start_index + num_clips):
        key = clip_key(seed, index, task)
        clip = generate_clip(seed, index, num_frames, (height, width), task, texture_detail)
        _write_clip(directory, key, clip, task)
        keys.append(key)
    with open(os.path.join(directory, "generator.json"), "w") as handle:
        json.dump({"num_clips": num_clips, "num_frames": num_frames, "resolution": [height, width],
                   "seed": seed, "task": task, "start_index": start_index, "fps": FPS,
                   "texture_detail": texture_detail}, handle, indent=1)
    return keys
