"""`gfcore demo`: the main job, offline, from nothing to a report in one output folder.

1. Generate the built-in synthetic scenes (train and test splits) unless present.
2. Train a baseline (no alignment) and a Geometry Forcing model with the ORACLE POINTMAP
   TEACHER (ground-truth depth + cameras) for the same steps, from the same initial weights.
3. Roll out every test clip from its first frames along its ground-truth camera path, by
   sliding window, to several times the training clip length; the test split's turn360 clips
   are the 360-degree revisit paths.
4. Evaluate with gfcore.metrics (metrics whose weights are absent say "unavailable: <why>").
5. Write report.md with loss plots and sample GIFs.

CPU preset by default (finishes in minutes on 2 cores); `--scale gpu` for a larger run.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

SCALES = {
    # hydra overrides per scale; the test split reuses data.* with its own clip count.
    "cpu": ["experiment=demo"],
    "gpu": ["experiment=demo", "model=small", "data.resolution=[64,64]", "data.num_clips=256", "train.steps=3000",
            "train.batch_size=32", "train.num_frames=16", "train.ckpt_every=500", "sample.steps=25"],
}


def _parse(argv: Optional[Sequence[str]]):
    parser = argparse.ArgumentParser(prog="gfcore demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="gfcore_demo", help="output folder (default ./gfcore_demo)")
    parser.add_argument("--scale", choices=sorted(SCALES), default="cpu")
    parser.add_argument("--test-clips", type=int, default=4, help="test clips to roll out (4 cycle the path kinds)")
    parser.add_argument("--rollout-frames", type=int, default=32, help="frames per rollout")
    parser.add_argument("overrides", nargs="*", help="hydra overrides, e.g. train.steps=100 model.depth=2")
    return parser.parse_args(argv)


def _test_split(data_cfg, num_clips: int, rollout_frames: int):
    """Test clips as long as the rollouts, generated under the same data root."""
    from gfcore.train.data import ensure_synthetic

    root = os.path.expanduser(data_cfg.root)
    ensure_synthetic(root, num_clips, rollout_frames, list(data_cfg.resolution), data_cfg.seed + 1000, "camera",
                     split="test")
    from gfcore.data import RealEstate10K

    return RealEstate10K(root, "test", num_frames=rollout_frames, resolution=list(data_cfg.resolution),
                         random_start=False, with_depth=True, layout="raw")


def _write_clip_files(folder: str, key: str, video: np.ndarray, videos: bool = True) -> None:
    """folder/clips/key.npy (lossless, for the metrics) and folder/videos/key.mp4 + .gif."""
    from gfcore.data import write_gif, write_video

    os.makedirs(os.path.join(folder, "clips"), exist_ok=True)
    np.save(os.path.join(folder, "clips", f"{key}.npy"), video)
    if videos:
        write_video(os.path.join(folder, "videos", f"{key}.mp4"), video)
        write_gif(os.path.join(folder, "videos", f"{key}.gif"), video)


def _history_guidance(sample):
    from omegaconf import OmegaConf

    from gfcore.sample import HistoryGuidance

    node = sample.get("history_guidance")
    return HistoryGuidance.parse(None if node is None else OmegaConf.to_container(node, resolve=True))


def _rollouts(run_dir: str, clips: List[Dict], out: str, cfg, device: str) -> None:
    """All test clips in one batch (same length): rollouts from their first frames along their paths."""
    from gfcore.sample import rollout, to_uint8
    from gfcore.sample.run import load_trained_model

    model, _ = load_trained_model(run_dir, use_ema=cfg.sample.use_ema, device=device)
    generator = torch.Generator().manual_seed(cfg.sample.seed)
    frames = torch.stack([clip["frames"] for clip in clips]).to(device)
    videos = rollout(model, frames[:, :cfg.sample.context_frames], frames.shape[1], cfg.sample.window,
                     cfg.sample.context_frames, cfg.sample.steps, cfg.sample.method,
                     intrinsics=torch.stack([c["intrinsics"] for c in clips]), c2w=torch.stack([c["c2w"] for c in clips]),
                     generator=generator, guidance_scale=cfg.sample.guidance_scale,
                     history_guidance=_history_guidance(cfg.sample))
    for clip, video in zip(clips, videos):
        _write_clip_files(out, clip["key"], to_uint8(video))
        if clip["kind"] == "turn360":  # a 360-degree turn back to the start pose: the RVE input
            _write_clip_files(os.path.join(out, "revisit"), clip["key"], to_uint8(video), videos=False)


def _evaluate(samples: str, name: str, context_frames: int, device: str) -> Dict:
    from pathlib import Path

    from gfcore.metrics import EvalConfig, evaluate

    root = Path(samples)
    revisit = root / name / "revisit" / "clips"
    config = EvalConfig(generated=root / name / "clips", reference=root / "reference" / "clips", out=root.parent / "eval" / name,
                        geometry=root / "geometry", generated_geometry=root / "geometry",
                        revisit=revisit if revisit.is_dir() else None, context_frames=context_frames, device=device)
    config.notes.append("RPE of generated clips uses the ground-truth cameras and depth of the path they follow")
    return evaluate(config)


def main(argv: Optional[Sequence[str]] = None) -> int:
    from gfcore.demo_report import write_report
    from gfcore.train import load_config, train
    from gfcore.train.teachers import ORACLE_LABEL

    args = _parse(argv)
    start = time.perf_counter()
    out = os.path.abspath(args.out)
    base = SCALES[args.scale] + [f"data.root={out}/data"] + list(args.overrides)
    timings: Dict[str, float] = {}
    runs = {"baseline": base + ["teacher=none", "name=baseline", f"out_dir={out}/runs/baseline"],
            "gf": base + ["teacher=pointmap", "name=gf", f"out_dir={out}/runs/gf"]}
    summaries = {}
    for name, overrides in runs.items():
        cfg = load_config(overrides)
        label = "baseline" if name == "baseline" else f"Geometry Forcing ({ORACLE_LABEL})"
        print(f"[demo] training {label}: {cfg.train.steps} steps, model {cfg.model.hidden_dim}x{cfg.model.depth}")
        t0 = time.perf_counter()
        summaries[name] = train(cfg)
        timings[f"train_{name}_s"] = time.perf_counter() - t0
    cfg = load_config(runs["gf"])
    device = "cuda" if torch.cuda.is_available() and cfg.train.device in ("auto", "cuda") else "cpu"

    t0 = time.perf_counter()
    test = _test_split(cfg.data, args.test_clips, args.rollout_frames)
    clips = []
    samples = os.path.join(out, "samples")
    for index in range(len(test)):
        clip = test[index]
        with np.load(os.path.join(test.raw_dir, f"{clip['key']}.depth.npz")) as stored:
            clip["kind"] = str(stored["kind"])
        clips.append(clip)
        from gfcore.sample import to_uint8

        _write_clip_files(os.path.join(samples, "reference"), clip["key"], to_uint8(clip["frames"]))
        os.makedirs(os.path.join(samples, "geometry"), exist_ok=True)
        np.savez(os.path.join(samples, "geometry", f"{clip['key']}.npz"), depth=clip["depth"].numpy(),
                 intrinsics=clip["intrinsics"].numpy(), c2w=clip["c2w"].numpy())
    timings["test_data_s"] = time.perf_counter() - t0
    for name in runs:
        t0 = time.perf_counter()
        print(f"[demo] sampling {len(clips)} rollouts of {args.rollout_frames} frames from {name}")
        _rollouts(os.path.join(out, "runs", name), clips, os.path.join(samples, name), cfg, device)
        timings[f"sample_{name}_s"] = time.perf_counter() - t0
    results = {}
    for name in runs:
        t0 = time.perf_counter()
        print(f"[demo] evaluating {name}")
        results[name] = _evaluate(samples, name, cfg.sample.context_frames, device)
        timings[f"eval_{name}_s"] = time.perf_counter() - t0
    timings["total_s"] = time.perf_counter() - start
    report = write_report(out, cfg, runs, summaries, results, clips, timings, args)
    with open(os.path.join(out, "timings.json"), "w") as handle:
        json.dump(timings, handle, indent=1)
    print(f"[demo] done in {timings['total_s']:.0f} s: {report}")
    return 0
