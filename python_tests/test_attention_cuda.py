"""The fused CUDA attention kernels against a float64 reference (skipped without a GPU).

Accuracy rule (FlashAttention's): the fused op's max error against float64 must be at most
twice the error of the eager PyTorch reference (einops + SDPA) run in the same dtype, for the
output and the gradients of q, k and v.

    python -m pytest python_tests/test_attention_cuda.py -q

GFCORE_ATTENTION_TEST_DEVICE=cpu runs the same assertions through the ops' CPU kernels, which
checks the tests themselves on a machine without a GPU.
"""
import json
import os
import warnings

import pytest
import torch

import gfcore._extension as extension
from _attention_naive import naive_attention, random_rope
from gfcore.nn import FactorizedAttention, rope_1d, rope_2d
from gfcore.ops import attention as attn
from gfcore.ops import attention_dispatch as dispatch

DEVICE = os.environ.get("GFCORE_ATTENTION_TEST_DEVICE", "cuda")
ON_CUDA = DEVICE == "cuda"
if ON_CUDA:
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU visible", allow_module_level=True)
    for _op in ("spatial_attention_fwd", "spatial_attention_bwd", "temporal_attention_fwd",
                "temporal_attention_bwd"):
        if not extension.has_kernel(_op, "cuda"):
            pytest.skip(f"gfcore::{_op} has no CUDA kernel in this build (build with "
                        "GFCORE_CUDA=1)", allow_module_level=True)
cuda_only = pytest.mark.skipif(not ON_CUDA, reason="checks CUDA-only dispatch")

DTYPES = [torch.bfloat16, torch.float16]
# (B, T, P, H, D)
SPATIAL_SHAPES = [(2, 3, 63, 4, 32), (2, 2, 63, 3, 64), (1, 2, 63, 2, 128),  # 7 x 9 grids
                  (1, 1, 1030, 2, 64), (1, 2, 300, 2, 128)]                  # many tiles, ragged
# T <= 64 runs the one-kernel backward; T = 70 the three-kernel fallback.
TEMPORAL_SHAPES = [(2, 1, 37, 3, 64),                                         # T = 1
                   (2, 17, 20, 2, 32), (1, 33, 9, 2, 128), (1, 64, 6, 2, 64),
                   (1, 70, 5, 2, 64)]


def _seq_len(shape, mode):
    return shape[1] if mode == "temporal" else shape[2]


def _inputs(shape, dtype, seed, packed):
    g = torch.Generator().manual_seed(seed)
    if packed:  # q, k, v as the strided views of one [B, T, P, 3, H, D] qkv tensor
        b, t, p, h, d = shape
        qkv = torch.randn(b, t, p, 3, h, d, generator=g).to(device=DEVICE, dtype=dtype)
        return list(qkv.unbind(3))
    return [torch.randn(shape, generator=g).to(device=DEVICE, dtype=dtype) for _ in range(3)]


def _run(impl, mode, causal, q, k, v, rope):
    if mode == "spatial":
        return attn.spatial_attention(q, k, v, rope=rope, impl=impl)
    return attn.temporal_attention(q, k, v, causal=causal, rope=rope, impl=impl)


def _forward_and_grads(impl, mode, causal, q, k, v, rope, grad_out):
    leaves = [x.detach().requires_grad_() for x in (q, k, v)]
    out = _run(impl, mode, causal, *leaves, rope)
    return (out.detach(), *torch.autograd.grad(out, leaves, grad_out))


def _check_accuracy_rule(mode, causal, shape, dtype, use_rope, packed, seed=0):
    q, k, v = _inputs(shape, dtype, seed, packed)
    rope = random_rope(_seq_len(shape, mode), shape[-1], DEVICE) if use_rope else None
    grad_out = torch.randn(shape, generator=torch.Generator().manual_seed(seed + 1))
    grad_out = grad_out.to(device=DEVICE, dtype=dtype)
    fused = _forward_and_grads("fused", mode, causal, q, k, v, rope, grad_out)
    eager = _forward_and_grads("reference", mode, causal, q, k, v, rope, grad_out)
    leaves = [x.detach().double().requires_grad_() for x in (q, k, v)]
    exact_out = naive_attention(*leaves, mode, causal, rope)
    exact = (exact_out, *torch.autograd.grad(exact_out, leaves, grad_out.double()))
    assert fused[0].is_contiguous() and fused[0].shape == shape
    for name, got, base, want in zip(("out", "dq", "dk", "dv"), fused, eager, exact):
        assert got.dtype == dtype, name
        assert torch.isfinite(got).all(), name
        err = (got.double() - want).abs().max().item()
        eager_err = (base.double() - want).abs().max().item()
        assert err <= 2 * eager_err + 1e-6, (
            f"{name}: fused error {err:.3g} > 2 x eager error {eager_err:.3g}")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("use_rope", [False, True], ids=["no_rope", "rope"])
@pytest.mark.parametrize("shape", SPATIAL_SHAPES, ids=str)
def test_spatial_accuracy(shape, use_rope, dtype):
    _check_accuracy_rule("spatial", False, shape, dtype, use_rope, packed=False)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("use_rope", [False, True], ids=["no_rope", "rope"])
@pytest.mark.parametrize("shape", TEMPORAL_SHAPES, ids=str)
def test_temporal_accuracy(shape, use_rope, causal, dtype):
    _check_accuracy_rule("temporal", causal, shape, dtype, use_rope, packed=False)


@pytest.mark.parametrize("mode,causal", [("spatial", False), ("temporal", False),
                                         ("temporal", True)])
@pytest.mark.parametrize("head_dim", [32, 64, 128])
def test_packed_qkv_views(mode, causal, head_dim):
    _check_accuracy_rule(mode, causal, (2, 5, 63, 2, head_dim), torch.bfloat16, use_rope=True,
                         packed=True, seed=3)


@pytest.mark.parametrize("mode,causal", [("spatial", False), ("temporal", True)])
def test_lse_and_strided_grad_out(mode, causal):
    """The saved log-sum-exp is right, and the backward op reads a strided grad_out."""
    shape = (2, 9, 21, 2, 64)
    q, k, v = _inputs(shape, torch.bfloat16, seed=5, packed=True)
    cos, sin = random_rope(_seq_len(shape, mode), 64, DEVICE)
    extra = (causal,) if mode == "temporal" else ()
    fwd = getattr(torch.ops.gfcore, f"{mode}_attention_fwd")
    bwd = getattr(torch.ops.gfcore, f"{mode}_attention_bwd")
    out, lse = fwd(q, k, v, cos, sin, 0.125, *extra)
    _, want_lse = naive_attention(q, k, v, mode, causal, (cos, sin), 0.125, return_lse=True)
    assert lse.dtype == torch.float32 and lse.shape == shape[:4]
    torch.testing.assert_close(lse.double(), want_lse, atol=2e-4, rtol=2e-4)

    grad_packed = torch.randn(*shape[:3], 2, *shape[3:], device=DEVICE).bfloat16()
    grad_out = grad_packed[:, :, :, 1]  # non-contiguous, unit stride on D
    assert not grad_out.is_contiguous()
    got = bwd(grad_out, q, k, v, out, lse, cos, sin, 0.125, *extra)
    want = bwd(grad_out.contiguous(), q, k, v, out, lse, cos, sin, 0.125, *extra)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=0, rtol=0)

    # out.sum() hands the backward an expanded (all-zero-stride) grad_out.
    leaves = [x.detach().requires_grad_() for x in (q, k, v)]
    o = _run("fused", mode, causal, *leaves, (cos, sin))
    o.sum().backward()
    ones = torch.ones_like(o)
    want = bwd(ones, *[x.detach() for x in leaves], o.detach(), lse, cos, sin,
               64 ** -0.5, *extra)
    for leaf, w in zip(leaves, want):
        torch.testing.assert_close(leaf.grad, w, atol=0, rtol=0)


def test_long_spatial_sequence_4096():
    """A 64 x 64 grid, the largest the issue asks for."""
    _check_accuracy_rule("spatial", False, (1, 1, 4096, 2, 64), torch.bfloat16, use_rope=True,
                         packed=True, seed=7)


@pytest.mark.parametrize("mode,causal", [("spatial", False), ("temporal", True)])
def test_opcheck(mode, causal):
    shape = (1, 4, 10, 2, 32)
    q, k, v = (x.requires_grad_() for x in _inputs(shape, torch.bfloat16, 9, packed=False))
    cos, sin = random_rope(_seq_len(shape, mode), 32, DEVICE)
    extra = (causal,) if mode == "temporal" else ()
    fwd = getattr(torch.ops.gfcore, f"{mode}_attention_fwd").default
    torch.library.opcheck(fwd, (q, k, v, cos, sin, 0.2) + extra)
    torch.library.opcheck(fwd, (q, k, v, None, None, 0.2) + extra)


def test_torch_compile_matches_eager():
    shape = (2, 8, 16, 2, 64)
    q, k, v = _inputs(shape, torch.bfloat16, 11, packed=True)
    rope_t, rope_s = rope_1d(8, 64, device=DEVICE), rope_2d(4, 4, 64, device=DEVICE)

    def block(a, b, c):
        x = attn.spatial_attention(a, b, c, rope=rope_s, impl="fused")
        return attn.temporal_attention(x, b, c, causal=True, rope=rope_t, impl="fused")

    compiled = torch.compile(block, fullgraph=True)
    results = []
    for fn in (compiled, block):
        leaves = [x.detach().requires_grad_() for x in (q, k, v)]
        out = fn(*leaves)
        out.float().square().sum().backward()
        results.append((out, *[x.grad for x in leaves]))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("mode", ["spatial", "temporal"])
def test_module_fused_matches_reference(mode):
    torch.manual_seed(13)
    fused = FactorizedAttention(256, 4, impl="fused").to(DEVICE, torch.bfloat16)
    eager = FactorizedAttention(256, 4, impl="reference").to(DEVICE, torch.bfloat16)
    eager.load_state_dict(fused.state_dict())
    x = torch.randn(2, 8, 63, 256, device=DEVICE).bfloat16()
    rope = rope_1d(8, 64, device=DEVICE) if mode == "temporal" else rope_2d(7, 9, 64, device=DEVICE)
    causal = mode == "temporal"
    y_fused = fused(x, mode=mode, causal=causal, rope=rope)
    y_eager = eager(x, mode=mode, causal=causal, rope=rope)
    torch.testing.assert_close(y_fused.float(), y_eager.float(), atol=3e-2, rtol=3e-2)


@cuda_only
@pytest.mark.parametrize("table_says", [None, "fused"], ids=["no_table", "table_names_kernel"])
def test_auto_dispatch_and_fallbacks(monkeypatch, tmp_path, table_says):
    """impl="auto" without a measured table (SDPA views for the spatial pass, the reference for
    the temporal pass) and with a table naming the fused kernel.

    The same decision is checked without a GPU in test_attention_cpu.py::test_auto_dispatch_*.
    """
    monkeypatch.setattr(extension, "_warned", set())
    path = tmp_path / "attention_dispatch.json"
    monkeypatch.setenv("GFCORE_ATTENTION_TABLE", str(path))
    dispatch.load_table.cache_clear()
    if table_says is not None:
        path.write_text(json.dumps({"format": dispatch.FORMAT, "entries": [  # temporal: both causalities
            dict(mode=m, dtype="bfloat16", head_dim=d, seq_len=9, rope=False, causal=c, impl=table_says)
            for m, causals in (("spatial", (False,)), ("temporal", (False, True)))
            for c in causals for d in (48, 64)]}))
    try:
        q, k, v = _inputs((1, 4, 9, 2, 48), torch.bfloat16, 15, packed=False)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            out = attn.temporal_attention(q, k, v)  # head dim 48: no kernel, so the reference
        warned = [w for w in caught if "names the fused kernel" in str(w.message)]
        if table_says == "fused":  # the table's kernel cannot run for the head dim: say so
            assert len(warned) == 1 and issubclass(warned[0].category, UserWarning)
        else:  # the default is the chosen path, not a fallback: nothing to warn about
            assert warned == []
        torch.testing.assert_close(out, attn.temporal_attention(q, k, v, impl="reference"),
                                   atol=0, rtol=0)
        with pytest.raises(ValueError, match="head dims"):
            attn.spatial_attention(q, k, v, impl="fused")
        q32, k32, v32 = _inputs((1, 4, 9, 2, 64), torch.float32, 16, packed=False)
        with pytest.raises(ValueError, match="fp16/bf16"):
            attn.temporal_attention(q32, k32, v32, impl="fused")
        torch.testing.assert_close(attn.temporal_attention(q32, k32, v32, causal=True),
                                   naive_attention(q32, k32, v32, "temporal", True).float(),
                                   atol=1e-5, rtol=1e-4)
        # bf16, head dim 64: "auto" takes what the table says (else the default), and its
        # output is then bit for bit that implementation's.
        q16, k16, v16 = (x.bfloat16() for x in (q32, k32, v32))
        for mode in ("spatial", "temporal"):
            want_impl = table_says or ("sdpa" if mode == "spatial" else "reference")
            assert attn._impl_for(q16, "auto", mode, None, causal=mode == "temporal") == want_impl
            torch.testing.assert_close(_run("auto", mode, True, q16, k16, v16, None),
                                       _run(want_impl, mode, True, q16, k16, v16, None),
                                       atol=0, rtol=0)
    finally:
        dispatch.load_table.cache_clear()


@cuda_only
@pytest.mark.parametrize("packed", [False, True])
def test_sdpa_views_match_reference_cuda(packed):
    """The spatial SDPA-views path on the GPU: bf16 output and gradients near the reference."""
    shape = (2, 3, 63, 2, 64)
    q, k, v = _inputs(shape, torch.bfloat16, 23, packed=packed)
    rope = rope_2d(7, 9, 64, device=DEVICE)
    grad_out = torch.randn(shape, device=DEVICE).bfloat16()
    got = _forward_and_grads("sdpa", "spatial", False, q, k, v, rope, grad_out)
    want = _forward_and_grads("reference", "spatial", False, q, k, v, rope, grad_out)
    for a, b in zip(got, want):
        torch.testing.assert_close(a.float(), b.float(), atol=3e-2, rtol=3e-2)


@cuda_only
def test_kernel_rejects_bad_inputs():
    q, k, v = _inputs((1, 4, 9, 2, 64), torch.bfloat16, 17, packed=False)
    fwd = torch.ops.gfcore.spatial_attention_fwd
    with pytest.raises(RuntimeError, match="rope_cos must be \\[9, 64\\]"):
        fwd(q, k, v, torch.ones(4, 64, device=DEVICE), torch.ones(4, 64, device=DEVICE), 1.0)
    with pytest.raises(RuntimeError, match="k has shape"):
        fwd(q, k[:, :2], v, None, None, 1.0)
    with pytest.raises(RuntimeError, match="v must have unit stride on D"):
        fwd(q, k, v.transpose(-1, -2).contiguous().transpose(-1, -2), None, None, 1.0)
    with pytest.raises(RuntimeError, match="float16 or bfloat16"):
        fwd(q.float(), k.float(), v.float(), None, None, 1.0)
