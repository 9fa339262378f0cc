import pytest
import torch
import torch.utils._python_dispatch

import gfcore

requires_cuda_kernels = pytest.mark.skipif(
    not (torch.cuda.is_available() and gfcore.backends()["cuda"]),
    reason="needs a GPU and gfcore built with its CUDA kernels")

requires_cpu_kernels = pytest.mark.skipif(
    not gfcore.backends()["cpu"], reason="needs the compiled extension (pip install --no-build-isolation .)")


def rel_err(a: torch.Tensor, ref: torch.Tensor) -> float:
    """||a - ref|| / ||ref|| in float64 (the method's accuracy measure)."""
    a, ref = a.detach().double(), ref.detach().double()
    return float((a - ref).norm() / ref.norm().clamp_min(1e-300))


def pytest_report_header(config):
    return f"gfcore from {gfcore.__file__}, compiled backends {gfcore.backends()}"


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def single_thread():
    """Tests of many small tensor ops run far faster on one thread than with threads handing
    work back and forth on a busy 2-core machine (0.03 s vs 1.8 s per flow field, measured);
    the setting is restored for the other modules."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def saved_bytes(fn):
    """(fn()'s result, bytes of the tensors autograd keeps for the backward while fn() runs);
    tensors saved inside checkpointed regions are not kept, so they do not count."""
    total = [0]

    def pack(t):
        total[0] += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, total[0]


class LargestAllocation(torch.utils._python_dispatch.TorchDispatchMode):
    """The most values any tensor an aten op returns holds while active (of `dtypes`, when given):
    a full-size copy the code under test promises not to make shows here."""

    def __init__(self, dtypes=None):
        super().__init__()
        self.dtypes, self.largest = dtypes, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor) and (self.dtypes is None or t.dtype in self.dtypes):
                self.largest = max(self.largest, t.numel())
        return out


def record_nvtx_ranges(monkeypatch, module) -> list:
    """Replace module.nvtx_range by a recorder; returns the list the range names go into."""
    ranges = []

    class Recorder:
        def __init__(self, name):
            ranges.append(name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(module, "nvtx_range", Recorder)
    return ranges
