"""gfcore: fused kernels and a thin trainer for Geometry Forcing video diffusion.

The data flows data -> geometry (teacher) -> models -> losses -> train -> sample -> metrics.
"""
__version__ = "0.1.0"

import torch as _torch

from gfcore.torch_support import check_torch_version as _check_torch_version

_check_torch_version(_torch.__version__)

from gfcore._extension import backends
from gfcore import ops
from gfcore.losses import AlignmentOutput, GeometryAlignmentLoss
from gfcore.hidden_states import Capture, capture

__all__ = ["AlignmentOutput", "Capture", "GeometryAlignmentLoss", "backends", "capture", "ops", "__version__"]
