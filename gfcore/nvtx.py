"""NVTX ranges in the "gfcore" domain; no-ops when the `nvtx` package is absent.

torch.cuda.nvtx raises on CPU-only torch builds, so the standalone `nvtx` package is used.
Listeners (`listening`) are told each range's start and end, with or without the package: the
memory planner (gfcore.train.memory) labels the step's tensors by them.
"""
import contextlib
from typing import Callable, List

import torch

try:
    import nvtx as _nvtx
except ImportError:  # pragma: no cover - depends on the environment
    _nvtx = None

DOMAIN = "gfcore"
_listeners: List[Callable[[str, bool], None]] = []


def enabled() -> bool:
    return _nvtx is not None


def nvtx_range(name: str):
    """`with nvtx_range("forward"):` marks a range that Nsight Systems shows.

    Inside torch.compile tracing it is a no-op: markers are host calls, not graph ops."""
    if torch.compiler.is_compiling():
        return contextlib.nullcontext()
    marker = contextlib.nullcontext() if _nvtx is None else _nvtx.annotate(name, domain=DOMAIN)
    return _told(name, marker) if _listeners else marker


@contextlib.contextmanager
def _told(name: str, marker):
    for listener in list(_listeners):
        listener(name, True)
    try:
        with marker:
            yield
    finally:
        for listener in reversed(list(_listeners)):
            listener(name, False)


@contextlib.contextmanager
def listening(listener: Callable[[str, bool], None]):
    """Call listener(range name, entering) at the start and end of every nvtx_range inside."""
    _listeners.append(listener)
    try:
        yield
    finally:
        _listeners.remove(listener)
