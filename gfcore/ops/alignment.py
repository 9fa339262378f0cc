"""The alignment-loss ops: torch.library fakes and autograd, and device dispatch.

Kernels: csrc/alignment/ (CPU .cpp, CUDA .cu); schemas: csrc/registration.cpp; the
readable specification of every op: gfcore/ops/alignment_reference.py.

`gfcore.ops.bias_silu(...)` and friends run the compiled kernel for the tensors' device
when there is one and the reference otherwise; `torch.ops.gfcore.*` are the raw ops.
"""
import torch

from gfcore._extension import extension_loaded, has_kernel
from gfcore.ops import alignment_reference as reference
from gfcore.ops.alignment_reference import stat_dtype

OP_NAMES = (
    "bias_silu",
    "bias_silu_backward",
    "bias_normalize_cosine",
    "bias_normalize_cosine_backward",
    "bias_mse",
)


def fused_available(device_type: str) -> bool:
    """True when every alignment op has a compiled kernel for device_type."""
    return all(has_kernel(name, device_type) for name in OP_NAMES)


# The CUDA normalize/cosine kernels hold a row in registers: at most 16 packs per lane of a
# warp, a pack being 16 bytes when the row length allows it (else one value).
_MAX_PACKS_PER_ROW = 16 * 32


def fused_row_supported(device_type: str, dtype: torch.dtype, cols: int) -> bool:
    """Whether the fused kernels take rows of `cols` values of `dtype` on device_type."""
    if device_type != "cuda":
        return True
    if dtype not in (torch.float32, torch.bfloat16, torch.float16):
        return False
    per_pack = 16 // torch.empty((), dtype=dtype).element_size()
    return cols <= _MAX_PACKS_PER_ROW * (per_pack if cols % per_pack == 0 else 1)


def _impl(name: str, device: torch.device):
    if has_kernel(name, device.type):
        return getattr(torch.ops.gfcore, name)
    return getattr(reference, name)


def bias_silu(x, bias):
    return _impl("bias_silu", x.device)(x, bias)


def bias_silu_backward(grad_out, x, bias):
    return _impl("bias_silu_backward", x.device)(grad_out, x, bias)


def bias_normalize_cosine(x, bias, y, eps: float):
    return _impl("bias_normalize_cosine", x.device)(x, bias, y, eps)


def bias_normalize_cosine_backward(grad_zhat, grad_cos, zhat, y, cos, norms, eps: float):
    return _impl("bias_normalize_cosine_backward", zhat.device)(grad_zhat, grad_cos, zhat, y, cos, norms, eps)


def bias_mse(x, bias, y):
    return _impl("bias_mse", x.device)(x, bias, y)


def _register() -> None:
    """Fake kernels (shapes for torch.compile) and autograd formulas of the raw ops."""

    def stats_like(x, *shape):
        return x.new_empty(shape, dtype=stat_dtype(x.dtype))

    @torch.library.register_fake("gfcore::bias_silu")
    def _(x, bias):
        return torch.empty_like(x)

    @torch.library.register_fake("gfcore::bias_silu_backward")
    def _(grad_out, x, bias):
        return torch.empty_like(x), stats_like(x, x.shape[1])

    @torch.library.register_fake("gfcore::bias_normalize_cosine")
    def _(x, bias, y, eps):
        return torch.empty_like(x), stats_like(x, x.shape[0]), stats_like(x, x.shape[0], 2)

    @torch.library.register_fake("gfcore::bias_normalize_cosine_backward")
    def _(grad_zhat, grad_cos, zhat, y, cos, norms, eps):
        return torch.empty_like(zhat), stats_like(zhat, zhat.shape[1])

    @torch.library.register_fake("gfcore::bias_mse")
    def _(x, bias, y):
        return stats_like(x), torch.empty_like(x), stats_like(x, x.shape[1])

    # -- autograd: y is a constant (teacher features); no gradient flows into it. --------

    def silu_setup(ctx, inputs, output):
        x, bias = inputs
        ctx.save_for_backward(x, bias)

    def silu_backward(ctx, grad):
        x, bias = ctx.saved_tensors
        grad_x, grad_bias = torch.ops.gfcore.bias_silu_backward(grad.contiguous(), x, bias)
        return grad_x, grad_bias.to(bias.dtype)

    torch.library.register_autograd("gfcore::bias_silu", silu_backward, setup_context=silu_setup)

    def cosine_setup(ctx, inputs, output):
        _, bias, y, eps = inputs
        zhat, cos, norms = output
        ctx.eps = eps
        ctx.bias_dtype = bias.dtype
        ctx.save_for_backward(zhat, y, cos, norms)

    def cosine_backward(ctx, grad_zhat, grad_cos, _grad_norms):
        zhat, y, cos, norms = ctx.saved_tensors
        grad_x, grad_bias = torch.ops.gfcore.bias_normalize_cosine_backward(
            grad_zhat.contiguous(), grad_cos.contiguous(), zhat, y, cos, norms, ctx.eps)
        return grad_x, grad_bias.to(ctx.bias_dtype), None, None

    torch.library.register_autograd("gfcore::bias_normalize_cosine", cosine_backward, setup_context=cosine_setup)

    def mse_setup(ctx, inputs, output):
        x, bias, _ = inputs
        _, diff, diff_colsum = output
        ctx.bias_dtype = bias.dtype
        ctx.save_for_backward(diff, diff_colsum)

    def mse_backward(ctx, grad_loss, _grad_diff, _grad_colsum):
        # d mean(diff^2) / d x = 2 diff / numel: the op already holds diff and its column sums.
        diff, diff_colsum = ctx.saved_tensors
        scale = grad_loss * (2.0 / diff.numel())
        grad_x = (diff.to(scale.dtype) * scale).to(diff.dtype)
        return grad_x, (diff_colsum * scale).to(ctx.bias_dtype), None

    torch.library.register_autograd("gfcore::bias_mse", mse_backward, setup_context=mse_setup)


if extension_loaded():
    _register()
