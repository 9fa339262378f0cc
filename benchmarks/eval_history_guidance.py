"""History guidance on the demo's 360-degree revisit clips: does it keep long rollouts consistent?

Takes a trained run (e.g. a `gfcore demo` run folder, or `gfcore train experiment=demo ...`),
builds the demo's test split (the synthetic test scenes; every fourth clip is a turn360 path
that ends at its start pose), rolls out the turn360 clips from their first frames along their
ground-truth cameras for each history-guidance setting and seed, and reports

- revisit PSNR / SSIM: the last generated frame against the first frame (the pair metrics of
  RVE; RVE's FID needs Inception weights, which this machine does not have), and
- PSNR against the ground-truth frames (mean over the generated frames; the last window's mean).

    python -m benchmarks.eval_history_guidance --run RUN_DIR [--test-clips 16] [--seeds 0 1 2]

Writes benchmarks/results/history_guidance_<tag>.json and .md.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from typing import Dict, List

import numpy as np
import torch

from benchmarks.common import RESULTS_DIR, environment, git_commit

SETTINGS = [("none", {"mode": "none"}),
            ("vanilla x1.5", {"mode": "vanilla", "scale": 1.5}),
            ("vanilla x3", {"mode": "vanilla", "scale": 3.0}),
            ("stabilized x1.5 (k=0.02)", {"mode": "stabilized", "scale": 1.5, "stabilization_level": 0.02}),
            ("stabilized x3 (k=0.02)", {"mode": "stabilized", "scale": 3.0, "stabilization_level": 0.02}),
            ("fractional x1.5 (k=0.5)", {"mode": "fractional", "scale": 1.5, "fractional_level": 0.5}),
            ("fractional x3 (k=0.5)", {"mode": "fractional", "scale": 3.0, "fractional_level": 0.5})]


def _psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """PSNR of [..., 3, H, W] images in [-1, 1] mapped to [0, 1], per leading index."""
    mse = (((a.float() + 1) / 2 - (b.float() + 1) / 2) ** 2).flatten(-3).mean(-1)
    return 10 * torch.log10(1.0 / mse.clamp_min(1e-12))


def main(argv=None) -> int:
    from omegaconf import OmegaConf

    from gfcore.demo.job import _test_split
    from gfcore.metrics.rve import revisit_pair_metrics
    from gfcore.sample import rollout
    from gfcore.sample.run import load_trained_model

    parser = argparse.ArgumentParser(prog="python -m benchmarks.eval_history_guidance")
    parser.add_argument("--run", required=True, help="trained run folder (final.pt)")
    parser.add_argument("--test-clips", type=int, default=16, help="test clips generated (every 4th is turn360)")
    parser.add_argument("--rollout-frames", type=int, default=32)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--tag", default="demo_cpu")
    parser.add_argument("--settings", nargs="+", default=[label for label, _ in SETTINGS],
                        help="labels of SETTINGS to run (default: all)")
    args = parser.parse_args(argv)

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    start = time.perf_counter()
    load_start = os.getloadavg()
    model, run_cfg = load_trained_model(args.run, use_ema=bool(run_cfg_use_ema(args.run)))
    cfg = OmegaConf.create(run_cfg)
    test = _test_split(cfg.data, args.test_clips, args.rollout_frames)
    clips = []
    for index in range(len(test)):
        clip = test[index]
        with np.load(os.path.join(test.raw_dir, f"{clip['key']}.depth.npz"), allow_pickle=False) as stored:
            if str(stored["kind"]) == "turn360":
                clips.append(clip)
    frames = torch.stack([c["frames"] for c in clips])
    intrinsics, c2w = torch.stack([c["intrinsics"] for c in clips]), torch.stack([c["c2w"] for c in clips])
    s = cfg.sample
    context = int(s.context_frames)
    gt_revisit = revisit_pair_metrics((frames[:, 0] + 1) / 2, (frames[:, -1] + 1) / 2)
    rows: List[Dict] = []
    for label, hg in [(label, hg) for label, hg in SETTINGS if label in args.settings]:
        per_seed = []
        t0 = time.perf_counter()
        for seed in args.seeds:
            video = rollout(model, frames[:, :context], frames.shape[1], int(s.window), context, int(s.steps),
                            str(s.method), intrinsics=intrinsics, c2w=c2w,
                            generator=torch.Generator().manual_seed(seed), guidance_scale=float(s.guidance_scale),
                            history_guidance=hg)
            pair = revisit_pair_metrics((video[:, 0] + 1) / 2, (video[:, -1] + 1) / 2)
            psnr_gt = _psnr(video[:, context:], frames[:, context:])  # [clips, frames]
            per_seed.append({"seed": seed, "revisit_psnr": float(pair["psnr"].mean()),
                             "revisit_ssim": float(pair["ssim"].mean()),
                             "psnr_vs_gt": float(psnr_gt.mean()),
                             "psnr_vs_gt_last_window": float(psnr_gt[:, -(int(s.window) - context):].mean())})
        summary = {k: [float(np.mean([p[k] for p in per_seed])), float(np.std([p[k] for p in per_seed]))]
                   for k in ("revisit_psnr", "revisit_ssim", "psnr_vs_gt", "psnr_vs_gt_last_window")}
        rows.append({"setting": label, "history_guidance": hg, "mean_std": summary, "per_seed": per_seed,
                     "seconds": time.perf_counter() - t0})
        print(label, {k: f"{v[0]:.3f}+-{v[1]:.3f}" for k, v in summary.items()}, flush=True)
    result = {"run": os.path.abspath(args.run), "clips": [c["key"] for c in clips], "seeds": args.seeds,
              "rollout_frames": args.rollout_frames, "sample": OmegaConf.to_container(s, resolve=True),
              "ground_truth_revisit": {"psnr": float(gt_revisit["psnr"].mean()), "ssim": float(gt_revisit["ssim"].mean())},
              "train_steps": int(cfg.train.steps), "teacher": cfg.teacher.name, "rows": rows,
              "load_average_start_end": [load_start, os.getloadavg()], "seconds": time.perf_counter() - start,
              "commit": git_commit(), "environment": environment(torch.device("cpu"))}
    RESULTS_DIR.mkdir(exist_ok=True)
    (RESULTS_DIR / f"history_guidance_{args.tag}.json").write_text(json.dumps(result, indent=1))
    lines = [f"# History guidance on the demo's turn360 revisit clips ({args.tag})", "",
             f"Run: {cfg.train.steps} steps, teacher {cfg.teacher.name}, model {cfg.model.hidden_dim}x{cfg.model.depth}, "
             f"{len(clips)} turn360 clips x {args.rollout_frames} frames at {list(cfg.data.resolution)} px, window "
             f"{s.window}, context {context}, {s.steps} {s.method} steps; seeds {args.seeds} (mean +- std over seeds). "
             f"Ground truth first-vs-last frame: PSNR {result['ground_truth_revisit']['psnr']:.2f} dB, "
             f"SSIM {result['ground_truth_revisit']['ssim']:.3f}.", "",
             "| setting | revisit PSNR (last vs first) | revisit SSIM | PSNR vs GT (all new frames) | PSNR vs GT (last window) |",
             "|---|---|---|---|---|"]
    for row in rows:
        m = row["mean_std"]
        lines.append(f"| {row['setting']} | {m['revisit_psnr'][0]:.2f} +- {m['revisit_psnr'][1]:.2f} | "
                     f"{m['revisit_ssim'][0]:.3f} +- {m['revisit_ssim'][1]:.3f} | "
                     f"{m['psnr_vs_gt'][0]:.2f} +- {m['psnr_vs_gt'][1]:.2f} | "
                     f"{m['psnr_vs_gt_last_window'][0]:.2f} +- {m['psnr_vs_gt_last_window'][1]:.2f} |")
    lines += ["", f"Load average (1, 5, 15 min) at start {load_start}, at end {os.getloadavg()}; "
                  f"{result['seconds']:.0f} s; commit {result['commit']}."]
    (RESULTS_DIR / f"history_guidance_{args.tag}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


def run_cfg_use_ema(run: str) -> bool:
    file = os.path.join(run, "final.pt") if os.path.isdir(run) else run
    from gfcore.io.checkpoint_file import read_checkpoint

    state = read_checkpoint(file)
    return bool(state["config"].get("sample", {}).get("use_ema", True))


if __name__ == "__main__":
    raise SystemExit(main())
