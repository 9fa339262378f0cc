"""gfcore's fused ops, each with a pure-PyTorch reference beside it (`*_reference.py`)."""
from gfcore.ops.alignment import (
    bias_mse,
    bias_normalize_cosine,
    bias_normalize_cosine_backward,
    bias_silu,
    bias_silu_backward,
)
from gfcore.ops.attention import spatial_attention, temporal_attention

__all__ = [
    "bias_mse",
    "bias_normalize_cosine",
    "bias_normalize_cosine_backward",
    "bias_silu",
    "bias_silu_backward",
    "spatial_attention",
    "temporal_attention",
]
