"""Model FLOPs per training step and an MFU estimate (achieved / peak dense FLOP/s)."""
from __future__ import annotations

from typing import Optional

import torch

# Dense bf16 peaks (spec sheets) by substring of the CUDA device name, in TFLOP/s.
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 70.0, "4090": 165.0}


def forward_flops(model, batch_size: int, num_frames: int, alignment_params: int = 0) -> float:
    """Matmul FLOPs of one forward: 2 * params * tokens for the linear layers, plus attention
    4 * D * seq^2 per sequence for the spatial (seq = P) and temporal (seq = T) passes."""
    cfg = model.config
    patches = cfg.grid[0] * cfg.grid[1]
    tokens = batch_size * num_frames * patches
    linear_params = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    attention = cfg.depth * 4 * cfg.hidden_dim * (batch_size * num_frames * patches ** 2 +
                                                  batch_size * patches * num_frames ** 2)
    return 2.0 * (linear_params + alignment_params) * tokens + attention


def peak_flops(device: torch.device, override_tflops: Optional[float]) -> Optional[float]:
    """Peak FLOP/s: the configured value, else a known GPU's bf16 peak, else None (CPU)."""
    if override_tflops:
        return float(override_tflops) * 1e12
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, tflops in PEAK_BF16_TFLOPS.items():
        if key in name:
            return tflops * 1e12
    return None
