"""Speed of the built-in synthetic data generator (CPU): ray casting vs. writing (H.264, npz, txt).

    python -m benchmarks.bench_synthetic [--num-clips 100 --num-frames 32 --resolution 128 --task camera]

Writes benchmarks/results/bench_synthetic.json (device, torch version, git commit, numbers) and
prints a markdown table. Use `nice` on shared machines.
"""
import argparse
import json
import os
import platform
import tempfile
import time

import torch

from benchmarks.common import git_commit

from gfcore.data.synthetic.generate import _write_clip, clip_key, generate_clip

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")



def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-clips", type=int, default=100)
    parser.add_argument("--num-frames", type=int, default=32)
    parser.add_argument("--resolution", type=int, default=128)
    parser.add_argument("--task", choices=["camera", "action"], default="camera")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=os.path.join(RESULTS_DIR, "bench_synthetic.json"))
    args = parser.parse_args(argv)

    render_s = write_s = 0.0
    with tempfile.TemporaryDirectory() as root:
        directory = os.path.join(root, "train")
        os.makedirs(directory)
        start = time.perf_counter()
        cpu_start = time.process_time()
        for index in range(args.num_clips):
            t0 = time.perf_counter()
            clip = generate_clip(args.seed, index, args.num_frames, args.resolution, args.task)
            t1 = time.perf_counter()
            _write_clip(directory, clip_key(args.seed, index, args.task), clip, args.task)
            write_s += time.perf_counter() - t1
            render_s += t1 - t0
        total_s = time.perf_counter() - start
        cpu_s = time.process_time() - cpu_start
        disk_mb = sum(os.path.getsize(os.path.join(directory, f)) for f in os.listdir(directory)) / 2**20

    frames = args.num_clips * args.num_frames
    result = {
        "benchmark": "bench_synthetic",
        "device": f"cpu: {_cpu_name()}, {os.cpu_count()} logical cores visible, 1 process",
        "torch": torch.__version__,
        "git_commit": git_commit(),
        "config": vars(args) | {"out": None},
        "total_s": round(total_s, 2),
        "process_cpu_s": round(cpu_s, 2),  # wall >> cpu means the machine was shared
        "load_avg_1min": round(os.getloadavg()[0], 2),
        "render_s": round(render_s, 2),
        "write_s": round(write_s, 2),
        "frames_per_s": round(frames / total_s, 1),
        "disk_mb": round(disk_mb, 1),
    }
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as handle:
        json.dump(result, handle, indent=1)
    print("| clips x frames @ res | task | total s | ray casting s | writing s | frames/s | disk MB |")
    print("|---|---|---|---|---|---|---|")
    print(f"| {args.num_clips} x {args.num_frames} @ {args.resolution} | {args.task} | {result['total_s']} | "
          f"{result['render_s']} | {result['write_s']} | {result['frames_per_s']} | {result['disk_mb']} |")
    print(f"\nprocess CPU time {result['process_cpu_s']} s, 1-min load average {result['load_avg_1min']}")
    print(f"{result['device']}; torch {result['torch']}; commit {result['git_commit'][:10]}; wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
