"""Hidden states of any nn.Module by name, through a forward hook: no edit of its forward.

    hidden = gfcore.capture(model, "blocks.7")   # once, after building the model
    out = model(x, t)                            # as usual (compiled, checkpointed, ...)
    h = hidden.pop()                             # blocks.7's output of that forward
    loss = diffusion_loss + align(h, teacher_features)

The hook keeps the output of the named submodule's latest call; `pop()` hands it over once.
Names follow `model.named_modules()`; the prefixes that wrappers add (`_orig_mod.` from
torch.compile, `module.` from DDP) may be left out. Activation checkpointing works when
use_reentrant=False, and with use_reentrant=True when the captured module is the checkpointed
one; a module *inside* a reentrant checkpointed segment runs without autograd, so its output has
no graph and a loss on it would train nothing: `pop()` refuses it.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

_WRAPPER_ATTRIBUTES = ("_orig_mod", "module")  # torch.compile's OptimizedModule, DDP / FSDP1


def _find_submodule(model: nn.Module, name: str) -> nn.Module:
    """model's submodule `name`, looking through torch.compile / DDP wrappers."""
    current = model
    while True:
        try:
            return current.get_submodule(name)
        except AttributeError:
            inner = next((getattr(current, a) for a in _WRAPPER_ATTRIBUTES
                          if isinstance(getattr(current, a, None), nn.Module)), None)
            if inner is None:
                break
            current = inner
    names = [n for n, _ in current.named_modules() if n]
    close = [n for n in names if n.split(".")[0] == name.split(".")[0]][:8] or names[:8]
    raise ValueError(f"capture: {type(model).__name__} has no submodule {name!r}; some of its names: {close}")


class Capture:
    """The outputs of one submodule, caught by a forward hook (see the module docstring)."""

    def __init__(self, model: nn.Module, name: str, index: Optional[int] = None):
        if not isinstance(model, nn.Module):
            raise TypeError(f"capture: model must be an nn.Module, got {type(model).__name__}")
        self.name, self.index = name, index
        self.module = _find_submodule(model, name)
        self._value: Optional[torch.Tensor] = None
        self._handle = self.module.register_forward_hook(self._hook)

    def _hook(self, module, args, output):
        self._value = output

    def pop(self) -> torch.Tensor:
        """The submodule's output from the latest forward, handed over once (then cleared)."""
        value, self._value = self._value, None
        if value is None:
            raise RuntimeError(f"capture: {self.name!r} has not run since the last pop(): call the model first "
                               f"(and check that its forward reaches {self.name!r})")
        if self.index is not None:
            value = value[self.index]
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"capture: {self.name!r} returns a {type(value).__name__}; pass index=i to take its "
                            f"i-th element")
        params_need_grad = any(p.requires_grad for p in self.module.parameters())
        if params_need_grad and self.module.training and torch.is_grad_enabled() and not value.requires_grad:
            raise RuntimeError(
                f"capture: {self.name!r}'s output has no autograd graph although its parameters need gradients: "
                f"it ran without autograd (inside a segment of torch.utils.checkpoint with use_reentrant=True, "
                f"which runs its forward that way), so a loss on it would train nothing. Use use_reentrant=False, "
                f"or capture the checkpointed module itself.")
        return value

    def remove(self) -> None:
        """Detach the hook (the model runs as if never captured)."""
        self._handle.remove()
        self._value = None

    def __enter__(self) -> "Capture":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


def capture(model: nn.Module, name: str, index: Optional[int] = None) -> Capture:
    """Capture the output of `model`'s submodule `name` on every forward (see Capture).

    index: for a submodule that returns a tuple, the element to take.
    """
    return Capture(model, name, index)


__all__ = ["Capture", "capture"]
