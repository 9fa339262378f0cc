"""ODE sampling of a flow-matching VideoDiT: Euler or Heun steps, clean context frames, and a
sliding window for rollouts much longer than the training clip.

The model predicts v = eps - x_0 for x_t = (1 - t) x_0 + t eps, so dx/dt = v and sampling
integrates from t = 1 (noise) to t = 0 (data). Context frames stay clean (t = 0) throughout,
except in the branches of history guidance.

History guidance (DFoT, Song et al. 2025, "History-guided video diffusion"): the model is
trained with an independent noise level per frame, so it can be evaluated with the history
(context) frames at any noise level k: x_hist(k) = (1 - k) history + k eps, t = k. Guidance
is classifier-free guidance over the history:

    v = v(history at k_uncond) + scale * (v(history at k_cond) - v(history at k_uncond))

    mode        k_cond                k_uncond
    none        (plain sampling: one pass with clean history)
    vanilla     0 (clean)             1 (history fully noised: dropped)
    stabilized  stabilization_level   1
    fractional  0 (clean)             fractional_level (history partly noised)

The noise eps of noised history is drawn from the sampling generator at every model
evaluation (per ODE stage). Only the frames being generated take the guided velocity.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Optional, Union

import numpy as np
import torch

from gfcore.data.geometry import plucker_rays, relative_to_first

METHODS = ("euler", "heun")
HISTORY_MODES = ("none", "vanilla", "stabilized", "fractional")


@dataclass(frozen=True)
class HistoryGuidance:
    """Settings of history guidance (see the module docstring; sample.history_guidance in the config).

    mode: none | vanilla | stabilized | fractional. scale: the guidance scale (1: the
    conditional branch alone). stabilization_level: the history's noise level in the
    conditional branch of `stabilized`. fractional_level: the history's noise level in the
    unconditional branch of `fractional`.
    """

    mode: str = "none"
    scale: float = 2.0
    stabilization_level: float = 0.02
    fractional_level: float = 0.5

    def __post_init__(self):
        if self.mode not in HISTORY_MODES:
            raise ValueError(f"history_guidance.mode must be one of {HISTORY_MODES}, got {self.mode!r}")
        for name in ("stabilization_level", "fractional_level"):
            if not 0.0 <= float(getattr(self, name)) <= 1.0:
                raise ValueError(f"history_guidance.{name} must lie in [0, 1], got {getattr(self, name)}")
        if self.mode == "fractional" and not 0.0 < self.fractional_level < 1.0:
            raise ValueError(f"history_guidance.fractional_level must lie in (0, 1) for mode fractional, "
                             f"got {self.fractional_level}")

    @property
    def levels(self):
        """(k_cond, k_uncond): the history's noise level in the conditional / unconditional branch."""
        k_cond = float(self.stabilization_level) if self.mode == "stabilized" else 0.0
        k_uncond = float(self.fractional_level) if self.mode == "fractional" else 1.0
        return k_cond, k_uncond

    @property
    def active(self) -> bool:
        """False when sampling is plain: mode none, or vanilla / fractional at scale 1 (the
        conditional branch alone has clean history). Stabilized at scale 1 still noises the history."""
        if self.mode == "none":
            return False
        return self.scale != 1.0 or self.levels[0] > 0.0

    @classmethod
    def parse(cls, value: Union[None, str, Mapping, "HistoryGuidance"]) -> "HistoryGuidance":
        """None / a mode name / a mapping (e.g. the sample.history_guidance config node) -> HistoryGuidance."""
        if value is None:
            return cls()
        if isinstance(value, HistoryGuidance):
            return value
        if isinstance(value, str):
            return cls(mode=value)
        known = {"mode", "scale", "stabilization_level", "fractional_level"}
        unknown = set(value) - known
        if unknown:
            raise ValueError(f"unknown history_guidance keys {sorted(unknown)}; known: {sorted(known)}")
        return cls(**{k: (float(v) if k != "mode" else str(v)) for k, v in dict(value).items()})


def _plain_velocity(model, x: torch.Tensor, t: torch.Tensor, rays, actions, guidance_scale: float):
    v, _ = model(x, t, rays=rays, actions=actions)
    if guidance_scale != 1.0:  # classifier-free guidance on the camera / action condition
        drop = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
        v_uncond, _ = model(x, t, rays=rays, actions=actions, drop_cond=drop)
        v = v_uncond + guidance_scale * (v - v_uncond)
    return v


def _noised_history(x: torch.Tensor, t: torch.Tensor, num_context: int, level: float, generator):
    """x and t with the first num_context frames noised to `level` (fresh noise from `generator`)."""
    if level == 0.0:
        return x, t
    history = x[:, :num_context]
    eps = torch.randn(history.shape, generator=generator, dtype=torch.float32).to(x.device, x.dtype)
    noised = history * (1.0 - level) + eps * level if level < 1.0 else eps
    t = t.clone()
    t[:, :num_context] = level
    return torch.cat([noised, x[:, num_context:]], 1), t


def _velocity(model, x: torch.Tensor, t_new: float, num_context: int, rays, actions, guidance_scale: float,
              history: Optional[HistoryGuidance] = None, generator: Optional[torch.Generator] = None):
    batch, frames = x.shape[:2]
    t = torch.full((batch, frames), float(t_new), device=x.device, dtype=torch.float32)
    t[:, :num_context] = 0.0
    if history is None or not history.active or num_context == 0:
        return _plain_velocity(model, x, t, rays, actions, guidance_scale)[:, num_context:]
    k_cond, k_uncond = history.levels
    x_cond, t_cond = _noised_history(x, t, num_context, k_cond, generator)
    if history.scale == 1.0:  # stabilized at scale 1: the conditional branch alone
        return _plain_velocity(model, x_cond, t_cond, rays, actions, guidance_scale)[:, num_context:]
    x_uncond, t_uncond = _noised_history(x, t, num_context, k_uncond, generator)
    # both branches in one batched call
    both = lambda a: None if a is None else torch.cat([a, a], 0)  # noqa: E731
    v = _plain_velocity(model, torch.cat([x_cond, x_uncond], 0), torch.cat([t_cond, t_uncond], 0), both(rays),
                        both(actions), guidance_scale)
    v_cond, v_uncond = v[:batch], v[batch:]
    return (v_uncond + history.scale * (v_cond - v_uncond))[:, num_context:]


@torch.no_grad()
def denoise_window(model, context: torch.Tensor, num_new: int, steps: int = 10, method: str = "heun",
                   rays: Optional[torch.Tensor] = None, actions: Optional[torch.Tensor] = None,
                   generator: Optional[torch.Generator] = None, guidance_scale: float = 1.0,
                   history_guidance: Union[None, str, Mapping, HistoryGuidance] = None,
                   progress: Optional[Callable[[int, int], None]] = None) -> torch.Tensor:
    """Generate num_new frames after the clean context [B, c, C, H, W]; returns [B, num_new, C, H, W].

    rays / actions cover the c + num_new frames of the window. history_guidance: a
    HistoryGuidance, a mode name or a mapping of its fields (None: plain sampling).
    progress(done, steps) is called after each ODE step (it changes nothing sampled).
    """
    history = HistoryGuidance.parse(history_guidance)
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if steps < 1 or num_new < 1:
        raise ValueError(f"steps ({steps}) and num_new ({num_new}) must be >= 1")
    batch, num_context = context.shape[:2]
    shape = (batch, num_new, *context.shape[2:])
    x_new = torch.randn(shape, generator=generator, dtype=torch.float32).to(context.device, context.dtype)
    times = torch.linspace(1.0, 0.0, steps + 1).tolist()
    for step, (t_now, t_next) in enumerate(zip(times[:-1], times[1:]), 1):
        dt = t_next - t_now
        v = _velocity(model, torch.cat([context, x_new], 1), t_now, num_context, rays, actions, guidance_scale,
                      history, generator)
        x_pred = x_new + dt * v
        if method == "heun" and t_next > 0:  # trapezoidal correction; the last step to t = 0 stays Euler
            v_next = _velocity(model, torch.cat([context, x_pred], 1), t_next, num_context, rays, actions,
                               guidance_scale, history, generator)
            x_pred = x_new + dt * 0.5 * (v + v_next)
        x_new = x_pred
        if progress is not None:
            progress(step, steps)
    return x_new


@torch.no_grad()
def rollout(model, first_frames: torch.Tensor, num_frames: int, window: int, context_frames: int = 2,
            steps: int = 10, method: str = "heun", intrinsics: Optional[torch.Tensor] = None,
            c2w: Optional[torch.Tensor] = None, actions: Optional[torch.Tensor] = None,
            generator: Optional[torch.Generator] = None, guidance_scale: float = 1.0,
            history_guidance: Union[None, str, Mapping, HistoryGuidance] = None,
            progress: Optional[Callable[[str, int, int], None]] = None) -> torch.Tensor:
    """A video of num_frames frames [B, N, C, H, W] from the given first frames [B, k, C, H, W].

    Sliding window: each window holds up to `window` frames; its first frames are clean context
    (the given frames for the first window, then the last `context_frames` generated ones).
    Camera models need intrinsics [B, N, 3, 3] and c2w [B, N, 4, 4] for the whole path (rays
    are recomputed per window, poses relative to the window's first frame, as in training);
    action models need actions [B, N, A]. history_guidance: see denoise_window (every window's
    context frames are its history). progress(stage, done, steps), stage "window w/W", is called
    after each ODE step of each window (gfcore.sample.progress; it changes nothing sampled).
    """
    history = HistoryGuidance.parse(history_guidance)
    batch, given = first_frames.shape[:2]
    if not 1 <= given < window:
        raise ValueError(f"first_frames holds {given} frames; need 1 <= k < window={window}")
    if not 1 <= context_frames < window:
        raise ValueError(f"context_frames must lie in [1, window-1={window - 1}], got {context_frames}")
    camera = getattr(model, "config", None) is not None and model.config.camera_cond
    if camera and (intrinsics is None or c2w is None):
        raise ValueError("this model is camera-conditioned: pass intrinsics [B, N, 3, 3] and c2w [B, N, 4, 4]")
    for name, value, tail in (("intrinsics", intrinsics, (3, 3)), ("c2w", c2w, (4, 4))):
        if camera and tuple(value.shape) != (batch, num_frames, *tail):
            raise ValueError(f"{name} must be [B, N, {tail[0]}, {tail[1]}] = {(batch, num_frames, *tail)}, "
                             f"got {tuple(value.shape)}")
    if actions is not None and tuple(actions.shape[:2]) != (batch, num_frames):
        raise ValueError(f"actions must be [B, N, A] with B, N = {batch}, {num_frames}, got {tuple(actions.shape)}")
    height, width = first_frames.shape[-2:]
    video = [first_frames[:, i] for i in range(given)]
    context = given
    # the windows the loop below runs: the first carries the given frames, the others context_frames
    windows, length = 0, given
    while length < num_frames:
        length += window - (context_frames if windows else given)
        windows += 1
    done_windows = 0
    while len(video) < num_frames:
        start = len(video) - context
        num_new = min(window - context, num_frames - len(video))
        index = slice(start, len(video) + num_new)
        rays = None
        if camera:
            relative = relative_to_first(c2w[:, index].double()).float()
            rays = plucker_rays(intrinsics[:, index].float(), relative, height, width).to(first_frames.dtype)
        window_actions = actions[:, index] if actions is not None else None
        ctx = torch.stack(video[start:], 1)
        window_progress = None
        if progress is not None:
            stage = f"window {done_windows + 1}/{windows}"
            window_progress = lambda done, total, stage=stage: progress(stage, done, total)  # noqa: E731
        new = denoise_window(model, ctx, num_new, steps, method, rays, window_actions, generator, guidance_scale,
                             history, window_progress)
        video += [new[:, i].clamp(-1, 1) for i in range(num_new)]
        context = min(context_frames, len(video))
        done_windows += 1
    return torch.stack(video, 1)


def revisit_path(num_frames: int, degrees: float = 360.0) -> torch.Tensor:
    """c2w [N, 4, 4]: the camera turns `degrees` about its vertical (y) axis in place at constant
    speed; with 360 the last pose equals the first (the revisit path of the RVE metric)."""
    angles = torch.linspace(0.0, torch.pi * degrees / 180.0, num_frames, dtype=torch.float64)
    c2w = torch.eye(4, dtype=torch.float64).repeat(num_frames, 1, 1)
    c2w[:, 0, 0], c2w[:, 0, 2] = angles.cos(), angles.sin()
    c2w[:, 2, 0], c2w[:, 2, 2] = -angles.sin(), angles.cos()
    return c2w


def to_uint8(video: torch.Tensor) -> np.ndarray:
    """[T, C, H, W] in [-1, 1] -> uint8 [T, H, W, 3] for write_video / write_gif."""
    return ((video.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
