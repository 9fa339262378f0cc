"""RPE geometry: time per clip of gfcore.metrics.geometry_estimate.estimate_geometry (VGGT camera + depth).

    python -m benchmarks.bench_vggt_geometry                                  # CPU: small config, 224 input
    python -m benchmarks.bench_vggt_geometry --device cuda --config vggt1b    # GPU: VGGT-1B sizes, 518 input

Random weights (the time does not depend on them; the camera head's output bias is set so
that fields of view are valid). A clip of --frames frames at --height x --width is cut into
calls of --frames-per-call frames overlapping by one, so the chaining and the resampling
back to the clip's resolution are included. Times: median, p20, p80 (CUDA events on GPU).
Writes benchmarks/results/bench_vggt_geometry_<device>_<config>.{json,md} and prints the table.
"""
from __future__ import annotations

import argparse

import torch

from benchmarks.common import environment, markdown_table, measure, write_results
from gfcore.geometry import VGGT, small_config
from gfcore.metrics.geometry_estimate import estimate_geometry
from gfcore.nvtx import nvtx_range

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
PRESETS = {
    "cpu": dict(config="small", frames=8, frames_per_call=4, size=224, height=128, width=128, dtypes=["fp32"],
                min_time_ms=1000.0, min_reps=2, warmup=1),
    "cuda": dict(config="vggt1b", frames=32, frames_per_call=16, size=518, height=256, width=256,
                 dtypes=["fp32", "bf16"], min_time_ms=2000.0, min_reps=5, warmup=2),
}


def build_model(config_name: str, device: torch.device) -> VGGT:
    config = small_config() if config_name == "small" else {}
    torch.manual_seed(0)
    with torch.device(device):  # random init directly on the device (VGGT-1B is slow to init on CPU)
        model = VGGT(**config, enable_camera=True, enable_depth=True, enable_point=False).eval()
    with torch.no_grad():  # the 4 refinement steps add this bias 4 times: fov 1 rad, identity rotation
        model.camera_head.pose_branch.fc2.bias.copy_(torch.tensor([0, 0, 0, 0, 0, 0, 1, 1.0, 1.0]) / 4)
    return model


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    for name in ("config", "frames", "frames_per_call", "size", "height", "width", "warmup", "min_reps"):
        parser.add_argument("--" + name.replace("_", "-"), type=str if name == "config" else int, default=None)
    parser.add_argument("--dtypes", nargs="+", choices=sorted(DTYPES), default=None)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    preset = dict(PRESETS["cuda" if device.type == "cuda" else "cpu"])
    preset.update({k: v for k, v in vars(args).items() if v is not None and k in preset})

    model = build_model(preset["config"], device)
    clip = torch.rand(preset["frames"], 3, preset["height"], preset["width"], device=device)
    rows = []
    for name in preset["dtypes"]:
        def run():
            with nvtx_range(f"bench_vggt_geometry.{name}"):
                estimate_geometry(clip, model, frames_per_call=preset["frames_per_call"],
                                  image_size=preset["size"], dtype=DTYPES[name])
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        stats = measure(run, device, preset["min_time_ms"], preset["min_reps"], preset["warmup"])
        row = {"dtype": name, **stats, "frames_per_s": preset["frames"] / (stats["median_ms"] / 1e3)}
        if device.type == "cuda":
            row["peak_gib"] = torch.cuda.max_memory_allocated(device) / 2 ** 30
        rows.append(row)

    columns = ["dtype", "median_ms", "p20_ms", "p80_ms", "reps", "frames_per_s"]
    columns += ["peak_gib"] if device.type == "cuda" else []
    table = markdown_table(rows, columns)
    payload = {"env": environment(device), "setup": preset, "results": rows}
    path = write_results(f"bench_vggt_geometry_{device.type}_{preset['config']}", payload, table)
    print(f"estimate_geometry: {preset['frames']} frames of {preset['height']}x{preset['width']}, "
          f"{preset['frames_per_call']} per call, input {preset['size']}, {preset['config']} config, "
          f"on {payload['env']['device']}\n")
    print(table)
    print(f"\nwrote {path}")
    return payload


if __name__ == "__main__":
    main()
