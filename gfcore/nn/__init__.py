"""Neural-network modules built on gfcore's ops."""
from gfcore.nn.attention import FactorizedAttention
from gfcore.nn.rope import rope_1d, rope_2d

__all__ = ["FactorizedAttention", "rope_1d", "rope_2d"]
