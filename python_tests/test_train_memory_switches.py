"""Memory switches that must not change what a run computes: train.ema_device=cpu (the EMA of
the weights held in host memory). On this CPU-only machine auto is the CPU too, so the values
must be bit-identical; what the switch changes (where the averages live) is checked through
the EMA the trainer builds and in test_train_optim.py. FSDP: test_train_fsdp.py."""
import json
import os

import pytest
import torch

import gfcore.train.trainer as trainer
from gfcore.io.checkpoint_file import read_checkpoint
from gfcore.train import load_config, train
from gfcore.train.optim import EMA
from trainer_helpers import one_torch_thread, tiny_data_root, tiny_overrides  # noqa: F401  (fixtures)

EXTRA = ["teacher=pointmap", "train.steps=4"]


def _run(tmp_path, name, tiny_data_root, *extra):  # noqa: F811
    out = str(tmp_path / name)
    train(load_config(tiny_overrides(tiny_data_root, out, *EXTRA, *extra)))
    return out


def _records(out):
    with open(os.path.join(out, "log.jsonl")) as handle:
        return [json.loads(line) for line in handle if line.strip()]


def _assert_same_run(a, b, checkpoints=("step_00000002.pt", "step_00000004.pt")):
    """Bit-identical logs, final weights and EMA, and checkpoints."""
    strip = ("samples_per_s", "achieved_tflops", "mfu")
    assert ([{k: v for k, v in r.items() if k not in strip} for r in _records(a) if "event" not in r]
            == [{k: v for k, v in r.items() if k not in strip} for r in _records(b) if "event" not in r])
    files = [("final.pt", ("model", "ema"))] + [(os.path.join("checkpoints", c), ("model", "ema", "objective"))
                                                for c in checkpoints]
    for name, parts in files:
        x, y = read_checkpoint(os.path.join(a, name)), read_checkpoint(os.path.join(b, name))
        for part in parts:
            state_x, state_y = x[part], y[part]
            if "shadow" in state_x:  # a checkpoint's EMA state (final.pt holds the EMA weights)
                state_x, state_y = state_x["shadow"], state_y["shadow"]
            assert state_x.keys() == state_y.keys()
            for key in state_x:
                assert torch.equal(state_x[key], state_y[key]), (name, part, key)


def test_ema_on_the_cpu_gives_the_same_run(tmp_path, tiny_data_root, monkeypatch):  # noqa: F811
    """ema_device=cpu: the trainer's EMA holds its averages on the CPU; weights, EMA, checkpoints
    and logs bit-identical to the default run."""
    built = []
    monkeypatch.setattr(trainer, "EMA", lambda *args, **kwargs: built.append(kwargs) or EMA(*args, **kwargs))
    default = _run(tmp_path, "default", tiny_data_root)
    held = _run(tmp_path, "cpu", tiny_data_root, "train.ema_device=cpu")
    assert [kwargs["device"] for kwargs in built] == [None, torch.device("cpu")]
    _assert_same_run(default, held)


def test_a_resume_may_switch_the_ema_device(tmp_path, tiny_data_root):  # noqa: F811
    """Steps 1-2 with the EMA on the CPU, 3-4 resumed with ema_device=auto (a free key: no
    resume_allow_changes needed): the same run as 4 steps with the default."""
    straight = _run(tmp_path, "straight", tiny_data_root)
    out = str(tmp_path / "switched")
    train(load_config(tiny_overrides(tiny_data_root, out, *EXTRA, "train.steps=2", "train.ema_device=cpu")))
    train(load_config(tiny_overrides(tiny_data_root, out, *EXTRA, "train.ema_device=auto")))
    resumes = [r for r in _records(out) if r.get("event") == "resume"]
    assert len(resumes) == 1 and resumes[0]["step"] == 2 and resumes[0]["changes"] == {}
    _assert_same_run(straight, out, checkpoints=("step_00000004.pt",))


def test_bad_ema_device_is_one_line_naming_the_key(tmp_path, tiny_data_root):  # noqa: F811
    out = tmp_path / "run"
    with pytest.raises(ValueError) as error:
        train(load_config(tiny_overrides(tiny_data_root, str(out), "train.ema_device=gpu0")))
    assert str(error.value) == "train.ema_device must be auto or cpu, got 'gpu0'"
    assert not out.exists()  # refused before the run folder is touched

