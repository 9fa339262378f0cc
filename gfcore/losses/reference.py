"""The Geometry Forcing alignment loss in plain PyTorch: the readable specification.

For each target i (a teacher layer), with the projector f_i and the head g_i:
    z = f_i(h)                       angular_i = -mean_tokens cos(y_i, z)
    zhat = z / |z|                   scale_i   = mean_{tokens, channels} (g_i(zhat) - y_i)^2
angular = sum_i w_i angular_i and scale = sum_i w_i scale_i, the weights w_i being 1/targets
unless given (the mean over targets, geometry_forcing.md). A target without a head
(lambda_scale = 0) adds nothing to scale.

Dtypes, as in the fused path: the projector and head run in the compute dtype (the autocast
dtype under torch.autocast, else h's); y is taken in that dtype whatever it arrives in; the
normalisation, cosine and squared error accumulate in float32 (float64 for float64), outside
autocast, and the terms come out in that accumulation dtype. Mixing y's own dtype into the
loss (say float64 teacher features under bf16 autocast) would promote the terms to float64
and hand the backward of mse_loss mixed dtypes, which some torch versions refuse.

The projector and head may be any modules mapping [N, C] -> [N, D_i] and [N, D_i] -> [N, D_i];
`metrics` swaps the two measurements (normalise + cosine, squared error) for gfcore's fused
kernels (gfcore/losses/modular_path.py) around modules gfcore cannot fuse.
"""
from typing import NamedTuple, Optional, Sequence

import torch
import torch.nn.functional as F


def accumulation_dtype(compute_dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64; every other compute dtype accumulates in float32."""
    return torch.float64 if compute_dtype == torch.float64 else torch.float32


class Measured(NamedTuple):
    zhat: torch.Tensor    # z / max(|z|, eps), in the compute dtype (the head's input)
    cos: torch.Tensor     # [N] cosines, accumulation dtype
    y_norm: torch.Tensor  # [N] |y|: non-finite exactly where y holds NaN or Inf


class TorchMetrics:
    """The two measurements in plain PyTorch; inputs in the compute dtype, [N, D]."""

    @staticmethod
    def normalize_cosine(z: torch.Tensor, y: torch.Tensor, eps: float) -> Measured:
        compute, acc = z.dtype, accumulation_dtype(z.dtype)
        z, y = z.to(acc), y.to(acc)
        cos = F.cosine_similarity(z, y, dim=-1, eps=eps)
        return Measured(F.normalize(z, dim=-1, eps=eps).to(compute), cos, y.norm(dim=-1))

    @staticmethod
    def mse(prediction: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        acc = accumulation_dtype(prediction.dtype)
        return F.mse_loss(prediction.to(acc), y.to(acc))


def _checked_width(name: str, i: int, t: torch.Tensor, rows: int, width: int) -> torch.Tensor:
    if t.shape != (rows, width):
        raise ValueError(f"{name} of target {i} must map to [tokens, target_dim] = {(rows, width)}, "
                         f"got {tuple(t.shape)}")
    return t


def reference_alignment_terms(h, ys: Sequence[torch.Tensor], projectors, heads, eps: float,
                              compute_dtype: Optional[torch.dtype] = None, weights: Optional[Sequence[float]] = None,
                              metrics=TorchMetrics, check_finite: bool = False):
    """h: [N, hidden]; ys: one [N, D_i] per target; heads[i] None for no scale term.
    Returns (angular, scale, mean cosine), in the accumulation dtype.

    compute_dtype: the dtype the projector and head compute in (default h.dtype).
    """
    compute = h.dtype if compute_dtype is None else compute_dtype
    acc = accumulation_dtype(compute)
    weights = [1.0 / len(ys)] * len(ys) if weights is None else weights
    exact = torch.autocast(h.device.type, enabled=False)  # the loss arithmetic stays in `acc`
    angular = scale = h.new_zeros((), dtype=acc)
    cosines = []
    for i, (y, projector, head, weight) in enumerate(zip(ys, projectors, heads, weights)):
        rows, width = y.shape
        z = _checked_width("the projector", i, projector(h), rows, width)
        with exact:
            y_i = y.to(compute).contiguous()
            measured = metrics.normalize_cosine(z.to(compute).contiguous(), y_i, eps)
            if check_finite and not torch.compiler.is_compiling() and not bool(torch.isfinite(measured.y_norm).all()):
                raise ValueError(f"y (the teacher features) holds NaN or Inf values in target {i}")
            angular = angular - weight * measured.cos.mean()
            cosines.append(measured.cos.detach().mean())
        if head is not None:
            prediction = _checked_width("the head", i, head(measured.zhat), rows, width)
            with exact:
                scale = scale + weight * metrics.mse(prediction.to(compute).contiguous(), y_i)
    return angular, scale, torch.stack(cosines).mean()
