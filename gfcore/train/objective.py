"""Flow matching with per-frame noise levels (diffusion forcing) plus Geometry Forcing alignment.

x_t = (1 - t) x_0 + t eps, target v = eps - x_0, loss = mean ||v_hat - v||^2 over the noisy
frames. Context frames (t = 0) are inputs only and carry no diffusion loss. The alignment
term GeometryAlignmentLoss(hidden, teacher features) is added when a teacher is given.

Options (the defaults are the plain recipe above): loss_space="x0" takes the squared error of
the clean-frame estimate x0_hat = x_t - t v_hat instead (the v loss is that error / t^2, so it
weights low noise levels heavily); draw_noise(mode="sampled_task") trains the task the sampler
runs: every clip has max_context clean frames and one noise level shared by its other frames;
t_shift > 1 moves noise levels toward 1 (t' = s t / (1 + (s - 1) t), as in SD3).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional

import torch

from gfcore.losses import GeometryAlignmentLoss


@dataclass
class NoiseDraw:
    """Everything random about one training step, drawn up front for the whole global batch."""
    t: torch.Tensor          # [B, T] noise levels, 0 on context frames
    eps: torch.Tensor        # [B, T, C, H, W]
    context: torch.Tensor    # [B, T] bool, True on clean context frames
    drop_cond: torch.Tensor  # [B] bool, conditioning dropped (guidance)

    def slice(self, start: int, stop: int) -> "NoiseDraw":
        return NoiseDraw(self.t[start:stop], self.eps[start:stop], self.context[start:stop], self.drop_cond[start:stop])


NOISE_MODES = ("independent", "sampled_task")


def shift_t(t: torch.Tensor, shift: float) -> torch.Tensor:
    return t if shift == 1.0 else shift * t / (1 + (shift - 1) * t)


def draw_noise(shape, generator: torch.Generator, context_prob: float = 0.5, max_context: int = 2,
               cond_drop_prob: float = 0.1, mode: str = "independent", t_shift: float = 1.0) -> NoiseDraw:
    """Independent noise levels t ~ U(0, 1) per frame; with probability context_prob a clip's
    first k ~ U{1..max_context} frames are clean context; conditioning dropped with cond_drop_prob.
    mode="sampled_task": k = max_context clean frames on every clip and one t per clip on the rest."""
    if mode not in NOISE_MODES:
        raise ValueError(f"noise mode must be one of {NOISE_MODES}, got {mode!r}")
    batch, frames = shape[:2]
    if mode == "sampled_task":
        t = shift_t(torch.rand(batch, 1, generator=generator), t_shift).expand(batch, frames).contiguous()
        eps = torch.randn(shape, generator=generator)
        k = max(0, min(max_context, frames - 1))
        context = (torch.arange(frames)[None] < k).expand(batch, frames).contiguous()
        drop_cond = torch.rand(batch, generator=generator) < cond_drop_prob
        return NoiseDraw(t.masked_fill(context, 0.0), eps, context, drop_cond)
    t = shift_t(torch.rand(batch, frames, generator=generator), t_shift)
    eps = torch.randn(shape, generator=generator)
    use_context = torch.rand(batch, generator=generator) < context_prob
    k = torch.randint(1, max(1, min(max_context, frames - 1)) + 1, (batch,), generator=generator)
    context = (torch.arange(frames)[None] < k[:, None]) & use_context[:, None]
    if max_context < 1 or frames < 2:
        context = torch.zeros_like(context)
    drop_cond = torch.rand(batch, generator=generator) < cond_drop_prob
    return NoiseDraw(t.masked_fill(context, 0.0), eps, context, drop_cond)


def noisy_input(x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    tt = t[:, :, None, None, None].to(x0.dtype)
    return (1 - tt) * x0 + tt * eps


def flow_matching_loss(v_hat: torch.Tensor, x0: torch.Tensor, eps: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
    """Squared error of v_hat against eps - x0: mean over each clip's non-context frames, then over clips.

    Averaging per clip first keeps the loss of a batch equal to the mean of its shards' losses,
    so DDP's gradient average matches one process on the whole batch.
    """
    per_frame = (v_hat.float() - (eps - x0).float()).pow(2).mean(dim=(2, 3, 4))  # [B, T]
    weight = (~context).float()
    return ((per_frame * weight).sum(1) / weight.sum(1).clamp_min(1.0)).mean()


def x0_loss(x0_hat: torch.Tensor, x0: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
    """Squared error of the clean-frame estimate, averaged like flow_matching_loss."""
    per_frame = (x0_hat.float() - x0.float()).pow(2).mean(dim=(2, 3, 4))
    weight = (~context).float()
    return ((per_frame * weight).sum(1) / weight.sum(1).clamp_min(1.0)).mean()


LOSS_SPACES = ("v", "x0")


class GFObjective(torch.nn.Module):
    """Diffusion loss + optional alignment: forward(model, batch, noise, features) -> terms.

    alignment: a GeometryAlignmentLoss (None for the baseline). features: teacher targets
    [B, T, P, target_dim] or [B, T, P, L, target_dim] matching the model's hidden state.
    Returns a dict with loss (to backpropagate: diffusion + alignment_weight * alignment),
    diffusion, and when aligning angular, scale, cosine, alignment.
    """

    def __init__(self, alignment: Optional[GeometryAlignmentLoss] = None, loss_space: str = "v"):
        super().__init__()
        if loss_space not in LOSS_SPACES:
            raise ValueError(f"loss_space must be one of {LOSS_SPACES}, got {loss_space!r}")
        self.alignment = alignment
        self.loss_space = loss_space

    def forward(self, model, batch: Dict[str, torch.Tensor], noise: NoiseDraw,
                features: Optional[torch.Tensor] = None, alignment_weight: float = 1.0) -> Dict[str, torch.Tensor]:
        x0 = batch["frames"]
        x_t = noisy_input(x0, noise.t, noise.eps)
        v_hat, hidden = model(x_t, noise.t, rays=batch.get("rays"), actions=batch.get("actions"),
                              drop_cond=noise.drop_cond)
        if self.loss_space == "x0":
            from gfcore.models.dit import x0_from_v

            prediction = getattr(getattr(model, "config", None), "prediction", "v")
            diffusion = x0_loss(x0_from_v(x_t, noise.t, v_hat, prediction), x0, noise.context)
        else:
            diffusion = flow_matching_loss(v_hat, x0, noise.eps, noise.context)
        terms = {"diffusion": diffusion, "loss": diffusion}
        if self.alignment is not None:
            if features is None:
                raise ValueError("GFObjective has an alignment loss but no teacher features were given")
            out = self.alignment(hidden, features.to(hidden.dtype) if not torch.is_autocast_enabled(hidden.device.type)
                                 else features)
            # alignment_weight 0 (before loss.align_start): computed and logged, no gradient from it
            terms.update(loss=diffusion + alignment_weight * out.loss, alignment=out.loss, angular=out.angular, scale=out.scale,
                         cosine=out.cosine)
        return terms
