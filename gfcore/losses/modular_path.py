"""The alignment loss around projectors and heads gfcore did not build (projector=, head=).

gfcore cannot fuse a module it does not know, so the modules run as they are, under autograd;
the two measurements between them, normalise + cosine and the squared error, run gfcore's
fused kernels (forward and backward, float32 accumulation). Rows the device kernels do not
take (too wide for CUDA's registers) use the PyTorch measurements instead.
"""
import torch

from gfcore import ops
from gfcore.losses.reference import Measured, TorchMetrics
from gfcore.ops.alignment import fused_row_supported


def _zero_bias(t: torch.Tensor) -> torch.Tensor:
    return torch.zeros(t.shape[1], dtype=t.dtype, device=t.device)


class KernelMetrics:
    """TorchMetrics' contract on gfcore's kernels: inputs [N, D] contiguous, in the compute dtype."""

    @staticmethod
    def normalize_cosine(z: torch.Tensor, y: torch.Tensor, eps: float) -> Measured:
        if not fused_row_supported(z.device.type, z.dtype, z.shape[1]):
            return TorchMetrics.normalize_cosine(z, y, eps)
        zhat, cos, norms = ops.bias_normalize_cosine(z, _zero_bias(z), y, eps)
        return Measured(zhat, cos, norms[:, 1])

    @staticmethod
    def mse(prediction: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if not fused_row_supported(prediction.device.type, prediction.dtype, prediction.shape[1]):
            return TorchMetrics.mse(prediction, y)
        loss, _, _ = ops.bias_mse(prediction, _zero_bias(prediction), y)
        return loss
