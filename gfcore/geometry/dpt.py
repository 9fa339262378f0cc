"""VGGT's DPT head (depth and world-point maps) with its UV positional embedding."""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn


def uv_grid(width: int, height: int, aspect_ratio: float, dtype: torch.dtype,
            device: torch.device | str | None = None) -> torch.Tensor:
    """[height, width, 2] (u, v) pixel-centre coordinates spanning a unit-diagonal rectangle."""
    diagonal = (aspect_ratio ** 2 + 1.0) ** 0.5
    span_x, span_y = aspect_ratio / diagonal, 1.0 / diagonal
    xs = torch.linspace(-span_x * (width - 1) / width, span_x * (width - 1) / width, width,
                        dtype=dtype, device=device)
    ys = torch.linspace(-span_y * (height - 1) / height, span_y * (height - 1) / height, height,
                        dtype=dtype, device=device)
    u, v = torch.meshgrid(xs, ys, indexing="xy")
    return torch.stack([u, v], dim=-1)


def sincos_embed(values: torch.Tensor, dim: int, omega_0: float = 100.0) -> torch.Tensor:
    """[N] -> [N, dim] as cat(sin, cos), computed in float64 and returned as float32."""
    omega = torch.arange(dim // 2, dtype=torch.float64, device=values.device) / (dim / 2.0)
    omega = 1.0 / omega_0 ** omega
    angles = torch.outer(values.reshape(-1).double(), omega)
    return torch.cat([angles.sin(), angles.cos()], dim=1).float()


def uv_embedding(height: int, width: int, channels: int, aspect_ratio: float, dtype: torch.dtype,
                 device: torch.device | str | None = None) -> torch.Tensor:
    """[channels, height, width] sin/cos embedding of the UV grid: u in the first half, v in the second."""
    grid = uv_grid(width, height, aspect_ratio, dtype, device).reshape(-1, 2)
    embed = torch.cat([sincos_embed(grid[:, 0], channels // 2), sincos_embed(grid[:, 1], channels // 2)], dim=-1)
    return embed.reshape(height, width, channels).permute(2, 0, 1)


class ResidualConvUnit(nn.Module):
    """relu -> conv -> relu -> conv, plus a skip. The first ReLU is in place, as in the official
    model, so the skip path carries relu(x) rather than x."""

    def __init__(self, features: int):
        super().__init__()
        self.conv1 = nn.Conv2d(features, features, 3, 1, 1)
        self.conv2 = nn.Conv2d(features, features, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(x)  # the skip below must see relu(x), matching the official in-place ReLU
        out = self.conv2(F.relu(self.conv1(x)))
        return out + x


class FusionBlock(nn.Module):
    """RefineNet fusion: (+ residual unit of the skip) -> residual unit -> bilinear resize -> 1x1 conv."""

    def __init__(self, features: int, has_residual: bool = True):
        super().__init__()
        self.out_conv = nn.Conv2d(features, features, 1, 1, 0)
        if has_residual:
            self.resConfUnit1 = ResidualConvUnit(features)
        self.has_residual = has_residual
        self.resConfUnit2 = ResidualConvUnit(features)

    def forward(self, x: torch.Tensor, skip: Optional[torch.Tensor] = None,
                size: Optional[Tuple[int, int]] = None) -> torch.Tensor:
        if self.has_residual:
            x = x + self.resConfUnit1(skip)
        x = self.resConfUnit2(x)
        if size is None:
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
        else:
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=True)
        return self.out_conv(x)


class Scratch(nn.Module):
    """Container whose attribute names match the checkpoint (`scratch.layer1_rn`, ...)."""

    def __init__(self, out_channels: Sequence[int], features: int, output_dim: int):
        super().__init__()
        for i, channels in enumerate(out_channels, start=1):
            setattr(self, f"layer{i}_rn", nn.Conv2d(channels, features, 3, 1, 1, bias=False))
        self.refinenet1 = FusionBlock(features)
        self.refinenet2 = FusionBlock(features)
        self.refinenet3 = FusionBlock(features)
        self.refinenet4 = FusionBlock(features, has_residual=False)
        self.output_conv1 = nn.Conv2d(features, features // 2, 3, 1, 1)
        self.output_conv2 = nn.Sequential(nn.Conv2d(features // 2, 32, 3, 1, 1), nn.ReLU(),
                                          nn.Conv2d(32, output_dim, 1, 1, 0))


def activate_output(out: torch.Tensor, activation: str) -> Tuple[torch.Tensor, torch.Tensor]:
    """[N, C, H, W] -> (values [N, H, W, C-1], confidence 1 + exp(last channel) [N, H, W])."""
    out = out.permute(0, 2, 3, 1)
    values, conf = out[..., :-1], out[..., -1]
    if activation == "exp":
        values = torch.exp(values)
    elif activation == "inv_log":
        values = torch.sign(values) * torch.expm1(values.abs())
    elif activation != "linear":
        raise ValueError(f"unknown activation {activation!r}")
    return values, 1 + conf.exp()


class DPTHead(nn.Module):
    """Dense prediction from four aggregator layers (patch tokens only)."""

    def __init__(self, dim_in: int, patch_size: int = 14, output_dim: int = 4,
                 activation: str = "inv_log", features: int = 256,
                 out_channels: Sequence[int] = (256, 512, 1024, 1024),
                 intermediate_layer_idx: Sequence[int] = (4, 11, 17, 23),
                 frames_chunk_size: int = 8):
        super().__init__()
        if len(out_channels) != 4 or len(intermediate_layer_idx) != 4:
            raise ValueError("DPTHead needs four out_channels and four intermediate_layer_idx")
        self.patch_size = patch_size
        self.activation = activation
        self.intermediate_layer_idx = list(intermediate_layer_idx)
        self.frames_chunk_size = frames_chunk_size
        self.norm = nn.LayerNorm(dim_in)
        self.projects = nn.ModuleList(nn.Conv2d(dim_in, c, 1, 1, 0) for c in out_channels)
        self.resize_layers = nn.ModuleList([
            nn.ConvTranspose2d(out_channels[0], out_channels[0], 4, stride=4),
            nn.ConvTranspose2d(out_channels[1], out_channels[1], 2, stride=2),
            nn.Identity(),
            nn.Conv2d(out_channels[3], out_channels[3], 3, stride=2, padding=1),
        ])
        self.scratch = Scratch(out_channels, features, output_dim)

    @staticmethod
    def _add_uv(x: torch.Tensor, aspect_ratio: float) -> torch.Tensor:
        embed = uv_embedding(x.shape[-2], x.shape[-1], x.shape[1], aspect_ratio, x.dtype, x.device)
        return x + embed * 0.1  # embed is float32, as in the official head

    def forward(self, layer_outputs: List[torch.Tensor], image_hw: Tuple[int, int],
                patch_start_idx: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """Returns (values [B, S, H, W, output_dim-1], confidence [B, S, H, W])."""
        frames = layer_outputs[0].shape[1]
        step = self.frames_chunk_size or frames
        pieces = [self._forward_frames(layer_outputs, image_hw, patch_start_idx, start, min(start + step, frames))
                  for start in range(0, frames, step)]
        return torch.cat([p[0] for p in pieces], dim=1), torch.cat([p[1] for p in pieces], dim=1)

    def _forward_frames(self, layer_outputs, image_hw, patch_start_idx, start, stop):
        height, width = image_hw
        grid_h, grid_w = height // self.patch_size, width // self.patch_size
        aspect = width / height
        features = []
        for project, resize, layer in zip(self.projects, self.resize_layers, self.intermediate_layer_idx):
            x = layer_outputs[layer][:, start:stop, patch_start_idx:]
            batch, frames = x.shape[:2]
            x = self.norm(x.reshape(batch * frames, -1, x.shape[-1]))
            x = x.permute(0, 2, 1).reshape(batch * frames, -1, grid_h, grid_w)
            features.append(resize(self._add_uv(project(x), aspect)))
        s = self.scratch
        l1, l2, l3, l4 = (getattr(s, f"layer{i}_rn")(f) for i, f in enumerate(features, start=1))
        out = s.refinenet4(l4, size=l3.shape[2:])
        out = s.refinenet3(out, l3, size=l2.shape[2:])
        out = s.refinenet2(out, l2, size=l1.shape[2:])
        out = s.refinenet1(out, l1)
        out = s.output_conv1(out)
        out = F.interpolate(out, size=(grid_h * self.patch_size, grid_w * self.patch_size),
                            mode="bilinear", align_corners=True)
        out = s.output_conv2(self._add_uv(out, aspect))
        values, conf = activate_output(out, self.activation)
        return (values.reshape(batch, frames, *values.shape[1:]),
                conf.reshape(batch, frames, *conf.shape[1:]))
