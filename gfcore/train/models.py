"""The trainer's model factory and weight initialisation (train.init_from).

model.arch picks the backbone: "dit" (the default when the node has no arch: gfcore's VideoDiT,
trained by flow matching, train.objective=flow) or "dfot" (DFoT's UViT3DPose, trained by DFoT's
diffusion, train.objective=dfot). A dfot node holds UViT3DPose's constructor fields (see
gfcore/configs/model/dfot_re10k.yaml) plus:

- align_level, align_path: the backbone latent Geometry Forcing aligns (return_latents=True):
  path "down" = the output of that level's down blocks (before its downsampling; the paper's
  choice is level 2), "mid" = the middle blocks, "up" = that level's up blocks.
- input_norm: how the batch's frames ([-1, 1]) are given to the backbone: "dfot" (back to [0, 1],
  then DFoT's per-channel mean/std, as the released checkpoints were trained) or "none".
- diffusion: DFoTDiffusion keyword arguments (shift, logsnr_min/max, precond_scale,
  sigmoid_bias, clip_noise).

train.init_from=PATH loads weights only (init_weights): a DFoT release (Lightning or plain
state dict, through load_dfot_checkpoint) or a gfcore trainer checkpoint (step_*.pt, final.pt),
strictly (every key, every shape) or CheckpointError; the optimizer, scheduler and step of the
file are never read.
"""
from __future__ import annotations

from typing import Dict, Mapping, Tuple

import torch
from torch import nn

from gfcore.models.dfot.checkpoint import CheckpointError, check_keys, load_dfot_checkpoint

ARCHS = ("dit", "dfot")
ALIGN_PATHS = ("down", "mid", "up")
INPUT_NORMS = ("dfot", "none")
# keys of a dfot model node that are not UViT3DPose constructor fields
DFOT_EXTRA_KEYS = ("arch", "align_level", "align_path", "input_norm", "diffusion")


def model_arch(node: Mapping) -> str:
    arch = node.get("arch", "dit")
    if arch not in ARCHS:
        raise ValueError(f"model.arch must be one of {ARCHS}, got {arch!r}")
    return arch


def build_train_model(node: Mapping) -> nn.Module:
    """The backbone of a model config node (a plain dict, as trainer.model_config gives)."""
    node = dict(node)
    if model_arch(node) == "dit":
        from gfcore.models.dit import build_model

        node.pop("arch", None)
        return build_model(node)
    from gfcore.models.dfot import UViT3DPose

    fields = {k: v for k, v in node.items() if k not in DFOT_EXTRA_KEYS}
    model = UViT3DPose(**fields)
    latent_index(model, node)  # the alignment choice is checked when the model is built
    if node.get("input_norm", "dfot") not in INPUT_NORMS:
        raise ValueError(f"model.input_norm must be one of {INPUT_NORMS}, got {node.get('input_norm')!r}")
    return model


def latent_index(model, node: Mapping) -> int:
    """Index into UViT3DPose's return_latents list of the latent (align_level, align_path).

    The list holds the down levels 0..L-2, then the middle (level L-1), then the up levels
    L-2..0: down level l -> l, mid -> L-1, up level l -> (L-1) + (L-1-l)."""
    levels = model.num_levels
    level, path = int(node.get("align_level", 2)), str(node.get("align_path", "down"))
    if path not in ALIGN_PATHS:
        raise ValueError(f"model.align_path must be one of {ALIGN_PATHS}, got {path!r}")
    if path == "mid":
        if level != levels - 1:
            raise ValueError(f"model.align_path=mid is level {levels - 1} (the last of {levels}), got align_level={level}")
        return levels - 1
    if not 0 <= level < levels - 1:
        raise ValueError(f"model.align_level={level} with align_path={path}: the model's {path} levels are "
                         f"0..{levels - 2} (level {levels - 1} is the middle: align_path=mid)")
    return level if path == "down" else (levels - 1) + (levels - 1 - level)


def latent_shape(model, node: Mapping) -> Tuple[int, Tuple[int, int]]:
    """(channels, (h, w)) of the aligned latent of a UViT3DPose."""
    index = latent_index(model, node)
    levels = model.num_levels
    level = index if index < levels else 2 * (levels - 1) - index
    side = model.resolution // (model.patch_size * 2 ** level)
    return model.channels[level], (side, side)


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


def read_gfcore_checkpoint(path: str):
    """A gfcore trainer checkpoint's content, or None when the file is not one (a DFoT release)."""
    from gfcore.io.checkpoint_file import read_checkpoint

    try:
        return read_checkpoint(path)
    except Exception:  # noqa: BLE001 - not gfcore's format: the caller tries DFoT's loaders
        return None


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
