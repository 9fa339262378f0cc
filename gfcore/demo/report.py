"""The demo's report: report.md with the metric tables, loss plots and sample GIFs."""
from __future__ import annotations

import json
import os
from typing import Dict, List, Optional

import numpy as np

from gfcore.metrics.report import COLUMNS, format_cell, unavailable
from gfcore.train.teachers import ORACLE_LABEL
from gfcore.train.trainer import alignment_start

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
    for name in ("baseline", "gf"):
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


def _median_throughput(out: str, name: str) -> Optional[float]:
    """Median samples/s over the run's logged windows (the last window alone is noisy)."""
    values = [r["samples_per_s"] for r in read_log(os.path.join(out, "runs", name, "log.jsonl")) if "samples_per_s" in r]
    return float(np.median(values)) if values else None


def plot_metrics(out: str, results: Dict, trivial_means: Dict[str, float], context: int) -> List[str]:
    """One plot per frame metric (psnr.png, ssim.png, lpips.png when computed): baseline and GF
    per frame index after the context; the PSNR plot also shows the trivial predictors' means."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for metric in ("psnr", "ssim", "lpips"):
        curves = {name: results[name]["details"]["curves"].get(metric) for name in ("baseline", "gf")}
        if not all(curves.values()):
            continue
        fig, ax = plt.subplots(figsize=(6, 3.6))
        for name, curve in curves.items():
            ax.plot(range(context, context + len(curve)), curve, label=LABELS[name])
        if metric == "psnr":
            for (label, value), style in zip(trivial_means.items(), ("--", ":")):
                ax.axhline(value, color="gray", linestyle=style, label=f"{label} (mean)")
        ax.set(xlabel="frame index", ylabel=metric.upper(), title=f"{metric.upper()} per generated frame (mean over test clips)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = os.path.join(out, f"{metric}.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(os.path.basename(path))
    return paths


def _fmt(value: Optional[float], digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _model_runs(runs: Dict, model: str) -> List[str]:
    return [name for name in runs if name == model or name.startswith(f"{model}_s")]


def _per_seed(measured: Dict, names: List[str], key: str) -> str:
    """' (per training seed: a %, b %)' when there are several training seeds."""
    if len(names) == 1:
        return ""
    return " (per training seed: " + ", ".join(f"{100 * measured[n][key]:.1f} %" for n in names) + ")"


def analysis_section(runs: Dict, analysis: Dict, clips: List[Dict]) -> List[str]:
    """The measured conditions, the per-path table with the trivial predictors, per-clip results,
    the bootstrap over clips, the seeds and the depth probe."""
    from gfcore.demo.analysis import (NOISE_FRAME_LIMIT, OLD_RECIPE_NOISE_MEDIAN, bootstrap_mean_interval, spread,
                                      summarise_kinds)

    kinds = analysis["kinds"]
    kind_order = [k for k in ("forward", "pan", "orbit", "turn360") if k in set(kinds.values())]
    measured = analysis["runs"]
    # per model: per clip mean over its training seeds
    per_model = {}
    for model in ("baseline", "gf"):
        names = _model_runs(runs, model)
        per_model[model] = {k: float(np.mean([measured[n]["per_clip"][k] for n in names])) for k in kinds}
    rows = {LABELS["baseline"]: per_model["baseline"], LABELS["gf"]: per_model["gf"]}
    rows.update({f"_{name}_": values for name, values in analysis["trivial"].items()})
    summary = {row: summarise_kinds(values, kinds) for row, values in rows.items()}
    seeds = analysis["seeds"]
    lines = ["## Rollouts against ground truth", "",
             f"Mean PSNR (dB) of the generated frames after the context against the ground truth, per path kind "
             f"({len(kinds)} test clips; models: mean over {seeds} training seed{'s' if seeds > 1 else ''} and "
             f"{analysis['noise_seeds']} sampling-noise seeds). The two trivial predictors are rows: repeating the last "
             "context frame, and the clip's mean colour (an oracle: it uses every frame's colours).", "",
             "| predictor | " + " | ".join(kind_order) + " | all |", "|---|" + "---|" * (len(kind_order) + 1)]
    for row, values in summary.items():
        lines.append(f"| {row} | " + " | ".join(f"{values[k]:.2f}" for k in kind_order + ["all"]) + " |")
    copy, mean_colour = (summary[f"_{n}_"] for n in analysis["trivial"])
    lines += ["", "![PSNR per frame](psnr.png)", "", "### Conditions (measured)", ""]
    for model in ("baseline", "gf"):
        # (a) over every training seed's run: the worst noise-seed spread and every flagged frame
        names = _model_runs(runs, model)
        r = measured[model]
        noise_spread = max(max(measured[n]["per_seed_mean"]) - min(measured[n]["per_seed_mean"]) for n in names)
        hf_max = max(measured[n]["hf_max"] for n in names)
        hf_share = float(np.mean([measured[n]["hf_share_above_1_5"] for n in names]))
        noise_measured = all("noise_share" in measured[n] for n in names)
        if noise_measured:
            noise_max = max(measured[n]["noise_max"] for n in names)
            noise_share = float(np.mean([measured[n]["noise_share"] for n in names]))
            noise_text = (f"noise-dependent high-frequency energy per frame relative to the ground truth's (blocky colour "
                          f"noise; the old recipe's noisy rollouts read a median {OLD_RECIPE_NOISE_MEDIAN}, demo_recipes.md): "
                          f"max {noise_max:.3f}, share of frames above "
                          f"{NOISE_FRAME_LIMIT} {100 * noise_share:.1f} %{_per_seed(measured, names, 'noise_share')}")
        else:
            noise_share, noise_text = None, "noise-dependent part per frame not measured (needs --noise-seeds 2 or more)"
        ok_a = noise_spread < 0.5 and noise_measured and noise_share == 0.0
        ok_b = all(summary[LABELS[model]][k] > mean_colour[k] for k in kind_order)
        gaps = {k: summary[LABELS[model]][k] - copy[k] for k in ["all"] + [k for k in kind_order if k != "turn360"]}
        ok_c = all(v >= 0 for v in gaps.values())
        lines += [
            f"**{LABELS[model]}**",
            f"- (a) sampling-noise seeds {', '.join(f'{v:.2f}' for v in r['per_seed_mean'])} dB"
            + (f" (training seed 0); largest spread over the {len(names)} training seeds" if len(names) > 1 else
               ": spread") + f" {noise_spread:.2f} dB (< 0.5: {'met' if noise_spread < 0.5 else 'NOT met'}); "
            f"{noise_text} -> {'met' if ok_a else 'NOT met'}",
            f"- sharpness (not a condition): frames with over 1.5x the ground truth's high-frequency energy "
            f"{100 * hf_share:.1f} %{_per_seed(measured, names, 'hf_share_above_1_5')}, max {hf_max:.2f}x. Noise would "
            "read high here too, but so do a stale copy of a texture the camera has left and streaks at the patch "
            "grid, which every sampling seed shares: look at the GIFs",
            "- (b) every path kind above the clip-mean-colour predictor: "
            + ", ".join(f"{k} {summary[LABELS[model]][k] - mean_colour[k]:+.2f}" for k in kind_order)
            + f" dB -> {'met' if ok_b else 'NOT met'}",
            "- (c) at least repeating the last context frame (all clips, forward, pan, orbit): "
            + ", ".join(f"{k} {v:+.2f}" for k, v in gaps.items()) + f" dB -> {'met' if ok_c else 'NOT met'}", ""]

    # baseline vs GF, paired over clips
    diff = [per_model["gf"][k] - per_model["baseline"][k] for k in kinds]
    mean, low, high = bootstrap_mean_interval(diff)
    inside = low <= 0.0 <= high
    lines += ["## Baseline vs Geometry Forcing", "",
              f"GF minus baseline, mean PSNR over the {len(diff)} test clips (paired by clip): {mean:+.2f} dB, "
              f"95 % bootstrap interval over clips [{low:+.2f}, {high:+.2f}] dB. "
              + ("The interval contains 0: **the difference is inside the noise** of this test set."
                 if inside else "The interval excludes 0: the difference is outside the clip-to-clip noise of this "
                 "test set. " + ("It resamples clips only: with one training seed per model it says nothing about "
                                 "seed-to-seed variation (`gfcore demo --seeds 3`)." if seeds == 1 else
                                 "Compare it with the seed-to-seed spread below.")), ""]
    if seeds > 1:
        lines += ["| training seed | baseline | GF |", "|---|---|---|"]
        per_seed = {m: [float(np.mean(list(measured[n]["per_clip"].values()))) for n in _model_runs(runs, m)]
                    for m in ("baseline", "gf")}
        for i, (b, g) in enumerate(zip(per_seed["baseline"], per_seed["gf"])):
            lines.append(f"| {i} | {b:.2f} | {g:.2f} |")
        lines += [f"| mean +- sd | {np.mean(per_seed['baseline']):.2f} +- {_fmt(spread(per_seed['baseline']))} | "
                  f"{np.mean(per_seed['gf']):.2f} +- {_fmt(spread(per_seed['gf']))} |", ""]
    lines += ["<details><summary>per clip (dB)</summary>", "", "| clip | path | baseline | GF | GF - baseline | "
              "repeat last context | mean colour |", "|---|---|---|---|---|---|---|"]
    for key, kind in kinds.items():
        lines.append(f"| {key} | {kind} | {per_model['baseline'][key]:.2f} | {per_model['gf'][key]:.2f} | "
                     f"{per_model['gf'][key] - per_model['baseline'][key]:+.2f} | "
                     f"{analysis['trivial']['repeat last context frame'][key]:.2f} | "
                     f"{analysis['trivial']['clip mean colour'][key]:.2f} |")
    lines += ["", "</details>", ""]

    # depth probe
    pix = analysis["probe_pixels"]
    lines += ["## Depth probe", "",
              "A ridge probe from the aligned block's hidden states (clean frames, per patch) to the log of the "
              "patch's mean depth, fit on the training clips and scored on the test clips (lower AbsRel, higher "
              "delta < 1.25 are better).", "",
              "| features | AbsRel | delta < 1.25 |", "|---|---|---|"]
    for model in ("baseline", "gf"):
        names = _model_runs(runs, model)
        absrel = [measured[n]["probe"]["absrel"] for n in names]
        delta = [measured[n]["probe"]["delta1"] for n in names]
        sd = f" +- {spread(absrel):.3f}" if len(names) > 1 else ""
        lines.append(f"| {LABELS[model]}, block {{align}} | {np.mean(absrel):.3f}{sd} | {np.mean(delta):.3f} |")
    lines += [f"| raw patch pixels (no model) | {pix['absrel']:.3f} | {pix['delta1']:.3f} |",
              f"| constant (training mean depth) | {pix['constant_absrel']:.3f} | {pix['constant_delta1']:.3f} |", "",
              "With the oracle pointmap teacher the GF number is partly by construction: GF trains this block to "
              "match features computed from the ground-truth depth and cameras, so a linear probe reading depth "
              "back out of it measures how well the alignment took, not geometry the model discovered. The "
              "baseline's number is the informative one: how much depth a model trained only to denoise video "
              "carries in the same block, against the pixels-only and constant floors above.", ""]
    return lines


def write_report(out: str, cfg, runs: Dict, summaries: Dict, results: Dict, clips: List[Dict], timings: Dict,
                 args, analysis: Optional[Dict] = None) -> str:
    plot_training(out, runs)
    m = cfg.model
    trivial_means = ({name: float(np.mean(list(v.values()))) for name, v in analysis["trivial"].items()}
                     if analysis else {})
    plot_metrics(out, results, trivial_means, cfg.sample.context_frames)
    reused = (analysis or {}).get("reused", {})
    train_note = ", ".join(f"{n} {timings[f'train_{n}_s']:.0f} s" + (" (reused: finished run)" if reused.get(n) else "")
                           for n in runs)
    if "train_wall_s" in timings:  # with runs trained side by side their times overlap: give the wall time
        train_note = f"{timings['train_wall_s']:.0f} s for all runs: {train_note}"
    start = alignment_start(cfg)
    lines = [
        "# gfcore demo: baseline vs Geometry Forcing",
        "",
        f"**Teacher: {ORACLE_LABEL}.** The GF run aligns block {m.align_depth} of {m.depth} with features built from "
        "the ground-truth depth and cameras of the synthetic scenes (not VGGT): an oracle for offline runs and "
        "tests. Numbers here say nothing about VGGT-based Geometry Forcing."
        + (f" It aligns from step {start} of {cfg.train.steps} on (loss.align_start "
           f"{cfg.loss.align_start}), training on the diffusion loss alone before." if start else ""),
        "",
        f"- data: {cfg.data.num_clips} synthetic training clips x {cfg.data.clip_frames} frames at "
        f"{cfg.data.resolution[0]}x{cfg.data.resolution[1]} px; {len(clips)} test clips (path kinds cycle "
        f"{', '.join(dict.fromkeys(c['kind'] for c in clips))})",
        f"- model: VideoDiT width {m.hidden_dim}, depth {m.depth}, patch {m.patch_size}, predicting "
        f"{m.get('prediction', 'v')}; {cfg.train.steps} steps, batch {cfg.train.batch_size}, "
        f"{cfg.train.num_frames}-frame windows, lr {cfg.train.lr} ({cfg.train.lr_decay}), loss in "
        f"{cfg.train.get('loss_space', 'v')} space, noise {cfg.train.get('noise_mode', 'independent')} "
        f"(t shift {cfg.train.get('t_shift', 1.0)}); baseline and GF from the same initial weights, batches and noise",
        f"- sampling: {cfg.sample.method}, {cfg.sample.steps} step{'s' if cfg.sample.steps > 1 else ''}, "
        f"{cfg.sample.context_frames} context frames, window {cfg.sample.window}, "
        f"{'EMA' if cfg.sample.use_ema else 'raw (non-EMA)'} weights; rollouts of {args.rollout_frames} frames from "
        f"the first {cfg.sample.context_frames} ground-truth frames along the ground-truth camera path",
        f"- scale preset: {args.scale}; wall time {timings['total_s']:.0f} s (train {train_note})",
        "",
    ]
    if analysis:
        lines += [line.replace("{align}", str(m.align_depth)) for line in analysis_section(runs, analysis, clips)]
    lines += [
        "## gfcore.metrics (seed-0 runs, first sampling seed; frames after the context)",
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

    for name in ("baseline", "gf"):
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
              "![SSIM per frame](ssim.png)", "",
              "## Training", "", "![losses](loss.png)", "",
              "| run | final diffusion loss | final cosine | samples/s (median over the run) | trained |",
              "|---|---|---|---|---|"]
    for name in runs:
        final = summaries[name]["final"]
        cosine = f"{final['cosine']:.3f}" if "cosine" in final else "n/a"
        median = _median_throughput(out, name)
        trained = ("reused the finished run (not retrained)" if reused.get(name)
                   else f"{timings.get(f'train_{name}_s', 0):.0f} s")
        lines.append(f"| {name} | {final['diffusion']:.4f} | {cosine} | {_fmt(median, 1)} | {trained} |")
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
