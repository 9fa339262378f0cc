"""AdamW with linear warmup (then constant or cosine decay), and an EMA of the weights."""
from __future__ import annotations

import math
from typing import Dict, Iterable

import torch


def build_optimizer(params: Iterable[torch.nn.Parameter], lr: float, weight_decay: float, betas=(0.9, 0.999),
                    eps: float = 1e-8) -> torch.optim.AdamW:
    # foreach=False: the same kernels on one and several processes, so runs compare bit for bit.
    return torch.optim.AdamW(list(params), lr=lr, weight_decay=weight_decay, betas=tuple(betas), eps=eps,
                             foreach=False)


def build_scheduler(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int,
                    decay: str = "constant", min_lr_ratio: float = 0.0) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup over warmup_steps, then 'constant' or 'cosine' decay to min_lr_ratio."""
    if decay not in ("constant", "cosine"):
        raise ValueError(f"train.lr_decay must be 'constant' or 'cosine', got {decay!r}")

    def factor(step: int) -> float:
        if warmup_steps > 0 and step < warmup_steps:
            return (step + 1) / warmup_steps
        if decay == "constant":
            return 1.0
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class EMA:
    """Exponential moving average of a module's floating-point parameters and buffers (fp32 copies)."""

    def __init__(self, module: torch.nn.Module, decay: float = 0.999):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"train.ema_decay must lie in [0, 1), got {decay}")
        self.decay = decay
        self.shadow: Dict[str, torch.Tensor] = {k: v.detach().float().clone()
                                                for k, v in module.state_dict().items() if v.is_floating_point()}

    @torch.no_grad()
    def update(self, module: torch.nn.Module) -> None:
        for key, value in module.state_dict().items():
            if key in self.shadow:
                self.shadow[key].lerp_(value.detach().float(), 1.0 - self.decay)

    def copy_to(self, module: torch.nn.Module) -> None:
        """Copy the averages into a plain (unsharded) module; a collective under FSDP."""
        state = module.state_dict()
        for key, value in self.state_dict()["shadow"].items():
            state[key].copy_(value.to(state[key].dtype))

    def state_dict(self) -> Dict:
        """Full tensors (FSDP shards are gathered: every rank must call this)."""
        return {"decay": self.decay, "shadow": {k: full_tensor(v) for k, v in self.shadow.items()}}

    def load_state_dict(self, state: Dict) -> None:
        missing = set(self.shadow) - set(state["shadow"])
        if missing:
            raise KeyError(f"EMA state lacks {sorted(missing)[:5]}")
        self.decay = state["decay"]
        self.shadow = {k: shard_like(state["shadow"][k].float(), v) for k, v in self.shadow.items()}


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor of an FSDP-sharded DTensor (a collective), or t itself."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def shard_like(full: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """full, laid out like `like` (sharded the same way when `like` is a DTensor)."""
    if hasattr(like, "device_mesh"):
        from torch.distributed.tensor import distribute_tensor

        return distribute_tensor(full.to(like.device), like.device_mesh, like.placements)
    return full.to(like.device).clone()
