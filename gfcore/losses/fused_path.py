"""The alignment loss through the fused ops: cuBLAS/MKL GEMMs with the memory-bound work
around them (bias + SiLU, normalisation + cosine, the scale MSE) in gfcore's kernels.

Per target, forward (m* are GEMM outputs without bias, so the bias add is fused):
    m1 = x W1^T; s1 = silu(m1 + b1); m2 = s1 W2^T; s2 = silu(m2 + b2); m3 = s2 W3^T
    zhat, cos = normalize_cosine(m3 + b3, y)
    m4 = zhat W4^T; s4 = silu(m4 + b4); m5 = s4 W5^T; mse, diff = mse(m5 + b5, y)
The backward walks the same chain with the saved tensors; the gradient of the MSE is
2 diff / numel, whose scale is folded into the small weight W5 instead of an extra pass.
Without a head (lambda_scale = 0) the chain stops at the cosine: W4..b5 are None.
"""
from typing import List, NamedTuple, Optional

import torch

from gfcore import ops
from gfcore.losses.targets import rows as rows_of
from gfcore.ops.alignment_reference import stat_dtype


# torch.mm(..., out_dtype=float32) for 16-bit CUDA inputs exists in recent torch only.
_MM_HAS_OUT_DTYPE = hasattr(torch.ops.aten.mm, "dtype")


def mm_acc(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b in the accumulation dtype (float32, float64 for float64): for weight gradients,
    which are summed over targets or chunks. On CUDA a 16-bit product is kept in float32
    straight out of the GEMM, without rounding to 16 bits first."""
    if a.is_cuda and a.dtype in (torch.bfloat16, torch.float16) and _MM_HAS_OUT_DTYPE:
        return torch.mm(a, b, out_dtype=torch.float32)
    return torch.mm(a, b).to(stat_dtype(a.dtype))


class TargetWeights(NamedTuple):
    """One target's projector (w1..w3) and head (w4, w5; None without a head) in the compute dtype."""

    w1: torch.Tensor
    b1: torch.Tensor
    w2: torch.Tensor
    b2: torch.Tensor
    w3: torch.Tensor
    b3: torch.Tensor
    w4: Optional[torch.Tensor] = None
    b4: Optional[torch.Tensor] = None
    w5: Optional[torch.Tensor] = None
    b5: Optional[torch.Tensor] = None

    @classmethod
    def from_flat(cls, flat, dtype) -> "TargetWeights":
        return cls(*(p.to(dtype) for p in flat))


class TargetActivations(NamedTuple):
    """What the backward of one target needs (m4..diff_colsum None without a head)."""

    x: torch.Tensor
    y: torch.Tensor
    m1: torch.Tensor
    s1: torch.Tensor
    m2: torch.Tensor
    s2: torch.Tensor
    zhat: torch.Tensor
    cos: torch.Tensor
    norms: torch.Tensor
    m4: torch.Tensor
    s4: torch.Tensor
    diff: torch.Tensor
    diff_colsum: torch.Tensor


def target_forward(x, y, w: TargetWeights, eps: float):
    """Returns (sum of cosines, mse, activations) for one target; x [N, hidden], y [N, D].
    Without a head the mse is None."""
    m1 = torch.mm(x, w.w1.t())
    s1 = ops.bias_silu(m1, w.b1)
    m2 = torch.mm(s1, w.w2.t())
    s2 = ops.bias_silu(m2, w.b2)
    m3 = torch.mm(s2, w.w3.t())
    zhat, cos, norms = ops.bias_normalize_cosine(m3, w.b3, y, eps)
    if w.w4 is None:
        return cos.sum(), None, TargetActivations(x, y, m1, s1, m2, s2, zhat, cos, norms, None, None, None, None)
    m4 = torch.mm(zhat, w.w4.t())
    s4 = ops.bias_silu(m4, w.b4)
    m5 = torch.mm(s4, w.w5.t())
    mse, diff, diff_colsum = ops.bias_mse(m5, w.b5, y)
    acts = TargetActivations(x, y, m1, s1, m2, s2, zhat, cos, norms, m4, s4, diff, diff_colsum)
    return cos.sum(), mse, acts


def target_backward(a: TargetActivations, w: TargetWeights, cos_grad: torch.Tensor, mse_grad: torch.Tensor,
                    eps: float, need_x: bool):
    """Gradients of cos_grad * sum(cos) + mse_grad * mse (0-dim tensors of the accumulation dtype).

    Returns (grad_x or None, [gW1, gb1, ..., gW5, gb5]), parameter gradients in the
    accumulation dtype (float32, float64 for float64 data); without a head only gW1..gb3.
    """
    rows = a.zhat.shape[0]
    head_grads = []
    if w.w4 is None:
        g_zhat = torch.zeros_like(a.zhat)
    else:
        c_mse = mse_grad * (2.0 / a.diff.numel())
        # The MSE gradient 2 diff / numel is tiny: scale the small weight W5 instead of an N x D pass.
        g_w5 = mm_acc(a.diff.t(), a.s4) * c_mse
        g_b5 = a.diff_colsum * c_mse
        g_s4 = torch.mm(a.diff, (w.w5.to(c_mse.dtype) * c_mse).to(w.w5.dtype))
        g_m4, g_b4 = ops.bias_silu_backward(g_s4, a.m4, w.b4)
        g_w4 = mm_acc(g_m4.t(), a.zhat)
        g_zhat = torch.mm(g_m4, w.w4)
        head_grads = [g_w4, g_b4, g_w5, g_b5]
    g_cos = cos_grad.to(a.cos.dtype).expand(rows).contiguous()
    g_m3, g_b3 = ops.bias_normalize_cosine_backward(g_zhat, g_cos, a.zhat, a.y, a.cos, a.norms, eps)
    g_w3 = mm_acc(g_m3.t(), a.s2)
    g_s2 = torch.mm(g_m3, w.w3)
    g_m2, g_b2 = ops.bias_silu_backward(g_s2, a.m2, w.b2)
    g_w2 = mm_acc(g_m2.t(), a.s1)
    g_s1 = torch.mm(g_m2, w.w2)
    g_m1, g_b1 = ops.bias_silu_backward(g_s1, a.m1, w.b1)
    g_w1 = mm_acc(g_m1.t(), a.x)
    g_x = torch.mm(g_m1, w.w1) if need_x else None
    return g_x, [g_w1, g_b1, g_w2, g_b2, g_w3, g_b3] + head_grads


def split_targets(flat_params, targets: int) -> List[list]:
    """Per target its 10 parameters (projector and head) or 6 (projector only)."""
    per_target = len(flat_params) // targets
    return [list(flat_params[i:i + per_target]) for i in range(0, len(flat_params), per_target)]


def check_finite_targets(norms: torch.Tensor, target: int, first_token: int = 0) -> None:
    """|y| is computed by the cosine kernel anyway: it is non-finite iff y holds NaN or Inf.
    first_token: the flattened index of norms' first row (the chunk's start in the chunked path)."""
    if torch.compiler.is_compiling():
        return
    bad = ~torch.isfinite(norms[:, 1])
    if bool(bad.any()):
        first = first_token + int(bad.nonzero()[0, 0])
        raise ValueError(f"y (the teacher features) holds NaN or Inf values in {int(bad.sum())} token(s) of "
                         f"target {target} (first at flattened token {first})")


class FusedAlignmentFunction(torch.autograd.Function):
    """(angular, scale, mean cosine) of the alignment loss; activations kept for backward.

    weights: one float per target (the terms are sum_i w_i term_i); then the targets' y views
    [..., D_i] (token axes flattening to h's rows), then the flat parameters.
    """

    @staticmethod
    def forward(ctx, h, compute_dtype, eps, check_finite, weights, *ys_and_params):
        targets = len(weights)
        ys, flat_params = ys_and_params[:targets], ys_and_params[targets:]
        rows = h.shape[0]
        x = h.to(compute_dtype)
        acc = stat_dtype(compute_dtype)
        cos_total, angular, scale, saved = 0.0, 0.0, h.new_zeros((), dtype=acc), []
        target_weights = [TargetWeights.from_flat(p, compute_dtype) for p in split_targets(flat_params, targets)]
        for i, (w, weight) in enumerate(zip(target_weights, weights)):
            y_i = rows_of(ys[i]).to(compute_dtype).contiguous()
            cos_sum, mse, acts = target_forward(x, y_i, w, eps)
            if check_finite:
                check_finite_targets(acts.norms, i)
            cos_total = cos_total + cos_sum
            angular = angular - weight * cos_sum / rows
            if mse is not None:
                scale = scale + weight * mse
            saved += list(acts) + list(w)
        ctx.save_for_backward(*saved)
        ctx.eps = eps
        ctx.meta = (h.dtype, compute_dtype, [p.dtype for p in flat_params], rows, tuple(weights))
        cosine = cos_total / (rows * targets)
        ctx.mark_non_differentiable(cosine)
        return angular, scale, cosine

    @staticmethod
    def backward(ctx, g_angular, g_scale, _g_cosine):
        h_dtype, compute_dtype, param_dtypes, rows, weights = ctx.meta
        g_angular = g_angular.to(stat_dtype(compute_dtype))
        g_scale = g_scale.to(stat_dtype(compute_dtype))
        need_x = ctx.needs_input_grad[0]
        grad_x, grads = None, []
        saved = ctx.saved_tensors
        n_acts = len(TargetActivations._fields)
        per_target = n_acts + len(TargetWeights._fields)
        for i, start in enumerate(range(0, len(saved), per_target)):
            acts = TargetActivations(*saved[start:start + n_acts])
            w = TargetWeights(*saved[start + n_acts:start + per_target])
            g_x, g_params = target_backward(acts, w, -g_angular * weights[i] / rows, g_scale * weights[i], ctx.eps,
                                            need_x)
            if g_x is not None:
                grad_x = g_x if grad_x is None else grad_x + g_x
            grads.extend(g_params)
        grads = [g.to(dtype) for g, dtype in zip(grads, param_dtypes)]
        grad_h = grad_x.to(h_dtype) if grad_x is not None else None
        return (grad_h, None, None, None, None, *([None] * len(weights)), *grads)
