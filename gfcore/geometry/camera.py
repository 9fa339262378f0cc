"""VGGT camera head: iterative pose refinement from the last layer's camera tokens."""
from __future__ import annotations

from typing import List

import torch
import torch.nn.functional as F
from torch import nn

from gfcore.geometry.layers import Block, Mlp

POSE_ENCODING_DIM = 9  # translation (3), quaternion XYZW (4), fov_h, fov_w


def activate_pose(encoding: torch.Tensor) -> torch.Tensor:
    """Linear translation and quaternion (not normalised), ReLU on the two field-of-view entries."""
    return torch.cat([encoding[..., :7], F.relu(encoding[..., 7:])], dim=-1)


class CameraHead(nn.Module):
    """adaLN-modulated transformer trunk refined `num_iterations` times with detached deltas."""

    def __init__(self, dim_in: int = 2048, trunk_depth: int = 4, num_heads: int = 16,
                 mlp_ratio: float = 4.0, init_values: float = 0.01):
        super().__init__()
        self.empty_pose_tokens = nn.Parameter(torch.zeros(1, 1, POSE_ENCODING_DIM))
        self.trunk = nn.Sequential(*[Block(dim_in, num_heads, mlp_ratio, init_values, 1e-5)
                                     for _ in range(trunk_depth)])
        self.token_norm = nn.LayerNorm(dim_in)
        self.trunk_norm = nn.LayerNorm(dim_in)
        self.embed_pose = nn.Linear(POSE_ENCODING_DIM, dim_in)
        self.poseLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim_in, 3 * dim_in))
        self.adaln_norm = nn.LayerNorm(dim_in, elementwise_affine=False, eps=1e-6)
        self.pose_branch = Mlp(dim_in, dim_in // 2, POSE_ENCODING_DIM)

    def forward(self, layer_outputs: List[torch.Tensor], num_iterations: int = 4) -> List[torch.Tensor]:
        """Returns the activated [B, S, 9] pose encoding after each iteration (last = final)."""
        tokens = self.token_norm(layer_outputs[-1][:, :, 0])  # camera token of every frame
        batch, frames, _ = tokens.shape
        estimate = None
        history = []
        for _ in range(num_iterations):
            if estimate is None:
                condition = self.embed_pose(self.empty_pose_tokens.expand(batch, frames, -1))
            else:
                estimate = estimate.detach()
                condition = self.embed_pose(estimate)
            shift, scale, gate = self.poseLN_modulation(condition).chunk(3, dim=-1)
            modulated = gate * (self.adaln_norm(tokens) * (1 + scale) + shift) + tokens
            delta = self.pose_branch(self.trunk_norm(self.trunk(modulated)))
            estimate = delta if estimate is None else estimate + delta
            history.append(activate_pose(estimate))
        return history
