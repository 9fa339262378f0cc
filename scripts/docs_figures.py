"""The documentation's figures, drawn from committed results (rerun after those change):

    python scripts/docs_figures.py                 # kernel roofline + mutation scores
    python scripts/docs_figures.py --demo DIR      # also the demo's figures from a `gfcore demo` folder

docs/figures/kernel_roofline.png   benchmarks/results/kernels_static.json: the attention passes'
                                   arithmetic intensity on H100's datasheet roofs (static bounds,
                                   not measurements: no GPU has run the kernels yet)
docs/figures/mutation_scores.png   benchmarks/results/mutation.md: each module's score
docs/figures/demo/                 the demo's loss and per-frame PSNR plots and one rollout of each
                                   run (GIFs) from DIR (its report.md says what they show)
Needs matplotlib (the demo extra).
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
FIGURES = ROOT / "docs" / "figures"


def kernel_roofline(out: Path) -> None:
    import matplotlib.pyplot as plt
    import numpy as np

    facts = json.loads((RESULTS / "kernels_static.json").read_text())
    device = facts["roofline_devices"]["H100"]
    bandwidth = device["hbm_TBps"] * 1e12  # bytes/s
    intensity = np.logspace(0, 4, 200)
    fig, ax = plt.subplots(figsize=(7.5, 4.6))
    for peak, label, style in ((device["bf16_dense_TFLOPs"], "bf16 tensor cores", "-"),
                               (device["fp32_simt_TFLOPs"], "fp32 SIMT", "--")):
        ax.loglog(intensity, np.minimum(peak, bandwidth * intensity / 1e12), style, color="0.3",
                  label=f"{label}: {peak:g} TFLOP/s, HBM {device['hbm_TBps']:g} TB/s")
    markers = {"spatial": "o", "temporal": "s"}
    for row in facts["attention_roofline"]:
        family, direction = row["pass_"].split("_", 1)
        tflops = row["GFLOP"] / row["H100_us"] * 1e3  # the bound's rate: 1 GFLOP / us = 1000 TFLOP/s
        ax.loglog(row["intensity"], tflops, markers.get(family, "^"), alpha=0.75,
                  color="tab:blue" if direction.startswith("fwd") else "tab:orange")
    for family, marker in markers.items():
        for direction, color in (("forward", "tab:blue"), ("backward", "tab:orange")):
            ax.plot([], [], marker, color=color, label=f"{family} attention, {direction}")
    ax.set_xlabel("arithmetic intensity (FLOP / byte of HBM traffic)")
    ax.set_ylabel("bound (TFLOP/s)")
    ax.set_title(f"{device['name']}: static roofline of the attention kernels' shapes\n"
                 "(datasheet limits, not measurements; GPU timings pending)", fontsize=10)
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(fontsize=7.5, loc="lower right")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def mutation_scores(out: Path) -> None:
    import matplotlib.pyplot as plt

    rows = []
    for line in (RESULTS / "mutation.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 7 and cells[5].endswith("%"):
            rows.append((cells[0], float(cells[5].rstrip(" %")), "stale" in cells[6]))
        elif len(cells) == 7 and cells[1] == "not run":
            rows.append((cells[0], None, False))
    low = min(score for _, score, _ in rows if score is not None) - 5
    fig, ax = plt.subplots(figsize=(7.5, 0.28 * len(rows) + 1.2))
    names = [name + (" (stale)" if stale else "") for name, _, stale in rows]
    ax.barh(names, [low if score is None else score for _, score, _ in rows],
            color=["none" if score is None else "0.6" if stale else "tab:green" if score >= 99 else "tab:orange"
                   for _, score, stale in rows])
    for index, (_, score, _) in enumerate(rows):
        ax.text(low + 0.3 if score is None else score + 0.3, index, "not run" if score is None else f"{score:.1f} %",
                va="center", fontsize=7)
    ax.set_xlim(low, 103)
    ax.invert_yaxis()
    ax.tick_params(axis="y", labelsize=7)
    ax.set_xlabel("mutation score: killed / (mutants - equivalent), %")
    ax.set_title("benchmarks/results/mutation.md (grey: the code changed since its run)", fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def demo_figures(demo: Path, out: Path) -> str:
    """The demo report's plots, and one test clip's rollouts (baseline, GF) beside its ground truth."""
    import subprocess

    out.mkdir(parents=True, exist_ok=True)
    for name in ("loss.png", "psnr.png"):
        shutil.copy2(demo / name, out / name)
    gifs = sorted((demo / "samples" / "baseline" / "videos").glob("*.gif"))
    if not gifs:
        raise SystemExit(f"{demo}/samples/baseline/videos holds no GIF: is {demo} a finished `gfcore demo` folder?")
    key = gifs[0].stem
    for run in ("reference", "baseline", "gf"):
        shutil.copy2(demo / "samples" / run / "videos" / f"{key}.gif", out / f"{key}_{run}.gif")
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    (out / "SOURCE.txt").write_text(f"Copied by `scripts/docs_figures.py --demo` from a `gfcore demo` folder (the "
                                   f"checkout at {commit}): loss.png, psnr.png and the rollouts of test clip {key} "
                                   f"(ground truth, baseline, GF).\n")
    return key


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--demo", type=Path, help="a finished `gfcore demo` output folder")
    args = parser.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    FIGURES.mkdir(parents=True, exist_ok=True)
    kernel_roofline(FIGURES / "kernel_roofline.png")
    mutation_scores(FIGURES / "mutation_scores.png")
    if args.demo is not None:
        demo_figures(args.demo, FIGURES / "demo")
    print(f"wrote {FIGURES}")


if __name__ == "__main__":
    main()
