"""`gfcore demo`: the main job, offline, from nothing to a report in one output folder.

1. Generate the built-in synthetic scenes (train and test splits) unless present.
2. Train a baseline (no alignment) and a Geometry Forcing model with the ORACLE POINTMAP
   TEACHER (ground-truth depth + cameras) for the same steps, from the same initial weights.
3. Roll out every test clip from its first frames along its ground-truth camera path, by
   sliding window, to several times the training clip length; the test split's turn360 clips
   are the 360-degree revisit paths.
   Each rollout is repeated with --noise-seeds sampling seeds (the consistency check).
4. Score against the ground truth next to two trivial predictors (repeat the last context
   frame; the clip's mean colour), per path kind; baseline vs GF paired over clips with a
   bootstrap interval; a ridge depth probe on the aligned block (gfcore.demo.analysis); and
   gfcore.metrics (metrics whose weights are absent say "unavailable: <why>").
5. Write report.md with plots and sample GIFs. --seeds N trains N seeds of both models.
   A rerun reuses finished runs (train.resume=auto) and says so.

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

PROBE_TRAIN_CLIPS = 32

SCALES = {
    # hydra overrides per scale; the test split reuses data.* with its own clip count.
    "cpu": ["experiment=demo"],
    "gpu": ["experiment=demo", "model=small", "data.resolution=[64,64]", "data.num_clips=256", "train.steps=3000",
            "train.batch_size=32", "train.num_frames=16", "train.ckpt_every=500", "sample.steps=25"],
}


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {value}")
    return value


def _parse(argv: Optional[Sequence[str]]):
    parser = argparse.ArgumentParser(prog="gfcore demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="gfcore_demo", help="output folder (default ./gfcore_demo, git-ignored)")
    parser.add_argument("--scale", choices=sorted(SCALES), default="cpu")
    parser.add_argument("--test-clips", type=int, default=16, help="test clips to roll out (they cycle the path kinds "
                        "forward, pan, orbit, turn360)")
    parser.add_argument("--rollout-frames", type=int, default=32, help="frames per rollout")
    parser.add_argument("--seeds", type=int, default=1, help="training seeds per model (seed, seed+1, ...): mean and "
                        "spread over them")
    parser.add_argument("--noise-seeds", type=int, default=3, help="sampling-noise seeds per rollout (consistency check)")
    parser.add_argument("--jobs", type=_positive, default=None, help="runs trained at once (default: 2 on a CPU with 2 "
                        "or more cores, a core share each; 1 on a GPU)")
    parser.add_argument("overrides", nargs="*", help="hydra overrides, e.g. train.steps=100 model.depth=2")
    return parser.parse_args(argv)


def _test_split(data_cfg, num_clips: int, rollout_frames: int):
    """Test clips as long as the rollouts, generated under the same data root."""
    from gfcore.data.build import ensure_synthetic

    root = os.path.expanduser(data_cfg.root)
    ensure_synthetic(root, num_clips, rollout_frames, list(data_cfg.resolution), data_cfg.seed + 1000, "camera",
                     split="test", texture_detail=float(data_cfg.get("texture_detail", 1.0)))
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


def _rollouts(run_dir: str, clips: List[Dict], out: str, cfg, device: str, noise_seeds: int):
    """All test clips in one batch (same length): rollouts from their first frames along their paths,
    once per sampling-noise seed (sample.seed + i). The first seed's are written to `out`."""
    from gfcore.sample import rollout, to_uint8
    from gfcore.sample.run import load_trained_model

    model, _ = load_trained_model(run_dir, use_ema=cfg.sample.use_ema, device=device)
    frames = torch.stack([clip["frames"] for clip in clips]).to(device)
    videos = []
    for i in range(max(1, noise_seeds)):
        generator = torch.Generator().manual_seed(cfg.sample.seed + i)
        videos.append(rollout(model, frames[:, :cfg.sample.context_frames], frames.shape[1], cfg.sample.window,
                              cfg.sample.context_frames, cfg.sample.steps, cfg.sample.method,
                              intrinsics=torch.stack([c["intrinsics"] for c in clips]),
                              c2w=torch.stack([c["c2w"] for c in clips]), generator=generator,
                              guidance_scale=cfg.sample.guidance_scale,
                              history_guidance=_history_guidance(cfg.sample)).cpu())
    for clip, video in zip(clips, videos[0]):
        _write_clip_files(out, clip["key"], to_uint8(video))
        if clip["kind"] == "turn360":  # a 360-degree turn back to the start pose: the RVE input
            _write_clip_files(os.path.join(out, "revisit"), clip["key"], to_uint8(video), videos=False)
    return model, videos


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


def _run_names(seeds: int) -> Dict[str, Dict]:
    """{run name: (model, seed)}; seed 0 keeps the plain names baseline / gf."""
    runs = {}
    for seed in range(seeds):
        for model in ("baseline", "gf"):
            runs[model if seed == 0 else f"{model}_s{seed}"] = {"model": model, "seed": seed}
    return runs


def _train_one(overrides: List[str], threads: int) -> tuple:
    """One training run (in a worker process when runs go in parallel): (summary, seconds)."""
    from gfcore.train import load_config, train

    if threads > 0:
        torch.set_num_threads(threads)
    t0 = time.perf_counter()
    summary = train(load_config(overrides))
    return summary, time.perf_counter() - t0


def _cores() -> int:
    """The cores this process may use (a container's limit, not the machine's count)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _default_jobs(cfg) -> int:
    """Runs trained at once: 2 on a CPU with 2+ cores (two small models, a core each, train faster
    side by side than one after the other with 2 threads each), 1 on a GPU."""
    on_gpu = torch.cuda.is_available() and cfg.train.device in ("auto", "cuda")
    return 1 if on_gpu or _cores() < 2 else 2


def _progress_of(run_dir: str, steps: int) -> str:
    """'step/steps' from the run's log.jsonl; 'queued' before its worker has started it."""
    try:
        with open(os.path.join(run_dir, "log.jsonl")) as handle:
            lines = handle.read().splitlines()
    except OSError:
        return "queued"
    try:
        return f"{int(json.loads(lines[-1])['step']) if lines else 0}/{steps}"
    except (ValueError, KeyError, IndexError):  # a line being written, or an event record
        return f"?/{steps}"


def _run_parallel(jobs: Dict[str, List[str]], workers: int, out: str, steps: int) -> Dict[str, tuple]:
    """Train the runs in `workers` spawned processes, each with its share of the cores, and print
    every run's step twice a minute (the runs' own progress bars would overwrite each other)."""
    import concurrent.futures as futures
    import multiprocessing

    threads = max(1, min(torch.get_num_threads(), _cores()) // workers)
    results = {}
    with futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        pending = {pool.submit(_train_one, overrides + ["train.progress=false"], threads): name
                   for name, overrides in jobs.items()}
        while pending:
            done, _ = futures.wait(pending, timeout=30, return_when=futures.FIRST_COMPLETED)
            for future in done:
                name = pending.pop(future)
                if future.exception() is not None:  # start no queued run; the error is raised once the running ones end
                    print(f"[demo] training {name} failed; waiting for the runs in progress", flush=True)
                    pool.shutdown(wait=True, cancel_futures=True)
                results[name] = future.result()
            if pending:
                print("[demo] " + ", ".join(f"{name} {_progress_of(os.path.join(out, 'runs', name), steps)}"
                                            for name in jobs if name not in results), flush=True)
    return results


def _train_all(out: str, base: List[str], seeds: int, timings: Dict, jobs: Optional[int] = None) -> tuple:
    from gfcore.train import load_config
    from gfcore.train.data import build_dataset
    from gfcore.train.teachers import ORACLE_LABEL

    cfg0 = load_config(base)
    runs, steps = {}, {}
    for name, info in _run_names(seeds).items():
        teacher = "none" if info["model"] == "baseline" else "pointmap"
        runs[name] = base + [f"teacher={teacher}", f"name={name}", f"out_dir={out}/runs/{name}",
                             f"seed={int(cfg0.seed) + info['seed']}"]
        cfg = load_config(runs[name])
        steps[name] = int(cfg.train.steps)
        label = "baseline" if info["model"] == "baseline" else f"Geometry Forcing ({ORACLE_LABEL})"
        print(f"[demo] training {label} (seed {cfg.seed}): {cfg.train.steps} steps, "
              f"model {cfg.model.hidden_dim}x{cfg.model.depth}")
    workers = min(len(runs), jobs or _default_jobs(cfg0))
    t0 = time.perf_counter()
    if workers > 1:
        build_dataset(cfg0.data, with_depth=False, split="train")  # generated once, before the runs share it
        trained = _run_parallel(runs, workers, out, int(cfg0.train.steps))
        print(f"[demo] trained {len(runs)} runs, {workers} at a time, in {time.perf_counter() - t0:.0f} s")
    else:
        trained = {name: _train_one(overrides, 0) for name, overrides in runs.items()}
    timings["train_wall_s"] = time.perf_counter() - t0
    summaries, reused = {}, {}
    for name, (summary, seconds) in trained.items():
        summaries[name] = summary
        timings[f"train_{name}_s"] = seconds
        reused[name] = summary.get("resumed_from", 0) >= steps[name]
        if reused[name]:
            print(f"[demo] {name}: reused the finished run in {out}/runs/{name} (nothing to train)")
    return runs, summaries, reused


def main(argv: Optional[Sequence[str]] = None) -> int:
    from gfcore.demo import analysis
    from gfcore.demo.report import write_report
    from gfcore.sample import to_uint8
    from gfcore.train import load_config

    args = _parse(argv)
    start = time.perf_counter()
    out = os.path.abspath(args.out)
    base = SCALES[args.scale] + [f"data.root={out}/data"] + list(args.overrides)
    load_config(base)  # a typo in an override fails here, before anything is written
    timings: Dict[str, float] = {}
    runs, summaries, reused = _train_all(out, base, args.seeds, timings, args.jobs)
    cfg = load_config(runs["gf"])
    device = "cuda" if torch.cuda.is_available() and cfg.train.device in ("auto", "cuda") else "cpu"
    context = cfg.sample.context_frames

    t0 = time.perf_counter()
    test = _test_split(cfg.data, args.test_clips, args.rollout_frames)
    clips = []
    samples = os.path.join(out, "samples")
    for index in range(len(test)):
        clip = test[index]
        with np.load(os.path.join(test.raw_dir, f"{clip['key']}.depth.npz"), allow_pickle=False) as stored:
            clip["kind"] = str(stored["kind"])
        clips.append(clip)
        _write_clip_files(os.path.join(samples, "reference"), clip["key"], to_uint8(clip["frames"]))
        os.makedirs(os.path.join(samples, "geometry"), exist_ok=True)
        np.savez(os.path.join(samples, "geometry", f"{clip['key']}.npz"), depth=clip["depth"].numpy(),
                 intrinsics=clip["intrinsics"].numpy(), c2w=clip["c2w"].numpy())
    timings["test_data_s"] = time.perf_counter() - t0
    keys = [c["key"] for c in clips]
    kinds = {c["key"]: c["kind"] for c in clips}

    # trivial predictors: rows of the table
    trivial: Dict[str, Dict[str, float]] = {}
    for clip in clips:
        for name, video in analysis.trivial_predictions(clip["frames"], context).items():
            trivial.setdefault(name, {})[clip["key"]] = analysis.clip_psnr(video, clip["frames"], context)

    from gfcore.train.data import build_dataset

    train_clips = None
    measured: Dict[str, Dict] = {}
    for name in runs:
        t0 = time.perf_counter()
        print(f"[demo] sampling {len(clips)} rollouts of {args.rollout_frames} frames from {name} "
              f"({args.noise_seeds} noise seeds)")
        model, videos = _rollouts(os.path.join(out, "runs", name), clips, os.path.join(samples, name), cfg, device,
                                  args.noise_seeds)
        timings[f"sample_{name}_s"] = time.perf_counter() - t0
        per_seed = [{k: analysis.clip_psnr(v[i], clips[i]["frames"], context) for i, k in enumerate(keys)}
                    for v in videos]
        hf = torch.cat([analysis.high_frequency_ratio(v[i], clips[i]["frames"], context)
                        for v in videos for i in range(len(clips))])
        per_clip = {k: float(np.mean([s[k] for s in per_seed])) for k in keys}
        measured[name] = {"per_clip": per_clip, "per_seed_mean": [float(np.mean(list(s.values()))) for s in per_seed],
                          "hf_max": float(hf.max()), "hf_share_above_1_5": float((hf > 1.5).float().mean())}
        if len(videos) > 1:  # the noise-dependent part needs 2+ sampling seeds
            noise = analysis.noise_dependent_ratios(videos, [clip["frames"] for clip in clips], context)
            measured[name].update(noise_max=float(noise.max()),
                                  noise_share=float((noise > analysis.NOISE_FRAME_LIMIT).float().mean()))
        t0 = time.perf_counter()
        if train_clips is None:
            train_set = build_dataset(cfg.data, with_depth=True, split="train")
            # the probe fits on up to 32 training clips (65k patches): plenty for a 64..192-dim ridge
            train_clips = [train_set[i] for i in range(min(len(train_set), PROBE_TRAIN_CLIPS))]
        model = model.cpu().float()
        measured[name]["probe"] = analysis.depth_probe(model, train_clips, clips, cfg.train.num_frames,
                                                       model.config.patch_size)
        timings[f"probe_{name}_s"] = time.perf_counter() - t0
    probe_pixels = analysis.depth_probe(model, train_clips, clips, cfg.train.num_frames, model.config.patch_size,
                                        pixels=True)
    results = {}
    for name in ("baseline", "gf"):
        t0 = time.perf_counter()
        print(f"[demo] evaluating {name}")
        results[name] = _evaluate(samples, name, context, device)
        timings[f"eval_{name}_s"] = time.perf_counter() - t0
    timings["total_s"] = time.perf_counter() - start
    analysis_out = {"trivial": trivial, "runs": measured, "kinds": kinds, "probe_pixels": probe_pixels,
                    "reused": reused, "seeds": args.seeds, "noise_seeds": args.noise_seeds}
    report = write_report(out, cfg, runs, summaries, results, clips, timings, args, analysis_out)
    with open(os.path.join(out, "timings.json"), "w") as handle:
        json.dump(timings, handle, indent=1)
    print(f"[demo] done in {timings['total_s']:.0f} s: {report}")
    return 0
