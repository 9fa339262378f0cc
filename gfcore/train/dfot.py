"""train.objective=dfot: DFoT's diffusion loss on the UViT3DPose backbone, plus Geometry Forcing.

Per step (DFoT's RE10K recipe, fixed_context off): every frame gets its own t ~ U(0, 1), eps ~
N(0, 1) clamped to +-clip_noise, x_t = alpha x0 + sigma eps, the backbone predicts v from
(x_t, 0.125 logSNR, ray map) and the loss is DFoT's sigmoid(-1 - logSNR)-weighted squared error
on the implied epsilon (DFoTDiffusion.training_loss, t and eps given). A sample's pose is dropped
(classifier-free guidance) with the backbone's external_cond_dropout; the drop is drawn with the
noise from the step's generator and passed as external_cond_mask, so it does not depend on the
global RNG (a DDP rank's slice draws as one process would).

Poses: the batch's pixel intrinsics and camera-to-world matrices (gfcore.data convention:
OpenCV axes, c2w relative to the window's first frame) become DFoT's 16-D rows
(gfcore.data.geometry.cameras_to_dfot_poses: fx/W, fy/H, cx/W, cy/H, then the world-to-camera
[R|t] row by row), then ray_encoding -> [B, T, 180, H, W] external_cond.

Alignment: the latent chosen by model.align_level / align_path (return_latents=True), [B, T, C,
h, w], is laid out as tokens [B, T, h*w, C] (row-major, the teachers' patch order) and aligned
with the teacher's [B, T, P, D] (or [B, T, P, L, D]: the loss's layer axis) targets through
GeometryAlignmentLoss.
"""
from __future__ import annotations

from typing import Dict, Optional

import torch

from gfcore.data.geometry import cameras_to_dfot_poses
from gfcore.losses import GeometryAlignmentLoss
from gfcore.models.build import dfot_frames
from gfcore.models.dfot import DFoTDiffusion, ray_encoding
from gfcore.train.objective import NoiseDraw


def draw_dfot_noise(shape, generator: torch.Generator, diffusion: DFoTDiffusion, cond_drop_prob: float) -> NoiseDraw:
    """Per-frame t (DFoTDiffusion.training_times), clamped eps and the pose drops of a whole global
    batch, from `generator` alone. No context frames (DFoT's RE10K training noises every frame)."""
    batch, frames = shape[:2]
    t = diffusion.training_times(batch, frames, generator=generator)
    eps = torch.randn(shape, generator=generator).clamp(-diffusion.clip_noise, diffusion.clip_noise)
    drop_cond = torch.rand(batch, generator=generator) < cond_drop_prob
    return NoiseDraw(t, eps, torch.zeros(batch, frames, dtype=torch.bool), drop_cond)


def dfot_external_cond(batch: Dict[str, torch.Tensor]) -> torch.Tensor:
    """The ray map [B, T, 180, H, W] of the batch's cameras."""
    for key in ("intrinsics", "c2w"):
        if key not in batch:
            raise KeyError(f"train.objective=dfot needs batch[{key!r}] (camera-conditioned data: data.camera=true)")
    height, width = batch["frames"].shape[-2:]
    pose = cameras_to_dfot_poses(batch["intrinsics"].float(), batch["c2w"].float(), width, height)
    return ray_encoding(pose, height, width)


class DFoTObjective(torch.nn.Module):
    """forward(model, batch, noise, features, alignment_weight) -> terms, as GFObjective:
    loss (diffusion + alignment_weight * alignment), diffusion, and when aligning alignment,
    angular, scale, cosine."""

    def __init__(self, diffusion: DFoTDiffusion, alignment: Optional[GeometryAlignmentLoss], latent_index: int,
                 input_norm: str = "dfot"):
        super().__init__()
        self.diffusion, self.alignment = diffusion, alignment
        self.latent_index, self.input_norm = int(latent_index), input_norm

    def forward(self, model, batch: Dict[str, torch.Tensor], noise: NoiseDraw,
                features: Optional[torch.Tensor] = None, alignment_weight: float = 1.0) -> Dict[str, torch.Tensor]:
        x0 = dfot_frames(batch["frames"], self.input_norm)
        cond = dfot_external_cond(batch).to(x0.dtype)
        drop = noise.drop_cond.to(x0.device)

        def backbone(x, noise_levels, external_cond, return_latents=False):
            return model(x, noise_levels, external_cond, external_cond_mask=drop, return_latents=return_latents)

        out = self.diffusion.training_loss(backbone, x0, cond, t=noise.t.to(x0.device), noise=noise.eps.to(x0.device),
                                           return_latents=self.alignment is not None)
        terms = {"diffusion": out.loss, "loss": out.loss}
        if self.alignment is not None:
            if features is None:
                raise ValueError("DFoTObjective has an alignment loss but no teacher features were given")
            latent = out.latents[self.latent_index]  # [B, T, C, h, w]
            hidden = latent.permute(0, 1, 3, 4, 2).flatten(2, 3)  # [B, T, h*w, C], row-major tokens
            aligned = self.alignment(hidden, features.to(hidden.dtype)
                                     if not torch.is_autocast_enabled(hidden.device.type) else features)
            terms.update(loss=out.loss + alignment_weight * aligned.loss, alignment=aligned.loss,
                         angular=aligned.angular, scale=aligned.scale, cosine=aligned.cosine)
        return terms
