"""gfcore's own checkpoint files (step_*.pt, final.pt): tensors and plain containers only.

A file holds `{"gfcore_format": 2, ...}` with the run config as YAML text and each process's
random generator states as tensors, so that it loads with `torch.load(weights_only=True)`.
Files written before that format (pickled numpy generator states, the config as a dict) are
refused with the command that converts them (gfcore.io.convert), never unpickled.
"""
from __future__ import annotations

import os
from typing import Any, Dict

import numpy as np
import torch
import yaml

from gfcore.io.safe_load import UnsafeFileError, load_weights_only

FORMAT_KEY = "gfcore_format"
FORMAT = 2  # 1 (unmarked): the pickled layout of gfcore before safe loading


class LegacyCheckpointError(UnsafeFileError):
    """A checkpoint from before the safe format (or not gfcore's): refused, with the convert command."""


def convert_command(path: str) -> str:
    return f"gfcore convert-checkpoint {path} --trust"


def _legacy_message(path: str, why: str) -> str:
    return (f"{path}: {why}. gfcore reads checkpoints with weights_only=True and never unpickles them. If this file "
            f"was written by an earlier gfcore and you trust it, convert it once (it is loaded with pickle, at your "
            f"word, and rewritten in the safe format; the original is kept beside it): {convert_command(path)}")


# -- random generator states as tensors -------------------------------------------------------

def pack_rng(state: Dict[str, Any]) -> Dict[str, Any]:
    """One process's generator states (gfcore.train.checkpoint.rng_state) as tensors and numbers."""
    version, words, gauss = state["python"]
    kind, keys, pos, has_gauss, cached = state["numpy"]
    if kind != "MT19937":
        raise ValueError(f"numpy generator {kind!r}: only MT19937 states can be saved")
    packed = {
        "python": {"version": int(version), "state": torch.tensor(words, dtype=torch.int64), "gauss": gauss},
        "numpy": {"keys": torch.from_numpy(np.asarray(keys, dtype=np.uint32).astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": state["torch"],
    }
    if "cuda" in state:
        packed["cuda"] = list(state["cuda"])
    return packed


def unpack_rng(packed: Dict[str, Any]) -> Dict[str, Any]:
    """The inverse of pack_rng: states that random, numpy and torch accept, bit for bit."""
    py, npy = packed["python"], packed["numpy"]
    state = {
        "python": (py["version"], tuple(int(w) for w in py["state"].tolist()), py["gauss"]),
        "numpy": ("MT19937", npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"],
                  npy["cached_gaussian"]),
        "torch": packed["torch"],
    }
    if "cuda" in packed:
        state["cuda"] = packed["cuda"]
    return state


# -- the config as YAML text --------------------------------------------------------------------

def config_to_text(config: Dict[str, Any]) -> str:
    """Plain YAML (PyYAML's safe dumper writes floats so that they read back bit for bit); not
    OmegaConf's, which would read a literal '${' in a value as an interpolation."""
    return yaml.safe_dump(config, sort_keys=False)


def config_from_text(text: str) -> Dict[str, Any]:
    return yaml.safe_load(text)


# -- whole files ---------------------------------------------------------------------------------

def pack_checkpoint(state: Dict[str, Any]) -> Dict[str, Any]:
    """The in-memory state (config as a dict, rng as generator states) in the file's safe form."""
    packed = dict(state)
    packed[FORMAT_KEY] = FORMAT
    if "config" in packed:
        packed["config"] = config_to_text(packed["config"])
    if "rng" in packed:
        packed["rng"] = [pack_rng(r) for r in packed["rng"]]
    return packed


def unpack_checkpoint(packed: Dict[str, Any]) -> Dict[str, Any]:
    state = {k: v for k, v in packed.items() if k != FORMAT_KEY}
    if "config" in state:
        state["config"] = config_from_text(state["config"])
    if "rng" in state:
        state["rng"] = [unpack_rng(r) for r in state["rng"]]
    return state


def atomic_save(obj, path: str) -> str:
    """torch.save to a temp file in the same folder, fsync, then os.replace onto path."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "wb") as handle:
        torch.save(obj, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)
    return path


def write_checkpoint(state: Dict[str, Any], path: str) -> str:
    """A gfcore checkpoint (step file or final.pt) in the safe format, written atomically."""
    return atomic_save(pack_checkpoint(state), path)




def is_current(packed: Any) -> bool:
    return isinstance(packed, dict) and packed.get(FORMAT_KEY) == FORMAT


def read_checkpoint(path: str | os.PathLike) -> Dict[str, Any]:
    """A gfcore checkpoint file, loaded without running code, in its in-memory form.

    LegacyCheckpointError for a file in the old pickled layout or not written by gfcore (the
    message names the convert command); other errors (a truncated file) propagate as they are.
    """
    path = str(path)
    try:
        packed = load_weights_only(path, "checkpoint")
    except LegacyCheckpointError:
        raise
    except UnsafeFileError as exc:
        raise LegacyCheckpointError(_legacy_message(path, f"it asks for {', '.join(exc.globals)} when loaded"),
                                    exc.globals) from exc
    if not is_current(packed):
        found = packed.get(FORMAT_KEY) if isinstance(packed, dict) else None
        if found is not None:
            raise ValueError(f"{path}: checkpoint format {found!r}, this gfcore reads format {FORMAT} "
                             f"(written by another gfcore version: use that version, or upgrade gfcore)")
        raise LegacyCheckpointError(_legacy_message(
            path, "it is not in gfcore's safe checkpoint format (no 'gfcore_format' key)"))
    return unpack_checkpoint(packed)

