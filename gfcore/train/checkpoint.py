"""Checkpoints written atomically (temp file, fsync, os.replace) and found again for resume=auto.

Files are {dir}/step_{step:08d}.pt in gfcore's safe format (gfcore.io.checkpoint_file: read
with weights_only=True, never unpickled); a crash mid-write leaves only a *.tmp file, which is
ignored. `find_resumable` returns the newest file that loads and names the damaged ones;
the trainer renames those to *.corrupt (kept for inspection, never pruned or overwritten). A
file that is refused as unsafe (an old pickled checkpoint, or a crafted one) is not damage:
it stops the search with LegacyCheckpointError, whose message names the convert command.
"""
from __future__ import annotations

import os
import random
import re
import warnings
from typing import Dict, List, NamedTuple, Optional, Tuple

import numpy as np
import torch

from gfcore.io.checkpoint_file import atomic_save, read_checkpoint, write_checkpoint  # noqa: F401 (re-exported)
from gfcore.io.safe_load import UnsafeFileError

PATTERN = re.compile(r"^step_(\d{8})\.pt$")


def checkpoint_path(directory: str, step: int) -> str:
    return os.path.join(directory, f"step_{step:08d}.pt")


def save_checkpoint(directory: str, step: int, state: Dict, keep_last: int = 2) -> str:
    """Write state to step_{step}.pt atomically and prune all but the newest keep_last files."""
    final = write_checkpoint(state, checkpoint_path(directory, step))
    if keep_last > 0:
        for _, old in list_checkpoints(directory)[:-keep_last]:
            os.remove(old)
    return final


def list_checkpoints(directory: str) -> List[Tuple[int, str]]:
    if not os.path.isdir(directory):
        return []
    found = [(int(m.group(1)), os.path.join(directory, name))
             for name in os.listdir(directory) if (m := PATTERN.match(name))]
    return sorted(found)


class Resumable(NamedTuple):
    """What a run folder offers to resume from."""

    found: Optional[Tuple[str, Dict]]  # (path, state) of the newest checkpoint that loads, or None
    unreadable: List[Tuple[str, str]]  # (path, why) of the newer files that did not load, newest first


def find_resumable(directory: str) -> Resumable:
    """The newest checkpoint in directory that loads, and the newer ones that do not."""
    unreadable = []
    for _, path in reversed(list_checkpoints(directory)):
        try:
            return Resumable((path, read_checkpoint(path)), unreadable)
        except UnsafeFileError:
            raise  # refused, not damaged: falling back would silently resume from an older step
        except Exception as exc:  # a damaged file: fall back to the one before
            unreadable.append((path, f"{type(exc).__name__}: {exc}"))
    return Resumable(None, unreadable)


def latest_checkpoint(directory: str) -> Optional[Tuple[str, Dict]]:
    """(path, state) of the newest checkpoint that loads, or None; warns about each damaged one."""
    found, unreadable = find_resumable(directory)
    for path, why in unreadable:
        warnings.warn(f"skipping unreadable checkpoint {path}: {why}")
    return found


def quarantine(path: str) -> str:
    """Rename a damaged checkpoint to {path}.corrupt (.corrupt.1, ... if taken): kept for
    inspection, and out of the way of pruning, resume=auto and the next save of that step."""
    target, n = f"{path}.corrupt", 0
    while os.path.exists(target):
        n += 1
        target = f"{path}.corrupt.{n}"
    os.replace(path, target)
    return target


def rng_state() -> Dict:
    """Python, numpy and torch (CPU and CUDA) generator states of this process."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
