"""Video diffusion models: VideoDiT (pixel-space DiT, factorized space/time attention)."""
from gfcore.nn import FactorizedAttention
from gfcore.models.dit import VideoDiT, VideoDiTConfig, build_model

__all__ = ["FactorizedAttention", "VideoDiT", "VideoDiTConfig", "build_model"]
