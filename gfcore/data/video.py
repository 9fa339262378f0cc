"""Reading and writing video files as uint8 numpy arrays [T, H, W, 3] (RGB).

Decoding uses decord when it is importable (fast frame-accurate random access) and PyAV
otherwise; encoding always uses PyAV (H.264 through the libx264 that its wheels ship).
Every failure is raised as `VideoError`, whose message names the file.
"""
from __future__ import annotations

import os
from typing import Optional, Sequence

import numpy as np

from gfcore.data.errors import DataError

try:  # preferred decoder
    import decord as _decord

    _decord.bridge.set_bridge("native")
except ImportError:  # pragma: no cover - depends on the environment
    _decord = None

try:
    import av as _av
except ImportError:  # pragma: no cover - depends on the environment
    _av = None

__all__ = ["VideoError", "read_video", "write_video", "write_gif", "video_num_frames", "decoder_backend"]


class VideoError(DataError):
    """A video file is missing, corrupt, truncated or does not hold the requested frames."""


def decoder_backend() -> str:
    """Name of the decoder `read_video` uses: "decord", "av" or "none"."""
    if _decord is not None:
        return "decord"
    return "av" if _av is not None else "none"


def _check_exists(path: str) -> None:
    if not os.path.isfile(path):
        raise VideoError(f"video file not found: {path}")


def _check_indices(path: str, frame_indices: np.ndarray, num_frames: int) -> None:
    if frame_indices.size and (frame_indices.min() < 0 or frame_indices.max() >= num_frames):
        raise VideoError(
            f"{path}: frame indices {frame_indices.min()}..{frame_indices.max()} are out of range; "
            f"the video has {num_frames} frames (truncated file?)"
        )


def _read_decord(path: str, frame_indices: Optional[np.ndarray]) -> np.ndarray:
    try:
        reader = _decord.VideoReader(path, ctx=_decord.cpu(0), num_threads=1)
        num_frames = len(reader)
    except Exception as exc:  # decord raises its own DECORDError / RuntimeError
        raise VideoError(f"{path}: cannot open video ({type(exc).__name__}: {exc})") from exc
    if num_frames == 0:
        raise VideoError(f"{path}: the video holds no frames")
    if frame_indices is None:
        frame_indices = np.arange(num_frames)
    _check_indices(path, frame_indices, num_frames)
    try:
        frames = reader.get_batch(frame_indices.tolist()).asnumpy()
    except Exception as exc:
        raise VideoError(f"{path}: cannot decode frames ({type(exc).__name__}: {exc})") from exc
    return frames


def _decode_all_av(path: str) -> np.ndarray:
    try:
        with _av.open(path) as container:
            if not container.streams.video:
                raise VideoError(f"{path}: the file holds no video stream")
            frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    except VideoError:
        raise
    except Exception as exc:  # av.error.* (InvalidDataError, ...), EOFError
        raise VideoError(f"{path}: cannot decode video ({type(exc).__name__}: {exc})") from exc
    if not frames:
        raise VideoError(f"{path}: the video holds no frames")
    return np.stack(frames)


def _read_av(path: str, frame_indices: Optional[np.ndarray]) -> np.ndarray:
    # Clips here are short, so decoding sequentially and picking frames is simple and exact.
    frames = _decode_all_av(path)
    if frame_indices is None:
        return frames
    _check_indices(path, frame_indices, len(frames))
    return frames[frame_indices]


def read_video(path: str, frame_indices: Optional[Sequence[int]] = None) -> np.ndarray:
    """Decode frames of a video file.

    Args:
        path: the video file (any container/codec ffmpeg reads).
        frame_indices: which frames (0-based) to return, in that order; None: all frames.
    Returns:
        uint8 array [T, H, W, 3], RGB.
    Raises:
        VideoError naming the file when it is missing, corrupt, truncated, or the
        requested indices lie beyond its last frame.
    """
    path = os.fspath(path)
    _check_exists(path)
    indices = None if frame_indices is None else np.asarray(frame_indices, dtype=np.int64).reshape(-1)
    if _decord is not None:
        try:
            frames = _read_decord(path, indices)
        except VideoError:
            if _av is None:
                raise
            # decord rejects some valid streams (e.g. widths whose row stride it pads,
            # such as 48 px); PyAV decodes them, and reports truly broken files itself.
            frames = _read_av(path, indices)
    elif _av is not None:
        frames = _read_av(path, indices)
    else:  # pragma: no cover - depends on the environment
        raise ImportError("reading videos needs decord or PyAV: pip install decord av")
    return np.ascontiguousarray(frames, dtype=np.uint8)


def video_num_frames(path: str) -> int:
    """Number of decodable frames in a video file (VideoError naming the file on failure)."""
    path = os.fspath(path)
    _check_exists(path)
    if _decord is not None:
        try:
            return len(_decord.VideoReader(path, ctx=_decord.cpu(0), num_threads=1))
        except Exception as exc:
            if _av is None:
                raise VideoError(f"{path}: cannot open video ({type(exc).__name__}: {exc})") from exc
    return len(_decode_all_av(path))


def _check_frames(frames: np.ndarray, name: str = "frames") -> np.ndarray:
    frames = np.asarray(frames)
    if frames.dtype != np.uint8:
        raise TypeError(f"{name} must be uint8, got {frames.dtype}")
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] == 0:
        raise ValueError(f"{name} must have shape [T>0, H, W, 3], got {list(frames.shape)}")
    return np.ascontiguousarray(frames)


def write_video(path: str, frames: np.ndarray, fps: int = 10, crf: int = 12) -> None:
    """Encode uint8 frames [T, H, W, 3] (RGB) as an H.264 .mp4.

    crf sets quality (0 = lossless, 12 = visually lossless, 23 = x264's default). Frames with
    odd width or height are stored as yuv444p, since 4:2:0 needs even sizes.
    """
    if _av is None:  # pragma: no cover - depends on the environment
        raise ImportError("writing videos needs PyAV: pip install av")
    frames = _check_frames(frames)
    path = os.fspath(path)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    _, height, width, _ = frames.shape
    even = height % 2 == 0 and width % 2 == 0
    with _av.open(path, mode="w") as container:
        stream = container.add_stream("libx264", rate=int(fps))
        stream.width, stream.height = width, height
        stream.pix_fmt = "yuv420p" if even else "yuv444p"
        # x264's macroblock-tree rate control gave different bitstreams for the same input
        # from run to run (measured with PyAV 18 / its libx264); without it the output is
        # reproducible, which seeded generation relies on.
        stream.options = {"crf": str(int(crf)), "preset": "medium", "x264-params": "no-mbtree=1:threads=1"}
        for frame in frames:
            for packet in stream.encode(_av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def write_gif(path: str, frames: np.ndarray, fps: int = 10) -> None:
    """Write uint8 frames [T, H, W, 3] as a looping animated GIF (256-colour palette per frame)."""
    from PIL import Image

    frames = _check_frames(frames)
    path = os.fspath(path)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    images = [Image.fromarray(f) for f in frames]
    images[0].save(
        path, save_all=True, append_images=images[1:], duration=int(round(1000 / fps)), loop=0
    )
