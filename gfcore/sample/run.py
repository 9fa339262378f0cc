"""`gfcore sample`: load a trained run or a released DFoT checkpoint and write rollouts (mp4 + gif).

VideoDiT runs (gfcore's flow-matching model): Euler / Heun sliding-window rollouts along the
data's or a revisit camera path, as before. DFoT models (a run trained with
train.objective=dfot, or `--checkpoint PATH --model dfot_re10k`): DDIM with DFoT's history
guidance, plain sliding windows or a long-rollout protocol (`--protocol dfot256`); see
gfcore.sample.dfot_run. Bad input is refused in one line (exit code 2) before anything is written.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Optional, Sequence

import torch

from gfcore.data.errors import DataError
from gfcore.io.safe_load import UnsafeFileError
from gfcore.models.dfot.checkpoint import CheckpointError
from gfcore.sample.dfot_run import (SampleError, VideoDiTRun, add_dfot_arguments, add_source_arguments,
                                    check_source_arguments, clips_for, load_run_model, load_source, one_line, read_run,
                                    resolve_settings, run_protocol_sampling, run_sample_steps)
from gfcore.sample.progress import ProgressReporter
from gfcore.sample.sampler import HISTORY_MODES, HistoryGuidance, revisit_path, rollout, to_uint8

VIDEODIT_METHODS = ("euler", "heun")
REFUSALS = (SampleError, CheckpointError, DataError, UnsafeFileError)


def load_trained_model(path: str, use_ema: bool = True, device: str | torch.device = "cpu"):
    """(model in eval mode, run config) from a run folder (its final.pt) or a final.pt file:
    a VideoDiT or, for a run with model.arch dfot, a UViT3DPose."""
    file, state = read_run(path)
    return load_run_model(file, state, use_ema, device), state["config"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gfcore sample", description="Roll out a trained run (VideoDiT: Euler/Heun sliding windows; DFoT: DDIM, "
        "history guidance, --protocol) or a released DFoT checkpoint (--checkpoint PATH --model dfot_re10k).")
    parser.add_argument("run", nargs="?", help="run folder (holding final.pt) or a final.pt file")
    parser.add_argument("--out", required=True, help="output folder for mp4 and gif files")
    parser.add_argument("--num-frames", type=int,
                        help="frames per rollout (default: the clip's length on --path data, 64 on revisit; "
                             "the protocol's with --protocol)")
    parser.add_argument("--num-clips", type=int, default=2, help="clips to start from")
    parser.add_argument("--split", help="data split (default: train for a run, test for --checkpoint)")
    parser.add_argument("--path", choices=("data", "revisit"), default="data",
                        help="camera path: the clip's own (repeated if shorter) or a 360-degree in-place turn "
                             "(VideoDiT)")
    parser.add_argument("--steps", type=int, help="ODE / DDIM steps (default: the run's sample.steps; DFoT: the "
                        "protocol's, else the run's sample.steps when its sample.method is ddim, else 50)")
    parser.add_argument("--method", choices=VIDEODIT_METHODS + ("ddim",),
                        help="euler | heun for VideoDiT (default: the run's sample.method); ddim for DFoT (its "
                             "default and only sampler)")
    parser.add_argument("--context-frames", type=int, help="clean frames given / carried between windows")
    parser.add_argument("--history-guidance",
                        help=f"history guidance: VideoDiT {'|'.join(HISTORY_MODES)} (default: the run's "
                             f"sample.history_guidance.mode); DFoT conditional|stabilized_conditional|vanilla|"
                             f"stabilized_vanilla|fractional|stabilized_fractional")
    parser.add_argument("--history-scale", type=float, help="history guidance scale")
    parser.add_argument("--stabilization-level", type=float,
                        help="history noise level, conditional branch (stabilized)")
    parser.add_argument("--fractional-level", type=float,
                        help="history noise level, unconditional branch (VideoDiT fractional)")
    add_source_arguments(parser)
    add_dfot_arguments(parser)
    return parser


DFOT_ONLY = ("protocol", "max_tokens", "keyframe_density", "interp_max_batch", "sliding_context", "freq_scale",
             "interp_history_guidance", "interp_history_scale", "interp_stabilization_level", "data_root")


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    check_source_arguments(parser, args, "RUN")
    try:
        source = load_source(args)
        if isinstance(source, VideoDiTRun):
            return _sample_videodit(args, source.model, source.run_cfg)
        return _sample_dfot(args, source)
    except REFUSALS as exc:  # a refusal naming the file or key, not a crash: no traceback, nothing written
        print(f"gfcore sample: error: {one_line(exc)}", file=sys.stderr)
        return 2


def _sample_dfot(args, source) -> int:
    if args.method is not None and args.method != "ddim":
        raise SampleError(f"--method {args.method}: DFoT models sample with ddim (euler / heun are the ODE solvers "
                          f"of gfcore's flow-matching VideoDiT)")
    if args.path != "data":
        raise SampleError("--path revisit is VideoDiT's; DFoT models follow the clips' own cameras")
    if args.fractional_level is not None:
        raise SampleError("--fractional-level is VideoDiT's; DFoT's fractional guidance takes --freq-scale")
    split = args.split or ("train" if source.kind == "run" else "test")
    settings = resolve_settings(args, source.frames, None if source.kind == "run" else source.frames,
                                run_sample_steps(source.run_cfg))
    clips = clips_for(source, settings, args.data_root, split, args.num_clips, first_frames=args.first_frames)
    reporter = ProgressReporter(every=args.progress_every, enabled=not args.no_progress)
    written = run_protocol_sampling(source, clips, settings, args.out, reporter, seed=args.seed, device=args.device,
                                    split=split)
    print(f"wrote {len(written)} clips to {args.out} (mp4 + gif, sample.json)")
    return 0


def _sample_videodit(args, model, run_cfg: dict) -> int:
    from omegaconf import OmegaConf

    from gfcore.data import write_gif, write_video
    from gfcore.data.build import CLIP_KINDS, build_clip_dataset

    if args.method == "ddim":
        raise SampleError("--method ddim samples DFoT models; this run's model is gfcore's VideoDiT (model.arch dit): "
                          "--method euler or heun")
    given = [f"--{name.replace('_', '-')}" for name in DFOT_ONLY if getattr(args, name) is not None]
    if given:
        raise SampleError(f"{', '.join(given)}: for DFoT models only; this run's model is gfcore's VideoDiT")
    cfg = OmegaConf.create(run_cfg)
    if cfg.data.kind not in CLIP_KINDS:
        raise SampleError(f"this VideoDiT run was trained on data.kind={cfg.data.kind}; its rollouts start from whole "
                          f"clips of data.kind {', '.join(CLIP_KINDS)} (DFoT's training stream holds augmented "
                          f"windows): sample a VideoDiT run of one of those, or a DFoT model of RealEstate10K")
    split = args.split or "train"
    dataset = build_clip_dataset(cfg.data, with_depth=False, split=split, generate_missing=False)
    steps, method = args.steps or cfg.sample.steps, args.method or cfg.sample.method
    context = args.context_frames or cfg.sample.context_frames
    node = cfg.sample.get("history_guidance")
    history = dict(OmegaConf.to_container(node, resolve=True)) if node is not None else {}
    for key, value in (("mode", args.history_guidance), ("scale", args.history_scale),
                       ("stabilization_level", args.stabilization_level), ("fractional_level", args.fractional_level)):
        if value is not None:
            history[key] = value
    try:
        history = HistoryGuidance.parse(history)
    except ValueError as exc:
        raise SampleError(str(exc)) from exc
    generator = torch.Generator().manual_seed(args.seed)
    reporter = ProgressReporter(every=args.progress_every, enabled=not args.no_progress)
    os.makedirs(args.out, exist_ok=True)
    written = []
    total_clips = min(args.num_clips, len(dataset))
    for index in range(total_clips):
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
                        context, steps, method, generator=generator, history_guidance=history,
                        progress=reporter.steps(f"clip {index + 1}/{total_clips}"), **kwargs)[0]
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
    manifest = {"run": os.path.abspath(args.run), "split": split, "path": args.path, "clips": written,
                "context_frames": context, "steps": steps, "method": method, "seed": args.seed,
                "data_split_dir": os.path.abspath(str(split_dir)) if split_dir else None}
    with open(os.path.join(args.out, "sample.json"), "w") as handle:
        json.dump(manifest, handle, indent=1)
    if args.path == "data" and split_dir:
        print(f"score them: gfcore eval --generated {args.out} --reference {split_dir} --geometry {split_dir} "
              f"--out EVAL_DIR   (the first {context} frames are the given context and are left out)")
    return 0
