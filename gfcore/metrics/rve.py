"""RVE (revisit error): after a 360-degree turn that returns to the start pose, the last
generated frame should show what the first frame showed.

Per clip the first and last frames are compared with PSNR, SSIM and LPIPS; over many clips
the set of first frames and the set of last frames are compared with a Frechet distance on
image features (FID with an Inception network, as in the paper's rFID).
"""
from __future__ import annotations

import os
from typing import Callable, Optional

import torch

from gfcore.metrics.fvd import frechet_distance_features
from gfcore.metrics.psnr_ssim import psnr, ssim
from gfcore.metrics.validate import check_image_pair
from gfcore.metrics.weights import load_torchscript

ImageFeatureFn = Callable[[torch.Tensor], torch.Tensor]


def load_inception(path: Optional[os.PathLike], device: str | torch.device = "cpu",
                   trust: bool = False) -> torch.jit.ScriptModule:
    """The TorchScript Inception-v3 of the StyleGAN FID code, from a local file (verified as load_i3d)."""
    return load_torchscript(path, "Inception network for FID", "--inception", device, network="inception",
                            trust=trust)


def inception_feature_fn(detector: torch.nn.Module, device: str | torch.device = "cpu", batch_size: int = 32) -> ImageFeatureFn:
    """Images [N, 3, H, W] in [0, 1] -> [N, F] float64 features.

    StyleGAN's Inception takes uint8 images [N, 3, H, W] in [0, 255] (it resizes to 299
    itself) and returns pool features with return_features=True.
    """

    @torch.no_grad()
    def extract(images: torch.Tensor) -> torch.Tensor:
        feats = []
        for chunk in images.split(batch_size):
            as_uint8 = (chunk.clamp(0, 1) * 255).round().to(torch.uint8).to(device)
            feats.append(detector(as_uint8, return_features=True).double().cpu())
        return torch.cat(feats)

    return extract


def revisit_pair_metrics(first: torch.Tensor, last: torch.Tensor, lpips_model=None, ssim_border: str = "reflect") -> dict:
    """Per-clip PSNR / SSIM / (LPIPS) between first and last frames, each [N, 3, H, W]."""
    check_image_pair(last, first, "last", "first")
    with torch.no_grad():
        result = {"psnr": psnr(last, first), "ssim": ssim(last, first, border=ssim_border)}
        if lpips_model is not None:
            result["lpips"] = lpips_model(last, first).double()
    return result


def revisit_fid(first: torch.Tensor, last: torch.Tensor, feature_fn: ImageFeatureFn) -> float:
    """Frechet distance between features of the first frames and of the last frames (N >= 2)."""
    check_image_pair(last, first, "last", "first")
    return frechet_distance_features(feature_fn(last), feature_fn(first))
