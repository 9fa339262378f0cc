"""Geometry Forcing losses as functions, for training loops that own their projector and head.

    z = my_projector(h)                            # [..., D], e.g. REPA's build_mlp
    loss = diffusion + 0.5 * gfcore.functional.angular_loss(z, y, mask)
    loss += 0.05 * gfcore.functional.scale_loss(my_head(F.normalize(z, dim=-1)), y, mask)

angular_loss and scale_loss run gfcore's fused normalize+cosine and MSE kernels (forward and
backward) where they are built for the tensors' device, and their PyTorch references
elsewhere; both accumulate in float32 (float64 for float64 inputs), whatever autocast does
around them, and return a float32 (float64) scalar. y is the teacher's: no gradient flows into
it, and it is taken in the dtype of z (or pred) whatever dtype it arrives in.

official_gf_loss is the alignment loss of the authors' released Geometry Forcing code, for
reproducing their checkpoints; it is not the paper's loss (see its docstring).
"""
from __future__ import annotations

import contextlib
from typing import Optional, Tuple

import torch

from gfcore import ops
from gfcore.ops import alignment_reference
from gfcore.ops.alignment import fused_row_supported


def _rows(name: str, t: torch.Tensor, other_name: str, other: torch.Tensor,
          mask: Optional[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
    """Both tensors as contiguous [N, D] rows of the tokens `mask` keeps, y in t's dtype; every
    bad input is refused with the argument named before anything is computed."""
    for arg, value in ((name, t), (other_name, other)):
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"{arg} must be a tensor, got {type(value).__name__}")
        if not value.is_floating_point():
            raise TypeError(f"{arg} must be a floating-point tensor, got {value.dtype}")
    if t.dim() < 1 or t.shape[-1] == 0:
        raise ValueError(f"{name} must have shape [..., D] with D > 0, got {tuple(t.shape)}")
    if other.shape != t.shape:
        raise ValueError(f"{other_name} must have the shape of {name}, {tuple(t.shape)}, got {tuple(other.shape)}")
    if other.device != t.device:
        raise ValueError(f"{other_name} is on {other.device} but {name} is on {t.device}")
    lead, width = t.shape[:-1], t.shape[-1]
    z, y = t.reshape(-1, width), other.detach().reshape(-1, width)
    if mask is not None:
        if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
            found = mask.dtype if isinstance(mask, torch.Tensor) else type(mask).__name__
            raise TypeError(f"mask must be a bool tensor of shape {tuple(lead)} (the tokens of {name}), got {found}")
        if mask.shape != lead:
            raise ValueError(f"mask must have shape {tuple(lead)} (the tokens of {name}), got {tuple(mask.shape)}")
        keep = mask.to(t.device).reshape(-1).nonzero().squeeze(1)
        z, y = z.index_select(0, keep), y.index_select(0, keep)
    if z.shape[0] == 0:
        raise ValueError(f"{name} has no tokens{' that the mask keeps' if mask is not None else ''}: "
                         f"the loss over zero tokens is undefined")
    return z.contiguous(), y.to(z.dtype).contiguous()


def _autocast_off(device_type: str):
    """No autocast around the loss arithmetic (a device without autocast, e.g. meta: nothing to do)."""
    if torch.amp.is_autocast_available(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()


def _op(name: str, rows: torch.Tensor):
    """The fused op where it takes these rows, its reference otherwise (wide rows on CUDA)."""
    if fused_row_supported(rows.device.type, rows.dtype, rows.shape[1]):
        return getattr(ops, name)
    return getattr(alignment_reference, name)


def angular_loss(z: torch.Tensor, y: torch.Tensor, mask: Optional[torch.Tensor] = None,
                 eps: float = 1e-8) -> torch.Tensor:
    """Mean over the (unmasked) tokens of -cos(z, y) along the last axis.

    z: projected features [..., D]; y: teacher features, same shape; mask: bool, z.shape[:-1],
    True for the tokens that count. cos = <z, y> / (max(|z|, eps) max(|y|, eps)).
    """
    z2, y2 = _rows("z", z, "y", y, mask)
    with _autocast_off(z2.device.type):
        bias = torch.zeros(z2.shape[1], dtype=z2.dtype, device=z2.device)
        _, cos, _ = _op("bias_normalize_cosine", z2)(z2, bias, y2, eps)
        return -cos.mean()


def scale_loss(pred: torch.Tensor, y: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Mean over the (unmasked) tokens and the channels of (pred - y)^2: the scale term, pred
    being the head's prediction of y from the unit-length projection."""
    p2, y2 = _rows("pred", pred, "y", y, mask)
    with _autocast_off(p2.device.type):
        bias = torch.zeros(p2.shape[1], dtype=p2.dtype, device=p2.device)
        loss, _, _ = _op("bias_mse", p2)(p2, bias, y2)
        return loss


# -- the authors' released loss ---------------------------------------------------------------

_OFFICIAL_EPS = 1e-12  # F.normalize's default, which the released code uses
_ROWS_PER_CHUNK = 16   # (frame, layer) maps reduced at a time: bounds the float32 copies


def _map_stats(pred: torch.Tensor, target: torch.Tensor):
    """Per (frame, layer) map, in float32 (float64): <p, t>, |p|, |t| over the H*W values,
    reduced a few maps at a time so that no full float32 copy of the maps is made."""
    acc = torch.float64 if pred.dtype == torch.float64 else torch.float32
    p, t = pred.reshape(-1, pred.shape[2] * pred.shape[3]), target.reshape(-1, target.shape[2] * target.shape[3])
    dot, p_norm, t_norm = (torch.empty(p.shape[0], dtype=acc, device=p.device) for _ in range(3))
    for start in range(0, p.shape[0], _ROWS_PER_CHUNK):
        rows = slice(start, start + _ROWS_PER_CHUNK)
        pc, tc = p[rows].to(acc), t[rows].to(acc)
        dot[rows], p_norm[rows], t_norm[rows] = (pc * tc).sum(1), pc.norm(dim=1), tc.norm(dim=1)
    return dot, p_norm, t_norm


class _OfficialGFLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, pred, target):
        n, layers, h, w = pred.shape
        dot, p_norm, t_norm = _map_stats(pred, target)
        p_clamped, t_clamped = p_norm.clamp_min(_OFFICIAL_EPS), t_norm.clamp_min(_OFFICIAL_EPS)
        cos = dot / (p_clamped * t_clamped)
        ctx.save_for_backward(pred, target, cos, p_norm, p_clamped, t_clamped)
        return -cos.reshape(n, layers).mean(1).sum() / (h * w)

    @staticmethod
    def backward(ctx, grad):
        pred, target, cos, p_norm, p_clamped, t_clamped = ctx.saved_tensors
        n, layers, h, w = pred.shape
        # d cos / d p = t / (|p| |t|) - cos p / |p|^2 (the second term only where |p| > eps)
        scale = -grad.to(cos.dtype) / (layers * h * w)
        live = (p_norm > _OFFICIAL_EPS).to(cos.dtype)
        a = scale / (p_clamped * t_clamped)            # coefficient of t
        b = -scale * cos * live / (p_clamped * p_clamped)  # coefficient of p
        p, t = pred.reshape(n * layers, -1), target.reshape(n * layers, -1)
        grad_pred = torch.empty_like(p)
        acc = cos.dtype
        for start in range(0, p.shape[0], _ROWS_PER_CHUNK):
            rows = slice(start, start + _ROWS_PER_CHUNK)
            grad_pred[rows] = (a[rows, None] * t[rows].to(acc) + b[rows, None] * p[rows].to(acc)).to(pred.dtype)
        return grad_pred.reshape(pred.shape), None


def official_gf_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The alignment loss of the authors' released Geometry Forcing code (for reproducing their
    checkpoints; not the paper's loss).

    pred, target: [N, L, H, W] maps (N = batch x frames, L = teacher layers, in their code 24
    VGGT layers resized to 512 x 512). Each (frame, layer) map is normalised over its
    flattened H*W values (F.normalize, eps 1e-12), the cosine of the two maps taken, averaged
    over the layers and summed over the frames, then divided by H*W:

        loss = -(1 / (H W)) sum_n mean_l cos(pred[n, l].flatten(), target[n, l].flatten())

    How it differs from the paper (gfcore.functional.angular_loss / GeometryAlignmentLoss): the
    cosine is over spatial positions of one channel map, not over the D channels of each
    token; frames are summed, not averaged; the 1 / (H W) factor scales it down (at 512 x 512,
    by 262144). The returned value is float32 (float64 for float64 maps); no gradient flows into
    target. Rows of any length run on every backend: the reductions are done a few maps at a
    time in float32, in plain PyTorch.
    """
    for arg, value in (("pred", pred), ("target", target)):
        if not isinstance(value, torch.Tensor) or not value.is_floating_point():
            found = value.dtype if isinstance(value, torch.Tensor) else type(value).__name__
            raise TypeError(f"{arg} must be a floating-point tensor [N, L, H, W], got {found}")
        if value.dim() != 4 or value.numel() == 0:
            raise ValueError(f"{arg} must be a non-empty [N, L, H, W] map (N = batch x frames, L = teacher layers), "
                             f"got shape {tuple(value.shape)}")
    if target.shape != pred.shape:
        raise ValueError(f"target must have the shape of pred, {tuple(pred.shape)}, got {tuple(target.shape)}")
    if target.device != pred.device:
        raise ValueError(f"target is on {target.device} but pred is on {pred.device}")
    return _OfficialGFLoss.apply(pred, target.detach().to(pred.dtype))


__all__ = ["angular_loss", "official_gf_loss", "scale_loss"]
