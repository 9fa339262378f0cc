"""Factorized spatiotemporal attention: the public ops and their torch.library plumbing.

    o = spatial_attention(q, k, v, rope=None, scale=None, impl="auto")
    o = temporal_attention(q, k, v, causal=False, rope=None, scale=None, impl="auto")

q, k, v are [B, T, P, H, D] with any strides but a unit stride on D (e.g. the three views of
a packed qkv [B, T, P, 3, H, D]); o is [B, T, P, H, D] contiguous. impl picks the path:
  "reference": einops + F.scaled_dot_product_attention (attention_reference.py);
  "sdpa":      spatial pass: F.scaled_dot_product_attention on zero-copy [B*T, H, P, D] views
               of the inputs (view and transpose; RoPE, when given, rotates q and k first in
               one op, gfcore::rope_qk: one CUDA kernel launch for both);
               temporal pass: the reference (its sequences cannot be viewed without a copy);
               both, like the reference, call SDPA on at most 65535 sequences at a time
               (attention_reference.SDPA_MAX_BATCH: its CUDA kernels' grid limit);
  "fused":     the gfcore::*_attention_fwd/bwd ops (CUDA kernels in csrc/attention; on CPU the
               explicit-math kernels of attention_math.py, registered here);
  "auto":      on CUDA, the implementation that the measured dispatch table names for the
               shape (attention_dispatch.py; the temporal pass per T, head dim and causality:
               "fused" or "reference"), else the default: "sdpa" for the spatial pass,
               "reference" for the temporal pass. No GPU has measured a table yet, so today
               "auto" takes the default. A table entry naming "fused" where the build has no
               kernel, or the dtype / head dim has none, falls back to the default with a
               one-time warning. On CPU, "auto" is the reference.
"""
import contextlib
import math
from typing import Optional, Sequence, Tuple

import torch

from gfcore._extension import has_kernel, warn_once
from gfcore.ops import attention_dispatch, attention_math, attention_reference
from gfcore.ops.attention_reference import RopeTables

KERNEL_HEAD_DIMS = (32, 64, 128)
KERNEL_DTYPES = (torch.float16, torch.bfloat16)
IMPLS = ("auto", "fused", "reference", "sdpa")
# impl="auto" on CUDA follows the measured dispatch table (attention_dispatch.py). Neither
# kernel has run on a GPU yet (no GPU was lent when they were written), so no table exists and
# the kernels are reached with impl="fused" only. On sm80+ both passes run on tensor cores:
# the spatial pass (and temporal T > 64) streams key tiles (csrc/attention/attention_mma*.cuh),
# the temporal pass with T <= 64 holds whole sequences per CTA (attention_temporal_mma.cuh);
# older GPUs use fp32 FMAs.

# Must match csrc/registration.cpp; defined here too when the extension is not built.
_SCHEMAS = {
    "spatial_attention_fwd":
        "(Tensor q, Tensor k, Tensor v, Tensor? rope_cos, Tensor? rope_sin, float scale)"
        " -> (Tensor out, Tensor lse)",
    "spatial_attention_bwd":
        "(Tensor grad_out, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse,"
        " Tensor? rope_cos, Tensor? rope_sin, float scale)"
        " -> (Tensor grad_q, Tensor grad_k, Tensor grad_v)",
    "temporal_attention_fwd":
        "(Tensor q, Tensor k, Tensor v, Tensor? rope_cos, Tensor? rope_sin, float scale,"
        " bool causal) -> (Tensor out, Tensor lse)",
    "temporal_attention_bwd":
        "(Tensor grad_out, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse,"
        " Tensor? rope_cos, Tensor? rope_sin, float scale, bool causal)"
        " -> (Tensor grad_q, Tensor grad_k, Tensor grad_v)",
    "rope_qk":
        "(Tensor q, Tensor k, Tensor cos, Tensor sin, bool temporal, bool adjoint)"
        " -> (Tensor q_out, Tensor k_out)",
}


def _op_exists(name: str) -> bool:
    try:
        getattr(torch.ops.gfcore, name)
        return True
    except (AttributeError, RuntimeError):
        return False


for _name, _schema in _SCHEMAS.items():
    if not _op_exists(_name):
        torch.library.define(f"gfcore::{_name}", _schema)


# ---- CPU kernels (explicit math) and fake kernels ------------------------------------------

def _lse_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


@torch.library.register_kernel("gfcore::spatial_attention_fwd", "cpu")
def _spatial_fwd_cpu(q, k, v, rope_cos, rope_sin, scale):
    return attention_math.attention_forward(q, k, v, rope_cos, rope_sin, scale, False, "spatial")


@torch.library.register_kernel("gfcore::temporal_attention_fwd", "cpu")
def _temporal_fwd_cpu(q, k, v, rope_cos, rope_sin, scale, causal):
    return attention_math.attention_forward(q, k, v, rope_cos, rope_sin, scale, causal,
                                            "temporal")


@torch.library.register_kernel("gfcore::spatial_attention_bwd", "cpu")
def _spatial_bwd_cpu(grad_out, q, k, v, out, lse, rope_cos, rope_sin, scale):
    return attention_math.attention_backward(grad_out, q, k, v, out, lse, rope_cos, rope_sin,
                                             scale, False, "spatial")


@torch.library.register_kernel("gfcore::temporal_attention_bwd", "cpu")
def _temporal_bwd_cpu(grad_out, q, k, v, out, lse, rope_cos, rope_sin, scale, causal):
    return attention_math.attention_backward(grad_out, q, k, v, out, lse, rope_cos, rope_sin,
                                             scale, causal, "temporal")


def _rope_math(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, temporal: bool,
               adjoint: bool) -> torch.Tensor:
    """gfcore::rope_qk on one operand in PyTorch (float32 math, float64 for float64)."""
    compute = torch.float64 if x.dtype == torch.float64 else torch.float32
    mode = "temporal" if temporal else "spatial"
    c1, c2 = attention_reference.broadcast_rope(cos.to(compute), mode).chunk(2, dim=-1)
    s1, s2 = attention_reference.broadcast_rope(sin.to(compute), mode).chunk(2, dim=-1)
    x1, x2 = x.to(compute).chunk(2, dim=-1)
    if adjoint:
        y = torch.cat((x1 * c1 + x2 * s2, x2 * c2 - x1 * s1), dim=-1)
    else:
        y = torch.cat((x1 * c1 - x2 * s1, x2 * c2 + x1 * s2), dim=-1)
    return y.to(x.dtype).contiguous()


@torch.library.register_kernel("gfcore::rope_qk", "cpu")
def _rope_qk_cpu(q, k, cos, sin, temporal, adjoint):
    return _rope_math(q, cos, sin, temporal, adjoint), _rope_math(k, cos, sin, temporal, adjoint)


@torch.library.register_fake("gfcore::rope_qk")
def _rope_qk_fake(q, k, cos, sin, temporal, adjoint):
    return q.new_empty(q.shape), k.new_empty(k.shape)


def _rope_qk_setup_context(ctx, inputs, output):
    _q, _k, cos, sin, temporal, adjoint = inputs
    ctx.save_for_backward(cos, sin)
    ctx.temporal, ctx.adjoint = temporal, adjoint


def _rope_qk_backward(ctx, grad_q, grad_k):
    """The rotation is linear: its gradient is the adjoint rotation (and the tables are
    constants: no gradient for cos and sin)."""
    cos, sin = ctx.saved_tensors
    grad_q = grad_q if grad_q is not None else torch.zeros_like(grad_k)
    grad_k = grad_k if grad_k is not None else torch.zeros_like(grad_q)
    gq, gk = torch.ops.gfcore.rope_qk(_kernel_grad(grad_q), _kernel_grad(grad_k), cos, sin,
                                      ctx.temporal, not ctx.adjoint)
    return gq, gk, None, None, None, None


def _fake_fwd(q, k, v, rope_cos, rope_sin, scale, causal=False):
    return q.new_empty(q.shape), q.new_empty(q.shape[:4], dtype=_lse_dtype(q.dtype))


def _fake_bwd(grad_out, q, k, v, out, lse, rope_cos, rope_sin, scale, causal=False):
    return q.new_empty(q.shape), q.new_empty(q.shape), q.new_empty(q.shape)


for _mode in ("spatial", "temporal"):
    torch.library.register_fake(f"gfcore::{_mode}_attention_fwd", _fake_fwd)
    torch.library.register_fake(f"gfcore::{_mode}_attention_bwd", _fake_bwd)


# ---- Autograd: the backward ops recompute the probabilities from the saved log-sum-exp ------

def _setup_context(ctx, inputs, output):
    q, k, v, rope_cos, rope_sin, scale = inputs[:6]
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, rope_cos, rope_sin)
    ctx.scale = scale
    ctx.causal = inputs[6] if len(inputs) > 6 else None
    ctx.mark_non_differentiable(lse)


def _kernel_grad(grad_out: torch.Tensor) -> torch.Tensor:
    """The kernels read any strides but need a unit stride on D (out.sum() gives stride 0)."""
    return grad_out if grad_out.stride(-1) == 1 else grad_out.contiguous()


def _spatial_backward(ctx, grad_out, _grad_lse):
    q, k, v, out, lse, rope_cos, rope_sin = ctx.saved_tensors
    grad_out = _kernel_grad(grad_out)
    dq, dk, dv = torch.ops.gfcore.spatial_attention_bwd(
        grad_out, q, k, v, out, lse, rope_cos, rope_sin, ctx.scale)
    return dq, dk, dv, None, None, None


def _temporal_backward(ctx, grad_out, _grad_lse):
    q, k, v, out, lse, rope_cos, rope_sin = ctx.saved_tensors
    grad_out = _kernel_grad(grad_out)
    dq, dk, dv = torch.ops.gfcore.temporal_attention_bwd(
        grad_out, q, k, v, out, lse, rope_cos, rope_sin, ctx.scale, ctx.causal)
    return dq, dk, dv, None, None, None, None


torch.library.register_autograd("gfcore::rope_qk", _rope_qk_backward,
                                setup_context=_rope_qk_setup_context)
torch.library.register_autograd("gfcore::spatial_attention_fwd", _spatial_backward,
                                setup_context=_setup_context)
torch.library.register_autograd("gfcore::temporal_attention_fwd", _temporal_backward,
                                setup_context=_setup_context)


# ---- Input checks and dispatch ---------------------------------------------------------------

def check_attention_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                           rope: Optional[Sequence[torch.Tensor]], mode: str) -> None:
    """Raise ValueError/TypeError naming the argument when the inputs do not fit the ops."""
    axis = attention_reference.seq_axis(mode)
    for name, x in (("q", q), ("k", k), ("v", v)):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{mode}_attention: {name} must be a tensor, got {type(x).__name__}")
        if x.dim() != 5:
            raise ValueError(f"{mode}_attention: {name} must be [B, T, P, H, D], got shape "
                             f"{tuple(x.shape)}")
        if not x.is_floating_point():
            raise TypeError(f"{mode}_attention: {name} must be floating point, got {x.dtype}")
        if x.shape[-1] > 1 and x.stride(-1) != 1:
            raise ValueError(f"{mode}_attention: {name} must have unit stride on D (the last "
                             f"dim), got strides {x.stride()}")
    for name, x in (("k", k), ("v", v)):
        if x.shape != q.shape:
            raise ValueError(f"{mode}_attention: {name} has shape {tuple(x.shape)} but q has "
                             f"{tuple(q.shape)}")
        if x.dtype != q.dtype:
            raise TypeError(f"{mode}_attention: {name} is {x.dtype} but q is {q.dtype}")
        if x.device != q.device:
            raise ValueError(f"{mode}_attention: {name} is on {x.device} but q on {q.device}")
    if rope is None:
        return
    if not isinstance(rope, (tuple, list)) or len(rope) != 2:
        raise TypeError(f"{mode}_attention: rope must be a (cos, sin) pair of tensors")
    seq_len, head_dim = q.shape[axis], q.shape[-1]
    if head_dim % 2:
        raise ValueError(f"{mode}_attention: rope needs an even head dim, got D={head_dim}")
    for name, t in zip(("rope[0] (cos)", "rope[1] (sin)"), rope):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{mode}_attention: {name} must be a tensor")
        if tuple(t.shape) != (seq_len, head_dim):
            raise ValueError(f"{mode}_attention: {name} must be [{seq_len}, {head_dim}] "
                             f"([{'T' if mode == 'temporal' else 'P'}, D]), got "
                             f"{tuple(t.shape)}")
        if t.device != q.device:
            raise ValueError(f"{mode}_attention: {name} is on {t.device} but q on {q.device}")


def _device_capability(q: torch.Tensor):
    return torch.cuda.get_device_capability(q.device) if q.device.type == "cuda" else (0, 0)


# (device type, capability) that impl="auto" chooses for instead of the tensors' own: the memory
# planner (gfcore.train.plan) runs on the CPU the implementations a GPU would run
_CHOOSE_AS: Optional[Tuple[str, Tuple[int, int]]] = None


@contextlib.contextmanager
def choose_as(device_type: str = "cuda", capability: Tuple[int, int] = (9, 0)):
    """Inside, impl="auto" picks what it would pick on `device_type` (compute capability)."""
    global _CHOOSE_AS
    before, _CHOOSE_AS = _CHOOSE_AS, (device_type, tuple(capability))
    try:
        yield
    finally:
        _CHOOSE_AS = before


def _impl_for(q: torch.Tensor, impl: str, mode: str, rope, causal: bool = False) -> str:
    seq_len = q.shape[attention_reference.seq_axis(mode)]
    device_type, capability = _CHOOSE_AS or (q.device.type, None)
    return _choose_impl(impl, mode, device_type, q.dtype, q.shape[-1], seq_len=seq_len,
                        rope=rope is not None, capability=capability or _device_capability(q),
                        causal=causal)


def _choose_impl(impl: str, mode: str, device_type: str, dtype: torch.dtype, head_dim: int,
                 seq_len: int = 0, rope: bool = False, capability=(0, 0),
                 causal: bool = False) -> str:
    """"fused" (gfcore::<mode>_attention_fwd), "sdpa" (views) or "reference".

    Takes the tensor's properties rather than the tensor so that the CUDA branch can be
    checked on a machine without a GPU (python_tests/test_attention_cpu.py).
    """
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    if impl in ("reference", "sdpa"):
        return impl
    op = f"{mode}_attention_fwd"
    if device_type != "cuda":
        return "fused" if impl == "fused" else "reference"  # fused: the op's CPU registration
    compiled = has_kernel(op, "cuda")
    supported = dtype in KERNEL_DTYPES and head_dim in KERNEL_HEAD_DIMS
    if impl == "fused":
        if not compiled:
            raise RuntimeError(f"impl='fused': gfcore::{op} has no CUDA kernel in this build")
        if not supported:
            raise ValueError(f"impl='fused': the CUDA kernels take fp16/bf16 and head dims "
                             f"{KERNEL_HEAD_DIMS}, got {dtype} and D={head_dim}")
        return "fused"
    dtype_name = str(dtype).replace("torch.", "")
    choice, _why = attention_dispatch.choose(mode, dtype_name, head_dim, seq_len, rope,
                                             tuple(capability), causal)
    # (Under torch.compile the table lookup is a trace-time constant; this fallback's warning
    # is a graph break, for a table that does not fit the build.)
    if choice == "fused" and not (compiled and supported):
        default = attention_dispatch.DEFAULT_IMPL[mode]
        reason = ("this build has no CUDA kernel" if not compiled else
                  f"the kernels take fp16/bf16 and head dims {KERNEL_HEAD_DIMS}")
        warn_once(f"gfcore {mode}_attention: the dispatch table names the fused kernel for "
                  f"{dtype_name} D={head_dim}, but {reason}; using {default!r}",
                  stacklevel=5)  # the caller of spatial_attention/temporal_attention
        return default
    return choice


def _op_rope(rope: Optional[RopeTables], q: torch.Tensor):
    """The tables as the ops take them: float32 (float64 for float64 q), contiguous."""
    if rope is None:
        return None, None
    dtype = _lse_dtype(q.dtype)
    return tuple(t.to(dtype).contiguous() for t in rope)


def _default_scale(q: torch.Tensor, scale: Optional[float]) -> float:
    return 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)


def _rotate_qk(q: torch.Tensor, k: torch.Tensor, rope: Optional[RopeTables], mode: str):
    """RoPE on q and k in one op, gfcore::rope_qk (on CUDA one kernel launch for both:
    csrc/attention/rope.cuh), float32 math, contiguous outputs in the inputs' dtype. Where the
    build has no CUDA kernel for it, or for float64 on CUDA, the same math in PyTorch ops."""
    if rope is None:
        return q, k
    cos, sin = _op_rope(rope, q)
    temporal = mode == "temporal"
    if q.device.type == "cuda" and (q.dtype == torch.float64 or not has_kernel("rope_qk", "cuda")):
        return (_rope_math(q, cos, sin, temporal, False), _rope_math(k, cos, sin, temporal, False))
    return torch.ops.gfcore.rope_qk(q, k, cos, sin, temporal, False)


def _sequence_view(x: torch.Tensor) -> torch.Tensor:
    """[B, T, P, H, D] as [B*T, H, P, D]: a view when B and T merge (contiguous tensors and
    the views of a packed qkv do), else a copy."""
    b, t, p, h, d = x.shape
    try:
        merged = x.view(b * t, p, h, d)
    except RuntimeError:
        merged = x.reshape(b * t, p, h, d)
    return merged.transpose(1, 2)


def spatial_attention_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                           rope: Optional[RopeTables] = None, scale: Optional[float] = None
                           ) -> torch.Tensor:
    """The spatial pass as F.scaled_dot_product_attention on [B*T, H, P, D] views (no layout
    copies of q, k, v beyond RoPE's rotated q and k); returns [B, T, P, H, D] contiguous."""
    b, t, p, h, d = q.shape
    q, k = _rotate_qk(q, k, rope, "spatial")
    o = attention_reference.sdpa_in_slices(_sequence_view(q), _sequence_view(k), _sequence_view(v), scale=scale)
    # [B*T, H, P, D] -> [B*T, P, H, D]: a view of SDPA's output when its kernel wrote it in
    # that order (flash and memory-efficient attention do), else one copy.
    return o.transpose(1, 2).contiguous().view(b, t, p, h, d)


def spatial_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                      rope: Optional[RopeTables] = None, scale: Optional[float] = None,
                      impl: str = "auto") -> torch.Tensor:
    """The P tokens of each frame attend to each other: [B, T, P, H, D] -> same, contiguous.

    rope: optional (cos, sin) tables of shape [P, D] (rotate-half), applied to q and k.
    scale: softmax scale, 1/sqrt(D) by default.
    """
    check_attention_inputs(q, k, v, rope, "spatial")
    scale = _default_scale(q, scale)
    chosen = _impl_for(q, impl, "spatial", rope)
    if chosen == "fused":
        cos, sin = _op_rope(rope, q)
        return torch.ops.gfcore.spatial_attention_fwd(q, k, v, cos, sin, scale)[0]
    if chosen == "sdpa":
        return spatial_attention_sdpa(q, k, v, rope=rope, scale=scale)
    return attention_reference.spatial_attention(q, k, v, rope=rope, scale=scale)


def temporal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False,
                       rope: Optional[RopeTables] = None, scale: Optional[float] = None,
                       impl: str = "auto") -> torch.Tensor:
    """The T frames of each patch position attend to each other: [B, T, P, H, D] -> same.

    causal: frame i attends to frames j <= i only (autoregressive rollouts).
    rope: optional (cos, sin) tables of shape [T, D] (rotate-half), applied to q and k.
    scale: softmax scale, 1/sqrt(D) by default.
    """
    check_attention_inputs(q, k, v, rope, "temporal")
    scale = _default_scale(q, scale)
    if _impl_for(q, impl, "temporal", rope, causal=bool(causal)) == "fused":
        cos, sin = _op_rope(rope, q)
        return torch.ops.gfcore.temporal_attention_fwd(q, k, v, cos, sin, scale, bool(causal))[0]
    # "sdpa" and "reference": the reference (SDPA after a rearrange of the sequences).
    return attention_reference.temporal_attention(q, k, v, causal=bool(causal), rope=rope,
                                                  scale=scale)
