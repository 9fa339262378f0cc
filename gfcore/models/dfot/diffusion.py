"""DFoT's continuous-time diffusion: the noise schedules, q_sample and the training loss.

As in Diffusion Forcing Transformer (the base model of Geometry Forcing), checked against the
authors' ContinuousDiffusion (algorithms/dfot/diffusion/continuous_diffusion.py) and
DFoTVideo._get_training_noise_levels / _reweight_loss (algorithms/dfot/dfot_video.py) by
python_tests/test_dfot_diffusion.py.

Training (continuous time, shifted cosine schedule of Simple Diffusion):

    logSNR(t) = -2 ln tan(t_min + t (t_max - t_min)) + 2 ln(shift),  t in [0, 1]
    t_min = atan(exp(-logsnr_max / 2)), t_max = atan(exp(-logsnr_min / 2))

with logsnr_min/max = -15/15 and shift = 0.125 for RE10K, so logSNR runs from 10.84 (t = 0)
to -19.16 (t = 1); there is no clamp beyond these end points. alpha = sqrt(sigmoid(logSNR)),
sigma = sqrt(sigmoid(-logSNR)), x_t = alpha x_0 + sigma eps (eps ~ N(0, 1) clamped to
+-clip_noise). t is drawn uniform and independent per frame. The backbone gets
noise_levels = precond_scale * logSNR (0.125 * logSNR) and predicts v; the loss is on the
implied epsilon, eps_hat = alpha v + sigma x_t:

    loss = sigmoid(sigmoid_bias - logSNR) * (eps_hat - eps)^2,  sigmoid_bias = -1

elementwise, then multiplied by the frame mask (frames that are available and not context)
and averaged over every element (masked ones included: the authors' _reweight_loss).

Context frames in training (the authors' fixed_context option, off in the RE10K config): their
t is set to 0 (logSNR 10.84, so they still carry a trace of noise, sigma = 0.0044) or to 1 with
probability context_dropout per sample, and they are left out of the loss. Frames that are not
available (frame_mask False) get t = 1 and are left out of the loss.

Sampling uses a discrete 1000-step grid of the same shifted cosine schedule (the authors'
beta_schedule cosine_simple_diffusion with shifted 0.125): index k stands for t = k / 999;
see DFoTDiffusion.alphas_cumprod and gfcore.sample.ddim.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List, Mapping, Optional

import torch

from gfcore._extension import values_known


@dataclass
class DFoTLoss:
    """What DFoTDiffusion.training_loss returns.

    loss: the scalar training loss (the authors' reduction: weighted squared error times the
        loss mask, averaged over every element).
    frame_loss: [B, T] the weighted squared error averaged over each frame's C*H*W elements,
        zero for frames out of the loss; loss == frame_loss.mean().
    elementwise: [B, T, C, H, W] weighted squared error before the mask.
    loss_mask: bool [B, T], frames in the loss (available and not context).
    t, logsnr, weight: [B, T] the time, logSNR and loss weight of each frame.
    noise: the eps used; x_t: the noisy input; v_pred: the model output; x_pred: the implied x_0.
    latents: the backbone's level features when return_latents was set, else None.
    """

    loss: torch.Tensor
    frame_loss: torch.Tensor
    elementwise: torch.Tensor
    loss_mask: torch.Tensor
    t: torch.Tensor
    logsnr: torch.Tensor
    weight: torch.Tensor
    noise: torch.Tensor
    x_t: torch.Tensor
    v_pred: torch.Tensor
    x_pred: torch.Tensor
    latents: Optional[List[torch.Tensor]] = None


def _bt(a: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """[B, T] -> [B, T, 1, 1, ...] to broadcast against `like`."""
    return a.reshape(*a.shape, *([1] * (like.ndim - a.ndim)))


class DFoTDiffusion:
    """DFoT's continuous-time diffusion (v-prediction, sigmoid loss weighting) and its discrete
    sampling grid. Defaults are the RE10K / Geometry Forcing settings.

    shift: the cosine schedule's shift (base / target resolution); logSNR += 2 ln(shift).
    logsnr_min, logsnr_max: the unshifted logSNR at t = 1 and t = 0.
    precond_scale: noise_levels given to the backbone = precond_scale * logSNR.
    sigmoid_bias: loss weight sigmoid(sigmoid_bias - logSNR) on the epsilon error.
    clip_noise: drawn noise is clamped to [-clip_noise, clip_noise].
    timesteps: size of the discrete grid used for sampling.
    context_dropout: in training, probability per sample that the context frames get t = 1.
    """

    def __init__(self, shift: float = 0.125, logsnr_min: float = -15.0, logsnr_max: float = 15.0,
                 precond_scale: float = 0.125, sigmoid_bias: float = -1.0, clip_noise: float = 20.0,
                 timesteps: int = 1000, context_dropout: float = 0.0):
        if not (isinstance(shift, (int, float)) and shift > 0):
            raise ValueError(f"shift must be a positive number, got {shift!r}")
        if not logsnr_min < logsnr_max:
            raise ValueError(f"logsnr_min must be < logsnr_max, got {logsnr_min} and {logsnr_max}")
        if not clip_noise > 0:
            raise ValueError(f"clip_noise must be > 0, got {clip_noise}")
        if isinstance(timesteps, bool) or not isinstance(timesteps, int) or timesteps < 2:
            raise ValueError(f"timesteps must be an int >= 2, got {timesteps!r}")
        if not 0.0 <= context_dropout <= 1.0:
            raise ValueError(f"context_dropout must lie in [0, 1], got {context_dropout}")
        self.shift = float(shift)
        self.logsnr_min = float(logsnr_min)
        self.logsnr_max = float(logsnr_max)
        self.precond_scale = float(precond_scale)
        self.sigmoid_bias = float(sigmoid_bias)
        self.clip_noise = float(clip_noise)
        self.timesteps = timesteps
        self.context_dropout = float(context_dropout)

        # continuous training schedule, float32 constants as the authors' CosineNoiseSchedule
        f32 = torch.float32
        self._t_min = torch.atan(torch.exp(-0.5 * torch.tensor(self.logsnr_max, dtype=f32)))
        self._t_max = torch.atan(torch.exp(-0.5 * torch.tensor(self.logsnr_min, dtype=f32)))
        self._shift = 2 * torch.log(torch.tensor(self.shift, dtype=f32))

        # discrete sampling grid, computed in float64 and stored in float32 (the authors'
        # make_beta_schedule("cosine_simple_diffusion") and DiscreteDiffusion._build_buffer)
        f64 = torch.float64
        t_min = torch.atan(torch.exp(-0.5 * torch.tensor(self.logsnr_max, dtype=f64)))
        t_max = torch.atan(torch.exp(-0.5 * torch.tensor(self.logsnr_min, dtype=f64)))
        t = torch.linspace(0, 1, timesteps, dtype=f64)
        logsnr = -2 * torch.log(torch.tan(t_min + t * (t_max - t_min)))
        if self.shift != 1.0:
            logsnr = logsnr + 2 * torch.log(torch.tensor(self.shift, dtype=f64))
        acp = 1 / (1 + torch.exp(-logsnr))
        alphas = torch.cat([acp[0:1], acp[1:] / acp[:-1]])
        betas = torch.clip(1 - alphas, 1e-9, 1.0)
        acp = torch.cumprod(1.0 - betas, dim=0)
        self.alphas_cumprod = acp.to(f32)
        self.sqrt_alphas_cumprod = torch.sqrt(acp).to(f32)
        self.sqrt_one_minus_alphas_cumprod = torch.sqrt(1.0 - acp).to(f32)
        self.discrete_logsnr = torch.log(acp / (1 - acp)).to(f32)

    @classmethod
    def re10k(cls, **overrides) -> "DFoTDiffusion":
        """The RE10K / Geometry Forcing settings (the defaults)."""
        return cls(**overrides)

    @classmethod
    def from_config(cls, cfg: Mapping) -> "DFoTDiffusion":
        """From the authors' `algorithm.diffusion` config (training_schedule, loss_weighting,
        precond_scale, clip_noise, timesteps, schedule_fn_kwargs) and fixed_context.dropout when
        given as cfg['context_dropout']."""
        sched = cfg.get("training_schedule", {}) or {}
        kwargs = cfg.get("schedule_fn_kwargs", {}) or {}
        if "shifted" in kwargs and float(kwargs["shifted"]) != float(sched.get("shift", 1.0)):
            raise ValueError(f"schedule_fn_kwargs.shifted ({kwargs['shifted']}) differs from training_schedule.shift "
                             f"({sched.get('shift', 1.0)}): sampling and training schedules would differ")
        if kwargs.get("interpolated", False):
            raise ValueError("schedule_fn_kwargs.interpolated is not supported")
        return cls(shift=float(sched.get("shift", 1.0)), logsnr_min=float(sched.get("logsnr_min", -15.0)),
                   logsnr_max=float(sched.get("logsnr_max", 15.0)),
                   precond_scale=float(cfg.get("precond_scale", 0.125)),
                   sigmoid_bias=float((cfg.get("loss_weighting", {}) or {}).get("sigmoid_bias", -1.0)),
                   clip_noise=float(cfg.get("clip_noise", 20.0)), timesteps=int(cfg.get("timesteps", 1000)),
                   context_dropout=float(cfg.get("context_dropout", 0.0)))

    # ------------------------------------------------------------------ schedule
    def logsnr(self, t: torch.Tensor) -> torch.Tensor:
        """logSNR of the continuous training schedule at times t in [0, 1] (any shape)."""
        t = torch.as_tensor(t)
        if not t.is_floating_point():
            raise TypeError(f"t must be a floating tensor, got {t.dtype}")
        if t.numel() and values_known(t) and not bool(((t >= 0) & (t <= 1)).all()):
            raise ValueError(f"t must lie in [0, 1], got values in [{t.min().item()}, {t.max().item()}]")
        t_min, t_max, shift = (v.to(t.device) for v in (self._t_min, self._t_max, self._shift))
        return -2 * torch.log(torch.tan(t_min + t * (t_max - t_min))) + shift

    @property
    def max_logsnr(self) -> float:
        return float(self.logsnr(torch.tensor(0.0)))

    @property
    def min_logsnr(self) -> float:
        return float(self.logsnr(torch.tensor(1.0)))

    @staticmethod
    def alpha_sigma(logsnr: torch.Tensor):
        """alpha = sqrt(sigmoid(logSNR)), sigma = sqrt(sigmoid(-logSNR)); alpha^2 + sigma^2 = 1."""
        return torch.sigmoid(logsnr).sqrt(), torch.sigmoid(-logsnr).sqrt()

    def loss_weight(self, logsnr: torch.Tensor) -> torch.Tensor:
        """The weight of the epsilon error: sigmoid(sigmoid_bias - logSNR)."""
        return torch.sigmoid(self.sigmoid_bias - logsnr)

    def noise_levels(self, logsnr: torch.Tensor) -> torch.Tensor:
        """What the backbone gets as noise_levels: precond_scale * logSNR."""
        return self.precond_scale * logsnr

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t = alpha(t) x_0 + sigma(t) noise, with t [B, T] and x0, noise [B, T, ...]."""
        _check_video(x0, "x0")
        _check_bt(t, x0, "t")
        if noise.shape != x0.shape:
            raise ValueError(f"noise must have the shape of x0 {list(x0.shape)}, got {list(noise.shape)}")
        alpha, sigma = self.alpha_sigma(self.logsnr(t))
        return _bt(alpha, x0) * x0 + _bt(sigma, x0) * noise

    # ------------------------------------------------------------------ training
    def training_times(self, batch: int, frames: int, frame_mask: Optional[torch.Tensor] = None,
                       context_mask: Optional[torch.Tensor] = None, generator: Optional[torch.Generator] = None,
                       device=None) -> torch.Tensor:
        """Per-frame times [B, T] as the authors draw them: uniform and independent per frame
        (torch.rand from `generator`), t = 1 where frame_mask is False, and for context frames
        t = 0, or 1 for the samples drawn by context_dropout (torch.bernoulli [B, 1], drawn
        whenever a context_mask is given)."""
        if device is None and generator is not None:
            device = generator.device
        t = torch.rand((batch, frames), device=device, generator=generator)
        if frame_mask is not None:
            _check_mask(frame_mask, (batch, frames), "frame_mask")
            t = torch.where(frame_mask.to(t.device), t, torch.ones_like(t))
        if context_mask is not None:
            _check_mask(context_mask, (batch, frames), "context_mask")
            dropped = torch.bernoulli(torch.full((batch, 1), self.context_dropout, device=t.device),
                                      generator=generator)
            t = torch.where(context_mask.to(t.device), dropped, t)
        return t

    def training_loss(self, model: Callable, x0: torch.Tensor, external_cond: Optional[torch.Tensor] = None,
                      context_mask: Optional[torch.Tensor] = None, frame_mask: Optional[torch.Tensor] = None,
                      t: Optional[torch.Tensor] = None, noise: Optional[torch.Tensor] = None,
                      generator: Optional[torch.Generator] = None, return_latents: bool = False) -> DFoTLoss:
        """DFoT's training loss for a backbone `model(x_t, noise_levels, external_cond)` that
        predicts v (called with return_latents=True when asked, for an alignment loss).

        x0: [B, T, C, H, W] clean (normalised) frames. external_cond: passed through (the ray map).
        context_mask: bool [B, T], context frames (t = 0, out of the loss). frame_mask: bool [B, T],
        available frames (others t = 1, out of the loss). t: [B, T] times to use as they are
        (None: drawn by training_times from `generator`). noise: eps (None: drawn from `generator`
        after t, clamped to +-clip_noise).
        """
        _check_video(x0, "x0")
        batch, frames = x0.shape[:2]
        if context_mask is not None:
            _check_mask(context_mask, (batch, frames), "context_mask")
            context_mask = context_mask.to(x0.device)
        if frame_mask is not None:
            _check_mask(frame_mask, (batch, frames), "frame_mask")
            frame_mask = frame_mask.to(x0.device)
        if t is None:
            t = self.training_times(batch, frames, frame_mask, context_mask, generator, device=x0.device)
        else:
            _check_bt(t, x0, "t")
        t = t.to(device=x0.device, dtype=x0.dtype)
        if noise is None:
            noise = torch.randn(x0.shape, device=x0.device, dtype=x0.dtype, generator=generator)
            noise = torch.clamp(noise, -self.clip_noise, self.clip_noise)
        elif noise.shape != x0.shape:
            raise ValueError(f"noise must have the shape of x0 {list(x0.shape)}, got {list(noise.shape)}")

        logsnr = self.logsnr(t)
        alpha, sigma = self.alpha_sigma(logsnr)
        alpha, sigma = _bt(alpha, x0), _bt(sigma, x0)
        x_t = alpha * x0 + sigma * noise
        latents = None
        if return_latents:
            v_pred, latents = model(x_t, self.noise_levels(logsnr), external_cond, return_latents=True)
        else:
            v_pred = model(x_t, self.noise_levels(logsnr), external_cond)
        if v_pred.shape != x0.shape:
            raise ValueError(f"model output must have the shape of x0 {list(x0.shape)}, got {list(v_pred.shape)}")
        noise_pred = alpha * v_pred + sigma * x_t
        x_pred = alpha * x_t - sigma * v_pred
        weight = self.loss_weight(logsnr)
        elementwise = (noise_pred - noise) ** 2 * _bt(weight, x0)

        loss_mask = torch.ones((batch, frames), dtype=torch.bool, device=x0.device)
        if frame_mask is not None:
            loss_mask = loss_mask & frame_mask.bool()
        if context_mask is not None:
            loss_mask = loss_mask & ~context_mask.bool()
        masked = elementwise * _bt(loss_mask, x0)
        return DFoTLoss(loss=masked.mean(), frame_loss=masked.flatten(2).mean(2), elementwise=elementwise,
                        loss_mask=loss_mask, t=t, logsnr=logsnr, weight=weight, noise=noise, x_t=x_t,
                        v_pred=v_pred, x_pred=x_pred, latents=latents)


def _check_video(x: torch.Tensor, name: str) -> None:
    if not isinstance(x, torch.Tensor) or x.ndim != 5 or not x.is_floating_point():
        got = list(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{name} must be a floating tensor [B, T, C, H, W], got {got}")


def _check_bt(t: torch.Tensor, x: torch.Tensor, name: str) -> None:
    if not isinstance(t, torch.Tensor) or tuple(t.shape) != tuple(x.shape[:2]):
        got = list(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
        raise ValueError(f"{name} must be [B, T] = {list(x.shape[:2])}, got {got}")
    if not t.is_floating_point():
        raise TypeError(f"{name} must be a floating tensor, got {t.dtype}")
    if t.numel() and values_known(t) and not bool(((t >= 0) & (t <= 1)).all()):
        raise ValueError(f"{name} must lie in [0, 1], got values in [{t.min().item()}, {t.max().item()}]")


def _check_mask(mask: torch.Tensor, shape, name: str) -> None:
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool or tuple(mask.shape) != tuple(shape):
        got = f"{mask.dtype} {list(mask.shape)}" if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise ValueError(f"{name} must be a bool tensor [B, T] = {list(shape)}, got {got}")


__all__ = ["DFoTDiffusion", "DFoTLoss"]
