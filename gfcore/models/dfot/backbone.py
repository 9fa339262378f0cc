"""UViT3DPose: the pose-conditioned residual U-ViT of Diffusion Forcing Transformer (DFoT), as
used by Geometry Forcing on RealEstate10K, loadable from the released checkpoints.

Layout (SiD2-style residual U-ViT). Frames are patchified by a strided conv. Level i works at
1/2^i of the patch grid with channels[i]; levels whose block type is "ResBlock" run residual
conv blocks on [B*T, C, h, w], "TransformerBlock" levels run full 3-D attention over all T*h*w
tokens of a clip with 3-D RoPE. Going down, each level runs its blocks, keeps the result, then
average-pools and convolves to the next level; the last level runs the mid blocks. Going up,
the downsampled feature is subtracted, the result is convolved, upsampled and the kept feature
added, then the level's up blocks run. A transposed conv unpatchifies.

Conditioning: the noise-level embedding of each frame plus the patch-embedded 180-channel ray
map (ray_encoding) gives a per-pixel conditioning map at patch resolution; level i uses it
average-pooled by 2^i, through FiLM in every block.
"""
from __future__ import annotations

from typing import List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from gfcore.models.checkpointing import checkpoint_mode, recompute
from gfcore.models.dfot.layers import (
    ConvProj, Downsample, NoiseLevelEmbedding, PoseEmbedding, ResBlock, TransformerBlock, Upsample,
    rope_angles, zero_,
)

BLOCK_TYPES = ("ResBlock", "TransformerBlock")
POSE_CHANNELS = 180  # ray_encoding: 2 x 3 coordinates x 15 frequencies x (sin, cos)

# The RE10K backbone of DFoT / Geometry Forcing (their u_vit3d_pose.yaml with the
# realestate10k_video_generation overrides and @diffusion/continuous), 256x256, 16 frames.
RE10K = dict(channels=(128, 256, 576, 1152), emb_channels=1024, patch_size=2,
             block_types=("ResBlock", "ResBlock", "TransformerBlock", "TransformerBlock"),
             block_dropouts=(0.0, 0.0, 0.1, 0.1), num_updown_blocks=(3, 3, 6), num_mid_blocks=20,
             num_heads=9, external_cond_dropout=0.1, resolution=256, frames=16,
             use_fourier_noise_embedding=True, use_checkpointing=(False, False, False, True))


class UViT3DPose(nn.Module):
    """DFoT's pose-conditioned U-ViT (parameter names equal the released checkpoints' keys after
    the prefix `diffusion_model.model.`; load them with load_dfot_checkpoint).

    Args (the authors' backbone config fields):
        channels: channels per level; the last level is the middle.
        emb_channels: width of the conditioning embedding.
        patch_size: patch size of the input/output convs and of the pose embedding.
        block_types: per level, "ResBlock" or "TransformerBlock".
        block_dropouts: per level; dropout inside the transformer MLP (must be 0 for ResBlock).
        num_updown_blocks: blocks per level going down (and again going up), levels 0..L-2.
        num_mid_blocks: blocks of the last level.
        num_heads: attention heads of the transformer levels.
        external_cond_dropout: probability of dropping a sample's pose in training.
        resolution: frame height = width.
        frames: clip length T (the model only takes clips of exactly this length).
        in_channels: image channels (3).
        external_cond_dim: pose map channels (180).
        use_fourier_noise_embedding: Fourier (True, continuous-time models such as RE10K) or
            sinusoidal features of the noise level.
        use_checkpointing: per level, recompute the blocks in the backward (activation
            checkpointing) when gradients are on.
    """

    def __init__(self, channels: Sequence[int], emb_channels: int, patch_size: int, block_types: Sequence[str],
                 block_dropouts: Sequence[float], num_updown_blocks: Sequence[int], num_mid_blocks: int,
                 num_heads: int, external_cond_dropout: float, resolution: int, frames: int, *,
                 in_channels: int = 3, external_cond_dim: int = POSE_CHANNELS,
                 use_fourier_noise_embedding: bool = True,
                 use_checkpointing: Optional[Sequence[bool]] = None):
        super().__init__()
        channels, block_types = [int(c) for c in channels], list(block_types)
        block_dropouts, num_updown_blocks = [float(d) for d in block_dropouts], [int(n) for n in num_updown_blocks]
        levels = len(channels)
        use_checkpointing = [False] * levels if use_checkpointing is None else [bool(c) for c in use_checkpointing]
        for name, value in (("block_types", block_types), ("block_dropouts", block_dropouts),
                            ("use_checkpointing", use_checkpointing)):
            if len(value) != levels:
                raise ValueError(f"{name} needs one entry per level ({levels}), got {value}")
        if len(num_updown_blocks) != levels - 1:
            raise ValueError(f"num_updown_blocks needs {levels - 1} entries (all levels but the last), "
                             f"got {num_updown_blocks}")
        unknown = [t for t in block_types if t not in BLOCK_TYPES]
        if unknown:
            raise ValueError(f"block_types {unknown} not supported; supported: {list(BLOCK_TYPES)}")
        if resolution % (patch_size * 2 ** (levels - 1)):
            raise ValueError(f"resolution {resolution} must be divisible by patch_size * 2^(levels - 1) = "
                             f"{patch_size * 2 ** (levels - 1)}")
        self.channels, self.block_types, self.num_heads = channels, block_types, int(num_heads)
        self.patch_size, self.resolution, self.frames = int(patch_size), int(resolution), int(frames)
        self.emb_channels, self.external_cond_dim = int(emb_channels), int(external_cond_dim)
        self.use_checkpointing = use_checkpointing
        self.is_transformer = [t == "TransformerBlock" for t in block_types]

        # registration order = the checkpoints' key order (and the order of their EMA list)
        self.noise_level_pos_embedding = NoiseLevelEmbedding(emb_channels, fourier=use_fourier_noise_embedding)
        self.external_cond_embedding = PoseEmbedding(external_cond_dim, emb_channels, patch_size,
                                                     external_cond_dropout)
        self.embed_input = ConvProj(nn.Conv2d(in_channels, channels[0], kernel_size=patch_size, stride=patch_size))
        self.project_output = ConvProj(zero_(nn.ConvTranspose2d(channels[0], in_channels, kernel_size=patch_size,
                                                                stride=patch_size)))

        def blocks(level: int, count: int) -> List[nn.Module]:
            ch, dropout = channels[level], block_dropouts[level]
            if self.is_transformer[level]:
                return [TransformerBlock(ch, emb_channels, num_heads, dropout) for _ in range(count)]
            return [ResBlock(ch, emb_channels, dropout) for _ in range(count)]

        # (the checkpoints list up_blocks before mid_blocks)
        self.down_blocks = nn.ModuleList(
            nn.ModuleList(blocks(i, n) + [Downsample(channels[i], channels[i + 1])])
            for i, n in enumerate(num_updown_blocks))
        self.up_blocks = nn.ModuleList()
        self.mid_blocks = nn.ModuleList(blocks(levels - 1, int(num_mid_blocks)))
        self.up_blocks.extend(
            nn.ModuleList([Upsample(channels[i + 1], channels[i])] + blocks(i, num_updown_blocks[i]))
            for i in reversed(range(levels - 1)))

    def shard_units(self) -> List[nn.Module]:
        """The blocks FSDP shards one by one (each ResBlock / TransformerBlock / resampler of every
        level), so that only one block's full weights are gathered at a time; the rest (embeddings,
        input and output projections) stays in the root unit."""
        return [block for level in (*self.down_blocks, self.mid_blocks, *self.up_blocks) for block in level]

    # -----------------------------------------------------------------------------------------
    @classmethod
    def re10k(cls, **overrides) -> "UViT3DPose":
        """The RealEstate10K model (458,818,051 parameters); build it under `torch.device("meta")`
        to get the structure without allocating."""
        return cls(**{**RE10K, **overrides})

    @classmethod
    def from_config(cls, cfg: Mapping, resolution: int, frames: int) -> "UViT3DPose":
        """From the authors' backbone config node (name u_vit3d_pose; pos_emb_type must be rope)."""
        cfg = dict(cfg)
        if cfg.get("pos_emb_type", "rope") != "rope":
            raise ValueError(f"pos_emb_type {cfg['pos_emb_type']!r} not supported (only 'rope')")
        cond_dim = (cfg.get("conditioning") or {}).get("dim") or POSE_CHANNELS
        keys = ("channels", "emb_channels", "patch_size", "block_types", "block_dropouts", "num_updown_blocks",
                "num_mid_blocks", "num_heads", "external_cond_dropout")
        return cls(**{k: cfg[k] for k in keys}, resolution=resolution, frames=frames, external_cond_dim=cond_dim,
                   use_fourier_noise_embedding=bool(cfg.get("use_fourier_noise_embedding", False)),
                   use_checkpointing=cfg.get("use_checkpointing"))

    @property
    def num_levels(self) -> int:
        return len(self.channels)

    def checkpoint_levels(self, mode: str) -> List[bool]:
        """use_checkpointing with train.activation_checkpointing added on top (gfcore.models.checkpointing):
        none keeps the model's own levels (dfot_re10k: the mid level, as DFoT trains), selective also
        recomputes every TransformerBlock level (a TransformerBlock is one fused attention + MLP, so
        its attention and MLP are the whole block; the conv ResBlock levels keep their activations),
        full recomputes every level."""
        mode = checkpoint_mode(mode)
        if mode == "full":
            return [True] * self.num_levels
        if mode == "selective":
            return [own or attention for own, attention in zip(self.use_checkpointing, self.is_transformer)]
        return list(self.use_checkpointing)

    def level_blocks(self, level: int, up: bool) -> Sequence[nn.Module]:
        if level == self.num_levels - 1:
            return self.mid_blocks
        if up:
            return self.up_blocks[self.num_levels - 2 - level][1:]
        return self.down_blocks[level][:-1]

    def _run_level(self, x: torch.Tensor, emb: torch.Tensor, level: int, up: bool) -> torch.Tensor:
        """x [B*T, C, h, w], emb [B*T, E, h, w] -> [B*T, C, h, w] through the level's blocks."""
        h, w = x.shape[-2:]
        rope = None
        if self.is_transformer[level]:
            x, emb = (rearrange(y, "(b t) c h w -> b (t h w) c", t=self.frames) for y in (x, emb))
            angles = rope_angles(self.frames, h, w, self.channels[level] // self.num_heads, device=x.device)
            rope = (angles.cos().to(x.dtype), angles.sin().to(x.dtype))
        checkpointed = self.use_checkpointing[level] and torch.is_grad_enabled()
        for block in self.level_blocks(level, up):
            if checkpointed:
                x = recompute(block, x, emb, rope)
            else:
                x = block(x, emb, rope)
        if self.is_transformer[level]:
            x = rearrange(x, "b (t h w) c -> (b t) c h w", t=self.frames, h=h, w=w)
        return x

    def forward(self, x: torch.Tensor, noise_levels: torch.Tensor, external_cond: torch.Tensor,
                external_cond_mask: Optional[torch.Tensor] = None, return_latents: bool = False
                ) -> Union[torch.Tensor, Tuple[torch.Tensor, List[torch.Tensor]]]:
        """The model output (v for the released models) [B, T, 3, H, W].

        x: normalised frames [B, T, 3, H, W] (T = frames, H = W = resolution).
        noise_levels: [B, T], the noise level per frame (0.125 * logSNR for continuous-time models).
        external_cond: [B, T, 180, H, W] ray map (ray_encoding of the poses).
        external_cond_mask: bool [B]; True drops that sample's pose (classifier-free guidance).
        return_latents: also return the level features [B, T, C_i, h_i, w_i]: after each down
            level's blocks (before its downsampling, levels 0..L-2), after the mid blocks, after
            each up level's blocks (levels L-2..0); 2L - 1 tensors.
        """
        batch, frames = x.shape[:2]
        size = (self.frames, x.shape[2], self.resolution, self.resolution)
        if tuple(x.shape[1:]) != size:
            raise ValueError(f"x must be [B, {self.frames}, C, {self.resolution}, {self.resolution}] "
                             f"(frames, resolution of this model), got {list(x.shape)}")
        if tuple(noise_levels.shape) != (batch, frames):
            raise ValueError(f"noise_levels must be [B, T] = [{batch}, {frames}], got {list(noise_levels.shape)}")
        if external_cond is None or tuple(external_cond.shape) != (batch, frames, self.external_cond_dim,
                                                                   *x.shape[-2:]):
            got = None if external_cond is None else list(external_cond.shape)
            raise ValueError(f"external_cond must be [B, T, {self.external_cond_dim}, H, W] = "
                             f"{[batch, frames, self.external_cond_dim, *x.shape[-2:]]}, got {got}")
        if external_cond_mask is not None and tuple(external_cond_mask.shape) != (batch,):
            raise ValueError(f"external_cond_mask must be bool [B] = [{batch}], got {list(external_cond_mask.shape)}")

        h = self.embed_input(x.flatten(0, 1))
        cond = self.external_cond_embedding(external_cond, external_cond_mask)
        emb = (self.noise_level_pos_embedding(noise_levels)[..., None, None] + cond).flatten(0, 1)
        embs = [emb if i == 0 else F.avg_pool2d(emb, 2 ** i) for i in range(self.num_levels)]

        latents, kept, pooled = [], [], []
        for level in range(self.num_levels - 1):
            h = self._run_level(h, embs[level], level, up=False)
            kept.append(h)
            latents.append(h)
            h = self.down_blocks[level][-1](h)
            pooled.append(h)
        h = self._run_level(h, embs[-1], self.num_levels - 1, up=False)
        latents.append(h)
        for level in reversed(range(self.num_levels - 1)):
            h = self.up_blocks[self.num_levels - 2 - level][0](h - pooled.pop()) + kept.pop()
            h = self._run_level(h, embs[level], level, up=True)
            latents.append(h)
        out = self.project_output(h).unflatten(0, (batch, frames))
        if not return_latents:
            return out
        return out, [latent.unflatten(0, (batch, frames)) for latent in latents]
