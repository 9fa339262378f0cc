"""The VGGT model: aggregator plus camera, depth and point heads, checkpoint-compatible with VGGT-1B."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, Optional, Sequence

import torch
from torch import nn

from gfcore.geometry.aggregator import Aggregator
from gfcore.geometry.camera import CameraHead
from gfcore.geometry.dpt import DPTHead

_HERE = Path(__file__).resolve().parent
MANIFEST_PATH = _HERE / "vggt1b_state_dict_manifest.json"
SMALL_CONFIG_PATH = _HERE / "vggt_small_config.json"
VGGT1B_DPT_LAYERS = (4, 11, 17, 23)


def small_config() -> Dict:
    """The small test configuration (embed 384, ViT-S/14 DINO with 2 blocks, 2+2 aggregator blocks)."""
    return json.loads(SMALL_CONFIG_PATH.read_text())


def default_dpt_layers(depth: int) -> tuple:
    """VGGT-1B's DPT layers [4, 11, 17, 23] for depth 24; for other depths the same relative
    positions, rounded (depth 2 -> (0, 0, 1, 1))."""
    if depth == 24:
        return VGGT1B_DPT_LAYERS
    return tuple(int(round(i * (depth - 1) / 23)) for i in VGGT1B_DPT_LAYERS)


class VGGT(nn.Module):
    """VGGT with VGGT-1B sizes by default. Every aggregator size is a keyword argument (see
    vggt_small_config.json); head sizes too. The track head is not implemented: its checkpoint
    keys are skipped on load (see gfcore.geometry.checkpoint).
    """

    def __init__(self, img_size: int = 518, patch_size: int = 14, embed_dim: int = 1024,
                 depth: int = 24, num_heads: int = 16, mlp_ratio: float = 4.0,
                 num_register_tokens: int = 4, qkv_bias: bool = True, proj_bias: bool = True,
                 ffn_bias: bool = True, patch_embed: str = "dinov2_vitl14_reg",
                 aa_order: Sequence[str] = ("frame", "global"), aa_block_size: int = 1,
                 qk_norm: bool = True, rope_freq: float = 100, init_values: float = 0.01,
                 dino_depth: Optional[int] = None,
                 enable_camera: bool = True, enable_depth: bool = True, enable_point: bool = True,
                 camera_trunk_depth: int = 4, camera_num_heads: int = 16,
                 dpt_features: int = 256, dpt_out_channels: Sequence[int] = (256, 512, 1024, 1024),
                 dpt_layers: Optional[Sequence[int]] = None):
        super().__init__()
        self.aggregator = Aggregator(img_size, patch_size, embed_dim, depth, num_heads, mlp_ratio,
                                     num_register_tokens, qkv_bias, proj_bias, ffn_bias, patch_embed,
                                     aa_order, aa_block_size, qk_norm, rope_freq, init_values, dino_depth)
        dpt_layers = tuple(dpt_layers) if dpt_layers is not None else default_dpt_layers(depth)
        if any(not 0 <= i < depth for i in dpt_layers):
            raise ValueError(f"dpt_layers={dpt_layers} must lie in [0, depth={depth})")
        dim = 2 * embed_dim
        # same creation order as the official model (camera, point, depth) so state_dicts line up
        self.camera_head = CameraHead(dim, camera_trunk_depth, camera_num_heads) if enable_camera else None
        self.point_head = DPTHead(dim, patch_size, 4, "inv_log", dpt_features, dpt_out_channels,
                                  dpt_layers) if enable_point else None
        self.depth_head = DPTHead(dim, patch_size, 2, "exp", dpt_features, dpt_out_channels,
                                  dpt_layers) if enable_depth else None

    def forward(self, images: torch.Tensor) -> Dict[str, torch.Tensor]:
        """images [B, S, 3, H, W] (or [S, 3, H, W]) in [0, 1] -> dict of predictions:
        pose_enc [B, S, 9] (and pose_enc_list), depth [B, S, H, W, 1], depth_conf [B, S, H, W],
        world_points [B, S, H, W, 3], world_points_conf [B, S, H, W]. Heads run outside autocast (in
        the weights' dtype; the aggregator's residual stream stays float32 under autocast)."""
        if images.dim() == 4:
            images = images.unsqueeze(0)
        layer_outputs, patch_start_idx = self.aggregator(images)
        image_hw = tuple(images.shape[-2:])
        predictions: Dict[str, torch.Tensor] = {}
        with torch.autocast(images.device.type, enabled=False):
            if self.camera_head is not None:
                history = self.camera_head(layer_outputs)
                predictions["pose_enc"] = history[-1]
                predictions["pose_enc_list"] = history
            if self.depth_head is not None:
                predictions["depth"], predictions["depth_conf"] = self.depth_head(
                    layer_outputs, image_hw, patch_start_idx)
            if self.point_head is not None:
                predictions["world_points"], predictions["world_points_conf"] = self.point_head(
                    layer_outputs, image_hw, patch_start_idx)
        return predictions
