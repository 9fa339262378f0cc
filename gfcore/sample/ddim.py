"""DDIM sampling of DFoT (continuous-time v-prediction model) with clean context frames.

As the authors' DFoTVideo._sample_sequence (algorithms/dfot/dfot_video.py, full_sequence
scheduling, conditional history guidance) with DiscreteDiffusion.ddim_sample_step and
ContinuousDiffusion.model_predictions; checked by python_tests/test_dfot_diffusion.py.

Grid: the continuous model is sampled on the discrete 1000-step shifted cosine grid of
DFoTDiffusion (index k <-> t = k / 999). The `steps` DDIM noise levels are
linspace(-1, timesteps - 1, steps + 1) in float32 truncated to integers (999, 979, ..., 19, -1
for 50 steps), run from high to low; -1 means clean.

Step from level k to k' for the frames being generated, with a = alphas_cumprod[k] and
a' = alphas_cumprod[k'] (1 for k' = -1):

    v      = model(x, precond_scale * logSNR[k], external_cond, external_cond_mask)
    x0_hat = sqrt(a) x - sqrt(1 - a) v,   eps_hat = sqrt(a) v + sqrt(1 - a) x
    s      = eta sqrt((1 - a / a') (1 - a') / (1 - a))   (0 for k' = -1)
    x'     = sqrt(a') x0_hat + sqrt(1 - a' - s^2) eps_hat + s z

Context frames are given clean, enter the model at level -1 (clamped to index 0, i.e.
noise_levels = precond_scale * logSNR[0] = 0.125 * 10.84) and are put back bit-identical
after every step.
"""
from __future__ import annotations

from typing import Callable, List, Mapping, Optional, Tuple, Union

import torch

from gfcore.models.dfot.diffusion import DFoTDiffusion
from gfcore.sample.dfot_guidance import GENERATE, HISTORY_STATES, DFoTHistoryGuidance


def ddim_noise_levels(steps: int = 50, timesteps: int = 1000) -> torch.Tensor:
    """The authors' DDIM noise levels, from the noisiest to -1 (clean): long [steps + 1]."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an int >= 1, got {steps!r}")
    if steps >= timesteps:
        raise ValueError(f"steps must be < timesteps ({timesteps}) for DDIM (the authors switch to DDPM at "
                         f"steps == timesteps), got {steps}")
    real_steps = torch.linspace(-1, timesteps - 1, steps + 1, dtype=torch.float32).long()
    return real_steps.flip(0)


def _bt(a: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return a.reshape(*a.shape, *([1] * (like.ndim - a.ndim)))


def ddim_step(model: Callable, diffusion: DFoTDiffusion, x: torch.Tensor, curr: torch.Tensor, nxt: torch.Tensor,
              external_cond: Optional[torch.Tensor] = None, external_cond_mask: Optional[torch.Tensor] = None,
              eta: float = 0.0, noise: Optional[torch.Tensor] = None,
              generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """One DDIM step of every frame from level curr [B, T] to nxt [B, T] (long, -1 = clean).
    Frames with curr == nxt are returned unchanged. noise: z for eta > 0 (None: drawn from
    `generator`, clamped to +-clip_noise)."""
    if tuple(curr.shape) != tuple(x.shape[:2]) or tuple(nxt.shape) != tuple(x.shape[:2]):
        raise ValueError(f"curr and nxt must be [B, T] = {list(x.shape[:2])}, got {list(curr.shape)} and "
                         f"{list(nxt.shape)}")
    if eta < 0:
        raise ValueError(f"eta must be >= 0, got {eta}")
    dev = x.device
    acp = diffusion.alphas_cumprod.to(dev)
    k = torch.clamp(curr, min=0)
    alpha = acp[k]
    alpha_next = torch.where(nxt < 0, torch.ones_like(alpha), acp[torch.clamp(nxt, min=0)])
    sigma = torch.where(nxt < 0, torch.zeros_like(alpha),
                        eta * ((1 - alpha / alpha_next) * (1 - alpha_next) / (1 - alpha)).sqrt())
    c = (1 - alpha_next - sigma ** 2).sqrt()

    v = model(x, diffusion.precond_scale * diffusion.discrete_logsnr.to(dev)[k], external_cond, external_cond_mask)
    if v.shape != x.shape:
        raise ValueError(f"model output must have the shape of x {list(x.shape)}, got {list(v.shape)}")
    sa = _bt(diffusion.sqrt_alphas_cumprod.to(dev)[k], x)
    s1a = _bt(diffusion.sqrt_one_minus_alphas_cumprod.to(dev)[k], x)
    x_start = sa * x - s1a * v
    pred_noise = sa * v + s1a * x

    x_next = x_start * _bt(alpha_next, x).sqrt() + pred_noise * _bt(c, x)
    if eta > 0:
        if noise is None:
            noise = torch.randn(x.shape, device=dev, dtype=x.dtype, generator=generator)
            noise = torch.clamp(noise, -diffusion.clip_noise, diffusion.clip_noise)
        x_next = x_next + _bt(sigma, x) * noise
    return torch.where(_bt(curr == nxt, x), x, x_next)


@torch.no_grad()
def ddim_sample(model: Callable, diffusion: DFoTDiffusion, context: torch.Tensor, context_mask: torch.Tensor,
                external_cond: Optional[torch.Tensor] = None, steps: int = 50, eta: float = 0.0,
                noise: Optional[torch.Tensor] = None, generator: Optional[torch.Generator] = None,
                external_cond_mask: Optional[torch.Tensor] = None, return_all: bool = False
                ) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
    """Sample the frames of a clip not in context_mask by `steps` DDIM steps.

    model: backbone `model(x, noise_levels, external_cond, external_cond_mask)` -> v.
    context: [B, T, C, H, W]; frames where context_mask (bool [B, T]) is True are the clean
        context, kept bit-identical; the others are ignored.
    noise: the initial noise [B, T, C, H, W] (None: torch.randn from `generator`, clamped to
        +-clip_noise). eta: 0 for DDIM proper; eta > 0 draws z from `generator` each step.
    return_all: also return the clip before every step and at the end, [steps + 1, B, T, ...].
    """
    if not isinstance(context, torch.Tensor) or context.ndim != 5 or not context.is_floating_point():
        got = list(context.shape) if isinstance(context, torch.Tensor) else type(context).__name__
        raise ValueError(f"context must be a floating tensor [B, T, C, H, W], got {got}")
    bt = tuple(context.shape[:2])
    if not isinstance(context_mask, torch.Tensor) or context_mask.dtype != torch.bool or \
            tuple(context_mask.shape) != bt:
        got = (f"{context_mask.dtype} {list(context_mask.shape)}" if isinstance(context_mask, torch.Tensor)
               else type(context_mask).__name__)
        raise ValueError(f"context_mask must be a bool tensor [B, T] = {list(bt)}, got {got}")
    levels = ddim_noise_levels(steps, diffusion.timesteps).to(context.device)
    if noise is None:
        noise = torch.randn(context.shape, device=context.device, dtype=context.dtype, generator=generator)
        noise = torch.clamp(noise, -diffusion.clip_noise, diffusion.clip_noise)
    elif noise.shape != context.shape:
        raise ValueError(f"noise must have the shape of context {list(context.shape)}, got {list(noise.shape)}")
    ctx = context_mask.to(context.device)
    ctx_x = _bt(ctx, context)
    x = torch.where(ctx_x, context, noise)
    record: List[torch.Tensor] = []
    for m in range(steps):
        curr = torch.where(ctx, -1, levels[m].expand(bt))
        nxt = torch.where(ctx, -1, levels[m + 1].expand(bt))
        if return_all:
            record.append(x.clone())
        x_next = ddim_step(model, diffusion, x, curr, nxt, external_cond, external_cond_mask, eta=eta,
                           generator=generator)
        # context frames put back unmodified, as the authors do (ddim_step already keeps them: -1 -> -1)
        x = torch.where(ctx_x, x, x_next)
    if return_all:
        record.append(x.clone())
        return x, torch.stack(record)
    return x


def _draw_noise(shape, like: torch.Tensor, diffusion: DFoTDiffusion, generator: Optional[torch.Generator]):
    """N(0, 1) clamped to +-clip_noise, as the authors draw initial and replacement noise."""
    noise = torch.randn(shape, device=like.device, dtype=like.dtype, generator=generator)
    return torch.clamp(noise, -diffusion.clip_noise, diffusion.clip_noise)


@torch.no_grad()
def guided_ddim_sample(model: Callable, diffusion: DFoTDiffusion, context: torch.Tensor, states: torch.Tensor,
                       external_cond: Optional[torch.Tensor] = None,
                       guidance: Union[None, str, Mapping, DFoTHistoryGuidance] = None, steps: int = 50,
                       eta: float = 0.0, noise: Optional[torch.Tensor] = None,
                       generator: Optional[torch.Generator] = None, history_noise: Optional[torch.Tensor] = None,
                       on_step: Optional[Callable[[], None]] = None) -> torch.Tensor:
    """One window of DDIM sampling with DFoT history guidance (the authors' _sample_sequence with
    full_sequence scheduling, HistoryGuidanceManager.prepare / compose).

    context: [B, M, C, H, W]; states: long [B, M], per frame 0 = to generate, 1 = ground-truth
        history, 2 = generated history, -1 = padding (kept as noise at the last level, never
        denoised). History frames are returned bit-identical; padding frames keep their noise.
    guidance: a DFoTHistoryGuidance (or its name / fields; None: conditional sampling). Each
        step evaluates the model once per guidance branch, in one batch: the history frames
        noised to the branch's level (q_sample with fresh noise; clean at level -1), the pose
        dropped where the branch says, and the branches' DDIM outputs summed with their weights.
    noise: the initial noise [B, M, C, H, W] (None: drawn from `generator`, clamped).
    history_noise: the noise of noised history, broadcastable to [B, M, C, H, W], the same for
        every branch and step (None: fresh draws from `generator`); for reproducing a fixed draw.
    on_step: called after each of the `steps` steps (progress reporting).
    """
    if not isinstance(context, torch.Tensor) or context.ndim != 5 or not context.is_floating_point():
        got = list(context.shape) if isinstance(context, torch.Tensor) else type(context).__name__
        raise ValueError(f"context must be a floating tensor [B, M, C, H, W], got {got}")
    bm = tuple(context.shape[:2])
    if not isinstance(states, torch.Tensor) or states.dtype not in (torch.int64, torch.int32) or \
            tuple(states.shape) != bm:
        got = f"{states.dtype} {list(states.shape)}" if isinstance(states, torch.Tensor) else type(states).__name__
        raise ValueError(f"states must be an integer tensor [B, M] = {list(bm)}, got {got}")
    states = states.to(context.device, torch.int64)
    if bool(((states < -1) | (states > 2)).any()):
        raise ValueError("states must hold -1 (padding), 0 (generate), 1 (ground-truth history) or 2 (generated "
                         f"history), got values {sorted(set(states.flatten().tolist()))}")
    guidance = DFoTHistoryGuidance.parse(guidance)
    timesteps = diffusion.timesteps
    levels = ddim_noise_levels(steps, timesteps).to(context.device)
    if noise is None:
        noise = _draw_noise(context.shape, context, diffusion, generator)
    elif noise.shape != context.shape:
        raise ValueError(f"noise must have the shape of context {list(context.shape)}, got {list(noise.shape)}")
    is_history = states >= 1
    generate = states == GENERATE
    x = torch.where(_bt(is_history, context), context, noise)
    present = [s for s in HISTORY_STATES if bool((states == s).any())]
    branches = guidance.branches(present, timesteps)
    acp_sqrt = diffusion.sqrt_alphas_cumprod.to(context.device)
    acp_sqrt_1m = diffusion.sqrt_one_minus_alphas_cumprod.to(context.device)
    batch = bm[0]
    for m in range(steps):
        # frames to generate move from level m to m + 1; padding sits at the last level
        base_curr = torch.where(generate, levels[m], timesteps - 1)
        base_next = torch.where(generate, levels[m + 1], timesteps - 1)
        xs, currs, nexts, drops = [], [], [], []
        for branch in branches:
            hist_level = torch.full_like(states, -1)
            for state, level in branch.levels.items():
                hist_level = torch.where(states == state, level, hist_level)
            currs.append(torch.where(is_history, hist_level, base_curr))
            nexts.append(torch.where(is_history, hist_level, base_next))
            noised = is_history & (hist_level >= 0)
            if bool(noised.any()):
                eps = history_noise if history_noise is not None else _draw_noise(x.shape, x, diffusion, generator)
                k = hist_level.clamp(min=0)
                x_noised = _bt(acp_sqrt[k], x) * x + _bt(acp_sqrt_1m[k], x) * eps.to(x)
                xs.append(torch.where(_bt(noised, x), x_noised, x))
            else:
                xs.append(x)
            drops.append(torch.full((batch,), branch.drop_cond, dtype=torch.bool, device=x.device))
        n = len(branches)
        cond = external_cond.repeat(n, *([1] * (external_cond.ndim - 1))) if external_cond is not None else None
        out = ddim_step(model, diffusion, torch.cat(xs), torch.cat(currs), torch.cat(nexts), cond,
                        torch.cat(drops), eta=eta, generator=generator)
        composed = None
        for i, branch in enumerate(branches):
            term = out[i * batch:(i + 1) * batch] * branch.weight
            composed = term if composed is None else composed + term
        x = torch.where(_bt(generate, x), composed, x)
        if on_step is not None:
            on_step()
    return x


__all__ = ["ddim_noise_levels", "ddim_sample", "ddim_step", "guided_ddim_sample"]
