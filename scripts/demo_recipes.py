"""Rank training / sampling recipes for the CPU demo quickly: train one run per recipe, roll out
the test clips from their first 2 frames along their paths, and print mean PSNR of the generated
frames against the trivial predictors (repeat the last context frame; the clip's mean colour).

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


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean over frames of per-frame PSNR, uint8-quantised like the demo's files, range [0, 1]."""
    a = ((a.clamp(-1, 1) + 1) * 127.5).round() / 255.0
    b = ((b.clamp(-1, 1) + 1) * 127.5).round() / 255.0
    mse = (a - b).pow(2).flatten(1).mean(1).clamp_min(1e-10)
    return float((10 * torch.log10(1.0 / mse)).mean())


def main() -> None:
    from gfcore.demo import _test_split
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
        per_seed = []
        for seed in args.seeds:
            video = rollout(model, frames[:, :ctx], frames.shape[1], cfg.sample.window, ctx,
                            int(sample.get("steps", cfg.sample.steps)), sample.get("method", cfg.sample.method),
                            intrinsics=torch.stack([c["intrinsics"] for c in clips]),
                            c2w=torch.stack([c["c2w"] for c in clips]), generator=torch.Generator().manual_seed(seed))
            per_seed.append([psnr(video[i, ctx:], frames[i, ctx:]) for i in range(len(clips))])
        copy = [psnr(frames[i, ctx - 1:ctx].expand_as(frames[i, ctx:]), frames[i, ctx:]) for i in range(len(clips))]
        mean = [psnr(frames[i].mean((0, 2, 3), keepdim=True).expand_as(frames[i, ctx:]), frames[i, ctx:])
                for i in range(len(clips))]
        ps = np.array(per_seed)
        results[name] = {"overrides": rest, "train_s": round(train_s), "psnr_seeds": ps.mean(1).round(2).tolist(),
                         "psnr": round(float(ps.mean()), 2), "copy": round(float(np.mean(copy)), 2),
                         "mean_colour": round(float(np.mean(mean)), 2),
                         "per_clip": ps.mean(0).round(2).tolist(), "copy_per_clip": np.round(copy, 2).tolist(),
                         "load": os.getloadavg()[0]}
        print(json.dumps({name: results[name]}), flush=True)
    with open(os.path.join(args.root, "recipes.jsonl"), "a") as handle:
        for name, r in results.items():
            handle.write(json.dumps({name: r}) + "\n")


if __name__ == "__main__":
    main()
