"""The compiled CPU kernels of the alignment ops against their PyTorch reference."""
import pytest
import torch

from gfcore.ops import alignment_reference as reference
from conftest import requires_cpu_kernels

pytestmark = requires_cpu_kernels
ops = torch.ops.gfcore

SHAPES = [(1, 1), (37, 19), (64, 512), (5, 2048), (300, 40)]
DTYPES = [torch.float64, torch.float32, torch.bfloat16, torch.float16]
# Both sides compute in float32 (float64) and round once; 16-bit outputs may differ by one ulp.
TOL = {torch.float64: 1e-12, torch.float32: 2e-6, torch.bfloat16: 1e-2, torch.float16: 2e-3}


def close(actual, expected, dtype):
    torch.testing.assert_close(actual, expected, rtol=TOL[dtype], atol=TOL[dtype], check_dtype=True)


def close_sums(actual, expected):
    """Column sums add many rows in another order: compare relative to their magnitude."""
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5 * max(float(expected.abs().max()), 1.0))


def inputs(shape, dtype):
    rows, cols = shape
    x = torch.randn(rows, cols, dtype=dtype)
    bias = torch.randn(cols, dtype=dtype)
    y = torch.randn(rows, cols, dtype=dtype) * 3
    return x, bias, y


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_bias_silu_matches_reference(shape, dtype):
    x, bias, _ = inputs(shape, dtype)
    grad = torch.randn_like(x)
    close(ops.bias_silu(x, bias), reference.bias_silu(x, bias), dtype)
    got = ops.bias_silu_backward(grad, x, bias)
    want = reference.bias_silu_backward(grad, x, bias)
    close(got[0], want[0], dtype)
    close_sums(got[1], want[1])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_bias_silu_saturates_like_reference(dtype):
    """Past |x| ~ 87 the kernels' exp is clamped: SiLU must still give x or 0 (and its
    gradient 1 or 0), never inf or NaN, across the row so both vector and tail lanes see it."""
    values = torch.tensor([-1e30, -1e4, -200.0, -88.5, -87.5, -30.0, 0.0, 30.0, 87.5, 88.5, 200.0, 1e4, 1e30])
    x = values.repeat(3, 5).to(dtype)  # 3 x 65: 8 full vectors and a tail per row
    bias = torch.zeros(x.shape[1], dtype=dtype)
    grad = torch.ones_like(x)
    out = ops.bias_silu(x, bias)
    assert torch.isfinite(out).all()
    close(out, reference.bias_silu(x, bias), dtype)
    got_grad, _ = ops.bias_silu_backward(grad, x, bias)
    expected_grad, _ = reference.bias_silu_backward(grad, x, bias)
    assert torch.isfinite(got_grad).all()
    close(got_grad, expected_grad, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_normalize_cosine_matches_reference(shape, dtype):
    x, bias, y = inputs(shape, dtype)
    got = ops.bias_normalize_cosine(x, bias, y, 1e-8)
    want = reference.bias_normalize_cosine(x, bias, y, 1e-8)
    for g, w in zip(got, want):
        close(g, w, dtype if g.dtype == dtype else torch.float32 if dtype != torch.float64 else dtype)
    zhat, cos, norms = got
    grad_zhat = torch.randn_like(zhat)
    grad_cos = torch.randn_like(cos)
    got = ops.bias_normalize_cosine_backward(grad_zhat, grad_cos, zhat, y, cos, norms, 1e-8)
    want = reference.bias_normalize_cosine_backward(grad_zhat, grad_cos, zhat, y, cos, norms, 1e-8)
    close(got[0], want[0], dtype)
    close_sums(got[1], want[1])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_bias_mse_matches_reference(shape, dtype):
    x, bias, y = inputs(shape, dtype)
    got = ops.bias_mse(x, bias, y)
    want = reference.bias_mse(x, bias, y)
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    close(got[0], want[0], acc)
    close(got[1], want[1], dtype)
    close_sums(got[2], want[2])


def test_reference_matches_hand_computation():
    """The spec itself, against the formulas written out by hand for one row."""
    x = torch.tensor([[1.0, -2.0, 0.5]], dtype=torch.float64)
    bias = torch.tensor([0.5, 0.0, -0.5], dtype=torch.float64)
    y = torch.tensor([[3.0, 4.0, 0.0]], dtype=torch.float64)
    z = [1.5, -2.0, 0.0]
    nz = (1.5 ** 2 + 2.0 ** 2) ** 0.5  # 2.5
    zhat, cos, norms = reference.bias_normalize_cosine(x, bias, y, 1e-8)
    assert torch.allclose(zhat, torch.tensor([[v / nz for v in z]], dtype=torch.float64))
    assert torch.allclose(cos, torch.tensor([(1.5 * 3 - 2.0 * 4) / (nz * 5.0)], dtype=torch.float64))
    assert torch.allclose(norms, torch.tensor([[2.5, 5.0]], dtype=torch.float64))
    loss, diff, colsum = reference.bias_mse(x, bias, y)
    assert torch.allclose(diff, torch.tensor([[-1.5, -6.0, 0.0]], dtype=torch.float64))
    assert torch.allclose(loss, torch.tensor((1.5 ** 2 + 36.0) / 3, dtype=torch.float64))
    silu = reference.bias_silu(x, bias)
    a = torch.tensor([1.5, -2.0, 0.0], dtype=torch.float64)
    assert torch.allclose(silu, (a / (1 + torch.exp(-a)))[None])


def test_clamped_norm_gradient_matches_reference():
    """Rows whose |z| is under eps take the clamped branch in both implementations."""
    x = torch.zeros(3, 8, dtype=torch.float64)
    x[1] = 1e-9
    x[2] = torch.randn(8, dtype=torch.float64)
    bias = torch.zeros(8, dtype=torch.float64)
    y = torch.randn(3, 8, dtype=torch.float64)
    eps = 1e-6
    zhat, cos, norms = ops.bias_normalize_cosine(x, bias, y, eps)
    grads = (torch.randn_like(zhat), torch.randn_like(cos))
    got = ops.bias_normalize_cosine_backward(*grads, zhat, y, cos, norms, eps)
    want = reference.bias_normalize_cosine_backward(*grads, zhat, y, cos, norms, eps)
    torch.testing.assert_close(got[0], want[0])


def test_gradcheck_float64():
    x = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(5, dtype=torch.float64, requires_grad=True)
    y = torch.randn(6, 5, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda a, b: ops.bias_silu(a, b), (x, bias))
    assert torch.autograd.gradcheck(lambda a, b: ops.bias_normalize_cosine(a, b, y, 1e-8)[:2], (x, bias))
    assert torch.autograd.gradcheck(lambda a, b: ops.bias_mse(a, b, y)[0], (x, bias))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_opcheck(dtype):
    x = torch.randn(9, 7, dtype=dtype, requires_grad=True)
    bias = torch.randn(7, dtype=dtype, requires_grad=True)
    y = torch.randn(9, 7, dtype=dtype)
    torch.library.opcheck(ops.bias_silu, (x, bias))
    torch.library.opcheck(ops.bias_normalize_cosine, (x, bias, y, 1e-8))
    torch.library.opcheck(ops.bias_mse, (x, bias, y))
    with torch.no_grad():
        zhat, cos, norms = ops.bias_normalize_cosine(x, bias, y, 1e-8)
    torch.library.opcheck(ops.bias_silu_backward, (torch.randn_like(x), x.detach(), bias.detach()))
    torch.library.opcheck(ops.bias_normalize_cosine_backward,
                          (torch.randn_like(zhat), torch.randn_like(cos), zhat, y, cos, norms, 1e-8))


def test_bad_arguments_are_named():
    x, bias, y = inputs((4, 6), torch.float32)
    with pytest.raises(RuntimeError, match="bias must be 1-D of size 6"):
        ops.bias_silu(x, bias[:5])
    with pytest.raises(RuntimeError, match="x must be contiguous"):
        ops.bias_silu(x.t().contiguous().t(), bias)
    with pytest.raises(RuntimeError, match="y must have the shape of x"):
        ops.bias_mse(x, bias, y[:3])
    with pytest.raises(RuntimeError, match="y must have the dtype of x"):
        ops.bias_normalize_cosine(x, bias, y.double(), 1e-8)
    with pytest.raises(RuntimeError, match="x must be 2-D"):
        ops.bias_silu(x[0], bias)


def test_bf16_silu_rounds_to_nearest_even_like_torch():
    """The bf16 SiLU kernels convert by bit arithmetic (vectorised): the result is the float32 value
    rounded to nearest even, as torch rounds; NaN and Inf pass through. The kernel's exp is a
    polynomial (rel. error < 3e-7), so a value within that of a rounding tie may round the other
    way: at most 1 % of elements and one ulp. Truncating instead of rounding would change about half."""
    torch.manual_seed(0)
    x, bias, grad = torch.randn(64, 300).bfloat16(), torch.randn(300).bfloat16(), torch.randn(64, 300).bfloat16()
    a = x.float() + bias.float()
    s = torch.sigmoid(a)
    for got, exact in ((ops.bias_silu(x, bias), a * s),
                       (ops.bias_silu_backward(grad, x, bias)[0], grad.float() * s * (1 + a * (1 - s)))):
        want = exact.bfloat16()
        differ = got != want
        assert differ.float().mean() < 0.01, differ.float().mean()
        ulp = (want.float().abs() * 2.0**-7).clamp_min(2.0**-133)
        assert ((got.float() - want.float()).abs() <= ulp)[differ].all()
    special = x.clone()
    special[0, :2] = torch.tensor([float("nan"), float("inf")])
    out = ops.bias_silu(special, torch.zeros_like(bias))
    assert out[0, 0].isnan() and out[0, 1] == float("inf")
