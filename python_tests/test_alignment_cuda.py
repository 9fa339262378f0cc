"""The alignment ops and loss on CUDA (skipped without a GPU).

Accuracy rule: against a float64 reference, the fused error must be at most twice the
error of the eager (reference) implementation run in the same dtype.
"""
import copy

import pytest
import torch

from gfcore import GeometryAlignmentLoss
from gfcore.ops import alignment_reference as reference
from conftest import rel_err, requires_cuda_kernels

pytestmark = requires_cuda_kernels
ops = torch.ops.gfcore
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
# (rows, cols): odd sizes take the one-value-at-a-time path, 4096 the widest rows of every
# dtype, 8200 a row the normalize/cosine kernels refuse.
SHAPES = [(1, 1), (37, 19), (300, 40), (1000, 512), (257, 2048), (64, 4096), (3000, 1152), (5, 8200)]


def rand(*shape, dtype, scale=1.0):
    return (torch.randn(*shape, device="cuda", dtype=torch.float64) * scale).to(dtype)


def check_against_reference(got, want, dtype):
    """Outputs of a kernel against its reference on the same (rounded) inputs."""
    for g, w in zip(got, want):
        assert g.dtype == w.dtype and g.shape == w.shape
        assert torch.isfinite(g).all()
        err = rel_err(g, w) if w.numel() > 1 else abs(float(g) - float(w)) / max(abs(float(w)), 1e-30)
        # Both compute in float32; outputs rounded once to the storage dtype.
        limit = {torch.float32: 1e-5, torch.bfloat16: 8e-3, torch.float16: 1e-3}[g.dtype if g.dtype in DTYPES else
                                                                                 torch.float32]
        assert err < limit, (err, limit)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_ops_match_reference(shape, dtype):
    rows, cols = shape
    x, bias, y = rand(rows, cols, dtype=dtype), rand(cols, dtype=dtype), rand(rows, cols, dtype=dtype, scale=3)
    grad = rand(rows, cols, dtype=dtype)
    check_against_reference([ops.bias_silu(x, bias)], [reference.bias_silu(x, bias)], dtype)
    check_against_reference(ops.bias_silu_backward(grad, x, bias), reference.bias_silu_backward(grad, x, bias), dtype)
    check_against_reference(ops.bias_mse(x, bias, y), reference.bias_mse(x, bias, y), dtype)
    # The normalize/cosine kernels hold a row in the registers of at most 8 warps: 4 packs of
    # 16 bytes (16 single values when the row cannot be walked in packs) per thread, i.e. 1024
    # packs: 4096 values for float32 and for unaligned rows, 8192 for aligned 16-bit rows.
    vec = 16 // x.element_size() if cols % (16 // x.element_size()) == 0 else 1
    if cols > 1024 * vec:
        with pytest.raises(RuntimeError, match="hold a row in the registers of at most 8 warps"):
            ops.bias_normalize_cosine(x, bias, y, 1e-8)
        return
    got = ops.bias_normalize_cosine(x, bias, y, 1e-8)
    check_against_reference(got, reference.bias_normalize_cosine(x, bias, y, 1e-8), dtype)
    zhat, cos, norms = got
    grad_cos = torch.randn_like(cos)
    check_against_reference(ops.bias_normalize_cosine_backward(grad, grad_cos, zhat, y, cos, norms, 1e-8),
                            reference.bias_normalize_cosine_backward(grad, grad_cos, zhat, y, cos, norms, 1e-8), dtype)


def test_every_output_element_is_written():
    """Poisoned outputs: the caching allocator hands the same NaN-filled blocks back."""
    rows, cols = 513, 2048
    for _ in range(2):
        junk = torch.full((rows * cols * 4,), float("nan"), device="cuda")
        del junk
        x, bias, y = rand(rows, cols, dtype=torch.bfloat16), rand(cols, dtype=torch.bfloat16), rand(
            rows, cols, dtype=torch.bfloat16)
        for out in (ops.bias_silu(x, bias), *ops.bias_normalize_cosine(x, bias, y, 1e-8), *ops.bias_mse(x, bias, y)):
            assert torch.isfinite(out).all()


def test_results_are_deterministic():
    x, bias, y = rand(4097, 2048, dtype=torch.bfloat16), rand(2048, dtype=torch.bfloat16), rand(
        4097, 2048, dtype=torch.bfloat16)
    first = ops.bias_silu_backward(y, x, bias)[1]
    assert torch.equal(first, ops.bias_silu_backward(y, x, bias)[1])
    first = ops.bias_mse(x, bias, y)
    second = ops.bias_mse(x, bias, y)
    assert all(torch.equal(a, b) for a, b in zip(first, second))


def test_opcheck_cuda():
    x = torch.randn(33, 64, device="cuda", requires_grad=True)
    bias = torch.randn(64, device="cuda", requires_grad=True)
    y = torch.randn(33, 64, device="cuda")
    torch.library.opcheck(ops.bias_silu, (x, bias))
    torch.library.opcheck(ops.bias_normalize_cosine, (x, bias, y, 1e-8))
    torch.library.opcheck(ops.bias_mse, (x, bias, y))


def test_float64_is_refused_with_a_clear_message():
    x = torch.randn(4, 8, device="cuda", dtype=torch.float64)
    with pytest.raises(RuntimeError, match="float64 runs on the CPU kernels"):
        ops.bias_silu(x, torch.zeros(8, device="cuda", dtype=torch.float64))


def losses_and_grads(loss_fn, h, y):
    h = h.detach().clone().requires_grad_(True)
    loss_fn.zero_grad(set_to_none=True)
    out = loss_fn(h, y)
    out.loss.backward()
    return [out.loss, out.angular, out.scale, h.grad] + [p.grad for p in loss_fn.parameters()]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("num_targets,chunk_size", [(1, None), (2, None), (1, 1000)])
def test_accuracy_rule_against_float64(dtype, num_targets, chunk_size):
    """|fused - f64| <= 2 |eager - f64| (+ float32 rounding), for the loss terms and all gradients."""
    hidden, target, rows = 192, 256, 3000
    base = GeometryAlignmentLoss(hidden, target, num_targets=num_targets, projector_dim=320, head_dim=128).cuda()
    h = torch.randn(rows, hidden, device="cuda")
    y_shape = (rows, target) if num_targets == 1 else (rows, num_targets, target)
    y = torch.randn(y_shape, device="cuda") * 2

    exact_fn = copy.deepcopy(base).double()
    exact_fn.impl = "reference"
    exact = losses_and_grads(exact_fn, h.double(), y.double())

    def run(impl, chunk):
        loss_fn = copy.deepcopy(base).to(dtype)
        loss_fn.impl, loss_fn.chunk_size = impl, chunk
        return losses_and_grads(loss_fn, h.to(dtype), y.to(dtype))

    eager = run("reference", None)
    fused = run("fused", chunk_size)
    for index, (f, e, x) in enumerate(zip(fused, eager, exact)):
        err_fused, err_eager = rel_err(f, x), rel_err(e, x)
        assert err_fused <= 2 * err_eager + 1e-6, (index, err_fused, err_eager)


@pytest.mark.parametrize("chunk_size", [None, 512])
def test_autocast_bf16_fp32_master_weights(chunk_size):
    loss_fn = GeometryAlignmentLoss(128, 256, projector_dim=256, head_dim=64, chunk_size=chunk_size).cuda()
    h, y = torch.randn(2, 999, 128, device="cuda"), torch.randn(2, 999, 256, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        fused = losses_and_grads(loss_fn, h, y)
        loss_fn.impl, loss_fn.chunk_size = "reference", None
        eager = losses_and_grads(loss_fn, h, y)
    for f, e in zip(fused, eager):
        assert f.dtype == e.dtype or f.dim() == 0
        assert rel_err(f, e) < 3e-2


def test_torch_compile_inductor_cuda():
    torch._dynamo.reset()
    loss_fn = GeometryAlignmentLoss(64, 128, projector_dim=128, head_dim=32, impl="fused").cuda()
    h, y = torch.randn(4, 77, 64, device="cuda"), torch.randn(4, 77, 128, device="cuda")
    expected = losses_and_grads(loss_fn, h, y)
    compiled = torch.compile(loss_fn, fullgraph=True)
    got = losses_and_grads(compiled, h, y)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-5)


def test_chunked_peak_memory_is_lower():
    rows, hidden, target = 32768, 512, 1024
    loss_fn = GeometryAlignmentLoss(hidden, target, projector_dim=1024, head_dim=256).cuda().bfloat16()
    h = torch.randn(rows, hidden, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    y = torch.randn(rows, target, device="cuda", dtype=torch.bfloat16)

    def peak(chunk):
        loss_fn.chunk_size = chunk
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start = torch.cuda.memory_allocated()
        loss_fn(h, y).loss.backward()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - start

    assert peak(2048) < 0.5 * peak(None)
