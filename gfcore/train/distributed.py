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
    if not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        dist.init_process_group(backend="cuda:nccl,cpu:gloo" if backend == "nccl" and cpu_collectives else backend)
    info = DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    if device_type == "cuda":
        torch.cuda.set_device(info.local_rank)
    return info


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
