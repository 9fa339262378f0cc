"""Loading official VGGT checkpoints (.pt/.pth state_dicts or .safetensors) from a local path.

Never touches the network. Key checks are strict: anything missing, unexpected or of the wrong
shape is listed in one error. Keys of heads the model does not carry (always `track_head.*`,
plus any head disabled at construction) are skipped with a one-time message.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, Iterable, List, Mapping, Optional

import torch
from torch import nn

from gfcore._extension import warn_once
from gfcore.io.safe_load import UnsafeFileError, load_weights_only

HEAD_PREFIXES = ("camera_head.", "point_head.", "depth_head.", "track_head.")
_MAX_LISTED = 20


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not match the model."""


# Classes a teacher checkpoint may hold besides tensors and plain containers (which
# torch.load(weights_only=True) takes): none so far. The released VGGT and DINOv2 files are
# plain state_dicts; a file that asks for anything else is refused with the class named.
ALLOWED_GLOBALS: tuple = ()


def read_state_dict(path: str | os.PathLike) -> Dict[str, torch.Tensor]:
    """Read a state_dict from .pt/.pth (weights only, never unpickled; CPU) or .safetensors."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint: no such file {str(path)!r}")
    suffix = path.suffix.lower()
    try:
        if suffix == ".safetensors":
            from safetensors.torch import load_file  # optional dependency, imported on demand
            state = load_file(str(path), device="cpu")
        elif suffix in (".pt", ".pth", ".bin", ".ckpt"):
            state = load_weights_only(path, "checkpoint", ALLOWED_GLOBALS, mmap=_is_zip(path))
        else:
            raise CheckpointError(f"checkpoint {str(path)!r}: unknown extension {suffix!r} "
                                  "(expected .pt, .pth, .bin, .ckpt or .safetensors)")
    except ImportError as exc:
        raise CheckpointError(f"checkpoint {str(path)!r}: reading .safetensors needs the "
                              "'safetensors' package (pip install safetensors)") from exc
    except CheckpointError:
        raise
    except UnsafeFileError as exc:
        raise CheckpointError(str(exc)) from exc
    except Exception as exc:  # torch and safetensors raise many types for corrupt files
        raise CheckpointError(f"checkpoint {str(path)!r} could not be read: {exc}") from exc
    if isinstance(state, Mapping) and not all(isinstance(v, torch.Tensor) for v in state.values()):
        # training checkpoints often nest the weights under "model" or "state_dict"
        nested = [state[k] for k in ("model", "state_dict") if isinstance(state.get(k), Mapping)]
        if nested:
            state = nested[0]
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"checkpoint {str(path)!r} does not hold a flat state_dict of tensors")
    return dict(state)


def _is_zip(path: Path) -> bool:
    with open(path, "rb") as handle:
        return handle.read(4) == b"PK\x03\x04"


def _listing(title: str, items: List[str]) -> str:
    shown = ", ".join(items[:_MAX_LISTED])
    more = f" ... and {len(items) - _MAX_LISTED} more" if len(items) > _MAX_LISTED else ""
    return f"  {title} ({len(items)}): {shown}{more}"


def absent_head_prefixes(model: nn.Module) -> List[str]:
    """Head key prefixes whose module this model does not carry (their checkpoint keys get skipped)."""
    return [p for p in HEAD_PREFIXES if getattr(model, p[:-1], None) is None]


def load_state_dict_strict(model: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str = "state_dict",
                           assign: bool = False) -> nn.Module:
    """Load `state_dict` into `model` key-exact: every model key present with its shape, no other key.

    Raises CheckpointError listing missing, unexpected and wrongly shaped keys (all in one message).
    """
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    bad_shape = [f"{k} (checkpoint {list(state_dict[k].shape)}, model {list(own[k].shape)})"
                 for k in own if k in state_dict and state_dict[k].shape != own[k].shape]
    if missing or unexpected or bad_shape:
        lines = [f"{source} does not match the model:"]
        if missing:
            lines.append(_listing("missing keys", missing))
        if unexpected:
            lines.append(_listing("unexpected keys", unexpected))
        if bad_shape:
            lines.append(_listing("shape mismatches", bad_shape))
        raise CheckpointError("\n".join(lines))
    model.load_state_dict(dict(state_dict), strict=True, assign=assign)
    return model


def load_vggt_state_dict(model: nn.Module, state_dict: Mapping[str, torch.Tensor],
                         source: str = "state_dict",
                         skip_prefixes: Optional[Iterable[str]] = None, assign: bool = False) -> nn.Module:
    """Strictly load `state_dict` into `model` (a gfcore VGGT), skipping keys of absent heads.

    assign=True adopts the checkpoint tensors instead of copying (for models built on the meta
    device; recreate non-persistent buffers afterwards).

    Raises CheckpointError listing missing, unexpected and wrongly shaped keys.
    """
    skip = tuple(absent_head_prefixes(model) if skip_prefixes is None else skip_prefixes)
    skipped = sorted({p for p in skip for k in state_dict if k.startswith(p)})
    if skipped:
        warn_once(f"{source}: skipping keys of heads this model does not carry: "
                  + ", ".join(p + "*" for p in skipped))
    wanted = {k: v for k, v in state_dict.items() if not k.startswith(skip)}
    return load_state_dict_strict(model, wanted, source, assign)


def load_vggt_checkpoint(model: nn.Module, path: str | os.PathLike, assign: bool = False) -> nn.Module:
    """Read the file at `path` and strictly load it into `model` (see load_vggt_state_dict)."""
    return load_vggt_state_dict(model, read_state_dict(path), source=f"checkpoint {str(path)!r}",
                                assign=assign)


def save_state_dict(model_or_state: nn.Module | Mapping[str, torch.Tensor], path: str | os.PathLike) -> None:
    """Write a state_dict as .safetensors or with torch.save, chosen by the file extension."""
    state = model_or_state.state_dict() if isinstance(model_or_state, nn.Module) else dict(model_or_state)
    path = Path(path)
    if path.suffix.lower() == ".safetensors":
        from safetensors.torch import save_file
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(state, path)
