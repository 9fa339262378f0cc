"""GeometryAlignmentLoss as other codebases use it: their own projector and head, no head at all,
targets of several widths with weights, the teacher's layer axis anywhere, token masks."""
import copy
import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gfcore import GeometryAlignmentLoss
from conftest import LargestAllocation, record_nvtx_ranges, rel_err, requires_cpu_kernels

IMPLS = ["reference", pytest.param("fused", marks=requires_cpu_kernels)]


def repa_mlp(hidden, width, out):
    """REPA's build_mlp, as written in its code base: three Linears with SiLU, xavier weights, zero biases."""
    mlp = nn.Sequential(nn.Linear(hidden, width), nn.SiLU(), nn.Linear(width, width), nn.SiLU(), nn.Linear(width, out))
    for m in mlp:
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            nn.init.zeros_(m.bias)
    return mlp


def paper_terms(h, ys, projectors, heads, weights):
    """The paper's formulas, by hand: sum_i w_i (-mean cos) and sum_i w_i mean (g(zhat) - y)^2."""
    angular = scale = 0.0
    for y, projector, head, w in zip(ys, projectors, heads, weights):
        z = projector(h)
        angular = angular - w * ((z * y).sum(-1) / (z.norm(dim=-1) * y.norm(dim=-1))).mean()
        if head is not None:
            scale = scale + w * ((head(z / z.norm(dim=-1, keepdim=True)) - y) ** 2).mean()
    return angular, scale


def grads_of(value, tensors):
    return torch.autograd.grad(value, tensors, allow_unused=True)


@pytest.mark.parametrize("impl", IMPLS)
def test_external_projector_angular_only_is_repas_loss(impl):
    """REPA's projector as it is, lambda_scale=0: the loss owns nothing, and value and gradients are
    REPA's proj_loss (mean over tokens of -cos) in float64."""
    torch.manual_seed(0)
    projector = repa_mlp(24, 32, 40).double()
    loss_fn = GeometryAlignmentLoss(target_dim=40, projector=projector, lambda_angular=1.0, lambda_scale=0, impl=impl)
    assert list(loss_fn.parameters()) == [] and loss_fn.state_dict() == {} and loss_fn.head is None
    h = torch.randn(3, 7, 24, dtype=torch.float64, requires_grad=True)
    y = torch.randn(3, 7, 40, dtype=torch.float64)
    out = loss_fn(h, y)
    z = projector(h)
    expected = -F.cosine_similarity(F.normalize(z, dim=-1), F.normalize(y, dim=-1), dim=-1).mean()
    torch.testing.assert_close(out.loss, expected, rtol=1e-12, atol=1e-14)
    assert out.scale.item() == 0 and not out.scale.requires_grad
    got = grads_of(out.loss, [h, *projector.parameters()])
    want = grads_of(expected, [h, *projector.parameters()])
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("impl", IMPLS)
def test_external_head_and_projector_follow_the_paper(impl):
    torch.manual_seed(1)
    projector, head = repa_mlp(24, 32, 40).double(), nn.Sequential(nn.Linear(40, 16), nn.GELU(), nn.Linear(16, 40))
    head = head.double()
    loss_fn = GeometryAlignmentLoss(target_dim=40, projector=projector, head=head, lambda_angular=0.5,
                                    lambda_scale=0.05, impl=impl)
    h = torch.randn(11, 24, dtype=torch.float64, requires_grad=True)
    y = torch.randn(11, 40, dtype=torch.float64)
    out = loss_fn(h, y)
    angular, scale = paper_terms(h, [y], [projector], [head], [1.0])
    torch.testing.assert_close(out.angular, angular, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(out.scale, scale, rtol=1e-12, atol=1e-14)
    params = [h, *projector.parameters(), *head.parameters()]
    for g, w in zip(grads_of(out.loss, params), grads_of(0.5 * angular + 0.05 * scale, params)):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-13)


def test_caller_modules_are_referenced_not_owned():
    """The model keeps its checkpoint keys and its init; a default head next to an external projector
    is the loss's own (its parameters, its state_dict)."""
    projector = repa_mlp(24, 32, 40)
    before = copy.deepcopy(projector.state_dict())
    loss_fn = GeometryAlignmentLoss(target_dim=40, projector=projector, head_dim=16)
    assert all(torch.equal(before[k], v) for k, v in projector.state_dict().items())
    assert sorted(loss_fn.state_dict()) == ["head.0.bias", "head.0.weight", "head.2.bias", "head.2.weight"]
    assert loss_fn.target_modules()[0][0] is projector
    loss_fn.double()  # moves the loss's own head only
    assert projector[0].weight.dtype == torch.float32 and loss_fn.head[0].weight.dtype == torch.float64


PATHS = [("reference", None), pytest.param("fused", None, marks=requires_cpu_kernels),
         pytest.param("fused", 4, marks=requires_cpu_kernels)]


@pytest.mark.parametrize("impl,chunk_size", PATHS)
def test_lambda_scale_zero_builds_no_head(impl, chunk_size):
    torch.manual_seed(2)
    loss_fn = GeometryAlignmentLoss(24, 40, projector_dim=32, lambda_scale=0.0, lambda_angular=1.0, impl=impl,
                                    chunk_size=chunk_size).double()
    assert loss_fn.head is None
    assert sorted(loss_fn.state_dict()) == [f"projector.{i}.{p}" for i in (0, 2, 4) for p in ("bias", "weight")]
    h = torch.randn(2, 9, 24, dtype=torch.float64, requires_grad=True)
    y = torch.randn(2, 9, 40, dtype=torch.float64)
    out = loss_fn(h, y)
    assert out.scale.item() == 0.0
    angular, _ = paper_terms(h, [y], [loss_fn.projector], [None], [1.0])
    torch.testing.assert_close(out.loss, angular, rtol=1e-12, atol=1e-14)
    params = [h, *loss_fn.parameters()]
    for g, w in zip(grads_of(out.loss, params), grads_of(angular, params)):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("impl,chunk_size", PATHS)
def test_targets_of_different_widths_with_weights(impl, chunk_size):
    """DINOv2-like 24 + VGGT-like 40 channels, one projector and head each, weights 1 and 0.25."""
    torch.manual_seed(3)
    loss_fn = GeometryAlignmentLoss(24, [24, 40], projector_dim=32, head_dim=16, target_weights=[1.0, 0.25],
                                    impl=impl, chunk_size=chunk_size).double()
    assert [p[4].out_features for p in loss_fn.projector] == [24, 40]
    h = torch.randn(2, 7, 24, dtype=torch.float64, requires_grad=True)
    ys = [torch.randn(2, 7, 24, dtype=torch.float64), torch.randn(2, 7, 40, dtype=torch.float64)]
    out = loss_fn(h, ys)
    angular, scale = paper_terms(h, ys, loss_fn.projector, loss_fn.head, [1.0, 0.25])
    torch.testing.assert_close(out.angular, angular, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(out.scale, scale, rtol=1e-12, atol=1e-14)
    params = [h, *loss_fn.parameters()]
    for g, w in zip(grads_of(out.loss, params), grads_of(0.5 * angular + 0.05 * scale, params)):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("impl,chunk_size", PATHS)
@pytest.mark.parametrize("h_layout", ["tokens", "grid"])
def test_teacher_layout_with_the_layer_axis_inside(impl, chunk_size, h_layout):
    """y [B, T, L, h, w, D] (the teacher protocol) against h [B, T, h*w, C] or [B, T, h, w, C]: the same
    loss as y permuted to [..., L, D], and y is never copied whole (only one layer at a time)."""
    torch.manual_seed(4)
    B, T, L, gh, gw, C, D = 2, 3, 3, 2, 3, 24, 40
    loss_fn = GeometryAlignmentLoss(C, D, num_targets=L, projector_dim=32, head_dim=16, impl=impl,
                                    chunk_size=chunk_size, layer_dim=2)
    h = torch.randn(B, T, gh * gw, C) if h_layout == "tokens" else torch.randn(B, T, gh, gw, C)
    y = torch.randn(B, T, L, gh, gw, D)
    with LargestAllocation() as watch:
        out = loss_fn(h, y)
    assert watch.largest < y.numel(), f"a tensor of {watch.largest} values (y has {y.numel()})"
    permuted = copy.deepcopy(loss_fn)
    permuted.layer_dim = None
    expected = permuted(h.reshape(B, T, gh * gw, C), y.permute(0, 1, 3, 4, 2, 5).reshape(B, T, gh * gw, L, D))
    for term in ("loss", "angular", "scale", "cosine"):
        torch.testing.assert_close(getattr(out, term), getattr(expected, term), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("impl,chunk_size", PATHS)
def test_mask_keeps_only_its_tokens(impl, chunk_size):
    """The loss over the kept tokens only; dropped tokens get exactly zero gradient."""
    torch.manual_seed(5)
    loss_fn = GeometryAlignmentLoss(24, 40, projector_dim=32, head_dim=16, impl=impl, chunk_size=chunk_size).double()
    h = torch.randn(2, 6, 24, dtype=torch.float64, requires_grad=True)
    y = torch.randn(2, 6, 40, dtype=torch.float64)
    mask = torch.rand(2, 6) > 0.4
    mask[0, 0], mask[1, 5] = True, False
    out = loss_fn(h, y, mask)
    angular, scale = paper_terms(h[mask], [y[mask]], [loss_fn.projector], [loss_fn.head], [1.0])
    torch.testing.assert_close(out.angular, angular, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(out.scale, scale, rtol=1e-12, atol=1e-14)
    (grad_h,) = grads_of(out.loss, [h])
    assert torch.count_nonzero(grad_h[~mask]) == 0 and torch.count_nonzero(grad_h[mask].abs().sum(-1)) == mask.sum()


def test_bad_drop_in_inputs_name_the_argument():
    loss_fn = GeometryAlignmentLoss(24, 40, projector_dim=32, head_dim=16)
    h, y = torch.randn(2, 5, 24), torch.randn(2, 5, 40)
    with pytest.raises(ValueError, match=r"^mask must have shape \(2, 5\) \(the token axes of h\), got \(2, 4\)$"):
        loss_fn(h, y, torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(TypeError, match=r"^mask must be a bool tensor of shape \(2, 5\) .*got torch.float32$"):
        loss_fn(h, y, torch.ones(2, 5))
    with pytest.raises(ValueError, match="^mask keeps no token"):
        loss_fn(h, y, torch.zeros(2, 5, dtype=torch.bool))
    two = GeometryAlignmentLoss(24, [16, 40], projector_dim=32, head_dim=16)
    with pytest.raises(ValueError, match=r"^y is a list of 1 tensors but the loss has 2 target\(s\)"):
        two(h, [torch.randn(2, 5, 16)])
    with pytest.raises(ValueError, match=r"^y\[1\] must be a list of 2 tensors .*last dimension 40, got \(2, 5, 41\)$"):
        two(h, [torch.randn(2, 5, 16), torch.randn(2, 5, 41)])
    with pytest.raises(ValueError, match=r"^y must be a list of 2 tensors \[..., target_dim\[i\]\] \(target_dim=\[16, 40\]\)"):
        two(h, torch.randn(2, 5, 2, 40))
    with pytest.raises(ValueError, match=r"^y\[0\] must be .* with token axes \(2, 5\)"):
        two(h, [torch.randn(2, 4, 16), torch.randn(2, 5, 40)])
    layered = GeometryAlignmentLoss(24, 40, num_targets=3, projector_dim=32, head_dim=16, layer_dim=1)
    with pytest.raises(ValueError, match=r"a layer axis of size num_targets=3 at dim 1 \(not the last\), got shape"):
        layered(h, torch.randn(2, 2, 5, 40))
    wrong = GeometryAlignmentLoss(target_dim=40, projector=repa_mlp(24, 32, 39), lambda_scale=0)
    with pytest.raises(ValueError, match=r"^the projector of target 0 must map to \[tokens, target_dim\] = \(10, 40\), "
                                         r"got \(10, 39\)$"):
        wrong(h, y)
    bad_head = GeometryAlignmentLoss(24, 40, projector_dim=32, head=nn.Linear(40, 41))
    with pytest.raises(ValueError, match=r"^the head of target 0 must map to \[tokens, target_dim\] = \(10, 40\)"):
        bad_head(h, y)


def test_bad_drop_in_constructor_arguments():
    with pytest.raises(ValueError, match="^head= was given but lambda_scale=0"):
        GeometryAlignmentLoss(24, 40, head=nn.Linear(40, 40), lambda_scale=0)
    with pytest.raises(ValueError, match="^chunk_size needs gfcore's own projector and head"):
        GeometryAlignmentLoss(target_dim=40, projector=nn.Linear(24, 40), chunk_size=8)
    with pytest.raises(ValueError, match="^hidden_dim is needed to build gfcore's projector"):
        GeometryAlignmentLoss(target_dim=40)
    with pytest.raises(ValueError, match=r"^projector must be an nn.Module \(one target\) or a list of 2 nn.Modules"):
        GeometryAlignmentLoss(target_dim=[8, 8], projector=nn.Linear(24, 8))
    with pytest.raises(ValueError, match=r"^num_targets=3 but target_dim lists 2 widths"):
        GeometryAlignmentLoss(24, [8, 8], num_targets=3)
    with pytest.raises(ValueError, match=r"^target_dim\[1\] must be a positive int, got 0$"):
        GeometryAlignmentLoss(24, [8, 0])
    with pytest.raises(ValueError, match=r"^target_dim must be a positive int or a non-empty list"):
        GeometryAlignmentLoss(24, [])
    for weights in ([1.0], [1.0, -1.0], [0.0, 0.0], [1.0, float("nan")]):
        with pytest.raises(ValueError, match=r"^target_weights must be 2 finite non-negative numbers"):
            GeometryAlignmentLoss(24, [8, 8], target_weights=weights)
    with pytest.raises(ValueError, match=r"^layer_dim must be an int"):
        GeometryAlignmentLoss(24, 8, num_targets=2, layer_dim=1.0)


@requires_cpu_kernels
def test_reference_under_autocast_is_as_accurate_as_the_fused_path():
    """bf16 autocast: the reference's error against float64 is at most twice the fused path's, on the
    terms and every gradient (both accumulate the loss arithmetic in float32). Errors are averaged
    over four draws (a single draw's rounding can favour either path); the terms' errors are
    absolute (the mean cosine of a random projector is near 0), the gradients' relative."""
    def errors(seed):
        torch.manual_seed(seed)
        base = GeometryAlignmentLoss(64, 96, projector_dim=128, head_dim=32)
        h, y = torch.randn(256, 64), torch.randn(256, 96)

        def run(impl, dtype=None):
            loss_fn = copy.deepcopy(base)
            loss_fn.impl = impl
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype is None):
                loss_fn = loss_fn.to(dtype or torch.float32)
                hh = h.to(dtype or torch.float32).clone().requires_grad_(True)
                out = loss_fn(hh, y.to(dtype or torch.float32))
            out.loss.backward()
            return [out.angular.detach(), out.scale.detach(), hh.grad] + [p.grad for p in loss_fn.parameters()]

        exact = run("reference", torch.float64)
        per_path = []
        for impl in ("fused", "reference"):
            got = run(impl)
            assert got[0].dtype == got[1].dtype == torch.float32
            per_path.append([abs(got[0].item() - exact[0].item()), abs(got[1].item() - exact[1].item())]
                            + [rel_err(g.double(), e) for g, e in zip(got[2:], exact[2:])])
        return torch.tensor(per_path)

    mean = sum(errors(seed) for seed in range(4)) / 4
    fused, reference = mean
    assert (reference <= 2 * fused).all(), list(zip(reference.tolist(), fused.tolist()))


def test_a_model_hidden_state_with_an_external_projector_trains():
    """Four AdamW steps of a model whose own projector feeds the loss: the projector learns and the
    mean cosine rises."""
    torch.manual_seed(7)
    model = nn.ModuleDict(dict(body=nn.Linear(16, 24), projector=repa_mlp(24, 32, 40)))
    loss_fn = GeometryAlignmentLoss(target_dim=40, projector=model["projector"], lambda_scale=0, lambda_angular=1.0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    x, y = torch.randn(64, 16), torch.randn(64, 40)
    cosines = []
    for _ in range(4):
        out = loss_fn(model["body"](x), y)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        cosines.append(out.cosine.item())
    assert cosines[-1] > cosines[0] + 0.05, cosines


@requires_cpu_kernels
def test_external_projector_under_torch_compile():
    """The modular path (the caller's projector, gfcore's cosine and MSE ops) compiles in one graph and
    gives the eager values and gradients."""
    torch._dynamo.reset()
    torch.manual_seed(8)
    projector = repa_mlp(24, 32, 40)
    loss_fn = GeometryAlignmentLoss(target_dim=40, projector=projector, head_dim=16, impl="fused")
    h, y = torch.randn(2, 9, 24), torch.randn(2, 9, 40)
    params = [*projector.parameters(), *loss_fn.parameters()]
    eager = loss_fn(h, y).loss
    want = grads_of(eager, params)
    compiled = torch.compile(loss_fn, fullgraph=True, backend="aot_eager")(h, y).loss
    torch.testing.assert_close(compiled, eager, rtol=1e-6, atol=1e-7)
    for g, w in zip(grads_of(compiled, params), want):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-7)


def test_layout_messages_say_where_the_layer_axis_is():
    h = torch.randn(2, 5, 24)
    default_axis = GeometryAlignmentLoss(24, 40, num_targets=3, projector_dim=32, head_dim=16)
    with pytest.raises(ValueError, match=r"^y must be \[..., num_targets, target_dim\] \(num_targets\) or a list of "
                                         r"num_targets tensors \[..., target_dim\]: a layer axis of size num_targets=3 "
                                         r"at dim -2 \(not the last\), got shape \(2, 5, 40\)$"):
        default_axis(h, torch.randn(2, 5, 40))
    axis_one = GeometryAlignmentLoss(24, 40, num_targets=3, projector_dim=32, head_dim=16, layer_dim=1)
    with pytest.raises(ValueError, match=r"^y must be \[..., num_targets, target_dim\] \(num_targets at dim 1\) or a "
                                         r"list"):
        axis_one(h, torch.randn(2, 2, 5, 40))


def test_take_rows_is_a_view_where_the_layout_allows():
    from gfcore.losses.targets import take_rows

    y = torch.randn(4, 6, 5)
    rows = take_rows(y, 3, 9)  # spans two [6, 5] blocks of a contiguous tensor: still a view
    assert rows.untyped_storage().data_ptr() == y.untyped_storage().data_ptr()
    torch.testing.assert_close(rows, y.reshape(-1, 5)[3:9], rtol=0, atol=0)
    layered = torch.randn(2, 3, 4, 5)  # [B, L, N, D]: a selected layer's rows are strided per batch
    view = layered.select(1, 2)
    torch.testing.assert_close(take_rows(view, 2, 7), view.reshape(-1, 5)[2:7], rtol=0, atol=0)


def test_kernel_metrics_fall_back_to_torch_for_rows_the_kernels_refuse(monkeypatch):
    """The row check is asked with the rows' device, dtype and width; refused rows run TorchMetrics
    (same values); accepted ones the kernels. Helper tensors live on the rows' device (meta here)."""
    from gfcore.losses import modular_path
    from gfcore.losses.reference import TorchMetrics

    z, y = torch.randn(6, 40, dtype=torch.float64), torch.randn(6, 40, dtype=torch.float64)
    want = TorchMetrics.normalize_cosine(z, y, 1e-8), TorchMetrics.mse(z, y)
    for supported in (False, True):
        asked = []
        monkeypatch.setattr(modular_path, "fused_row_supported", lambda *a: asked.append(a) or supported)
        measured, mse = modular_path.KernelMetrics.normalize_cosine(z, y, 1e-8), modular_path.KernelMetrics.mse(z, y)
        assert asked == [("cpu", torch.float64, 40)] * 2
        for got, expected in zip((*measured, mse), (*want[0], want[1])):
            torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-14)
    monkeypatch.undo()
    meta = torch.device("meta")
    measured = modular_path.KernelMetrics.normalize_cosine(z.to(meta), y.to(meta), 1e-8)
    assert measured.zhat.device == meta and modular_path.KernelMetrics.mse(z.to(meta), y.to(meta)).device == meta


def test_reference_spec_defaults_are_the_mean_in_hs_dtype():
    """reference_alignment_terms called as the spec: weights default to the mean over targets, the compute
    dtype to h's, and non-finite y is not checked unless asked."""
    from gfcore.losses.reference import reference_alignment_terms

    torch.manual_seed(9)
    h = torch.randn(5, 8, dtype=torch.float64)
    projectors = [nn.Linear(8, 6).double(), nn.Linear(8, 4).double()]
    heads = [nn.Linear(6, 6).double(), None]
    ys = [torch.randn(5, 6, dtype=torch.float64), torch.randn(5, 4, dtype=torch.float64)]
    angular, scale, cosine = reference_alignment_terms(h, ys, projectors, heads, 1e-8)
    want_angular, want_scale = paper_terms(h, ys, projectors, heads, [0.5, 0.5])
    assert angular.dtype == scale.dtype == torch.float64
    torch.testing.assert_close(angular, want_angular, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(scale, want_scale, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(cosine, -want_angular, rtol=1e-12, atol=1e-14)
    ys[1][0, 0] = float("nan")
    assert reference_alignment_terms(h, ys, projectors, heads, 1e-8)[0].isnan()  # unchecked by default
    with pytest.raises(ValueError, match="NaN or Inf values in target 1"):
        reference_alignment_terms(h, ys, projectors, heads, 1e-8, check_finite=True)


@pytest.mark.parametrize("impl,chunk_size", PATHS)
def test_under_autocast_y_is_taken_in_the_compute_dtype(impl, chunk_size):
    """float32 teacher features under bf16 autocast give exactly the result of the same features rounded
    to bf16 first: y is computed in the autocast dtype, like h and the weights."""
    torch.manual_seed(10)
    loss_fn = GeometryAlignmentLoss(24, 40, projector_dim=32, head_dim=16, impl=impl, chunk_size=chunk_size)
    h, y = torch.randn(33, 24), torch.randn(33, 40)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        a, b = loss_fn(h, y), loss_fn(h, y.bfloat16())
    for term in ("loss", "angular", "scale", "cosine"):
        assert torch.equal(getattr(a, term), getattr(b, term)), term


@requires_cpu_kernels
def test_one_chunk_is_the_unchunked_fused_path_in_bf16():
    """With one chunk the chunked path runs the same computation as the fused one: h cast to the compute
    dtype and the gradient scales kept in float32 (a bf16-rounded scale would shift every gradient by up
    to 2^-9 relative)."""
    torch.manual_seed(11)
    base = GeometryAlignmentLoss(24, 40, projector_dim=32, head_dim=16, impl="fused")
    h, y = torch.randn(33, 24), torch.randn(33, 40)
    results = []
    for chunk_size in (None, 64):
        loss_fn = copy.deepcopy(base)
        loss_fn.chunk_size = chunk_size
        hh = h.clone().requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = loss_fn(hh, y)
        out.loss.backward()
        results.append([out.loss.detach(), hh.grad] + [p.grad for p in loss_fn.parameters()])
    for fused, chunked in zip(*results):
        assert rel_err(chunked.double(), fused.double()) <= 1e-5


@pytest.mark.parametrize("h_shape,y_shape", [((6, 24), (2, 3, 40)), ((2, 6, 24), (2, 2, 3, 40)),
                                             ((24,), (40,))])
def test_token_axes_may_merge_the_targets_last_two(h_shape, y_shape):
    """y's token axes are h's, or h's last token axis is y's last two merged; tokens pair in row-major order."""
    torch.manual_seed(12)
    loss_fn = GeometryAlignmentLoss(24, 40, projector_dim=32, head_dim=16).double()
    h, y = torch.randn(h_shape, dtype=torch.float64), torch.randn(y_shape, dtype=torch.float64)
    torch.testing.assert_close(loss_fn(h, y).loss, loss_fn(h.reshape(-1, 24), y.reshape(-1, 40)).loss,
                               rtol=1e-12, atol=1e-14)


def test_layer_axis_positions_and_their_limits():
    torch.manual_seed(13)
    h = torch.randn(5, 24, dtype=torch.float64)
    ys = torch.randn(3, 5, 40, dtype=torch.float64)  # [L, N, D]
    reference = GeometryAlignmentLoss(24, 40, num_targets=3, projector_dim=32, head_dim=16).double()
    expected = reference(h, ys.transpose(0, 1)).loss
    for layer_dim in (0, -3):  # the first axis, by either index (-3 is -y.dim())
        loss_fn = copy.deepcopy(reference)
        loss_fn.layer_dim = layer_dim
        torch.testing.assert_close(loss_fn(h, ys).loss, expected, rtol=1e-12, atol=1e-14)
    loss_fn = copy.deepcopy(reference)
    loss_fn.layer_dim = 1  # y.dim() - 2, a positive index
    torch.testing.assert_close(loss_fn(h, ys.transpose(0, 1)).loss, expected, rtol=1e-12, atol=1e-14)
    one_token = copy.deepcopy(reference)  # y [L, D] against h [C]: one token, the default axis -2
    one_token.layer_dim = None
    assert one_token(h[0], ys[:, 0]).loss.shape == ()
    for bad in (2, 3, 5, -4):  # the last axis (D), and axes outside y
        loss_fn.layer_dim = bad
        with pytest.raises(ValueError, match=rf"a layer axis of size num_targets=3 at dim {bad} \(not the last\), "
                                             rf"got shape \(3, 5, 40\)$"):
            loss_fn(h, ys)
    with pytest.raises(ValueError, match=r"^y must be \[..., target_dim\] with token axes \(4,\) \(those of h\) and "
                                         r"last dimension 40, got \(\)$"):
        GeometryAlignmentLoss(24, 40, projector_dim=32, head_dim=16)(torch.randn(4, 24), torch.tensor(1.0))


def test_list_and_view_messages_in_full():
    h = torch.randn(2, 5, 24)
    single = GeometryAlignmentLoss(24, 40, projector_dim=32, head_dim=16)
    with pytest.raises(ValueError, match=r"^y is a list of 2 tensors but the loss has 1 target\(s\) \(target_dim=40\)$"):
        single(h, [torch.randn(2, 5, 40)] * 2)
    two = GeometryAlignmentLoss(24, [16, 40], projector_dim=32, head_dim=16)
    with pytest.raises(ValueError, match=r"^y is a list of 3 tensors but the loss has 2 target\(s\) "
                                         r"\(target_dim=\[16, 40\]\)$"):
        two(h, [torch.randn(2, 5, 16)] * 3)
    layered = GeometryAlignmentLoss(24, 40, num_targets=2, projector_dim=32, head_dim=16, layer_dim=1)
    with pytest.raises(ValueError, match=r"^y.select\(1, 0\) must be \[..., num_targets, target_dim\] \(num_targets at "
                                         r"dim 1\) or a list of num_targets tensors \[..., target_dim\] with token axes "
                                         r"\(2, 5\) \(those of h\) and last dimension 40, got \(2, 5, 41\)$"):
        layered(h, torch.randn(2, 2, 5, 41))
    with pytest.raises(TypeError, match=r"^mask must be a bool tensor of shape \(2, 5\) \(the token axes of h\), "
                                        r"got list$"):
        single(h, torch.randn(2, 5, 40), [[True] * 5] * 2)


def test_constructor_accepts_and_records_what_it_was_given():
    assert GeometryAlignmentLoss(8).target_dim == 2048  # VGGT's width by default
    assert GeometryAlignmentLoss(8, [16, 40], projector_dim=8, head_dim=8).target_dim == [16, 40]
    assert GeometryAlignmentLoss(8, 40, projector_dim=8, head_dim=8).target_dim == 40
    projectors = nn.ModuleList([nn.Linear(8, 6), nn.Linear(8, 4)])  # a ModuleList is one module per target
    loss_fn = GeometryAlignmentLoss(target_dim=[6, 4], projector=projectors, lambda_scale=0)
    assert [p for p, _ in loss_fn.target_modules()] == list(projectors)
    with pytest.raises(ValueError, match=r"^head must be an nn.Module \(one target\) or a list of 2 nn.Modules, one per "
                                         r"target; got 1 item\(s\)$"):
        GeometryAlignmentLoss(8, [6, 4], head=[nn.Linear(6, 6)])
    with pytest.raises(ValueError, match=r"^chunk_size needs gfcore's own projector and head: projector= or head= "
                                         r"modules cannot be run in chunks inside the fused chain$"):
        GeometryAlignmentLoss(8, 6, head=nn.Linear(6, 6), chunk_size=4)
    for weights in ([float("inf"), 1.0], [-0.5, 1.0]):
        with pytest.raises(ValueError, match=r"^target_weights must be 2 finite non-negative numbers"):
            GeometryAlignmentLoss(8, [6, 4], target_weights=weights)
    zero = GeometryAlignmentLoss(8, [6, 4], projector_dim=8, head_dim=8, target_weights=[1.0, 0.0]).double()
    h, ys = torch.randn(5, 8, dtype=torch.float64), [torch.randn(5, 6, dtype=torch.float64),
                                                     torch.randn(5, 4, dtype=torch.float64)]
    angular, scale = paper_terms(h, ys, zero.projector, zero.head, [1.0, 0.0])  # a zero weight is allowed
    torch.testing.assert_close(zero(h, ys).angular, angular, rtol=1e-12, atol=1e-14)


def test_which_measurements_run_around_the_callers_modules(monkeypatch):
    """impl='fused' measures with gfcore's kernels (KernelMetrics), 'reference' with PyTorch's; the NVTX
    range says '.modules'; without kernels for the device, 'fused' refuses and 'auto' takes the reference."""
    import gfcore.losses.alignment as alignment_module
    from gfcore.losses import modular_path
    from gfcore.losses.reference import TorchMetrics

    used = []

    class RecordingKernels(modular_path.KernelMetrics):
        @staticmethod
        def normalize_cosine(z, y, eps):
            used.append("kernels")
            return modular_path.KernelMetrics.normalize_cosine(z, y, eps)

    ranges = record_nvtx_ranges(monkeypatch, alignment_module)
    monkeypatch.setattr(alignment_module, "KernelMetrics", RecordingKernels)
    projector = repa_mlp(24, 32, 40)
    h, y = torch.randn(6, 24), torch.randn(6, 40)
    GeometryAlignmentLoss(target_dim=40, projector=projector, lambda_scale=0, impl="reference")(h, y)
    assert used == [] and ranges == ["gfcore.alignment_loss.reference.modules"]
    if alignment_module.fused_available("cpu"):
        GeometryAlignmentLoss(target_dim=40, projector=projector, lambda_scale=0, impl="fused")(h, y)
        assert used == ["kernels"] and ranges[-1] == "gfcore.alignment_loss.fused.modules"
    monkeypatch.setattr(alignment_module, "fused_available", lambda device_type: False)
    with pytest.raises(RuntimeError, match=r"^impl='fused' but gfcore has no compiled cpu kernels \(gfcore.backends\(\) "
                                           r"== .*\); use impl='auto' or rebuild the extension$"):
        GeometryAlignmentLoss(24, 40, impl="fused").resolved_impl(torch.device("cpu"))
    assert GeometryAlignmentLoss(24, 40, impl="auto").resolved_impl(torch.device("cpu")) == "reference"


def test_kernel_metrics_use_the_kernels_for_rows_they_take(monkeypatch):
    from gfcore.losses import modular_path
    from gfcore.losses.reference import TorchMetrics

    calls = []
    monkeypatch.setattr(TorchMetrics, "normalize_cosine", staticmethod(lambda *a: calls.append("torch cos")))
    monkeypatch.setattr(TorchMetrics, "mse", staticmethod(lambda *a: calls.append("torch mse")))
    monkeypatch.setattr(modular_path, "fused_row_supported", lambda *a: True)
    z, y = torch.randn(4, 8), torch.randn(4, 8)
    modular_path.KernelMetrics.normalize_cosine(z, y, 1e-8)
    modular_path.KernelMetrics.mse(z, y)
    assert calls == []


@requires_cpu_kernels
def test_chunked_gradient_scales_stay_float32_for_bf16_h():
    """bf16 h and weights outside autocast: the chunked path's gradient constants are float32, so one chunk
    equals the fused path (a constant made in h's dtype would be rounded to 8 bits)."""
    torch.manual_seed(14)
    base = GeometryAlignmentLoss(24, 40, projector_dim=32, head_dim=16, impl="fused").bfloat16()
    h, y = torch.randn(33, 24).bfloat16(), torch.randn(33, 40).bfloat16()
    results = []
    for chunk_size in (None, 64):
        loss_fn = copy.deepcopy(base)
        loss_fn.chunk_size = chunk_size
        hh = h.clone().requires_grad_(True)
        loss_fn(hh, y).loss.backward()
        results.append([hh.grad] + [p.grad for p in loss_fn.parameters()])
    for fused, chunked in zip(*results):
        assert rel_err(chunked.double(), fused.double()) <= 2e-4, rel_err(chunked.double(), fused.double())


def test_the_last_axis_is_never_the_layer_axis():
    """y [L, N, D] with D == L: layer_dim pointing at D is refused, not silently taken."""
    loss_fn = GeometryAlignmentLoss(24, 3, num_targets=3, projector_dim=32, head_dim=16, layer_dim=2)
    with pytest.raises(ValueError, match=r"a layer axis of size num_targets=3 at dim 2 \(not the last\)"):
        loss_fn(torch.randn(5, 24), torch.randn(3, 5, 3))


def test_target_views_refuses_non_tensors_by_name():
    from gfcore.losses.targets import target_views

    with pytest.raises(TypeError, match=r"^y\[1\] must be a tensor, got list$"):
        target_views([torch.randn(5, 4), [0.0] * 4], [4, 4], None, (5,), torch.device("cpu"))


@requires_cpu_kernels
@pytest.mark.parametrize("frozen", ["h", "parameters"])
def test_chunked_terms_refuse_a_backward_whichever_input_trains(frozen):
    """The chunked terms stay in the graph through whatever needs a gradient, h or the parameters alone, so
    that a backward through them raises the explanation instead of 'does not require grad'."""
    from gfcore.losses.alignment import CHUNKED_TERM_MESSAGE

    loss_fn = GeometryAlignmentLoss(24, 40, projector_dim=32, head_dim=16, impl="fused", chunk_size=4)
    h = torch.randn(9, 24, requires_grad=frozen != "h")
    loss_fn.requires_grad_(frozen != "parameters")
    out = loss_fn(h, torch.randn(9, 40))
    for term in (out.angular, out.scale):
        with pytest.raises(RuntimeError, match=re.escape(CHUNKED_TERM_MESSAGE)):
            term.backward(retain_graph=True)
