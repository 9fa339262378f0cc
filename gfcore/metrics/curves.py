"""Per-frame metric curves over long rollouts (drift / exposure bias) and sliding-window FVD.

FrameMetricAccumulator gathers per-frame PSNR, SSIM and LPIPS clip by clip, so an
evaluation never needs all videos in memory; it yields both the per-frame curves and the
overall means. PSNR of frames identical to the reference is +inf: those frames are counted
(psnr_identical_frames) and left out of the PSNR mean; the mean is +inf only when every
frame is identical.
"""
from __future__ import annotations

import math
from typing import Callable, Optional

import torch

from gfcore.metrics.fvd import frechet_distance_features
from gfcore.metrics.psnr_ssim import psnr, ssim
from gfcore.metrics.validate import check_image_pair


def finite_mean(values: torch.Tensor) -> float:
    """Mean of the finite entries; +inf when all are +inf; nan when empty."""
    values = values.double().flatten()
    if values.numel() == 0:
        return math.nan
    finite = values[torch.isfinite(values)]
    if finite.numel() == 0:
        return math.inf if bool((values == math.inf).all()) else math.nan
    return float(finite.mean())


class FrameMetricAccumulator:
    """Per-frame PSNR, SSIM and (optionally) LPIPS summed over clips of any length."""

    def __init__(self, lpips_model: Optional[torch.nn.Module] = None, ssim_border: str = "reflect") -> None:
        self.lpips_model = lpips_model
        self.ssim_border = ssim_border
        self.values: dict[str, list[torch.Tensor]] = {"psnr": [], "ssim": []}
        if lpips_model is not None:
            self.values["lpips"] = []

    def add(self, generated: torch.Tensor, reference: torch.Tensor) -> dict:
        """Add one clip pair ([T, 3, H, W] each); returns that clip's per-frame values."""
        check_image_pair(generated, reference, "generated", "reference")
        with torch.no_grad():
            clip = {
                "psnr": psnr(generated, reference).double(),
                "ssim": ssim(generated, reference, border=self.ssim_border).double(),
            }
            if self.lpips_model is not None:
                # chunks bound the backbone's activation memory on long rollouts
                clip["lpips"] = torch.cat(
                    [self.lpips_model(g, r).double() for g, r in zip(generated.split(32), reference.split(32))]
                )
        for name, per_frame in clip.items():
            self.values[name].append(per_frame.cpu())
        return clip

    def curves(self) -> dict[str, list[float]]:
        """Mean over clips at each frame index (clips shorter than the longest contribute
        to the frames they have)."""
        out = {}
        for name, clips in self.values.items():
            length = max((c.numel() for c in clips), default=0)
            out[name] = [finite_mean(torch.stack([c[t] for c in clips if c.numel() > t])) for t in range(length)]
        return out

    def means(self) -> dict[str, float]:
        """Mean over every frame of every clip."""
        out = {name: finite_mean(torch.cat(clips)) if clips else math.nan for name, clips in self.values.items()}
        if self.values["psnr"]:
            out["psnr_identical_frames"] = int(sum(int(torch.isinf(c).sum()) for c in self.values["psnr"]))
        return out


def window_features(
    clip: torch.Tensor, feature_fn: Callable[[torch.Tensor], torch.Tensor], window: int = 16, stride: int = 8
) -> torch.Tensor:
    """Video features of frames [s, s + window) of one clip [T, 3, H, W] for s = 0, stride, ...

    Returns [num_windows, F] (num_windows = 0 when the clip is shorter than the window).
    """
    starts = range(0, clip.shape[0] - window + 1, stride)
    if len(starts) == 0:
        return torch.empty(0, 0, dtype=torch.float64)
    return feature_fn(torch.stack([clip[s:s + window] for s in starts]))


def sliding_window_fvd_from_features(
    generated: list[torch.Tensor], reference: list[torch.Tensor], window: int = 16, stride: int = 8
) -> list[dict]:
    """FVD per window start from per-clip window features (see window_features).

    Uses the windows that every clip covers; needs at least 2 clips on each side.
    Returns [{"start": s, "end": s + window, "fvd": value}, ...].
    """
    if len(generated) < 2 or len(reference) < 2:
        raise ValueError("sliding-window FVD needs at least 2 generated and 2 reference clips")
    count = min(f.shape[0] for f in generated + reference)
    return [
        {
            "start": k * stride,
            "end": k * stride + window,
            "fvd": frechet_distance_features(torch.stack([f[k] for f in generated]), torch.stack([f[k] for f in reference])),
        }
        for k in range(count)
    ]


def sliding_window_fvd(
    generated: list[torch.Tensor],
    reference: list[torch.Tensor],
    feature_fn: Callable[[torch.Tensor], torch.Tensor],
    window: int = 16,
    stride: int = 8,
) -> list[dict]:
    """FVD of frames [s, s + window) for each window start s, over lists of clips [T, 3, H, W]."""
    return sliding_window_fvd_from_features(
        [window_features(c, feature_fn, window, stride) for c in generated],
        [window_features(c, feature_fn, window, stride) for c in reference],
        window,
        stride,
    )
