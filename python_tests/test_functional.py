"""gfcore.functional: the losses on features the caller projects, against formulas written out
here in float64 (REPA's projection loss, the paper's scale term) and, for official_gf_loss, golden
values from the authors' released code (python_tests/data/official_gf_loss_golden.npz: their
VGGTAlignmentLoss.forward run on these maps with an identity projector, in float64)."""
from pathlib import Path

import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import LargestAllocation, requires_cpu_kernels
from gfcore.functional import angular_loss, official_gf_loss, scale_loss

GOLDEN = Path(__file__).resolve().parent / "data" / "official_gf_loss_golden.npz"


def repa_projection_loss(z, y):
    """REPA's loss, written out: per sample, the mean over tokens of -<z/|z|, y/|y|>, then the
    mean over samples (equal token counts: the mean over all tokens)."""
    zn, yn = F.normalize(z, dim=-1), F.normalize(y, dim=-1)
    return torch.stack([-(zn[b] * yn[b]).sum(-1).mean() for b in range(z.shape[0])]).mean()


def _grad(fn, x, *rest):
    x = x.detach().clone().requires_grad_(True)
    value = fn(x, *rest)
    value.backward()
    return value.detach(), x.grad


@pytest.mark.parametrize("shape", [(4, 9, 24), (3, 5, 7, 40), (1, 1, 1)])
def test_angular_loss_is_repas_loss(shape):
    g = torch.Generator().manual_seed(0)
    z, y = torch.randn(*shape, generator=g), torch.randn(*shape, generator=g)
    value, grad = _grad(angular_loss, z, y)
    ref, ref_grad = _grad(repa_projection_loss, z.double(), y.double())
    assert value.dtype == torch.float32
    torch.testing.assert_close(value.double(), ref, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(grad.double(), ref_grad, rtol=1e-5, atol=1e-7)
    assert grad.abs().sum() > 0


def test_angular_loss_non_contiguous_and_y_dtype():
    g = torch.Generator().manual_seed(1)
    base, y = torch.randn(9, 4, 32, generator=g), torch.randn(4, 9, 32, generator=g)
    z = base.transpose(0, 1)  # not contiguous
    assert not z.is_contiguous()
    torch.testing.assert_close(angular_loss(z, y), angular_loss(z.contiguous(), y), rtol=0, atol=0)
    torch.testing.assert_close(angular_loss(z, y.double()), angular_loss(z, y), rtol=0, atol=0)


def test_mask_keeps_only_the_named_tokens_and_ignores_nan_padding():
    g = torch.Generator().manual_seed(2)
    z, y = torch.randn(2, 6, 16, generator=g), torch.randn(2, 6, 16, generator=g)
    mask = torch.tensor([[True, True, False, True, False, False], [False, True, True, True, True, False]])
    padded_z, padded_y = z.clone(), y.clone()
    padded_z[~mask], padded_y[~mask] = float("nan"), float("inf")  # padding may hold anything
    value, grad = _grad(angular_loss, padded_z, padded_y, mask)
    ref, ref_grad = _grad(lambda a, b: -F.cosine_similarity(a, b, dim=-1, eps=1e-8).mean(), z[mask].double(),
                          y[mask].double())
    torch.testing.assert_close(value.double(), ref, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(grad[mask].double(), ref_grad, rtol=1e-5, atol=1e-7)
    assert torch.equal(grad[~mask], torch.zeros_like(grad[~mask]))
    s_value, s_grad = _grad(scale_loss, padded_z, padded_y, mask)
    s_ref, s_ref_grad = _grad(lambda a, b: ((a - b) ** 2).mean(), z[mask].double(), y[mask].double())
    torch.testing.assert_close(s_value.double(), s_ref, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(s_grad[mask].double(), s_ref_grad, rtol=1e-5, atol=1e-7)
    assert torch.equal(s_grad[~mask], torch.zeros_like(s_grad[~mask]))


def test_scale_loss_is_the_elementwise_mse():
    g = torch.Generator().manual_seed(3)
    pred, y = torch.randn(3, 7, 40, generator=g), 3 * torch.randn(3, 7, 40, generator=g)
    value, grad = _grad(scale_loss, pred, y)
    ref, ref_grad = _grad(F.mse_loss, pred.double(), y.double())
    torch.testing.assert_close(value.double(), ref, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(grad.double(), ref_grad, rtol=1e-5, atol=1e-9)


def test_bf16_autocast_accumulates_in_float32():
    """Under bf16 autocast the terms come out float32 and within 2x of the plain bf16 formula's
    error against float64 (REPA's loss computed in bf16, as its users run it)."""
    g = torch.Generator().manual_seed(4)
    z, y = torch.randn(8, 64, 96, generator=g).bfloat16(), torch.randn(8, 64, 96, generator=g)
    exact = repa_projection_loss(z.double(), y.bfloat16().double()).item()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = angular_loss(z, y)
        eager = repa_projection_loss(z, y.bfloat16())
    assert got.dtype == torch.float32
    assert abs(got.item() - exact) <= 2 * max(abs(eager.float().item() - exact), 1e-7)


def test_bad_inputs_name_the_argument():
    z, y = torch.randn(2, 3, 8), torch.randn(2, 3, 8)
    with pytest.raises(ValueError, match=r"^y must have the shape of z, \(2, 3, 8\), got \(2, 3, 7\)$"):
        angular_loss(z, y[..., :7])
    with pytest.raises(ValueError, match=r"^mask must have shape \(2, 3\) \(the tokens of z\), got \(3, 2\)$"):
        angular_loss(z, y, torch.ones(3, 2, dtype=torch.bool))
    with pytest.raises(TypeError, match=r"^mask must be a bool tensor of shape \(2, 3\).*got torch.float32$"):
        angular_loss(z, y, torch.ones(2, 3))
    with pytest.raises(ValueError, match="z has no tokens that the mask keeps"):
        angular_loss(z, y, torch.zeros(2, 3, dtype=torch.bool))
    with pytest.raises(TypeError, match="^pred must be a floating-point tensor"):
        scale_loss(torch.ones(2, 3, dtype=torch.long), y)
    with pytest.raises(ValueError, match=r"^target must have the shape of pred, \(2, 3, 4, 4\), got \(2, 3, 4, 5\)$"):
        official_gf_loss(torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 5))
    with pytest.raises(ValueError, match=r"^pred must be a non-empty \[N, L, H, W\] map"):
        official_gf_loss(torch.randn(2, 3, 4), torch.randn(2, 3, 4))


def official_formula(pred, target):
    """The released loss as their code states it: F.normalize each (frame, layer) map over H*W,
    the mean over layers and positions of the product, negated, summed over frames."""
    n, layers = pred.shape[:2]
    p = F.normalize(pred.reshape(n, layers, -1), dim=-1)
    t = F.normalize(target.reshape(n, layers, -1), dim=-1)
    return (-(p * t)).mean(dim=(1, 2)).sum()


def test_official_gf_loss_matches_the_authors_code():
    golden = np.load(GOLDEN, allow_pickle=False)
    pred, target = torch.from_numpy(golden["pred"]), torch.from_numpy(golden["target"])
    value, grad = _grad(official_gf_loss, pred, target)
    assert value.dtype == torch.float64
    torch.testing.assert_close(value, torch.tensor(float(golden["value"]), dtype=torch.float64), rtol=1e-12, atol=0)
    torch.testing.assert_close(grad, torch.from_numpy(golden["grad"]), rtol=1e-10, atol=1e-16)
    value32, grad32 = _grad(official_gf_loss, pred.float(), target.float())
    assert value32.dtype == torch.float32
    torch.testing.assert_close(value32.double(), value, rtol=1e-5, atol=0)
    torch.testing.assert_close(grad32.double(), grad, rtol=1e-4, atol=1e-10)


def test_official_gf_loss_gradcheck_with_a_zero_map():
    g = torch.Generator().manual_seed(5)
    pred = torch.randn(3, 2, 3, 4, generator=g, dtype=torch.float64)
    target = torch.randn(3, 2, 3, 4, generator=g, dtype=torch.float64)
    target[1, 0] = 0  # a zero teacher map: its cosine is 0 (clamped norm), no NaN
    torch.autograd.gradcheck(lambda p: official_gf_loss(p, target), (pred.requires_grad_(True),))
    torch.testing.assert_close(official_gf_loss(pred, target), official_formula(pred, target), rtol=1e-12, atol=0)


def test_official_gf_loss_runs_rows_of_262144_values():
    """The released setting's maps are 512 x 512: rows of 262144 values, reduced in chunks."""
    g = torch.Generator().manual_seed(6)
    pred, target = torch.randn(2, 3, 512, 512, generator=g), torch.randn(2, 3, 512, 512, generator=g)
    target += 0.5 * pred  # a real correlation, so the value is not ~0
    value, grad = _grad(official_gf_loss, pred, target)
    ref, ref_grad = _grad(official_formula, pred.double(), target.double())
    torch.testing.assert_close(value.double(), ref, rtol=1e-5, atol=0)
    torch.testing.assert_close(grad.double(), ref_grad, rtol=1e-4, atol=1e-12)


# -- the edges: devices, chunks, dtypes, which implementation, every message --------------------


def test_official_gf_loss_reduces_many_maps_in_chunks_of_16():
    """40 (frame, layer) maps of bf16: the float32 copies hold at most 16 maps at once (never all), and
    value and gradient are the float64 formula's on the bf16 values, to float32 accumulation's
    precision (a bf16 accumulation would miss by ~1e-3)."""
    g = torch.Generator().manual_seed(7)
    pred = torch.randn(10, 4, 16, 16, generator=g).bfloat16().requires_grad_(True)
    target = (torch.randn(10, 4, 16, 16, generator=g) + pred.detach().float()).bfloat16()
    with LargestAllocation(dtypes=(torch.float32, torch.float64)) as watch:
        value = official_gf_loss(pred, target)
        (grad,) = torch.autograd.grad(value, pred)
    assert watch.largest <= 16 * 16 * 16, watch.largest
    assert value.dtype == torch.float32 and grad.dtype == torch.bfloat16
    exact, exact_grad = _grad(official_formula, pred.detach().double(), target.double())
    torch.testing.assert_close(value.double(), exact, rtol=2e-6, atol=0)
    torch.testing.assert_close(grad.double(), exact_grad.bfloat16().double(), rtol=0, atol=0)


def test_official_gf_loss_zero_pred_map_has_a_finite_gradient():
    """|pred| = 0 clamps: the cosine's second term (along pred) drops out, the gradient is t / (eps |t|)."""
    pred = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    pred[0, 1] = 0
    target = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    value, grad = _grad(official_gf_loss, pred, target)
    assert torch.isfinite(grad).all()
    expected = -target[0, 1] / (1e-12 * target[0, 1].norm()) / (3 * 16)
    torch.testing.assert_close(grad[0, 1], expected, rtol=1e-12, atol=0)


def test_official_gf_loss_takes_target_in_preds_dtype():
    pred, target = torch.randn(2, 3, 8, 8).bfloat16(), torch.randn(2, 3, 8, 8)
    assert torch.equal(official_gf_loss(pred, target), official_gf_loss(pred, target.bfloat16()))


def test_shapes_only_on_the_meta_device():
    """Every helper tensor is made on the inputs' device (a CPU one would not mix with meta); devices
    without compiled kernels (meta, mps, xpu, ...) run the references, rather than fail a lookup."""
    from gfcore._extension import has_kernel

    assert not any(has_kernel("bias_normalize_cosine", device) for device in ("meta", "mps", "xpu"))
    meta = torch.device("meta")
    z, y = torch.randn(2, 5, 8, device=meta, requires_grad=True), torch.randn(2, 5, 8, device=meta)
    for fn in (angular_loss, scale_loss):  # (a mask needs nonzero, which meta tensors cannot run)
        out = fn(z, y)
        assert out.device == meta and out.shape == ()
        out.backward()
    pred = torch.randn(2, 3, 4, 4, device=meta, requires_grad=True)
    out = official_gf_loss(pred, torch.randn(2, 3, 4, 4, device=meta))
    out.backward()
    assert out.device == meta and pred.grad.shape == pred.shape


def test_one_token_and_edge_shapes():
    z, y = torch.randn(7, dtype=torch.float64), torch.randn(7, dtype=torch.float64)
    torch.testing.assert_close(angular_loss(z, y), -F.cosine_similarity(z, y, dim=0), rtol=1e-12, atol=0)
    for shape in ((3, 0), (2, 3, 0)):
        with pytest.raises(ValueError, match=rf"^z must have shape \[..., D\] with D > 0, got {re.escape(str(shape))}$"):
            angular_loss(torch.randn(shape), torch.randn(shape))
    with pytest.raises(ValueError, match=r"^z has no tokens: the loss over zero tokens is undefined$"):
        angular_loss(torch.randn(0, 5), torch.randn(0, 5))
    one = torch.randn(1, 1, 1, 1, dtype=torch.float64)
    assert official_gf_loss(one, one).item() == pytest.approx(-1.0)  # one value: cos 1, divided by H*W = 1
    with pytest.raises(ValueError, match=r"^pred must be a non-empty \[N, L, H, W\] map .*got shape \(0, 2, 3, 3\)$"):
        official_gf_loss(torch.randn(0, 2, 3, 3), torch.randn(0, 2, 3, 3))


def test_every_message_names_its_argument():
    z, y = torch.randn(2, 3, 8), torch.randn(2, 3, 8)
    meta = torch.device("meta")
    with pytest.raises(TypeError, match="^z must be a tensor, got list$"):
        angular_loss(z.tolist(), y)
    with pytest.raises(TypeError, match="^y must be a tensor, got list$"):
        angular_loss(z, y.tolist())
    with pytest.raises(ValueError, match="^y is on meta but z is on cpu$"):
        angular_loss(z, y.to(meta))
    with pytest.raises(TypeError, match=r"^mask must be a bool tensor of shape \(2, 3\) \(the tokens of z\), got list$"):
        angular_loss(z, y, [[True] * 3] * 2)
    with pytest.raises(ValueError, match=r"^y must have the shape of pred, \(2, 3, 8\), got \(2, 3, 7\)$"):
        scale_loss(z, y[..., :7])
    with pytest.raises(ValueError, match="^pred has no tokens that the mask keeps: the loss over zero tokens"):
        scale_loss(z, y, torch.zeros(2, 3, dtype=torch.bool))
    with pytest.raises(TypeError, match=r"^pred must be a floating-point tensor \[N, L, H, W\], got list$"):
        official_gf_loss([1.0], torch.randn(1, 1, 2, 2))
    with pytest.raises(TypeError, match=r"^target must be a floating-point tensor \[N, L, H, W\], got torch.int64$"):
        official_gf_loss(torch.randn(1, 1, 2, 2), torch.ones(1, 1, 2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match=r"^target must be a non-empty \[N, L, H, W\] map"):
        official_gf_loss(torch.randn(1, 1, 2, 2), torch.randn(1, 2, 2))
    with pytest.raises(ValueError, match="^target is on meta but pred is on cpu$"):
        official_gf_loss(torch.randn(1, 1, 2, 2), torch.randn(1, 1, 2, 2, device=meta))


@pytest.mark.parametrize("supported", [pytest.param(True, marks=requires_cpu_kernels), False])
def test_rows_the_kernels_do_not_take_use_the_reference(monkeypatch, supported):
    """The kernels' row check is asked with the rows' device, dtype and width; rows it refuses run the
    PyTorch reference ops (same values), also under autocast, whose casts never reach the loss."""
    import gfcore.functional as functional
    from gfcore.ops import alignment_reference

    asked, ran = [], []
    monkeypatch.setattr(functional, "fused_row_supported", lambda *args: asked.append(args) or supported)
    for name in ("bias_normalize_cosine", "bias_mse"):
        original = getattr(alignment_reference, name)
        monkeypatch.setattr(alignment_reference, name,
                            lambda *a, _name=name, _f=original: ran.append(_name) or _f(*a))
    z, y = torch.randn(4, 6, 24).bfloat16(), torch.randn(4, 6, 24).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        values = [angular_loss(z, y), scale_loss(z, y)]
    assert asked == [("cpu", torch.bfloat16, 24)] * 2
    assert ran == ([] if supported else ["bias_normalize_cosine", "bias_mse"])
    exact = [-F.cosine_similarity(z.double(), y.double(), dim=-1).mean(), F.mse_loss(z.double(), y.double())]
    for value, want in zip(values, exact):
        assert value.dtype == torch.float32
        torch.testing.assert_close(value.double(), want, rtol=1e-5, atol=1e-7)


def test_official_gf_loss_with_more_maps_than_values_per_map():
    """40 maps of 2 x 2 values: the chunks walk the maps (N * L), not the values of one map (H * W)."""
    g = torch.Generator().manual_seed(8)
    pred = torch.randn(10, 4, 2, 2, generator=g, dtype=torch.float64)
    target = torch.randn(10, 4, 2, 2, generator=g, dtype=torch.float64)
    value, grad = _grad(official_gf_loss, pred, target)
    exact, exact_grad = _grad(official_formula, pred, target)
    torch.testing.assert_close(value, exact, rtol=1e-12, atol=0)
    torch.testing.assert_close(grad, exact_grad, rtol=1e-10, atol=1e-14)
