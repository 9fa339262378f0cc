"""`gfcore sample`: load a trained run and write rollouts (mp4 + gif) along data or revisit paths."""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Optional, Sequence

import torch

from gfcore.io.checkpoint_file import read_checkpoint
from gfcore.io.safe_load import UnsafeFileError
from gfcore.models.dit import VideoDiT, build_model
from gfcore.sample.sampler import HISTORY_MODES, HistoryGuidance, revisit_path, rollout, to_uint8


def load_trained_model(path: str, use_ema: bool = True, device: str | torch.device = "cpu") -> tuple[VideoDiT, dict]:
    """(model in eval mode, run config) from a run folder (its final.pt) or a final.pt file."""
    file = os.path.join(path, "final.pt") if os.path.isdir(path) else path
    if not os.path.isfile(file):
        raise FileNotFoundError(f"no trained model at {file!r} (expected a run folder with final.pt)")
    state = read_checkpoint(file)  # never unpickled: an old or crafted file is refused, nothing runs
    missing = [k for k in ("model", "ema", "model_config", "config") if k not in state]
    if missing:
        raise KeyError(f"{file}: not a gfcore final.pt, lacks {missing}")
    model = build_model(state["model_config"])
    model.load_state_dict(state["ema" if use_ema else "model"])
    return model.to(device).eval(), state["config"]


def main(argv: Optional[Sequence[str]] = None) -> int:
    from gfcore.data import write_gif, write_video
    from gfcore.train.data import build_dataset

    parser = argparse.ArgumentParser(prog="gfcore sample", description="Roll out a trained model by sliding window.")
    parser.add_argument("run", help="run folder (holding final.pt) or a final.pt file")
    parser.add_argument("--out", required=True, help="output folder for mp4 and gif files")
    parser.add_argument("--num-frames", type=int,
                        help="frames per rollout (default: the clip's length on --path data, 64 on revisit)")
    parser.add_argument("--num-clips", type=int, default=2, help="clips of the run's dataset to start from")
    parser.add_argument("--split", default="train")
    parser.add_argument("--path", choices=("data", "revisit"), default="data",
                        help="camera path: the clip's own (repeated if shorter) or a 360-degree in-place turn")
    parser.add_argument("--steps", type=int, help="ODE steps (default: the run's sample.steps)")
    parser.add_argument("--method", choices=("euler", "heun"), help="ODE solver (default: the run's sample.method)")
    parser.add_argument("--context-frames", type=int, help="clean frames carried between windows")
    parser.add_argument("--weights", choices=("run", "ema", "raw"), default="run",
                        help="EMA or raw weights (default: the run's sample.use_ema)")
    parser.add_argument("--history-guidance", choices=HISTORY_MODES,
                        help="history guidance mode (default: the run's sample.history_guidance.mode)")
    parser.add_argument("--history-scale", type=float, help="history guidance scale")
    parser.add_argument("--stabilization-level", type=float, help="history noise level, conditional branch (stabilized)")
    parser.add_argument("--fractional-level", type=float, help="history noise level, unconditional branch (fractional)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)

    from omegaconf import OmegaConf

    try:
        model, run_cfg = load_trained_model(args.run, args.weights != "raw", args.device)
    except UnsafeFileError as exc:  # a refusal with its remedy (the convert command), not a crash
        print(f"gfcore sample: error: {exc}", file=sys.stderr)
        return 2
    cfg = OmegaConf.create(run_cfg)
    if args.weights == "run" and not cfg.sample.get("use_ema", True):
        model, _ = load_trained_model(args.run, False, args.device)
    marker = os.path.join(os.path.expanduser(str(cfg.data.get("root", ""))), args.split, "generator.json")
    if cfg.data.kind == "synthetic" and os.path.isfile(marker):  # a split's own clip length (e.g. the demo's test)
        with open(marker) as handle:
            cfg.data.clip_frames = int(json.load(handle)["num_frames"])
    dataset = build_dataset(cfg.data, with_depth=False, split=args.split, generate_missing=False)
    steps, method = args.steps or cfg.sample.steps, args.method or cfg.sample.method
    context = args.context_frames or cfg.sample.context_frames
    node = cfg.sample.get("history_guidance")
    history = dict(OmegaConf.to_container(node, resolve=True)) if node is not None else {}
    for key, value in (("mode", args.history_guidance), ("scale", args.history_scale),
                       ("stabilization_level", args.stabilization_level), ("fractional_level", args.fractional_level)):
        if value is not None:
            history[key] = value
    history = HistoryGuidance.parse(history)
    generator = torch.Generator().manual_seed(args.seed)
    os.makedirs(args.out, exist_ok=True)
    written = []
    for index in range(min(args.num_clips, len(dataset))):
        clip = dataset[index]
        total = clip["frames"].shape[0]
        num_frames = args.num_frames or (total if args.path == "data" else 64)
        repeat = lambda x: x[torch.arange(num_frames) % total]  # noqa: E731
        kwargs = {}
        if model.config.camera_cond:
            c2w = revisit_path(num_frames).float() if args.path == "revisit" else repeat(clip["c2w"])
            kwargs.update(intrinsics=clip["intrinsics"][:1].expand(num_frames, 3, 3)[None], c2w=c2w[None])
        if model.config.action_dim:
            kwargs["actions"] = repeat(clip["actions"])[None]
        video = rollout(model, clip["frames"][None, :context].to(args.device), num_frames, cfg.sample.window,
                        context, steps, method, generator=generator, history_guidance=history, **kwargs)[0]
        frames = to_uint8(video)
        # data path: the clip's own name, so `gfcore eval --reference` on the data split pairs them up
        name = clip["key"] if args.path == "data" else f"{clip['key']}_revisit"
        write_video(os.path.join(args.out, f"{name}.mp4"), frames)
        write_gif(os.path.join(args.out, f"{name}.gif"), frames)
        written.append(name)
        print(f"wrote {args.out}/{name}.mp4 and .gif")
    split_dir = getattr(dataset, "raw_dir", None)
    if split_dir and not (written and os.path.isfile(os.path.join(split_dir, f"{written[0].removesuffix('_revisit')}.mp4"))):
        split_dir = None  # the reference videos are not beside the camera files (e.g. RealEstate10K's {split}_256)
    manifest = {"run": os.path.abspath(args.run), "split": args.split, "path": args.path, "clips": written,
                "context_frames": context, "steps": steps, "method": method, "seed": args.seed,
                "data_split_dir": os.path.abspath(str(split_dir)) if split_dir else None}
    with open(os.path.join(args.out, "sample.json"), "w") as handle:
        json.dump(manifest, handle, indent=1)
    if args.path == "data" and split_dir:
        print(f"score them: gfcore eval --generated {args.out} --reference {split_dir} --geometry {split_dir} "
              f"--out EVAL_DIR   (the first {context} frames are the given context and are left out)")
    return 0
