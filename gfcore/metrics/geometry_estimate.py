"""Cameras and depth of a clip estimated with VGGT's camera and depth heads (for RPE).

estimate_geometry(frames [T, 3, H, W], model) -> depth [T, H, W], intrinsics [T, 3, 3] and
c2w [T, 4, 4] at the clip's own resolution, in the conventions of gfcore.metrics.rpe:
pixel centres at integer coordinates (x = column), OpenCV camera axes, c2w[0] = identity.

Resolution. Frames are resized to the model's input size with gfcore.geometry.preprocess
("square", "crop" or "pad"). In continuous image coordinates (pixel corners at integers)
that resize is an affine map per axis, u_in = s * u_clip + o (s = resized / clip size,
o = the pad offset, or minus the crop offset). VGGT's intrinsics live in continuous input
coordinates (principal point at the input's centre), so the clip's intrinsics are
f_clip = f_in / s and c_clip = (c_in - o) / s - 0.5 (the last term moves to integer pixel
centres). Depth is z-depth, unchanged by resizing; the depth map is sampled bilinearly at
every clip pixel centre mapped through the same affine map. Clip pixels the model never
saw (outside a "crop") get NaN depth, which RPE treats as not co-visible.

Long clips. VGGT is called on chunks of `frames_per_call` frames overlapping by one frame.
Each call has its own world (its first frame's camera, up to the model's accuracy; we
re-anchor each chunk exactly on its first frame) and its own scale: VGGT normalises every
call's scene to a unit it chooses, so depths and translations of two chunks differ by an
unknown factor. We resolve it on the shared frame: chunk k is multiplied by the median of
the per-pixel ratio depth_prev(shared) / depth_k(shared), then its poses, relative to the
shared frame, are composed onto the shared frame's already-chained pose. The shared frame
keeps the earlier chunk's estimate. Errors of this single-frame alignment accumulate along
the chain (drift), as in any chained odometry; frames_per_call >= T avoids chaining.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from gfcore.geometry.checkpoint import load_vggt_checkpoint
from gfcore.geometry.model import VGGT
from gfcore.geometry.pose import pose_encoding_to_cameras, se3_inverse
from gfcore.geometry.preprocess import RESIZE_MODES, resize_for_vggt, target_size
from gfcore.metrics.validate import check_floating
from gfcore.nvtx import nvtx_range


@dataclass
class EstimatedGeometry:
    """Per-frame geometry of one clip, float32, at the clip's resolution."""

    depth: torch.Tensor  # [T, H, W] z-depth, NaN where the model saw no pixel
    depth_conf: torch.Tensor  # [T, H, W] the depth head's confidence (1 + exp(.))
    intrinsics: torch.Tensor  # [T, 3, 3] pixels of the clip, pixel centres at integers
    c2w: torch.Tensor  # [T, 4, 4] camera-to-world, world = first frame's camera
    chunk_scales: List[float]  # factor applied to each chunk to match the previous one (1.0 first)

    def to_npz(self, path: str | os.PathLike) -> None:
        """Write depth / intrinsics / c2w (the layout gfcore.metrics.clips.load_geometry reads)."""
        np.savez(path, depth=self.depth.cpu().numpy(), intrinsics=self.intrinsics.cpu().numpy(),
                 c2w=self.c2w.cpu().numpy(), depth_conf=self.depth_conf.cpu().numpy())


@dataclass(frozen=True)
class InputMap:
    """Affine map from clip to model-input continuous coordinates: u_in = scale * u_clip + offset."""

    scale: Tuple[float, float]  # (x, y)
    offset: Tuple[float, float]  # (x, y)
    input_hw: Tuple[int, int]


def input_map(height: int, width: int, mode: str, size: int, patch: int) -> InputMap:
    """How resize_for_vggt(mode, size, patch) maps a height x width clip onto the model input."""
    new_h, new_w = target_size(height, width, mode, size, patch)
    scale = (new_w / width, new_h / height)
    if mode == "crop" and new_h > size:
        return InputMap(scale, (0.0, -float((new_h - size) // 2)), (size, new_w))
    if mode == "pad":
        return InputMap(scale, (float((size - new_w) // 2), float((size - new_h) // 2)), (size, size))
    return InputMap(scale, (0.0, 0.0), (new_h, new_w))


def intrinsics_to_clip(k_input: torch.Tensor, mapping: InputMap) -> torch.Tensor:
    """[..., 3, 3] intrinsics in continuous input pixels -> clip pixels with integer pixel centres."""
    k = k_input.clone()
    for axis in (0, 1):
        scale, offset = mapping.scale[axis], mapping.offset[axis]
        k[..., axis, axis] = k_input[..., axis, axis] / scale
        k[..., axis, 2] = (k_input[..., axis, 2] - offset) / scale - 0.5
    return k


def depth_to_clip(depth_input: torch.Tensor, mapping: InputMap, height: int, width: int) -> torch.Tensor:
    """[N, h_in, w_in] maps on the model input -> [N, H, W], sampled bilinearly at the clip's pixel
    centres; NaN where a centre falls outside the input (cropped away)."""
    h_in, w_in = depth_input.shape[-2:]
    like = dict(dtype=torch.float32, device=depth_input.device)
    u_in = (torch.arange(width, **like) + 0.5) * mapping.scale[0] + mapping.offset[0]
    v_in = (torch.arange(height, **like) + 0.5) * mapping.scale[1] + mapping.offset[1]
    # grid_sample with align_corners=False: -1 and 1 are the input's outer pixel edges
    gx, gy = 2 * u_in / w_in - 1, 2 * v_in / h_in - 1
    grid = torch.stack(torch.meshgrid(gy, gx, indexing="ij")[::-1], dim=-1)
    grid = grid.expand(depth_input.shape[0], height, width, 2)
    out = F.grid_sample(depth_input[:, None].float(), grid, mode="bilinear", padding_mode="border",
                        align_corners=False)[:, 0]
    outside = (gx.abs() > 1)[None, None, :] | (gy.abs() > 1)[None, :, None]
    return out.masked_fill(outside, float("nan"))


def chunk_bounds(frames: int, frames_per_call: int) -> List[Tuple[int, int]]:
    """[start, stop) of the VGGT calls over `frames` frames; consecutive calls share one frame."""
    if frames_per_call < 1 or (frames > frames_per_call and frames_per_call < 2):
        raise ValueError(f"frames_per_call={frames_per_call} must be >= 2 to chain a clip of {frames} frames "
                         "(chunks overlap by one frame)")
    bounds, start = [], 0
    while True:
        stop = min(start + frames_per_call, frames)
        bounds.append((start, stop))
        if stop == frames:
            return bounds
        start = stop - 1


def chain_chunks(chunks: Sequence[Tuple[torch.Tensor, torch.Tensor]]) -> Tuple[torch.Tensor, torch.Tensor, List[float]]:
    """Chain per-chunk estimates into one trajectory (see the module docstring).

    chunks: (c2w [n_k, 4, 4] in the chunk's own world, depth [n_k, h, w]) for chunks whose first
    frame is the previous chunk's last frame. Returns c2w [T, 4, 4] (float64, c2w[0] = identity),
    depth [T, h, w] and the scale applied to each chunk.
    """
    all_c2w, all_depth, scales = [], [], []
    for index, (c2w, depth) in enumerate(chunks):
        c2w = c2w.double()
        relative = torch.linalg.solve(c2w[:1], c2w)  # c2w[0]^-1 c2w[i]: poses in the chunk's first camera
        if index == 0:
            scale, anchor = 1.0, torch.eye(4, dtype=torch.float64, device=c2w.device)
        else:
            ratio = all_depth[-1][-1].double() / depth[0].double()
            ratio = ratio[torch.isfinite(ratio) & (ratio > 0)]
            if ratio.numel() == 0:
                raise ValueError(f"chunk {index}: no valid depth on the frame shared with chunk {index - 1}; "
                                 "cannot match the chunks' scales")
            scale, anchor = float(ratio.median()), all_c2w[-1][-1]
        relative[:, :3, 3] *= scale
        chained, scaled_depth = anchor @ relative, depth * scale
        skip = 0 if index == 0 else 1  # the shared frame keeps the earlier chunk's estimate
        all_c2w.append(chained[skip:])
        all_depth.append(scaled_depth[skip:])
        scales.append(scale)
    return torch.cat(all_c2w), torch.cat(all_depth), scales


def model_input_size(model: VGGT) -> int:
    """The square input size the model's positional embedding was built for (518 for VGGT-1B)."""
    patch_embed = model.aggregator.patch_embed
    grid = int(round((patch_embed.pos_embed.shape[1] - 1) ** 0.5))
    return grid * patch_embed.patch_size


def _check_inputs(frames: torch.Tensor, model: VGGT, resize_mode: str) -> None:
    check_floating(frames, "frames")
    if frames.dim() != 4 or frames.shape[1] != 3:
        raise ValueError(f"frames: expected [T, 3, H, W], got {tuple(frames.shape)}")
    if frames.shape[0] < 1 or min(frames.shape[-2:]) < 1:
        raise ValueError(f"frames: expected at least one non-empty frame, got {tuple(frames.shape)}")
    low, high = float(frames.min()), float(frames.max())
    if not (-1e-3 <= low and high <= 1 + 1e-3):  # also catches NaN
        raise ValueError(f"frames: expected values in [0, 1], found [{low:.3f}, {high:.3f}]")
    if not isinstance(model, VGGT):
        raise TypeError(f"model: expected a gfcore.geometry.VGGT, got {type(model).__name__}")
    if model.camera_head is None or model.depth_head is None:
        raise ValueError("model: geometry estimation needs the camera and depth heads "
                         "(build VGGT with enable_camera=True, enable_depth=True)")
    if resize_mode not in RESIZE_MODES:
        raise ValueError(f"resize_mode={resize_mode!r} is not one of {RESIZE_MODES}")


@torch.no_grad()
def estimate_geometry(frames: torch.Tensor, model: VGGT, frames_per_call: int = 16,
                      resize_mode: str = "square", image_size: Optional[int] = None,
                      dtype: torch.dtype = torch.float32) -> EstimatedGeometry:
    """Estimate depth, intrinsics and camera-to-world poses of a clip with VGGT's heads.

    frames: [T, 3, H, W] in [0, 1], any H, W. model: a VGGT with camera and depth heads (its
    weights' device is used). frames_per_call: frames per VGGT call (chunks overlap by one
    frame and are chained, see the module docstring). resize_mode: how frames are brought to
    the model's input ("square" as Geometry Forcing's teacher, "crop"/"pad" as VGGT's own
    preprocessing). image_size: input size (default: the size the model was built for).
    dtype: autocast dtype of the aggregator (float32 = none); outputs are float32.
    """
    _check_inputs(frames, model, resize_mode)
    steps, _, height, width = frames.shape
    size = image_size or model_input_size(model)
    patch = model.aggregator.patch_size
    mapping = input_map(height, width, resize_mode, size, patch)
    device = next(model.parameters()).device
    images = resize_for_vggt(frames.to(device, torch.float32), resize_mode, size, patch)
    chunks, k_input, conf_input = [], [], []
    for start, stop in chunk_bounds(steps, frames_per_call):
        with nvtx_range("geometry_estimate.vggt"), torch.autocast(device.type, dtype=dtype,
                                                                  enabled=dtype != torch.float32):
            predictions = model(images[None, start:stop])
        extrinsics, intrinsics = pose_encoding_to_cameras(predictions["pose_enc"].float(), mapping.input_hw)
        keep = slice(0 if start == 0 else 1, None)
        chunks.append((se3_inverse(extrinsics[0]), predictions["depth"][0, ..., 0].float()))
        k_input.append(intrinsics[0, keep])
        conf_input.append(predictions["depth_conf"][0, keep].float())
    c2w, depth_input, scales = chain_chunks(chunks)
    return EstimatedGeometry(
        depth=depth_to_clip(depth_input, mapping, height, width),
        depth_conf=depth_to_clip(torch.cat(conf_input), mapping, height, width),
        intrinsics=intrinsics_to_clip(torch.cat(k_input), mapping).float(),
        c2w=c2w.float(),
        chunk_scales=scales,
    )


GEOMETRY_HEADS = {"enable_camera": True, "enable_depth": True, "enable_point": False}


def read_vggt_config(path: Optional[str | os.PathLike]) -> Dict:
    """VGGT keyword arguments from a JSON file (None: VGGT-1B's defaults); errors name the file."""
    if path is None:
        return {}
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--vggt-config: no such file {str(path)!r}")
    try:
        config = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"--vggt-config {str(path)!r}: not valid JSON ({exc})") from exc
    if not isinstance(config, dict):
        raise ValueError(f"--vggt-config {str(path)!r}: expected a JSON object of VGGT arguments")
    return config


def load_geometry_model(checkpoint: str | os.PathLike, config: Optional[Dict] = None,
                        device: torch.device | str = "cpu") -> VGGT:
    """A VGGT with camera and depth heads, weights read from a local checkpoint (never downloaded).

    Raises FileNotFoundError naming `checkpoint` when the file is absent, CheckpointError (a
    ValueError) when it cannot be read or lacks the camera/depth heads' keys.
    """
    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise FileNotFoundError(f"--vggt: no such checkpoint file {str(checkpoint)!r}")
    arguments = {**(config or {}), **GEOMETRY_HEADS}
    try:
        with torch.device("meta"):  # no throw-away random init of a 1B-parameter model
            model = VGGT(**arguments)
    except TypeError as exc:
        raise ValueError(f"VGGT config: {exc}") from exc
    load_vggt_checkpoint(model, checkpoint, assign=True)
    model.aggregator.reset_buffers()
    return model.to(device).eval().requires_grad_(False)
