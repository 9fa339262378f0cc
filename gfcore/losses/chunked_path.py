"""Memory-efficient alignment loss: tokens in chunks, gradients computed during the forward.

For each chunk of `chunk_size` tokens the fused forward and backward run at once; the
gradient of h is written into one [N, hidden] buffer and the parameter gradients summed in
float32, so no activation outlives its chunk (the idea of Liger-Kernel's chunked losses).
The backward only scales the stored gradients by the incoming gradient of the loss.
"""
import torch

from gfcore.losses.fused_path import TargetWeights, check_finite_targets, split_targets, target_backward, target_forward
from gfcore.losses.targets import take_rows
from gfcore.ops.alignment_reference import stat_dtype


class ChunkedAlignmentFunction(torch.autograd.Function):
    """Returns (loss, angular, scale, mean cosine); only `loss` carries a gradient.

    Arguments as FusedAlignmentFunction's, with chunk_size, lambda_angular and lambda_scale
    before the per-target weights.
    """

    @staticmethod
    def forward(ctx, h, compute_dtype, eps, check_finite, chunk_size, lambda_angular, lambda_scale, weights,
                *ys_and_params):
        targets, rows = len(weights), h.shape[0]
        ys, flat_params = ys_and_params[:targets], ys_and_params[targets:]
        need_x = ctx.needs_input_grad[0]
        need_params = any(ctx.needs_input_grad[8 + targets:])
        target_weights = [TargetWeights.from_flat(p, compute_dtype) for p in split_targets(flat_params, targets)]
        grad_h = torch.empty_like(h) if need_x else None
        acc = stat_dtype(compute_dtype)
        grad_params = [torch.zeros(p.shape, dtype=acc, device=p.device) for p in flat_params] if need_params else []
        per_target = len(flat_params) // targets
        cos_total = h.new_zeros((), dtype=acc)
        angular = h.new_zeros((), dtype=acc)
        scale = h.new_zeros((), dtype=acc)
        for start in range(0, rows, chunk_size):
            stop = min(rows, start + chunk_size)
            x = h[start:stop].to(compute_dtype)
            share = (stop - start) / rows  # this chunk's share of each target's mean squared error
            grad_x = None
            for i, (w, weight) in enumerate(zip(target_weights, weights)):
                y_i = take_rows(ys[i], start, stop).to(compute_dtype).contiguous()
                cos_sum, mse, acts = target_forward(x, y_i, w, eps)
                if check_finite:
                    check_finite_targets(acts.norms, i, start)
                cos_total += cos_sum
                angular -= weight * cos_sum / rows
                if mse is not None:
                    scale += weight * share * mse
                if need_x or need_params:
                    cos_grad = h.new_tensor(-lambda_angular * weight / rows, dtype=acc)
                    mse_grad = h.new_tensor(lambda_scale * weight * share, dtype=acc)
                    g_x, g_params = target_backward(acts, w, cos_grad, mse_grad, eps, need_x)
                    if need_x:
                        grad_x = g_x if grad_x is None else grad_x + g_x
                    for index, g in enumerate(g_params if need_params else []):
                        grad_params[i * per_target + index] += g
                del acts
            if need_x:
                grad_h[start:stop] = grad_x
        cosine = cos_total / (rows * targets)
        loss = lambda_angular * angular + lambda_scale * scale
        ctx.save_for_backward(*([grad_h] if need_x else []), *grad_params)
        ctx.need_x = need_x
        ctx.param_dtypes = [p.dtype for p in flat_params]
        ctx.targets = targets
        ctx.mark_non_differentiable(angular, scale, cosine)
        return loss, angular, scale, cosine

    @staticmethod
    def backward(ctx, g_loss, _g_angular, _g_scale, _g_cosine):
        saved = list(ctx.saved_tensors)
        grad_h = None
        if ctx.need_x:
            grad_h = saved.pop(0)
            grad_h = grad_h * g_loss.to(grad_h.dtype)
        g = g_loss.to(saved[0].dtype) if saved else g_loss
        grads = [(p * g).to(dtype) for p, dtype in zip(saved, ctx.param_dtypes)]
        grads += [None] * (len(ctx.param_dtypes) - len(grads))
        return (grad_h, None, None, None, None, None, None, None, *([None] * ctx.targets), *grads)
