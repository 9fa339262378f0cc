"""Atomic checkpoints, resume=auto, and a killed-then-resumed run matching an uninterrupted one."""
import json
import os
import re

import pytest
import torch

from gfcore.train import load_config, train
from gfcore.train.checkpoint import latest_checkpoint, list_checkpoints, save_checkpoint
from gfcore.train.trainer import CrashForTesting
from trainer_helpers import one_torch_thread, tiny_data_root, tiny_overrides  # noqa: F401  (fixtures)


def test_checkpoints_are_atomic_and_damaged_ones_skipped(tmp_path):
    for step in (1, 2, 3):
        save_checkpoint(str(tmp_path), step, {"step": step, "w": torch.full((3,), float(step))}, keep_last=2)
    assert [s for s, _ in list_checkpoints(str(tmp_path))] == [2, 3]
    assert not [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]
    # a crash mid-write leaves a temp file, never a half-written step file; it is ignored
    (tmp_path / "step_00000004.pt.123.tmp").write_bytes(b"partial")
    # a damaged newest file (disk trouble) falls back to the previous one
    (tmp_path / "step_00000005.pt").write_bytes(b"not a checkpoint")
    with pytest.warns(UserWarning, match="step_00000005"):
        path, state = latest_checkpoint(str(tmp_path))
    assert state["step"] == 3 and path.endswith("step_00000003.pt")


def test_checkpoint_files_names_and_pruning(tmp_path):
    from gfcore.train.checkpoint import atomic_save, checkpoint_path

    assert checkpoint_path("/ckpt", 12) == "/ckpt/step_00000012.pt"
    assert list_checkpoints(str(tmp_path / "missing")) == [] and latest_checkpoint(str(tmp_path / "missing")) is None
    nested = tmp_path / "a" / "b" / "state.pt"
    assert atomic_save({"x": torch.arange(3)}, str(nested)) == str(nested)  # folders are created
    assert torch.equal(torch.load(nested)["x"], torch.arange(3)) and os.listdir(nested.parent) == ["state.pt"]
    # keep_last=0 keeps every file; only exact step_XXXXXXXX.pt names count, sorted by step
    for step in (3, 1, 12):
        save_checkpoint(str(tmp_path), step, {"step": step}, keep_last=0)
    for name in ("step_1.pt", "step_00000002.pt.bak", "xstep_00000004.pt", "step_00000005.pth"):
        (tmp_path / name).write_bytes(b"")
    assert list_checkpoints(str(tmp_path)) == [(s, str(tmp_path / f"step_{s:08d}.pt")) for s in (1, 3, 12)]
    path, state = latest_checkpoint(str(tmp_path))
    assert state == {"step": 12} and path.endswith("step_00000012.pt")
    save_checkpoint(str(tmp_path), 13, {"step": 13}, keep_last=1)
    assert [s for s, _ in list_checkpoints(str(tmp_path))] == [13]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert latest_checkpoint(str(empty)) is None


def test_rng_state_round_trip():
    import random

    import numpy as np

    from gfcore.train.checkpoint import rng_state, set_rng_state

    state = rng_state()
    first = (random.random(), float(np.random.rand()), float(torch.rand(())))
    set_rng_state(state)
    assert (random.random(), float(np.random.rand()), float(torch.rand(()))) == first
    assert set(state) >= {"python", "numpy", "torch"}


def test_rng_state_carries_the_cuda_generators(monkeypatch):
    """On a CUDA machine the checkpoint holds every device's generator state under "cuda" and a
    resume restores it; a CPU run's checkpoint (no "cuda") leaves them alone, and a CUDA entry
    is ignored where there is no CUDA. The CUDA generator API is faked: the bookkeeping is checked."""
    from gfcore.train.checkpoint import rng_state, set_rng_state

    cuda_states = [torch.tensor([1, 2, 3], dtype=torch.uint8), torch.tensor([4], dtype=torch.uint8)]
    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: cuda_states)
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", restored.append)
    state = rng_state()
    assert state["cuda"] is cuda_states and set(state) == {"python", "numpy", "torch", "cuda"}
    set_rng_state(state)
    assert restored == [cuda_states]
    set_rng_state({k: v for k, v in state.items() if k != "cuda"})
    assert len(restored) == 1
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    set_rng_state(state)
    assert len(restored) == 1 and "cuda" not in rng_state()


def test_default_keeps_two_and_unreadable_files_say_why(tmp_path):
    from gfcore.train.checkpoint import find_resumable

    for step in (1, 2, 3):
        save_checkpoint(str(tmp_path), step, {"step": step})  # keep_last's default: the newest two
    assert [s for s, _ in list_checkpoints(str(tmp_path))] == [2, 3]
    (tmp_path / "step_00000009.pt").write_bytes(b"not a checkpoint")
    found, unreadable = find_resumable(str(tmp_path))
    assert found[1] == {"step": 3}
    [(path, why)] = unreadable
    assert path.endswith("step_00000009.pt")
    assert re.match(r"^[A-Za-z]*Error: \S", why), why  # the exception's type, then its message


def test_quarantine_never_overwrites_an_earlier_corrupt_file(tmp_path):
    from gfcore.train.checkpoint import quarantine

    path = tmp_path / "step_00000004.pt"
    names = []
    for content in (b"first", b"second", b"third"):
        path.write_bytes(content)
        names.append(os.path.basename(quarantine(str(path))))
    assert names == ["step_00000004.pt.corrupt", "step_00000004.pt.corrupt.1", "step_00000004.pt.corrupt.2"]
    assert not path.exists()
    assert [(tmp_path / n).read_bytes() for n in names] == [b"first", b"second", b"third"]


def _final(out_dir):
    return torch.load(os.path.join(out_dir, "final.pt"), weights_only=False)


def _log(out_dir):
    """The metric records of log.jsonl (resume events left out)."""
    with open(os.path.join(out_dir, "log.jsonl")) as handle:
        return [r for r in (json.loads(line) for line in handle) if "event" not in r]


@pytest.mark.parametrize("teacher", ["pointmap"])
def test_killed_run_resumes_bit_identical(tmp_path, tiny_data_root, teacher):  # noqa: F811
    straight = str(tmp_path / "straight")
    train(load_config(tiny_overrides(tiny_data_root, straight, f"teacher={teacher}")))

    interrupted = str(tmp_path / "interrupted")
    # killed after step 3: the newest checkpoint is step 2, step 3's work is lost
    with pytest.raises(CrashForTesting):
        train(load_config(tiny_overrides(tiny_data_root, interrupted, f"teacher={teacher}", "train.crash_after_step=3")))
    assert [s for s, _ in list_checkpoints(os.path.join(interrupted, "checkpoints"))] == [2]
    assert not os.path.exists(os.path.join(interrupted, "final.pt"))
    summary = train(load_config(tiny_overrides(tiny_data_root, interrupted, f"teacher={teacher}")))
    assert summary["resumed_from"] == 2

    a, b = _final(straight), _final(interrupted)
    for part in ("model", "ema"):
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key]), f"{part}.{key} differs after resume"
    ckpt_a = torch.load(os.path.join(straight, "checkpoints", "step_00000006.pt"), weights_only=False)
    ckpt_b = torch.load(os.path.join(interrupted, "checkpoints", "step_00000006.pt"), weights_only=False)
    for key, value in ckpt_a["objective"].items():  # projector and head too
        assert torch.equal(value, ckpt_b["objective"][key])
    assert ckpt_a["optimizer"]["state"].keys() == ckpt_b["optimizer"]["state"].keys()
    for key, value in ckpt_a["optimizer"]["state"].items():
        assert torch.equal(value["exp_avg_sq"], ckpt_b["optimizer"]["state"][key]["exp_avg_sq"])
    # the log holds each step once, with the same losses
    log_a, log_b = _log(straight), _log(interrupted)
    assert [r["step"] for r in log_b] == [1, 2, 3, 4, 5, 6]
    assert [r["loss"] for r in log_a] == [r["loss"] for r in log_b]
    assert {"diffusion", "angular", "scale", "cosine", "samples_per_s", "mfu", "lr", "grad_norm"} <= set(log_a[-1])
    assert log_a[-1]["teacher"] == "oracle pointmap teacher"


def test_resume_restores_the_cosine_lr_schedule(tmp_path, tiny_data_root):  # noqa: F811
    """A cosine schedule resumed mid-way continues where it was: the logged lr of step s is
    lr * (1 + cos(pi (s - w) / (S - w))) / 2 (warmup w = 1, S = 6 steps), before and after the crash,
    and the resumed weights equal the uninterrupted ones."""
    import math

    extra = ("teacher=none", "train.lr_decay=cosine", "train.warmup_steps=1", "train.lr=0.01")
    straight = str(tmp_path / "straight")
    train(load_config(tiny_overrides(tiny_data_root, straight, *extra)))
    interrupted = str(tmp_path / "interrupted")
    with pytest.raises(CrashForTesting):
        train(load_config(tiny_overrides(tiny_data_root, interrupted, *extra, "train.crash_after_step=3")))
    assert train(load_config(tiny_overrides(tiny_data_root, interrupted, *extra)))["resumed_from"] == 2
    expected = [0.01 * 0.5 * (1 + math.cos(math.pi * (step - 1) / 5)) for step in range(1, 7)]
    for out in (straight, interrupted):
        assert [r["step"] for r in _log(out)] == [1, 2, 3, 4, 5, 6]
        assert [r["lr"] for r in _log(out)] == pytest.approx(expected, rel=1e-12, abs=1e-15)
    a, b = _final(straight), _final(interrupted)
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), f"model.{key} differs after resume"


def test_resume_none_starts_over_and_finished_run_is_a_no_op(tmp_path, tiny_data_root):  # noqa: F811
    out = str(tmp_path / "run")
    overrides = tiny_overrides(tiny_data_root, out, "teacher=none", "train.steps=2")
    train(load_config(overrides))
    assert train(load_config(overrides))["resumed_from"] == 2  # resume=auto: nothing left to do
    assert train(load_config(overrides + ["train.resume=none"]))["resumed_from"] == 0
    with pytest.raises(FileNotFoundError, match="train.resume"):
        train(load_config(overrides + [f"train.resume={tmp_path}/missing.pt"]))


def test_sigkilled_process_resumes_bit_identical(tmp_path, tiny_data_root):  # noqa: F811
    """A real `gfcore train` process killed with SIGKILL right after its first checkpoint, then resumed."""
    import signal
    import subprocess
    import sys
    import time

    extra = ("teacher=pointmap", "train.steps=60", "train.ckpt_every=2", "train.log_every=5")
    straight = str(tmp_path / "straight")
    train(load_config(tiny_overrides(tiny_data_root, straight, *extra)))

    killed = str(tmp_path / "killed")
    # The child must import the very gfcore this test imported (installed, or the checkout with
    # its in-place build): another copy may lack the compiled kernels and round differently.
    # Hence PYTHONPATH below, and a cwd outside the checkout (`python -m` puts the cwd first).
    import gfcore

    root = os.path.dirname(os.path.dirname(os.path.abspath(gfcore.__file__)))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    process = subprocess.Popen([sys.executable, "-m", "gfcore", "train", *tiny_overrides(tiny_data_root, killed, *extra)],
                               env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt_dir = os.path.join(killed, "checkpoints")
    deadline = time.time() + 60
    while not list_checkpoints(ckpt_dir) and process.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    assert not os.path.exists(os.path.join(killed, "final.pt"))
    summary = train(load_config(tiny_overrides(tiny_data_root, killed, *extra)))
    assert 0 < summary["resumed_from"] < 60
    a, b = _final(straight), _final(killed)
    for part in ("model", "ema"):
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key]), f"{part}.{key} differs after SIGKILL + resume"
    assert [r["loss"] for r in _log(straight)] == [r["loss"] for r in _log(killed)]
