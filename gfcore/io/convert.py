"""`gfcore convert-checkpoint PATH --trust`: rewrite checkpoints of earlier gfcore versions in
the safe format.

Those files are pickles (numpy generator states, the config as a dict): reading them can run
code, so this is the one place in gfcore that unpickles, and only at the user's explicit word
(--trust). Each file is loaded once, rewritten in the safe format (gfcore.io.checkpoint_file),
read back with weights_only=True and compared with what was unpickled, value for value, before
the original is moved aside to FILE.legacy.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Any, List, Optional, Sequence

import numpy as np
import torch

from gfcore.io.checkpoint_file import LegacyCheckpointError, atomic_save, pack_checkpoint, read_checkpoint
from gfcore.io.safe_load import UnsafeFileError


def checkpoint_files(path: str) -> List[str]:
    """The gfcore checkpoint files at `path`: the file itself, or a run folder's final.pt and
    checkpoints/step_*.pt."""
    if os.path.isfile(path):
        return [path]
    if not os.path.isdir(path):
        raise FileNotFoundError(f"convert-checkpoint: no such file or folder {path!r}")
    files = [os.path.join(path, "final.pt")] if os.path.isfile(os.path.join(path, "final.pt")) else []
    ckpt_dir = os.path.join(path, "checkpoints")
    if os.path.isdir(ckpt_dir):
        files += sorted(os.path.join(ckpt_dir, n) for n in os.listdir(ckpt_dir)
                        if n.startswith("step_") and n.endswith(".pt"))
    if not files:
        raise FileNotFoundError(f"convert-checkpoint: {path!r} holds no final.pt and no checkpoints/step_*.pt")
    return files


def same_values(a: Any, b: Any) -> bool:
    """Deep equality of checkpoint contents: tensors and arrays bit for bit (dtype included),
    tuples and lists alike (YAML and the rng packing turn one into the other), nothing else
    equal across types (1 is not 1.0, a tensor is not a list)."""
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same_values(x, y) for x, y in zip(a, b))
    if type(a) is not type(b):
        return False
    if isinstance(a, torch.Tensor):
        return a.dtype == b.dtype and a.shape == b.shape and bool(torch.equal(a, b))
    if isinstance(a, np.ndarray):
        return a.dtype == b.dtype and np.array_equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same_values(a[k], b[k]) for k in a)
    if isinstance(a, float) and a != a:
        return b != b  # NaN
    return a == b


def _free_name(path: str) -> str:
    target, n = f"{path}.legacy", 0
    while os.path.exists(target):
        n += 1
        target = f"{path}.legacy.{n}"
    return target


def convert_file(path: str) -> Optional[str]:
    """Rewrite one trusted legacy checkpoint in the safe format; returns where the original
    went, or None when the file was already safe."""
    try:
        read_checkpoint(path)
        return None
    except LegacyCheckpointError:
        pass
    # The one unpickling load in gfcore: the user vouched for this file with --trust.
    legacy = torch.load(path, map_location="cpu", weights_only=False)  # trusted: convert-checkpoint --trust
    if not isinstance(legacy, dict) or not ({"model", "config"} <= set(legacy)):
        raise ValueError(f"{path}: not a gfcore checkpoint (expected a dict with 'model' and 'config', "
                         f"got {type(legacy).__name__}{' with ' + str(sorted(legacy))[:200] if isinstance(legacy, dict) else ''})")
    original = _free_name(path)
    tmp = f"{path}.converted"
    atomic_save(pack_checkpoint(legacy), tmp)
    if not same_values(read_checkpoint(tmp), legacy):
        os.remove(tmp)
        raise ValueError(f"{path}: the converted file does not read back equal to the original; left unchanged")
    os.replace(path, original)
    os.replace(tmp, path)
    return original


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="gfcore convert-checkpoint",
        description="Rewrite checkpoints of earlier gfcore versions (pickles) in the safe format that gfcore "
                    "reads with weights_only=True. Loading a pickle can run code: only for files you trust.")
    parser.add_argument("path", help="a checkpoint file, or a run folder (final.pt and checkpoints/step_*.pt)")
    parser.add_argument("--trust", action="store_true",
                        help="required: you trust these files (they are unpickled once to convert them)")
    args = parser.parse_args(argv)
    if not args.trust:
        print("gfcore convert-checkpoint: error: converting unpickles the old files, which can run code; pass "
              "--trust if you trust where they came from", file=sys.stderr)
        return 2
    try:
        files = checkpoint_files(args.path)
        for file in files:
            original = convert_file(file)
            print(f"{file}: already in the safe format" if original is None
                  else f"{file}: converted (the original is kept as {original})")
    except (FileNotFoundError, ValueError, UnsafeFileError) as exc:
        print(f"gfcore convert-checkpoint: error: {exc}", file=sys.stderr)
        return 2
    return 0
