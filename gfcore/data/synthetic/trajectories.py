"""Camera paths (forward walk, pan, orbit, 360-degree turn) and an action-driven walker.

World axes: y up. A heading `yaw` looks along (sin yaw, 0, cos yaw); increasing yaw turns left.
Poses are camera-to-world matrices with OpenCV camera axes (x right, y down, z forward).
"""
from __future__ import annotations

from typing import Tuple

import numpy as np

from gfcore.data.synthetic.scenes import CAMERA_CLEARANCE, distance_to_objects

__all__ = [
    "PATH_KINDS",
    "ACTION_NAMES",
    "look_direction",
    "pose_from_eye_and_direction",
    "camera_path",
    "walker_path",
]

PATH_KINDS = ("forward", "pan", "orbit", "turn360")
ACTION_NAMES = ("noop", "forward", "back", "turn_left", "turn_right", "strafe_left", "strafe_right")
_UP = np.array([0.0, 1.0, 0.0])
WALK_STEP = 0.12  # metres per frame
TURN_STEP = np.deg2rad(8.0)  # radians per frame


def look_direction(yaw: np.ndarray, pitch: np.ndarray) -> np.ndarray:
    """Unit view directions [..., 3] for headings yaw and pitch (positive pitch looks up)."""
    yaw, pitch = np.asarray(yaw, dtype=np.float64), np.asarray(pitch, dtype=np.float64)
    return np.stack([np.sin(yaw) * np.cos(pitch), np.sin(pitch), np.cos(yaw) * np.cos(pitch)], -1)


def pose_from_eye_and_direction(eye: np.ndarray, forward: np.ndarray) -> np.ndarray:
    """c2w [..., 4, 4] of cameras at eye looking along forward, kept upright (no roll)."""
    forward = forward / np.linalg.norm(forward, axis=-1, keepdims=True)
    right = np.cross(forward, _UP)
    right /= np.linalg.norm(right, axis=-1, keepdims=True)
    down = np.cross(forward, right)
    c2w = np.zeros(forward.shape[:-1] + (4, 4))
    c2w[..., :3, 0] = right
    c2w[..., :3, 1] = down
    c2w[..., :3, 2] = forward
    c2w[..., :3, 3] = eye
    c2w[..., 3, 3] = 1.0
    return c2w


def _smoothstep(s: np.ndarray) -> np.ndarray:
    return s * s * (3.0 - 2.0 * s)


def camera_path(rng: np.random.Generator, kind: str, room: dict, num_frames: int) -> np.ndarray:
    """A smooth camera path of `kind` inside room (bounds lo/hi), as c2w [T, 4, 4].

    turn360 rotates a full turn at constant speed; its last frame equals its first exactly.
    """
    if kind not in PATH_KINDS:
        raise ValueError(f"kind must be one of {PATH_KINDS}, got {kind!r}")
    lo, hi = room["lo"], room["hi"]
    margin = CAMERA_CLEARANCE + 0.2
    inner_lo, inner_hi = lo + margin, hi - margin
    s = np.linspace(0.0, 1.0, num_frames)
    height = rng.uniform(1.2, 1.7)

    def random_point():
        p = rng.uniform(inner_lo, inner_hi)
        p[1] = height
        return p

    if kind == "forward":
        start, end = random_point(), random_point()
        while np.linalg.norm((end - start)[[0, 2]]) < 1.5:
            end = random_point()
        # Walk at most 3 m with ease-in/out; heading along the walk with a gentle sway.
        length = min(3.0, np.linalg.norm(end - start))
        direction = (end - start) / np.linalg.norm(end - start)
        eye = start + _smoothstep(s)[:, None] * length * direction
        eye[:, 1] = height + 0.03 * np.sin(2 * np.pi * 2 * s)  # footsteps
        yaw0 = np.arctan2(direction[0], direction[2])
        yaw = yaw0 + np.deg2rad(rng.uniform(5, 12)) * np.sin(2 * np.pi * s + rng.uniform(0, 2 * np.pi))
        pitch = np.full(num_frames, np.deg2rad(rng.uniform(-8, 3)))
        return pose_from_eye_and_direction(eye, look_direction(yaw, pitch))
    if kind == "pan":
        eye = np.repeat(random_point()[None], num_frames, 0)
        sweep = np.deg2rad(rng.uniform(40, 90)) * rng.choice([-1.0, 1.0])
        yaw = rng.uniform(0, 2 * np.pi) + sweep * _smoothstep(s)
        pitch = np.deg2rad(rng.uniform(-8, 3)) + np.deg2rad(3.0) * np.sin(np.pi * s)
        return pose_from_eye_and_direction(eye, look_direction(yaw, pitch))
    if kind == "orbit":
        extent = (inner_hi - inner_lo)[[0, 2]]
        radius = rng.uniform(1.2, max(1.3, 0.45 * extent.min()))
        center = random_point()
        center[[0, 2]] = np.clip(center[[0, 2]], inner_lo[[0, 2]] + radius, inner_hi[[0, 2]] - radius)
        center[1] = rng.uniform(0.4, 1.0)  # look slightly down at the middle of the floor
        arc = np.deg2rad(rng.uniform(60, 180)) * rng.choice([-1.0, 1.0])
        angle = rng.uniform(0, 2 * np.pi) + arc * _smoothstep(s)
        eye = np.stack([center[0] + radius * np.sin(angle), np.full(num_frames, height),
                        center[2] + radius * np.cos(angle)], -1)
        return pose_from_eye_and_direction(eye, center - eye)
    # turn360: constant angular speed, so frames i and i + T - 1 coincide.
    eye = np.repeat(random_point()[None], num_frames, 0)
    yaw = rng.uniform(0, 2 * np.pi) + 2 * np.pi * s
    pitch = np.full(num_frames, np.deg2rad(rng.uniform(-6, 3)))
    c2w = pose_from_eye_and_direction(eye, look_direction(yaw, pitch))
    c2w[-1] = c2w[0]
    return c2w


def path_keep_free_points(c2w: np.ndarray) -> np.ndarray:
    """Points objects must keep clear of: the camera centres (densely along the path)."""
    eyes = c2w[:, :3, 3]
    if len(eyes) < 2:
        return eyes
    t = np.linspace(0, 1, 5)[None, :, None]
    return (eyes[:-1, None] * (1 - t) + eyes[1:, None] * t).reshape(-1, 3)


def walker_path(
    rng: np.random.Generator, room: dict, objects: Tuple, num_frames: int
) -> Tuple[np.ndarray, np.ndarray]:
    """A walker driven by sticky random discrete actions.

    Args:
        objects: (box_lo, box_hi, sphere_centers, sphere_radii) to collide with.
    Returns:
        (c2w [T, 4, 4], action ids int64 [T]). action[t] moved the walker from frame t-1 to
        frame t (action[0] is noop). A move that would come closer than the camera clearance to
        a wall or object is blocked: the action is kept, the position does not change.
    """
    lo, hi = room["lo"], room["hi"]
    margin = CAMERA_CLEARANCE + 0.05
    height = rng.uniform(1.3, 1.7)

    def free(p):
        inside = np.all(p[[0, 2]] > lo[[0, 2]] + margin) and np.all(p[[0, 2]] < hi[[0, 2]] - margin)
        return inside and distance_to_objects(p[None], *objects)[0] > margin

    for _ in range(200):
        position = rng.uniform(lo + margin, hi - margin)
        position[1] = height
        if free(position):
            break
    else:
        raise RuntimeError("no free spot for the walker in this scene")
    yaw = rng.uniform(0, 2 * np.pi)
    pitch = np.deg2rad(rng.uniform(-8, 2))
    # Walking forward is the most common action, as in exploration data.
    weights = np.array([0.08, 0.4, 0.08, 0.14, 0.14, 0.08, 0.08])
    actions = np.zeros(num_frames, dtype=np.int64)
    eyes, yaws = [position.copy()], [yaw]
    current, hold = 0, 0
    for t in range(1, num_frames):
        if hold == 0:
            current, hold = int(rng.choice(len(ACTION_NAMES), p=weights)), int(rng.integers(2, 7))
        hold -= 1
        actions[t] = current
        name = ACTION_NAMES[current]
        forward = np.array([np.sin(yaw), 0.0, np.cos(yaw)])
        right = np.array([-np.cos(yaw), 0.0, np.sin(yaw)])  # forward x up
        step = {"forward": forward, "back": -forward, "strafe_right": right, "strafe_left": -right}
        if name in step:
            candidate = position + WALK_STEP * step[name]
            if free(candidate):
                position = candidate
        elif name == "turn_left":
            yaw += TURN_STEP
        elif name == "turn_right":
            yaw -= TURN_STEP
        eyes.append(position.copy())
        yaws.append(yaw)
    c2w = pose_from_eye_and_direction(np.stack(eyes), look_direction(np.array(yaws), np.full(num_frames, pitch)))
    return c2w, actions
