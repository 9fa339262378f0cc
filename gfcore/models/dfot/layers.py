"""Building blocks of the DFoT U-ViT, named so that their parameters carry the released
checkpoints' state_dict keys (see backbone.py for the whole network).

Residual blocks work on feature maps [N, C, h, w] with a per-pixel conditioning map; transformer
blocks on token sequences [B, T*h*w, C] with per-token conditioning. Both inject the
conditioning by FiLM (x * (1 + scale) + shift, scale first in the projection's output).
"""
from __future__ import annotations

import math
from typing import Tuple

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

GROUPS = 32  # GroupNorm groups of the residual blocks
NORM_EPS = 1e-6
ROPE_THETA = 10000.0


class RMSNorm(nn.Module):
    """Root-mean-square norm over the last dimension, computed in float32, then a learned gain."""

    def __init__(self, dim: int, eps: float = NORM_EPS):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.square().mean(dim=-1, keepdim=True) + self.eps)
        return normed.to(x.dtype) * self.weight


def group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(GROUPS, channels, eps=NORM_EPS, affine=True)


# ---------------------------------------------------------------------------------------------
# rotary position embedding over (frame, row, column)
# ---------------------------------------------------------------------------------------------

def rope_axis_dims(head_dim: int) -> Tuple[int, int, int]:
    """Channels of a head rotated by (frame, row, column) position.

    The head's head_dim / 2 rotation pairs are split in three; when they do not divide evenly,
    rows and columns get the same number (one more or one fewer than frames).
    """
    if head_dim % 2:
        raise ValueError(f"rotary embedding needs an even head dimension, got {head_dim}")
    pairs = head_dim // 2
    third, rest = divmod(pairs, 3)
    split = {0: (third, third, third), 1: (third + 1, third, third), 2: (third, third + 1, third + 1)}[rest]
    return tuple(2 * p for p in split)


def rope_angles(frames: int, height: int, width: int, head_dim: int, device=None) -> torch.Tensor:
    """[frames*height*width, head_dim] rotation angles, tokens in (frame, row, column) order.

    Each axis owns a contiguous block of channels (frames first); inside a block, channel pair
    (2i, 2i+1) turns by position * theta^(-2i/d) with d the block's width.
    """
    blocks = []
    for axis, (size, dim) in enumerate(zip((frames, height, width), rope_axis_dims(head_dim))):
        inv = ROPE_THETA ** -(torch.arange(0, dim, 2, device=device, dtype=torch.float32)[: dim // 2] / dim)
        angle = torch.arange(size, device=device, dtype=torch.float32)[:, None] * inv  # [size, dim/2]
        angle = angle.repeat_interleave(2, dim=-1)  # each angle for both channels of its pair
        shape = [1, 1, 1, dim]
        shape[axis] = size
        blocks.append(angle.view(shape).expand(frames, height, width, dim))
    return torch.cat(blocks, dim=-1).reshape(frames * height * width, head_dim)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate channel pairs (2i, 2i+1) of x [..., N, D] by the angles behind cos/sin [N, D]."""
    pairs = x.unflatten(-1, (-1, 2))
    rotated = torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)
    return x * cos + rotated * sin


# ---------------------------------------------------------------------------------------------
# blocks
# ---------------------------------------------------------------------------------------------

class FiLMNorm(nn.Module):
    """RMSNorm of tokens, then scale and shift projected from their conditioning."""

    def __init__(self, dim: int, emb_dim: int):
        super().__init__()
        self.emb_layer = nn.Linear(emb_dim, 2 * dim)
        self.norm = RMSNorm(dim)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        scale, shift = self.emb_layer(emb).chunk(2, dim=-1)
        return self.norm(x) * (1 + scale) + shift


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv, FiLM on the second GroupNorm from the conditioning map, SiLU-conv,
    residual. The last conv starts at zero."""

    def __init__(self, channels: int, emb_dim: int, dropout: float = 0.0):
        super().__init__()
        if dropout != 0.0:
            raise ValueError(f"ResBlock has no dropout; block_dropouts must be 0.0 at its levels, got {dropout}")
        self.emb_layer = nn.Conv2d(emb_dim, 2 * channels, kernel_size=1)
        self.in_layers = nn.Sequential(group_norm(channels), nn.SiLU(),
                                       nn.Conv2d(channels, channels, kernel_size=3, padding=1))
        self.out_norm = group_norm(channels)
        self.out_rest = nn.Sequential(nn.SiLU(), nn.Conv2d(channels, channels, kernel_size=3, padding=1))
        zero_(self.out_rest[1])

    def forward(self, x: torch.Tensor, emb: torch.Tensor, rope=None) -> torch.Tensor:
        scale, shift = self.emb_layer(emb).chunk(2, dim=1)
        h = self.out_norm(self.in_layers(x)) * (1 + scale) + shift
        return x + self.out_rest(h)


class TransformerBlock(nn.Module):
    """Parallel attention and MLP from one fused projection of the FiLM-normed tokens, with
    query/key RMSNorm and 3-D RoPE; full attention over all frames' tokens. Output layers start
    at zero."""

    def __init__(self, dim: int, emb_dim: int, heads: int, dropout: float = 0.0):
        super().__init__()
        if dim % heads:
            raise ValueError(f"channels {dim} not divisible by num_heads {heads}")
        self.heads = heads
        head_dim = dim // heads
        rope_axis_dims(head_dim)  # validates
        self.norm = FiLMNorm(dim, emb_dim)
        self.split = (3 * dim, 4 * dim)
        self.fused_attn_mlp_proj = nn.Linear(dim, sum(self.split))
        self.q_norm = RMSNorm(head_dim)
        self.k_norm = RMSNorm(head_dim)
        self.attn_out = nn.Linear(dim, dim)
        self.mlp_out = nn.Sequential(nn.SiLU(), nn.Dropout(dropout), nn.Linear(4 * dim, dim))
        zero_(self.attn_out)
        zero_(self.mlp_out[2])

    def forward(self, x: torch.Tensor, emb: torch.Tensor, rope: Tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        qkv, mlp = self.fused_attn_mlp_proj(self.norm(x, emb)).split(self.split, dim=-1)
        q, k, v = rearrange(qkv, "b n (three h d) -> three b h n d", three=3, h=self.heads)
        cos, sin = rope
        q = apply_rope(self.q_norm(q), cos, sin)
        k = apply_rope(self.k_norm(k), cos, sin)
        attn = rearrange(F.scaled_dot_product_attention(q, k, v), "b h n d -> b n (h d)")
        return x + self.attn_out(attn) + self.mlp_out(mlp)


class Downsample(nn.Module):
    """2x2 average pooling, then a 3x3 conv to the next level's channels."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.avg_pool2d(x, 2))


class Upsample(nn.Module):
    """A 3x3 conv to the finer level's channels, then nearest-neighbour 2x upsampling."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(self.conv(x), scale_factor=2, mode="nearest")


class ConvProj(nn.Module):
    """A module holding one (transposed) convolution as `proj` (the checkpoints' layout)."""

    def __init__(self, conv: nn.Module):
        super().__init__()
        self.proj = conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


def zero_(module: nn.Module) -> nn.Module:
    with torch.no_grad():
        for p in module.parameters():
            p.zero_()
    return module


# ---------------------------------------------------------------------------------------------
# conditioning embeddings
# ---------------------------------------------------------------------------------------------

NOISE_FEATURES = 256  # width of the noise-level features fed to the embedding MLP


class FourierFeatures(nn.Module):
    """sqrt(2) * cos(level * freqs + phases) with fixed random freqs and phases (buffers saved in
    the checkpoints), computed in float32."""

    def __init__(self, dim: int = NOISE_FEATURES):
        super().__init__()
        self.register_buffer("freqs", 2 * math.pi * torch.randn(dim))
        self.register_buffer("phases", 2 * math.pi * torch.rand(dim))

    def forward(self, levels: torch.Tensor) -> torch.Tensor:
        y = levels.float()[..., None] * self.freqs.float() + self.phases.float()
        return (y.cos() * math.sqrt(2)).to(levels.dtype)


class SinusoidalFeatures(nn.Module):
    """[cos, sin] of level * 10000^(-i / (dim/2)), i < dim/2 (no parameters)."""

    def __init__(self, dim: int = NOISE_FEATURES):
        super().__init__()
        self.dim = dim

    def forward(self, levels: torch.Tensor) -> torch.Tensor:
        half = self.dim // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=levels.device) / half)
        angles = levels.float()[..., None] * freqs
        return torch.cat([angles.cos(), angles.sin()], dim=-1)


class EmbeddingMLP(nn.Module):
    """Linear, SiLU, Linear."""

    def __init__(self, in_dim: int, dim: int):
        super().__init__()
        self.linear_1 = nn.Linear(in_dim, dim)
        self.act = nn.SiLU()
        self.linear_2 = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.act(self.linear_1(x)))


class NoiseLevelEmbedding(nn.Module):
    """Noise level (0.125 * logSNR for the continuous-time models) -> [..., emb_dim]."""

    def __init__(self, emb_dim: int, fourier: bool = True):
        super().__init__()
        self.timesteps = FourierFeatures() if fourier else SinusoidalFeatures()
        self.embedding = EmbeddingMLP(NOISE_FEATURES, emb_dim)

    def forward(self, levels: torch.Tensor) -> torch.Tensor:
        features = self.timesteps(levels)
        return self.embedding(features.to(self.embedding.linear_1.weight.dtype))


class PoseEmbedding(nn.Module):
    """Patch embedding of the per-pixel pose map; a whole sample's embedding (bias included) is
    zeroed where it is dropped."""

    def __init__(self, in_channels: int, emb_dim: int, patch_size: int, dropout: float):
        super().__init__()
        self.dropout = dropout
        self.patch_embedder = ConvProj(nn.Conv2d(in_channels, emb_dim, kernel_size=patch_size, stride=patch_size))

    def forward(self, cond: torch.Tensor, drop: torch.Tensor | None = None) -> torch.Tensor:
        """cond [B, T, C, H, W] -> [B, T, emb_dim, H/p, W/p]; drop: bool [B] (True: drop the pose).
        Without `drop`, a training module drops each sample's pose with probability `dropout`."""
        batch = cond.shape[0]
        emb = self.patch_embedder(cond.flatten(0, 1)).unflatten(0, (batch, -1))
        if drop is None and self.training and self.dropout > 0:
            drop = torch.rand(batch, device=emb.device) < self.dropout
        if drop is not None:
            emb = torch.where(drop.to(emb.device).view(batch, 1, 1, 1, 1), torch.zeros_like(emb), emb)
        return emb
