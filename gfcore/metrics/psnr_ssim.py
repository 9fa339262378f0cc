"""PSNR and SSIM on frames in [0, 1].

Both take images laid out as [..., C, H, W] and return one value per image (shape [...]).
SSIM uses the standard Gaussian window (11 taps, sigma 1.5, K1 = 0.01, K2 = 0.03). The two
reference implementations differ at the image border, so both conventions are offered:
- border="reflect" (default): reflect-pad by 5 pixels and average the SSIM map over the
  whole image, as torchmetrics 1.x computes it (the DFoT/GF evaluation code uses torchmetrics);
- border="valid": average over the pixels whose window fits inside the image, as
  scikit-image computes it (gaussian_weights=True, use_sample_covariance=False).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from gfcore.metrics.validate import check_image_pair


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    # bf16/fp16 accumulate too coarsely for a 1e-4 agreement: always work in fp32 or fp64.
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def psnr(pred: torch.Tensor, target: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB for each image of [..., C, H, W].

    Identical images give +inf (the MSE is exactly zero); callers that average decide how
    to treat it (gfcore.metrics keeps inf and writes it as "inf").
    """
    check_image_pair(pred, target, "pred", "target")
    dtype = _compute_dtype(pred)
    diff = pred.to(dtype) - target.to(dtype)
    mse = diff.pow(2).mean(dim=(-3, -2, -1))
    with torch.no_grad():
        zero = mse == 0
    # 10 log10(R^2 / mse); log of 0 gives -inf, so the ratio becomes +inf as wanted.
    value = 10.0 * torch.log10(torch.as_tensor(data_range**2, dtype=dtype) / mse)
    return torch.where(zero, torch.full_like(value, math.inf), value)


def gaussian_window_1d(size: int = 11, sigma: float = 1.5, dtype=torch.float32) -> torch.Tensor:
    """Normalised 1-D Gaussian taps centred on the middle tap."""
    if size % 2 != 1 or size < 1:
        raise ValueError(f"window size must be a positive odd number, got {size}")
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    taps = torch.exp(-(coords**2) / (2 * sigma**2))
    return (taps / taps.sum()).to(dtype)


def _blur_valid(x: torch.Tensor, taps: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian filter without padding: [N, C, H, W] -> [N, C, H-k+1, W-k+1]."""
    channels = x.shape[1]
    k = taps.numel()
    row = taps.view(1, 1, 1, k).expand(channels, 1, 1, k)
    col = taps.view(1, 1, k, 1).expand(channels, 1, k, 1)
    return F.conv2d(F.conv2d(x, row, groups=channels), col, groups=channels)


def ssim(
    pred: torch.Tensor,
    target: torch.Tensor,
    data_range: float = 1.0,
    window_size: int = 11,
    sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
    border: str = "reflect",
) -> torch.Tensor:
    """Structural similarity for each image of [..., C, H, W] (mean over channels and pixels).

    border: "reflect" (torchmetrics convention) or "valid" (scikit-image convention); see
    the module docstring. Images must be at least window_size pixels in height and width.
    """
    if border not in ("reflect", "valid"):
        raise ValueError(f"border: expected 'reflect' or 'valid', got {border!r}")
    check_image_pair(pred, target, "pred", "target")
    height, width = pred.shape[-2:]
    if height < window_size or width < window_size:
        raise ValueError(
            f"pred/target: SSIM needs images of at least {window_size}x{window_size} pixels, "
            f"got {height}x{width}"
        )
    dtype = _compute_dtype(pred)
    batch_shape = pred.shape[:-3]
    x = pred.to(dtype).reshape(-1, *pred.shape[-3:])
    y = target.to(dtype).reshape(-1, *target.shape[-3:])
    taps = gaussian_window_1d(window_size, sigma, dtype)
    if border == "reflect":
        pad = (window_size - 1) // 2
        x = F.pad(x, (pad, pad, pad, pad), mode="reflect")
        y = F.pad(y, (pad, pad, pad, pad), mode="reflect")

    # One filter call over the five moment maps keeps it to a single pass.
    n = x.shape[0]
    moments = _blur_valid(torch.cat([x, y, x * x, y * y, x * y]), taps)
    mu_x, mu_y, e_xx, e_yy, e_xy = moments.split(n)
    # Variances are non-negative; rounding can make the difference of moments dip below 0.
    var_x = (e_xx - mu_x**2).clamp_min(0)
    var_y = (e_yy - mu_y**2).clamp_min(0)
    cov_xy = e_xy - mu_x * mu_y

    c1 = (k1 * data_range) ** 2
    c2 = (k2 * data_range) ** 2
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov_xy + c2)) / (
        (mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2)
    )
    return ssim_map.mean(dim=(-3, -2, -1)).reshape(batch_shape)
