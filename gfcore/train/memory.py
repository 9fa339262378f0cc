"""Live tensor bytes by owner: the accounting behind `gfcore plan` (gfcore.train.plan).

LiveTensorBytes is a TorchDispatchMode that sees every tensor an operator returns, on real or
fake tensors (torch._subclasses.FakeTensorMode: shapes and dtypes, no data). Each new storage
is counted once, under the label that is current when it is allocated, until it is freed (a
weak reference to the storage says when); storage resizes (FSDP frees and refills its gather
buffers that way) change the count in place. `peak` is the largest total of live bytes,
`peak_by_label` how it split at that moment.

Labels come from `with tracker.label(name)`, from the trainer's NVTX ranges (gfcore.nvtx
listeners: train.teacher, train.forward, train.backward, train.optimizer) and from module
hooks (`label_module`), innermost first. `relabel` moves a live tensor's bytes to another label
(parameters after FSDP sharded them, gradients once accumulated).
"""
from __future__ import annotations

import contextlib
import weakref
from collections import defaultdict
from typing import Dict, Iterator, List, Optional

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from gfcore import nvtx


class LiveTensorBytes(TorchDispatchMode):
    """Counts the bytes of live tensor storages by label (see the module docstring)."""

    def __init__(self, default_label: str = "other", range_labels: Optional[Dict[str, str]] = None,
                 host_labels=()):
        """host_labels: labels of tensors the run keeps in host memory (an EMA or FSDP state offloaded
        to the CPU): listed in by_label, left out of total and peak (the device's bytes)."""
        super().__init__()
        self.host_labels = frozenset(host_labels)
        self._live: Dict[int, List] = {}      # id(storage) -> [bytes, label]
        self.by_label: Dict[str, int] = defaultdict(int)
        self.total = 0
        self.peak = 0
        self.peak_by_label: Dict[str, int] = {}
        self.peak_context: List[str] = []
        self._labels: List[str] = [default_label]
        self._range_labels = dict(range_labels or {})
        self._original_resize = None

    # ------------------------------------------------------------------ counting
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for leaf in tree_leaves(out):
            if isinstance(leaf, torch.Tensor):
                self.track(leaf)
        return out

    def track(self, tensor: torch.Tensor, label: Optional[str] = None) -> None:
        """Count tensor's storage (once) under `label` (default: the current one)."""
        storage = _storage(tensor)
        if storage is None:
            return
        key = id(storage)
        if key in self._live:
            return
        nbytes = int(storage.nbytes())
        self._live[key] = [nbytes, label or self._labels[-1]]
        weakref.finalize(storage, self._free, key)
        self._add(self._live[key][1], nbytes)

    def relabel(self, tensor: torch.Tensor, label: str) -> None:
        """Move a tensor's storage to `label` (counting it first if it is not yet)."""
        storage = _storage(tensor)
        if storage is None:
            return
        entry = self._live.get(id(storage))
        if entry is None:
            self.track(tensor, label)
            return
        self._sub(entry[1], entry[0])
        entry[1] = label
        self._add(label, entry[0])

    def _add(self, label: str, nbytes: int) -> None:
        self.by_label[label] += nbytes
        if label in self.host_labels:
            return
        self.total += nbytes
        if self.total > self.peak:
            self.peak = self.total
            self.peak_by_label = {k: v for k, v in self.by_label.items() if v and k not in self.host_labels}
            self.peak_context = list(self._labels)

    def _sub(self, label: str, nbytes: int) -> None:
        self.by_label[label] -= nbytes
        if label not in self.host_labels:
            self.total -= nbytes

    def _free(self, key: int) -> None:
        entry = self._live.pop(key, None)
        if entry is not None:
            self._sub(entry[1], entry[0])

    def _resized(self, storage, nbytes: int) -> None:
        entry = self._live.get(id(storage))
        if entry is None:
            return
        delta = int(nbytes) - entry[0]
        entry[0] = int(nbytes)
        if delta > 0:
            self._add(entry[1], delta)
        else:
            self._sub(entry[1], -delta)

    def reset_peak(self) -> None:
        """The peak from now on (the live bytes now are its floor)."""
        self.peak = self.total
        self.peak_by_label = {k: v for k, v in self.by_label.items() if v and k not in self.host_labels}
        self.peak_context = list(self._labels)

    # ------------------------------------------------------------------ labels
    @contextlib.contextmanager
    def label(self, name: str) -> Iterator[None]:
        self._labels.append(name)
        try:
            yield
        finally:
            self._labels.pop()

    def _on_range(self, name: str, entering: bool) -> None:
        label = self._range_labels.get(name)
        if label is None:
            return
        if entering:
            self._labels.append(label)
        elif self._labels[-1] == label:
            self._labels.pop()

    def label_module(self, module: torch.nn.Module, name: str) -> None:
        """Tensors made inside module.forward are counted under `name`."""
        def enter(*_):
            self._labels.append(name)

        def leave(*_):  # returns None: a forward hook's return value would replace the output
            if self._labels[-1] == name:
                self._labels.pop()

        module.register_forward_pre_hook(enter)
        module.register_forward_hook(leave)

    # ------------------------------------------------------------------ mode
    def __enter__(self):
        tracker = self
        self._original_resize = original = torch.UntypedStorage.resize_

        def resize_(storage, size):
            out = original(storage, size)
            tracker._resized(storage, size)
            return out

        torch.UntypedStorage.resize_ = resize_
        self._listening = nvtx.listening(self._on_range)
        self._listening.__enter__()
        return super().__enter__()

    def __exit__(self, *exc):
        try:
            return super().__exit__(*exc)
        finally:
            self._listening.__exit__(*exc)
            torch.UntypedStorage.resize_ = self._original_resize


def _storage(tensor: torch.Tensor):
    if tensor.device.type == "meta":
        return None
    local = tensor.to_local() if hasattr(tensor, "to_local") else tensor  # a DTensor: its shard
    try:
        return local.untyped_storage()
    except (NotImplementedError, RuntimeError):  # e.g. a tensor subclass without storage
        return None


__all__ = ["LiveTensorBytes"]
