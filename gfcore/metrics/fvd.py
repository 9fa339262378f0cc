"""Frechet distances: FVD on I3D video features and FID-style distances on any features.

I3D: the TorchScript Kinetics-400 I3D distributed with StyleGAN-V's FVD code
(i3d_torchscript.pt), loaded from a local path only. It is called with videos laid out
[B, 3, T, H, W] in [-1, 1] and the keyword arguments rescale=False, resize=True (the
network resizes to 224x224 itself), return_features=True, and returns [B, 400] features.

Frechet distance between Gaussians fitted to two feature sets, in float64:
  d^2 = |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^(1/2)).
tr((S1 S2)^(1/2)) is computed as the sum of square roots of the eigenvalues of the
symmetric matrix S1^(1/2) S2 S1^(1/2) (same spectrum as S1 S2, but a symmetric
eigenproblem, so no complex round-off as with a general matrix square root).
"""
from __future__ import annotations

import os
from typing import Callable, Optional

import numpy as np
import torch

from gfcore.metrics.validate import check_floating
from gfcore.metrics.weights import load_torchscript

FeatureFn = Callable[[torch.Tensor], torch.Tensor]

# Keyword arguments of StyleGAN-V's I3D call (features before the classifier softmax).
I3D_KWARGS = dict(rescale=False, resize=True, return_features=True)


def load_i3d(path: Optional[os.PathLike], device: str | torch.device = "cpu", trust: bool = False) -> torch.jit.ScriptModule:
    """Load the TorchScript I3D from a local file; WeightsUnavailable when absent, UnsafeFileError
    when its SHA-256 is not the published file's and `trust` (--trust-weights) is not given."""
    return load_torchscript(path, "I3D network (i3d_torchscript.pt)", "--i3d", device, network="i3d", trust=trust)


def i3d_feature_fn(detector: torch.nn.Module, device: str | torch.device = "cpu", batch_size: int = 8) -> FeatureFn:
    """Wrap an I3D-like network: videos [B, T, 3, H, W] in [0, 1] -> features [B, F] (float64)."""

    @torch.no_grad()
    def extract(videos: torch.Tensor) -> torch.Tensor:
        check_floating(videos, "videos")
        if videos.dim() != 5 or videos.shape[2] != 3:
            raise ValueError(f"videos: expected [B, T, 3, H, W], got {tuple(videos.shape)}")
        feats = []
        for chunk in videos.split(batch_size):
            clip = chunk.permute(0, 2, 1, 3, 4).to(device, torch.float32) * 2 - 1  # [B, 3, T, H, W]
            feats.append(detector(clip, **I3D_KWARGS).double().cpu())
        return torch.cat(feats)

    return extract


def gaussian_stats(features: torch.Tensor | np.ndarray, name: str = "features") -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance (unbiased, rows are samples) of [N, F] features in float64."""
    feats = np.asarray(features.detach().cpu() if isinstance(features, torch.Tensor) else features, dtype=np.float64)
    if feats.ndim != 2:
        raise ValueError(f"{name}: expected [N, F] features, got shape {feats.shape}")
    if feats.shape[0] < 2:
        raise ValueError(f"{name}: need at least 2 samples for a covariance, got {feats.shape[0]}")
    if not np.isfinite(feats).all():
        raise ValueError(f"{name}: features contain NaN or inf")
    return feats.mean(axis=0), np.cov(feats, rowvar=False).reshape(feats.shape[1], feats.shape[1])


def _sqrt_psd(matrix: np.ndarray) -> np.ndarray:
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Squared Frechet distance between N(mu1, sigma1) and N(mu2, sigma2), float64."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != mu1.shape * 2:
        raise ValueError(
            f"mu/sigma shapes disagree: mu1 {mu1.shape}, mu2 {mu2.shape}, sigma1 {sigma1.shape}, sigma2 {sigma2.shape}"
        )
    root1 = _sqrt_psd(sigma1)
    middle = root1 @ sigma2 @ root1
    eigenvalues = np.linalg.eigvalsh((middle + middle.T) / 2)
    trace_sqrt = np.sqrt(np.clip(eigenvalues, 0, None)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * trace_sqrt)


def frechet_distance_features(feats_a, feats_b) -> float:
    """Frechet distance between two feature sets [N, F] and [M, F]."""
    mu_a, sigma_a = gaussian_stats(feats_a, "feats_a")
    mu_b, sigma_b = gaussian_stats(feats_b, "feats_b")
    return frechet_distance(mu_a, sigma_a, mu_b, sigma_b)


def fvd(generated: torch.Tensor, reference: torch.Tensor, feature_fn: FeatureFn) -> float:
    """FVD between two sets of videos [N, T, 3, H, W] in [0, 1] (N >= 2 each)."""
    return frechet_distance_features(feature_fn(generated), feature_fn(reference))
