"""RealEstate10K camera files: line 1 the source URL, then one line of 19 numbers per frame.

    timestamp_us fx fy cx cy 0 0 r11 r12 r13 t1 r21 r22 r23 t2 r31 r32 r33 t3

(fx, cx over width, fy, cy over height; [R|t] world-to-camera, OpenCV axes).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from gfcore.data.errors import DataError

__all__ = ["CameraFile", "read_camera_file", "write_camera_file"]

NUMBERS_PER_LINE = 19


@dataclass
class CameraFile:
    """Contents of one camera file. rows[i] are the 18 numbers after the timestamp of frame i."""

    url: str
    timestamps: np.ndarray  # int64 [T], microseconds
    rows: np.ndarray  # float64 [T, 18]

    def __len__(self) -> int:
        return len(self.timestamps)


def read_camera_file(path: str) -> CameraFile:
    """Parse a RealEstate10K camera file; DataError naming the file and line on bad content."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise DataError(f"camera file not found: {path}")
    with open(path, "r", encoding="utf-8") as handle:
        lines = handle.read().splitlines()
    if not lines or not lines[0].strip():
        raise DataError(f"{path}:1: expected the source URL on the first line, the file is empty")
    timestamps, rows = [], []
    for line_number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue  # a trailing blank line is harmless
        fields = line.split()
        if len(fields) != NUMBERS_PER_LINE:
            raise DataError(
                f"{path}:{line_number}: expected {NUMBERS_PER_LINE} numbers, got {len(fields)}: {line[:80]!r}"
            )
        try:
            timestamps.append(int(fields[0]))
            values = [float(x) for x in fields[1:]]
        except ValueError as exc:
            raise DataError(f"{path}:{line_number}: not a number ({exc})") from exc
        if not np.all(np.isfinite(values)):
            raise DataError(f"{path}:{line_number}: non-finite value in {line[:80]!r}")
        rows.append(values)
    if not rows:
        raise DataError(f"{path}: no camera lines after the URL line")
    return CameraFile(
        url=lines[0].strip(),
        timestamps=np.asarray(timestamps, dtype=np.int64),
        rows=np.asarray(rows, dtype=np.float64),
    )


def write_camera_file(path: str, url: str, timestamps: Sequence[int], rows: np.ndarray) -> None:
    """Write a camera file; rows [T, 18] as returned by geometry.cameras_to_re10k_rows."""
    rows = np.asarray(rows, dtype=np.float64)
    if rows.ndim != 2 or rows.shape[1] != NUMBERS_PER_LINE - 1:
        raise ValueError(f"rows must have shape [T, 18], got {list(rows.shape)}")
    if len(timestamps) != len(rows):
        raise ValueError(f"timestamps ({len(timestamps)}) and rows ({len(rows)}) differ in length")
    os.makedirs(os.path.dirname(os.fspath(path)) or ".", exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(url.strip() + "\n")
        for stamp, row in zip(timestamps, rows):
            handle.write(str(int(stamp)) + " " + " ".join(f"{x:.9f}" for x in row) + "\n")
