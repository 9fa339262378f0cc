"""Throughput of the evaluation metrics: python -m benchmarks.bench_metrics [--device cpu|cuda].

Times PSNR+SSIM and LPIPS (AlexNet; random backbone, same cost as the real one) on a batch
of 256x256 frames, the float64 Frechet distance on 400-d I3D-sized features, and one RPE
frame pair (two Lucas-Kanade flow fields + reprojection) at 256x256. Writes JSON (device,
torch version, git commit, numbers) to benchmarks/results/ and prints a markdown table.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import git_commit

from gfcore.metrics.fvd import frechet_distance_features
from gfcore.metrics.lpips import load_lpips
from gfcore.metrics.psnr_ssim import psnr, ssim
from gfcore.metrics.rpe import reprojection_error
from gfcore.metrics.synthetic import camera_path, render_plane_scene


def _time(fn, device: torch.device, repeats: int, warmup: int = 1) -> dict:
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        samples.append(time.perf_counter() - start)
    return {"median_s": statistics.median(samples), "min_s": min(samples), "repeats": repeats}



def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--frames", type=int, default=16, help="frames per PSNR/SSIM/LPIPS batch")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    device = torch.device(args.device)
    g = torch.Generator().manual_seed(0)
    a = torch.rand(args.frames, 3, 256, 256, generator=g).to(device)
    b = torch.rand(args.frames, 3, 256, 256, generator=g).to(device)
    lpips_model = load_lpips("alex", random_backbone=True).to(device)
    feats_a, feats_b = np.random.default_rng(0).normal(size=(2, 256, 400))
    scene = {k: v.to(device) for k, v in render_plane_scene(camera_path(2), height=256, width=256, focal=240.0).items()}

    rows = [
        (f"PSNR+SSIM, {args.frames} frames 256x256", _time(lambda: (psnr(a, b), ssim(a, b)), device, args.repeats), args.frames),
        (f"LPIPS alex, {args.frames} frames 256x256", _time(lambda: lpips_model(a, b), device, args.repeats), args.frames),
        ("Frechet distance, 2x256 samples of 400-d", _time(lambda: frechet_distance_features(feats_a, feats_b), device, args.repeats), None),
        ("RPE, one frame pair 256x256", _time(
            lambda: reprojection_error(scene["frames"], scene["depth"], scene["intrinsics"], scene["c2w"]), device, args.repeats), None),
    ]
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    record = {
        "benchmark": "bench_metrics",
        "device": str(device),
        "device_name": device_name,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "git_commit": git_commit(),
        "results": [{"case": name, **timing, "frames_per_s": n / timing["median_s"] if n else None} for name, timing, n in rows],
    }
    out_dir = Path("benchmarks/results")
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"bench_metrics_{device.type}_{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(record, indent=2) + "\n")

    print(f"device: {device_name} ({device}), torch {torch.__version__}, {record['threads']} threads")
    print("| case | median (s) | frames/s |\n|---|---|---|")
    for row in record["results"]:
        fps = f"{row['frames_per_s']:.1f}" if row["frames_per_s"] else "-"
        print(f"| {row['case']} | {row['median_s']:.4f} | {fps} |")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
