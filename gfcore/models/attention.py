"""Local stand-in for gfcore.nn.FactorizedAttention (being written on another branch).

Same signature: FactorizedAttention(dim, num_heads, qk_norm=True, impl="auto") and
attn(x [B, T, P, dim], mode="spatial" | "temporal", causal=False, rope=(cos, sin) or None).
The spatial pass attends over the P patches of each frame ((b t) p c), the temporal pass
over the T frames of each patch ((b p) t c). RoPE tables are [seq, head_dim] (rotate-half
layout) for the attended axis. Built on F.scaled_dot_product_attention; `impl` is accepted
for interface compatibility and ignored here.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

MODES = ("spatial", "temporal")


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    first, second = x.chunk(2, dim=-1)
    return torch.cat([-second, first], dim=-1)


def apply_rope(x: torch.Tensor, rope: Tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """x [..., seq, head_dim] rotated by tables cos, sin [seq, head_dim] (computed in x's dtype)."""
    cos, sin = rope
    return x * cos.to(x.dtype) + rotate_half(x) * sin.to(x.dtype)


class FactorizedAttention(nn.Module):
    """Multi-head self-attention over one axis of a [B, T, P, dim] token grid, with QK-norm."""

    def __init__(self, dim: int, num_heads: int, qk_norm: bool = True, impl: str = "auto"):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim={dim} must be divisible by num_heads={num_heads}")
        self.dim, self.num_heads, self.head_dim = dim, num_heads, dim // num_heads
        self.impl = impl
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        # RMS norm per head on q and k keeps attention logits bounded (QK-norm).
        self.q_norm = nn.RMSNorm(self.head_dim, eps=1e-6) if qk_norm else nn.Identity()
        self.k_norm = nn.RMSNorm(self.head_dim, eps=1e-6) if qk_norm else nn.Identity()

    @staticmethod
    def _norm(norm: nn.Module, t: torch.Tensor) -> torch.Tensor:
        """QK-norm in its weight's dtype (fp32 under bf16 autocast), back in t's dtype."""
        weight = getattr(norm, "weight", None)
        if weight is None:
            return norm(t)
        return norm(t.to(weight.dtype)).to(t.dtype)

    def forward(self, x: torch.Tensor, mode: str = "spatial", causal: bool = False,
                rope: Optional[Tuple[torch.Tensor, torch.Tensor]] = None) -> torch.Tensor:
        if x.dim() != 4 or x.shape[-1] != self.dim:
            raise ValueError(f"x must be [B, T, P, {self.dim}], got {tuple(x.shape)}")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        batch, frames, patches, _ = x.shape
        pattern = "b t p (k h d) -> k (b t) h p d" if mode == "spatial" else "b t p (k h d) -> k (b p) h t d"
        q, k, v = rearrange(self.qkv(x), pattern, k=3, h=self.num_heads)
        q, k = self._norm(self.q_norm, q), self._norm(self.k_norm, k)
        if rope is not None:
            q, k = apply_rope(q, rope), apply_rope(k, rope)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        if mode == "spatial":
            out = rearrange(out, "(b t) h p d -> b t p (h d)", b=batch)
        else:
            out = rearrange(out, "(b p) h t d -> b t p (h d)", b=batch)
        return self.proj(out)
