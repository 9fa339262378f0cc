"""The demo's own measurements: per-clip PSNR against two trivial predictors, sampling-noise
consistency, a per-frame detector of noise-dependent (colour) noise and a sharpness measure, a paired bootstrap over clips, and the depth probe.

Frames are scored as the demo writes them (uint8), only after the given context frames.
Trivial predictors: "repeat the last context frame" and "the clip's mean colour" (per channel
over all its frames: an oracle the model cannot know, so a bar it should clear).
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import numpy as np
import torch


def _unit(video: torch.Tensor) -> torch.Tensor:
    """[-1, 1] floats -> the uint8 grid the demo writes, as floats in [0, 1]."""
    return ((video.float().clamp(-1, 1) + 1) * 127.5).round() / 255.0


def frame_psnr(generated: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Per-frame PSNR [T] of [T, C, H, W] clips in [-1, 1] (uint8-quantised)."""
    mse = (_unit(generated) - _unit(reference)).pow(2).flatten(1).mean(1).clamp_min(1e-10)
    return 10 * torch.log10(1.0 / mse)


def clip_psnr(generated: torch.Tensor, reference: torch.Tensor, context: int) -> float:
    """Mean over the generated frames (after the context) of the per-frame PSNR."""
    return float(frame_psnr(generated[context:], reference[context:]).mean())


def trivial_predictions(reference: torch.Tensor, context: int) -> Dict[str, torch.Tensor]:
    """{name: clip [T, C, H, W]} for the two trivial predictors (context frames kept as given)."""
    copy = reference.clone()
    copy[context:] = reference[context - 1]
    mean = reference.mean(dim=(0, 2, 3), keepdim=True).expand_as(reference).clone()
    mean[:context] = reference[:context]
    return {"repeat last context frame": copy, "clip mean colour": mean}


def _high_pass_energy(frames: torch.Tensor) -> torch.Tensor:
    """Per frame [T]: mean square of the 3x3 high-pass (frame minus its box blur) of [T, C, H, W]."""
    blur = torch.nn.functional.avg_pool2d(frames, 3, stride=1, padding=1, count_include_pad=False)
    return (frames - blur).pow(2).flatten(1).mean(1)


def high_frequency_ratio(generated: torch.Tensor, reference: torch.Tensor, context: int) -> torch.Tensor:
    """Per generated frame: high-frequency energy relative to the reference frame's. Blocky colour
    noise reads >> 1 and a blurry prediction < 1, but so does any sharp artefact (a stale copy of
    a texture the camera left, streaks): a sharpness measure, not a noise detector."""
    return _high_pass_energy(_unit(generated[context:])) / _high_pass_energy(_unit(reference[context:])).clamp_min(1e-8)


# A frame whose noise-dependent high-frequency energy reaches a quarter of the ground truth's
# (-6 dB) shows visible noise. Measured with 3 sampling seeds (benchmarks/results/demo_recipes.md):
# the old recipe's rollouts (v-prediction, 500 steps, Heun 10), the blocky colour noise,
# read a median of OLD_RECIPE_NOISE_MEDIAN, every frame above the limit; the demo's models below 0.1.
NOISE_FRAME_LIMIT = 0.25
OLD_RECIPE_NOISE_MEDIAN = 1.80


def noise_dependent_ratio(rollouts: Sequence[torch.Tensor], reference: torch.Tensor, context: int) -> torch.Tensor:
    """Per generated frame [T - context]: high-frequency energy of the part of a rollout that changes
    with the sampling noise, relative to the reference frame's. Estimated from S seeds as the
    energy of each seed's rollout minus the mean over the seeds, summed over the seeds and divided
    by S - 1 (the deviations from the seeds' own mean hold (S - 1) / S of it), so the scale does not
    depend on how many seeds there are. Input noise the model fails to remove (the blocky colour
    noise) reads high; whatever all seeds share, blur or artefact, reads 0."""
    seeds = len(rollouts)
    if seeds < 2:
        raise ValueError(f"noise_dependent_ratio needs rollouts from 2 or more sampling seeds, got {seeds}")
    x = torch.stack([_unit(video[context:]) for video in rollouts])  # [S, T, C, H, W]
    deviation = x - x.mean(0, keepdim=True)
    energy = torch.stack([_high_pass_energy(d) for d in deviation]).sum(0) / (seeds - 1)
    return energy / _high_pass_energy(_unit(reference[context:])).clamp_min(1e-8)


def noise_dependent_ratios(rollouts: Sequence[torch.Tensor], references: Sequence[torch.Tensor],
                           context: int) -> torch.Tensor:
    """noise_dependent_ratio of every clip, concatenated: rollouts [S] of [B, T, C, H, W] (one batch
    of B clips per sampling seed), references B clips [T, C, H, W]."""
    return torch.cat([noise_dependent_ratio([video[i] for video in rollouts], reference, context)
                      for i, reference in enumerate(references)])


def bootstrap_mean_interval(values: Sequence[float], resamples: int = 5000, seed: int = 0,
                            level: float = 0.95) -> tuple:
    """(mean, low, high): percentile bootstrap interval of the mean over the given per-clip values."""
    values = np.asarray(values, dtype=np.float64)
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(resamples, len(values)))].mean(1)
    tail = (1 - level) / 2 * 100
    return float(values.mean()), float(np.percentile(means, tail)), float(np.percentile(means, 100 - tail))


# ---- depth probe -------------------------------------------------------------------------


@torch.no_grad()
def probe_features(model, clips: List[Dict], window: int, patch: int, pixels: bool = False, batch: int = 32):
    """(features [N, D], log patch depth [N]) of the aligned block's hidden states on clean frames
    (t = 0 everywhere) of each clip, cut into windows of the training length (forwarded `batch`
    windows at a time); pixels=True gives the raw patch pixels instead (the probe's floor: what
    colour alone says about depth)."""
    from gfcore.train.data import add_rays

    items = []
    for clip in clips:
        for start in range(0, clip["frames"].shape[0] - window + 1, window):
            items.append({k: clip[k][start:start + window] for k in ("frames", "intrinsics", "c2w", "depth")})
    feats, depths = [], []
    for first in range(0, len(items), batch):
        chunk = items[first:first + batch]
        depth = torch.stack([item["depth"].float() for item in chunk])  # [B, T, H, W]
        n, t_count, height, width = depth.shape
        gh, gw = height // patch, width // patch
        depths.append(depth.reshape(n, t_count, gh, patch, gw, patch).mean((3, 5)).reshape(-1).clamp_min(1e-3).log())
        frames = torch.stack([item["frames"].float() for item in chunk])  # [B, T, 3, H, W]
        if pixels:
            tokens = frames.reshape(n, t_count, 3, gh, patch, gw, patch).permute(0, 1, 3, 5, 2, 4, 6)
            feats.append(tokens.reshape(n * t_count * gh * gw, -1))
            continue
        rays = torch.stack([add_rays(dict(item))["rays"] for item in chunk]) if model.config.camera_cond else None
        _, hidden = model(frames, torch.zeros(n, t_count), rays=rays)
        feats.append(hidden.reshape(-1, hidden.shape[-1]).float())
    return torch.cat(feats).double(), torch.cat(depths).double()


def fit_ridge(x: torch.Tensor, y: torch.Tensor, alphas=(1e-2, 1e-1, 1.0, 10.0, 100.0)):
    """Ridge regression with standardised features; alpha picked on the last fifth of the rows
    (held out), then refit on all. Returns a predict(x) function."""
    mean, std = x.mean(0), x.std(0).clamp_min(1e-6)

    def solve(xs, ys, alpha):
        z = torch.cat([(xs - mean) / std, torch.ones(len(xs), 1, dtype=xs.dtype)], 1)
        reg = alpha * torch.eye(z.shape[1], dtype=z.dtype)
        reg[-1, -1] = 0.0
        return torch.linalg.solve(z.T @ z + reg, z.T @ ys)

    def apply(w, xs):
        return torch.cat([(xs - mean) / std, torch.ones(len(xs), 1, dtype=xs.dtype)], 1) @ w

    split = int(len(x) * 0.8)
    errors = {a: float((apply(solve(x[:split], y[:split], a), x[split:]) - y[split:]).pow(2).mean()) for a in alphas}
    best = min(errors, key=errors.get)
    weights = solve(x, y, best)
    return lambda xs: apply(weights, xs)


def depth_scores(log_pred: torch.Tensor, log_true: torch.Tensor) -> Dict[str, float]:
    pred, true = log_pred.exp(), log_true.exp()
    ratio = torch.maximum(pred / true, true / pred)
    return {"absrel": float(((pred - true).abs() / true).mean()), "delta1": float((ratio < 1.25).double().mean())}


def depth_probe(model, train_clips: List[Dict], test_clips: List[Dict], window: int, patch: int,
                pixels: bool = False) -> Dict[str, float]:
    """Ridge probe hidden state -> log per-patch depth: fit on the training clips, scored on the test
    clips (AbsRel, delta < 1.25); also the constant predictor (the training clips' mean log depth)."""
    x_train, y_train = probe_features(model, train_clips, window, patch, pixels)
    x_test, y_test = probe_features(model, test_clips, window, patch, pixels)
    predict = fit_ridge(x_train, y_train)
    scores = depth_scores(predict(x_test), y_test)
    constant = depth_scores(torch.full_like(y_test, float(y_train.mean())), y_test)
    scores.update(constant_absrel=constant["absrel"], constant_delta1=constant["delta1"])
    return scores


def summarise_kinds(per_clip: Dict[str, float], kinds: Dict[str, str]) -> Dict[str, float]:
    """{kind: mean over its clips, "all": mean over every clip}."""
    out: Dict[str, float] = {}
    for kind in sorted(set(kinds.values())):
        values = [v for k, v in per_clip.items() if kinds[k] == kind]
        out[kind] = float(np.mean(values))
    out["all"] = float(np.mean(list(per_clip.values())))
    return out


def spread(values: Sequence[float]) -> Optional[float]:
    return float(np.std(values, ddof=1)) if len(values) > 1 else None
