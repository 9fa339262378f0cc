"""The memory plan (gfcore plan) against a real step on a GPU: torch.cuda.max_memory_allocated.

    python -m benchmarks.bench_memory --device cuda [--out benchmarks/results/memory_plan_vs_cuda.json]

For each of three configs (a DiT with the pointmap teacher, a DiT with a random-weight VGGT, the
DFoT U-ViT with GF; sizes chosen to run in well under 3 minutes on one H100) it plans the step on
fake tensors (the CPU), then runs the same two optimizer steps for real on the device from a
fresh allocator (torch.cuda.reset_peak_memory_stats) and compares the planned peak with the
allocator's peak. The goal is within 10 %; what the plan leaves out (the CUDA context, cuBLAS
workspaces, the caching allocator's rounding) shows as the measured excess. No GPU has run it
yet: its figures are pending.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import time
import warnings

import torch

CONFIGS = {
    "dit_small_pointmap": ["experiment=demo", "teacher=pointmap", "data.resolution=[64,64]", "train.num_frames=8",
                           "train.batch_size=4"],
    "dit_b_vggt_random": ["experiment=re10k", "data.root=/unused", "teacher.checkpoint=/unused",
                          "data.resolution=[128,128]", "train.num_frames=8", "train.batch_size=2",
                          "teacher.frames_per_call=8", "teacher.image_size=252"],
    "dfot_tiny_gf": ["model=dfot_tiny", "train.objective=dfot", "teacher=pointmap", "data.resolution=[64,64]",
                     "train.num_frames=8", "train.batch_size=2", "loss.projector_dim=256", "loss.head_dim=64",
                     "data.camera=true"],
}


@contextlib.contextmanager
def cuda_peak(record, device):
    torch.cuda.synchronize(device)
    yield
    torch.cuda.synchronize(device)
    record["peak"] = torch.cuda.max_memory_allocated(device)


def main(argv=None) -> int:
    from gfcore.train import load_config
    from gfcore.train.plan import step_memory

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--configs", nargs="*", default=list(CONFIGS))
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    rows = []
    for name in args.configs:
        cfg = load_config([*CONFIGS[name], "train.device=" + args.device, "out_dir=/tmp/gfcore_bench_memory"])
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            planned = step_memory(cfg)
        plan_s = time.perf_counter() - start
        record = {}
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                real = step_memory(cfg, fake=False, device=args.device,
                                   around_steps=lambda: cuda_peak(record, device))
            measured = record["peak"]
        else:
            raise SystemExit("--device cpu: the CPU check (the allocator's record through the profiler) is "
                             "python_tests/test_train_plan.py::test_plan_matches_the_allocator_on_a_real_step")
        rows.append({"config": name, "planned_bytes": planned.peak_bytes, "measured_bytes": measured,
                     "tracked_real_bytes": real.peak_bytes, "error": planned.peak_bytes / measured - 1,
                     "plan_seconds": plan_s, "peak_during": planned.peak_during})
        print(f"{name:22s} planned {planned.peak_bytes / 2**20:9.1f} MiB  measured {measured / 2**20:9.1f} MiB  "
              f"error {100 * (planned.peak_bytes / measured - 1):+6.1f} %  (plan {plan_s:.1f} s)")
    result = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "torch": torch.__version__, "rows": rows}
    try:
        import subprocess

        result["commit"] = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    except OSError:
        pass
    if args.out:
        with open(args.out, "w") as handle:
            json.dump(result, handle, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
