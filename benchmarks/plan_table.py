"""The README's memory table: `gfcore plan` figures for the paper's RealEstate10K setting.

    python -m benchmarks.plan_table [--out benchmarks/results/memory_plan.md]

Every cell is planned on the CPU (fake tensors, gfcore.train.plan.step_memory), none is
measured on a GPU. Rows: DiT-B / DiT-L (experiment=re10k: 256x256, 16 frames) with VGGT-1B
online or a feature cache, on 1 GPU (DDP) or 8 GPUs (FSDP2, bf16), with and without activation
checkpointing and the EMA on the host; and DFoT's U-ViT fine-tuned with GF
(experiment=re10k_gf_finetune). Columns: the
peak per GPU at 1, 4 and 8 clips per GPU. Then the cheapest recipe (fewest switches, then the
largest batch) that fits an 80 GB and a 24 GB GPU.
"""
from __future__ import annotations

import argparse
import json
import time
import warnings

import gfcore.train.plan  # noqa: F401 (this checkout's gfcore, as the other benchmarks)

GIB = 1024 ** 3
BATCHES = (1, 4, 8)
PATHS = ["data.root=/unused", "teacher.checkpoint=/unused", "train.init_from=/unused"]
ROWS = [
    # (label, overrides, world size, switches used)
    ("DiT-B, VGGT online, 1 GPU", ["experiment=re10k"], 1, ()),
    ("DiT-B, VGGT online, 1 GPU, checkpointing", ["experiment=re10k", "train.activation_checkpointing=true"], 1,
     ("checkpointing",)),
    ("DiT-B, feature cache, 1 GPU, checkpointing", ["experiment=re10k", "train.activation_checkpointing=true",
                                                     "teacher.cache=/unused"], 1, ("checkpointing", "cache")),
    ("DiT-B, VGGT online, 8 GPUs FSDP2, checkpointing", ["experiment=re10k", "train.activation_checkpointing=true",
                                                          "train.strategy=fsdp"], 8, ("checkpointing", "fsdp")),
    ("DiT-L, VGGT online, 1 GPU", ["experiment=re10k", "model=dit_l"], 1, ()),
    ("DiT-L, VGGT online, 1 GPU, checkpointing", ["experiment=re10k", "model=dit_l",
                                                   "train.activation_checkpointing=true"], 1, ("checkpointing",)),
    ("DiT-L, feature cache, 1 GPU, checkpointing", ["experiment=re10k", "model=dit_l",
                                                     "train.activation_checkpointing=true", "teacher.cache=/unused"],
     1, ("checkpointing", "cache")),
    ("DiT-L, VGGT online, 1 GPU, checkpointing, EMA on the host", ["experiment=re10k", "model=dit_l",
                                                                    "train.activation_checkpointing=true",
                                                                    "train.ema_device=cpu"], 1,
     ("checkpointing", "ema_device")),
    ("DiT-L, VGGT online, 8 GPUs FSDP2, checkpointing", ["experiment=re10k", "model=dit_l",
                                                          "train.activation_checkpointing=true", "train.strategy=fsdp"],
     8, ("checkpointing", "fsdp")),
    ("DFoT U-ViT + GF (authors' fine-tuning), 1 GPU", ["experiment=re10k_gf_finetune"], 1, ()),
    ("DFoT U-ViT + GF, 1 GPU, checkpointing, EMA on the host", ["experiment=re10k_gf_finetune",
                                                                 "train.activation_checkpointing=full",
                                                                 "train.ema_device=cpu"], 1,
     ("checkpointing", "ema_device")),
    ("DFoT U-ViT + GF, 8 GPUs FSDP2", ["experiment=re10k_gf_finetune", "train.strategy=fsdp"], 8, ("fsdp",)),
]


FAMILIES = ("DiT-B", "DiT-L", "DFoT")


def plan_cells():
    from gfcore.train import load_config
    from gfcore.train.plan import step_memory

    cells = []
    for label, overrides, world, switches in ROWS:
        peaks = {}
        for per_gpu in BATCHES:
            cfg = load_config([*overrides, *PATHS, f"train.batch_size={per_gpu * world}", "train.grad_accum=1"])
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                peaks[per_gpu] = step_memory(cfg, world_size=world, per_rank=per_gpu).peak_bytes
        cells.append({"row": label, "world_size": world, "switches": list(switches), "peak_bytes": peaks})
        print(label, {b: f"{p / GIB:.1f}" for b, p in peaks.items()}, flush=True)
    return cells


def format_table(cells, seconds) -> str:
    from gfcore.train.plan import FIT_RESERVE

    lines = ["| run (256x256, 16 frames) | " + " | ".join(f"{b} clip{'s' if b > 1 else ''}/GPU" for b in BATCHES)
             + " |", "|---|" + "---|" * len(BATCHES)]
    for cell in cells:
        peaks = {int(b): v for b, v in cell["peak_bytes"].items()}
        lines.append(f"| {cell['row']} | " + " | ".join(f"{peaks[b] / GIB:.1f} GiB" for b in BATCHES) + " |")
    lines.append("")
    for gib in (80, 24):
        budget = gib * GIB * (1 - FIT_RESERVE)
        for family in FAMILIES:
            # cheapest: the fewest switches, then the most clips per GPU
            fits = [(len(c["switches"]), -b, c["row"], b) for c in cells if c["row"].startswith(family)
                    for b in BATCHES if c["peak_bytes"][b if b in c["peak_bytes"] else str(b)] <= budget]
            recipe = f"{min(fits)[2]}, {min(fits)[3]} clip(s) per GPU" if fits else "nothing in the table"
            lines.append(f"- {family} on {gib} GB GPUs ({budget / GIB:.1f} GiB after the {FIT_RESERVE:.0%} "
                         f"reserve): {recipe}")
    lines.append(f"\nEvery cell planned by `gfcore plan` on the CPU (fake tensors, eager, bf16 autocast as on a GPU; "
                 f"{seconds:.0f} s for the table); none measured on a GPU (pending: benchmarks/bench_memory.py).")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="benchmarks/results/memory_plan.md")
    parser.add_argument("--from-json", action="store_true", help="format the saved cells again, planning nothing")
    args = parser.parse_args(argv)
    saved = args.out.replace(".md", ".json")
    if args.from_json:
        with open(saved) as handle:
            data = json.load(handle)
        cells, seconds = data["cells"], data.get("seconds", 0)
    else:
        start = time.perf_counter()
        cells = plan_cells()
        seconds = time.perf_counter() - start
        with open(saved, "w") as handle:
            json.dump({"cells": cells, "seconds": seconds}, handle, indent=1)
    text = format_table(cells, seconds)
    print(text)
    with open(args.out, "w") as handle:
        handle.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
