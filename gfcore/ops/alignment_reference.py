"""The readable specification of the alignment-loss kernels, in plain PyTorch.

Each function here has the same signature and outputs as the gfcore:: op of the same name
(csrc/registration.cpp). The CPU and CUDA kernels are tested against these. All arithmetic
is done in float32 (float64 for float64 inputs) and outputs are cast back, as the kernels do.
"""
import torch
import torch.nn.functional as F


def _acc(t: torch.Tensor) -> torch.Tensor:
    """Upcast to the accumulation dtype: float64 stays, everything else computes in float32."""
    return t.to(stat_dtype(t.dtype))


def stat_dtype(dtype: torch.dtype) -> torch.dtype:
    """Dtype of the kernels' reductions (loss, cosine, norms, column sums)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def bias_silu(x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    return F.silu(_acc(x) + _acc(bias)).to(x.dtype)


def bias_silu_backward(grad_out, x, bias):
    a = _acc(x) + _acc(bias)
    s = torch.sigmoid(a)
    grad_x = _acc(grad_out) * s * (1 + a * (1 - s))
    return grad_x.to(x.dtype), grad_x.sum(0)


def bias_normalize_cosine(x, bias, y, eps: float):
    z = _acc(x) + _acc(bias)
    yf = _acc(y)
    z_norm = z.norm(dim=-1)
    y_norm = yf.norm(dim=-1)
    zhat = z / z_norm.clamp_min(eps)[:, None]
    cos = (z * yf).sum(-1) / (z_norm.clamp_min(eps) * y_norm.clamp_min(eps))
    norms = torch.stack([z_norm, y_norm], dim=1)
    return zhat.to(x.dtype), cos, norms


def bias_normalize_cosine_backward(grad_zhat, grad_cos, zhat, y, cos, norms, eps: float):
    """d/dz of (zhat, cos) for z = x + bias, written with the saved zhat.

    With r = 1 / max(|z|, eps) and s = 1 / max(|y|, eps), when |z| > eps:
      d zhat . g = r (g - zhat <zhat, g>)      d cos = r (s y - cos zhat)
    When |z| <= eps the clamp makes |z| a constant, so only r g and r s y remain.
    """
    g = _acc(grad_zhat)
    zh = _acc(zhat)
    yf = _acc(y)
    r = 1.0 / _acc(norms[:, 0]).clamp_min(eps)
    s = 1.0 / _acc(norms[:, 1]).clamp_min(eps)
    live = (_acc(norms[:, 0]) > eps).to(r.dtype)  # 0 where the norm was clamped
    gc = _acc(grad_cos)
    zh_dot_g = (zh * g).sum(-1)
    grad = r[:, None] * (
        g - live[:, None] * zh * zh_dot_g[:, None]
        + gc[:, None] * (s[:, None] * yf - live[:, None] * _acc(cos)[:, None] * zh)
    )
    return grad.to(zhat.dtype), grad.sum(0)


def bias_mse(x, bias, y):
    diff = _acc(x) + _acc(bias) - _acc(y)
    loss = (diff * diff).mean()
    return loss, diff.to(x.dtype), diff.sum(0)
