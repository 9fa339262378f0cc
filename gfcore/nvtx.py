"""NVTX ranges in the "gfcore" domain; no-ops when the `nvtx` package is absent.

torch.cuda.nvtx raises on CPU-only torch builds, so the standalone `nvtx` package is used.
"""
import contextlib

try:
    import nvtx as _nvtx

    _DOMAIN = _nvtx.get_domain("gfcore")
except ImportError:  # pragma: no cover - depends on the environment
    _nvtx = None
    _DOMAIN = None


def enabled() -> bool:
    return _nvtx is not None


@contextlib.contextmanager
def nvtx_range(name: str):
    """`with nvtx_range("forward"):` marks a range that Nsight Systems shows."""
    if _DOMAIN is None:
        yield
        return
    attributes = _nvtx.EventAttributes(message=name)
    range_id = _DOMAIN.start_range(attributes)
    try:
        yield
    finally:
        _DOMAIN.end_range(range_id)
