"""Random rooms and courtyards: textured walls, floor and ceiling (sky), boxes and spheres.

Objects are kept `clearance` metres away from a set of keep-free points (the camera path), so
that no camera ever starts inside an object or has one glued to its lens.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from gfcore.data.synthetic.raycast import Scene

__all__ = ["random_room", "place_objects", "distance_to_objects", "CAMERA_CLEARANCE"]

CAMERA_CLEARANCE = 0.6  # metres between any camera position and any object or wall


def random_room(rng: np.random.Generator) -> dict:
    """Room bounds and kind: a closed room (60 %) or a wide, tall courtyard with a sky ceiling."""
    if rng.random() < 0.6:
        size = np.array([rng.uniform(6.0, 10.0), rng.uniform(2.6, 3.4), rng.uniform(6.0, 10.0)])
        kind = "room"
    else:
        size = np.array([rng.uniform(12.0, 18.0), rng.uniform(6.0, 9.0), rng.uniform(12.0, 18.0)])
        kind = "courtyard"
    lo = np.array([-size[0] / 2, 0.0, -size[2] / 2])
    return {"kind": kind, "lo": lo, "hi": lo + size}


def _materials(rng: np.random.Generator, count: int, courtyard: bool):
    colors_a = rng.uniform(0.15, 0.75, size=(count, 3))
    colors_b = np.clip(colors_a + rng.uniform(-0.45, 0.45, size=(count, 3)), 0.05, 1.0)
    scale = rng.uniform(1.0, 4.0, size=count)
    if courtyard:  # material 3 is the sky: pale blue with soft clouds, no checker
        colors_a[3] = [0.45, 0.65, 0.95]
        colors_b[3] = [0.95, 0.97, 1.0]
        scale[3] = 0.0
    return colors_a, colors_b, scale


def distance_to_objects(points: np.ndarray, box_lo, box_hi, sphere_centers, sphere_radii) -> np.ndarray:
    """Distance from each point [N, 3] to the nearest box or sphere surface (inf when none)."""
    points = np.atleast_2d(points)
    distance = np.full(len(points), np.inf)
    for lo, hi in zip(box_lo, box_hi):
        gap = np.maximum(np.maximum(lo - points, points - hi), 0.0)
        distance = np.minimum(distance, np.linalg.norm(gap, axis=-1))
    for center, radius in zip(sphere_centers, sphere_radii):
        distance = np.minimum(distance, np.linalg.norm(points - center, axis=-1) - radius)
    return distance


def place_objects(
    rng: np.random.Generator,
    room: dict,
    keep_free: Optional[np.ndarray] = None,
    num_boxes: Optional[int] = None,
    num_spheres: Optional[int] = None,
    clearance: float = CAMERA_CLEARANCE,
) -> Scene:
    """A scene in `room` with boxes on the floor and spheres on the floor or floating.

    Candidate objects closer than `clearance` to any keep_free point [N, 3] are redrawn (and
    dropped after 50 tries), so the scene is always valid for the given path.
    """
    lo, hi = room["lo"], room["hi"]
    extent = hi - lo
    scale = 1.0 if room["kind"] == "room" else 2.0
    num_boxes = int(rng.integers(3, 7)) if num_boxes is None else num_boxes
    num_spheres = int(rng.integers(2, 5)) if num_spheres is None else num_spheres
    keep_free = np.zeros((0, 3)) if keep_free is None else np.asarray(keep_free, dtype=np.float64)

    box_lo, box_hi, centers, radii = [], [], [], []

    def is_free(b_lo, b_hi, c, r):
        if len(keep_free) == 0:
            return True
        d = distance_to_objects(keep_free, b_lo, b_hi, c, r)
        return bool(d.min() > clearance)

    for _ in range(num_boxes):
        for _attempt in range(50):
            size = rng.uniform(0.3, 1.3, size=3) * scale
            size[1] = min(size[1], extent[1] * 0.8)
            corner = lo + rng.uniform(0.0, 1.0, size=3) * (extent - size)
            corner[1] = lo[1]  # standing on the floor
            if is_free([corner], [corner + size], [], []):
                box_lo.append(corner)
                box_hi.append(corner + size)
                break
    for _ in range(num_spheres):
        for _attempt in range(50):
            radius = rng.uniform(0.2, 0.6) * scale
            center = lo + radius + rng.uniform(0.0, 1.0, size=3) * (extent - 2 * radius)
            if rng.random() < 0.5:
                center[1] = lo[1] + radius  # resting on the floor
            else:
                center[1] = min(center[1], lo[1] + 2.2 * scale)
            if is_free([], [], [center], [radius]):
                centers.append(center)
                radii.append(radius)
                break

    courtyard = room["kind"] == "courtyard"
    # Materials: 0..5 the room faces, then one per object.
    num_materials = 6 + len(box_lo) + len(centers)
    colors_a, colors_b, texture_scale = _materials(rng, num_materials, courtyard)
    noise = rng.uniform(0.0, 1.0, size=(64, 64))
    return Scene(
        room_lo=lo.astype(np.float64),
        room_hi=hi.astype(np.float64),
        room_materials=np.arange(6),
        box_lo=np.asarray(box_lo, dtype=np.float64).reshape(-1, 3),
        box_hi=np.asarray(box_hi, dtype=np.float64).reshape(-1, 3),
        box_materials=np.arange(6, 6 + len(box_lo)),
        sphere_centers=np.asarray(centers, dtype=np.float64).reshape(-1, 3),
        sphere_radii=np.asarray(radii, dtype=np.float64),
        sphere_materials=np.arange(6 + len(box_lo), num_materials),
        colors_a=colors_a,
        colors_b=colors_b,
        texture_scale=texture_scale,
        noise=noise,
    )
