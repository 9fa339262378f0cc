"""DINOv2 teacher (REPA's): a DINOv2 ViT with the official state_dict keys, and its feature extractor.

The ViT follows facebookresearch/dinov2 (DinoVisionTransformer as built by the torch.hub
entries dinov2_vit{s,b,l}14[_reg], img_size=518): same module names, shapes and forward
(patchify, prepend cls, add the bicubically interpolated position table with DINOv2's
interpolate_offset=0.1 and no antialias, insert the register tokens after cls, pre-norm blocks
with LayerScale, final LayerNorm). Official keys of ViT-B/14 (12 blocks, width 768):

    cls_token [1, 1, 768]            pos_embed [1, 1370, 768] (1 + 37 * 37)
    register_tokens [1, 4, 768]      (only the *_reg variants)
    mask_token [1, 768]              (stored, unused for features)
    patch_embed.proj.weight [768, 3, 14, 14], patch_embed.proj.bias [768]
    blocks.N.norm1.weight/bias [768]
    blocks.N.attn.qkv.weight [2304, 768], blocks.N.attn.qkv.bias [2304]
    blocks.N.attn.proj.weight [768, 768], blocks.N.attn.proj.bias [768]
    blocks.N.ls1.gamma [768]
    blocks.N.norm2.weight/bias [768]
    blocks.N.mlp.fc1.weight [3072, 768], blocks.N.mlp.fc1.bias [3072]
    blocks.N.mlp.fc2.weight [768, 3072], blocks.N.mlp.fc2.bias [768]
    blocks.N.ls2.gamma [768]
    norm.weight/bias [768]

(175 tensors; 176 with register_tokens.) Weights come from a local file only: the
official hub .pth (e.g. dinov2_vitb14_pretrain.pth) or .safetensors; loading is key-exact and a
mismatch raises CheckpointError listing missing, unexpected and wrongly shaped keys.
ViT-g/14 (SwiGLU feed-forward) is not implemented.
"""
from __future__ import annotations

import os
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from gfcore._extension import warn_once
from gfcore.geometry.checkpoint import CheckpointError, load_state_dict_strict, read_state_dict
from gfcore.geometry.dino import PatchProjection
from gfcore.geometry.layers import Block
from gfcore.geometry.teacher import resample_grid
from gfcore.nvtx import nvtx_range

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# torch.hub name -> DinoVisionTransformer keyword arguments (img_size 518, patch 14, layerscale 1.0)
DINOV2_CONFIGS: Dict[str, Dict] = {
    "dinov2_vits14": dict(embed_dim=384, depth=12, num_heads=6, num_register_tokens=0),
    "dinov2_vitb14": dict(embed_dim=768, depth=12, num_heads=12, num_register_tokens=0),
    "dinov2_vitl14": dict(embed_dim=1024, depth=24, num_heads=16, num_register_tokens=0),
    "dinov2_vits14_reg": dict(embed_dim=384, depth=12, num_heads=6, num_register_tokens=4),
    "dinov2_vitb14_reg": dict(embed_dim=768, depth=12, num_heads=12, num_register_tokens=4),
    "dinov2_vitl14_reg": dict(embed_dim=1024, depth=24, num_heads=16, num_register_tokens=4),
}
_UNSUPPORTED = {"dinov2_vitg14", "dinov2_vitg14_reg"}


def dinov2_config(variant: str = "dinov2_vitb14", **overrides) -> Dict:
    """Keyword arguments of DINOv2ViT for a released variant, with `overrides` on top (e.g. depth=2
    for a small random test model)."""
    if variant in _UNSUPPORTED:
        raise ValueError(f"{variant}: ViT-g/14 uses a SwiGLU feed-forward, which gfcore does not implement")
    if variant not in DINOV2_CONFIGS:
        raise ValueError(f"unknown DINOv2 variant {variant!r}; known: {sorted(DINOV2_CONFIGS)}")
    unknown = set(overrides) - {"img_size", "patch_size", "embed_dim", "depth", "num_heads", "mlp_ratio",
                                "num_register_tokens", "init_values", "interpolate_offset"}
    if unknown:
        raise ValueError(f"unknown DINOv2 config keys {sorted(unknown)}")
    return {**DINOV2_CONFIGS[variant], **overrides}


def official_state_dict_shapes(embed_dim: int = 768, depth: int = 12, num_register_tokens: int = 0,
                               img_size: int = 518, patch_size: int = 14, mlp_ratio: float = 4.0) -> Dict[str, Tuple]:
    """Key -> shape of the official DINOv2 backbone state_dict, written from its known structure
    (for checks without the file; ViT-B/14 by default)."""
    d, hidden, grid = embed_dim, int(embed_dim * mlp_ratio), img_size // patch_size
    shapes = {"cls_token": (1, 1, d), "pos_embed": (1, 1 + grid * grid, d)}
    if num_register_tokens:
        shapes["register_tokens"] = (1, num_register_tokens, d)
    shapes.update({"mask_token": (1, d), "patch_embed.proj.weight": (d, 3, patch_size, patch_size),
                   "patch_embed.proj.bias": (d,)})
    for n in range(depth):
        b = f"blocks.{n}."
        shapes.update({b + "norm1.weight": (d,), b + "norm1.bias": (d,),
                       b + "attn.qkv.weight": (3 * d, d), b + "attn.qkv.bias": (3 * d,),
                       b + "attn.proj.weight": (d, d), b + "attn.proj.bias": (d,), b + "ls1.gamma": (d,),
                       b + "norm2.weight": (d,), b + "norm2.bias": (d,),
                       b + "mlp.fc1.weight": (hidden, d), b + "mlp.fc1.bias": (hidden,),
                       b + "mlp.fc2.weight": (d, hidden), b + "mlp.fc2.bias": (d,), b + "ls2.gamma": (d,)})
    shapes.update({"norm.weight": (d,), "norm.bias": (d,)})
    return shapes


def interpolate_pos_embed(pos_embed: torch.Tensor, grid_h: int, grid_w: int, offset: float = 0.1) -> torch.Tensor:
    """DINOv2's interpolate_pos_encoding: the [1, 1 + M*M, C] table (cls first) for a grid_h x grid_w
    patch grid; bicubic, no antialias, scale factor (g + offset) / M (offset 0: explicit size),
    in float32, returned in the table's dtype. The stored table is returned for the stored square grid."""
    num_patches = pos_embed.shape[1] - 1
    side = int(round(num_patches ** 0.5))
    if side * side != num_patches:
        raise ValueError(f"pos_embed holds {num_patches} patch positions, not a square grid")
    if grid_h == side and grid_w == side:
        return pos_embed
    table = pos_embed.float()
    dim = table.shape[-1]
    grid = table[:, 1:].reshape(1, side, side, dim).permute(0, 3, 1, 2)
    if offset:
        kwargs = {"scale_factor": ((grid_h + offset) / side, (grid_w + offset) / side)}
    else:
        kwargs = {"size": (grid_h, grid_w)}
    grid = F.interpolate(grid, mode="bicubic", antialias=False, **kwargs)
    if tuple(grid.shape[-2:]) != (grid_h, grid_w):
        raise ValueError(f"pos_embed interpolation gave {tuple(grid.shape[-2:])}, wanted {(grid_h, grid_w)}")
    grid = grid.permute(0, 2, 3, 1).reshape(1, grid_h * grid_w, dim)
    return torch.cat([table[:, :1], grid], dim=1).to(pos_embed.dtype)


class DINOv2ViT(nn.Module):
    """DINOv2 ViT backbone with the official parameter names (see the module docstring).

    forward_layers(images, layers, norm) -> the patch tokens [N, h, w, C] after each chosen block
    (final LayerNorm applied when norm=True, as DINOv2's get_intermediate_layers(norm=True);
    for the last block that is forward_features()["x_norm_patchtokens"], REPA's target).
    """

    def __init__(self, img_size: int = 518, patch_size: int = 14, embed_dim: int = 768, depth: int = 12,
                 num_heads: int = 12, mlp_ratio: float = 4.0, num_register_tokens: int = 0,
                 init_values: float = 1.0, interpolate_offset: float = 0.1):
        super().__init__()
        if img_size % patch_size:
            raise ValueError(f"img_size={img_size} must be a multiple of patch_size={patch_size}")
        self.patch_size, self.embed_dim, self.depth = patch_size, embed_dim, depth
        self.num_register_tokens = num_register_tokens
        self.interpolate_offset = interpolate_offset
        grid = img_size // patch_size
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + grid * grid, embed_dim))
        if num_register_tokens:
            self.register_tokens = nn.Parameter(torch.zeros(1, num_register_tokens, embed_dim))
        else:
            self.register_tokens = None
        self.mask_token = nn.Parameter(torch.zeros(1, embed_dim))
        self.patch_embed = PatchProjection(patch_size, embed_dim)
        self.blocks = nn.ModuleList(Block(embed_dim, num_heads, mlp_ratio, init_values=init_values, norm_eps=1e-6)
                                    for _ in range(depth))
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        if not any(p.is_meta for p in self.parameters()):
            nn.init.trunc_normal_(self.pos_embed, std=0.02)
            nn.init.normal_(self.cls_token, std=1e-6)
            if self.register_tokens is not None:
                nn.init.normal_(self.register_tokens, std=1e-6)

    def prepare_tokens(self, images: torch.Tensor) -> torch.Tensor:
        n, _, height, width = images.shape
        if height % self.patch_size or width % self.patch_size:
            raise ValueError(f"image size {height}x{width} is not a multiple of the patch size {self.patch_size}")
        x = self.patch_embed(images)
        x = torch.cat([self.cls_token.expand(n, -1, -1), x], dim=1)
        x = x + interpolate_pos_embed(self.pos_embed, height // self.patch_size, width // self.patch_size,
                                      self.interpolate_offset).to(x.dtype)
        if self.register_tokens is not None:
            x = torch.cat([x[:, :1], self.register_tokens.expand(n, -1, -1), x[:, 1:]], dim=1)
        return x

    def forward_layers(self, images: torch.Tensor, layers: Sequence[int], norm: bool = True) -> List[torch.Tensor]:
        """images [N, 3, H, W] (ImageNet-normalised) -> [patch tokens [N, h, w, C] of each layer in `layers`]."""
        grid = (images.shape[-2] // self.patch_size, images.shape[-1] // self.patch_size)
        wanted = {i % self.depth for i in layers}
        x = self.prepare_tokens(images)
        outputs = {}
        for i, block in enumerate(self.blocks[:max(wanted) + 1]):
            x = block(x)
            if i in wanted:
                outputs[i] = x
        start = 1 + self.num_register_tokens
        result = []
        for i in layers:
            tokens = outputs[i % self.depth]
            tokens = self.norm(tokens) if norm else tokens
            result.append(tokens[:, start:].reshape(tokens.shape[0], *grid, tokens.shape[-1]))
        return result

    def forward_features(self, images: torch.Tensor) -> Dict[str, torch.Tensor]:
        """As DINOv2: x_norm_clstoken [N, C], x_norm_regtokens [N, R, C], x_norm_patchtokens [N, h*w, C]."""
        x = self.prepare_tokens(images)
        for block in self.blocks:
            x = block(x)
        x = self.norm(x)
        start = 1 + self.num_register_tokens
        return {"x_norm_clstoken": x[:, 0], "x_norm_regtokens": x[:, 1:start], "x_norm_patchtokens": x[:, start:]}


def load_dinov2_checkpoint(model: DINOv2ViT, path: str | os.PathLike, assign: bool = False) -> DINOv2ViT:
    """Key-exact load of an official DINOv2 backbone state_dict from a local file (CheckpointError on mismatch)."""
    state = read_state_dict(path)
    if any(k.startswith("backbone.") for k in state) and not any(k == "cls_token" for k in state):
        raise CheckpointError(f"checkpoint {str(path)!r} holds 'backbone.*' keys (a DINOv2 training checkpoint); "
                              "pass the backbone state_dict with the official hub keys (cls_token, pos_embed, ...)")
    return load_state_dict_strict(model, state, source=f"checkpoint {str(path)!r}", assign=assign)


class DINOv2Teacher(nn.Module):
    """Frozen DINOv2 features for REPA / Geometry Forcing, implementing the teacher protocol.

    teacher(frames [B, T, 3, H, W] in [0, 1], grid=(h, w)) -> [B, T, L, h, w, C]: each frame on
    its own (DINOv2 is an image model), resized to image_size x image_size (bicubic, no
    antialias, as REPA: 224 for 256 px images), ImageNet-normalised; the patch tokens of the
    chosen `layers` (block indices, negative from the end; final LayerNorm applied when norm),
    bilinearly resampled to `grid`. frames_per_call frames go through the ViT at once.

    checkpoint: local official backbone weights; None gives random weights (tests, benchmarks).
    variant: a torch.hub name (dinov2_vitb14 is REPA's); config: overrides of its sizes.
    dtype: autocast dtype (weights stay float32); out_dtype defaults to dtype.
    """

    name = "dinov2"
    label = "DINOv2 teacher"
    requires: Tuple[str, ...] = ()

    def __init__(self, checkpoint: Optional[str | os.PathLike] = None, variant: str = "dinov2_vitb14",
                 layers: Sequence[int] = (-1,), norm: bool = True, dtype: torch.dtype = torch.bfloat16,
                 frames_per_call: int = 64, image_size: int = 224, config: Optional[Dict] = None,
                 device: torch.device | str | None = None, out_dtype: Optional[torch.dtype] = None,
                 model: Optional[DINOv2ViT] = None):
        super().__init__()
        if frames_per_call < 1:
            raise ValueError(f"frames_per_call={frames_per_call} must be >= 1")
        if dtype not in (torch.float32, torch.bfloat16, torch.float16):
            raise ValueError(f"dtype={dtype} must be float32, bfloat16 or float16")
        if model is None:
            kwargs = dinov2_config(variant, **dict(config or {}))
            if checkpoint is None:
                warn_once("DINOv2Teacher: no checkpoint given, using random weights")
                model = DINOv2ViT(**kwargs)
            else:
                with torch.device("meta"):
                    model = DINOv2ViT(**kwargs)
                load_dinov2_checkpoint(model, checkpoint, assign=True)
        elif checkpoint is not None:
            load_dinov2_checkpoint(model, checkpoint)
        if image_size % model.patch_size:
            raise ValueError(f"image_size={image_size} must be a multiple of the patch size {model.patch_size}")
        self.vit = model.to(device) if device is not None else model
        self.vit.eval().requires_grad_(False)
        layers = [int(i) for i in (layers if isinstance(layers, Sequence) else [layers])]
        if not layers or any(not -model.depth <= i < model.depth for i in layers):
            raise ValueError(f"layers={layers} must be non-empty indices into the {model.depth} DINOv2 blocks")
        self.layers = [i % model.depth for i in layers]
        self.norm = bool(norm)
        self.dtype, self.out_dtype = dtype, out_dtype or dtype
        self.frames_per_call, self.image_size = frames_per_call, image_size
        self.variant = variant
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        if device is not None:
            self.mean, self.std = self.mean.to(device), self.std.to(device)

    def train(self, mode: bool = True) -> "DINOv2Teacher":
        super().train(False)
        return self

    @property
    def feature_dim(self) -> int:
        return self.vit.embed_dim

    def cache_info(self) -> Dict:
        return {"teacher": self.name, "variant": self.variant, "image_size": self.image_size, "norm": self.norm,
                "resize": "bicubic, no antialias", "normalisation": "imagenet"}

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """[N, 3, H, W] in [0, 1] -> [N, 3, S, S] resized and ImageNet-normalised (float32)."""
        x = images.float()
        if tuple(x.shape[-2:]) != (self.image_size, self.image_size):
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bicubic", align_corners=False)
        return (x - self.mean.to(x.device)) / self.std.to(x.device)

    @torch.no_grad()
    def forward(self, frames: torch.Tensor, grid: Optional[Tuple[int, int]] = None) -> torch.Tensor:
        """frames [B, T, 3, H, W] in [0, 1] -> features [B, T, L, h, w, C] (grid None: the ViT's grid)."""
        if frames.dim() != 5 or frames.shape[2] != 3:
            raise ValueError(f"frames must be [B, T, 3, H, W], got {tuple(frames.shape)}")
        if not frames.is_floating_point():
            raise ValueError(f"frames must be a float tensor in [0, 1], got {frames.dtype}")
        if grid is not None and (len(grid) != 2 or min(grid) < 1):
            raise ValueError(f"grid must be (h, w) with positive sizes, got {grid}")
        batch, steps = frames.shape[:2]
        device = self.vit.cls_token.device
        flat = frames.reshape(batch * steps, *frames.shape[2:]).to(device)
        chunks = []
        for start in range(0, flat.shape[0], self.frames_per_call):
            with nvtx_range("dinov2_teacher.preprocess"):
                images = self.preprocess(flat[start:start + self.frames_per_call])
            with nvtx_range("dinov2_teacher.vit"), torch.autocast(device.type, dtype=self.dtype,
                                                                   enabled=self.dtype != torch.float32):
                outs = self.vit.forward_layers(images, self.layers, self.norm)
            with nvtx_range("dinov2_teacher.resample"):
                feats = torch.stack(outs, dim=1)  # [n, L, h, w, C]
                if grid is not None:
                    feats = resample_grid(feats, grid)
                chunks.append(feats.to(self.out_dtype))
        feats = torch.cat(chunks, dim=0)
        return feats.reshape(batch, steps, *feats.shape[1:])
