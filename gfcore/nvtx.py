"""NVTX ranges in the "gfcore" domain; no-ops when the `nvtx` package is absent.

torch.cuda.nvtx raises on CPU-only torch builds, so the standalone `nvtx` package is used.
"""
import contextlib

import torch

try:
    import nvtx as _nvtx
except ImportError:  # pragma: no cover - depends on the environment
    _nvtx = None

DOMAIN = "gfcore"


def enabled() -> bool:
    return _nvtx is not None


def nvtx_range(name: str):
    """`with nvtx_range("forward"):` marks a range that Nsight Systems shows.

    Inside torch.compile tracing it is a no-op: markers are host calls, not graph ops."""
    if _nvtx is None or torch.compiler.is_compiling():
        return contextlib.nullcontext()
    return _nvtx.annotate(name, domain=DOMAIN)
