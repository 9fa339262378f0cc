"""Process-group setup for torchrun (DDP, optional FSDP) and small collective helpers."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Dict

import torch
import torch.distributed as dist


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False  # setup_distributed created the process group, so teardown_distributed ends it

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_distributed(device_type: str, cpu_collectives: bool = False) -> DistInfo:
    """Join the process group torchrun describes (WORLD_SIZE > 1): NCCL on GPU, gloo on CPU.
    cpu_collectives: on GPU, gloo serves the collectives of tensors in host memory (FSDP's CPU
    offload: the sharded gradients' norm, the checkpoints' gathers) beside NCCL."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistInfo()
    owns_group = not dist.is_initialized()
    if owns_group:
        backend = "nccl" if device_type == "cuda" else "gloo"
        dist.init_process_group(backend="cuda:nccl,cpu:gloo" if backend == "nccl" and cpu_collectives else backend)
    info = DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")), owns_group)
    if device_type == "cuda":
        torch.cuda.set_device(info.local_rank)
    return info


def teardown_distributed(info: DistInfo) -> None:
    """End the process group setup_distributed created (one the caller made is the caller's to end).
    A rank that exits with it still open can abort in interpreter shutdown, gloo's worker threads
    outliving Python (the failure an atexit handler proposed in pytorch/pytorch#179291 was to
    prevent). Called on success only: a rank that raised exits, and torchrun ends the others."""
    if info.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def mean_across_ranks(values: Dict[str, torch.Tensor], info: DistInfo) -> Dict[str, float]:
    """Floats of detached scalars, averaged over ranks (for logging)."""
    keys = sorted(values)
    stacked = torch.stack([values[k].detach().float().reshape(()) for k in keys])
    if info.enabled:
        dist.all_reduce(stacked)
        stacked /= info.world_size
    return dict(zip(keys, stacked.tolist()))


def gather_objects(obj, info: DistInfo) -> list:
    if not info.enabled:
        return [obj]
    out = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()
