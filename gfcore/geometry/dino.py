"""DINOv2 ViT with register tokens: the patch embedding of the VGGT aggregator.

Keys (under `aggregator.patch_embed.`): cls_token, pos_embed, register_tokens, mask_token
(stored, unused), patch_embed.proj, blocks.N.*, norm.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from gfcore.geometry.layers import Block

# name -> (embed_dim, full depth, num_heads) of the released DINOv2 backbones
DINO_VARIANTS = {
    "dinov2_vits14_reg": (384, 12, 6),
    "dinov2_vitb14_reg": (768, 12, 12),
    "dinov2_vitl14_reg": (1024, 24, 16),
}


class PatchProjection(nn.Module):
    """Non-overlapping conv patchify (key `proj`), flattened to [N, h*w, C]."""

    def __init__(self, patch_size: int, embed_dim: int, in_chans: int = 3):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


def resize_pos_embed(pos_embed: torch.Tensor, grid_h: int, grid_w: int) -> torch.Tensor:
    """Resize a [1, 1 + M*M, C] table (cls first) to a grid_h x grid_w patch grid.

    Bicubic with antialiasing to an explicit target size, computed in float32 and cast back.
    The table is returned untouched when the grid already is the stored square M x M.
    """
    num_patches = pos_embed.shape[1] - 1
    side = int(math.sqrt(num_patches))
    if side * side != num_patches:
        raise ValueError(f"pos_embed holds {num_patches} patch positions, not a square grid")
    if grid_h == side and grid_w == side:
        return pos_embed
    table = pos_embed.float()
    dim = table.shape[-1]
    grid = table[:, 1:].reshape(1, side, side, dim).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=(grid_h, grid_w), mode="bicubic", antialias=True)
    grid = grid.permute(0, 2, 3, 1).reshape(1, grid_h * grid_w, dim)
    return torch.cat([table[:, :1], grid], dim=1).to(pos_embed.dtype)


class DinoV2(nn.Module):
    """DINOv2 encoder returning the final-normalised patch tokens [N, h*w, C]."""

    def __init__(self, img_size: int = 518, patch_size: int = 14, embed_dim: int = 1024,
                 depth: int = 24, num_heads: int = 16, mlp_ratio: float = 4.0,
                 num_register_tokens: int = 4, init_values: float = 1.0):
        super().__init__()
        if img_size % patch_size != 0:
            raise ValueError(f"img_size={img_size} must be a multiple of patch_size={patch_size}")
        self.patch_size = patch_size
        self.num_register_tokens = num_register_tokens
        grid = img_size // patch_size
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + grid * grid, embed_dim))
        self.register_tokens = nn.Parameter(torch.zeros(1, num_register_tokens, embed_dim))
        self.mask_token = nn.Parameter(torch.zeros(1, embed_dim), requires_grad=False)  # unused
        self.patch_embed = PatchProjection(patch_size, embed_dim)
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_ratio, init_values=init_values, norm_eps=1e-6)
            for _ in range(depth))
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        nn.init.normal_(self.register_tokens, std=1e-6)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images [N, 3, H, W] (already ImageNet-normalised) -> patch tokens [N, h*w, C]."""
        n, _, height, width = images.shape
        x = self.patch_embed(images)
        x = torch.cat([self.cls_token.expand(n, -1, -1), x], dim=1)
        x = x + resize_pos_embed(self.pos_embed, height // self.patch_size, width // self.patch_size)
        # registers go right after cls and carry no positional embedding
        x = torch.cat([x[:, :1], self.register_tokens.expand(n, -1, -1), x[:, 1:]], dim=1)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)[:, 1 + self.num_register_tokens:]
