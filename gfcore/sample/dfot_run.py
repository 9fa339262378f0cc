"""`gfcore sample` and `gfcore eval --protocol` for DFoT models (UViT3DPose + DFoTDiffusion, DDIM).

Models: a gfcore run (folder or final.pt) whose model_config has arch dfot, or a released DFoT /
Geometry Forcing checkpoint (`--checkpoint PATH --model dfot_re10k`: the backbone config of
gfcore/configs/model/NAME.yaml, its interpolations resolved with --model-resolution and
--model-frames, weights through load_dfot_checkpoint).

Sampling: gfcore.sample.dfot_protocol.dfot_long_rollout with DDIM steps, the history guidance
of gfcore.sample.dfot_guidance, and either a protocol of PROTOCOLS (`--protocol dfot256`: 256
frames from 1 context frame, keyframes then interpolation) or, without one, plain sliding
windows of the model's frames (keyframe_density 1). Every protocol field has a command-line
override (--num-frames, --context-frames, --max-tokens, --keyframe-density, --steps, ...).

Frames: the model takes DFoT-normalised frames ((x - mean) / std per channel of the [0, 1]
values; a gfcore run with model.input_norm=none: [-1, 1] as they are); generated clips are
unnormalised, clamped to [0, 1] and written as uint8, the context frames replaced by the given
ones (as the authors do before their metrics).

Clips:
- a gfcore run on data.kind synthetic / minecraft: the run's dataset (split, --data-root
  overriding data.root), the first num_frames frames of each clip, poses from the clip's pixel
  intrinsics and c2w (gfcore.data.geometry.cameras_to_dfot_poses), as in training.
- a released checkpoint, or a run on data.kind re10k or dfot_re10k: RealEstate10K under --data-root, as the
  authors' validation picks it (`protocol_clips`): DFoT's layout ({split}_256/{key}.mp4 and
  {split}_poses/{key}.pt, camera rows [T, 18] as DFoT stores them; split train is DFoT's
  "training" folder, gfcore.data.build.DFOT_SPLITS) or the raw layout
  ({split}/{key}.txt with {key}.mp4); frames must already be the model's resolution.

Bad input (a file of another architecture, a truncated file, missing keys, frames of the wrong
size, an impossible setting) raises SampleError (or CheckpointError / DataError) before anything
is written; the commands print it as one line.
"""
from __future__ import annotations

import dataclasses
import json
import os
import random
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from gfcore.data.errors import DataError
from gfcore.models.dfot.checkpoint import CheckpointError

# The authors' validation of the 256-frame evaluation (datasets/video/base_video.py with
# configurations/dataset_experiment/realestate10k_video_generation.yaml): num_eval_videos.
AUTHORS_EVAL_VIDEOS = 100
CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "model")


class SampleError(ValueError):
    """A refusal of `gfcore sample` / `gfcore eval`: bad input, named in one line."""


def one_line(exc: BaseException) -> str:
    """The error as one line: key mismatches summarised (counts, the first keys), otherwise the
    message's lines joined."""
    missing, unexpected = getattr(exc, "missing", None), getattr(exc, "unexpected", None)
    mismatched = getattr(exc, "mismatched", None)
    if missing is not None or unexpected is not None or mismatched is not None:
        head = str(exc).splitlines()[0].rstrip(":")
        parts = []
        for what, keys in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", mismatched)):
            if keys:
                shown = ", ".join(keys[:3]) + (", ..." if len(keys) > 3 else "")
                parts.append(f"{len(keys)} {what} keys ({shown})")
        return f"{head}: " + "; ".join(parts)
    text = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
    return " ".join(line.strip() for line in text.splitlines() if line.strip()) or type(exc).__name__


# ------------------------------------------------------------------------------------------ models


@dataclass
class DFoTSource:
    """A DFoT model ready to sample: backbone (eval mode), diffusion, its config node, how its
    frames are normalised, and where it came from."""

    model: torch.nn.Module
    diffusion: object
    node: dict
    input_norm: str
    kind: str  # "run" | "checkpoint"
    path: str
    run_cfg: Optional[object] = None  # the run's OmegaConf config (kind "run")
    model_name: Optional[str] = None  # --model (kind "checkpoint")

    @property
    def resolution(self) -> int:
        return int(self.node["resolution"])

    @property
    def frames(self) -> int:
        return int(self.node["frames"])

    def to_unit(self, video: torch.Tensor) -> torch.Tensor:
        """Model-space frames [..., 3, H, W] -> [0, 1] (not clamped)."""
        if self.input_norm == "none":
            return (video + 1) / 2
        from gfcore.data.dfot_re10k import unnormalize

        return unnormalize(video)

    def from_unit(self, frames: torch.Tensor) -> torch.Tensor:
        """[0, 1] frames [..., 3, H, W] -> the model's input."""
        if self.input_norm == "none":
            return frames * 2 - 1
        from gfcore.data.dfot_re10k import normalize

        return normalize(frames)


def model_config(name: str, resolution: int = 256, frames: int = 16) -> dict:
    """The model node of gfcore/configs/model/NAME.yaml (or a .yaml path), its ${data.resolution.0}
    and ${train.num_frames} interpolations resolved to `resolution` and `frames`."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    path = name if name.endswith((".yaml", ".yml")) else os.path.join(CONFIG_DIR, f"{name}.yaml")
    if not os.path.isfile(path):
        known = sorted(f[:-5] for f in os.listdir(CONFIG_DIR) if f.endswith(".yaml"))
        raise SampleError(f"--model {name}: no such model config ({path}); known: {', '.join(known)}")
    try:
        root = OmegaConf.create({"data": {"resolution": [int(resolution), int(resolution)]},
                                 "train": {"num_frames": int(frames)}, "model": OmegaConf.load(path)})
        node = OmegaConf.to_container(root.model, resolve=True)
    except OmegaConfBaseException as exc:
        raise SampleError(f"--model {name} ({path}): {one_line(exc)}") from exc
    return dict(node)


def _diffusion(node: dict):
    from gfcore.models.dfot import DFoTDiffusion

    return DFoTDiffusion(**dict(node.get("diffusion") or {}))


def load_release(path: str, name: str, resolution: int = 256, frames: int = 16, use_ema: bool = True,
                 device="cpu") -> DFoTSource:
    """A released DFoT / Geometry Forcing checkpoint (Lightning .ckpt, plain state dict,
    .safetensors) into the backbone of model config `name`."""
    from gfcore.models.dfot import load_dfot_checkpoint
    from gfcore.models.build import build_backbone, model_arch, read_gfcore_checkpoint

    node = model_config(name, resolution, frames)
    if model_arch(node) != "dfot":
        raise SampleError(f"--model {name} is a {model_arch(node)} model; --checkpoint loads DFoT releases "
                          f"(--model dfot_re10k); sample a gfcore run as `gfcore sample RUN`")
    if not os.path.isfile(path):
        raise SampleError(f"--checkpoint {path}: no such file")
    with torch.device("meta"):
        model = build_backbone(node)
    try:
        load_dfot_checkpoint(model, path, use_ema=use_ema, assign=True)  # every parameter and buffer from the file
    except CheckpointError as exc:
        if read_gfcore_checkpoint(path) is not None:  # read again only to explain the refusal
            raise SampleError(f"{path} is a gfcore trainer checkpoint, not a DFoT release: sample it as "
                              f"`gfcore sample {path}` (without --checkpoint)") from exc
        expected = f"expected a DFoT checkpoint of --model {name} ({resolution} px, {frames} frames)"
        if "could not be read" in str(exc):
            raise SampleError(f"{one_line(exc)} (a truncated or corrupt file?); {expected}") from exc
        raise SampleError(f"{one_line(exc)}; {expected}") from exc
    model = model.to(device=device, dtype=torch.float32).eval()
    return DFoTSource(model, _diffusion(node), node, str(node.get("input_norm", "dfot")), "checkpoint", path,
                      model_name=name)


def read_run(path: str) -> Tuple[str, dict]:
    """(final.pt path, its content) of a run folder or final.pt; SampleError (one line, naming the
    file) when it is absent, truncated or lacks a key."""
    from gfcore.io.checkpoint_file import LegacyCheckpointError, read_checkpoint

    file = os.path.join(path, "final.pt") if os.path.isdir(path) else path
    if not os.path.isfile(file):
        raise SampleError(f"no trained model at {file!r} (expected a run folder with final.pt)")
    try:
        state = read_checkpoint(file)  # never unpickled: an old or crafted file is refused, nothing runs
    except LegacyCheckpointError:
        raise
    except Exception as exc:  # noqa: BLE001 - truncated / corrupt files raise many types
        raise SampleError(f"{file}: cannot be read as a gfcore checkpoint ({type(exc).__name__}: "
                          f"{one_line(exc)}; a truncated or corrupt file?)") from exc
    missing = [k for k in ("model", "ema", "model_config", "config") if k not in state]
    if missing:
        raise SampleError(f"{file}: not a gfcore final.pt, lacks the keys {missing}")
    return file, state


def load_run_model(file: str, state: dict, use_ema: bool = True, device="cpu") -> torch.nn.Module:
    """The run's backbone (VideoDiT or UViT3DPose) with its EMA or raw weights, key-exactly."""
    from gfcore.models.dfot.checkpoint import check_keys
    from gfcore.models.build import build_backbone

    try:
        model = build_backbone(dict(state["model_config"]))
    except (TypeError, ValueError) as exc:
        raise SampleError(f"{file}: its model_config does not build a model ({one_line(exc)})") from exc
    weights = state["ema" if use_ema else "model"]
    check_keys(model, weights, f"{file} ({'ema' if use_ema else 'model'} weights)")
    model.load_state_dict(weights)
    return model.to(device).eval()


def run_source(file: str, state: dict, model: torch.nn.Module, run_cfg) -> DFoTSource:
    node = dict(state["model_config"])
    return DFoTSource(model, _diffusion(node), node, str(node.get("input_norm", "dfot")), "run", file,
                      run_cfg=run_cfg)


@dataclass
class VideoDiTRun:
    """A gfcore run whose model is the flow-matching VideoDiT (model.arch dit), loaded."""
    file: str
    model: torch.nn.Module
    run_cfg: dict


def load_source(args, videodit_refusal: Optional[str] = None):
    """The model the command line names: --checkpoint with --model (a DFoTSource of the release) or
    args.run (a DFoTSource of a DFoT run, else a VideoDiTRun), with the weights --weights picks (run:
    the run's sample.use_ema; EMA for a release). videodit_refusal: refuse a VideoDiT run with this
    remedy, before its weights are loaded."""
    if args.checkpoint is not None:
        return load_release(args.checkpoint, args.model, args.model_resolution, args.model_frames,
                            args.weights != "raw", args.device)
    file, state = read_run(args.run)
    dfot = state["model_config"].get("arch", "dit") == "dfot"
    if not dfot and videodit_refusal is not None:
        raise SampleError(f"{file}: its model is gfcore's VideoDiT (model.arch dit); {videodit_refusal}")
    run_cfg = state["config"]
    use_ema = args.weights == "ema" or (args.weights == "run" and run_cfg.get("sample", {}).get("use_ema", True))
    model = load_run_model(file, state, use_ema, args.device)
    if not dfot:
        return VideoDiTRun(file, model, run_cfg)
    from omegaconf import OmegaConf

    return run_source(file, state, model, OmegaConf.create(run_cfg))


# ----------------------------------------------------------------------------------------- settings


@dataclass
class DFoTSettings:
    """What dfot_long_rollout is called with (num_frames None: each clip's own length)."""

    num_frames: Optional[int]
    num_context: int
    max_tokens: int
    keyframe_density: float
    key_guidance: object
    interp_guidance: object
    steps: int
    interp_max_batch: Optional[int]
    sliding_context_len: Optional[int]
    protocol: Optional[str]

    def as_dict(self) -> dict:
        out = dataclasses.asdict(self)
        for key in ("key_guidance", "interp_guidance"):
            value = getattr(self, key)
            out[key] = dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value
        return out


GUIDANCE_FLAGS = {"name": "history_guidance", "scale": "history_scale", "stabilization_level": "stabilization_level",
                  "freq_scale": "freq_scale"}
INTERP_FLAGS = {"name": "interp_history_guidance", "scale": "interp_history_scale",
                "stabilization_level": "interp_stabilization_level"}


def _guidance(base, args, flags: Dict[str, str], what: str):
    from gfcore.sample.dfot_guidance import DFoTHistoryGuidance

    changes = {field: getattr(args, flag) for field, flag in flags.items() if getattr(args, flag, None) is not None}
    try:
        guidance = DFoTHistoryGuidance.parse(base)
        return dataclasses.replace(guidance, **changes) if changes else guidance
    except (TypeError, ValueError) as exc:
        raise SampleError(f"{what}: {one_line(exc)}") from exc


def run_sample_steps(run_cfg) -> Optional[int]:
    """A DFoT run's own DDIM steps: sample.steps when its config says sample.method=ddim (a DFoT
    run whose sample.method is the VideoDiT default, euler or heun, has none: 50 then)."""
    sample = None if run_cfg is None else run_cfg.get("sample")
    if sample is None or str(sample.get("method", "")) != "ddim":
        return None
    return int(sample.steps)


def resolve_settings(args, model_frames: int, default_num_frames: Optional[int],
                     default_steps: Optional[int] = None) -> DFoTSettings:
    """The protocol's fields (or plain sliding windows with default_steps, else 50), then the
    command line's overrides; checked."""
    from gfcore.sample.dfot_protocol import PROTOCOLS

    if args.protocol is not None:
        if args.protocol not in PROTOCOLS:
            raise SampleError(f"--protocol {args.protocol}: unknown; known: {', '.join(sorted(PROTOCOLS))}")
        base = dict(PROTOCOLS[args.protocol])
    else:  # plain: each clip's frames by sliding windows of the model's frames, one context frame
        base = dict(num_frames=default_num_frames, num_context=1, keyframe_density=1.0, key_guidance=None,
                    interp_guidance=None, interp_max_batch=None, steps=default_steps or 50, max_tokens=model_frames)
    def pick(flag, key):
        return getattr(args, flag) if getattr(args, flag, None) is not None else base.get(key)

    settings = DFoTSettings(
        num_frames=pick("num_frames", "num_frames"), num_context=int(pick("context_frames", "num_context")),
        max_tokens=int(pick("max_tokens", "max_tokens")), keyframe_density=float(pick("keyframe_density",
                                                                                      "keyframe_density")),
        key_guidance=_guidance(base.get("key_guidance"), args, GUIDANCE_FLAGS, "history guidance"),
        interp_guidance=_guidance(base.get("interp_guidance"), args, INTERP_FLAGS, "interpolation history guidance"),
        steps=int(pick("steps", "steps")), interp_max_batch=pick("interp_max_batch", "interp_max_batch"),
        sliding_context_len=pick("sliding_context", "sliding_context_len"), protocol=args.protocol)
    if settings.max_tokens != model_frames:
        raise SampleError(f"max_tokens={settings.max_tokens}, but this model takes clips of exactly {model_frames} "
                          f"frames (its model.frames): pass --max-tokens {model_frames}")
    if not 1 <= settings.num_context < settings.max_tokens:
        raise SampleError(f"--context-frames {settings.num_context}: must lie in [1, {settings.max_tokens - 1}]")
    if settings.num_frames is not None and settings.num_frames <= settings.num_context:
        raise SampleError(f"--num-frames {settings.num_frames}: must exceed the {settings.num_context} context "
                          f"frames")
    if not 0.0 < settings.keyframe_density <= 1.0:
        raise SampleError(f"--keyframe-density {settings.keyframe_density}: must lie in (0, 1]")
    if not 1 <= settings.steps < 1000:
        raise SampleError(f"--steps {settings.steps}: DDIM takes 1 to 999 steps")
    return settings


# -------------------------------------------------------------------------------------------- clips


@dataclass
class Clip:
    """One clip to sample: frames as the model takes them [N, 3, H, W], the reference uint8
    [N, H, W, 3], DFoT poses [N, 16]."""

    name: str
    source: str
    frames: torch.Tensor
    reference: np.ndarray
    pose: torch.Tensor


def protocol_selection(lengths: Sequence[int], num_frames: int, num_clips: Optional[int],
                       first_frames: bool = False) -> List[Tuple[int, int]]:
    """(video index, start frame) of the clips the authors' validation takes, in its order.

    As BaseAdvancedVideoDataset with frame_skip 1 and num_eval_videos set (their RE10K
    evaluation: n_frames 256, 100 videos): videos shorter than num_frames are left out; with
    Python's random seeded 0, one start per remaining video is drawn, randrange over the
    cumulative clip numbers; the list is shuffled (same generator) and its first num_eval_videos
    entries are the clips. num_clips None: all of them. first_frames: every video from frame 0,
    in path order, instead.
    """
    videos = [i for i, n in enumerate(lengths) if n >= num_frames]
    if first_frames:
        chosen = [(i, 0) for i in videos]
    else:
        cumulative = np.cumsum([max(lengths[i] - num_frames + 1, 1) for i in videos]).tolist()
        rng = random.Random(0)
        remap = [rng.randrange(start, end) for start, end in zip([0] + cumulative[:-1], cumulative)]
        rng.shuffle(remap)
        chosen = []
        for index in remap:
            k = int(np.searchsorted(cumulative, index, side="right"))
            chosen.append((videos[k], index - (cumulative[k - 1] if k else 0)))
    return chosen if num_clips is None else chosen[:num_clips]


class ProtocolClips:
    """RealEstate10K clips of `num_frames` frames (frame skip 1) chosen as the authors' validation
    does (`protocol_selection`), from DFoT's layout or the raw layout under `root`."""

    def __init__(self, root: str, split: str, num_frames: int, resolution: int, num_clips: Optional[int],
                 first_frames: bool = False, source_for=None):
        from gfcore.data.video import video_num_frames

        from gfcore.data.build import DFOT_SPLITS

        root = os.path.expanduser(root)
        self.root, self.split, self.num_frames, self.resolution = root, split, int(num_frames), int(resolution)
        folder = DFOT_SPLITS.get(split, split)  # DFoT's layout names the train split "training"
        video_dir, pose_dir, raw_dir = (os.path.join(root, d) for d in (f"{folder}_256", f"{folder}_poses", split))
        self.pose_dir = pose_dir
        if os.path.isdir(video_dir) and os.path.isdir(pose_dir):
            self.layout = "dfot"
            videos = sorted((os.path.join(d, f) for d, _, files in os.walk(video_dir) for f in files
                             if f.endswith(".mp4")), key=str)
            self.entries = [(os.path.splitext(os.path.basename(v))[0], v) for v in videos]
            lengths = [video_num_frames(v) for _, v in self.entries]
        elif os.path.isdir(raw_dir):
            from gfcore.data.camera_file import read_camera_file

            self.layout = "raw"
            cameras = sorted(os.path.join(raw_dir, f) for f in os.listdir(raw_dir) if f.endswith(".txt"))
            self.entries = [(os.path.splitext(os.path.basename(c))[0], c) for c in cameras]
            lengths = [len(read_camera_file(c)) for _, c in self.entries]
        else:
            raise DataError(f"{root}: no RealEstate10K split {split!r}: expected {video_dir} with {pose_dir} "
                            f"(DFoT's layout) or {raw_dir} (camera files with their videos)")
        if not self.entries:
            raise DataError(f"{root}: the split {split!r} holds no clips ({self.layout} layout)")
        self.lengths = lengths
        self.chosen = protocol_selection(lengths, self.num_frames, num_clips, first_frames)
        if not self.chosen:
            raise DataError(f"{root}: none of the {len(lengths)} videos of split {split!r} has the "
                            f"{self.num_frames} frames a clip needs (longest: {max(lengths)})")

    def __len__(self) -> int:
        return len(self.chosen)

    def name(self, index: int) -> str:
        return self.entries[self.chosen[index][0]][0]

    def _poses(self, key: str, path: str) -> torch.Tensor:
        from gfcore.data.dfot_re10k import pose_from_rows

        if self.layout == "raw":
            from gfcore.data.camera_file import read_camera_file

            return pose_from_rows(read_camera_file(path).rows, path)
        from gfcore.io.safe_load import load_weights_only

        pose_path = os.path.join(self.pose_dir, f"{key}.pt")
        try:
            poses = load_weights_only(pose_path, "pose file")
        except Exception as exc:  # noqa: BLE001 - missing / truncated files
            raise DataError(f"{pose_path}: cannot load poses ({type(exc).__name__}: {one_line(exc)})") from exc
        if not isinstance(poses, torch.Tensor):
            raise DataError(f"{pose_path}: expected a tensor of camera rows [T, 18], got {type(poses).__name__}")
        return pose_from_rows(poses, pose_path)  # DFoT stores the camera file's 18 numbers per frame, as data/re10k

    def _video_path(self, key: str, path: str) -> str:
        if self.layout == "dfot":
            return path
        return os.path.splitext(path)[0] + ".mp4"

    def check(self, index: int) -> None:
        """DataError (naming the file) when the clip's frames are not resolution x resolution or
        its poses do not cover its frames."""
        from gfcore.data.video import read_video

        video, start = self.chosen[index]
        key, path = self.entries[video]
        video_path = self._video_path(key, path)
        if not os.path.isfile(video_path):
            raise DataError(f"{path}: no video {video_path}")
        height, width = read_video(video_path, [start]).shape[1:3]
        if (height, width) != (self.resolution, self.resolution):
            raise DataError(f"{video_path}: frames are {height}x{width}, this model takes {self.resolution}x"
                            f"{self.resolution} (resize and centre-crop them as DFoT does: "
                            f"gfcore.data.dfot_re10k.resize_crop_frames)")
        poses = self._poses(key, path)
        if len(poses) != self.lengths[video]:
            raise DataError(f"{path}: {len(poses)} poses for the {self.lengths[video]} frames of {video_path}")

    def clip(self, index: int, source: DFoTSource) -> Clip:
        from gfcore.data.dfot_re10k import frames_to_unit
        from gfcore.data.video import read_video

        video, start = self.chosen[index]
        key, path = self.entries[video]
        video_path = self._video_path(key, path)
        frames = read_video(video_path, list(range(start, start + self.num_frames)))
        pose = self._poses(key, path)[start:start + self.num_frames]
        return Clip(key, video_path, source.from_unit(frames_to_unit(frames)), frames, pose)


class RunClips:
    """Clips of a run's own dataset (data.kind synthetic / minecraft): the first num_frames frames
    of each (num_frames None: the whole clip; longer than the clip: the camera path repeats,
    unless `full` asks for real frames throughout)."""

    def __init__(self, cfg, split: str, num_frames: Optional[int], num_clips: Optional[int], full: bool = False):
        from gfcore.data.build import build_clip_dataset, split_clip_frames

        clip_frames = split_clip_frames(cfg.data, split)
        if full and num_frames is not None and clip_frames < num_frames:
            raise DataError(f"{cfg.data.root} split {split!r}: clips of {clip_frames} frames, the evaluation "
                            f"needs {num_frames} real frames per clip")
        self.dataset = build_clip_dataset(cfg.data, with_depth=False, split=split, generate_missing=False)
        if len(self.dataset) == 0:
            raise DataError(f"{cfg.data.root}: split {split!r} holds no clips")
        self.num_frames, self.split = num_frames, split
        self.count = len(self.dataset) if num_clips is None else min(num_clips, len(self.dataset))
        self.source_dir = getattr(self.dataset, "raw_dir", None)

    def __len__(self) -> int:
        return self.count

    def name(self, index: int) -> str:
        return self.dataset.keys[index]

    def check(self, index: int) -> None:
        return None

    def clip(self, index: int, source: DFoTSource) -> Clip:
        from gfcore.data.geometry import cameras_to_dfot_poses
        from gfcore.sample.sampler import to_uint8
        from gfcore.models.build import dfot_frames

        item = self.dataset[index]
        total = item["frames"].shape[0]
        num_frames = self.num_frames or total
        index_ = torch.arange(num_frames) % total
        frames = item["frames"][index_]
        height, width = frames.shape[-2:]
        pose = cameras_to_dfot_poses(item["intrinsics"][index_].float(), item["c2w"][index_].float(), width, height)
        source_file = os.path.join(self.source_dir, item["key"]) if self.source_dir else item["key"]
        return Clip(item["key"], source_file, dfot_frames(frames, source.input_norm), to_uint8(frames), pose)


def clips_for(source: DFoTSource, settings: DFoTSettings, data_root: Optional[str], split: str,
              num_clips: Optional[int], full: bool = False, first_frames: bool = False):
    """The clip reader for this model and data (see the module docstring); every chosen clip is
    checked (DataError) before anything is sampled."""
    if source.kind == "run" and source.run_cfg.data.kind not in ("re10k", "dfot_re10k"):  # RealEstate10K roots
        cfg = source.run_cfg
        if data_root is not None:
            cfg.data.root = data_root
        clips = RunClips(cfg, split, settings.num_frames, num_clips, full)
    else:
        root = data_root if data_root is not None else (source.run_cfg.data.root if source.run_cfg else None)
        if root is None:
            raise SampleError("--data-root ROOT is needed: the RealEstate10K folder to take clips from")
        clips = ProtocolClips(str(root), split, settings.num_frames or source.frames, source.resolution, num_clips,
                              first_frames)
    for index in range(len(clips)):
        clips.check(index)
    return clips


# ----------------------------------------------------------------------------------------- sampling


def clip_generator(seed: int, index: int, device) -> torch.Generator:
    """Each clip's own generator (seed, clip index): a clip samples the same whichever others run."""
    return torch.Generator(device=torch.device(device)).manual_seed(int(seed) * 1_000_003 + int(index))


@torch.no_grad()
def sample_clip(source: DFoTSource, clip: Clip, settings: DFoTSettings, generator: Optional[torch.Generator] = None,
                progress: Optional[Callable[[str, int, int], None]] = None, device="cpu") -> np.ndarray:
    """The clip's rollout as uint8 [N, H, W, 3]: its first num_context frames given, the others
    generated (unnormalised, clamped to [0, 1], rounded); the context frames are the given ones."""
    from gfcore.models.dfot import ray_encoding
    from gfcore.sample.dfot_protocol import dfot_long_rollout

    num_frames = clip.pose.shape[0]
    c = settings.num_context
    height, width = clip.frames.shape[-2:]
    context = clip.frames[None, :c].to(device)
    conditions = clip.pose[None].to(device)
    video = dfot_long_rollout(
        source.model, source.diffusion, context, conditions,
        lambda pose: ray_encoding(pose, height, width).to(context.dtype), num_frames,
        max_tokens=settings.max_tokens, keyframe_density=settings.keyframe_density,
        key_guidance=settings.key_guidance, interp_guidance=settings.interp_guidance, steps=settings.steps,
        interp_max_batch=settings.interp_max_batch, sliding_context_len=settings.sliding_context_len,
        generator=generator, progress=progress)
    if tuple(video.shape) != (1, num_frames, *clip.frames.shape[1:]):
        raise RuntimeError(f"dfot_long_rollout returned {list(video.shape)}, expected "
                           f"{[1, num_frames, *clip.frames.shape[1:]]}")
    unit = source.to_unit(video[0].float()).clamp(0, 1)
    frames = (unit * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    frames[:c] = clip.reference[:c]  # the given frames, exactly (as the authors do before scoring)
    return frames


def _save_npz(path: str, video: np.ndarray) -> None:
    """{"video": uint8 [T, H, W, 3]}, written whole or not at all (a killed run leaves no half file)."""
    partial = path + ".partial"
    with open(partial, "wb") as handle:
        np.savez(handle, video=video)
    os.replace(partial, path)


def describe(source: DFoTSource) -> dict:
    """The model part of sample.json."""
    if source.kind == "run":
        return {"run": os.path.abspath(source.path), "model": "run", "arch": "dfot"}
    return {"checkpoint": os.path.abspath(source.path), "model": source.model_name, "arch": "dfot"}


def run_protocol_sampling(source: DFoTSource, clips, settings: DFoTSettings, out_dir: str, reporter, *,
                          seed: int = 0, device="cpu", arrays: bool = False, reference_dir: Optional[str] = None,
                          split: str = "test", extra: Optional[dict] = None, skip_existing: bool = False) -> List[str]:
    """Sample every clip and write it: {name}.mp4 + .gif in out_dir, or with `arrays` a lossless
    {name}.npz (array "video", what the metrics read) in out_dir and the .mp4 + .gif in
    out_dir/videos; with reference_dir the given clip as {name}.npz there. Writes sample.json.
    skip_existing (with arrays): clips whose .npz files are all there already are not sampled
    again (each clip has its own generator, so an interrupted run finishes as one never stopped)."""
    from gfcore.data import write_gif, write_video

    os.makedirs(out_dir, exist_ok=True)
    if reference_dir:
        os.makedirs(reference_dir, exist_ok=True)
    written = []
    total = len(clips)
    for index in range(total):
        if skip_existing and arrays:
            name = clips.name(index)
            done = [os.path.join(out_dir, f"{name}.npz")] + ([os.path.join(reference_dir, f"{name}.npz")]
                                                             if reference_dir else [])
            if all(os.path.isfile(path) for path in done):
                reporter.line(f"clip {index + 1}/{total} · {name} · sampled earlier, kept")
                written.append(name)
                continue
        clip = clips.clip(index, source)
        frames_n = clip.pose.shape[0]
        reporter.line(f"clip {index + 1}/{total} · {clip.name} · {frames_n} frames from {settings.num_context} "
                      f"given ({clip.source})")
        frames = sample_clip(source, clip, settings, clip_generator(seed, index, device),
                             reporter.steps(f"clip {index + 1}/{total}"), device)
        video_dir = os.path.join(out_dir, "videos") if arrays else out_dir
        if reference_dir:
            _save_npz(os.path.join(reference_dir, f"{clip.name}.npz"), clip.reference)
        if arrays:
            _save_npz(os.path.join(out_dir, f"{clip.name}.npz"), frames)
        write_video(os.path.join(video_dir, f"{clip.name}.mp4"), frames)
        write_gif(os.path.join(video_dir, f"{clip.name}.gif"), frames)
        written.append(clip.name)
        reporter.line(f"clip {index + 1}/{total} · wrote {os.path.join(video_dir, clip.name)}.mp4 and .gif")
    manifest = {**describe(source), "split": split, "clips": written, "context_frames": settings.num_context,
                "steps": settings.steps, "method": "ddim", "seed": seed, "protocol": settings.protocol,
                "settings": settings.as_dict(), **(extra or {})}
    with open(os.path.join(out_dir, "sample.json"), "w") as handle:
        json.dump(manifest, handle, indent=1)
    return written


# ------------------------------------------------------------------------------------ command line


def add_source_arguments(parser) -> None:
    """The options of load_source beside the run (its own positional or flag, as each command
    names it) and add_dfot_arguments' --checkpoint / --model."""
    parser.add_argument("--weights", choices=("run", "ema", "raw"), default="run",
                        help="EMA or raw weights (default: the run's sample.use_ema; EMA for --checkpoint)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")


def check_source_arguments(parser, args, run_usage: str) -> None:
    """A run or a released checkpoint with its --model, as argparse usage errors (exit code 2)."""
    if (args.run is None) == (args.checkpoint is None):
        parser.error(f"give a run ({run_usage}) or a released checkpoint (--checkpoint PATH --model NAME), not both")
    if args.checkpoint is not None and args.model is None:
        parser.error("--checkpoint needs --model (the model config of the file, e.g. dfot_re10k)")


def add_dfot_arguments(parser, eval_mode: bool = False) -> None:
    """The DFoT options shared by `gfcore sample` and `gfcore eval --protocol`."""
    group = parser.add_argument_group("DFoT models (UViT3DPose, DDIM)")
    group.add_argument("--checkpoint", help="a released DFoT / Geometry Forcing checkpoint (.ckpt, state dict, "
                       ".safetensors); with --model")
    group.add_argument("--model", help="model config of --checkpoint: a name of gfcore/configs/model (dfot_re10k) "
                       "or a .yaml file")
    group.add_argument("--model-resolution", type=int, default=256,
                       help="frame side of --model where its config leaves it to the data (default 256)")
    group.add_argument("--model-frames", type=int, default=16,
                       help="frames per window of --model where its config leaves it to training (default 16)")
    group.add_argument("--data-root", help="RealEstate10K root (DFoT's {split}_256 + {split}_poses layout, or "
                       "raw camera files); for a run: overrides its data.root")
    group.add_argument("--protocol", help="a long-rollout protocol of gfcore.sample.dfot_protocol.PROTOCOLS "
                       "(dfot256: 256 frames from 1, keyframes then interpolation)")
    group.add_argument("--max-tokens", type=int, help="frames per model call (the model's frames)")
    group.add_argument("--keyframe-density", type=float, help="fraction of frames generated as keyframes first")
    group.add_argument("--interp-max-batch", type=int, help="interpolation windows per model call")
    group.add_argument("--sliding-context", type=int, help="context frames of each sliding window")
    group.add_argument("--freq-scale", type=float, help="history guidance freq_scale (fractional modes)")
    group.add_argument("--interp-history-guidance", help="history guidance of the interpolation stage")
    group.add_argument("--interp-history-scale", type=float)
    group.add_argument("--interp-stabilization-level", type=float)
    group.add_argument("--first-frames", action="store_true",
                       help="RealEstate10K: each long-enough video from frame 0, in path order, instead of the "
                            "authors' validation clips (one seeded random start per video, shuffled)")
    group.add_argument("--progress-every", type=int, default=10, help="print progress every N denoising steps "
                       "(and every 5 s, and the last)")
    group.add_argument("--no-progress", action="store_true")
