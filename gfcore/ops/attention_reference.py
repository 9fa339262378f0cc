"""The readable specification of factorized spatiotemporal attention, in plain PyTorch.

Layout: q, k, v and the output are [B, T, P, H, D] (batch, frames, patches per frame, heads,
head dim). The spatial pass attends over P within one frame, the temporal pass over T within
one patch position. Both are einops rearranges around F.scaled_dot_product_attention; the
fused kernels (csrc/attention) compute the same thing without the layout copies.

RoPE is the rotate-half form: x' = x * cos + rotate_half(x) * sin, with cos and sin tables
of shape [S, D] indexed by the position along the attended axis (S = P or S = T).
"""
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from einops import rearrange

RopeTables = Tuple[torch.Tensor, torch.Tensor]

# The most sequences one F.scaled_dot_product_attention call takes here. Its flash and
# memory-efficient CUDA kernels put the batch on a grid axis of at most 65535 blocks and fail
# from 65536 on (pytorch/pytorch#146704, #142228); the temporal pass's batch is B * P (8 clips
# of 4096 patches: 32768 already), so larger batches go through in slices of this many.
SDPA_MAX_BATCH = 65535


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """[x1, x2] -> [-x2, x1] over the last dim (halves of D)."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def rotate_half_transpose(y: torch.Tensor) -> torch.Tensor:
    """The transpose of rotate_half: [y1, y2] -> [y2, -y1] (used by the backward)."""
    y1, y2 = y.chunk(2, dim=-1)
    return torch.cat((y2, -y1), dim=-1)


def seq_axis(mode: str) -> int:
    """Index of the attended axis in [B, T, P, H, D]: T (1) for temporal, P (2) for spatial."""
    if mode not in ("spatial", "temporal"):
        raise ValueError(f"mode must be 'spatial' or 'temporal', got {mode!r}")
    return 1 if mode == "temporal" else 2


def broadcast_rope(table: torch.Tensor, mode: str) -> torch.Tensor:
    """A [S, D] table viewed so that it broadcasts against [B, T, P, H, D]."""
    s, d = table.shape
    return table.view(1, s, 1, 1, d) if mode == "temporal" else table.view(1, 1, s, 1, d)


def apply_rope(x: torch.Tensor, rope: Optional[RopeTables], mode: str) -> torch.Tensor:
    """Rotate-half RoPE along the attended axis, computed in float32, returned in x's dtype."""
    if rope is None:
        return x
    compute = torch.float64 if x.dtype == torch.float64 else torch.float32
    cos, sin = (broadcast_rope(t.to(compute), mode) for t in rope)
    xf = x.to(compute)
    return (xf * cos + rotate_half(xf) * sin).to(x.dtype)


def sdpa_in_slices(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, is_causal: bool = False,
                   scale: Optional[float] = None) -> torch.Tensor:
    """F.scaled_dot_product_attention over [N, H, S, D] inputs, in slices of at most
    SDPA_MAX_BATCH sequences along N (each sequence attends only within itself)."""
    n = q.shape[0]
    if n <= SDPA_MAX_BATCH:
        return F.scaled_dot_product_attention(q, k, v, is_causal=is_causal, scale=scale)
    return torch.cat([F.scaled_dot_product_attention(q[i:i + SDPA_MAX_BATCH], k[i:i + SDPA_MAX_BATCH],
                                                     v[i:i + SDPA_MAX_BATCH], is_causal=is_causal, scale=scale)
                      for i in range(0, n, SDPA_MAX_BATCH)])


def _attend(q, k, v, mode: str, causal: bool, rope: Optional[RopeTables], scale: Optional[float]):
    q = apply_rope(q, rope, mode)
    k = apply_rope(k, rope, mode)
    if mode == "spatial":
        to_seq, from_seq = "b t p h d -> (b t) h p d", "(b t) h p d -> b t p h d"
        sizes = {"b": q.shape[0], "t": q.shape[1]}
    else:
        to_seq, from_seq = "b t p h d -> (b p) h t d", "(b p) h t d -> b t p h d"
        sizes = {"b": q.shape[0], "p": q.shape[2]}
    qs, ks, vs = (rearrange(x, to_seq) for x in (q, k, v))
    o = sdpa_in_slices(qs, ks, vs, is_causal=causal, scale=scale)
    return rearrange(o, from_seq, **sizes).contiguous()


def spatial_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                      rope: Optional[RopeTables] = None,
                      scale: Optional[float] = None) -> torch.Tensor:
    """Each frame's P tokens attend to each other. Returns [B, T, P, H, D] contiguous."""
    return _attend(q, k, v, "spatial", False, rope, scale)


def temporal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False,
                       rope: Optional[RopeTables] = None,
                       scale: Optional[float] = None) -> torch.Tensor:
    """Each patch position's T frames attend to each other (frame i sees j <= i if causal)."""
    return _attend(q, k, v, "temporal", causal, rope, scale)
