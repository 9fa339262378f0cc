"""Command line: python -m gfcore.metrics --generated DIR --reference DIR --out DIR [...];
with --protocol (gfcore eval --protocol dfot256 ...): sample a DFoT model first, see
gfcore.metrics.protocol."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional, Sequence

from gfcore.metrics.evaluate import EvalConfig, evaluate

SAMPLE_MANIFEST = "sample.json"  # written by `gfcore sample` next to its clips


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m gfcore.metrics",
        description=(
            "Evaluate generated clips against reference clips: FVD, LPIPS, SSIM, PSNR, RPE, RVE. "
            "Writes results.json, results.md (table in the paper's column order) and PNG plots. "
            "Metrics whose weights or inputs are absent are reported as 'unavailable: <why>'."
        ),
    )
    parser.add_argument("--generated", type=Path, required=True, help="folder of generated clips (.npy/.npz/.pt/.mp4)")
    parser.add_argument("--reference", type=Path, required=True, help="folder of reference clips with the same names")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--geometry", type=Path, help="reference geometry: <name>.npz with depth, intrinsics, c2w")
    parser.add_argument("--generated-geometry", type=Path, help="geometry estimated on the generated clips (e.g. VGGT)")
    parser.add_argument("--revisit", type=Path, help="folder of generated 360-degree revisit clips (for RVE)")
    parser.add_argument("--context-frames", type=int, default=None,
                        help="leading given frames left out of PSNR/SSIM/LPIPS (default: the context_frames that "
                             "`gfcore sample` recorded in GENERATED/sample.json, else 0)")
    add_metric_options(parser)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--max-clips", type=int, help="evaluate only the first N clip names")
    return parser


def add_metric_options(parser: argparse.ArgumentParser) -> None:
    """The metric settings and local weight files, shared with `gfcore eval --protocol`."""
    parser.add_argument("--lpips-weights", type=Path, help="folder with alexnet-owt-7be5be79.pth / vgg16-397923af.pth and alex.pth / vgg.pth")
    parser.add_argument("--lpips-net", choices=("alex", "vgg"), default="alex")
    parser.add_argument("--i3d", type=Path, help="StyleGAN-V's i3d_torchscript.pt (for FVD)")
    parser.add_argument("--inception", type=Path, help="TorchScript Inception-v3 of the StyleGAN FID code (for RVE FID)")
    parser.add_argument("--trust-weights", action="store_true",
                        help="load --i3d / --inception even when the file's SHA-256 is not the published one "
                             "(TorchScript files are code: only for files you trust)")
    parser.add_argument("--fvd-frames", type=int, help="frames per clip fed to I3D for FVD (default: all)")
    parser.add_argument("--fvd-window", type=int, default=16)
    parser.add_argument("--fvd-stride", type=int, default=8)
    parser.add_argument("--ssim-border", choices=("reflect", "valid"), default="reflect",
                        help="reflect: torchmetrics convention (default); valid: scikit-image convention")
    parser.add_argument("--rpe-offsets", type=int, nargs="+", default=[1], help="frame distances compared by RPE")
    parser.add_argument("--vggt", type=Path, help="local VGGT checkpoint (.pt/.safetensors): estimates the geometry of "
                        "clips without a --geometry / --generated-geometry file (camera and depth heads)")
    parser.add_argument("--vggt-config", type=Path, help="JSON of VGGT arguments for --vggt (default: VGGT-1B)")
    parser.add_argument("--vggt-frames-per-call", type=int, default=16,
                        help="frames per VGGT call; longer clips are chained over one shared frame")
    parser.add_argument("--vggt-resize", choices=("square", "crop", "pad"), default="square",
                        help="how frames are resized to VGGT's input (see gfcore.geometry.preprocess)")
    parser.add_argument("--vggt-dtype", choices=("float32", "bfloat16", "float16"), default="float32",
                        help="autocast dtype of VGGT's aggregator (bfloat16 is what VGGT uses on recent GPUs)")


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a == "--protocol" or a.startswith("--protocol=") for a in argv):
        from gfcore.metrics.protocol import main as protocol_main  # sample with a protocol, then score

        return protocol_main(argv)
    args = build_parser().parse_args(argv)
    note = None
    if args.context_frames is None:
        manifest = args.generated / SAMPLE_MANIFEST
        args.context_frames = int(json.loads(manifest.read_text()).get("context_frames", 0)) if manifest.is_file() else 0
        source = f"recorded by gfcore sample in {manifest}" if manifest.is_file() else "no --context-frames, no sample.json"
        note = f"PSNR/SSIM/LPIPS exclude the first {args.context_frames} frames of each clip (the given context; {source})"
    else:
        note = f"PSNR/SSIM/LPIPS exclude the first {args.context_frames} frames of each clip (--context-frames)"
    if args.context_frames < 0:
        raise SystemExit("--context-frames must be >= 0")
    config = EvalConfig(**{k: v for k, v in vars(args).items() if k != "rpe_offsets"}, rpe_offsets=tuple(args.rpe_offsets))
    config.notes.append(note)
    try:
        results = evaluate(config)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print((args.out / "results.md").read_text(), end="")
    print(f"wrote {args.out / 'results.json'}, {args.out / 'results.md'} and {len(results['plots'])} plots")
    return 0
