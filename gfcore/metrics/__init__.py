"""Evaluation metrics of the Geometry Forcing paper: FVD, LPIPS, SSIM, PSNR, RPE and RVE.

Frames are float tensors in [0, 1] laid out [..., 3, H, W] (videos [T, 3, H, W] or
[B, T, 3, H, W]). `python -m gfcore.metrics --help` runs the whole evaluation.
"""
from gfcore.metrics.psnr_ssim import psnr, ssim
from gfcore.metrics.weights import WeightsUnavailable

__all__ = ["psnr", "ssim", "WeightsUnavailable"]
