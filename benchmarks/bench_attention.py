"""Benchmark: factorized attention, the temporal pass against every SDPA backend and FlexAttention.

    python -m benchmarks.bench_attention --device cuda [--write-dispatch-table]
    python -m benchmarks.bench_attention --device cuda --temporal-only --quick
    python -m benchmarks.bench_attention --device cpu     # small shapes, to exercise the script

Temporal pass (what issue 12 claims). q, k, v are the three strided views of one packed qkv
[B, T, P, 3, H, D]; T in {8, 16, 32, 64}, D in {64, 128}, bf16 and fp16, causal or not.
  fused            temporal_attention(impl="fused"): reads the views in place, no copy;
  reference        impl="reference": einops rearranges (copies) around SDPA, default backend;
  sdpa-flash, sdpa-cudnn, sdpa-efficient, sdpa-math
                   the reference under sdpa_kernel(<backend>): the rearrange copies of q, k, v
                   and of the output are in the time;
  flex             the same rearranges around FlexAttention, torch.compile'd once per (dtype,
                   D, causal) with dynamic shapes before any timing; causal via a block mask.
A backend that refuses a shape or dtype gives rows with status "unsupported: <its reason>".
Every implementation's output and dq, dk, dv are checked against the float32 reference on the
same inputs ("correct"). Modes: forward (autograd recording, as in training), backward
(autograd.grad of a retained graph to the q, k, v views, materialized as [B, T, P, H, D], the
layout the fused kernel writes) and fwd+bwd.

Spatial pass (unchanged): fused, views (impl="sdpa": SDPA on zero-copy [B*T, H, P, D] views),
reference, and sdpa (SDPA alone on tensors already laid out, no copies).

Each row: median / p20 / p80 ms (CUDA events; perf_counter on CPU), GB/s of the compulsory
bytes (benchmarks/bytes_model.py attention_cost: forward reads q, k, v and writes O and the
LSE; backward reads q, k, v, O, dO, LSE and writes dq, dk, dv), that as % of the measured
device-to-device copy bandwidth and of the datasheet HBM bandwidth (bytes_model.
datasheet_hbm_tbps), TFLOP/s, and fused_speedup = this row's time / the fused row's time. A
summary per temporal shape holds the goals (forward and backward >= 70 % of the datasheet HBM
bandwidth, >= 2x every SDPA backend): judged on a GPU, "pending" on a CPU.

--write-dispatch-table (CUDA) writes benchmarks/results/attention_dispatch_sm<XY>.json, the
table impl="auto" follows (gfcore/ops/attention_dispatch.py): per spatial shape the fastest
correct fwd+bwd of fused and views, per temporal (dtype, D, T, causal) of fused and reference.

GPU time budget (scripts/gpu_check.sh bench runs this under `timeout 150`; aim <= 120 s on an
H100, FlexAttention's compiles and the correctness checks included):
  - temporal: 32 shapes (2 dtypes x 4 T x 2 D x 2 causal) of 65536 tokens x 1024 channels
    (B*T*P = 65536, H*D = 1024: 128 MiB per bf16 tensor, beyond the 50 MiB L2; 516 MiB to move
    forward, 1 GiB backward), 7 implementations x 3 modes = 672 measurements. Per-call
    budget: a measurement stops at >= 5 calls and >= 10 ms of timed GPU time (--min-iters,
    --min-ms). The fused calls take ~0.2 ms forward / ~0.45 ms backward at the goal (70 % of
    3.35 TB/s): ~45 / ~22 timed calls; the SDPA paths ~1-4 ms: 5-10 calls. About 200 timed
    calls per shape, ~6k in all (the run reports timed_calls), ~15-25 ms of wall time per
    measurement: ~15 s; plus one untimed probe per implementation and shape (forward and
    backward: compiles, cuDNN plans, the correctness check) and the float32 reference: ~0.5-1 s
    per shape, ~25 s in all;
  - FlexAttention: 4 compiles (bf16 only, see --flex-dtypes; dynamic shapes, so one per D and
    causal serves all T), ~10-20 s for the first, ~5 s each after; capped at 40 s of compile
    time (--flex-compile-budget-s); rows past the cap say "skipped: flex compile budget";
  - spatial: 4 shapes x 4 implementations x 3 modes = 48 measurements of 5 calls of 1-30 ms: ~10 s;
  - start-up, copy bandwidth, result files: ~10 s.
--budget-s (115 s by default on CUDA, counted from the start of main) is a hard stop: past it,
the remaining rows say "skipped: time budget" and the result files are still written.

Writes benchmarks/results/attention_<device>.json and .md (environment, commit, the summary and
the tables); --name and --out-dir change the file name and folder.
"""
import argparse
import contextlib
import json
import math
import time
import warnings
from collections import defaultdict
from pathlib import Path

import torch
from einops import rearrange

from benchmarks.bytes_model import attention_cost, datasheet_hbm_tbps
from benchmarks.common import (RESULTS_DIR, copy_bandwidth_gbps, environment, git_commit, markdown_table, measure,
                               write_results)
from gfcore.nvtx import nvtx_range
from gfcore.ops import attention as attn
from gfcore.ops import attention_dispatch
from gfcore.ops import attention_reference as reference

MODES = ("forward", "backward", "fwd+bwd")

# ---- shapes ------------------------------------------------------------------------------------

# Spatial: name, (B, T, P, H, D).
SPATIAL_SHAPES = {
    "cuda": [("base", (8, 16, 1024, 16, 64)), ("P=256", (8, 16, 256, 16, 64)), ("T=32", (8, 32, 1024, 16, 64)),
             ("D=128", (8, 16, 1024, 8, 128))],
    "cpu": [("small", (1, 8, 64, 2, 32))],
}
SPATIAL_IMPLS = ("fused", "views", "reference", "sdpa")
PUBLIC_IMPL = {"fused": "fused", "views": "sdpa", "reference": "reference"}

TEMPORAL_TS = {"cuda": (8, 16, 32, 64), "cpu": (8, 16)}
TEMPORAL_DS = {"cuda": (64, 128), "cpu": (64,)}
QUICK_TS = (16, 64)
SDPA_BACKENDS = ("flash", "cudnn", "efficient", "math")
TEMPORAL_IMPLS = ("fused", "reference", *(f"sdpa-{b}" for b in SDPA_BACKENDS), "flex")


def temporal_shape(device, t, d):
    """(B, T, P, H, D) with a fixed token count and width, so every T and D moves the same bytes:
    on CUDA 65536 tokens x 1024 channels (128 MiB per bf16 tensor, beyond the 50 MiB L2), on
    CPU 256 tokens x 128 channels."""
    tokens, width, p = (65536, 1024, 1024) if device == "cuda" else (256, 128, 256 // t)
    return (tokens // (t * p), t, p, width // d, d)


def temporal_configs(device, dtypes, quick):
    """(dtype, D, causal, T) in run order: T varies fastest, since FlexAttention compiles once per
    (dtype, D, causal)."""
    ts = QUICK_TS if quick and device == "cuda" else TEMPORAL_TS[device]
    return [(dtype, d, causal, t) for dtype in dtypes for d in TEMPORAL_DS[device] for causal in (False, True)
            for t in ts]


# ---- time budget -------------------------------------------------------------------------------

class Budget:
    """Wall-clock guard: once the deadline passes, rows are "skipped: time budget" instead of
    measured, so that the result files are written before gpu_check.sh's timeout kills us."""

    def __init__(self, total_s, flex_compile_s):
        self.start = time.perf_counter()
        self.total_s = total_s
        self.flex_compile_s = flex_compile_s
        self.flex_spent_s = 0.0

    def elapsed(self):
        return time.perf_counter() - self.start

    def left(self):
        return math.inf if not self.total_s else self.total_s - self.elapsed()

    def expired(self):
        return self.left() <= 0

    def may_compile_flex(self):
        # A compile is not interruptible: start one only with room for it (~20 s) before the deadline.
        return self.flex_spent_s < self.flex_compile_s and self.left() > 20


# ---- running an implementation once (probe), with refusals reported, not raised ------------------

REFUSALS = (RuntimeError, NotImplementedError, ValueError)


def _first_line(text):
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    return lines[0] if lines else ""


def try_call(fn):
    """(result, None) or (None, "unsupported: <reason>" / "error: <reason>").

    A backend refusing the shape or dtype raises RuntimeError ("No available kernel", with
    the reasons as warnings), NotImplementedError or ValueError: "unsupported". Out of memory
    and CUDA faults are "error"."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            return fn(), None
        except torch.OutOfMemoryError:
            return None, "error: out of memory"
        except REFUSALS as exc:
            reason = f"{type(exc).__name__}: {_first_line(exc)}"
            if "CUDA error" in reason or "illegal" in reason:
                return None, f"error: {reason}"[:300]
            why = [_first_line(w.message) for w in caught
                   if "because" in str(w.message) or "requires" in str(w.message)]
            return None, f"unsupported: {reason}" + (f" ({why[0]})" if why else "")[:300]
        except Exception as exc:  # noqa: BLE001 - reported in the row, the run goes on
            return None, f"error: {type(exc).__name__}: {_first_line(exc)}"[:300]


def _materialize(grads):
    """dq, dk, dv in the [B, T, P, H, D] layout: a copy for the SDPA paths, whose gradients
    come back as permuted views (the rearrange back), a no-op for the fused kernel's."""
    return [g.contiguous() for g in grads]


def _allclose(got, want, tol):
    return all(torch.allclose(a.float(), b, atol=tol, rtol=tol) for a, b in zip(got, want))


def _max_err(got, want):
    return max(float((a.float() - b).abs().max()) for a, b in zip(got, want))


def probe(forward, plain_forward, inputs, grad_out, want, tol, refusal=None):
    """One forward and one backward, untimed (compiles, cuDNN plans), checked against want
    (float32 output and gradients). Where the forward is refused with autograd (or refusal
    says beforehand that it would be), plain_forward (the same on detached inputs) is tried
    without. Returns a dict: forward / backward status ("ok" or the refusal), no_grad (only the
    plain forward runs, as CPU FlexAttention's: that is what gets timed), correct, max_abs_err."""
    out = None
    if refusal is None:
        out, refusal = try_call(forward)
    no_grad = out is None
    if no_grad:
        with torch.no_grad():
            out, _ = try_call(plain_forward)
        if out is None:
            return dict(forward=refusal, backward=refusal, no_grad=False, correct=None, max_abs_err=None)
    got, expected, backward_status = [out.detach()], want[:1], refusal
    if not no_grad:
        grads, backward_status = try_call(lambda: _materialize(torch.autograd.grad(out, inputs, grad_out)))
        if grads is not None:
            got, expected = got + grads, want
    return dict(forward="ok", backward=backward_status or "ok", no_grad=no_grad, correct=_allclose(got, expected, tol),
                max_abs_err=_max_err(got, expected))


def timed_modes(forward, plain_forward, inputs, grad_out, no_grad):
    """The builders of the three timed callables (mode -> builder; the backward's graph is
    recorded only when that mode runs)."""
    def fwd():
        if no_grad:
            with torch.no_grad():
                return plain_forward()
        return forward()

    def backward():
        out = forward()
        return lambda: _materialize(torch.autograd.grad(out, inputs, grad_out, retain_graph=True))

    def forward_backward():
        return _materialize(torch.autograd.grad(forward(), inputs, grad_out))

    return {"forward": lambda: fwd, "backward": backward, "fwd+bwd": lambda: forward_backward}


# ---- temporal pass -----------------------------------------------------------------------------

SEQ = "b t p h d -> (b p) h t d"
UNSEQ = "(b p) h t d -> b t p h d"


class Flex:
    """FlexAttention, torch.compile'd with dynamic shapes: one compile per (dtype, D, causal)
    serves every T, and it happens in the untimed probe."""

    def __init__(self, device):
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention

        self.device = device
        self.create_block_mask = create_block_mask
        # 2 dtypes x 2 D x 2 masks exceed dynamo's default limit of 8 graphs per function.
        for name in ("recompile_limit", "cache_size_limit"):
            if hasattr(torch._dynamo.config, name):
                setattr(torch._dynamo.config, name, 64)
        self.fn = torch.compile(flex_attention, dynamic=True)
        self.compiled = set()
        # torch's FlexAttention refuses inputs that require grad on CPU; trying anyway would
        # leave the compiled function running a slow fallback afterwards, so only the forward
        # without autograd is timed there.
        self.refusal = "unsupported: FlexAttention has no backward on CPU" if device == "cpu" else None

    def forward(self, q, k, v, causal):
        b, t = q.shape[:2]
        mask = (self.create_block_mask(lambda _b, _h, i, j: i >= j, None, None, t, t, device=self.device)
                if causal else None)

        def run():
            qs, ks, vs = (rearrange(x, SEQ) for x in (q, k, v))
            return rearrange(self.fn(qs, ks, vs, block_mask=mask), UNSEQ, b=b).contiguous()

        return run


def temporal_forward(impl, q, k, v, causal, flex):
    """The forward of one implementation on the q, k, v views (see the module docstring)."""
    if impl in ("fused", "reference"):
        return lambda: attn.temporal_attention(q, k, v, causal=causal, impl=impl)
    if impl == "flex":
        return flex.forward(q, k, v, causal)
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backend = {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION,
               "efficient": SDPBackend.EFFICIENT_ATTENTION, "math": SDPBackend.MATH}[impl.split("-", 1)[1]]

    def run():
        with sdpa_kernel(backend):
            return reference.temporal_attention(q, k, v, causal=causal)

    return run


def _tolerance(dtype):
    return 1e-3 if dtype in (torch.float32, torch.float64) else 3e-2


def _temporal_inputs(device, dtype, shape, seed=0):
    b, t, p, h, d = shape
    g = torch.Generator(device=device).manual_seed(seed)
    qkv = torch.randn(b, t, p, 3, h, d, device=device, dtype=dtype, generator=g).requires_grad_()
    grad_out = torch.randn(shape, device=device, dtype=dtype, generator=g)
    return qkv, list(qkv.unbind(3)), grad_out


def _float32_reference(qkv, causal, grad_out):
    """Output and dq, dk, dv of the float32 reference on the same values (outside any
    sdpa_kernel restriction)."""
    leaf = qkv.detach().float().requires_grad_()
    views = list(leaf.unbind(3))
    out = reference.temporal_attention(*views, causal=causal)
    grads = torch.autograd.grad(out, views, grad_out.float())
    return [out.detach(), *grads]


def run_temporal(device, configs, impls, args, budget, flex):
    rows = []
    for dtype, d, causal, t in configs:
        shape = temporal_shape(device, t, d)
        base = dict(section="temporal", shape_name=f"T={t} D={d}", shape_BTPHD=list(shape), dtype=_dtype_name(dtype),
                    causal=causal)
        if budget.expired():
            rows += [dict(base, impl=i, mode=m, status="skipped: time budget") for i in impls for m in MODES]
            continue
        qkv, inputs, grad_out = _temporal_inputs(device, dtype, shape)
        want = _float32_reference(qkv, causal, grad_out)
        for impl in impls:
            rows += _temporal_impl_rows(device, dtype, d, causal, impl, base, inputs, grad_out, want, args, budget,
                                        flex)
        del qkv, inputs, grad_out, want
        if device == "cuda":
            torch.cuda.empty_cache()
    return rows


def _temporal_impl_rows(device, dtype, d, causal, impl, base, inputs, grad_out, want, args, budget, flex):
    """The three mode rows of one implementation at one temporal shape."""
    base = dict(base, impl=impl)
    skip = _skip_reason(impl, dtype, d, causal, args, budget, flex)
    if skip:
        return [dict(base, mode=m, status=skip) for m in MODES]
    forward = temporal_forward(impl, *inputs, causal, flex)
    plain_forward = temporal_forward(impl, *(x.detach() for x in inputs), causal, flex)
    started = time.perf_counter()
    found = probe(forward, plain_forward, inputs, grad_out, want, _tolerance(dtype),
                  refusal=flex.refusal if impl == "flex" else None)
    if impl == "flex" and (dtype, d, causal) not in flex.compiled:
        flex.compiled.add((dtype, d, causal))
        budget.flex_spent_s += time.perf_counter() - started
    checked = dict(correct=found["correct"], max_abs_err=found["max_abs_err"])
    note = "forward without autograd (no backward here)" if found["no_grad"] else None
    builders = timed_modes(forward, plain_forward, inputs, grad_out, found["no_grad"])
    rows = []
    for mode in MODES:
        status = found["forward"] if mode == "forward" else found["backward"]
        if status == "ok" and budget.expired():
            status = "skipped: time budget"
        row = dict(base, mode=mode, status=status, **(checked if status == "ok" else {}))
        if note and mode == "forward":
            row["note"] = note
        if status == "ok":
            label = (f"attention.temporal{'.causal' if causal else ''}.{base['dtype']}.{base['shape_name']}"
                     f".{impl}.{mode}")
            row.update(_timed(builders[mode], device, label, args))
        rows.append(row)
    return rows


def _skip_reason(impl, dtype, d, causal, args, budget, flex):
    if budget.expired():
        return "skipped: time budget"
    if impl != "flex":
        return None
    if flex is None:
        return "skipped: --no-flex"
    if _dtype_name(dtype) not in args.flex_dtypes:
        return f"skipped: flex measured for {', '.join(args.flex_dtypes)} only (--flex-dtypes)"
    if (dtype, d, causal) not in flex.compiled and not budget.may_compile_flex():
        return "skipped: flex compile budget"
    return None


def _timed(builder, device, label, args):
    """measure() of one mode; an error while timing becomes the row's status."""
    def run():
        fn = builder()
        with nvtx_range(label):
            return measure(fn, torch.device(device), min_time_ms=args.min_ms, min_reps=args.min_iters, warmup=1)

    stats, status = try_call(run)
    return stats if stats is not None else {"status": status}


# ---- spatial pass (as before: the packed qkv is the autograd leaf) --------------------------------

def _spatial_callable(impl, q, k, v, sdpa_inputs):
    if impl == "sdpa":
        return lambda: torch.nn.functional.scaled_dot_product_attention(*sdpa_inputs)
    return lambda: attn.spatial_attention(q, k, v, impl=PUBLIC_IMPL[impl])


def spatial_case(device, dtype, shape, impl, args, budget):
    """Timings per mode of one spatial implementation (fused, views, reference, sdpa)."""
    b, t, p, h, d = shape
    qkv = torch.randn(b, t, p, 3, h, d, device=device, dtype=dtype, requires_grad=True)
    q, k, v = qkv.unbind(3)
    sdpa_inputs = [rearrange(x.detach(), "b t p h d -> (b t) h p d").contiguous().requires_grad_() for x in (q, k, v)]
    forward = _spatial_callable(impl, q, k, v, sdpa_inputs)
    leaves = sdpa_inputs if impl == "sdpa" else [qkv]
    out = forward()
    grad_out = torch.randn_like(out)
    builders = {"forward": lambda: forward,
                "backward": lambda: lambda: torch.autograd.grad(out, leaves, grad_out, retain_graph=True),
                "fwd+bwd": lambda: lambda: torch.autograd.grad(forward(), leaves, grad_out)}
    results = {}
    for mode in MODES:
        if budget.expired():
            results[mode] = {"status": "skipped: time budget"}
        else:
            results[mode] = _timed(builders[mode], device, f"attention.spatial.{impl}.{mode}", args)
    return results


def check_spatial(device, dtype, shape, impl, tol=3e-2):
    """Output and gradients of impl vs the float32 reference on the same packed views."""
    b, t, p, h, d = shape
    g = torch.Generator(device=device).manual_seed(0)
    qkv = torch.randn(b, t, p, 3, h, d, device=device, dtype=dtype, generator=g)
    grad_out = torch.randn(b, t, p, h, d, device=device, dtype=dtype, generator=g)
    results = []
    for kind, x in ((PUBLIC_IMPL[impl], qkv), ("reference", qkv.float())):
        leaf = x.detach().clone().requires_grad_()
        out = attn.spatial_attention(*leaf.unbind(3), impl=kind)
        (grad,) = torch.autograd.grad(out, [leaf], grad_out.to(out.dtype))
        results.append((out.float(), grad.float()))
    (out, grad), (want, want_grad) = results
    return bool(torch.allclose(out, want, atol=tol, rtol=tol) and torch.allclose(grad, want_grad, atol=tol, rtol=tol))


def _flash_only(device):
    if device != "cuda":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel(SDPBackend.FLASH_ATTENTION)


def run_spatial(device, dtype, shapes, impls, args, budget):
    rows = []
    for shape_name, shape in shapes:
        base = dict(section="spatial", shape_name=shape_name, shape_BTPHD=list(shape), dtype=_dtype_name(dtype),
                    causal=False)
        for impl in impls:
            if budget.expired():
                rows += [dict(base, impl=impl, mode=m, status="skipped: time budget") for m in MODES]
                continue
            correct = None
            if impl in ("fused", "views"):
                correct, status = try_call(lambda: check_spatial(device, dtype, shape, impl, _tolerance(dtype)))
                if status:
                    rows += [dict(base, impl=impl, mode=m, status=status) for m in MODES]
                    continue
            with _flash_only(device):  # as this bench always measured the spatial pass
                timings, status = try_call(lambda: spatial_case(device, dtype, shape, impl, args, budget))
            for mode in MODES:
                stats = timings[mode] if timings else {"status": status}
                rows.append(dict(base, impl=impl, mode=mode, status=stats.pop("status", "ok"), correct=correct,
                                 **stats))
            if device == "cuda":
                torch.cuda.empty_cache()
    return rows


# ---- derived figures ---------------------------------------------------------------------------

def _dtype_name(dtype):
    return str(dtype).replace("torch.", "")


def add_rates(rows, copy_gbps, hbm_tbps):
    """GB/s and TFLOP/s from the bytes model, % of the copy and the datasheet bandwidth."""
    for r in rows:
        if r.get("status") != "ok":
            continue
        b, t, p, h, d = r["shape_BTPHD"]
        elem = torch.finfo(getattr(torch, r["dtype"])).bits // 8
        temporal = r["section"] == "temporal"
        fwd, bwd = (attention_cost(b, t, p, h, d, temporal, r["causal"], backward, elem) for backward in (False, True))
        cost = {"forward": fwd, "backward": bwd,
                "fwd+bwd": {k: fwd[k] + bwd[k] for k in ("flops", "bytes")}}[r["mode"]]
        sec = r["median_ms"] * 1e-3
        r["gbs"] = cost["bytes"] / sec / 1e9
        r["tflops"] = cost["flops"] / sec / 1e12
        r["pct_copy_bw"] = 100 * r["gbs"] / copy_gbps
        r["pct_hbm"] = 100 * r["gbs"] / (hbm_tbps * 1e3) if hbm_tbps else None


def _group_key(r):
    return (r["section"], r["shape_name"], r["dtype"], r["causal"], r["mode"])


def add_speedups(rows):
    """fused_speedup on every timed row: its time / the fused time of the same shape and mode."""
    fused = {_group_key(r): r["median_ms"] for r in rows if r["impl"] == "fused" and r.get("status") == "ok"}
    for r in rows:
        if r.get("status") == "ok" and _group_key(r) in fused:
            r["fused_speedup"] = r["median_ms"] / fused[_group_key(r)]


HBM_GOAL_PCT = 70.0
SPEEDUP_GOAL = 2.0


def temporal_summary(rows, device):
    """One line per temporal shape against the goals (>= 70 % of HBM forward and backward,
    >= 2x every SDPA backend that runs the shape); "pending" where no GPU measured it."""
    by_key = defaultdict(dict)
    for r in rows:
        if r["section"] == "temporal":
            by_key[(r["dtype"], r["shape_name"], r["causal"])][(r["impl"], r["mode"])] = r
    out = []
    for (dtype, shape_name, causal), cell in by_key.items():
        line = dict(dtype=dtype, shape=shape_name, causal=causal)
        for mode, tag in (("forward", "fwd"), ("backward", "bwd")):
            fused = cell.get(("fused", mode), {})
            line[f"fused_{tag}_pct_hbm"] = fused.get("pct_hbm")
            line[f"fused_{tag}_tflops"] = fused.get("tflops")
            sdpa = {i: cell[(i, mode)].get("fused_speedup") for i in TEMPORAL_IMPLS
                    if i.startswith("sdpa-") and cell.get((i, mode), {}).get("status") == "ok"}
            fastest = min(sdpa, key=sdpa.get) if sdpa else None  # the least fused speedup
            line[f"min_sdpa_speedup_{tag}"] = sdpa[fastest] if fastest else None
            line[f"fastest_sdpa_{tag}"] = fastest
            line[f"flex_speedup_{tag}"] = cell.get(("flex", mode), {}).get("fused_speedup")
        line["unsupported"] = sorted({i for (i, _m), r in cell.items()
                                      if str(r.get("status", "")).startswith("unsupported")})
        line["goal"] = _verdict(line, cell, device)
        out.append(line)
    return out


def _verdict(line, cell, device):
    if device != "cuda":
        return "pending (no GPU)"
    for mode in ("forward", "backward"):
        fused = cell.get(("fused", mode), {})
        if fused.get("status") != "ok":
            return f"fused {mode}: {fused.get('status')}"
        if not fused.get("correct"):
            return "fused incorrect"
    missed = []
    for tag in ("fwd", "bwd"):
        pct, speedup = line[f"fused_{tag}_pct_hbm"], line[f"min_sdpa_speedup_{tag}"]
        if pct is None:
            missed.append(f"{tag}: no datasheet HBM figure")
        elif pct < HBM_GOAL_PCT:
            missed.append(f"{tag} {pct:.0f}% HBM")
        if speedup is None:
            missed.append(f"{tag}: no SDPA backend timed")
        elif speedup < SPEEDUP_GOAL:
            missed.append(f"{tag} {speedup:.2f}x vs {line[f'fastest_sdpa_{tag}']}")
    return "met" if not missed else "not met: " + ", ".join(missed)


# ---- dispatch table ----------------------------------------------------------------------------

# The implementations a table may choose between, per pass, and the public impl names.
DISPATCH_CANDIDATES = {"spatial": {"fused": "fused", "views": "sdpa"},
                       "temporal": {"fused": "fused", "reference": "reference"}}


def dispatch_entries(rows):
    """Table entries from the fwd+bwd rows: per (pass, dtype, D, sequence length, causal), the
    candidate with the least total time over the key's shapes among those that ran correctly on
    every one of them (a candidate untimed or wrong on one is out)."""
    times = defaultdict(lambda: defaultdict(dict))  # key -> impl -> shape -> ms (None: not usable)
    for r in rows:
        candidates = DISPATCH_CANDIDATES[r["section"]]
        if r["mode"] != "fwd+bwd" or r["impl"] not in candidates:
            continue
        b, t, p, h, d = r["shape_BTPHD"]
        temporal = r["section"] == "temporal"
        key = (r["section"], r["dtype"], d, t if temporal else p, bool(r["causal"]) and temporal)
        usable = r.get("status") == "ok" and r.get("correct") is True
        times[key][r["impl"]][tuple(r["shape_BTPHD"])] = r["median_ms"] if usable else None
    entries = []
    for (section, dtype, d, seq_len, causal), by_impl in sorted(times.items(), key=str):
        shapes = set().union(*(set(s) for s in by_impl.values()))
        totals = {i: sum(ms.values()) for i, ms in by_impl.items()
                  if set(ms) == shapes and None not in ms.values()}
        if not totals:
            continue
        public = DISPATCH_CANDIDATES[section]
        entry = dict(mode=section, dtype=dtype, head_dim=d, seq_len=seq_len, rope=False,
                     impl=public[min(totals, key=totals.get)],
                     median_ms={public[i]: ms for i, ms in totals.items()}, shapes_BTPHD=sorted(map(list, shapes)))
        if section == "temporal":
            entry["causal"] = causal
        entries.append(entry)
    return entries


def write_dispatch_table(rows, device, out_dir=RESULTS_DIR):
    major, minor = torch.cuda.get_device_capability(device)
    table = {"format": attention_dispatch.FORMAT, "device": torch.cuda.get_device_name(device),
             "capability": [major, minor], "torch": torch.__version__, "commit": git_commit(),
             "entries": dispatch_entries(rows)}
    attention_dispatch.parse_table(table, "generated table")  # what the loader accepts
    path = Path(out_dir) / f"attention_dispatch_sm{major}{minor}.json"
    path.write_text(json.dumps(table, indent=2) + "\n")
    return path


# ---- output ------------------------------------------------------------------------------------

ROW_COLUMNS = ["pass", "shape", "dtype", "impl", "mode", "status", "correct", "median_ms", "p20_ms", "p80_ms", "gbs",
               "pct_copy_bw", "pct_hbm", "tflops", "fused_speedup"]
SUMMARY_COLUMNS = ["dtype", "shape", "causal", "fused_fwd_pct_hbm", "fused_bwd_pct_hbm", "fused_fwd_tflops",
                   "fused_bwd_tflops", "min_sdpa_speedup_fwd", "min_sdpa_speedup_bwd", "flex_speedup_fwd",
                   "flex_speedup_bwd", "goal"]


def _display(rows):
    """Rows for the markdown tables: blanks for missing figures, short statuses."""
    out = []
    for r in rows:
        d = {k: ("" if v is None else v) for k, v in r.items()}
        if "section" in r:
            d["pass"] = r["section"] + (" causal" if r["causal"] else "")
            d["shape"] = f"{r['shape_name']} {tuple(r['shape_BTPHD'])}"
            d["status"] = str(r.get("status", ""))[:90] + (f" [{r['note']}]" if r.get("note") else "")
        out.append(d)
    return out


def markdown(payload):
    hbm = payload["datasheet_hbm_TBps"]
    lines = [f"Device-to-device copy {payload['copy_bandwidth_GBps']:.0f} GB/s (read + write); datasheet HBM "
             f"{hbm if hbm else 'unknown'} TB/s. {payload['timed_calls']} timed calls, {payload['elapsed_s']:.0f} s "
             f"in all ({', '.join(f'{k} {v:.0f} s' for k, v in payload['section_s'].items())}); "
             f"FlexAttention compiles {payload['flex_compile_s']:.0f} s.",
             "",
             f"Goals (temporal): forward and backward >= {HBM_GOAL_PCT:.0f} % of the datasheet HBM bandwidth and "
             f">= {SPEEDUP_GOAL:.0f}x every SDPA backend that runs the shape (rearrange copies counted); "
             "min_sdpa_speedup is the fused speedup over the fastest backend."]
    if payload["device"] != "cuda":
        lines.append("On a CPU the goals are pending: only a GPU run measures them.")
    for title, rows, columns in (("Temporal pass: goals", payload["temporal_summary"], SUMMARY_COLUMNS),
                                 ("Temporal pass", [r for r in payload["results"] if r["section"] == "temporal"],
                                  ROW_COLUMNS),
                                 ("Spatial pass", [r for r in payload["results"] if r["section"] == "spatial"],
                                  ROW_COLUMNS)):
        if rows:
            lines += ["", f"## {title}", "", markdown_table(_display(rows), columns)]
    return "\n".join(lines) + "\n"


# ---- main --------------------------------------------------------------------------------------

def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cuda", "cpu"])
    parser.add_argument("--dtypes", nargs="+", choices=["bfloat16", "float16", "float32"],
                        help="temporal dtypes (default bfloat16 float16 on CUDA, float32 on CPU); the spatial pass "
                             "runs the first")
    parser.add_argument("--min-ms", type=float, default=None,
                        help="minimum timed total per measurement (ms; default 10 on CUDA, 20 on CPU)")
    parser.add_argument("--min-iters", type=int, default=5, help="minimum timed calls per measurement")
    parser.add_argument("--budget-s", type=float, default=None,
                        help="wall-clock stop, then rows are skipped (default 115 on CUDA, none on CPU; 0: none)")
    parser.add_argument("--temporal-only", action="store_true", help="skip the spatial pass")
    parser.add_argument("--spatial-only", action="store_true", help="skip the temporal pass")
    parser.add_argument("--quick", action="store_true", help="temporal: T in 16, 64 and the first dtype only")
    parser.add_argument("--shapes", nargs="*", help="subset of spatial shape names")
    parser.add_argument("--impls", nargs="*", choices=sorted(set(SPATIAL_IMPLS + TEMPORAL_IMPLS)),
                        help="subset of implementations (both passes)")
    parser.add_argument("--no-flex", action="store_true", help="no FlexAttention (it compiles for ~10-40 s)")
    parser.add_argument("--flex-dtypes", nargs="+", default=["bfloat16", "float32"],
                        help="temporal dtypes FlexAttention is measured for (each costs its compiles)")
    parser.add_argument("--flex-compile-budget-s", type=float, default=40.0,
                        help="no new FlexAttention compile once this much compile time is spent")
    parser.add_argument("--threads", type=int, default=1,
                        help="(CPU) torch threads: one by default, since small ops on a shared 2-core machine "
                             "wait out scheduler time slices with two (20 ms steps in every timing)")
    parser.add_argument("--name", help="result file name (default attention_<device>)")
    parser.add_argument("--out-dir", default=str(RESULTS_DIR), help="folder of the result files")
    parser.add_argument("--write-dispatch-table", action="store_true",
                        help="(CUDA) write the impl=\"auto\" table for this device from the fwd+bwd runs")
    args = parser.parse_args(argv)
    cuda = args.device == "cuda"
    if args.write_dispatch_table and not cuda:
        parser.error("--write-dispatch-table needs --device cuda")
    args.dtypes = args.dtypes or (["bfloat16", "float16"] if cuda else ["float32"])
    if not cuda:
        args.dtypes = ["float32"]  # the CPU runs the fp32 paths
    if args.quick:
        args.dtypes = args.dtypes[:1]
    args.min_ms = args.min_ms if args.min_ms is not None else (10.0 if cuda else 20.0)
    args.budget_s = args.budget_s if args.budget_s is not None else (115.0 if cuda else 0.0)
    return args


def main(argv=None):
    args = parse_args(argv)
    device = args.device
    budget = Budget(args.budget_s, args.flex_compile_budget_s)
    if device == "cpu":
        torch.set_num_threads(args.threads)
    dtypes = [getattr(torch, name) for name in args.dtypes]
    copy_gbps = copy_bandwidth_gbps(torch.device(device), nbytes=(1 << 30) if device == "cuda" else (1 << 26))
    hbm_tbps = datasheet_hbm_tbps(torch.cuda.get_device_name(device)) if device == "cuda" else None

    rows, section_s = [], {}
    if not args.spatial_only:
        impls = [i for i in TEMPORAL_IMPLS if not args.impls or i in args.impls]
        flex = None if args.no_flex or "flex" not in impls else Flex(device)
        started = budget.elapsed()
        rows += run_temporal(device, temporal_configs(device, dtypes, args.quick), impls, args, budget, flex)
        section_s["temporal"] = budget.elapsed() - started
    if not args.temporal_only:
        impls = [i for i in SPATIAL_IMPLS if not args.impls or i in args.impls]
        shapes = [s for s in SPATIAL_SHAPES[device] if not args.shapes or s[0] in args.shapes]
        started = budget.elapsed()
        rows += run_spatial(device, dtypes[0], shapes, impls, args, budget)
        section_s["spatial"] = budget.elapsed() - started

    add_rates(rows, copy_gbps, hbm_tbps)
    add_speedups(rows)
    if args.write_dispatch_table:
        print(f"wrote {write_dispatch_table(rows, torch.device(device), args.out_dir)}")
    payload = {"env": environment(torch.device(device)), "device": device, "dtypes": args.dtypes,
               "copy_bandwidth_GBps": copy_gbps, "datasheet_hbm_TBps": hbm_tbps,
               "goals": {"hbm_pct": HBM_GOAL_PCT, "speedup_vs_each_sdpa_backend": SPEEDUP_GOAL},
               "timed_calls": sum(r.get("reps", 0) for r in rows), "elapsed_s": budget.elapsed(),
               "section_s": section_s, "flex_compile_s": budget.flex_spent_s,
               "temporal_summary": temporal_summary(rows, device), "results": rows}
    text = markdown(payload)
    path = write_results(args.name or f"attention_{device}", payload, text, out_dir=Path(args.out_dir))
    print(text)
    print(f"wrote {path}")
    return payload


if __name__ == "__main__":
    main()
