"""Teacher throughput: frames/s of VGGTTeacher at 518 x 518 for 16-frame calls, fp32 vs bf16.

    python -m benchmarks.bench_vggt_teacher                                  # CPU, small config
    python -m benchmarks.bench_vggt_teacher --device cuda --config vggt1b    # GPU, VGGT-1B sizes

Random weights (throughput does not depend on them). Each call runs under NVTX ranges
(bench_vggt_teacher.<dtype>, plus the teacher's own) for Nsight Systems. Writes JSON to
benchmarks/results/ and prints a markdown table.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from benchmarks.common import RESULTS_DIR as RESULTS, device_name, git_commit, sync
from gfcore.geometry import VGGT, VGGTTeacher, small_config
from gfcore.nvtx import nvtx_range

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def time_teacher(teacher: VGGTTeacher, frames: torch.Tensor, grid, warmup: int, repeats: int, tag: str):
    device = frames.device
    for _ in range(warmup):
        teacher(frames, grid=grid)
    sync(device)
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        with nvtx_range(f"bench_vggt_teacher.{tag}"):
            teacher(frames, grid=grid)
        sync(device)
        seconds.append(time.perf_counter() - start)
    return seconds


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--config", choices=["small", "vggt1b"], default=None,
                        help="default: small on CPU, vggt1b on CUDA")
    parser.add_argument("--frames", type=int, default=16, help="frames per teacher call")
    parser.add_argument("--size", type=int, default=518)
    parser.add_argument("--layers", type=int, nargs="+", default=None,
                        help="aggregator layers to extract (default: the last, so every block runs)")
    parser.add_argument("--grid", type=int, nargs=2, default=(32, 32), help="diffusion token grid")
    parser.add_argument("--dtypes", nargs="+", choices=sorted(DTYPES), default=["fp32", "bf16"])
    parser.add_argument("--warmup", type=int, default=None, help="default: 0 on CPU, 2 on CUDA")
    parser.add_argument("--repeats", type=int, default=None, help="default: 1 on CPU, 10 on CUDA")
    parser.add_argument("--out", default=None, help="JSON path (default benchmarks/results/vggt_teacher_<device>_<config>.json)")
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    on_gpu = device.type == "cuda"
    config_name = args.config or ("vggt1b" if on_gpu else "small")
    config = small_config() if config_name == "small" else {}
    warmup = args.warmup if args.warmup is not None else (2 if on_gpu else 0)
    repeats = args.repeats if args.repeats is not None else (10 if on_gpu else 1)

    torch.manual_seed(0)
    with torch.device(device):  # random init directly on the device (VGGT-1B is slow to init on CPU)
        model = VGGT(**config, enable_camera=False, enable_depth=False, enable_point=False)
    depth = model.aggregator.depth
    layers = args.layers or [depth - 1]
    frames = torch.rand(1, args.frames, 3, args.size, args.size, device=device)

    rows = []
    for name in args.dtypes:
        teacher = VGGTTeacher(model=model, layers=layers, dtype=DTYPES[name], frames_per_call=args.frames,
                              image_size=args.size)
        seconds = time_teacher(teacher, frames, tuple(args.grid), warmup, repeats, name)
        best, mean = min(seconds), sum(seconds) / len(seconds)
        row = {"dtype": name, "seconds_per_call_min": best, "seconds_per_call_mean": mean,
               "frames_per_s": args.frames / best, "repeats": repeats, "warmup": warmup}
        if on_gpu:
            row["max_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2 ** 30
            torch.cuda.reset_peak_memory_stats(device)
        rows.append(row)

    result = {
        "benchmark": "vggt_teacher", "device": device_name(device), "device_type": device.type,
        "torch": torch.__version__, "git_commit": git_commit(), "config": config_name,
        "params_aggregator": sum(p.numel() for p in model.parameters()),
        "frames_per_call": args.frames, "image_size": args.size, "layers": layers, "grid": list(args.grid),
        "results": rows,
    }
    if not on_gpu and hasattr(os, "getloadavg"):  # CPU numbers on a shared machine depend on its load
        result["cpu_count"] = os.cpu_count()
        result["load_avg_1m_after"] = os.getloadavg()[0]
    out = Path(args.out) if args.out else RESULTS / f"vggt_teacher_{device.type}_{config_name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))

    print(f"VGGT teacher, {config_name} config, {args.frames} frames of {args.size}x{args.size} per call, "
          f"layers {layers}, on {result['device']} (torch {torch.__version__})\n")
    print("| dtype | s / call (min) | s / call (mean) | frames / s |" + (" peak GiB |" if on_gpu else ""))
    print("|---|---|---|---|" + ("---|" if on_gpu else ""))
    for row in rows:
        line = (f"| {row['dtype']} | {row['seconds_per_call_min']:.3f} | {row['seconds_per_call_mean']:.3f} "
                f"| {row['frames_per_s']:.2f} |")
        print(line + (f" {row['max_memory_gib']:.1f} |" if on_gpu else ""))
    print(f"\nwrote {out}")
    return result


if __name__ == "__main__":
    main()
