"""Benchmark: fused factorized attention vs the einops + SDPA reference vs SDPA alone.

    python -m benchmarks.bench_attention --device cuda     # the issue's shapes, CUDA events
    python -m benchmarks.bench_attention --device cpu      # one small shape, to exercise the script

Implementations, all fed the three strided views of a packed qkv [B, T, P, 3, H, D]:
  fused:     gfcore ops (impl="fused"): read the views in place, write [B, T, P, H, D];
  reference: impl="reference": rearranges + contiguous copies around SDPA (flash backend on CUDA);
  sdpa:      SDPA alone on tensors already laid out as [(B T) or (B P), H, S, D] (no copies).
Modes: forward, backward (autograd of a retained graph), forward+backward. FLOPs follow
FlashAttention's count (4 N S^2 D forward, half if causal; backward 2.5x). Bytes are the
minimum traffic (forward: q, k, v, out, lse; backward: q, k, v, out, dout, lse, dq, dk, dv), so
GB/s against the measured device-to-device copy bandwidth is the memory roofline fraction.
Writes JSON to benchmarks/results/ and prints a markdown table.
"""
import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import time

import torch
from einops import rearrange

from gfcore.nvtx import nvtx_range
from gfcore.ops import attention as attn

# name, (B, T, P, H, D)
CUDA_SHAPES = [
    ("base", (8, 16, 1024, 16, 64)),
    ("P=256", (8, 16, 256, 16, 64)),
    ("T=32", (8, 32, 1024, 16, 64)),
    ("D=128", (8, 16, 1024, 8, 128)),
]
CPU_SHAPES = [("small", (1, 8, 64, 2, 32))]
PASSES = [("spatial", False), ("temporal", False), ("temporal", True)]
IMPLS = ("fused", "reference", "sdpa")
MODES = ("forward", "backward", "fwd+bwd")


def _git_commit() -> str:
    try:
        return subprocess.check_output(["git", "rev-parse", "HEAD"], text=True,
                                       cwd=os.path.dirname(__file__)).strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _quantiles(samples_ms):
    s = sorted(samples_ms)
    pick = lambda f: s[min(len(s) - 1, int(f * len(s)))]
    return {"median_ms": statistics.median(s), "p20_ms": pick(0.2), "p80_ms": pick(0.8),
            "iterations": len(s)}


def time_fn(fn, device: str, min_total_ms: float, min_iters: int):
    """Per-call times: CUDA events on CUDA, perf_counter on CPU; >= min_total_ms of calls."""
    fn()  # warm-up (and autotuning / lazy init)
    if device == "cuda":
        torch.cuda.synchronize()
    samples, total = [], 0.0
    while total < min_total_ms or len(samples) < min_iters:
        if device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            ms = start.elapsed_time(end)
        else:
            t0 = time.perf_counter()
            fn()
            ms = (time.perf_counter() - t0) * 1e3
        samples.append(ms)
        total += ms
    return _quantiles(samples)


def copy_bandwidth_gbs(device: str) -> float:
    """Device-to-device copy bandwidth (read + write), the memory roofline of this run."""
    x = torch.empty((256 if device == "cuda" else 32) * 2**20, dtype=torch.uint8, device=device)
    y = torch.empty_like(x)
    stats = time_fn(lambda: y.copy_(x), device, 100.0, 10)
    return 2 * x.numel() / (stats["median_ms"] * 1e-3) / 1e9


def _callable(impl, mode, causal, q, k, v, sdpa_inputs):
    if impl == "sdpa":
        return lambda: torch.nn.functional.scaled_dot_product_attention(*sdpa_inputs,
                                                                          is_causal=causal)
    kind = "fused" if impl == "fused" else "reference"
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
            results[name] = time_fn(fn, device, min_total_ms, min_iters)
    return results


def _flops(shape, mode, causal):
    b, t, p, h, d = shape
    seqs, s = (b * t * h, p) if mode == "spatial" else (b * p * h, t)
    fwd = 4.0 * seqs * s * s * d * (0.5 if causal else 1.0)
    return {"forward": fwd, "backward": 2.5 * fwd, "fwd+bwd": 3.5 * fwd}


def _bytes(shape, dtype):
    b, t, p, h, d = shape
    elt = torch.finfo(dtype).bits // 8
    n, rows = b * t * p * h * d, b * t * p * h
    fwd = 4 * n * elt + 4 * rows
    bwd = 8 * n * elt + 4 * rows
    return {"forward": fwd, "backward": bwd, "fwd+bwd": fwd + bwd}


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
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
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
    roofline = copy_bandwidth_gbs(device)

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
                flops, nbytes = _flops(shape, mode, causal), _bytes(shape, dtype)
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
        r["speedup_vs_reference"] = ref["median_ms"] / r["median_ms"] if ref else None
        r["roofline_fraction"] = r["gbs"] / roofline

    device_name = (torch.cuda.get_device_name() if device == "cuda"
                   else platform.processor() or platform.machine())
    meta = {"benchmark": "attention", "device": device, "device_name": device_name,
            "torch": torch.__version__, "cuda": torch.version.cuda, "dtype": str(dtype),
            "git_commit": _git_commit(), "copy_bandwidth_gbs": roofline,
            "utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    os.makedirs(args.out, exist_ok=True)
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    path = os.path.join(args.out, f"attention_{device}_{stamp}.json")
    with open(path, "w") as f:
        json.dump({"meta": meta, "results": rows}, f, indent=1)

    print(f"\n{meta['device_name']}, torch {meta['torch']}, CUDA {meta['cuda']}, {dtype}, "
          f"commit {meta['git_commit'][:10]}, copy roofline {roofline:.0f} GB/s\n")
    print("| shape | pass | impl | mode | median ms | p20 | p80 | TFLOP/s | GB/s | % roofline "
          "| x reference |")
    print("|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        speed = f"{r['speedup_vs_reference']:.2f}" if r["speedup_vs_reference"] else "-"
        print(f"| {r['shape_name']} {tuple(r['shape_BTPHD'])} | {r['pass']} | {r['impl']} | "
              f"{r['mode']} | {r['median_ms']:.3f} | {r['p20_ms']:.3f} | {r['p80_ms']:.3f} | "
              f"{r['tflops']:.1f} | {r['gbs']:.0f} | {100 * r['roofline_fraction']:.0f} | "
              f"{speed} |")
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
