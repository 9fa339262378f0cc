"""gfcore.metrics.weights: where metric weights are looked for, and how they are read."""
import types
import warnings
from pathlib import Path

import pytest
import torch

from gfcore.io.safe_load import UnsafeFileError, sha256_of
from gfcore.metrics import weights
from gfcore.metrics.weights import (WeightsUnavailable, find_first, load_state_dict_file, load_torchscript,
                                    lpips_package_weight_dir, torch_hub_checkpoint_dir)


def test_torch_hub_checkpoint_dir_follows_torch_home(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    assert torch_hub_checkpoint_dir() == tmp_path / "hub" / "checkpoints"  # torch.hub's documented layout


def test_find_first_skips_missing_and_none(tmp_path):
    real = tmp_path / "b.pth"
    real.write_bytes(b"x")
    assert find_first([None, tmp_path / "a.pth", real, tmp_path / "c.pth"]) == real
    assert find_first([None, tmp_path / "a.pth"]) is None


def test_lpips_package_weight_dir(monkeypatch, tmp_path):
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    assert lpips_package_weight_dir() is None
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: types.SimpleNamespace(origin=None))
    assert lpips_package_weight_dir() is None
    package = tmp_path / "lpips"
    package.mkdir()
    spec = types.SimpleNamespace(origin=str(package / "__init__.py"))
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: spec)
    assert lpips_package_weight_dir() is None  # installed without its weights folder
    (package / "weights" / "v0.1").mkdir(parents=True)
    assert lpips_package_weight_dir() == package / "weights" / "v0.1"


def test_load_state_dict_file_messages(tmp_path):
    with pytest.raises(WeightsUnavailable, match=rf"^LPIPS: file not found: {tmp_path / 'absent.pth'}$"):
        load_state_dict_file(tmp_path / "absent.pth", "LPIPS")
    listed = tmp_path / "list.pth"
    torch.save([1, 2], listed)
    with pytest.raises(ValueError, match=rf"^LPIPS: {listed} holds a list, expected a state_dict$"):
        load_state_dict_file(listed, "LPIPS")
    path = tmp_path / "odd.pth"
    torch.save({"where": Path("/a")}, path)
    with pytest.raises(UnsafeFileError, match=rf"^LPIPS weights {str(path)!r}: refused, not loaded"):
        load_state_dict_file(path, "LPIPS weights")


class _Double(torch.nn.Module):
    def forward(self, x):
        return 2 * x


def test_load_torchscript_defaults_refuse_and_load_on_the_cpu_quietly(tmp_path, monkeypatch):
    path = tmp_path / "net.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.script(_Double()).save(str(path))
    with pytest.raises(UnsafeFileError, match="--trust-weights"):
        load_torchscript(path, "net", "--net", network="i3d")  # trust defaults to False
    monkeypatch.setitem(weights.PUBLISHED_SHA256, "i3d", sha256_of(path))  # as if this were the published file
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch.jit.load's deprecation notice is not passed on
        net = load_torchscript(path, "net", "--net", network="i3d")  # device defaults to the CPU
    assert not net.training
    torch.testing.assert_close(net(torch.ones(2)), torch.full((2,), 2.0))
