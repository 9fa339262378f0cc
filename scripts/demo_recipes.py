"""Rank training / sampling recipes for the CPU demo quickly: train one run per recipe, roll out
the test clips from their first 2 frames along their paths, and print mean PSNR of the generated
frames against the trivial predictors (repeat the last context frame; the clip's mean colour), per
path kind, and the demo's high-frequency detector (max ratio, share of frames above 1.5x); with
2+ sampling seeds (--seeds 0 1 2) also condition (a)'s noise-dependent ratio.

    python scripts/demo_recipes.py --root /tmp/recipes --test-clips 8 \
        --recipe "v500=train.steps=500" --recipe "res=model.prediction=x0_residual train.loss_space=x0 ..."
Each recipe is NAME=space-separated hydra overrides on top of experiment=demo; `|sample:K=V`
after them sets sampler settings (steps, method) for the evaluation.
"""
from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import torch


def main() -> None:
    from gfcore.demo import analysis
    from gfcore.demo.job import _test_split
    from gfcore.sample import rollout
    from gfcore.sample.run import load_trained_model
    from gfcore.train import load_config, train

    p = argparse.ArgumentParser()
    p.add_argument("--root", required=True)
    p.add_argument("--test-clips", type=int, default=8)
    p.add_argument("--frames", type=int, default=32)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--recipe", action="append", required=True)
    args = p.parse_args()
    results = {}
    for recipe in args.recipe:
        name, rest = recipe.split("=", 1)
        overrides, _, sample_part = rest.partition("|")
        sample = dict(kv.split("=") for kv in sample_part.split() if kv)
        run_dir = os.path.join(args.root, "runs", name.split("@")[0])  # name@variant: same run, other sampling
        cfg = load_config(["experiment=demo", f"data.root={args.root}/data", f"out_dir={run_dir}", "train.progress=false"]
                          + overrides.split())
        t0 = time.perf_counter()
        if not os.path.isfile(os.path.join(run_dir, "final.pt")):
            train(cfg)
        train_s = time.perf_counter() - t0
        test = _test_split(cfg.data, args.test_clips, args.frames)
        clips = [test[i] for i in range(len(test))]
        frames = torch.stack([c["frames"] for c in clips])
        ctx = cfg.sample.context_frames
        model, _ = load_trained_model(run_dir, use_ema=sample.get("ema", str(cfg.sample.use_ema)) in ("True", "true", "1"))
        per_seed, hf, videos = [], [], []
        for seed in args.seeds:
            video = rollout(model, frames[:, :ctx], frames.shape[1], cfg.sample.window, ctx,
                            int(sample.get("steps", cfg.sample.steps)), sample.get("method", cfg.sample.method),
                            intrinsics=torch.stack([c["intrinsics"] for c in clips]),
                            c2w=torch.stack([c["c2w"] for c in clips]), generator=torch.Generator().manual_seed(seed))
            per_seed.append([analysis.clip_psnr(video[i], frames[i], ctx) for i in range(len(clips))])
            hf += [analysis.high_frequency_ratio(video[i], frames[i], ctx) for i in range(len(clips))]
            videos.append(video)
        trivial = [analysis.trivial_predictions(frames[i], ctx) for i in range(len(clips))]
        copy = [analysis.clip_psnr(t["repeat last context frame"], frames[i], ctx) for i, t in enumerate(trivial)]
        mean = [analysis.clip_psnr(t["clip mean colour"], frames[i], ctx) for i, t in enumerate(trivial)]
        ps, hf = np.array(per_seed), torch.cat(hf)
        kinds = {}
        for clip, value in zip(clips, ps.mean(0)):
            with np.load(os.path.join(test.raw_dir, f"{clip['key']}.depth.npz")) as stored:
                kinds.setdefault(str(stored["kind"]), []).append(float(value))
        results[name] = {"overrides": rest, "train_s": round(train_s), "psnr_seeds": ps.mean(1).round(2).tolist(),
                         "psnr": round(float(ps.mean()), 2), "copy": round(float(np.mean(copy)), 2),
                         "mean_colour": round(float(np.mean(mean)), 2),
                         "per_kind": {k: round(float(np.mean(v)), 2) for k, v in kinds.items()},
                         "hf_max": round(float(hf.max()), 2), "hf_share_above_1_5": round(float((hf > 1.5).float().mean()), 4),
                         "per_clip": ps.mean(0).round(2).tolist(), "copy_per_clip": np.round(copy, 2).tolist(),
                         "load": os.getloadavg()[0]}
        if len(videos) > 1:  # condition (a)'s colour-noise detector needs 2+ sampling seeds
            noise = analysis.noise_dependent_ratios(videos, frames, ctx)
            results[name]["noise"] = {"median": round(float(noise.median()), 3),
                                      "p99": round(float(noise.quantile(0.99)), 3), "max": round(float(noise.max()), 3),
                                      "share_above_limit": round(float((noise > analysis.NOISE_FRAME_LIMIT).float().mean()), 4)}
        print(json.dumps({name: results[name]}), flush=True)
    with open(os.path.join(args.root, "recipes.jsonl"), "a") as handle:
        for name, r in results.items():
            handle.write(json.dumps({name: r}) + "\n")


if __name__ == "__main__":
    main()
