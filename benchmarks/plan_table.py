"""The README's memory table: `gfcore plan` figures for the paper's RealEstate10K setting.

    python -m benchmarks.plan_table [--out benchmarks/results/memory_plan.md]

Every cell is planned on the CPU (fake tensors, gfcore.train.plan.step_memory), none is
measured on a GPU. Rows: DiT-B / DiT-L (experiment=re10k: 256x256, 16 frames) with VGGT-1B
online or a feature cache, on 1 GPU (DDP) or 8 GPUs (FSDP2, bf16), with and without activation
checkpointing; and DFoT's U-ViT fine-tuned with GF (experiment=re10k_gf_finetune). Columns: the
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
    ("DiT-L, VGGT online, 8 GPUs FSDP2, checkpointing", ["experiment=re10k", "model=dit_l",
                                                          "train.activation_checkpointing=true", "train.strategy=fsdp"],
     8, ("checkpointing", "fsdp")),
    ("DFoT U-ViT + GF (authors' fine-tuning), 1 GPU", ["experiment=re10k_gf_finetune"], 1, ()),
    ("DFoT U-ViT + GF, 8 GPUs FSDP2", ["experiment=re10k_gf_finetune", "train.strategy=fsdp"], 8, ("fsdp",)),
]


def main(argv=None) -> int:
    from gfcore.train import load_config
    from gfcore.train.plan import FIT_RESERVE, step_memory

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="benchmarks/results/memory_plan.md")
    args = parser.parse_args(argv)
    start = time.perf_counter()
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
    lines = ["| run (256x256, 16 frames) | " + " | ".join(f"{b} clip{'s' if b > 1 else ''}/GPU" for b in BATCHES)
             + " |", "|---|" + "---|" * len(BATCHES)]
    for cell in cells:
        lines.append(f"| {cell['row']} | " + " | ".join(f"{cell['peak_bytes'][b] / GIB:.1f} GiB" for b in BATCHES)
                     + " |")
    lines.append("")
    for gib in (80, 24):
        budget = gib * GIB * (1 - FIT_RESERVE)
        fits = [(len(c["switches"]), -b, c["row"], b) for c in cells for b in BATCHES if c["peak_bytes"][b] <= budget]
        if fits:
            _, _, row, b = min(fits)
            lines.append(f"- cheapest recipe that fits one {gib} GB GPU ({budget / GIB:.1f} GiB after the "
                         f"{FIT_RESERVE:.0%} reserve): {row}, {b} clip(s) per GPU")
        else:
            lines.append(f"- nothing in the table fits one {gib} GB GPU")
    lines.append(f"\nAll cells planned by `gfcore plan` on the CPU (fake tensors, eager, bf16 autocast as on a GPU) in "
                 f"{time.perf_counter() - start:.0f} s; none measured on a GPU (pending).")
    text = "\n".join(lines) + "\n"
    print(text)
    with open(args.out, "w") as handle:
        handle.write(text)
    with open(args.out.replace(".md", ".json"), "w") as handle:
        json.dump({"cells": cells}, handle, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
