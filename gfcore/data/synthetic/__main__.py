"""Command-line entry: python -m gfcore.data.synthetic ROOT --num-clips 100 --num-frames 32 ..."""
import argparse
import sys
import time

from gfcore.data.synthetic.generate import generate


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m gfcore.data.synthetic",
        description="Render built-in synthetic 3D scenes (ground-truth depth and poses) in the "
        "RealEstate10K layout (--task camera) or the Minecraft layout (--task action).",
    )
    parser.add_argument("root", help="output root; clips go to ROOT/SPLIT/")
    parser.add_argument("--num-clips", type=int, default=100)
    parser.add_argument("--num-frames", type=int, default=32)
    parser.add_argument("--resolution", type=int, nargs="+", default=[128],
                        help="SIZE or HEIGHT WIDTH in pixels (default 128)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--task", choices=["camera", "action"], default="camera")
    parser.add_argument("--split", default="train")
    args = parser.parse_args(argv)
    if len(args.resolution) not in (1, 2):
        parser.error("--resolution takes SIZE or HEIGHT WIDTH")
    resolution = args.resolution[0] if len(args.resolution) == 1 else tuple(args.resolution)
    start = time.perf_counter()
    keys = generate(args.root, args.num_clips, args.num_frames, resolution, args.seed, args.task, args.split)
    print(f"wrote {len(keys)} {args.task} clips to {args.root}/{args.split} "
          f"in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
