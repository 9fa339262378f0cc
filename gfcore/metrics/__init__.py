"""Evaluation metrics of the Geometry Forcing paper: FVD, LPIPS, SSIM, PSNR, RPE and RVE.

Frames are float tensors in [0, 1] laid out [..., 3, H, W] (videos [T, 3, H, W] or
[B, T, 3, H, W]). `python -m gfcore.metrics --help` runs the whole evaluation and writes
JSON, a markdown table in the paper's column order and PNG plots.
"""
from gfcore.metrics.curves import FrameMetricAccumulator, sliding_window_fvd
from gfcore.metrics.evaluate import EvalConfig, evaluate
from gfcore.metrics.geometry_estimate import EstimatedGeometry, estimate_geometry, load_geometry_model
from gfcore.metrics.fvd import frechet_distance, frechet_distance_features, fvd, i3d_feature_fn, load_i3d
from gfcore.metrics.lpips import LPIPS, load_lpips
from gfcore.metrics.psnr_ssim import psnr, ssim
from gfcore.metrics.rpe import RPEResult, reprojection_error, rpe_summary
from gfcore.metrics.rve import revisit_fid, revisit_pair_metrics
from gfcore.metrics.weights import WeightsUnavailable

__all__ = [
    "psnr",
    "ssim",
    "LPIPS",
    "load_lpips",
    "fvd",
    "frechet_distance",
    "frechet_distance_features",
    "i3d_feature_fn",
    "load_i3d",
    "reprojection_error",
    "EstimatedGeometry",
    "estimate_geometry",
    "load_geometry_model",
    "rpe_summary",
    "RPEResult",
    "revisit_pair_metrics",
    "revisit_fid",
    "FrameMetricAccumulator",
    "sliding_window_fvd",
    "EvalConfig",
    "evaluate",
    "WeightsUnavailable",
]
