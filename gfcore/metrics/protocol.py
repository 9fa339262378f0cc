"""`gfcore eval --protocol dfot256 (--run RUN | --checkpoint PATH --model dfot_re10k) --data-root ROOT
--out DIR [--num-clips N]`: sample a DFoT model with a long-rollout protocol, then score it.

1. Clips: as `gfcore sample` takes them for this model (gfcore.sample.dfot_run.clips_for; on
   RealEstate10K the authors' validation clips: 100 videos of >= 256 frames, one seeded start
   each), every one checked before anything is written.
2. DIR/generated/{key}.npz: the rollouts, uint8, lossless (what the metrics read), with
   DIR/generated/videos/{key}.mp4 + .gif to watch and DIR/generated/sample.json;
   DIR/reference/{key}.npz: the same frames of the data. Progress per clip and denoising step.
3. The metrics of gfcore.metrics.evaluate (FVD, LPIPS, SSIM, PSNR, RPE, RVE as their weights and
   inputs allow; the context frames left out of the frame metrics), DIR/results.json and
   results.md. Progress per clip and metric.

An interrupted evaluation is finished with --resume (clips already sampled are kept; each clip
has its own generator). Bad input is refused in one line (exit code 2) before anything is
written; an existing evaluation in DIR is not overwritten without --resume or --overwrite.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Optional, Sequence

from gfcore.metrics.cli import add_metric_options
from gfcore.metrics.evaluate import EvalConfig, evaluate

PROTOCOL_FILE = "protocol.json"  # DIR/protocol.json: what DIR's clips were sampled with (checked by --resume)


def build_parser() -> argparse.ArgumentParser:
    from gfcore.sample.dfot_run import AUTHORS_EVAL_VIDEOS, add_dfot_arguments, add_source_arguments

    parser = argparse.ArgumentParser(
        prog="gfcore eval --protocol",
        description="Sample a DFoT model (a gfcore run or a released checkpoint) with a long-rollout protocol, then "
                    "score the clips against the data (FVD, LPIPS, SSIM, PSNR, RPE, RVE).")
    parser.add_argument("--run", help="a gfcore run folder (final.pt) of a DFoT model")
    parser.add_argument("--out", type=Path, required=True, help="output folder: generated/, reference/, results.*")
    parser.add_argument("--num-clips", type=int, default=AUTHORS_EVAL_VIDEOS,
                        help=f"clips to evaluate (default {AUTHORS_EVAL_VIDEOS}, the authors' num_eval_videos)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--num-frames", type=int, help="frames per clip (default: the protocol's)")
    parser.add_argument("--context-frames", type=int, help="given frames (default: the protocol's)")
    parser.add_argument("--steps", type=int, help="DDIM steps (default: the protocol's)")
    parser.add_argument("--history-guidance", help="keyframe history guidance (default: the protocol's)")
    parser.add_argument("--history-scale", type=float)
    parser.add_argument("--stabilization-level", type=float)
    add_source_arguments(parser)
    parser.add_argument("--resume", action="store_true", help="finish an interrupted evaluation in --out")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier evaluation in --out")
    add_dfot_arguments(parser, eval_mode=True)
    add_metric_options(parser)
    return parser


def _check_out(args, record: dict) -> None:
    """Refuse to mix with or overwrite an earlier evaluation in --out unless asked."""
    from gfcore.sample.dfot_run import SampleError

    earlier = args.out / PROTOCOL_FILE
    used = [p for p in (earlier, args.out / "generated", args.out / "reference", args.out / "results.json")
            if p.exists()]
    if not used:
        return
    if args.overwrite:
        for path in used:
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        return
    if not args.resume:
        raise SampleError(f"{args.out} already holds an evaluation ({used[0]}): --resume to finish it, "
                          f"--overwrite to replace it, or another --out")
    if not earlier.is_file():
        raise SampleError(f"--resume: {earlier} is missing, so what {args.out}'s clips were sampled with is unknown")
    before = json.loads(earlier.read_text())
    if before != record:
        changed = sorted(k for k in set(before) | set(record) if before.get(k) != record.get(k))
        raise SampleError(f"--resume: {args.out} was sampled with other settings (changed: {', '.join(changed)}; "
                          f"see {earlier})")


def main(argv: Optional[Sequence[str]] = None) -> int:
    from gfcore.data.errors import DataError
    from gfcore.io.safe_load import UnsafeFileError
    from gfcore.models.dfot.checkpoint import CheckpointError
    from gfcore.sample.dfot_run import (SampleError, check_source_arguments, clips_for, describe, load_source, one_line,
                                        resolve_settings, run_protocol_sampling)
    from gfcore.sample.progress import ProgressReporter

    parser = build_parser()
    args = parser.parse_args(argv)
    check_source_arguments(parser, args, "--run RUN")
    refusals = (SampleError, CheckpointError, DataError, UnsafeFileError)
    try:
        source = load_source(args, videodit_refusal="--protocol evaluates DFoT models (score VideoDiT rollouts "
                                                    "with gfcore sample, then gfcore eval --generated ...)")
        settings = resolve_settings(args, source.frames, None)
        clips = clips_for(source, settings, args.data_root, args.split, args.num_clips, full=True,
                          first_frames=args.first_frames)
        clip_names = [clips.name(i) for i in range(len(clips))]
        record = {**describe(source), "settings": settings.as_dict(), "split": args.split, "seed": args.seed,
                  "data_root": args.data_root, "first_frames": args.first_frames, "clips": clip_names,
                  "weights": args.weights}
        _check_out(args, record)
    except refusals as exc:  # nothing has been written
        print(f"gfcore eval: error: {one_line(exc)}", file=sys.stderr)
        return 2

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / PROTOCOL_FILE).write_text(json.dumps(record, indent=1))
    reporter = ProgressReporter(every=args.progress_every, enabled=not args.no_progress)
    generated, reference = args.out / "generated", args.out / "reference"
    reporter.line(f"sampling {len(clips)} clips ({settings.protocol}: {settings.num_frames} frames from "
                  f"{settings.num_context}, {settings.steps} DDIM steps) into {generated}")
    run_protocol_sampling(source, clips, settings, str(generated), reporter, seed=args.seed, device=args.device,
                          arrays=True, reference_dir=str(reference), split=args.split, skip_existing=args.resume)
    del source  # the model's memory back before the metrics' networks load

    metric_args = {k: v for k, v in vars(args).items() if k in EvalConfig.__dataclass_fields__}
    metric_args.update(generated=generated, reference=reference, out=args.out, context_frames=settings.num_context,
                       rpe_offsets=tuple(args.rpe_offsets), max_clips=None)
    config = EvalConfig(**metric_args)
    config.notes.append(f"gfcore eval --protocol {settings.protocol}: {len(clip_names)} clips of "
                        f"{settings.num_frames} frames sampled from their first {settings.num_context} "
                        f"(see {args.out / PROTOCOL_FILE}); PSNR/SSIM/LPIPS exclude those {settings.num_context}")
    reporter.line(f"scoring {len(clip_names)} clips")
    try:
        results = evaluate(config, progress=reporter.metrics())
    except (FileNotFoundError, ValueError) as exc:
        print(f"gfcore eval: error: {one_line(exc)}", file=sys.stderr)
        return 2
    print((args.out / "results.md").read_text(), end="")
    print(f"wrote {args.out / 'results.json'}, {args.out / 'results.md'} and {len(results['plots'])} plots")
    return 0
