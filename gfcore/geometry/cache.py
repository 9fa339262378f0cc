"""Feature cache: run a teacher once over a dataset, store its features for training.

Any teacher of the protocol (gfcore.geometry.protocol: VGGT, DINOv2, the oracle pointmap
teacher, your own) can fill a cache.

Layout of a cache directory:
    index.json                 teacher (name), teacher_info (its cache_info()), layers, grid,
                               feature_dim, clips {key: {file, frames}}
    features/<name>.npy        float16 [T, L, h, w, D] per clip, read back with mmap_mode="r"

Input: a torch Dataset yielding {"key": str, "frames": [T, 3, H, W]} with values in [0, 1],
[-1, 1] or uint8 [0, 255] (plus [T, ...] tensors for each key in teacher.requires); from the
command line, a folder of .mp4 files (decoded with PyAV).

    python -m gfcore.geometry.cache --videos clips/ --out cache/ --checkpoint model.pt \\
        --layers 23 --grid 32 32 --device cuda
    python -m gfcore.geometry.cache --teacher dinov2 --config dinov2_vitb14 --checkpoint \\
        dinov2_vitb14_pretrain.pth --videos clips/ --out cache/ --grid 16 16
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sys
from pathlib import Path
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch

from gfcore.geometry.protocol import check_teacher, teacher_features

INDEX_NAME = "index.json"
INDEX_VERSION = 1
_REQUIRED_INDEX_KEYS = ("version", "layers", "grid", "feature_dim", "dtype", "clips")


def to_unit_range(frames: torch.Tensor, value_range: str = "auto", name: str = "frames") -> torch.Tensor:
    """uint8 [0, 255], [-1, 1] or [0, 1] frames -> float32 in [0, 1].

    value_range "auto" treats float frames with any value below 0 as [-1, 1].
    """
    if frames.dtype == torch.uint8:
        return frames.float() / 255.0
    if not frames.is_floating_point():
        raise ValueError(f"{name}: expected uint8 or float frames, got {frames.dtype}")
    frames = frames.float()
    if value_range == "auto":
        value_range = "-1,1" if frames.numel() and float(frames.min()) < 0 else "0,1"
    if value_range == "-1,1":
        return ((frames + 1) * 0.5).clamp_(0, 1)
    if value_range == "0,1":
        return frames
    raise ValueError(f"value_range={value_range!r} must be 'auto', '0,1' or '-1,1'")


def clip_filename(key: str) -> str:
    """A file name for `key`: its safe characters plus a short hash, so distinct keys never collide."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", key).strip("._")[:80] or "clip"
    return f"{safe}-{hashlib.sha1(key.encode()).hexdigest()[:10]}.npy"


def _check_item(item, position: int) -> Tuple[str, torch.Tensor]:
    if not isinstance(item, Mapping) or "key" not in item or "frames" not in item:
        raise ValueError(f"dataset item {position}: expected a dict with 'key' and 'frames'")
    frames = item["frames"]
    if not isinstance(frames, torch.Tensor) or frames.dim() != 4 or frames.shape[1] != 3:
        shape = tuple(frames.shape) if isinstance(frames, torch.Tensor) else type(frames).__name__
        raise ValueError(f"dataset item {position} (key {item['key']!r}): frames must be [T, 3, H, W], got {shape}")
    return str(item["key"]), frames


def build_feature_cache(teacher, dataset: Iterable, out_dir: str | os.PathLike, grid: Tuple[int, int],
                        value_range: str = "auto", overwrite: bool = False, log=None) -> Path:
    """Run `teacher` (any FeatureTeacher) over every clip of `dataset` and store the features.

    Clips whose file already exists with the expected shape are kept (resumable) unless
    `overwrite`. Returns the path of the index file.
    """
    check_teacher(teacher)
    out_dir = Path(out_dir)
    (out_dir / "features").mkdir(parents=True, exist_ok=True)
    grid = (int(grid[0]), int(grid[1]))
    clips: Dict[str, Dict] = {}
    for position, item in enumerate(dataset):
        key, frames = _check_item(item, position)
        if key in clips:
            raise ValueError(f"dataset item {position}: duplicate key {key!r}")
        name = clip_filename(key)
        path = out_dir / "features" / name
        shape = (frames.shape[0], len(teacher.layers), grid[0], grid[1], teacher.feature_dim)
        if overwrite or not _has_array(path, shape):
            frames01 = to_unit_range(frames, value_range, name=f"dataset item {position} (key {key!r})")
            missing = [k for k in teacher.requires if k not in item]
            if missing:
                raise ValueError(f"dataset item {position} (key {key!r}): the {teacher.name} teacher needs {missing}")
            inputs = {k: torch.as_tensor(item[k])[None] for k in teacher.requires}
            features = teacher_features(teacher, frames01[None], grid, **inputs)[0]
            array = np.lib.format.open_memmap(path.with_suffix(".tmp.npy"), mode="w+", dtype=np.float16, shape=shape)
            array[:] = features.float().cpu().numpy().astype(np.float16)
            array.flush()
            del array
            os.replace(path.with_suffix(".tmp.npy"), path)
        clips[key] = {"file": f"features/{name}", "frames": int(frames.shape[0])}
        if log:
            log(f"[{position + 1}] {key}: {shape[0]} frames")
    info = dict(teacher.cache_info())
    index = {
        "version": INDEX_VERSION, "teacher": teacher.name, "teacher_info": info, "layers": list(teacher.layers),
        "grid": list(grid), "feature_dim": int(teacher.feature_dim), "dtype": "float16",
        **{k: info[k] for k in ("resize_mode", "image_size") if k in info}, "clips": clips,
    }
    index_path = out_dir / INDEX_NAME
    tmp = index_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(index, indent=1))
    os.replace(tmp, index_path)
    return index_path


def _has_array(path: Path, shape: Sequence[int]) -> bool:
    if not path.is_file():
        return False
    try:
        return tuple(np.load(path, mmap_mode="r", allow_pickle=False).shape) == tuple(shape)
    except (ValueError, OSError):
        return False


class FeatureCache:
    """Read side of a cache directory: cache[key] -> float16 memmap [T, L, h, w, D].

    `teacher` names the teacher that filled it ("vggt" for caches written before the index
    recorded it)."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        index_path = self.root / INDEX_NAME
        if not index_path.is_file():
            raise FileNotFoundError(f"feature cache: no index file {str(index_path)!r}")
        try:
            index = json.loads(index_path.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"feature cache index {str(index_path)!r} is not valid JSON "
                             f"(line {exc.lineno}): {exc.msg}") from exc
        missing = [k for k in _REQUIRED_INDEX_KEYS if k not in index]
        if missing:
            raise ValueError(f"feature cache index {str(index_path)!r} lacks keys {missing}")
        if index["version"] != INDEX_VERSION:
            raise ValueError(f"feature cache index {str(index_path)!r}: version {index['version']}, "
                             f"this reader knows {INDEX_VERSION}")
        self.index = index
        self.layers: List[int] = list(index["layers"])
        self.grid = tuple(index["grid"])
        self.feature_dim = int(index["feature_dim"])
        self.teacher = str(index.get("teacher", "vggt"))
        self.teacher_info = dict(index.get("teacher_info", {}))
        self._arrays: Dict[str, np.ndarray] = {}  # key -> its checked memmap, opened once

    def keys(self) -> List[str]:
        return list(self.index["clips"])

    def __len__(self) -> int:
        return len(self.index["clips"])

    def __contains__(self, key: str) -> bool:
        return key in self.index["clips"]

    def __getitem__(self, key: str) -> np.ndarray:
        """The clip's memmap; each file is opened and checked once, then reused (training reads
        the same clips every epoch: no per-step open, header parse and mapping)."""
        array = self._arrays.get(key)
        if array is None:
            array = self._arrays[key] = self._open(key)
        return array

    def _open(self, key: str) -> np.ndarray:
        if key not in self.index["clips"]:
            raise KeyError(f"feature cache {str(self.root)!r} has no clip {key!r}")
        entry = self.index["clips"][key]
        path = self.root / entry["file"]
        try:
            array = np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise ValueError(f"feature cache: cannot read {str(path)!r}: {exc}") from exc
        expected = (entry["frames"], len(self.layers), *self.grid, self.feature_dim)
        if tuple(array.shape) != expected or array.dtype != np.float16:
            raise ValueError(f"feature cache: {str(path)!r} holds {array.dtype} {array.shape}, "
                             f"index says float16 {expected}")
        return array

    def features(self, key: str, frames: slice | Sequence[int] = slice(None),
                 device: torch.device | str = "cpu") -> torch.Tensor:
        """The selected frames of one clip as a float16 tensor [t, L, h, w, 2C] on `device`."""
        return torch.from_numpy(self._select(key, frames)).to(device)

    def _select(self, key: str, frames) -> np.ndarray:
        """A writable in-memory float16 copy of the selected frames (a list of indices gathers them in
        one copy; a slice of the read-only memmap is copied)."""
        selected = self[key][frames]
        return selected if isinstance(selected, np.ndarray) and not isinstance(selected, np.memmap) \
            and selected.flags.writeable else np.array(selected)

    def read_into(self, key: str, frames: slice | Sequence[int], out: torch.Tensor) -> torch.Tensor:
        """Copy the selected frames of one clip into `out` ([t, L, h, w, D], any dtype and device),
        converting from float16 in the same pass: no intermediate float32 copy and no stack."""
        src = torch.from_numpy(self._select(key, frames))
        if tuple(out.shape) != tuple(src.shape):
            raise ValueError(f"feature cache: clip {key!r} frames {frames} are {tuple(src.shape)}, out is "
                             f"{tuple(out.shape)}")
        out.copy_(src)
        return out


class VideoFolder(torch.utils.data.Dataset):
    """All .mp4 files under a folder (sorted); items {"key": relative path without suffix,
    "frames": uint8 [T, 3, H, W]}. `max_frames` keeps the first frames, `stride` subsamples."""

    def __init__(self, root: str | os.PathLike, max_frames: Optional[int] = None, stride: int = 1):
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"videos: no such folder {str(self.root)!r}")
        self.paths = sorted(self.root.rglob("*.mp4"))
        if not self.paths:
            raise ValueError(f"videos: no .mp4 files under {str(self.root)!r}")
        self.max_frames, self.stride = max_frames, stride

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> Dict:
        path = self.paths[i]
        frames = read_video(path, self.max_frames, self.stride)
        return {"key": str(path.relative_to(self.root).with_suffix("")), "frames": frames}


def read_video(path: str | os.PathLike, max_frames: Optional[int] = None, stride: int = 1) -> torch.Tensor:
    """Decode a video with PyAV into uint8 [T, 3, H, W]."""
    try:
        import av
    except ImportError as exc:
        raise RuntimeError("reading videos needs PyAV (pip install av)") from exc
    frames = []
    try:
        with av.open(str(path)) as container:
            for n, frame in enumerate(container.decode(video=0)):
                if n % stride:
                    continue
                frames.append(torch.from_numpy(frame.to_ndarray(format="rgb24")))
                if max_frames is not None and len(frames) >= max_frames:
                    break
    except av.error.FFmpegError as exc:
        raise ValueError(f"video {str(path)!r} could not be decoded: {exc}") from exc
    if not frames:
        raise ValueError(f"video {str(path)!r} has no decodable frames")
    return torch.stack(frames).permute(0, 3, 1, 2).contiguous()


def _parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m gfcore.geometry.cache",
                                     description="Run a teacher (VGGT or DINOv2) once over a folder of .mp4 clips "
                                                 "and store float16 memory-mapped features plus index.json.")
    parser.add_argument("--teacher", choices=["vggt", "dinov2"], default="vggt")
    parser.add_argument("--videos", required=True, help="folder searched recursively for .mp4 files")
    parser.add_argument("--out", required=True, help="cache directory to write")
    parser.add_argument("--checkpoint", help="local VGGT / DINOv2 checkpoint (.pt/.pth/.safetensors); "
                                             "omit only for a dry run with random weights")
    parser.add_argument("--config", default=None,
                        help="VGGT: 'vggt1b' (default), 'small' or a JSON file of VGGT keyword arguments; "
                             "DINOv2: a variant (default dinov2_vitb14) or a JSON file "
                             "{\"variant\": ..., overrides}")
    parser.add_argument("--layers", type=int, nargs="+", default=[-1],
                        help="aggregator (VGGT) or block (DINOv2) layers to keep (negative counts from the end; "
                             "default: the last)")
    parser.add_argument("--grid", type=int, nargs=2, required=True, metavar=("H", "W"),
                        help="diffusion token grid the features are resampled to")
    parser.add_argument("--dtype", choices=["bf16", "fp16", "fp32"], default="bf16")
    parser.add_argument("--frames-per-call", type=int, default=16)
    parser.add_argument("--resize-mode", choices=["square", "crop", "pad"], default="square")
    parser.add_argument("--image-size", type=int, default=None, help="default: 518 (VGGT), 224 (DINOv2)")
    parser.add_argument("--max-frames", type=int, default=None)
    parser.add_argument("--stride", type=int, default=1, help="keep every k-th frame")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--overwrite", action="store_true", help="recompute clips already cached")
    return parser.parse_args(argv)


def _load_config(spec: str) -> Dict:
    from gfcore.geometry.model import small_config
    if spec == "vggt1b":
        return {}
    if spec == "small":
        return small_config()
    path = Path(spec)
    if not path.is_file():
        raise FileNotFoundError(f"--config: no such file {spec!r} (or use 'vggt1b' / 'small')")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"--config {spec!r}: invalid JSON at line {exc.lineno}: {exc.msg}") from exc


def main(argv: Optional[Sequence[str]] = None) -> int:
    from gfcore.geometry.teacher import VGGTTeacher
    args = _parse_args(argv)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    if args.teacher == "dinov2":
        from gfcore.geometry.dinov2 import DINOv2Teacher
        spec = args.config or "dinov2_vitb14"
        overrides = json.loads(Path(spec).read_text()) if spec.endswith(".json") else {"variant": spec}
        variant = overrides.pop("variant", "dinov2_vitb14")
        teacher = DINOv2Teacher(args.checkpoint, variant=variant, layers=args.layers, dtype=dtype,
                                frames_per_call=args.frames_per_call, image_size=args.image_size or 224,
                                config=overrides, device=args.device, out_dtype=torch.float32)
    else:
        teacher = VGGTTeacher(args.checkpoint, layers=args.layers, dtype=dtype, frames_per_call=args.frames_per_call,
                              resize_mode=args.resize_mode, image_size=args.image_size or 518,
                              config=_load_config(args.config or "vggt1b"), device=args.device,
                              out_dtype=torch.float32)
    dataset = VideoFolder(args.videos, args.max_frames, args.stride)
    index = build_feature_cache(teacher, dataset, args.out, tuple(args.grid), overwrite=args.overwrite,
                                log=lambda line: print(line, file=sys.stderr))
    print(f"wrote {index} ({len(dataset)} clips)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
