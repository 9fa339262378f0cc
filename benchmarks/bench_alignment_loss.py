"""GeometryAlignmentLoss: eager vs torch.compile vs fused vs fused-chunked, and the GEMM floor.

    python -m benchmarks.bench_alignment_loss --device cuda   # 8k..128k tokens, bf16, H=1152 D=2048 P=2048
    python -m benchmarks.bench_alignment_loss --device cpu    # 2 threads, 4k and 16k tokens, fp32, H=384 D=512 P=512

Modes: forward (with autograd recording, as in training), backward (of a fresh graph),
full (forward + backward). Times: median with p20/p80 of CUDA events (perf_counter on CPU)
over >= --min-time-ms of repetitions, gathered in --rounds interleaved rounds over the
variants (4 on the CPU, where the machine's speed drifts). Peak memory: torch.cuda.max_memory_allocated during
one full step, total and above the inputs. The GEMM floor runs the same 15 matrix products
the fused path issues (5 forward, 10 backward) and nothing else. Each timed region is an
NVTX range "bench.<variant>.<mode>.<tokens>" in the gfcore domain.
"""
import argparse
import copy
from typing import Callable, Dict, List

import torch

from benchmarks.bytes_model import alignment_bytes
from benchmarks.common import (copy_bandwidth_gbps, environment, markdown_table, measure, sync, time_stats,
                               write_results)
from gfcore import GeometryAlignmentLoss, ops
from gfcore.losses.fused_path import mm_acc
from gfcore.nvtx import nvtx_range

PRESETS = {
    "cuda": dict(tokens=[8192, 16384, 32768, 65536, 131072], hidden=1152, target=2048, projector=2048, head=512,
                 dtype="bfloat16", chunk=16384, min_time_ms=100.0, min_reps=10, rounds=1),
    # A shared CPU drifts by several percent over minutes: variants take turns in 4 rounds and
    # each pools its rounds' samples, so drift hits all variants alike.
    "cpu": dict(tokens=[4096, 16384], hidden=384, target=512, projector=512, head=512, dtype="float32", chunk=4096,
                min_time_ms=2000.0, min_reps=5, rounds=4),
}
VARIANTS = ["eager", "compile", "fused", "fused_chunked", "gemm_floor"]
MODES = ["forward", "backward", "full"]


def build_losses(args, device, dtype) -> Dict[str, torch.nn.Module]:
    base = GeometryAlignmentLoss(args.hidden, args.target, projector_dim=args.projector, head_dim=args.head,
                                 check_finite=False).to(device=device, dtype=dtype)
    eager = copy.deepcopy(base)
    eager.impl = "reference"
    fused = copy.deepcopy(base)
    fused.impl = "fused"
    chunked = copy.deepcopy(fused)
    chunked.chunk_size = args.chunk
    return {"eager": eager, "compile": torch.compile(copy.deepcopy(eager)), "fused": fused,
            "fused_chunked": chunked}


def gemm_floor_steps(loss_fn, rows: int, device, dtype):
    """The fused path's matrix products on stand-in operands: (forward, backward) callables."""
    dims = [loss_fn.hidden_dim, loss_fn.projector[0].out_features, loss_fn.projector[2].out_features,
            loss_fn.target_dim, loss_fn.head[0].out_features, loss_fn.target_dim]
    acts = [torch.randn(rows, d, device=device, dtype=dtype) for d in dims]
    weights = [torch.randn(dims[i + 1], dims[i], device=device, dtype=dtype) for i in range(5)]

    def forward():
        for i in range(5):
            torch.mm(acts[i], weights[i].t())

    def backward():
        for i in reversed(range(5)):
            mm_acc(acts[i + 1].t(), acts[i])     # weight gradient
            torch.mm(acts[i + 1], weights[i])   # input gradient

    return forward, backward


def bench_point(args, variant: str, loss_fn, rows: int, device, dtype, samples: Dict[str, List[float]]) -> Dict:
    """Times each mode of one variant, adding the repetitions to samples[mode]; returns the
    peak memory of one full step (CUDA), above the inputs and in total."""
    h = torch.randn(rows, args.hidden, device=device, dtype=dtype, requires_grad=True)
    y = torch.randn(rows, args.target, device=device, dtype=dtype)
    params = list(loss_fn.parameters()) if variant != "gemm_floor" else []
    timing = dict(device=device, min_time_ms=args.min_time_ms / args.rounds,
                  min_reps=max(1, -(-args.min_reps // args.rounds)))

    def clear_grads():
        h.grad = None
        for p in params:
            p.grad = None

    if variant == "gemm_floor":
        fwd, bwd = gemm_floor_steps(args.reference_loss, rows, device, dtype)
        steps = {"forward": (fwd, None), "backward": (bwd, None), "full": (lambda: (fwd(), bwd()), None)}
    else:
        holder = {}

        def forward():
            holder["out"] = loss_fn(h, y).loss

        def make_graph():
            clear_grads()
            forward()

        steps = {
            "forward": (forward, clear_grads),
            # A fresh graph per repetition (built outside the timed region): compiled
            # backwards donate their buffers and cannot run twice on one graph.
            "backward": (lambda: holder["out"].backward(), make_graph),
            "full": (lambda: loss_fn(h, y).loss.backward(), clear_grads),
        }
    for mode in args.modes:
        fn, setup = steps[mode]
        with nvtx_range(f"bench.{variant}.{mode}.{rows}"):
            measure(fn, setup=setup, samples=samples.setdefault(mode, []), **timing)
    # Peak memory of one full step, above what the inputs and parameters already hold.
    memory = {}
    if device.type == "cuda":
        clear_grads()
        holder = None
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        steps["full"][0]()
        sync(device)
        peak = torch.cuda.max_memory_allocated(device)
        memory = {"peak_GB": peak / 1e9, "peak_above_inputs_GB": (peak - base) / 1e9}
    del h, y
    return memory


def bench_kernels(args, rows: int, device, dtype) -> List[Dict]:
    """Each memory-bound op alone: achieved bandwidth over the bytes it must move."""
    size = torch.tensor([], dtype=dtype).element_size()
    p, d = args.projector, args.target
    x_p, b_p, g_p = (torch.randn(rows, p, device=device, dtype=dtype), torch.randn(p, device=device, dtype=dtype),
                     torch.randn(rows, p, device=device, dtype=dtype))
    x_d, b_d, y_d = (torch.randn(rows, d, device=device, dtype=dtype), torch.randn(d, device=device, dtype=dtype),
                     torch.randn(rows, d, device=device, dtype=dtype))
    zhat, cos, norms = ops.bias_normalize_cosine(x_d, b_d, y_d, 1e-8)
    g_d, g_cos = torch.randn_like(x_d), torch.randn_like(cos)
    cases = {  # name: (callable, the bytes model's kernel name, [rows, cols] operand width)
        "bias_silu": (lambda: ops.bias_silu(x_p, b_p), p),
        "bias_silu_backward": (lambda: ops.bias_silu_backward(g_p, x_p, b_p), p),
        "bias_normalize_cosine": (lambda: ops.bias_normalize_cosine(x_d, b_d, y_d, 1e-8), d),
        "bias_normalize_cosine_backward": (
            lambda: ops.bias_normalize_cosine_backward(g_d, g_cos, zhat, y_d, cos, norms, 1e-8), d),
        "bias_mse": (lambda: ops.bias_mse(x_d, b_d, y_d), d),
    }
    out = []
    for name, (fn, cols) in cases.items():
        # Compulsory bytes (benchmarks/bytes_model.py): every input read once, every output
        # written once; the per-block partial column sums (under 1% here) are left out.
        model = alignment_bytes(name, rows, cols, size)
        nbytes = model["total"]
        with nvtx_range(f"bench.kernel.{name}.{rows}"):
            stats = measure(fn, device, min_time_ms=args.min_time_ms, min_reps=args.min_reps)
        out.append(dict(kernel=name, tokens=rows, cols=cols, MB=nbytes / 1e6, read_MB=model["read"] / 1e6,
                        write_MB=model["write"] / 1e6, GBps=nbytes / (stats["median_ms"] * 1e-3) / 1e9, **stats))
    return out


def summarize(rows: List[Dict], tokens: int) -> List[Dict]:
    """Per mode at one token count: each variant's time relative to eager and to the GEMM floor."""
    out = []
    for mode in MODES:
        by_variant = {r["variant"]: r for r in rows if r["mode"] == mode and r["tokens"] == tokens}
        if "eager" not in by_variant:
            continue
        for variant, r in by_variant.items():
            entry = dict(tokens=tokens, mode=mode, variant=variant, median_ms=r["median_ms"],
                         speedup_vs_eager=by_variant["eager"]["median_ms"] / r["median_ms"])
            if "compile" in by_variant:
                entry["speedup_vs_compile"] = by_variant["compile"]["median_ms"] / r["median_ms"]
            if "gemm_floor" in by_variant:
                entry["x_gemm_floor"] = r["median_ms"] / by_variant["gemm_floor"]["median_ms"]
            if "peak_GB" in r and "peak_GB" in by_variant["eager"]:
                entry["peak_vs_eager"] = r["peak_GB"] / by_variant["eager"]["peak_GB"]
            out.append(entry)
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cuda", "cpu"])
    parser.add_argument("--tokens", type=lambda s: [int(v) for v in s.split(",")])
    parser.add_argument("--hidden", type=int)
    parser.add_argument("--target", type=int)
    parser.add_argument("--projector", type=int)
    parser.add_argument("--head", type=int)
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--chunk", type=int, help="chunk_size of the fused_chunked variant")
    parser.add_argument("--variants", type=lambda s: s.split(","), default=VARIANTS)
    parser.add_argument("--modes", type=lambda s: s.split(","), default=MODES)
    parser.add_argument("--min-time-ms", type=float)
    parser.add_argument("--min-reps", type=int)
    parser.add_argument("--rounds", type=int, help="interleaved rounds over the variants (times pooled)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (CPU runs only)")
    parser.add_argument("--name", help="result file name (default alignment_loss_<device>)")
    args = parser.parse_args(argv)
    for key, value in PRESETS[args.device].items():
        if getattr(args, key.replace("-", "_"), None) is None:
            setattr(args, key, value)
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    torch.manual_seed(0)

    losses = build_losses(args, device, dtype)
    args.reference_loss = losses["eager"]
    results, kernels = [], []
    for tokens in args.tokens:
        samples = {variant: {} for variant in args.variants}
        memory = {}
        for round_index in range(args.rounds):
            for variant in args.variants:
                print(f"tokens={tokens} round={round_index + 1}/{args.rounds} variant={variant}", flush=True)
                memory[variant] = bench_point(args, variant, losses.get(variant), tokens, device, dtype,
                                              samples[variant])
                if device.type == "cuda":
                    torch.cuda.empty_cache()
        for variant in args.variants:
            for mode in args.modes:
                results.append(dict(variant=variant, mode=mode, tokens=tokens,
                                    **time_stats(samples[variant][mode]), **memory[variant]))
    kernels = bench_kernels(args, max(args.tokens), device, dtype)
    summary = []
    for tokens in args.tokens:
        summary += summarize(results, tokens)

    env = environment(device)
    config = {k: getattr(args, k) for k in ("tokens", "hidden", "target", "projector", "head", "dtype", "chunk",
                                            "min_time_ms", "min_reps", "rounds")}
    payload = dict(env=env, config=config, results=results, summary=summary, kernels=kernels)
    payload["copy_bandwidth_GBps"] = copy_bandwidth_gbps(device, nbytes=(1 << 30) if device.type == "cuda" else (1 << 28))
    for k in kernels:
        k["pct_of_copy_bw"] = 100.0 * k["GBps"] / payload["copy_bandwidth_GBps"]
    columns = ["tokens", "mode", "variant", "median_ms", "speedup_vs_eager", "speedup_vs_compile", "x_gemm_floor",
               "peak_vs_eager"]
    table = markdown_table(summary, columns)
    timing_table = markdown_table(results, ["tokens", "mode", "variant", "median_ms", "p20_ms", "p80_ms", "reps",
                                            "peak_GB", "peak_above_inputs_GB"])
    text = f"## Summary\n\n{table}\n\n## All timings\n\n{timing_table}\n"
    if kernels:
        text += "\n## Memory-bound kernels alone\n\n" + markdown_table(
            kernels, ["kernel", "tokens", "cols", "MB", "median_ms", "GBps", "pct_of_copy_bw"])
        text += (f"\n\nMB: the bytes model (benchmarks/bytes_model.py: inputs read once, outputs written once). "
                 f"Copy bandwidth on this device: {payload['copy_bandwidth_GBps']:.0f} GB/s (read + write, "
                 "measured with a device-to-device copy), the denominator of pct_of_copy_bw.\n")
    path = write_results(args.name or f"alignment_loss_{args.device}", payload, text)
    print(text)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
