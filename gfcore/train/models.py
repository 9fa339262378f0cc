"""The trainer's alignment geometry and weight initialisation (train.init_from); the backbones
themselves are built by gfcore.models.build (model.arch dit or dfot, see there).

train.init_from=PATH loads weights only (init_weights): a DFoT release (Lightning or plain
state dict, through load_dfot_checkpoint) or a gfcore trainer checkpoint (step_*.pt, final.pt),
strictly (every key, every shape) or CheckpointError; the optimizer, scheduler and step of the
file are never read.
"""
from __future__ import annotations

from typing import Dict, Mapping, Tuple

import torch
from torch import nn

from gfcore.models.build import latent_shape, model_arch, read_gfcore_checkpoint
from gfcore.models.dfot.checkpoint import CheckpointError, check_keys, load_dfot_checkpoint


def alignment_geometry(model, node: Mapping) -> Tuple[int, Tuple[int, int]]:
    """(hidden width, teacher grid) of the model's aligned hidden state, whatever the arch."""
    if model_arch(node) == "dfot":
        return latent_shape(model, node)
    return model.hidden_dim, tuple(model.config.grid)


# ------------------------------------------------------------------------------------------ init_from


def _gfcore_state(content: Mapping, use_ema: bool) -> Dict[str, torch.Tensor] | None:
    """The model weights of a gfcore trainer checkpoint (step file: ema = {decay, shadow};
    final.pt: ema = a state dict), or None when `content` is not one."""
    if not (isinstance(content, Mapping) and isinstance(content.get("model"), Mapping) and "config" in content):
        return None
    if use_ema and content.get("ema") is not None:
        ema = content["ema"]
        return dict(ema["shadow"] if isinstance(ema, Mapping) and "shadow" in ema else ema)
    return dict(content["model"])


def init_weights(model: nn.Module, node: Mapping, path: str, use_ema: bool = True) -> str:
    """Load the weights of `path` into `model` strictly (train.init_from); returns what was
    loaded, for the log. Nothing but weights is read. CheckpointError when keys or shapes differ
    or the file cannot be read."""
    import os

    path = os.path.expanduser(str(path))
    if not os.path.isfile(path):
        raise CheckpointError(f"train.init_from={path!r}: no such file")
    content = read_gfcore_checkpoint(path)
    state = _gfcore_state(content, use_ema) if content is not None else None
    source = f"train.init_from={path!r}"
    if state is not None:
        state = {k: v for k, v in state.items()}
        check_keys(model, state, source)
        own = model.state_dict()
        model.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()}, strict=True)
        return f"gfcore checkpoint ({'EMA' if use_ema and content.get('ema') is not None else 'raw'} weights)"
    if model_arch(node) == "dfot":
        load_dfot_checkpoint(model, path, use_ema=use_ema)
        return "DFoT checkpoint" + (" (EMA weights where held)" if use_ema else "")
    raise CheckpointError(f"{source} is not a gfcore trainer checkpoint (step_*.pt or final.pt); a "
                          f"{model_arch(node)} model can only start from one")
