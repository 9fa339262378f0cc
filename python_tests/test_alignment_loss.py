"""GeometryAlignmentLoss: the fused and chunked paths against the reference, and its errors."""
import copy
import re

import pytest
import torch
from torch import nn

import gfcore
from gfcore import GeometryAlignmentLoss
from conftest import record_nvtx_ranges, rel_err, requires_cpu_kernels


def make_loss(dtype=torch.float32, **kwargs):
    config = dict(hidden_dim=24, target_dim=40, projector_dim=32, head_dim=16)
    config.update(kwargs)
    return GeometryAlignmentLoss(**config).to(dtype)


def run(loss_fn, h, y, impl, chunk_size=None):
    """Loss terms and the gradients of h and every parameter for one implementation."""
    loss_fn = copy.deepcopy(loss_fn)
    loss_fn.impl, loss_fn.chunk_size = impl, chunk_size
    h = h.detach().clone().requires_grad_(True)
    out = loss_fn(h, y)
    out.loss.backward()
    grads = {name: p.grad for name, p in loss_fn.named_parameters()}
    return out, h.grad, grads


def assert_same(a, b, rtol, atol):
    out_a, gh_a, gp_a = a
    out_b, gh_b, gp_b = b
    for term in ("loss", "angular", "scale", "cosine"):
        torch.testing.assert_close(getattr(out_a, term).float(), getattr(out_b, term).float(), rtol=rtol, atol=atol)
    torch.testing.assert_close(gh_a.float(), gh_b.float(), rtol=rtol, atol=atol)
    assert gp_a.keys() == gp_b.keys()
    for name in gp_a:
        torch.testing.assert_close(gp_a[name].float(), gp_b[name].float(), rtol=rtol, atol=atol, msg=name)


BF16_EPS = torch.finfo(torch.bfloat16).eps  # 2^-7: the spacing of bf16 numbers at 1


def float64_run(loss_fn, h, y):
    """The reference path in float64 on the same values (bf16 numbers are exact in float64)."""
    return run(copy.deepcopy(loss_fn).double(), h.double(), y.double(), "reference")


def assert_close_to_float64(got, ref, rows):
    """bf16 results against the float64 computation, with tolerances from bf16's precision and the
    magnitudes compared:
    - every gradient within 2 eps of the reference in norm, ||g - g_ref|| <= 2 eps ||g_ref||
      (bf16 keeps 8 significant bits; measured errors are about eps / 2 to eps), so that a zero,
      halved or otherwise wrong gradient fails whatever its absolute size;
    - each scalar term (a mean over `rows` rows of per-row values of order 1 at most, each with
      a relative rounding error of about eps) within 2 eps max(|ref|, 1 / sqrt(rows))."""
    out, gh, gp = got
    out_ref, gh_ref, gp_ref = ref
    for term in ("loss", "angular", "scale", "cosine"):
        value, expected = getattr(out, term).detach().item(), getattr(out_ref, term).detach().item()
        tol = 2 * BF16_EPS * max(abs(expected), rows**-0.5)
        assert abs(value - expected) <= tol, f"{term}: {value} vs float64 {expected} (tolerance {tol:.2e})"
    assert gp.keys() == gp_ref.keys()
    for name, grad, expected in [("h", gh, gh_ref)] + [(n, gp[n], gp_ref[n]) for n in gp_ref]:
        error = rel_err(grad, expected)
        assert error <= 2 * BF16_EPS, f"grad of {name}: relative error {error:.2e} > {2 * BF16_EPS:.2e}"


def test_bf16_tolerance_catches_wrong_gradients():
    """The bf16 check itself: a zeroed or halved gradient fails it (gradients here are ~1e-4)."""
    loss_fn = make_loss(torch.bfloat16)
    h, y = torch.randn(40, 24, dtype=torch.bfloat16), torch.randn(40, 40, dtype=torch.bfloat16)
    ref = float64_run(loss_fn, h, y)
    assert float(ref[1].abs().max()) < 1e-3  # so an absolute 3e-2 tolerance could not tell zero apart
    good = run(loss_fn, h, y, "reference")
    assert_close_to_float64(good, ref, rows=40)
    for broken in (torch.zeros_like(good[1]), good[1] * 0.5):
        with pytest.raises(AssertionError, match="grad of h"):
            assert_close_to_float64((good[0], broken, good[2]), ref, rows=40)


def test_reference_follows_the_paper_formulas():
    """Angular = -mean cos(y, f(h)); scale = element-wise mean of (g(f(h)/|f(h)|) - y)^2."""
    loss_fn = make_loss(torch.float64, num_targets=2, lambda_angular=0.7, lambda_scale=0.3, impl="reference")
    h = torch.randn(3, 5, 24, dtype=torch.float64)
    y = torch.randn(3, 5, 2, 40, dtype=torch.float64)
    out = loss_fn(h, y)
    cos_terms, mse_terms = [], []
    for i in range(2):
        z = loss_fn.projector[i](h)
        cos = (z * y[..., i, :]).sum(-1) / (z.norm(dim=-1) * y[..., i, :].norm(dim=-1))
        pred = loss_fn.head[i](z / z.norm(dim=-1, keepdim=True))
        cos_terms.append(cos)
        mse_terms.append(((pred - y[..., i, :]) ** 2).mean())
    angular = -torch.stack(cos_terms).mean()
    scale = torch.stack(mse_terms).mean()
    torch.testing.assert_close(out.angular, angular)
    torch.testing.assert_close(out.scale, scale)
    torch.testing.assert_close(out.loss, 0.7 * angular + 0.3 * scale)
    torch.testing.assert_close(out.cosine, -angular)


@requires_cpu_kernels
@pytest.mark.parametrize("num_targets", [1, 3])
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-5), (torch.bfloat16, None)])
def test_fused_matches_reference(num_targets, dtype, tol):
    loss_fn = make_loss(dtype, num_targets=num_targets)
    h = torch.randn(2, 7, 5, 24, dtype=dtype)
    y_shape = (2, 7, 5, 40) if num_targets == 1 else (2, 7, 5, num_targets, 40)
    y = torch.randn(y_shape, dtype=dtype)
    if dtype == torch.bfloat16:  # both paths against float64, with tolerances from bf16's precision
        ref = float64_run(loss_fn, h, y)
        for impl in ("fused", "reference"):
            assert_close_to_float64(run(loss_fn, h, y, impl), ref, rows=2 * 7 * 5)
        return
    reference = run(loss_fn, h, y, "reference")
    assert_same(run(loss_fn, h, y, "fused"), reference, rtol=tol, atol=tol)


@requires_cpu_kernels
def test_non_contiguous_h():
    loss_fn = make_loss()
    base = torch.randn(24, 11, 3)
    h = base.permute(2, 1, 0)  # [3, 11, 24] with a non-unit stride on the hidden axis
    assert not h.is_contiguous()
    y = torch.randn(3, 11, 40)
    assert_same(run(loss_fn, h, y, "fused"), run(loss_fn, h.contiguous(), y, "reference"), rtol=1e-5, atol=1e-5)


@requires_cpu_kernels
@pytest.mark.parametrize("chunk_size", [1, 7, 64, 1000])
@pytest.mark.parametrize("num_targets", [1, 2])
def test_chunked_matches_unchunked(chunk_size, num_targets):
    loss_fn = make_loss(torch.float64, num_targets=num_targets)
    h = torch.randn(70, 24, dtype=torch.float64)
    y = torch.randn(70, 40, dtype=torch.float64) if num_targets == 1 else torch.randn(70, 2, 40, dtype=torch.float64)
    assert_same(run(loss_fn, h, y, "fused", chunk_size), run(loss_fn, h, y, "fused"), rtol=1e-10, atol=1e-10)


@requires_cpu_kernels
@pytest.mark.parametrize("num_targets", [1, 2])
def test_chunked_bf16_against_float64(num_targets):
    """The chunked path in bf16: float32 accumulation, gradients in each parameter's dtype."""
    loss_fn = make_loss(torch.bfloat16, num_targets=num_targets)
    h = torch.randn(70, 24, dtype=torch.bfloat16)
    y = torch.randn((70, 40) if num_targets == 1 else (70, num_targets, 40), dtype=torch.bfloat16)
    got = run(loss_fn, h, y, "fused", chunk_size=16)
    assert_close_to_float64(got, float64_run(loss_fn, h, y), rows=70)
    assert got[1].dtype == torch.bfloat16 and all(g.dtype == torch.bfloat16 for g in got[2].values())
    assert all(getattr(got[0], t).dtype == torch.float32 for t in ("loss", "angular", "scale", "cosine"))


@requires_cpu_kernels
@pytest.mark.parametrize("chunk_size", [None, 5])
def test_only_the_first_parameter_needs_grad(chunk_size):
    """Parameter gradients are computed when any one parameter needs them, the first included."""
    loss_fn = make_loss(torch.float64, impl="fused", chunk_size=chunk_size)
    h, y = torch.randn(9, 24, dtype=torch.float64), torch.randn(9, 40, dtype=torch.float64)
    loss_fn.requires_grad_(False)
    loss_fn.flat_parameters()[0].requires_grad_(True)
    reference = copy.deepcopy(loss_fn)
    reference.impl, reference.chunk_size = "reference", None
    loss_fn(h, y).loss.backward()
    reference(h, y).loss.backward()
    got, expected = loss_fn.flat_parameters()[0].grad, reference.flat_parameters()[0].grad
    assert got is not None and expected.norm() > 0
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)


@requires_cpu_kernels
def test_chunked_terms_refuse_a_backward_instead_of_training_nothing():
    """With chunk_size the gradients are computed in the forward for out.loss alone: a loss built
    from out.angular or out.scale would train nothing, so its backward raises."""
    from gfcore.losses.alignment import CHUNKED_TERM_MESSAGE

    loss_fn = make_loss(torch.float64, chunk_size=5)
    h, y = torch.randn(12, 24, dtype=torch.float64, requires_grad=True), torch.randn(12, 40, dtype=torch.float64)
    for term in ("angular", "scale"):
        out = loss_fn(h, y)
        with pytest.raises(RuntimeError, match=re.escape(CHUNKED_TERM_MESSAGE)):
            (out.loss + 0.5 * getattr(out, term)).backward()
    out = loss_fn(h, y)
    reference = make_loss(torch.float64, impl="reference")
    reference.load_state_dict(loss_fn.state_dict())
    expected = reference(h, y)
    torch.testing.assert_close(out.angular, expected.angular.detach())  # the values are still right
    torch.testing.assert_close(out.scale, expected.scale.detach())
    out.loss.backward()  # the supported use is unchanged
    assert h.grad is not None and h.grad.abs().sum() > 0
    with torch.no_grad():
        assert not loss_fn(h, y).angular.requires_grad


def test_chunked_scales_by_incoming_gradient():
    loss_fn = make_loss(torch.float64, chunk_size=16)
    h = torch.randn(40, 24, dtype=torch.float64, requires_grad=True)
    y = torch.randn(40, 40, dtype=torch.float64)
    (3.0 * loss_fn(h, y).loss).backward()
    chunked = h.grad.clone()
    chunked_params = [p.grad.clone() for p in loss_fn.parameters()]
    h.grad = None
    loss_fn.zero_grad()
    loss_fn.chunk_size = None
    (3.0 * loss_fn(h, y).loss).backward()
    torch.testing.assert_close(chunked, h.grad)
    for got, p in zip(chunked_params, loss_fn.parameters()):  # parameter gradients scale too
        torch.testing.assert_close(got, p.grad)


@requires_cpu_kernels
def test_chunked_without_grad_only_computes_the_loss():
    loss_fn = make_loss(chunk_size=8)
    h, y = torch.randn(30, 24), torch.randn(30, 40)
    with torch.no_grad():
        out = loss_fn(h, y)
    loss_fn.chunk_size = None
    with torch.no_grad():
        torch.testing.assert_close(out.loss, loss_fn(h, y).loss)


@requires_cpu_kernels
def test_only_h_or_only_parameters_need_grad():
    loss_fn = make_loss(torch.float64)
    h, y = torch.randn(9, 24, dtype=torch.float64), torch.randn(9, 40, dtype=torch.float64)
    for impl, chunk in (("fused", None), ("fused", 4)):
        loss_fn.impl, loss_fn.chunk_size = impl, chunk
        loss_fn.requires_grad_(False)
        h_leaf = h.clone().requires_grad_(True)
        loss_fn(h_leaf, y).loss.backward()
        assert h_leaf.grad is not None
        loss_fn.requires_grad_(True)
        loss_fn.zero_grad()
        loss_fn(h, y).loss.backward()
        assert all(p.grad is not None for p in loss_fn.parameters())


@requires_cpu_kernels
def test_no_gradient_flows_into_y():
    loss_fn = make_loss(impl="fused")
    h = torch.randn(6, 24, requires_grad=True)
    y = torch.randn(6, 40, requires_grad=True)
    loss_fn(h, y).loss.backward()
    assert y.grad is None and h.grad is not None


@requires_cpu_kernels
def test_autocast_bf16_with_fp32_parameters():
    loss_fn = make_loss(torch.float32)
    h, y = torch.randn(33, 24), torch.randn(33, 40)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fused = run(loss_fn, h, y, "fused")
        reference = run(loss_fn, h, y, "reference")
    assert all(g.dtype == torch.float32 for g in fused[2].values())
    assert fused[1].dtype == torch.float32
    ref = float64_run(loss_fn, h, y)  # autocast rounds the matmul inputs to bf16: bf16's tolerances
    assert_close_to_float64(fused, ref, rows=33)
    assert_close_to_float64(reference, ref, rows=33)


@pytest.mark.parametrize("impl", ["reference", "auto"])
def test_autocast_takes_y_in_any_floating_dtype(impl):
    """Under torch.autocast, y (say fp16 teacher features) is computed in the autocast dtype, as autocast ops do."""
    loss_fn = make_loss(torch.float32, impl=impl)
    h, y = torch.randn(33, 24), torch.randn(33, 40).half().float()  # fp16-exact values
    with torch.autocast("cpu", dtype=torch.bfloat16):
        same = run(loss_fn, h, y, impl)
        for other in (y.half(), y.double(), y.bfloat16()):
            assert_same(run(loss_fn, h, other, impl), same, rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("impl", ["reference", "auto"])
def test_autocast_terms_come_out_in_float32_whatever_y_dtype(impl):
    """The cause of torch 2.11's 'Found dtype Double but expected Float' in this path: y's own
    dtype leaking into the loss arithmetic (float64 targets promoted the terms to float64 and
    handed mse_loss's backward mixed dtypes). y is taken in the autocast dtype and the terms
    accumulate in float32, so every y dtype gives float32 terms, identical values (y is
    bf16-exact) and a backward that runs."""
    loss_fn = make_loss(torch.float32, impl=impl)
    h, y = torch.randn(33, 24), torch.randn(33, 40).bfloat16().float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        same = run(loss_fn, h, y, impl)
        for other in (y.double(), y.half(), y.bfloat16()):
            got = run(loss_fn, h, other, impl)
            for term in ("loss", "angular", "scale", "cosine"):
                assert getattr(got[0], term).dtype == torch.float32, (term, other.dtype)
            assert_same(got, same, rtol=0, atol=0)


@requires_cpu_kernels
@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_torch_compile_fullgraph(backend):
    torch._dynamo.reset()
    loss_fn = make_loss(impl="fused")
    h, y = torch.randn(2, 9, 24), torch.randn(2, 9, 40)
    expected = run(loss_fn, h, y, "fused")
    compiled = torch.compile(loss_fn, fullgraph=True, backend=backend)
    h_leaf = h.clone().requires_grad_(True)
    out = compiled(h_leaf, y)
    out.loss.backward()
    torch.testing.assert_close(out.loss, expected[0].loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(h_leaf.grad, expected[1], rtol=1e-5, atol=1e-6)
    for name, p in loss_fn.named_parameters():
        torch.testing.assert_close(p.grad, expected[2][name], rtol=1e-5, atol=1e-6)


def test_module_structure_is_plain_torch():
    single = make_loss()
    assert isinstance(single.projector, nn.Sequential)
    assert [type(m) for m in single.projector] == [nn.Linear, nn.SiLU, nn.Linear, nn.SiLU, nn.Linear]
    assert [type(m) for m in single.head] == [nn.Linear, nn.SiLU, nn.Linear]
    assert (single.projector[0].in_features, single.projector[4].out_features) == (24, 40)
    assert (single.head[0].out_features, single.head[2].out_features) == (16, 40)
    multi = make_loss(num_targets=3)
    assert len(multi.projector) == 3 and len(multi.head) == 3
    assert multi.projector[0][0].weight.data_ptr() != multi.projector[1][0].weight.data_ptr()


def test_backends_reports_a_dict():
    backends = gfcore.backends()
    assert set(backends) == {"cpu", "cuda"} and all(isinstance(v, bool) for v in backends.values())


@pytest.mark.parametrize("impl", ["reference", "auto"])
def test_bad_inputs_name_the_argument(impl):
    loss_fn = make_loss(impl=impl)
    h, y = torch.randn(4, 24), torch.randn(4, 40)
    with pytest.raises(ValueError, match="h must have last dimension hidden_dim=24"):
        loss_fn(torch.randn(4, 23), y)
    with pytest.raises(ValueError, match=r"y must be \[..., target_dim\]"):
        loss_fn(h, torch.randn(4, 41))
    with pytest.raises(ValueError, match="y must be"):
        loss_fn(h, torch.randn(5, 40))
    with pytest.raises(TypeError, match="h is torch.float64 but the loss parameters are torch.float32"):
        loss_fn(h.double(), y)
    with pytest.raises(TypeError, match="y must be a floating-point tensor"):
        loss_fn(h, y.long())
    with pytest.raises(TypeError, match="y is torch.float16 but h is torch.float32"):
        loss_fn(h, y.half())
    with pytest.raises(TypeError, match="y is torch.float64 but h is torch.float32"):
        loss_fn(h, y.double())
    with pytest.raises(TypeError, match="y is torch.float32 but h is torch.bfloat16"):
        make_loss(torch.bfloat16, impl=impl)(h.bfloat16(), y)
    with pytest.raises(ValueError, match="h is empty"):
        loss_fn(torch.randn(0, 24), torch.randn(0, 40))
    with pytest.raises(ValueError, match="NaN or Inf"):
        loss_fn(h, torch.where(torch.arange(40) == 3, float("nan"), y))
    with pytest.raises(ValueError, match="NaN or Inf"):
        loss_fn(h, torch.full_like(y, float("inf")))
    with pytest.raises(ValueError, match=r"y must be \[..., num_targets, target_dim\]"):
        make_loss(impl=impl, num_targets=2)(h, y)


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="impl must be one of"):
        make_loss(impl="triton")
    with pytest.raises(ValueError, match="chunk_size must be a positive int"):
        make_loss(chunk_size=0)
    with pytest.raises(ValueError, match="chunk_size needs impl"):
        make_loss(impl="reference", chunk_size=8)
    with pytest.raises(ValueError, match="hidden_dim must be a positive int"):
        make_loss(hidden_dim=-1)


def test_fused_without_kernels_for_the_device_says_so():
    loss_fn = make_loss(impl="fused")
    if gfcore.backends()["cpu"]:
        assert loss_fn.resolved_impl(torch.device("cpu")) == "fused"
    if not gfcore.backends()["cuda"]:
        with pytest.raises(RuntimeError, match="no compiled cuda kernels"):
            loss_fn.resolved_impl(torch.device("cuda"))


def test_rows_too_wide_for_the_cuda_kernels_fall_back():
    from gfcore.ops.alignment import fused_row_supported

    assert fused_row_supported("cuda", torch.bfloat16, 4096)
    assert not fused_row_supported("cuda", torch.bfloat16, 4104)
    assert fused_row_supported("cuda", torch.float32, 2048)
    assert not fused_row_supported("cuda", torch.float32, 4096)
    assert fused_row_supported("cuda", torch.float32, 511) and not fused_row_supported("cuda", torch.float32, 515)
    assert fused_row_supported("cpu", torch.float32, 1 << 20)
    loss_fn = make_loss(target_dim=4096)
    if gfcore.backends()["cuda"]:
        assert loss_fn.resolved_impl(torch.device("cuda"), torch.float32) == "reference"
        loss_fn.impl = "fused"
        with pytest.raises(ValueError, match="do not take target_dim=4096"):
            loss_fn.resolved_impl(torch.device("cuda"), torch.float32)


@requires_cpu_kernels
@pytest.mark.parametrize("impl,chunk_size", [("reference", None), ("fused", None), ("fused", 8)])
def test_only_the_loss_carries_a_gradient_and_term_dtypes(impl, chunk_size):
    """The cosine is a statistic (no gradient, float32; float64 for float64 models); the chunked path
    computes gradients during the forward: there angular and scale stay in the graph only to refuse
    a backward (test_chunked_terms_refuse_a_backward_instead_of_training_nothing)."""
    for dtype, stat in ((torch.float32, torch.float32), (torch.bfloat16, torch.float32), (torch.float64, torch.float64)):
        loss_fn = make_loss(dtype, impl=impl, chunk_size=chunk_size)
        out = loss_fn(torch.randn(20, 24, dtype=dtype, requires_grad=True), torch.randn(20, 40, dtype=dtype))
        assert out.loss.requires_grad
        assert not out.cosine.requires_grad
        assert out.cosine.dtype == stat, (impl, dtype, out.cosine.dtype)


@requires_cpu_kernels
def test_chunked_under_autocast_and_non_finite_targets():
    """Autocast with float32 features: the chunked path rounds y to the compute dtype like the fused one."""
    loss_fn = make_loss(torch.float32)
    h, y = torch.randn(33, 24), torch.randn(33, 40)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        chunked = run(loss_fn, h, y, "fused", chunk_size=8)
    assert_close_to_float64(chunked, float64_run(loss_fn, h, y), rows=33)
    y2 = torch.randn(30, 2, 40)
    y2[17, 1, 3] = float("nan")
    for chunk_size in (8, None):  # the message names the target and the first bad token
        with pytest.raises(ValueError, match="in 1 token\\(s\\) of target 1 \\(first at flattened token 17\\)"):
            make_loss(num_targets=2, chunk_size=chunk_size, impl="fused")(torch.randn(30, 24), y2)


@pytest.mark.parametrize("eps", [1e-8, 3.0])
def test_reference_eps_clamps_the_norms(eps):
    """cos = z.y / (max(|z|, eps) max(|y|, eps)) and zhat = z / max(|z|, eps), by hand in float64,
    with an eps large enough (3) to clamp some norms of these small vectors."""
    loss_fn = make_loss(torch.float64, impl="reference", eps=eps, lambda_angular=1.0, lambda_scale=1.0)
    h = 0.3 * torch.randn(12, 24, dtype=torch.float64)
    y = 0.3 * torch.randn(12, 40, dtype=torch.float64)
    out = loss_fn(h, y)
    z = loss_fn.projector(h)
    z_norm, y_norm = z.norm(dim=-1).clamp_min(eps), y.norm(dim=-1).clamp_min(eps)
    cos = (z * y).sum(-1) / (z_norm * y_norm)
    pred = loss_fn.head(z / z_norm[:, None])
    if eps > 1:
        assert (z.norm(dim=-1) < eps).any()
    torch.testing.assert_close(out.angular, -cos.mean(), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(out.scale, ((pred - y) ** 2).mean(), rtol=1e-12, atol=1e-14)


def test_which_implementation_runs(monkeypatch):
    """resolved_impl and the NVTX range name say which path ran; the autograd node confirms it."""
    import gfcore.losses.alignment as alignment_module

    ranges = record_nvtx_ranges(monkeypatch, alignment_module)
    h = torch.randn(6, 24, requires_grad=True)
    y = torch.randn(6, 40)
    assert make_loss(impl="reference").resolved_impl(torch.device("cpu")) == "reference"
    out = make_loss(impl="reference")(h, y)
    assert ranges == ["gfcore.alignment_loss.reference"] and "Fused" not in type(out.angular.grad_fn).__name__
    if not gfcore.backends()["cuda"]:  # auto without kernels for the device: the reference
        assert make_loss(impl="auto").resolved_impl(torch.device("cuda")) == "reference"
    if gfcore.backends()["cpu"]:
        ranges.clear()
        out = make_loss(impl="fused")(h, y)
        assert ranges == ["gfcore.alignment_loss.fused"]
        assert type(out.angular.grad_fn).__name__ == "FusedAlignmentFunctionBackward"
        ranges.clear()
        make_loss(impl="auto", chunk_size=4)(h, y)
        assert ranges == ["gfcore.alignment_loss.fused.chunked"]


def test_more_bad_inputs_and_a_single_token():
    loss_fn = make_loss()
    h, y = torch.randn(4, 24), torch.randn(4, 40)
    for bad_h, bad_y in ((h.tolist(), y), (h, y.tolist())):
        with pytest.raises(TypeError, match="^h and y must be tensors$"):
            loss_fn(bad_h, bad_y)
    with pytest.raises(TypeError, match="^h must be a floating-point tensor, got torch.int64"):
        loss_fn(h.long(), y)
    one = loss_fn(torch.randn(24), torch.randn(40))  # one token, no leading dimensions
    assert one.loss.shape == ()
    meta = torch.device("meta")
    with pytest.raises(ValueError, match="^y is on cpu but h is on meta$"):
        loss_fn(h.to(meta), y)
    with pytest.raises(ValueError, match="^h is on meta but the loss parameters are on cpu: call loss_fn.to\\('meta'\\)$"):
        loss_fn(h.to(meta), y.to(meta))
    with pytest.raises(ValueError, match="^y \\(the teacher features\\) holds NaN or Inf values in target 0$"):
        make_loss(impl="reference")(h, torch.full_like(y, float("nan")))


def test_constructor_defaults_and_argument_names():
    loss_fn = GeometryAlignmentLoss(8, 6)
    assert (loss_fn.projector[0].out_features, loss_fn.head[0].out_features) == (2048, 512)  # the paper's sizes
    assert (loss_fn.lambda_angular, loss_fn.lambda_scale, loss_fn.num_targets) == (0.5, 0.05, 1)
    assert loss_fn.impl == "auto" and loss_fn.chunk_size is None and loss_fn.eps == 1e-8 and loss_fn.check_finite
    for name in ("hidden_dim", "target_dim", "num_targets", "projector_dim", "head_dim", "chunk_size"):
        for bad in (0, True, 2.0):
            with pytest.raises(ValueError, match=f"^{name} must be a positive int, got {bad!r}$"):
                make_loss(**{name: bad})
    with pytest.raises(ValueError, match="^chunk_size needs impl='fused' or 'auto': the reference keeps"):
        make_loss(impl="reference", chunk_size=8)


def test_row_limit_of_the_device_kernels(monkeypatch):
    """As if CUDA kernels were built: rows too wide for them go to the reference (auto, with a warning)
    or raise (fused), naming target_dim and dtype; rows that fit stay fused."""
    import gfcore.losses.alignment as alignment_module

    monkeypatch.setattr(alignment_module, "fused_available", lambda device_type: True)
    warnings = []
    monkeypatch.setattr(alignment_module, "warn_once", warnings.append)
    cuda = torch.device("cuda")
    wide = make_loss(target_dim=4096)
    assert wide.resolved_impl(cuda) == "fused"  # no dtype given: no row check
    assert wide.resolved_impl(cuda, torch.float32) == "reference"
    assert warnings == ["GeometryAlignmentLoss: the fused cuda kernels do not take target_dim=4096 in torch.float32 "
                        "(rows are held in registers); using the reference implementation"]
    assert make_loss(target_dim=2048).resolved_impl(cuda, torch.float32) == "fused"
    assert make_loss(target_dim=4096).resolved_impl(cuda, torch.bfloat16) == "fused"
    wide.impl = "fused"
    with pytest.raises(ValueError, match="^the fused cuda kernels do not take target_dim=4096 in torch.float32 "
                                         "\\(rows are held in registers\\); use impl='auto' or 'reference'$"):
        wide.resolved_impl(cuda, torch.float32)


@requires_cpu_kernels
@pytest.mark.parametrize("chunk_size", [None, 8])
def test_autocast_forward_then_backward_outside_autocast(chunk_size):
    """The usual mixed-precision recipe: the loss under autocast, .backward() after leaving it.
    The fused path must have saved its activations in the autocast dtype (h cast to it), since
    its backward runs without autocast; results within bf16's tolerance of float64."""
    loss_fn = make_loss(torch.float32, chunk_size=chunk_size, impl="fused")
    h, y = torch.randn(33, 24, requires_grad=True), torch.randn(33, 40)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = loss_fn(h, y)
    out.loss.backward()
    got = (out, h.grad, {name: p.grad for name, p in loss_fn.named_parameters()})
    assert h.grad.dtype == torch.float32 and all(g.dtype == torch.float32 for g in got[2].values())
    assert_close_to_float64(got, float64_run(loss_fn, h.detach(), y), rows=33)
