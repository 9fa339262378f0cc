"""VGGTTeacher: frozen VGGT aggregator features resampled to a diffusion model's token grid."""
from __future__ import annotations

import os
from typing import Dict, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from gfcore._extension import warn_once
from gfcore.geometry.checkpoint import load_vggt_checkpoint
from gfcore.geometry.model import VGGT
from gfcore.geometry.preprocess import RESIZE_MODES, resize_for_vggt
from gfcore.nvtx import nvtx_range

_HEADLESS = {"enable_camera": False, "enable_depth": False, "enable_point": False}


def resample_grid(features: torch.Tensor, grid: Tuple[int, int]) -> torch.Tensor:
    """[..., h, w, C] -> [..., grid_h, grid_w, C], bilinear (align_corners=False, no antialias),
    computed in float32 and returned in the input dtype."""
    if tuple(features.shape[-3:-1]) == tuple(grid):
        return features
    lead, (height, width, channels) = features.shape[:-3], features.shape[-3:]
    x = features.reshape(-1, height, width, channels).permute(0, 3, 1, 2).float()
    x = F.interpolate(x, size=tuple(grid), mode="bilinear", align_corners=False)
    return x.permute(0, 2, 3, 1).reshape(*lead, grid[0], grid[1], channels).to(features.dtype)


MATMUL_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def hold_matmul_weights(module: nn.Module, dtype: torch.dtype) -> nn.Module:
    """The parameters of module's linear and conv layers (nearly all of a ViT's) held in dtype; the
    rest (norms, LayerScale, tokens, position table) stays float32. Autocast to dtype rounds those
    layers' float32 weights to dtype at every call anyway (round to nearest even, as .to does), so
    under that autocast the features are the same, and the residual stream stays float32."""
    for layer in module.modules():
        if isinstance(layer, MATMUL_LAYERS):
            # new parameters rather than layer.to(dtype): Module.to would swap fake tensors in place,
            # which fails under the memory planner's FakeTensorMode
            for name, param in list(layer.named_parameters(recurse=False)):
                setattr(layer, name, nn.Parameter(param.detach().to(dtype), requires_grad=param.requires_grad))
    return module


class VGGTTeacher(nn.Module):
    """Frozen VGGT feature extractor for Geometry Forcing.

    teacher(frames [B, T, 3, H, W] in [0, 1], grid=(h, w)) -> [B, T, L, h, w, 2C]: the patch
    tokens (special tokens dropped) of the chosen aggregator `layers`, bilinearly resampled from
    VGGT's patch grid to (h, w). Clips are cut into consecutive calls of `frames_per_call`
    frames; each call is an independent VGGT pass (its first frame takes the reference slot).

    checkpoint: local .pt/.pth/.safetensors with the official keys; None gives random weights
    (benchmarks, tests). config: VGGT keyword arguments (default VGGT-1B). dtype: autocast
    dtype (bfloat16/float16) or float32 for none. weights_dtype: float32, or bfloat16 (with
    dtype bfloat16 only) to hold the linear / conv weights in bf16, half the memory for the same
    features (hold_matmul_weights). out_dtype defaults to dtype. resize_mode: "square" (518 x
    518, as GF), "crop" or "pad" (VGGT's preprocessing).

    Implements the teacher protocol (gfcore.geometry.protocol).
    """

    name = "vggt"
    label = "VGGT teacher"
    requires: Tuple[str, ...] = ()

    def __init__(self, checkpoint: Optional[str | os.PathLike] = None, layers: Sequence[int] = (-1,),
                 dtype: torch.dtype = torch.bfloat16, frames_per_call: int = 16,
                 resize_mode: str = "square", image_size: int = 518, config: Optional[Dict] = None,
                 device: torch.device | str | None = None, out_dtype: Optional[torch.dtype] = None,
                 model: Optional[VGGT] = None, weights_dtype: torch.dtype = torch.float32):
        super().__init__()
        if resize_mode not in RESIZE_MODES:
            raise ValueError(f"resize_mode={resize_mode!r} is not one of {RESIZE_MODES}")
        if frames_per_call < 1:
            raise ValueError(f"frames_per_call={frames_per_call} must be >= 1")
        if dtype not in (torch.float32, torch.bfloat16, torch.float16):
            raise ValueError(f"dtype={dtype} must be float32, bfloat16 or float16")
        if weights_dtype != torch.float32 and not weights_dtype == dtype == torch.bfloat16:
            raise ValueError(f"weights_dtype={weights_dtype} must be float32, or bfloat16 when dtype is bfloat16 "
                             f"(dtype={dtype})")
        if model is None:
            model = self._build(checkpoint, dict(config or {}))
        elif checkpoint is not None:
            load_vggt_checkpoint(model, checkpoint)
        if weights_dtype != torch.float32:  # before the move: the device only ever holds the bf16 copy
            hold_matmul_weights(model, weights_dtype)
        self.vggt = model.to(device) if device is not None else model
        self.vggt.eval().requires_grad_(False)
        depth = self.vggt.aggregator.depth
        layers = [int(i) for i in (layers if isinstance(layers, Sequence) else [layers])]
        if not layers or any(not -depth <= i < depth for i in layers):
            raise ValueError(f"layers={layers} must be non-empty indices into the {depth} aggregator layers")
        self.layers = [i % depth for i in layers]
        self.dtype = dtype
        self.out_dtype = out_dtype or dtype
        self.frames_per_call = frames_per_call
        self.resize_mode = resize_mode
        self.image_size = image_size

    @staticmethod
    def _build(checkpoint, config: Dict) -> VGGT:
        config = {**config, **_HEADLESS}  # GF needs the aggregator only
        if checkpoint is None:
            warn_once("VGGTTeacher: no checkpoint given, using random weights")
            return VGGT(**config)
        with torch.device("meta"):  # no throw-away random init of a 1B-parameter model
            model = VGGT(**config)
        load_vggt_checkpoint(model, checkpoint, assign=True)
        model.aggregator.reset_buffers()
        return model

    def train(self, mode: bool = True) -> "VGGTTeacher":
        """The teacher stays in eval mode whatever its parent module does."""
        super().train(False)
        return self

    @property
    def feature_dim(self) -> int:
        return self.vggt.aggregator.camera_token.shape[-1] * 2

    def cache_info(self) -> Dict:
        return {"teacher": self.name, "resize_mode": self.resize_mode, "image_size": self.image_size}

    def preprocess(self, frames: torch.Tensor) -> torch.Tensor:
        """[B, T, 3, H, W] in [0, 1] -> [B, T, 3, H', W'] at VGGT's input size."""
        batch, steps = frames.shape[:2]
        flat = resize_for_vggt(frames.reshape(batch * steps, *frames.shape[2:]), self.resize_mode,
                               self.image_size, self.vggt.aggregator.patch_size)
        return flat.reshape(batch, steps, *flat.shape[1:])

    @torch.no_grad()
    def forward(self, frames: torch.Tensor, grid: Optional[Tuple[int, int]] = None) -> torch.Tensor:
        """frames [B, T, 3, H, W] in [0, 1] -> features [B, T, L, h, w, 2C] (grid None: VGGT's grid)."""
        if frames.dim() != 5 or frames.shape[2] != 3:
            raise ValueError(f"frames must be [B, T, 3, H, W], got {tuple(frames.shape)}")
        if not frames.is_floating_point():
            raise ValueError(f"frames must be a float tensor in [0, 1], got {frames.dtype}")
        if grid is not None and (len(grid) != 2 or min(grid) < 1):
            raise ValueError(f"grid must be (h, w) with positive sizes, got {grid}")
        device = self.vggt.aggregator.camera_token.device
        with nvtx_range("vggt_teacher.preprocess"):
            images = self.preprocess(frames.to(device))
        patch = self.vggt.aggregator.patch_size
        grid_hw = (images.shape[-2] // patch, images.shape[-1] // patch)
        num_layers = max(self.layers) + 1
        chunks = []
        for start in range(0, images.shape[1], self.frames_per_call):
            chunk = images[:, start:start + self.frames_per_call]
            with nvtx_range("vggt_teacher.aggregator"), torch.autocast(
                    device.type, dtype=self.dtype, enabled=self.dtype != torch.float32):
                outputs, patch_start = self.vggt.aggregator(chunk, num_layers=num_layers)
            with nvtx_range("vggt_teacher.resample"):
                feats = torch.stack([outputs[i][:, :, patch_start:] for i in self.layers], dim=2)
                feats = feats.reshape(*feats.shape[:3], *grid_hw, feats.shape[-1])
                if grid is not None:
                    feats = resample_grid(feats, grid)
                chunks.append(feats.to(self.out_dtype))
        return torch.cat(chunks, dim=1)
