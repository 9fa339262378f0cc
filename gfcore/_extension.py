"""Loading the compiled extension and reporting which backends it carries."""
import warnings

import torch

try:
    from gfcore import _C  # noqa: F401  (importing registers the gfcore:: ops)

    EXTENSION_ERROR = None
except ImportError as exc:  # the pure-PyTorch reference paths still work
    _C = None
    EXTENSION_ERROR = exc


def extension_loaded() -> bool:
    return _C is not None


@torch.compiler.assume_constant_result  # registrations are fixed once loaded: no graph break
def has_kernel(op_name: str, device_type: str) -> bool:
    """True when gfcore::op_name has a compiled kernel for device_type ('cpu' or 'cuda')."""
    if _C is None:
        return False
    key = {"cpu": "CPU", "cuda": "CUDA"}[device_type]
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"gfcore::{op_name}", key)


def backends() -> dict:
    """Which compiled backends this install carries, e.g. {"cpu": True, "cuda": False}.

    "cuda" is True when the CUDA kernels were compiled in, whether or not a GPU is visible
    now (torch.cuda.is_available() tells that).
    """
    return {"cpu": has_kernel("bias_silu", "cpu"), "cuda": has_kernel("bias_silu", "cuda")}


_warned = set()


def warn_once(message: str, stacklevel: int = 3) -> None:
    """warnings.warn(message) the first time only; the default stacklevel names the line that
    called warn_once's caller."""
    if message not in _warned:
        _warned.add(message)
        warnings.warn(message, stacklevel=stacklevel)
