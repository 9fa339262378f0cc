"""DFoT's long rollouts: keyframes first (sliding window when needed), then the gaps filled
by interpolation. The 256-frame protocol of the Geometry Forcing paper is PROTOCOLS["dfot256"].

As the authors' DFoTVideo._predict_videos, _predict_sequence and _interpolate_videos
(algorithms/dfot/dfot_video.py; settings of scripts/eval_geometry_forcing.sh); checked against
their code by python_tests/test_dfot_protocol.py. Every window holds exactly max_tokens frames
(the backbone's clip length) and is sampled by gfcore.sample.ddim.guided_ddim_sample.

1. Keyframes: round(density * N) indices linspace(0, N - 1) rounded, plus the context frames.
   They are predicted as one sequence from the context: windows of up to max_tokens frames,
   each taking the last c = min(sliding_context_len, frames so far) frames as history (1 =
   ground truth, 2 = generated) and generating h = min(left, max_tokens - c) more. A last
   window shorter than max_tokens is padded (padding frames stay noise; their poses repeat the
   last one, where the authors' code would refuse).
2. Interpolation (when keyframes < N): a plan of stages; each stage walks the gaps between
   known frames: a gap of max_tokens - 1 or more gets max_tokens frames linspace(left, right)
   rounded (both ends known, the rest generated); smaller gaps are merged left to right into
   chunks of at most max_tokens frames (arange(left, right + 1)). A stage's chunks are padded
   to max_tokens by repeating their last (known) frame, stacked along the batch (chunk-major)
   and sampled max_batch at a time; every known frame is ground-truth history (state 1).

Conditions (e.g. DFoT's 16-D poses [B, N, 16]) are cut per window and handed to
process_conditions (e.g. ray_encoding, which makes them relative to the window's first frame).
"""
from __future__ import annotations

import math
from typing import Callable, Dict, List, Mapping, Optional, Union

import torch

from gfcore.models.dfot.diffusion import DFoTDiffusion
from gfcore.sample.ddim import guided_ddim_sample
from gfcore.sample.dfot_guidance import GENERATE, GENERATED, GROUND_TRUTH, PADDING, DFoTHistoryGuidance

Progress = Callable[[str, int, int], None]  # progress(stage, steps done, steps in the stage)
GuidanceLike = Union[None, str, Mapping, DFoTHistoryGuidance]

# The Geometry Forcing paper's 256-frame evaluation (scripts/eval_geometry_forcing.sh): 1 context
# frame, 16 keyframes (density 0.0625) in one window with stabilized vanilla guidance 4, the gaps
# filled with vanilla guidance 1.5, 4 interpolation windows per batch, DDIM 50 steps.
PROTOCOLS: Dict[str, dict] = {
    "dfot256": dict(num_frames=256, num_context=1, max_tokens=16, keyframe_density=0.0625, steps=50,
                    key_guidance=DFoTHistoryGuidance("stabilized_vanilla", scale=4.0, stabilization_level=0.02),
                    interp_guidance=DFoTHistoryGuidance("vanilla", scale=1.5), interp_max_batch=4,
                    sliding_context_len=None),
}


def keyframe_indices(num_frames: int, density: float, num_context: int) -> torch.Tensor:
    """The keyframes of a rollout: round(density * num_frames) indices spread over the video, and
    the context frames (sorted, unique)."""
    if not 0.0 < density <= 1.0:
        raise ValueError(f"keyframe_density must lie in (0, 1], got {density}")
    spread = torch.linspace(0, num_frames - 1, round(density * num_frames)).round().long()
    return torch.cat([torch.arange(num_context), spread]).unique()


def interpolation_plan(known: torch.Tensor, max_tokens: int) -> List[List[torch.Tensor]]:
    """Stages of frame indices to sample until every frame is known (module docstring, step 2).
    known: bool [N] with the first and last frame True."""
    known = known.clone().bool()
    if not (bool(known[0]) and bool(known[-1])):
        raise ValueError("interpolation needs the first and the last frame known")
    plan: List[List[torch.Tensor]] = []
    while not bool(known.all()):
        keys = torch.where(known)[0].tolist()
        stage: List[torch.Tensor] = []
        chunk: Optional[torch.Tensor] = None
        for left, right in zip(keys[:-1], keys[1:]):
            if chunk is not None:
                if len(chunk) + right - left <= max_tokens:  # the next gap still fits: merge
                    chunk = torch.cat([chunk, torch.arange(left + 1, right + 1)])
                    continue
                stage.append(chunk)
                chunk = None
            if right - left == 1:
                continue
            if right - left >= max_tokens - 1:
                stage.append(torch.linspace(left, right, max_tokens).round().long())
            else:
                chunk = torch.arange(left, right + 1)
        if chunk is not None:
            stage.append(chunk)
        for frames in stage:
            known[frames] = True
        plan.append(stage)
    return plan


def _pad_repeat(x: torch.Tensor, length: int) -> torch.Tensor:
    """[B, t, ...] -> [B, length, ...] by repeating the last frame."""
    if x.shape[1] >= length:
        return x
    return torch.cat([x, x[:, -1:].expand(x.shape[0], length - x.shape[1], *x.shape[2:])], 1)


class _StageProgress:
    def __init__(self, progress: Optional[Progress], stage: str, total: int):
        self.progress, self.stage, self.total, self.done = progress, stage, total, 0

    def step(self) -> None:
        self.done += 1
        if self.progress is not None:
            self.progress(self.stage, self.done, self.total)


def sliding_windows(given: int, length: int, max_tokens: int, sliding_context_len: int):
    """(frames so far, history frames c, new frames h) of each window of predict_sequence."""
    windows, current = [], given
    while current < length:
        c = min(sliding_context_len, current)
        h = min(length - current, max_tokens - c)
        windows.append((current, c, h))
        current += h
    return windows


def predict_sequence(model, diffusion: DFoTDiffusion, context: torch.Tensor, length: int, conditions: torch.Tensor,
                     process_conditions: Callable[[torch.Tensor], torch.Tensor], max_tokens: int,
                     sliding_context_len: Optional[int] = None, guidance: GuidanceLike = None, steps: int = 50,
                     generator: Optional[torch.Generator] = None, progress: Optional[Progress] = None,
                     stage: str = "keyframes", history_noise: Optional[torch.Tensor] = None) -> torch.Tensor:
    """`length` frames [B, length, ...] from the ground-truth context [B, g, ...] by sliding
    windows (module docstring, step 1); conditions [B, length, ...]."""
    batch, given = context.shape[:2]
    if sliding_context_len is None:
        if length > max_tokens:
            raise ValueError(f"length {length} > max_tokens {max_tokens}: give sliding_context_len")
        sliding_context_len = max_tokens - 1
    if sliding_context_len == -1:
        sliding_context_len = max_tokens - 1
    if not given <= sliding_context_len < max_tokens:
        raise ValueError(f"sliding_context_len must lie in [context frames {given}, max_tokens - 1 = "
                         f"{max_tokens - 1}], got {sliding_context_len}")
    if conditions.shape[1] != length:
        raise ValueError(f"conditions must cover the {length} frames, got {conditions.shape[1]}")
    windows = sliding_windows(given, length, max_tokens, sliding_context_len)
    bar = _StageProgress(progress, stage, len(windows) * steps)
    video = context
    for current, c, h in windows:
        start = current - c
        frames = torch.zeros(batch, max_tokens, *context.shape[2:], dtype=context.dtype, device=context.device)
        frames[:, :c] = video[:, -c:]
        states = torch.full((batch, max_tokens), PADDING, dtype=torch.long, device=context.device)
        states[:, :c] = GROUND_TRUTH
        generated = current - max(start, given)
        if generated > 0:
            states[:, c - generated:c] = GENERATED
        states[:, c:c + h] = GENERATE
        cond = process_conditions(_pad_repeat(conditions[:, start:start + max_tokens], max_tokens))
        new = guided_ddim_sample(model, diffusion, frames, states, cond, guidance, steps, generator=generator,
                                 history_noise=history_noise, on_step=bar.step)
        video = torch.cat([video, new[:, c:c + h]], 1)
    return video


def interpolate(model, diffusion: DFoTDiffusion, video: torch.Tensor, known: torch.Tensor, conditions: torch.Tensor,
                process_conditions: Callable[[torch.Tensor], torch.Tensor], max_tokens: int,
                guidance: GuidanceLike = None, steps: int = 50, max_batch: Optional[int] = None,
                generator: Optional[torch.Generator] = None, progress: Optional[Progress] = None,
                history_noise: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Fill the frames of video [B, N, ...] where `known` (bool [N]) is False (module
    docstring, step 2); conditions [B, N, ...]. Returns a new tensor."""
    plan = interpolation_plan(known, max_tokens)
    batch = video.shape[0]
    per_batch = lambda n: 1 if not max_batch else math.ceil(n / max_batch)  # noqa: E731
    bar = _StageProgress(progress, "interpolation", steps * sum(per_batch(len(stage) * batch) for stage in plan))
    video, known = video.clone(), known.clone().bool().to(video.device)
    for stage in plan:
        windows = torch.cat([_pad_repeat(video[:, frames], max_tokens) for frames in stage])
        window_known = torch.cat([_pad_repeat(known[frames][None].expand(batch, -1), max_tokens) for frames in stage])
        window_cond = torch.cat([_pad_repeat(conditions[:, frames], max_tokens) for frames in stage])
        states = torch.where(window_known, GROUND_TRUTH, GENERATE).long()
        size = max_batch or windows.shape[0]
        out = []
        for x, s, cond in zip(windows.split(size), states.split(size), window_cond.split(size)):
            out.append(guided_ddim_sample(model, diffusion, x, s, process_conditions(cond), guidance, steps,
                                          generator=generator, history_noise=history_noise, on_step=bar.step))
        out = torch.cat(out)
        for frames, pred in zip(stage, out.chunk(len(stage))):
            video[:, frames] = pred[:, :len(frames)]
            known[frames] = True
    return video


@torch.no_grad()
def dfot_long_rollout(model, diffusion: DFoTDiffusion, context: torch.Tensor, conditions: torch.Tensor,
                      process_conditions: Callable[[torch.Tensor], torch.Tensor], num_frames: int, *,
                      max_tokens: int = 16, keyframe_density: float = 1.0, key_guidance: GuidanceLike = None,
                      interp_guidance: GuidanceLike = None, steps: int = 50, interp_max_batch: Optional[int] = None,
                      sliding_context_len: Optional[int] = None, generator: Optional[torch.Generator] = None,
                      progress: Optional[Progress] = None, history_noise: Optional[torch.Tensor] = None) -> torch.Tensor:
    """A video [B, num_frames, C, H, W] from its first frames `context` [B, c, C, H, W]
    (DFoT-normalised; returned unchanged) and `conditions` [B, num_frames, ...] for every frame.

    model: the backbone, model(x, noise_levels, external_cond, external_cond_mask) -> v.
    process_conditions: a window's conditions -> the backbone's external_cond (e.g.
        lambda pose: ray_encoding(pose, H, W)).
    keyframe_density < 1: keyframes first, then interpolation (module docstring); 1: every frame
        by sliding windows (sliding_context_len None: max_tokens // 2 when windows must slide,
        as the authors' default).
    key_guidance / interp_guidance: DFoTHistoryGuidance of each phase (None: conditional).
    progress(stage, done, total): after every denoising step, stage "keyframes" / "interpolation".
    """
    if context.ndim != 5 or conditions.ndim < 2:
        raise ValueError(f"context must be [B, c, C, H, W] and conditions [B, N, ...], got {list(context.shape)} "
                         f"and {list(conditions.shape)}")
    batch, num_context = context.shape[:2]
    if conditions.shape[:2] != (batch, num_frames):
        raise ValueError(f"conditions must be [B, N, ...] = [{batch}, {num_frames}, ...], got {list(conditions.shape)}")
    if not 1 <= num_context < min(max_tokens, num_frames):
        raise ValueError(f"context frames must lie in [1, min(max_tokens, num_frames) - 1], got {num_context}")
    keys = keyframe_indices(num_frames, keyframe_density, num_context)
    if sliding_context_len is None and len(keys) > max_tokens:
        sliding_context_len = max_tokens // 2
    key_video = predict_sequence(model, diffusion, context, len(keys), conditions[:, keys.to(conditions.device)],
                                 process_conditions, max_tokens, sliding_context_len, key_guidance, steps, generator,
                                 progress, history_noise=history_noise)
    if len(keys) == num_frames:
        return key_video
    video = torch.zeros(batch, num_frames, *context.shape[2:], dtype=context.dtype, device=context.device)
    video[:, keys.to(video.device)] = key_video
    known = torch.zeros(num_frames, dtype=torch.bool)
    known[keys] = True
    return interpolate(model, diffusion, video, known, conditions, process_conditions, max_tokens, interp_guidance,
                       steps, interp_max_batch, generator, progress, history_noise=history_noise)


__all__ = ["PROTOCOLS", "Progress", "dfot_long_rollout", "interpolate", "interpolation_plan", "keyframe_indices",
           "predict_sequence", "sliding_windows"]
