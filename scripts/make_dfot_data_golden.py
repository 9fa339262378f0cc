"""Make the RealEstate10K data facts that python_tests/test_data_dfot.py checks gfcore against.

Runs the Geometry Forcing authors' DFoT data pipeline (datasets/video/realestate10k.py,
base_video.py, utils/transform.py; the pixel normalisation of algorithms/dfot/dfot_video.py and
algorithms/common/base_pytorch_algo.py) on a made-up example, never in CI:

    git -C <mirror of CIntellifusion/GeometryForcing> archive HEAD datasets configurations utils algorithms \\
        | tar -x -C /tmp/gf_authors3
    python scripts/make_dfot_data_golden.py --authors /tmp/gf_authors3 --out python_tests/data/dfot_re10k

Needs torch, numpy, Pillow, einops, omegaconf, tqdm. Their package __init__ files import every
dataset and the training stack; this script registers the packages by path only and stubs names
the called methods never use: pytubefix.YouTube, torchvision.io.write_video (both used only for
downloading), datasets.video.utils.io (their mp4 reader; the example uses their 64-pixel .npz
layout), utils.print_utils.cyan and utils.distributed_utils.rank_zero_print (printing; they need
colorama and lightning). The two normalisation methods are compiled from their source text (the
classes they belong to need Lightning and wandb) and called on a stand-in object. Nothing of
theirs is edited or copied here.

The example (written to --out, committed): two clips, 10 frames of 67x118 and 8 frames of 81x66
(landscape with odd sizes, and portrait), smooth made-up pixels, and camera files with
non-trivial rotations, translations and intrinsics. A second, frame-less set of video lengths
checks the clip order and stride schedule. Writes:

  clip_a.txt, clip_b.txt   the camera files (RealEstate10K format)
  raw_frames.npz           their uint8 frames [T, H, W, 3]
  golden.npz               what DFoT made of them (see the keys below)
  golden.json              the configuration facts and the item list
"""
from __future__ import annotations

import argparse
import ast
import hashlib
import json
import random
import sys
import types
from pathlib import Path

import numpy as np
import torch

RESOLUTION = 64  # DFoT's .npz layout (lossless); 256 is an mp4
MAX_FRAMES = 4
FRAME_SKIP = 2
CLIPS = {"clip_a": (10, 67, 118), "clip_b": (8, 81, 66)}
SCHEDULE_LENGTHS = [5, 9, 16, 23, 3]  # with MAX_FRAMES 4, FRAME_SKIP 2: span 7; 3 frames is too short


# ---------------------------------------------------------------------------------------------
# the example
# ---------------------------------------------------------------------------------------------

def rotation(rx, ry, rz):
    cx, sx, cy, sy, cz, sz = np.cos(rx), np.sin(rx), np.cos(ry), np.sin(ry), np.cos(rz), np.sin(rz)
    Rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    Ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    Rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return Rz @ Ry @ Rx


def camera_rows(num, seed, intrinsics):
    rng = np.random.default_rng(seed)
    rows = []
    for t in range(num):
        R = rotation(0.05 * t + 0.1, -0.08 * t + 0.2, 0.03 * t - 0.15)
        tvec = np.array([0.3 * t - 0.2, -0.1 * t + 0.05, 0.15 * t + 0.4]) + rng.normal(0, 0.05, 3)
        rows.append(np.concatenate([intrinsics, [0.0, 0.0], np.concatenate([R, tvec[:, None]], 1).ravel()]))
    return np.array(rows)


def marker_rows(num):
    """Rows whose t2 (pose entry 11) is the frame number."""
    rows = np.zeros((num, 18))
    rows[:, :4] = [0.5, 0.9, 0.5, 0.5]
    rows[:, [6, 11, 16]] = 1.0
    rows[:, 13] = np.arange(num)
    return rows


def smooth_frames(num_frames, height, width, seed):
    rng = np.random.default_rng(seed)
    v, u = np.meshgrid(np.linspace(0, 1, height), np.linspace(0, 1, width), indexing="ij")
    frames = []
    for t in range(num_frames):
        phase = rng.uniform(0, 2 * np.pi, size=3)
        channels = [0.5 + 0.45 * np.sin(np.pi * (3 * u + 2 * (c + 1) * v) + phase[c] + 0.3 * t) for c in range(3)]
        frames.append(np.stack(channels, -1))
    frames = np.stack(frames) * 255 + rng.normal(0, 2, (num_frames, height, width, 3))  # some texture
    return frames.round().clip(0, 255).astype(np.uint8)


def write_camera_file(path, rows):
    with open(path, "w") as f:
        f.write("https://www.youtube.com/watch?v=madeup0000\n")
        for t, row in enumerate(rows):
            f.write(str(1000000 + 100000 * t) + " " + " ".join(f"{x:.9f}" for x in row) + "\n")


# ---------------------------------------------------------------------------------------------
# their code
# ---------------------------------------------------------------------------------------------

def _package(name: str, path: Path) -> None:
    module = types.ModuleType(name)
    module.__path__ = [str(path)]
    sys.modules[name] = module


def _stub(name: str, **attrs) -> None:
    module = types.ModuleType(name)
    module.__dict__.update(attrs)
    sys.modules[name] = module


def import_authors(root: Path):
    root = root.resolve()
    sys.path.insert(0, str(root))
    _package("datasets", root / "datasets")
    _package("datasets.video", root / "datasets" / "video")
    _package("utils", root / "utils")
    _stub("pytubefix", YouTube=None)
    _stub("datasets.video.utils.io", read_video=None)
    _stub("utils.print_utils", cyan=lambda s: s)
    _stub("utils.distributed_utils", rank_zero_print=lambda *a, **k: None)
    import torchvision.io
    if not hasattr(torchvision.io, "write_video"):
        torchvision.io.write_video = None
    from datasets.video import realestate10k
    from datasets.video.utils import transform
    return realestate10k, transform


def compile_methods(path: Path, names, namespace):
    """Compile the named methods of a source file (any class) into plain functions."""
    tree = ast.parse(path.read_text())
    found = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and node.name in names:
            module = ast.Module(body=[node], type_ignores=[])
            exec(compile(module, str(path), "exec"), namespace)
            found[node.name] = namespace[node.name]
    missing = set(names) - set(found)
    assert not missing, f"not found in {path}: {missing}"
    return found


def dataset_config(authors: Path, **overrides):
    """Their RE10K dataset config as their training script composes it (base_dataset <- base_video
    <- realestate10k <- dataset_experiment/realestate10k_video_generation), then overrides."""
    from omegaconf import OmegaConf

    cfg = OmegaConf.create()
    for name in ["dataset/base_dataset", "dataset/base_video", "dataset/realestate10k"]:
        part = OmegaConf.load(authors / "configurations" / f"{name}.yaml")
        part.pop("defaults", None)
        cfg = OmegaConf.merge(cfg, part)
    experiment = OmegaConf.load(authors / "configurations" / "dataset_experiment" / "realestate10k_video_generation.yaml")
    cfg = OmegaConf.merge(cfg, experiment.dataset)
    # interpolations (${debug}, ${dataset.max_frames}) are absolute, as in their Hydra root config
    root = OmegaConf.create({"debug": False, "dataset": cfg})
    composed = OmegaConf.to_container(root.dataset, resolve=True)
    for key, value in overrides.items():
        OmegaConf.update(root.dataset, key, value, merge=False)
    return root.dataset, composed


def write_layout(save_dir: Path, videos, poses):
    """Their on-disk layout for split 'training' at resolution 64: training_64/{key}.npz
    (video [T, C, H, W] uint8), training_poses/{key}.pt (float32 [T, 18]),
    metadata/training.pt (paths of training_256/{key}.mp4, which must exist, and one pts per frame)."""
    for sub in ["training_64", "training_poses", "training_256", "metadata"]:
        (save_dir / sub).mkdir(parents=True, exist_ok=True)
    paths = []
    for key in sorted(videos):
        np.savez_compressed(save_dir / "training_64" / f"{key}.npz", video=videos[key].transpose(0, 3, 1, 2).copy())
        torch.save(poses[key], save_dir / "training_poses" / f"{key}.pt")
        path = save_dir / "training_256" / f"{key}.mp4"
        path.write_bytes(b"")
        paths.append(path)
    torch.save({"video_paths": paths,
                "video_pts": [torch.arange(len(videos[k])) for k in sorted(videos)],
                "video_fps": [10.0] * len(videos)}, save_dir / "metadata" / "training.pt")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--authors", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--work", type=Path, default=Path("/tmp/dfot_data_golden_work"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    realestate10k, transform = import_authors(args.authors)
    Dataset = realestate10k.RealEstate10KAdvancedVideoDataset

    # -- the example, in RealEstate10K's raw format ------------------------------------------
    intrinsics = {"clip_a": [0.52, 0.91, 0.48, 0.53], "clip_b": [0.95, 0.74, 0.51, 0.47]}
    raw, out = {}, {}
    for n, (key, (num, h, w)) in enumerate(CLIPS.items()):
        raw[key] = smooth_frames(num, h, w, seed=n)
        write_camera_file(args.out / f"{key}.txt", camera_rows(num, n, intrinsics[key]))
    np.savez_compressed(args.out / "raw_frames.npz", **raw)

    # -- their camera-file reader and pose vectors ---------------------------------------------
    poses18 = {}
    for key in CLIPS:
        url, stamps, cameras = Dataset._read_txt_file(args.out / f"{key}.txt")
        poses18[key] = cameras
        out[f"{key}/rows_float32"] = cameras.numpy()
        out[f"{key}/pose16_all"] = Dataset._process_external_cond(types.SimpleNamespace(frame_skip=1), cameras, 1).numpy()

    # -- their download-time resize + crop -----------------------------------------------------
    pre = {}
    for key in CLIPS:
        pre[key] = transform.rescale_and_crop(torch.from_numpy(raw[key]), RESOLUTION)
        out[f"{key}/frames_{RESOLUTION}"] = pre[key]
        out[f"{key}/frames_32"] = transform.rescale_and_crop(torch.from_numpy(raw[key]), 32)
        big = transform.rescale_and_crop(torch.from_numpy(raw[key]), 256)  # an upscale from these sizes
        out[f"{key}/frames_256_sha256"] = np.frombuffer(hashlib.sha256(np.ascontiguousarray(big).tobytes()).digest(), np.uint8)
        out[f"{key}/frames_256_row100"] = big[:, 100]

    # -- training items through their dataset ------------------------------------------------
    work = args.work
    import shutil
    shutil.rmtree(work, ignore_errors=True)
    write_layout(work / "example", pre, poses18)
    items = []

    def build(save_dir, subepoch, **augmentation):
        cfg, composed = dataset_config(
            args.authors, save_dir=str(save_dir), resolution=RESOLUTION, max_frames=MAX_FRAMES,
            frame_skip=FRAME_SKIP, subdataset_size=None if subepoch is None else 12)
        for name, p in augmentation.items():
            cfg.augmentation[name] = p
        return Dataset(cfg, "training", current_epoch=subepoch), composed

    variants = {
        "config": {},
        "flip": dict(horizontal_flip_prob=1.0, back_and_forth_prob=0.0, reverse_prob=0.0),
        "back_and_forth": dict(horizontal_flip_prob=0.0, back_and_forth_prob=1.0, reverse_prob=0.0),
        "reverse": dict(horizontal_flip_prob=0.0, back_and_forth_prob=0.0, reverse_prob=1.0),
        "all": dict(horizontal_flip_prob=1.0, back_and_forth_prob=1.0, reverse_prob=1.0),
        "none": dict(horizontal_flip_prob=0.0, back_and_forth_prob=0.0, reverse_prob=0.0),
    }
    plan = [("config", 1, 0, s) for s in range(6)] + [
        ("flip", 0, 3, 7), ("back_and_forth", 2, 5, 7), ("reverse", 1, 2, 7), ("all", 3, 8, 7), ("none", 0, 0, 7)]
    composed = None
    for n, (variant, subepoch, idx, seed) in enumerate(plan):
        ds, composed = build(work / "example", subepoch, **variants[variant])
        video_idx, start = ds.get_clip_location(idx)
        random.seed(seed)
        item = ds[idx]
        key = Path(ds.metadata[video_idx]["video_paths"]).stem
        videos = item["videos"]
        # the frames are picks of frames_64 (checked above): their exact float32 bytes by hash, and
        # per frame and channel means to show which frame differs
        out[f"item{n}/videos_sha256"] = np.frombuffer(hashlib.sha256(videos.numpy().tobytes()).digest(), np.uint8)
        out[f"item{n}/videos_means"] = videos.double().mean((-1, -2)).numpy()
        out[f"item{n}/conds"] = item["conds"].numpy()
        items.append(dict(variant=variant, subepoch=subepoch, idx=idx, seed=seed, key=key, start_frame=start,
                          probs=dict(ds.augmentation)))

    # the exact float32 of one item and its normalised pixels (their _normalize_x, their buffers)
    ds, _ = build(work / "example", 1)
    random.seed(0)
    item = ds[0]
    namespace = {"np": np, "torch": torch, "Union": __import__("typing").Union, "Sequence": __import__("typing").Sequence}
    fns = compile_methods(args.authors / "algorithms" / "common" / "base_pytorch_algo.py", {"register_data_mean_std"}, namespace)
    fns.update(compile_methods(args.authors / "algorithms" / "dfot" / "dfot_video.py", {"_normalize_x", "_unnormalize_x"}, namespace))
    algo = types.SimpleNamespace(device="cpu")
    algo.register_buffer = lambda name, value: setattr(algo, name, value)
    from omegaconf import OmegaConf
    fns["register_data_mean_std"](algo, OmegaConf.to_container(ds.cfg.data_mean), OmegaConf.to_container(ds.cfg.data_std))
    batch = item["videos"][None]  # [B, T, C, H, W], as the data loader stacks them
    normalized = fns["_normalize_x"](algo, batch)
    out["item0/normalized_frame0"] = normalized[0, 0].numpy()
    out["item0/unnormalized_frame0"] = fns["_unnormalize_x"](algo, normalized)[0, 0].numpy()
    out["data_mean"], out["data_std"] = algo.data_mean.numpy(), algo.data_std.numpy()
    out["item0/videos_float32_frame0"] = item["videos"][0].numpy()

    # -- the clip order and stride schedule --------------------------------------------------
    keys = [f"v{i}" for i in range(len(SCHEDULE_LENGTHS))]
    write_layout(work / "schedule",
                 {k: np.zeros((n, RESOLUTION, RESOLUTION, 3), np.uint8) for k, n in zip(keys, SCHEDULE_LENGTHS)},
                 {k: torch.tensor(marker_rows(n), dtype=torch.float32) for k, n in zip(keys, SCHEDULE_LENGTHS)})
    schedule = {}
    for subepoch in [None, 0, 1, 2, 3, 4]:
        # without a subepoch their stride schedule must be off (frame_skip_increase 0; else they assert)
        increase = {} if subepoch is not None else {"frame_skip_increase": 0}
        ds, _ = build(work / "schedule", subepoch, **variants["none"], **increase)
        rows = []
        for idx in range(len(ds)):
            video_idx, start = ds.get_clip_location(idx)
            cond = ds[idx]["conds"]
            rows.append([keys.index(Path(ds.metadata[video_idx]["video_paths"]).stem), start]
                        + cond[:, 11].round().long().tolist())
        schedule[str(subepoch)] = rows

    np.savez_compressed(args.out / "golden.npz", **out)
    facts = {
        "source": "CIntellifusion/GeometryForcing HEAD: datasets/video/realestate10k.py, base_video.py, "
                  "utils/transform.py; algorithms/dfot/dfot_video.py, algorithms/common/base_pytorch_algo.py",
        "resolution": RESOLUTION, "max_frames": MAX_FRAMES, "frame_skip": FRAME_SKIP, "subdataset_size": 12,
        "composed_dataset_config": composed,
        "items": items,
        "schedule_lengths": SCHEDULE_LENGTHS,
        "schedule": schedule,
    }
    (args.out / "golden.json").write_text(json.dumps(facts, indent=1, sort_keys=True) + "\n")
    print("wrote", sorted(p.name for p in args.out.iterdir()))


if __name__ == "__main__":
    main()
