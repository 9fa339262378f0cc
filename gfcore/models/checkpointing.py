"""train.activation_checkpointing: which activations a model recomputes in the backward instead of
keeping them (VideoDiT.activation_checkpointing, UViT3DPose.checkpoint_levels).

- none: nothing recomputed.
- full: every block recomputed from its input (least memory, about one more forward of the blocks).
- selective: only the attention and MLP computations recomputed (their internals are the bulk
  of a block's activations); the norms, modulations and residual adds keep theirs.
The old booleans still work: true is full, false is none. Every mode gives the same values.
"""
from __future__ import annotations

import torch
import torch.utils.checkpoint

MODES = ("none", "full", "selective")


def checkpoint_mode(value, key: str = "train.activation_checkpointing") -> str:
    """One of MODES from a mode name or the old booleans."""
    if value is True:
        return "full"
    if value is False or value is None:
        return "none"
    if isinstance(value, str) and value in MODES:
        return value
    raise ValueError(f"{key} must be none, full or selective (or true / false for full / none), got {value!r}")


def recompute(function, *args):
    """function(*args), its activations recomputed in the backward (non-reentrant: keeps the RNG
    state, so dropout draws the same mask again)."""
    return torch.utils.checkpoint.checkpoint(function, *args, use_reentrant=False)
