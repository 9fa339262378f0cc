"""Training losses: the Geometry Forcing alignment loss (angular + scale)."""
from gfcore.losses.alignment import AlignmentOutput, GeometryAlignmentLoss

__all__ = ["AlignmentOutput", "GeometryAlignmentLoss"]
