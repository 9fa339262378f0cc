"""Argument checks shared by the metrics, so every bad input names the argument at fault."""
from __future__ import annotations

import torch


def check_floating(x: torch.Tensor, name: str) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name}: expected a floating-point tensor in [0, 1], got {x.dtype}")


def check_image_pair(pred: torch.Tensor, target: torch.Tensor, pred_name: str, target_name: str) -> None:
    """Both tensors floating point, laid out [..., C, H, W], with the same shape."""
    check_floating(pred, pred_name)
    check_floating(target, target_name)
    if pred.dim() < 3:
        raise ValueError(f"{pred_name}: expected [..., C, H, W], got shape {tuple(pred.shape)}")
    if pred.shape != target.shape:
        raise ValueError(
            f"{pred_name} and {target_name} must have the same shape, got "
            f"{tuple(pred.shape)} and {tuple(target.shape)}"
        )


def check_shape(x: torch.Tensor, name: str, pattern: str, **sizes: int) -> None:
    """Check x against a pattern such as "T,H,W" (sizes given by keyword must match)."""
    dims = pattern.split(",")
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor [{pattern}], got {type(x).__name__}")
    if x.dim() != len(dims):
        raise ValueError(f"{name}: expected shape [{pattern}], got {tuple(x.shape)}")
    for dim, size in zip(dims, x.shape):
        if dim.isdigit() and int(dim) != size:
            raise ValueError(f"{name}: expected shape [{pattern}], got {tuple(x.shape)}")
        if dim in sizes and sizes[dim] != size:
            raise ValueError(
                f"{name}: dimension {dim} is {size}, expected {sizes[dim]} (shape {tuple(x.shape)})"
            )
