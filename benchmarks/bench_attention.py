"""Benchmark: fused factorized attention vs the einops + SDPA reference vs SDPA alone.

    python -m benchmarks.bench_attention --device cuda     # the issue's shapes, CUDA events
    python -m benchmarks.bench_attention --device cpu      # one small shape, to exercise the script

Implementations, all fed the three strided views of a packed qkv [B, T, P, 3, H, D]:
  fused:     gfcore ops (impl="fused"): read the views in place, write [B, T, P, H, D];
  views:     impl="sdpa": SDPA on zero-copy [B*T, H, P, D] views (spatial pass; the temporal
             pass runs the reference);
  reference: impl="reference": rearranges + contiguous copies around SDPA (flash backend on CUDA);
  sdpa:      SDPA alone on tensors already laid out as [(B T) or (B P), H, S, D] (no copies).
--write-dispatch-table (CUDA): after the runs, writes the table impl="auto" follows
(gfcore/ops/attention_dispatch.py) to benchmarks/results/attention_dispatch_sm<XY>.json: per
shape of the spatial pass, the fastest fwd+bwd of "fused" and "views" among those whose output
and gradients matched the float32 reference.
Modes: forward, backward (autograd of a retained graph), forward+backward. FLOPs and bytes
come from benchmarks/bytes_model.py (the static report's model): 4 S^2 D per sequence forward,
10 S^2 D backward, S(S+1)/2 score pairs if causal; bytes are the minimum traffic (forward: q,
k, v, out, lse; backward: q, k, v, out, dout, lse, dq, dk, dv), so GB/s against the measured
device-to-device copy bandwidth is the memory roofline fraction.
Writes benchmarks/results/attention_<device>.json and .md (environment, commit, table).
"""
import argparse
import json

import torch
from einops import rearrange

from benchmarks.bytes_model import attention_cost
from benchmarks.common import (RESULTS_DIR, copy_bandwidth_gbps, environment, git_commit, markdown_table, measure,
                               write_results)
from gfcore.nvtx import nvtx_range
from gfcore.ops import attention as attn
from gfcore.ops import attention_dispatch

# name, (B, T, P, H, D)
CUDA_SHAPES = [
    ("base", (8, 16, 1024, 16, 64)),
    ("P=256", (8, 16, 256, 16, 64)),
    ("T=32", (8, 32, 1024, 16, 64)),
    ("D=128", (8, 16, 1024, 8, 128)),
]
CPU_SHAPES = [("small", (1, 8, 64, 2, 32))]
PASSES = [("spatial", False), ("temporal", False), ("temporal", True)]
IMPLS = ("fused", "views", "reference", "sdpa")
PUBLIC_IMPL = {"fused": "fused", "views": "sdpa", "reference": "reference"}
MODES = ("forward", "backward", "fwd+bwd")


def _callable(impl, mode, causal, q, k, v, sdpa_inputs):
    if impl == "sdpa":
        return lambda: torch.nn.functional.scaled_dot_product_attention(*sdpa_inputs,
                                                                          is_causal=causal)
    kind = PUBLIC_IMPL[impl]
    if mode == "spatial":
        return lambda: attn.spatial_attention(q, k, v, impl=kind)
    return lambda: attn.temporal_attention(q, k, v, causal=causal, impl=kind)


def bench_case(device, dtype, shape, mode, causal, impl, min_total_ms, min_iters):
    b, t, p, h, d = shape
    qkv = torch.randn(b, t, p, 3, h, d, device=device, dtype=dtype, requires_grad=True)
    q, k, v = qkv.unbind(3)
    pattern = "b t p h d -> (b t) h p d" if mode == "spatial" else "b t p h d -> (b p) h t d"
    sdpa_inputs = [rearrange(x.detach(), pattern).contiguous().requires_grad_() for x in (q, k, v)]
    forward = _callable(impl, mode, causal, q, k, v, sdpa_inputs)
    leaves = sdpa_inputs if impl == "sdpa" else [qkv]
    out = forward()
    grad_out = torch.randn_like(out)

    def backward():
        torch.autograd.grad(out, leaves, grad_out, retain_graph=True)

    def forward_backward():
        torch.autograd.grad(forward(), leaves, grad_out)

    results = {}
    for name, fn in (("forward", forward), ("backward", backward), ("fwd+bwd", forward_backward)):
        with nvtx_range(f"attention.{mode}{'.causal' if causal else ''}.{impl}.{name}"):
            results[name] = measure(fn, torch.device(device), min_time_ms=min_total_ms, min_reps=min_iters,
                                    warmup=1)
    return results


def _cost(shape, mode, causal, dtype):
    """FLOPs and bytes per timing mode, from the shared model (benchmarks/bytes_model.py)."""
    b, t, p, h, d = shape
    elt = torch.finfo(dtype).bits // 8
    fwd, bwd = (attention_cost(b, t, p, h, d, mode == "temporal", causal, backward, elt) for backward in (False, True))
    flops = {"forward": fwd["flops"], "backward": bwd["flops"], "fwd+bwd": fwd["flops"] + bwd["flops"]}
    nbytes = {"forward": fwd["bytes"], "backward": bwd["bytes"], "fwd+bwd": fwd["bytes"] + bwd["bytes"]}
    return flops, nbytes


def check_against_reference(device, dtype, shape, mode, causal, impl, tol=3e-2):
    """Output and gradients of impl vs the float32 reference on the same packed views."""
    b, t, p, h, d = shape
    g = torch.Generator(device=device).manual_seed(0)
    qkv = torch.randn(b, t, p, 3, h, d, device=device, dtype=dtype, generator=g)
    grad_out = torch.randn(b, t, p, h, d, device=device, dtype=dtype, generator=g)
    results = []
    for kind, x in ((PUBLIC_IMPL[impl], qkv), ("reference", qkv.float())):
        leaf = x.detach().clone().requires_grad_()
        q, k, v = leaf.unbind(3)
        out = (attn.spatial_attention(q, k, v, impl=kind) if mode == "spatial"
               else attn.temporal_attention(q, k, v, causal=causal, impl=kind))
        (grad,) = torch.autograd.grad(out, [leaf], grad_out.to(out.dtype))
        results.append((out.float(), grad.float()))
    (out, grad), (want, want_grad) = results
    return bool(torch.allclose(out, want, atol=tol, rtol=tol) and torch.allclose(grad, want_grad, atol=tol, rtol=tol))


def write_dispatch_table(rows, dtype, device, correct):
    """The measured choice per spatial shape (fastest correct fwd+bwd of fused and views)."""
    major, minor = torch.cuda.get_device_capability(device)
    entries = []
    for shape_name, shape in sorted({(r["shape_name"], tuple(r["shape_BTPHD"])) for r in rows}):
        timed = {r["impl"]: r["median_ms"] for r in rows
                 if r["shape_name"] == shape_name and r["pass"] == "spatial" and r["mode"] == "fwd+bwd"
                 and r["impl"] in ("fused", "views") and correct.get((shape_name, r["impl"]))}
        if not timed:
            continue
        best = min(timed, key=timed.get)
        entries.append(dict(mode="spatial", dtype=str(dtype).replace("torch.", ""), head_dim=shape[4],
                            seq_len=shape[2], rope=False, impl=PUBLIC_IMPL[best],
                            median_ms={PUBLIC_IMPL[k]: v for k, v in timed.items()}, shape_BTPHD=list(shape)))
    table = {"format": attention_dispatch.FORMAT, "device": torch.cuda.get_device_name(device),
             "capability": [major, minor], "torch": torch.__version__, "commit": git_commit(), "entries": entries}
    attention_dispatch.parse_table(table, "generated table")  # what the loader accepts
    path = RESULTS_DIR / f"attention_dispatch_sm{major}{minor}.json"
    path.write_text(json.dumps(table, indent=2) + "\n")
    return path


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        choices=["cuda", "cpu"])
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--min-ms", type=float, default=100.0,
                        help="minimum total measured time per case (ms)")
    parser.add_argument("--min-iters", type=int, default=10)
    parser.add_argument("--shapes", nargs="*", help="subset of shape names")
    parser.add_argument("--impls", nargs="*", default=list(IMPLS), choices=IMPLS)
    parser.add_argument("--name", help="result file name (default attention_<device>)")
    parser.add_argument("--write-dispatch-table", action="store_true",
                        help="(CUDA) write the impl=\"auto\" table for this device from the spatial runs")
    args = parser.parse_args(argv)

    device = args.device
    dtype = getattr(torch, args.dtype)
    if device == "cpu" and dtype != torch.float32:
        dtype = torch.float32  # CPU runs the fp32 reference paths
    shapes = CUDA_SHAPES if device == "cuda" else CPU_SHAPES
    if args.shapes:
        shapes = [s for s in shapes if s[0] in args.shapes]
    sdpa_ctx = None
    if device == "cuda":
        from torch.nn.attention import SDPBackend, sdpa_kernel
        sdpa_ctx = lambda: sdpa_kernel(SDPBackend.FLASH_ATTENTION)
    roofline = copy_bandwidth_gbps(torch.device(device), nbytes=(1 << 30) if device == "cuda" else (1 << 26))

    rows = []
    for shape_name, shape in shapes:
        for mode, causal in PASSES:
            for impl in args.impls:
                if sdpa_ctx is not None:
                    with sdpa_ctx():
                        timings = bench_case(device, dtype, shape, mode, causal, impl,
                                             args.min_ms, args.min_iters)
                else:
                    timings = bench_case(device, dtype, shape, mode, causal, impl, args.min_ms,
                                         args.min_iters)
                flops, nbytes = _cost(shape, mode, causal, dtype)
                for m in MODES:
                    sec = timings[m]["median_ms"] * 1e-3
                    rows.append({"shape_name": shape_name, "shape_BTPHD": list(shape),
                                 "pass": mode + (" causal" if causal else ""), "impl": impl,
                                 "mode": m, **timings[m], "tflops": flops[m] / sec / 1e12,
                                 "gbs": nbytes[m] / sec / 1e9})
                if device == "cuda":
                    torch.cuda.empty_cache()

    # Speed-up of fused over the reference, per (shape, pass, mode).
    by_key = {(r["shape_name"], r["pass"], r["mode"], r["impl"]): r for r in rows}
    for r in rows:
        ref = by_key.get((r["shape_name"], r["pass"], r["mode"], "reference"))
        if ref:
            r["speedup_vs_reference"] = ref["median_ms"] / r["median_ms"]
        r["roofline_fraction"] = r["gbs"] / roofline

    table_path = None
    if args.write_dispatch_table:
        if device != "cuda":
            raise SystemExit("--write-dispatch-table needs a CUDA device")
        correct = {}
        for shape_name, shape in shapes:
            for impl in ("fused", "views"):
                if impl in args.impls:
                    correct[(shape_name, impl)] = check_against_reference(device, dtype, shape, "spatial", False, impl)
        table_path = write_dispatch_table(rows, dtype, torch.device(device), correct)
        print(f"wrote {table_path} (correct: {correct})")

    env = environment(torch.device(device))
    payload = {"env": env, "dtype": str(dtype), "copy_bandwidth_GBps": roofline, "results": rows}
    for r in rows:
        r["shape"] = f"{r['shape_name']} {tuple(r['shape_BTPHD'])}"
        r["pct_roofline"] = 100 * r["roofline_fraction"]
    table = markdown_table(rows, ["shape", "pass", "impl", "mode", "median_ms", "p20_ms", "p80_ms", "tflops", "gbs",
                                  "pct_roofline", "speedup_vs_reference"])
    text = (f"{dtype}; device-to-device copy {roofline:.0f} GB/s (read + write), the roofline of the "
            f"GB/s column\n\n{table}\n")
    path = write_results(args.name or f"attention_{device}", payload, text)
    print(text)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
