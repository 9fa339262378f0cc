"""Teacher targets and token masks as the alignment loss takes them.

y arrives as one tensor [..., D] (one target), one tensor with a layer axis ([..., L, D], or
the axis anywhere with layer_dim: the teacher protocol's [B, T, L, h, w, D]), or a list of
tensors [..., D_i] (targets of different widths, e.g. DINOv2 768 + VGGT 2048). Each target is
handed on as a view of the caller's tensor (y.select(layer_dim, i)): the whole y is never
permuted into a copy; each target's rows are staged in the compute dtype when that target runs.

A target's token axes are h's, or h's last token axis is the target's last two merged
(y [B, T, h, w, D] against h [B, T, h*w, C]); tokens pair up in row-major order.
"""
from __future__ import annotations

import math
from typing import List, Optional, Sequence

import torch


def _tokens_match(h_lead: Sequence[int], y_lead: Sequence[int]) -> bool:
    h_lead, y_lead = tuple(h_lead), tuple(y_lead)
    if y_lead == h_lead:
        return True
    return (len(h_lead) >= 1 and len(y_lead) == len(h_lead) + 1 and y_lead[:-2] == h_lead[:-1]
            and y_lead[-2] * y_lead[-1] == h_lead[-1])


def _layout(widths: Sequence[int], layer_dim: Optional[int]) -> str:
    if len(set(widths)) > 1:
        return f"a list of {len(widths)} tensors [..., target_dim[i]] (target_dim={list(widths)})"
    if len(widths) == 1 and layer_dim is None:
        return "[..., target_dim]"
    where = "num_targets" if layer_dim is None else f"num_targets at dim {layer_dim}"
    return f"[..., num_targets, target_dim] ({where}) or a list of num_targets tensors [..., target_dim]"


def target_views(y, widths: Sequence[int], layer_dim: Optional[int], h_lead: Sequence[int],
                 device: torch.device) -> List[torch.Tensor]:
    """One view [..., D_i] per target, its token axes checked against h's; nothing is copied."""
    n = len(widths)
    if isinstance(y, (list, tuple)):
        if len(y) != n:
            raise ValueError(f"y is a list of {len(y)} tensors but the loss has {n} target(s) "
                             f"(target_dim={list(widths) if n > 1 else widths[0]})")
        views, names = list(y), [f"y[{i}]" for i in range(n)]
    else:
        if len(set(widths)) > 1:
            raise ValueError(f"y must be {_layout(widths, layer_dim)}, got one tensor of shape {tuple(y.shape)}")
        if n == 1 and layer_dim is None:
            views, names = [y], ["y"]
        else:
            axis = -2 if layer_dim is None else layer_dim
            if y.dim() < 2 or not -y.dim() <= axis < y.dim() - 1 or y.shape[axis] != n:
                expected = f"a layer axis of size num_targets={n} at dim {axis} (not the last)"
                raise ValueError(f"y must be {_layout(widths, layer_dim)}: {expected}, got shape {tuple(y.shape)}")
            views = [y.select(axis, i) for i in range(n)]
            names = [f"y.select({axis}, {i})" for i in range(n)]
    for name, view, width in zip(names, views, widths):
        if not isinstance(view, torch.Tensor):
            raise TypeError(f"{name} must be a tensor, got {type(view).__name__}")
        if not view.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got {view.dtype}")
        if view.dim() < 1 or view.shape[-1] != width or not _tokens_match(h_lead, view.shape[:-1]):
            raise ValueError(f"{name} must be {_layout(widths, layer_dim)} with token axes {tuple(h_lead)} "
                             f"(those of h) and last dimension {width}, got {tuple(view.shape)}")
        if view.device != device:
            raise ValueError(f"{name} is on {view.device} but h is on {device}")
    return views


def rows(view: torch.Tensor) -> torch.Tensor:
    """[N, D]: a view where the layout allows one, else a copy of this one target."""
    return view.reshape(-1, view.shape[-1])


def take_rows(view: torch.Tensor, start: int, stop: int) -> torch.Tensor:
    """Rows [start, stop) of view's flattened token axes, copying at most those rows."""
    if view.dim() <= 2:
        return view[start:stop]
    try:
        return view.view(-1, view.shape[-1])[start:stop]
    except RuntimeError:  # strided token axes (a layer axis was selected away): walk the outer axis
        pass
    inner = math.prod(view.shape[1:-1])
    pieces = []
    for block in range(start // inner, -(-stop // inner)):
        lo, hi = max(start, block * inner), min(stop, (block + 1) * inner)
        pieces.append(take_rows(view[block], lo - block * inner, hi - block * inner))
    return pieces[0] if len(pieces) == 1 else torch.cat(pieces)


def kept_tokens(mask, h_lead: Sequence[int], device: torch.device) -> Optional[torch.Tensor]:
    """The flattened indices of the tokens `mask` keeps (None: all of them)."""
    if mask is None:
        return None
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
        found = mask.dtype if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise TypeError(f"mask must be a bool tensor of shape {tuple(h_lead)} (the token axes of h), got {found}")
    if tuple(mask.shape) != tuple(h_lead):
        raise ValueError(f"mask must have shape {tuple(h_lead)} (the token axes of h), got {tuple(mask.shape)}")
    keep = mask.to(device).reshape(-1).nonzero().squeeze(1)
    if keep.numel() == 0:
        raise ValueError("mask keeps no token: the loss over zero tokens is undefined")
    return keep
