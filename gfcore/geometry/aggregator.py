"""VGGT's alternating-attention aggregator: DINOv2 patches, then frame/global blocks with 2-D RoPE."""
from __future__ import annotations

from typing import List, Sequence, Tuple

import torch
from torch import nn

from gfcore.geometry.dino import DINO_VARIANTS, DinoV2
from gfcore.geometry.layers import Block
from gfcore.geometry.rope import RoPE2D, patch_positions

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def first_frame_slots(slots: torch.Tensor, batch: int, frames: int) -> torch.Tensor:
    """[1, 2, n, C] learned tokens -> [B*S, n, C]: slot 0 for frame 0, slot 1 for every later frame."""
    first = slots[:, :1].expand(batch, 1, *slots.shape[2:])
    rest = slots[:, 1:].expand(batch, frames - 1, *slots.shape[2:])
    return torch.cat([first, rest], dim=1).reshape(batch * frames, *slots.shape[2:])


class Aggregator(nn.Module):
    """Returns, for each depth i, [frame_out_i, global_out_i] concatenated: [B, S, P, 2C].

    Per frame the P tokens are [camera, registers, patches]; `patch_start_idx` = 1 + registers.
    """

    def __init__(self, img_size: int = 518, patch_size: int = 14, embed_dim: int = 1024,
                 depth: int = 24, num_heads: int = 16, mlp_ratio: float = 4.0,
                 num_register_tokens: int = 4, qkv_bias: bool = True, proj_bias: bool = True,
                 ffn_bias: bool = True, patch_embed: str = "dinov2_vitl14_reg",
                 aa_order: Sequence[str] = ("frame", "global"), aa_block_size: int = 1,
                 qk_norm: bool = True, rope_freq: float = 100, init_values: float = 0.01,
                 dino_depth: int | None = None):
        super().__init__()
        if patch_embed not in DINO_VARIANTS:
            raise ValueError(f"patch_embed={patch_embed!r} is not one of {sorted(DINO_VARIANTS)}")
        dino_dim, dino_full_depth, dino_heads = DINO_VARIANTS[patch_embed]
        if dino_dim != embed_dim:
            raise ValueError(f"patch_embed={patch_embed!r} has width {dino_dim}, but embed_dim={embed_dim}")
        if list(aa_order) != ["frame", "global"]:
            raise ValueError(f"aa_order={list(aa_order)!r}: only ['frame', 'global'] is supported")
        if aa_block_size != 1:
            raise ValueError(f"aa_block_size={aa_block_size}: only 1 is supported (as in VGGT-1B)")
        self.patch_size = patch_size
        self.depth = depth
        self.num_register_tokens = num_register_tokens
        self.patch_start_idx = 1 + num_register_tokens

        # parameter creation order mirrors the official state_dict order
        self.camera_token = nn.Parameter(torch.randn(1, 2, 1, embed_dim) * 1e-6)
        self.register_token = nn.Parameter(torch.randn(1, 2, num_register_tokens, embed_dim) * 1e-6)
        self.patch_embed = DinoV2(img_size, patch_size, embed_dim,
                                  dino_full_depth if dino_depth is None else dino_depth,
                                  dino_heads, 4.0, num_register_tokens, init_values=1.0)
        self.rope = RoPE2D(rope_freq) if rope_freq and rope_freq > 0 else None

        def make_block() -> Block:
            return Block(embed_dim, num_heads, mlp_ratio, init_values, 1e-5, qkv_bias, proj_bias,
                         ffn_bias, qk_norm, self.rope)

        self.frame_blocks = nn.ModuleList(make_block() for _ in range(depth))
        self.global_blocks = nn.ModuleList(make_block() for _ in range(depth))
        self.reset_buffers()

    def reset_buffers(self, device: torch.device | str | None = None) -> None:
        """(Re)create the ImageNet normalisation buffers (non-persistent: not in the state_dict),
        e.g. after building on the meta device and loading weights with assign=True."""
        self.register_buffer("image_mean", torch.tensor(IMAGENET_MEAN, device=device).view(1, 1, 3, 1, 1),
                             persistent=False)
        self.register_buffer("image_std", torch.tensor(IMAGENET_STD, device=device).view(1, 1, 3, 1, 1),
                             persistent=False)

    def forward(self, images: torch.Tensor, num_layers: int | None = None) -> Tuple[List[torch.Tensor], int]:
        """images [B, S, 3, H, W] in [0, 1], H and W multiples of the patch size.

        `num_layers` stops after that many frame/global pairs (a teacher that needs only early
        layers skips the rest); None runs all `depth` of them.
        """
        if num_layers is None:
            num_layers = self.depth
        if not 1 <= num_layers <= self.depth:
            raise ValueError(f"num_layers={num_layers} must lie in [1, {self.depth}]")
        if images.dim() != 5 or images.shape[2] != 3:
            raise ValueError(f"images must be [B, S, 3, H, W], got {tuple(images.shape)}")
        batch, frames, _, height, width = images.shape
        if height % self.patch_size or width % self.patch_size:
            raise ValueError(f"images: H={height} and W={width} must be multiples of {self.patch_size}")
        images = (images - self.image_mean) / self.image_std
        patches = self.patch_embed(images.reshape(batch * frames, 3, height, width))
        tokens = torch.cat([
            first_frame_slots(self.camera_token, batch, frames).to(patches.dtype),
            first_frame_slots(self.register_token, batch, frames).to(patches.dtype),
            patches,
        ], dim=1)
        per_frame = tokens.shape[1]
        channels = tokens.shape[2]
        pos = patch_positions(batch * frames, height // self.patch_size, width // self.patch_size,
                              self.patch_start_idx, device=images.device)
        global_pos = pos.reshape(batch, frames * per_frame, 2)

        outputs = []
        for frame_block, global_block in zip(self.frame_blocks[:num_layers], self.global_blocks[:num_layers]):
            tokens = frame_block(tokens.reshape(batch * frames, per_frame, channels), pos)
            frame_out = tokens.reshape(batch, frames, per_frame, channels)
            tokens = global_block(tokens.reshape(batch, frames * per_frame, channels), global_pos)
            global_out = tokens.reshape(batch, frames, per_frame, channels)
            outputs.append(torch.cat([frame_out, global_out], dim=-1))
        return outputs, self.patch_start_idx
