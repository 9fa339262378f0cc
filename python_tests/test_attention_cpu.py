"""Factorized attention on CPU: the reference, the ops' CPU kernels, the module, RoPE tables,
opcheck, torch.compile and bad inputs. Everything is compared against the independent float64
attention in _attention_naive.py."""
import json
import math
import warnings

import pytest
import torch

from _attention_naive import naive_attention, random_rope
import gfcore._extension as extension
from gfcore.nn import FactorizedAttention, rope_1d, rope_2d
from gfcore.ops import attention as attn
from gfcore.ops import attention_dispatch as dispatch
from gfcore.ops import attention_reference as ref

# (B, T, P, H, D): an odd 7 x 9 grid, a single frame, an odd T.
SHAPES = [(2, 3, 63, 2, 16), (2, 1, 12, 3, 8), (1, 5, 6, 2, 32)]
CASES = [("spatial", False), ("temporal", False), ("temporal", True)]


def _inputs(shape, dtype=torch.float32, seed=0, packed=False):
    g = torch.Generator().manual_seed(seed)
    if packed:  # the three strided views of one [B, T, P, 3, H, D] qkv tensor
        b, t, p, h, d = shape
        qkv = torch.randn(b, t, p, 3, h, d, generator=g).to(dtype)
        return list(qkv.unbind(3))
    return [torch.randn(shape, generator=g).to(dtype) for _ in range(3)]


def _run(impl, mode, causal, q, k, v, rope=None, scale=None):
    if mode == "spatial":
        return attn.spatial_attention(q, k, v, rope=rope, scale=scale, impl=impl)
    return attn.temporal_attention(q, k, v, causal=causal, rope=rope, scale=scale, impl=impl)


def _seq_len(shape, mode):
    return shape[1] if mode == "temporal" else shape[2]


def _forward_and_grads(impl, mode, causal, q, k, v, rope, grad_out):
    leaves = [x.detach().clone().requires_grad_() for x in (q, k, v)]
    out = _run(impl, mode, causal, *leaves, rope=rope)
    grads = torch.autograd.grad(out, leaves, grad_out)
    return out.detach(), grads


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("mode,causal", CASES)
@pytest.mark.parametrize("use_rope", [False, True])
@pytest.mark.parametrize("impl", ["reference", "fused"])
def test_matches_naive_fp32(impl, mode, causal, use_rope, shape):
    q, k, v = _inputs(shape)
    rope = random_rope(_seq_len(shape, mode), shape[-1]) if use_rope else None
    grad_out = torch.randn(shape)
    out, grads = _forward_and_grads(impl, mode, causal, q, k, v, rope, grad_out)
    leaves = [x.double().requires_grad_() for x in (q, k, v)]
    expected = naive_attention(*leaves, mode, causal, rope)
    expected_grads = torch.autograd.grad(expected, leaves, grad_out.double())
    assert out.dtype == torch.float32 and out.is_contiguous() and out.shape == shape
    torch.testing.assert_close(out.double(), expected, atol=2e-5, rtol=1e-4)
    for g, e in zip(grads, expected_grads):
        torch.testing.assert_close(g.double(), e, atol=5e-5, rtol=1e-4)


@pytest.mark.parametrize("mode,causal", CASES)
def test_fused_bf16_meets_accuracy_rule(mode, causal):
    """bf16 op kernel vs float64: at most twice the error of the eager reference in bf16."""
    shape = (2, 4, 63, 2, 32)
    q, k, v = _inputs(shape, torch.bfloat16, seed=1)
    rope = random_rope(_seq_len(shape, mode), shape[-1])
    grad_out = torch.randn(shape).bfloat16()
    fused, fused_grads = _forward_and_grads("fused", mode, causal, q, k, v, rope, grad_out)
    eager, eager_grads = _forward_and_grads("reference", mode, causal, q, k, v, rope, grad_out)
    leaves = [x.double().requires_grad_() for x in (q, k, v)]
    exact = naive_attention(*leaves, mode, causal, rope)
    exact_grads = torch.autograd.grad(exact, leaves, grad_out.double())
    assert fused.dtype == torch.bfloat16 and all(g.dtype == torch.bfloat16 for g in fused_grads)
    for got, base, want in zip((fused, *fused_grads), (eager, *eager_grads), (exact, *exact_grads)):
        err = (got.double() - want).abs().max().item()
        eager_err = (base.double() - want).abs().max().item()
        assert err <= 2 * eager_err + 1e-6, (err, eager_err)


@pytest.mark.parametrize("mode,causal", CASES)
def test_packed_qkv_views_match_contiguous(mode, causal):
    shape = (2, 3, 10, 2, 16)
    q, k, v = _inputs(shape, packed=True)
    assert not q.is_contiguous() and q.stride(-1) == 1
    rope = random_rope(_seq_len(shape, mode), shape[-1])
    for impl in ("reference", "fused"):
        out = _run(impl, mode, causal, q, k, v, rope=rope)
        want = _run(impl, mode, causal, q.contiguous(), k.contiguous(), v.contiguous(), rope=rope)
        assert out.is_contiguous()
        torch.testing.assert_close(out, want, atol=1e-6, rtol=1e-6)


def test_lse_and_custom_scale():
    shape = (1, 4, 9, 2, 8)
    q, k, v = _inputs(shape, seed=3)
    for mode, causal in CASES:
        if mode == "spatial":
            out, lse = torch.ops.gfcore.spatial_attention_fwd(q, k, v, None, None, 0.3)
        else:
            out, lse = torch.ops.gfcore.temporal_attention_fwd(q, k, v, None, None, 0.3, causal)
        want, want_lse = naive_attention(q, k, v, mode, causal, scale=0.3, return_lse=True)
        assert lse.dtype == torch.float32 and lse.shape == shape[:4]
        torch.testing.assert_close(out.double(), want, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(lse.double(), want_lse, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("mode,causal", CASES)
def test_opcheck_cpu(mode, causal):
    shape = (1, 3, 5, 2, 8)
    q, k, v = (x.requires_grad_() for x in _inputs(shape, seed=4))
    cos, sin = random_rope(_seq_len(shape, mode), shape[-1])
    extra = () if mode == "spatial" else (causal,)
    fwd = getattr(torch.ops.gfcore, f"{mode}_attention_fwd").default
    bwd = getattr(torch.ops.gfcore, f"{mode}_attention_bwd").default
    torch.library.opcheck(fwd, (q, k, v, cos, sin, 0.5) + extra)
    torch.library.opcheck(fwd, (q, k, v, None, None, 0.5) + extra)
    out, lse = fwd(q.detach(), k.detach(), v.detach(), cos, sin, 0.5, *extra)
    grad_out = torch.randn(shape)
    torch.library.opcheck(bwd, (grad_out, q.detach(), k.detach(), v.detach(), out, lse, cos, sin,
                                0.5) + extra)


def test_gradcheck_float64_op():
    shape = (1, 3, 4, 1, 4)
    g = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(shape, generator=g, dtype=torch.float64, requires_grad=True)
               for _ in range(3))
    cos, sin = (t.double() for t in random_rope(3, 4))
    assert torch.autograd.gradcheck(
        lambda a, b, c: attn.temporal_attention(a, b, c, causal=True, rope=(cos, sin),
                                                impl="fused"), (q, k, v))
    assert torch.autograd.gradcheck(
        lambda a, b, c: attn.spatial_attention(a, b, c, impl="fused"), (q, k, v))


def _assert_compiled_matches_eager(step, q, k, v):
    """step compiled with fullgraph=True (no graph break allowed) gives eager's output and grads."""
    compiled = torch.compile(step, backend="aot_eager", fullgraph=True)
    leaves = [x.clone().requires_grad_() for x in (q, k, v)]
    out = compiled(*leaves)
    out.square().sum().backward()
    eager_leaves = [x.clone().requires_grad_() for x in (q, k, v)]
    want = step(*eager_leaves)
    want.square().sum().backward()
    torch.testing.assert_close(out, want)
    for a, b in zip(leaves, eager_leaves):
        torch.testing.assert_close(a.grad, b.grad)


def test_torch_compile_fullgraph():
    shape = (2, 3, 6, 2, 8)
    q, k, v = _inputs(shape, seed=6)
    rope = random_rope(3, 8)

    def step(a, b, c):
        x = attn.spatial_attention(a, b, c, impl="fused")
        return attn.temporal_attention(x, b, c, causal=True, rope=rope, impl="fused")

    _assert_compiled_matches_eager(step, q, k, v)


def test_torch_compile_fullgraph_sdpa_and_auto_dispatch(monkeypatch, tmp_path):
    """The SDPA views path with RoPE (gfcore::rope_qk) compiles without graph breaks, and so
    does the table lookup of impl="auto" (made once, at trace time)."""
    shape = (2, 3, 6, 2, 8)
    q, k, v = _inputs(shape, seed=26)
    rope = random_rope(6, 8)

    def step(a, b, c):
        return attn.spatial_attention(a, b, c, rope=rope, impl="sdpa")

    _assert_compiled_matches_eager(step, q, k, v)

    path = tmp_path / "table.json"
    path.write_text(json.dumps({"format": dispatch.FORMAT, "entries": [dict(
        mode="spatial", dtype="bfloat16", head_dim=32, seq_len=6, rope=False, impl="fused")]}))
    monkeypatch.setenv("GFCORE_ATTENTION_TABLE", str(path))
    dispatch.load_table.cache_clear()
    monkeypatch.setattr(attn, "has_kernel", lambda op, device_type: True)

    def scaled(x):
        impl = attn._choose_impl("auto", "spatial", "cuda", torch.bfloat16, 32, seq_len=6,
                                 capability=(9, 0))
        return x * (2.0 if impl == "fused" else 3.0)

    try:
        got = torch.compile(scaled, backend="eager", fullgraph=True)(torch.ones(2))
        torch.testing.assert_close(got, torch.full((2,), 2.0))  # the table's "fused"
    finally:
        dispatch.load_table.cache_clear()


# ---- the module ------------------------------------------------------------------------------

def _module_by_hand(m: FactorizedAttention, x, mode, causal, rope):
    b, t, p, _ = x.shape
    qkv = (x.double() @ m.qkv.weight.double().T + m.qkv.bias.double())
    q, k, v = qkv.view(b, t, p, 3, m.num_heads, m.head_dim).unbind(3)
    if m.q_norm_weight is not None:
        rms = lambda y, w: y / torch.sqrt(y.square().mean(-1, keepdim=True) + m.eps) * w.double()
        q, k = rms(q, m.q_norm_weight), rms(k, m.k_norm_weight)
    o = naive_attention(q, k, v, mode, causal, rope).reshape(b, t, p, m.dim)
    return o @ m.proj.weight.double().T + m.proj.bias.double()


@pytest.mark.parametrize("mode,causal", CASES)
@pytest.mark.parametrize("qk_norm", [True, False])
@pytest.mark.parametrize("impl", ["reference", "fused", "auto"])
def test_module_matches_hand_computation(impl, qk_norm, mode, causal):
    torch.manual_seed(7)
    m = FactorizedAttention(48, 3, qk_norm=qk_norm, impl=impl)
    if qk_norm:
        with torch.no_grad():
            m.q_norm_weight.uniform_(0.5, 1.5)
            m.k_norm_weight.uniform_(0.5, 1.5)
    x = torch.randn(2, 4, 6, 48)
    rope = rope_1d(4, 16) if mode == "temporal" else rope_2d(2, 3, 16)
    y = m(x, mode=mode, causal=causal, rope=rope)
    torch.testing.assert_close(y.double(), _module_by_hand(m, x, mode, causal, rope),
                               atol=1e-5, rtol=1e-4)
    y.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in m.parameters())


def test_module_bad_arguments():
    with pytest.raises(ValueError, match="divisible"):
        FactorizedAttention(50, 3)
    with pytest.raises(ValueError, match="impl"):
        FactorizedAttention(48, 3, impl="flash")
    m = FactorizedAttention(48, 3)
    with pytest.raises(ValueError, match=r"x must be \[B, T, P, 48\]"):
        m(torch.randn(2, 6, 48))
    with pytest.raises(ValueError, match="mode"):
        m(torch.randn(1, 2, 3, 48), mode="full")
    with pytest.raises(ValueError, match="causal"):
        m(torch.randn(1, 2, 3, 48), mode="spatial", causal=True)


# ---- RoPE tables -----------------------------------------------------------------------------

def test_rope_1d_values_and_relative_positions():
    cos, sin = rope_1d(6, 8, base=100.0)
    assert cos.shape == sin.shape == (6, 8) and cos.dtype == torch.float32
    inv_freq = 100.0 ** (-torch.arange(4, dtype=torch.float64) / 4)
    torch.testing.assert_close(cos[5, :4].double(), torch.cos(5 * inv_freq), atol=1e-6, rtol=0)
    torch.testing.assert_close(sin[5, 4:].double(), torch.sin(5 * inv_freq), atol=1e-6, rtol=0)
    # Rotated dot products depend on the position difference only.
    g = torch.Generator().manual_seed(8)
    a, b = torch.randn(8, generator=g, dtype=torch.float64), torch.randn(8, generator=g,
                                                                         dtype=torch.float64)
    rot = lambda x, i: x * cos[i].double() + ref.rotate_half(x) * sin[i].double()
    assert math.isclose(rot(a, 1) @ rot(b, 3), rot(a, 2) @ rot(b, 4), rel_tol=1e-5)


def test_rope_2d_is_shift_invariant_on_the_grid():
    h, w, d = 3, 4, 16
    cos, sin = rope_2d(h, w, d)
    assert cos.shape == (h * w, d)
    g = torch.Generator().manual_seed(9)
    a, b = torch.randn(d, generator=g, dtype=torch.float64), torch.randn(d, generator=g,
                                                                         dtype=torch.float64)
    rot = lambda x, r, c: x * cos[r * w + c].double() + ref.rotate_half(x) * sin[r * w + c].double()
    assert math.isclose(rot(a, 0, 0) @ rot(b, 1, 2), rot(a, 1, 1) @ rot(b, 2, 3), rel_tol=1e-5)
    assert not math.isclose(rot(a, 0, 0) @ rot(b, 1, 2), rot(a, 0, 0) @ rot(b, 2, 1),
                            rel_tol=1e-3)
    with pytest.raises(ValueError, match="multiple of 4"):
        rope_2d(2, 2, 6)
    with pytest.raises(ValueError, match="even"):
        rope_1d(3, 7)


# ---- impl="sdpa": SDPA on zero-copy [B*T, H, P, D] views (the spatial default of "auto") ---

@pytest.mark.parametrize("packed", [False, True], ids=["separate", "packed_qkv"])
@pytest.mark.parametrize("use_rope", [False, True])
@pytest.mark.parametrize("shape", SHAPES)
def test_sdpa_views_match_naive_fp32(shape, use_rope, packed):
    q, k, v = _inputs(shape, packed=packed)
    rope = random_rope(_seq_len(shape, "spatial"), shape[-1]) if use_rope else None
    grad_out = torch.randn(shape)
    out, grads = _forward_and_grads("sdpa", "spatial", False, q, k, v, rope, grad_out)
    leaves = [x.double().requires_grad_() for x in (q, k, v)]
    expected = naive_attention(*leaves, "spatial", False, rope)
    expected_grads = torch.autograd.grad(expected, leaves, grad_out.double())
    assert out.dtype == torch.float32 and out.is_contiguous() and out.shape == shape
    torch.testing.assert_close(out.double(), expected, atol=2e-5, rtol=1e-4)
    for g, e in zip(grads, expected_grads):
        torch.testing.assert_close(g.double(), e, atol=5e-5, rtol=1e-4)


@pytest.mark.parametrize("packed", [False, True], ids=["separate", "packed_qkv"])
def test_sdpa_views_bf16_meets_accuracy_rule(packed):
    """bf16 SDPA views vs float64: at most twice the error of the eager reference in bf16."""
    shape = (2, 4, 63, 2, 32)
    q, k, v = _inputs(shape, torch.bfloat16, seed=1, packed=packed)
    rope = random_rope(_seq_len(shape, "spatial"), shape[-1])
    grad_out = torch.randn(shape).bfloat16()
    got, got_grads = _forward_and_grads("sdpa", "spatial", False, q, k, v, rope, grad_out)
    eager, eager_grads = _forward_and_grads("reference", "spatial", False, q, k, v, rope, grad_out)
    leaves = [x.double().requires_grad_() for x in (q, k, v)]
    exact = naive_attention(*leaves, "spatial", False, rope)
    exact_grads = torch.autograd.grad(exact, leaves, grad_out.double())
    assert got.dtype == torch.bfloat16 and all(g.dtype == torch.bfloat16 for g in got_grads)
    for out, base, want in zip((got, *got_grads), (eager, *eager_grads), (exact, *exact_grads)):
        err = (out.double() - want).abs().max().item()
        eager_err = (base.double() - want).abs().max().item()
        assert err <= 2 * eager_err + 1e-6, (err, eager_err)


@pytest.mark.parametrize("packed", [False, True], ids=["separate", "packed_qkv"])
def test_sdpa_views_are_zero_copy(monkeypatch, packed):
    """Without RoPE, SDPA sees [B*T, H, P, D] views of the caller's q, k, v (no copies)."""
    shape = (2, 3, 10, 2, 16)
    q, k, v = _inputs(shape, packed=packed)
    seen = []
    real = torch.nn.functional.scaled_dot_product_attention

    def spy(*args, **kwargs):
        seen.append(args[:3])
        return real(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    out = attn.spatial_attention(q, k, v, impl="sdpa")
    assert len(seen) == 1
    for view, x in zip(seen[0], (q, k, v)):
        assert view.shape == (6, 2, 10, 16)
        assert view.data_ptr() == x.data_ptr()  # the caller's storage, not a copy
        assert view.untyped_storage().data_ptr() == x.untyped_storage().data_ptr()
    torch.testing.assert_close(out, attn.spatial_attention(q, k, v, impl="reference"),
                               atol=1e-6, rtol=1e-6)


def test_sdpa_views_of_unmergeable_strides_copy():
    """B and T that do not merge (a strided slice over T) still give the right answer."""
    shape = (2, 6, 10, 2, 16)
    q, k, v = (x[:, ::2] for x in _inputs(shape, seed=21))
    out = attn.spatial_attention(q, k, v, impl="sdpa")
    torch.testing.assert_close(out.double(), naive_attention(q, k, v, "spatial", False),
                               atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("mode", ["spatial", "temporal"])
def test_rope_qk_op_matches_reference_rotation(mode, dtype):
    """gfcore::rope_qk (the SDPA path's RoPE, one op for q and k) vs apply_rope, on packed
    views; its adjoint is the transpose (<R x, y> = <x, R^T y>)."""
    shape = (2, 3, 10, 2, 16)
    q, k, _ = _inputs(shape, dtype, seed=24, packed=True)
    rope = random_rope(_seq_len(shape, mode), shape[-1])
    cos, sin = attn._op_rope(rope, q)
    rq, rk = torch.ops.gfcore.rope_qk(q, k, cos, sin, mode == "temporal", False)
    assert rq.is_contiguous() and rq.dtype == dtype
    torch.testing.assert_close(rq, ref.apply_rope(q, rope, mode), atol=0, rtol=0)
    torch.testing.assert_close(rk, ref.apply_rope(k, rope, mode), atol=0, rtol=0)
    x, y = (torch.randn(shape, dtype=torch.float64) for _ in range(2))
    c64, s64 = (t.double() for t in rope)
    rx, _ = torch.ops.gfcore.rope_qk(x, x, c64, s64, mode == "temporal", False)
    rty, _ = torch.ops.gfcore.rope_qk(y, y, c64, s64, mode == "temporal", True)
    torch.testing.assert_close((rx * y).sum(), (x * rty).sum(), atol=1e-10, rtol=1e-12)


@pytest.mark.parametrize("mode", ["spatial", "temporal"])
def test_rope_qk_opcheck_and_gradcheck(mode):
    shape = (1, 3, 4, 2, 8)
    g = torch.Generator().manual_seed(25)
    q, k = (torch.randn(shape, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(2))
    cos, sin = (t.double() for t in random_rope(_seq_len(shape, mode), shape[-1]))
    for adjoint in (False, True):
        torch.library.opcheck(torch.ops.gfcore.rope_qk.default, (q, k, cos, sin, mode == "temporal", adjoint))
        assert torch.autograd.gradcheck(
            lambda a, b: torch.ops.gfcore.rope_qk(a, b, cos, sin, mode == "temporal", adjoint), (q, k))


def test_temporal_sdpa_is_the_reference():
    q, k, v = _inputs((1, 4, 9, 2, 16), seed=22)
    torch.testing.assert_close(attn.temporal_attention(q, k, v, causal=True, impl="sdpa"),
                               attn.temporal_attention(q, k, v, causal=True, impl="reference"),
                               atol=0, rtol=0)


# ---- the dispatch table (gfcore/ops/attention_dispatch.py) ------------------------------------

def _table(entries):
    return {"format": dispatch.FORMAT, "device": "test", "capability": [9, 0], "entries": entries}


def _entry(impl, seq_len, mode="spatial", dtype="bfloat16", head_dim=64, rope=False):
    return dict(mode=mode, dtype=dtype, head_dim=head_dim, seq_len=seq_len, rope=rope, impl=impl)


def test_dispatch_table_lookup_nearest_sequence_length():
    entries = dispatch.parse_table(_table([_entry("fused", 256), _entry("sdpa", 1024),
                                           _entry("fused", 64, rope=True)]))
    assert dispatch.lookup(entries, "spatial", "bfloat16", 64, 256, False) == "fused"
    assert dispatch.lookup(entries, "spatial", "bfloat16", 64, 300, False) == "fused"
    assert dispatch.lookup(entries, "spatial", "bfloat16", 64, 700, False) == "sdpa"
    assert dispatch.lookup(entries, "spatial", "bfloat16", 64, 4096, False) == "sdpa"
    assert dispatch.lookup(entries, "spatial", "bfloat16", 64, 4096, True) == "fused"
    assert dispatch.lookup(entries, "spatial", "float16", 64, 256, False) is None
    assert dispatch.lookup(entries, "spatial", "bfloat16", 128, 256, False) is None
    assert dispatch.lookup(entries, "temporal", "bfloat16", 64, 256, False) is None


def test_dispatch_table_temporal_entries_by_causality():
    """Temporal entries carry "causal"; one without it (an older table) is non-causal, and a
    spatial query is never causal."""
    entries = dispatch.parse_table(_table([
        dict(_entry("fused", 16, mode="temporal"), causal=True),
        dict(_entry("reference", 64, mode="temporal"), causal=True),
        _entry("reference", 16, mode="temporal"),  # no "causal": non-causal
        dict(_entry("fused", 64, mode="temporal"), causal=False),
        _entry("fused", 256)]))
    look = lambda t, causal, mode="temporal": dispatch.lookup(  # noqa: E731
        entries, mode, "bfloat16", 64, t, False, causal=causal)
    assert [look(t, True) for t in (8, 16, 24, 32, 64)] == ["fused", "fused", "fused", "reference",
                                                             "reference"]
    assert [look(t, False) for t in (8, 16, 32, 64)] == ["reference", "reference", "fused", "fused"]
    assert look(256, False, "spatial") == "fused"
    assert dispatch.lookup(entries, "temporal", "bfloat16", 64, 16, True) is None  # RoPE: no entry


@pytest.mark.parametrize("causal", [False, True])
def test_auto_dispatch_temporal_follows_the_table_per_causality(monkeypatch, table_file, causal):
    """temporal_attention(impl="auto") passes its causality to the lookup: the table's entry
    for it runs, and the default (the reference) where the table has none."""
    monkeypatch.setattr(attn, "has_kernel", lambda op, device_type: True)
    table_file.write_text(json.dumps(_table([dict(_entry("fused", 4, mode="temporal", head_dim=32),
                                                  causal=True)])))
    asked = []
    real = attn._choose_impl
    def impl_for(q, impl, mode, rope, causal=False):  # as the real one, the dispatch seeing "cuda"
        asked.append(causal)
        return real(impl, mode, "cuda", q.dtype, q.shape[-1], seq_len=q.shape[ref.seq_axis(mode)],
                    rope=rope is not None, capability=(9, 0), causal=causal)

    monkeypatch.setattr(attn, "_impl_for", impl_for)
    calls = []
    real_ref = ref.temporal_attention
    monkeypatch.setattr(ref, "temporal_attention",
                        lambda *a, **kw: calls.append("reference") or real_ref(*a, **kw))
    q, k, v = _inputs((1, 4, 3, 2, 32), torch.bfloat16, seed=17)
    out = attn.temporal_attention(q, k, v, causal=causal)
    assert asked == [causal]
    assert calls == ([] if causal else ["reference"])
    want = attn.temporal_attention(q, k, v, causal=causal, impl="fused" if causal else "reference")
    torch.testing.assert_close(out, want, atol=0, rtol=0)


@pytest.mark.parametrize("bad,match", [
    ({"format": "other"}, "not a gfcore.attention_dispatch/1 table"),
    (_table([dict(_entry("fused", 16, mode="temporal"), causal="yes")]),
     "causal must be true or false"),
    (_table([dict(_entry("fused", 16), causal=True)]), "the spatial pass is never causal"),
    (_table([_entry("triton", 64)]), "impl must be one of"),
    (_table([_entry("sdpa", 0)]), "seq_len must be a positive integer"),
    (_table([_entry("sdpa", 64, mode="both")]), "mode must be"),
    (_table([_entry("sdpa", 64, dtype="int8")]), "dtype must be one of"),
    (_table([dict(_entry("sdpa", 64), rope="yes")]), "rope must be true or false"),
])
def test_dispatch_table_rejects_bad_tables(bad, match):
    with pytest.raises(dispatch.DispatchTableError, match=match):
        dispatch.parse_table(bad)


def _decide(impl, mode, dtype, head_dim, device_type="cuda", seq_len=256, rope=False):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        use = attn._choose_impl(impl, mode, device_type, dtype, head_dim, seq_len=seq_len,
                                rope=rope, capability=(9, 0))
    return use, [str(w.message) for w in caught if issubclass(w.category, UserWarning)]


@pytest.fixture
def table_file(tmp_path, monkeypatch):
    """Points the dispatch at a table file written by the test (none by default)."""
    path = tmp_path / "attention_dispatch_sm90.json"
    monkeypatch.setenv("GFCORE_ATTENTION_TABLE", str(path))
    dispatch.load_table.cache_clear()
    yield path
    dispatch.load_table.cache_clear()


def test_dispatch_uses_committed_table_path(monkeypatch):
    monkeypatch.delenv("GFCORE_ATTENTION_TABLE", raising=False)
    assert dispatch.table_path((9, 0)).name == "attention_dispatch_sm90.json"
    assert dispatch.table_path((9, 0)).parent.name == "results"
    monkeypatch.setenv("GFCORE_ATTENTION_TABLE", "")
    assert dispatch.table_path((9, 0)) is None


@pytest.mark.parametrize("compiled", [False, True], ids=["no_cuda_kernel", "cuda_kernel"])
@pytest.mark.parametrize("mode", ["spatial", "temporal"])
def test_auto_dispatch_decision_for_cuda(monkeypatch, table_file, mode, compiled):
    asked = set()

    def has_kernel(op, device_type):
        asked.add((op, device_type))
        return compiled

    monkeypatch.setattr(attn, "has_kernel", has_kernel)
    default = "sdpa" if mode == "spatial" else "reference"
    for with_table in (False, True):
        if with_table:  # the table names the kernel for every dtype and head dim below
            entries = [_entry("fused", 256, mode=mode, dtype=str(dt).replace("torch.", ""),
                              head_dim=d)
                       for dt in (torch.bfloat16, torch.float16, torch.float32)
                       for d in (16, 32, 48, 64, 128, 256)]
            table_file.write_text(json.dumps(_table(entries)))
            dispatch.load_table.cache_clear()
        for dtype in (torch.bfloat16, torch.float16, torch.float32):
            for head_dim in (16, 32, 48, 64, 128, 256):
                supported = dtype != torch.float32 and head_dim in attn.KERNEL_HEAD_DIMS
                monkeypatch.setattr(extension, "_warned", set())
                use, warned = _decide("auto", mode, dtype, head_dim)
                if not with_table:
                    assert (use, warned) == (default, []), (dtype, head_dim)
                elif compiled and supported:
                    assert (use, warned) == ("fused", []), (dtype, head_dim)
                else:  # the table's choice cannot run here: the default, said once
                    assert use == default and len(warned) == 1, (dtype, head_dim)
                    assert "dispatch table names the fused kernel" in warned[0]
                    assert _decide("auto", mode, dtype, head_dim) == (use, [])
                # No entry near enough in kind: a RoPE query against RoPE-free entries.
                assert _decide("auto", mode, dtype, head_dim, rope=True)[0] == default
                assert _decide("reference", mode, dtype, head_dim) == ("reference", [])
                assert _decide("sdpa", mode, dtype, head_dim) == ("sdpa", [])
                # CPU tensors: "auto" is the reference, "fused" the op's CPU kernel.
                assert _decide("auto", mode, dtype, head_dim, "cpu") == ("reference", [])
                assert _decide("fused", mode, dtype, head_dim, "cpu") == ("fused", [])
                if not compiled:
                    with pytest.raises(RuntimeError, match="has no CUDA kernel in this build"):
                        _decide("fused", mode, dtype, head_dim)
                elif not supported:
                    with pytest.raises(ValueError, match="fp16/bf16 and head dims"):
                        _decide("fused", mode, dtype, head_dim)
                else:
                    assert _decide("fused", mode, dtype, head_dim) == ("fused", [])
    assert asked == {(f"{mode}_attention_fwd", "cuda")}
    with pytest.raises(ValueError, match="impl must be one of"):
        _decide("flash", mode, torch.bfloat16, 64)


@pytest.mark.parametrize("table_says", [None, "fused", "sdpa", "reference"])
def test_auto_dispatch_end_to_end_as_on_cuda(monkeypatch, table_file, table_says):
    """The public functions with impl="auto", the dispatch seeing "cuda" and a compiled
    kernel: which path runs (no table: SDPA views for the spatial pass, the reference for the
    temporal pass; else the table's choice), and the warning when the table's kernel cannot
    run for the head dim."""
    monkeypatch.setattr(attn, "has_kernel", lambda op, device_type: True)
    monkeypatch.setattr(attn, "_impl_for", lambda q, impl, mode, rope, causal=False:
                        attn._choose_impl(impl, mode, "cuda", q.dtype, q.shape[-1],
                                          seq_len=q.shape[ref.seq_axis(mode)],
                                          rope=rope is not None, capability=(9, 0),
                                          causal=causal))  # one frame, as the real one
    monkeypatch.setattr(extension, "_warned", set())
    if table_says is not None:
        table_file.write_text(json.dumps(_table([  # temporal entries for both causalities
            dict(_entry(table_says, 16, mode=m, dtype="bfloat16", head_dim=d), causal=c)
            for m, causals in (("spatial", (False,)), ("temporal", (False, True)))
            for c in causals for d in (32, 48)])))
    calls = []
    for name in ("spatial_attention", "temporal_attention"):
        real = getattr(ref, name)
        monkeypatch.setattr(ref, name, lambda *a, _real=real, _n=name, **kw:
                            calls.append(f"reference.{_n}") or _real(*a, **kw))
    real_sdpa = attn.spatial_attention_sdpa
    monkeypatch.setattr(attn, "spatial_attention_sdpa", lambda *a, **kw:
                        calls.append("sdpa.spatial_attention") or real_sdpa(*a, **kw))

    q, k, v = _inputs((1, 4, 9, 2, 48), torch.bfloat16, seed=15)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = attn.temporal_attention(q, k, v)  # head dim 48: no kernel
    warned = [w for w in caught if "names the fused kernel" in str(w.message)]
    if table_says == "fused":
        assert len(warned) == 1 and warned[0].filename == __file__  # the caller's line
    else:
        assert warned == []
    assert calls == ["reference.temporal_attention"]
    torch.testing.assert_close(out, attn.temporal_attention(q, k, v, impl="reference"),
                               atol=0, rtol=0)

    q, k, v = _inputs((1, 3, 10, 2, 32), torch.bfloat16, seed=16)
    for mode in ("spatial", "temporal"):
        calls.clear()
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # head dim 32 has a kernel: no warning
            out = _run("auto", mode, mode == "temporal", q, k, v)
        default = "sdpa" if mode == "spatial" else "reference"
        want_impl = table_says or default
        if mode == "temporal" and want_impl == "sdpa":
            want_impl = "reference"
        expected_calls = {"fused": [], "sdpa": ["sdpa.spatial_attention"],
                          "reference": [f"reference.{mode}_attention"]}[want_impl]
        assert calls == expected_calls
        torch.testing.assert_close(out, _run(want_impl, mode, mode == "temporal", q, k, v),
                                   atol=0, rtol=0)


# ---- bad inputs ------------------------------------------------------------------------------

def test_bad_inputs_name_the_argument():
    q = torch.randn(1, 2, 3, 2, 8)
    with pytest.raises(ValueError, match=r"q must be \[B, T, P, H, D\]"):
        attn.spatial_attention(q[0], q[0], q[0])
    with pytest.raises(ValueError, match="k has shape"):
        attn.temporal_attention(q, q[:, :1], q)
    with pytest.raises(TypeError, match="v is torch.float64"):
        attn.spatial_attention(q, q, q.double())
    with pytest.raises(ValueError, match="k must have unit stride on D"):
        attn.temporal_attention(q, q.transpose(3, 4).contiguous().transpose(3, 4), q)
    with pytest.raises(ValueError, match=r"rope\[0\] \(cos\) must be \[2, 8\]"):
        attn.temporal_attention(q, q, q, rope=(torch.ones(3, 8), torch.ones(3, 8)))
    with pytest.raises(ValueError, match=r"rope\[1\] \(sin\) must be \[3, 8\]"):
        attn.spatial_attention(q, q, q, rope=(torch.ones(3, 8), torch.ones(3, 4)))
    with pytest.raises(TypeError, match="rope must be a"):
        attn.spatial_attention(q, q, q, rope=torch.ones(3, 8))
    with pytest.raises(ValueError, match="even head dim"):
        odd = torch.randn(1, 2, 3, 2, 7)
        attn.spatial_attention(odd, odd, odd, rope=(torch.ones(3, 7), torch.ones(3, 7)))
    with pytest.raises(ValueError, match="impl must be one of"):
        attn.spatial_attention(q, q, q, impl="triton")
    with pytest.raises(TypeError, match="floating point"):
        attn.spatial_attention(q.long(), q.long(), q.long())


def test_reference_scale_default_mode_and_bf16_rope():
    """The plain-PyTorch reference on its own: a custom scale is used (spatial and temporal),
    temporal attention is not causal unless asked, an unknown mode is named, and bf16 RoPE is
    rotated in float32 (its result is the float64 rotation rounded once to bf16)."""
    shape = (1, 4, 6, 2, 8)
    q, k, v = (x.double() for x in _inputs(shape, seed=11))
    for mode in ("spatial", "temporal"):
        call = ref.spatial_attention if mode == "spatial" else ref.temporal_attention
        torch.testing.assert_close(call(q, k, v, scale=0.3), naive_attention(q, k, v, mode, scale=0.3),
                                   rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ref.temporal_attention(q, k, v), naive_attention(q, k, v, "temporal", causal=False),
                               rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match=r"^mode must be 'spatial' or 'temporal', got 'diagonal'$"):
        ref.seq_axis("diagonal")
    g = torch.Generator().manual_seed(12)
    x = torch.randn(2, 5, 64, 2, 32, generator=g).bfloat16()
    cos, sin = (t.bfloat16() for t in random_rope(64, 32, generator=g))  # bf16 tables too
    exact = ref.apply_rope(x.double(), (cos.double(), sin.double()), "spatial")
    got = ref.apply_rope(x, (cos, sin), "spatial")
    assert got.dtype == torch.bfloat16
    once = exact.bfloat16()  # float32 work differs from float64 by ~1e-7 relative: rarely a different rounding
    assert (got != once).float().mean() < 0.01


def _record_sdpa_batches(monkeypatch):
    """The batch size (sequences) of every F.scaled_dot_product_attention call from now on."""
    seen = []
    real = torch.nn.functional.scaled_dot_product_attention

    def spy(*args, **kwargs):
        seen.append(args[0].shape[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    return seen


@pytest.mark.parametrize("impl,mode,causal", [("reference", "spatial", False), ("reference", "temporal", True),
                                               ("sdpa", "spatial", False), ("sdpa", "temporal", False)])
def test_sdpa_batches_go_through_in_slices(monkeypatch, impl, mode, causal):
    """Past SDPA_MAX_BATCH sequences, SDPA is called on slices of at most that many, and the
    values and gradients are those of the float64 attention (each sequence attends within itself:
    a slice that mixed or dropped sequences would differ)."""
    monkeypatch.setattr(ref, "SDPA_MAX_BATCH", 4)
    shape = (3, 3, 5, 2, 8)  # 9 (spatial) or 15 (temporal) sequences: slices of 4, 4, .., 1 or 3
    q, k, v = _inputs(shape, seed=3)
    rope = random_rope(_seq_len(shape, mode), shape[-1], generator=torch.Generator().manual_seed(4))
    seen = _record_sdpa_batches(monkeypatch)
    grad_out = torch.randn(shape, generator=torch.Generator().manual_seed(5))
    out, grads = _forward_and_grads(impl, mode, causal, q, k, v, rope, grad_out)
    sequences = shape[0] * (shape[2] if mode == "temporal" else shape[1])
    assert seen == [4] * (sequences // 4) + ([sequences % 4] if sequences % 4 else [])
    leaves = [x.double().requires_grad_() for x in (q, k, v)]
    expected = naive_attention(*leaves, mode, causal=causal, rope=rope)
    expected_grads = torch.autograd.grad(expected, leaves, grad_out.double())
    torch.testing.assert_close(out.double(), expected, atol=2e-6, rtol=1e-5)
    for got, want in zip(grads, expected_grads):
        torch.testing.assert_close(got.double(), want, atol=2e-6, rtol=1e-5)


def test_temporal_batch_past_sdpa_grid_limit(monkeypatch):
    """B x P = 70000 temporal sequences (SDPA's flash and memory-efficient kernels fail from 65536):
    two SDPA calls, of 65535 and 4465 sequences, and every sequence's output is its own attention."""
    b, t, p, h, d = 2, 2, 35000, 1, 4
    g = torch.Generator().manual_seed(6)
    q, k, v = (torch.randn(b, t, p, h, d, generator=g) for _ in range(3))
    seen = _record_sdpa_batches(monkeypatch)
    out = attn.temporal_attention(q, k, v, causal=True, impl="reference")
    assert seen == [65535, 70000 - 65535]
    torch.testing.assert_close(out.double(), naive_attention(q, k, v, "temporal", causal=True), atol=2e-6, rtol=1e-5)


def test_any_batch_gpu_check_runs_small():
    """scripts/any_batch_check.py (gpu_check.sh build-test runs it at 2^20 sequences and 2^31+
    elements on a GPU) passes at its small shape on the CPU: the script itself is sound."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "scripts" / "any_batch_check.py"
    spec = importlib.util.spec_from_file_location("any_batch_check", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--small", "--device", "cpu"]) == 0


def test_sdpa_slices_keep_a_custom_scale(monkeypatch):
    """Each SDPA slice gets the caller's softmax scale (not SDPA's default 1/sqrt(D))."""
    monkeypatch.setattr(ref, "SDPA_MAX_BATCH", 4)
    shape = (2, 3, 5, 1, 8)  # 10 temporal sequences: slices of 4, 4, 2
    q, k, v = _inputs(shape, seed=8)
    out = attn.temporal_attention(q, k, v, scale=0.9, impl="reference")
    torch.testing.assert_close(out.double(), naive_attention(q, k, v, "temporal", scale=0.9), atol=2e-6, rtol=1e-5)
