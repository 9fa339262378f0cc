"""The demo's report: report.md with the metric tables, loss plots and sample GIFs."""
from __future__ import annotations

import json
import os
from typing import Dict, List

from gfcore.metrics.report import COLUMNS, format_cell, unavailable
from gfcore.train.teachers import ORACLE_LABEL

LABELS = {"baseline": "baseline (no alignment)", "gf": f"Geometry Forcing, {ORACLE_LABEL}"}


def read_log(path: str) -> List[Dict]:
    """The metric records of a log.jsonl (event records, e.g. a resume, left out)."""
    with open(path) as handle:
        return [r for r in (json.loads(line) for line in handle if line.strip()) if "event" not in r]


def plot_training(out: str, runs: Dict[str, str]) -> str:
    """loss.png: diffusion loss of both runs, and the GF run's mean cosine to the teacher."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_cos) = plt.subplots(1, 2, figsize=(10, 3.6))
    for name in runs:
        log = read_log(os.path.join(out, "runs", name, "log.jsonl"))
        ax_loss.plot([r["step"] for r in log], [r["diffusion"] for r in log], label=LABELS[name])
        if name == "gf":
            ax_cos.plot([r["step"] for r in log], [r["cosine"] for r in log], color="tab:orange", label=LABELS[name])
    ax_loss.set(xlabel="step", ylabel="flow-matching loss", title="diffusion loss")
    ax_loss.set_yscale("log")
    ax_cos.set(xlabel="step", ylabel="mean cosine", title=f"alignment with the {ORACLE_LABEL}")
    for ax in (ax_loss, ax_cos):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    path = os.path.join(out, "loss.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(out: str, cfg, runs: Dict, summaries: Dict, results: Dict, clips: List[Dict], timings: Dict,
                 args) -> str:
    plot_training(out, runs)
    m = cfg.model
    lines = [
        "# gfcore demo: baseline vs Geometry Forcing",
        "",
        f"**Teacher: {ORACLE_LABEL}.** The GF run aligns block {m.align_depth} of {m.depth} with features built from "
        "the ground-truth depth and cameras of the synthetic scenes (not VGGT): an oracle for offline runs and "
        "tests. Numbers here say nothing about VGGT-based Geometry Forcing.",
        "",
        f"- data: {cfg.data.num_clips} synthetic training clips x {cfg.data.clip_frames} frames at "
        f"{cfg.data.resolution[0]}x{cfg.data.resolution[1]} px; {len(clips)} test clips (path kinds "
        f"{', '.join(c['kind'] for c in clips)})",
        f"- model: VideoDiT width {m.hidden_dim}, depth {m.depth}, patch {m.patch_size}; "
        f"{cfg.train.steps} steps, batch {cfg.train.batch_size}, {cfg.train.num_frames}-frame windows, "
        "both runs from the same initial weights and the same batches and noise",
        f"- sampling: {cfg.sample.method}, {cfg.sample.steps} steps, {cfg.sample.context_frames} context frames, "
        f"window {cfg.sample.window}, {'EMA' if cfg.sample.use_ema else 'raw (non-EMA)'} weights; rollouts of {args.rollout_frames} frames from the first "
        f"{cfg.sample.context_frames} ground-truth frames along the ground-truth camera path",
        f"- scale preset: {args.scale}; wall time {timings['total_s']:.0f} s "
        f"(train {timings['train_baseline_s']:.0f} + {timings['train_gf_s']:.0f} s)",
        "",
        "## Metrics (frames after the context)",
        "",
        "| model | " + " | ".join(COLUMNS) + " | RVE PSNR | RVE SSIM |",
        "|---|" + "---|" * (len(COLUMNS) + 2),
    ]
    reasons: List[str] = []

    def cell(column: str, value) -> str:
        if isinstance(value, str) and value.startswith("unavailable"):
            if value not in reasons:
                reasons.append(value)
            return f"unavailable [{reasons.index(value) + 1}]"
        return format_cell(column, value)

    for name in runs:
        metrics = results[name]["metrics"]
        rve = results[name]["details"].get("rve") or {}
        lines.append(f"| {LABELS[name]} | " + " | ".join(
            cell(c, metrics.get(c, unavailable("not computed"))) for c in COLUMNS) +
            f" | {cell('PSNR', rve.get('psnr', unavailable('no revisit clips')))}"
            f" | {cell('SSIM', rve.get('ssim', unavailable('no revisit clips')))} |")
    lines += [""] + [f"[{i + 1}] {reason}" for i, reason in enumerate(reasons)]
    lines += ["", "RPE: pixels, Lucas-Kanade flow against the ground-truth cameras and depth of the path "
              "(ground truth itself: " + format_cell("RPE", (results["gf"]["details"].get("rpe") or {}).get("ground_truth"))
              + "). RVE: first vs last frame of the turn360 (360-degree revisit) rollouts; FID needs Inception "
              "weights. Full tables: eval/<model>/results.md.", "",
              "## Training", "", "![losses](loss.png)", "",
              "| model | final diffusion loss | final cosine | samples/s |", "|---|---|---|---|"]
    for name in runs:
        final = summaries[name]["final"]
        cosine = f"{final['cosine']:.3f}" if "cosine" in final else "n/a"
        lines.append(f"| {LABELS[name]} | {final['diffusion']:.4f} | {cosine} | {final['samples_per_s']:.1f} |")
    lines += ["", "## Samples (reference | baseline | GF with the oracle pointmap teacher)", ""]
    for clip in clips:
        key = clip["key"]
        cells = " ".join(f"![{who}](samples/{folder}/videos/{key}.gif)"
                         for who, folder in (("reference", "reference"), ("baseline", "baseline"), ("gf", "gf")))
        lines += [f"**{key}** ({clip['kind']})", "", cells, ""]
    path = os.path.join(out, "report.md")
    with open(path, "w") as handle:
        handle.write("\n".join(lines) + "\n")
    return path
