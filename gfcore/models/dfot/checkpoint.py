"""Loading DFoT / Geometry Forcing checkpoints into UViT3DPose, key-exactly.

Accepted files (read weights-only: tensors and plain containers, never arbitrary pickles):
- Lightning checkpoints {"state_dict": {...}, "optimizer_states": [...], ...} whose backbone keys
  start with `diffusion_model.model.` or, saved from a torch.compile'd model,
  `diffusion_model._orig_mod.model.`; other modules' keys in the file (e.g. an alignment
  projector) are left out.
- plain state dicts, with or without those prefixes (.pt/.pth/.ckpt/.bin or .safetensors).
- EMA weights: the authors' EMA optimizer saves them as optimizer_states[0]["ema"], a list of
  tensors in the order of the diffusion model's parameters (= the backbone's parameters in
  registration order); with use_ema they replace the parameters of state_dict. Files released
  as EMA-only ("pretrained_ema": True, no optimizer state) already hold the EMA weights.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, List, Mapping

import torch
from torch import nn

from gfcore.geometry.checkpoint import CheckpointError
from gfcore.io.safe_load import UnsafeFileError, load_weights_only

PREFIXES = ("diffusion_model.model.", "diffusion_model._orig_mod.model.")

__all__ = ["CheckpointError", "PREFIXES", "dfot_state_dict", "load_dfot_checkpoint", "read_checkpoint"]


def read_checkpoint(path: str | os.PathLike) -> Any:
    """The file's content, read without running code (safetensors or torch weights-only)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"DFoT checkpoint: no such file {str(path)!r}")
    try:
        if path.suffix.lower() == ".safetensors":
            from safetensors.torch import load_file  # optional dependency
            return load_file(str(path), device="cpu")
        with open(path, "rb") as handle:
            is_zip = handle.read(4) == b"PK\x03\x04"
        return load_weights_only(path, "DFoT checkpoint", mmap=is_zip)
    except UnsafeFileError as exc:
        raise CheckpointError(f"{exc}; save the weights alone (e.g. torch.save(ckpt['state_dict'], ...)) "
                              f"with code you trust") from exc
    except ImportError as exc:
        raise CheckpointError(f"DFoT checkpoint {str(path)!r}: .safetensors needs the 'safetensors' package") from exc
    except Exception as exc:  # corrupt or truncated files: many exception types
        raise CheckpointError(f"DFoT checkpoint {str(path)!r} could not be read: {exc}") from exc


def _is_tensor_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and all(isinstance(v, torch.Tensor) for v in obj.values())


def _ema_list(content: Mapping) -> List[torch.Tensor] | None:
    states = content.get("optimizer_states")
    if not states or not isinstance(states, (list, tuple)) or not isinstance(states[0], Mapping):
        return None
    ema = states[0].get("ema")
    return list(ema) if isinstance(ema, (list, tuple)) else None


def dfot_state_dict(content: Any, model: nn.Module, use_ema: bool = True,
                    source: str = "DFoT checkpoint") -> Dict[str, torch.Tensor]:
    """The backbone state dict (keys without prefix) held by a loaded checkpoint `content`."""
    lightning = isinstance(content, Mapping) and isinstance(content.get("state_dict"), Mapping)
    state = content["state_dict"] if lightning else content
    if not _is_tensor_dict(state):
        raise CheckpointError(f"{source} holds neither a Lightning checkpoint ('state_dict') nor a flat "
                              f"state dict of tensors")
    used = [p for p in PREFIXES if any(k.startswith(p) for k in state)]
    if len(used) > 1:
        raise CheckpointError(f"{source} holds backbone keys under both {PREFIXES[0]!r} and {PREFIXES[1]!r}")
    if used:
        prefix = used[0]
        state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    else:
        state = dict(state)
    ema = _ema_list(content) if (use_ema and lightning) else None
    if ema is not None:
        names = [name for name, _ in model.named_parameters()]
        if len(ema) != len(names) or not all(isinstance(t, torch.Tensor) for t in ema):
            raise CheckpointError(f"{source}: its EMA weights (optimizer_states[0]['ema']) are {len(ema)} entries, "
                                  f"the model has {len(names)} parameters; load with use_ema=False to take "
                                  f"state_dict's weights")
        state.update(zip(names, ema))
    return state


def check_keys(model: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """Raise CheckpointError naming every missing, unexpected and mis-shaped key."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    mismatched = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if not (missing or unexpected or mismatched):
        return
    lines = [f"{source} does not match the model ({type(model).__name__}):"]
    if missing:
        lines.append(f"  missing keys ({len(missing)}): " + ", ".join(missing))
    if unexpected:
        lines.append(f"  unexpected keys ({len(unexpected)}): " + ", ".join(unexpected))
    if mismatched:
        lines.append(f"  mis-shaped keys ({len(mismatched)}): " + ", ".join(
            f"{k} (checkpoint {list(state[k].shape)}, model {list(own[k].shape)})" for k in mismatched))
    error = CheckpointError("\n".join(lines))
    error.missing, error.unexpected, error.mismatched = missing, unexpected, mismatched
    raise error


def load_dfot_checkpoint(model: nn.Module, path: str | os.PathLike, *, use_ema: bool = True,
                         assign: bool = False) -> nn.Module:
    """Load the DFoT checkpoint at `path` into `model` (a UViT3DPose) key-exactly.

    use_ema: take the EMA weights where the file holds them (Lightning files with the authors'
    EMA optimizer state); else state_dict's. assign: adopt the file's tensors instead of copying
    (for a model built on the meta device).
    Raises CheckpointError listing every missing, unexpected and mis-shaped key, or when the file
    cannot be read safely.
    """
    source = f"DFoT checkpoint {str(path)!r}"
    state = dfot_state_dict(read_checkpoint(path), model, use_ema=use_ema, source=source)
    check_keys(model, state, source)
    model.load_state_dict(state, strict=True, assign=assign)
    return model
