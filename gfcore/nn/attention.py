"""FactorizedAttention: the attention block of a DiT3D-style video transformer.

One module serves both passes: a packed qkv projection, optional per-head RMS QK-norm, the
spatial or temporal gfcore op on the natural [B, T, P, H, D] layout, and the output projection.
"""
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from gfcore.ops.attention import IMPLS, spatial_attention, temporal_attention
from gfcore.ops.attention_reference import RopeTables


class FactorizedAttention(nn.Module):
    """Multi-head self-attention over the frames (temporal) or patches (spatial) of a video.

    Args:
        dim: channels of the tokens.
        num_heads: heads; dim must be divisible by it.
        qk_norm: RMS-normalise q and k per head (learned scale) before RoPE and attention.
        impl: "auto", "fused", "reference" or "sdpa" (see gfcore.ops.attention).
    """

    def __init__(self, dim: int, num_heads: int, qk_norm: bool = True, impl: str = "auto",
                 eps: float = 1e-6):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"FactorizedAttention: dim={dim} is not divisible by "
                             f"num_heads={num_heads}")
        if impl not in IMPLS:
            raise ValueError(f"FactorizedAttention: impl must be one of {IMPLS}, got {impl!r}")
        self.dim, self.num_heads, self.head_dim = dim, num_heads, dim // num_heads
        self.impl, self.eps = impl, eps
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        if qk_norm:
            self.q_norm_weight = nn.Parameter(torch.ones(self.head_dim))
            self.k_norm_weight = nn.Parameter(torch.ones(self.head_dim))
        else:
            self.register_parameter("q_norm_weight", None)
            self.register_parameter("k_norm_weight", None)

    def forward(self, x: torch.Tensor, mode: str = "spatial", causal: bool = False,
                rope: Optional[RopeTables] = None) -> torch.Tensor:
        """x: [B, T, P, dim] -> [B, T, P, dim]. causal only applies to mode="temporal"."""
        if x.dim() != 4 or x.shape[-1] != self.dim:
            raise ValueError(f"FactorizedAttention: x must be [B, T, P, {self.dim}], got "
                             f"{tuple(x.shape)}")
        if mode not in ("spatial", "temporal"):
            raise ValueError(f"FactorizedAttention: mode must be 'spatial' or 'temporal', "
                             f"got {mode!r}")
        if causal and mode == "spatial":
            raise ValueError("FactorizedAttention: causal=True needs mode='temporal'")
        b, t, p, _ = x.shape
        # [B, T, P, 3, H, D]: q, k and v are strided views, which the ops read directly.
        qkv = self.qkv(x).view(b, t, p, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.unbind(dim=3)
        if self.q_norm_weight is not None:
            q = F.rms_norm(q, (self.head_dim,), self.q_norm_weight, self.eps)
            k = F.rms_norm(k, (self.head_dim,), self.k_norm_weight, self.eps)
        if mode == "spatial":
            o = spatial_attention(q, k, v, rope=rope, impl=self.impl)
        else:
            o = temporal_attention(q, k, v, causal=causal, rope=rope, impl=self.impl)
        return self.proj(o.view(b, t, p, self.dim))
