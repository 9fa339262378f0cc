"""Is a loss module's training synchronised across processes? (a once-per-module check)

Under an initialised process group with several ranks, a GeometryAlignmentLoss whose
parameters are neither inside a DistributedDataParallel nor sharded by FSDP gets no gradient
all-reduce: each rank's projector and head drift apart without any error. The module checks
once, on its first forward, and warns.
"""
from __future__ import annotations

import gc
import os
import sys
import warnings

import torch
from torch import nn


def _distributed_world_size() -> int:
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return 1
    return torch.distributed.get_world_size()


def _wrappers():
    """The classes whose instances reduce their parameters' gradients: DDP, FSDP2, FSDP1."""
    from torch.distributed.fsdp import FSDPModule, FullyShardedDataParallel
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel, FSDPModule, FullyShardedDataParallel


def parameters_synchronized(module: nn.Module) -> bool:
    """True when some live DDP / FSDP module holds one of `module`'s parameters (then it holds
    them all: wrappers take whole modules). FSDP2 swaps sharded and unsharded parameters in
    place, so the registered ones are compared, whichever is registered now."""
    wrappers = _wrappers()
    if isinstance(module, wrappers):
        return True
    ours = {id(p) for p in module.parameters()}
    if not ours:
        return True
    for obj in gc.get_objects():  # once per loss module: the cost is paid on its first forward only
        # type(obj), not isinstance: isinstance reads obj.__class__, which some objects (torch.distributed.reduce_op)
        # answer with a deprecation warning
        if issubclass(type(obj), wrappers) and obj is not module and any(id(p) in ours for p in obj.parameters()):
            return True
    return False


_INTERNAL_DIRS = tuple(os.path.dirname(m.__file__) + os.sep for m in (torch, sys.modules[__name__.split(".")[0]]))


def _stacklevel_outside(frame) -> int:
    """warnings.warn's stacklevel, counted from `frame` (the function that warns: level 1), of the first
    frame outside torch and gfcore (nn.Module.__call__ and the loss's forward lie between the user's
    line and the check)."""
    level = 1
    while frame is not None and frame.f_code.co_filename.startswith(_INTERNAL_DIRS):
        frame, level = frame.f_back, level + 1
    return level


def warn_if_unsynchronized(module: nn.Module) -> None:
    world = _distributed_world_size()
    if world > 1 and not parameters_synchronized(module):
        warnings.warn(
            f"{type(module).__name__}: a process group of {world} ranks is initialised, but this module's "
            f"parameters (the projector and head) are inside no DistributedDataParallel and are not sharded by "
            f"FSDP, so their gradients are never averaged across ranks and each rank's copy drifts apart. Put the "
            f"loss module inside the DDP/FSDP-wrapped module (or wrap it too); see the README's drop-in section.",
            UserWarning, stacklevel=_stacklevel_outside(sys._getframe()))
