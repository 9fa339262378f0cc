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
Writes benchmarks/results/attention_<device>.json and .md (environment, commit, table).
"""
import argparse

import torch
from einops import rearrange

from benchmarks.common import copy_bandwidth_gbps, environment, markdown_table, measure, write_results
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
            results[name] = measure(fn, torch.device(device), min_time_ms=min_total_ms, min_reps=min_iters,
                                    warmup=1)
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
    parser.add_argument("--name", help="result file name (default attention_<device>)")
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
        if ref:
            r["speedup_vs_reference"] = ref["median_ms"] / r["median_ms"]
        r["roofline_fraction"] = r["gbs"] / roofline

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
