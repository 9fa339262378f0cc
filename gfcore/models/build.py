"""Backbones from model config nodes: gfcore's VideoDiT or DFoT's UViT3DPose.

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

The trainer (gfcore.train) and the sampler (gfcore.sample) both build their models here.
"""
from __future__ import annotations

from typing import Mapping, Tuple

import torch
from torch import nn

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


def build_backbone(node: Mapping) -> nn.Module:
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


def dfot_frames(frames: torch.Tensor, input_norm: str = "dfot") -> torch.Tensor:
    """The batch's frames in [-1, 1] as the backbone takes them: DFoT's normalisation of the
    [0, 1] values ("dfot") or as they are ("none")."""
    if input_norm not in INPUT_NORMS:
        raise ValueError(f"input_norm must be one of {INPUT_NORMS}, got {input_norm!r}")
    if input_norm == "none":
        return frames
    from gfcore.data.dfot_re10k import normalize

    return normalize((frames + 1) / 2)


def read_gfcore_checkpoint(path: str):
    """A gfcore trainer checkpoint's content, or None when the file is not one (a DFoT release)."""
    from gfcore.io.checkpoint_file import read_checkpoint

    try:
        return read_checkpoint(path)
    except Exception:  # noqa: BLE001 - not gfcore's format: the caller tries DFoT's loaders
        return None
