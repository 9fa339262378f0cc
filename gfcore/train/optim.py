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
    """Exponential moving average of a module's floating-point parameters and buffers (fp32 copies).

    device None keeps each average where the module's tensor is (FSDP: sharded like it). A device
    (train.ema_device=cpu) holds the averages there instead (pinned host memory when CUDA is
    available; an FSDP rank keeps its own shard): update() copies the weights' values into a
    staging buffer there (a second copy of the weights' size) and then does the same lerp_, so
    the values are those of device None; only where the memory is taken moves.
    """

    def __init__(self, module: torch.nn.Module, decay: float = 0.999, device=None):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"train.ema_decay must lie in [0, 1), got {decay}")
        self.decay = decay
        self.device = None if device is None else torch.device(device)
        self._layouts: Dict[str, tuple] = {}  # key -> (mesh, placements, shape, stride) of an FSDP shard held off-mesh
        self._staging: Dict[str, torch.Tensor] = {}  # pinned buffers the weights are copied into (GPU -> host)
        self.shadow: Dict[str, torch.Tensor] = {k: self._hold(k, v.detach().float())
                                                for k, v in module.state_dict().items() if v.is_floating_point()}

    def _hold(self, key: str, value: torch.Tensor) -> torch.Tensor:
        """A float32 copy of value where the averages live."""
        if self.device is None:
            return value.clone()
        if hasattr(value, "device_mesh"):  # a DTensor: keep this rank's shard, remember how to rebuild it
            self._layouts[key] = (value.device_mesh, value.placements, value.shape, value.stride())
            value = value.to_local()
        return _empty_like(value, self.device).copy_(value)

    @torch.no_grad()
    def update(self, module: torch.nn.Module) -> None:
        pairs, pending = [], False
        for key, value in module.state_dict().items():
            if key in self.shadow:
                value = value.detach().float()
                if self.device is not None:  # the weights' values copied over first (GPU -> pinned host: async)
                    value = value.to_local() if hasattr(value, "device_mesh") else value
                    if key not in self._staging:
                        self._staging[key] = _empty_like(value, self.device)
                    staging = self._staging[key]
                    staging.copy_(value, non_blocking=staging.is_pinned())
                    pending = pending or (staging.is_pinned() and value.is_cuda)
                    value = staging
                pairs.append((self.shadow[key], value))
        if pending:  # the host reads the copies only once they have landed
            torch.cuda.synchronize()
        for shadow, value in pairs:
            shadow.lerp_(value, 1.0 - self.decay)

    def copy_to(self, module: torch.nn.Module) -> None:
        """Copy the averages into a plain (unsharded) module; a collective under FSDP."""
        state = module.state_dict()
        for key, value in self.state_dict()["shadow"].items():
            state[key].copy_(value.to(state[key].dtype))

    def state_dict(self) -> Dict:
        """Full tensors (FSDP shards are gathered: every rank must call this)."""
        return {"decay": self.decay, "shadow": {k: self._full(k, v) for k, v in self.shadow.items()}}

    def _full(self, key: str, value: torch.Tensor) -> torch.Tensor:
        if key not in self._layouts:
            return full_tensor(value)
        from torch.distributed.tensor import DTensor

        mesh, placements, shape, stride = self._layouts[key]  # the shard goes back on the mesh to be gathered
        local = value.to(mesh.device_type)
        return full_tensor(DTensor.from_local(local, mesh, placements, shape=shape, stride=stride)).to(value.device)

    def load_state_dict(self, state: Dict) -> None:
        missing = set(self.shadow) - set(state["shadow"])
        if missing:
            raise KeyError(f"EMA state lacks {sorted(missing)[:5]}")
        self.decay = state["decay"]
        self.shadow = {k: self._load(k, state["shadow"][k].float(), v) for k, v in self.shadow.items()}

    def _load(self, key: str, full: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        if self.device is None:
            return shard_like(full, like)
        if key in self._layouts:  # this rank's shard of the full tensor
            from torch.distributed.tensor import distribute_tensor

            mesh, placements = self._layouts[key][:2]
            full = distribute_tensor(full.to(mesh.device_type), mesh, placements).to_local()
        return like.copy_(full)  # into the (pinned) buffer already held


def _empty_like(value: torch.Tensor, device: torch.device) -> torch.Tensor:
    """An uninitialised float32 tensor of value's shape on device; pinned when it is the host and
    CUDA is available (so GPU -> host copies can be asynchronous)."""
    pin = device.type == "cpu" and torch.cuda.is_available()
    return torch.empty(value.shape, dtype=torch.float32, device=device, pin_memory=pin)


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor of an FSDP-sharded DTensor (a collective), or t itself."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def shard_like(full: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """full, laid out like `like` (sharded the same way when `like` is a DTensor)."""
    if hasattr(like, "device_mesh"):
        from torch.distributed.tensor import distribute_tensor

        sharded = distribute_tensor(full.to(like.device), like.device_mesh, like.placements)
        # distribute_tensor puts the shard on the mesh's device; FSDP's CPU offload keeps it on the host
        return sharded.to(like.device)
    return full.to(like.device).clone()
