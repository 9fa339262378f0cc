"""The demo's own measurements: per-clip PSNR against two trivial predictors, sampling-noise
consistency, a blocky-noise detector, a paired bootstrap over clips, and the depth probe.

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


def high_frequency_ratio(generated: torch.Tensor, reference: torch.Tensor, context: int) -> torch.Tensor:
    """Per generated frame: energy of the 3x3 high-pass (frame minus its box blur) relative to the
    reference frame's. Blocky colour noise reads >> 1; a blurry prediction < 1."""
    def energy(video: torch.Tensor) -> torch.Tensor:
        x = _unit(video[context:])
        blur = torch.nn.functional.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)
        return (x - blur).pow(2).flatten(1).mean(1)

    return energy(generated) / energy(reference).clamp_min(1e-8)


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
def probe_features(model, clips: List[Dict], window: int, patch: int, pixels: bool = False):
    """(features [N, D], log patch depth [N]) of the aligned block's hidden states on clean frames
    (t = 0 everywhere) of each clip, cut into windows of the training length; pixels=True gives the
    raw patch pixels instead (the probe's floor: what colour alone says about depth)."""
    from gfcore.train.data import add_rays

    feats, depths = [], []
    for clip in clips:
        frames_total = clip["frames"].shape[0]
        for start in range(0, frames_total - window + 1, window):
            item = {k: clip[k][start:start + window] for k in ("frames", "intrinsics", "c2w", "depth")}
            depth = item["depth"].float()  # [T, H, W]
            t_count, height, width = depth.shape
            patch_depth = depth.reshape(t_count, height // patch, patch, width // patch, patch).mean((2, 4))
            if pixels:
                x = item["frames"].float()
                tokens = x.reshape(t_count, 3, height // patch, patch, width // patch, patch)
                tokens = tokens.permute(0, 2, 4, 1, 3, 5).reshape(t_count * (height // patch) * (width // patch), -1)
            else:
                add_rays(item)
                t = torch.zeros(1, t_count)
                rays = item["rays"][None] if model.config.camera_cond else None
                _, hidden = model(item["frames"][None].float(), t, rays=rays)
                tokens = hidden[0].reshape(-1, hidden.shape[-1]).float()
            feats.append(tokens)
            depths.append(patch_depth.reshape(-1).clamp_min(1e-3).log())
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
