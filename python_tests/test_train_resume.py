"""Atomic checkpoints, resume=auto, and a killed-then-resumed run matching an uninterrupted one."""
import json
import math
import os
import re

import pytest
import torch

from gfcore.io.checkpoint_file import read_checkpoint
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
    return read_checkpoint(os.path.join(out_dir, "final.pt"))


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
    ckpt_a = read_checkpoint(os.path.join(straight, "checkpoints", "step_00000006.pt"))
    ckpt_b = read_checkpoint(os.path.join(interrupted, "checkpoints", "step_00000006.pt"))
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


# -- the resume path's pieces, unit by unit -------------------------------------------------


def _write_lines(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def test_jsonl_log_keeps_what_a_resume_needs(tmp_path):
    """On resume at step s: metric records up to s, every event (history, whatever its step) and
    records without a step are kept; later metrics and everything after a cut line are dropped.
    A fresh start (step 0) empties the file."""
    from gfcore.train.trainer import JsonlLog

    records = [{"note": "no step"}, {"step": 1, "loss": 1.0}, {"event": "resume", "step": 5},
               {"step": 2, "loss": 0.5}, {"step": 3, "loss": 0.25}]
    path = tmp_path / "log.jsonl"
    _write_lines(path, records)
    JsonlLog(str(path), 1, True)  # resume at step 1 (a 1 is a real step, not "fresh")
    assert [json.loads(line) for line in path.read_text().splitlines()] == records[:3]
    _write_lines(path, records)
    with open(path, "a") as handle:
        handle.write('{"step": 4, "lo')  # cut by the crash
        handle.write('\n{"step": 1, "after": "the cut"}\n')
    JsonlLog(str(path), 2, True)
    assert [json.loads(line) for line in path.read_text().splitlines()] == records[:4]
    _write_lines(path, records)
    JsonlLog(str(path), 0, True)  # a fresh start: nothing of the earlier attempt is kept
    assert path.read_text() == ""


def test_jsonl_log_last_is_the_newest_metric_record(tmp_path):
    from gfcore.train.trainer import JsonlLog

    path = tmp_path / "log.jsonl"
    log = JsonlLog(str(path), 0, True)
    assert log.last() == {}
    log.write({"event": "start", "step": 0})
    assert log.last() == {}  # events are not metrics
    log.write({"step": 1, "loss": 1.0})
    log.write({"step": 2, "loss": 0.5})
    log.write({"event": "resume", "step": 2})
    assert log.last() == {"step": 2, "loss": 0.5}


def _trained_optimizer(lr, warmup, steps, decay, steps_done):
    """An AdamW + schedule as train() builds them, stepped steps_done times: the checkpoint side."""
    from gfcore.train.optim import build_optimizer, build_scheduler

    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    optimizer = build_optimizer(model.parameters(), lr, 0.01, (0.9, 0.999))
    scheduler = build_scheduler(optimizer, warmup, steps, decay)
    for _ in range(steps_done):
        model(torch.randn(4, 3)).square().sum().backward()
        optimizer.step()
        scheduler.step()
    return model, optimizer, scheduler


@pytest.mark.parametrize("decay,steps_done,factor,next_factor", [
    ("constant", 1, 2 / 4, 3 / 4),  # warmup 4: factor (step + 1) / 4
    ("cosine", 6, 0.5 * (1 + math.cos(math.pi * 2 / 6)), 0.5 * (1 + math.cos(math.pi * 3 / 6))),
])
def test_apply_hyperparameters_by_hand(decay, steps_done, factor, next_factor):
    """Resuming with a changed lr, betas, weight decay and EMA decay: this step's lr is the new lr
    times the schedule's factor (by hand: warmup (s + 1) / 4, then cosine 0.5 (1 + cos(pi p)) over
    steps 4..10), the next step's too; the scheduler reports it, and a scheduler rebuilt from the
    optimizer (initial_lr) starts from the new lr. Old lr 4e-3, new 1e-3: the old group lr at
    factor 1/2 is 2e-3 = new lr / factor exactly (a factor applied the wrong way round would pass)."""
    from omegaconf import OmegaConf

    from gfcore.train.optim import EMA, build_optimizer, build_scheduler
    from gfcore.train.trainer import _apply_hyperparameters

    old_model, old_opt, old_sched = _trained_optimizer(4e-3, 4, 10, decay, steps_done)
    cfg = OmegaConf.create({"train": {"lr": 1e-3, "betas": [0.8, 0.95], "weight_decay": 0.1, "ema_decay": 0.9}})
    # the resumed run, as train() makes it: built from the config, then loaded from the checkpoint
    model = torch.nn.Linear(3, 2)
    optimizer = build_optimizer(model.parameters(), 1e-3, 0.1, (0.8, 0.95))
    scheduler = build_scheduler(optimizer, 4, 10, decay)
    optimizer.load_state_dict(old_opt.state_dict())
    scheduler.load_state_dict(old_sched.state_dict())
    ema = EMA(model, 0.5)
    _apply_hyperparameters(cfg, optimizer, scheduler, ema)
    (group,) = optimizer.param_groups
    assert group["lr"] == pytest.approx(1e-3 * factor, rel=1e-12) and scheduler.get_last_lr() == [group["lr"]]
    assert tuple(group["betas"]) == (0.8, 0.95) and group["weight_decay"] == 0.1 and ema.decay == 0.9
    rebuilt = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0, last_epoch=steps_done)
    assert rebuilt.base_lrs == [1e-3]
    optimizer.step()
    scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-3 * next_factor, rel=1e-12)


def test_apply_hyperparameters_plain_resume_changes_nothing():
    """The same config as the checkpoint's: every value stays bit for bit (lr, betas, decay, EMA)."""
    from omegaconf import OmegaConf

    from gfcore.train.optim import EMA
    from gfcore.train.trainer import _apply_hyperparameters

    model, optimizer, scheduler = _trained_optimizer(4e-3, 4, 10, "cosine", 6)
    before = [dict(g, params=None) for g in optimizer.param_groups]
    ema = EMA(model, 0.5)
    cfg = OmegaConf.create({"train": {"lr": 4e-3, "betas": [0.9, 0.999], "weight_decay": 0.01, "ema_decay": 0.5}})
    _apply_hyperparameters(cfg, optimizer, scheduler, ema)
    assert [dict(g, params=None) for g in optimizer.param_groups] == before and ema.decay == 0.5


def _named_optimizer_state(model, optimizer):
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return get_optimizer_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True))


def test_load_optimizer_maps_the_state_by_parameter_name_and_reads_old_checkpoints():
    """Named optimizer state (the checkpoint format) is matched to parameters by name, not by
    position: two same-shape layers listed in the other order still get their own moments. A
    checkpoint from before names were used (integer keys) loads by position."""
    import copy

    from gfcore.train.optim import build_optimizer
    from gfcore.train.trainer import _load_optimizer

    torch.manual_seed(0)
    source = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Linear(3, 3))
    opt = build_optimizer(source.parameters(), 1e-3, 0.0)
    source(torch.randn(4, 3)).square().sum().backward()
    opt.step()
    expected = {name: opt.state[p]["exp_avg"] for name, p in source.named_parameters()}
    named = _named_optimizer_state(source, opt)
    named["param_groups"][0]["params"] = named["param_groups"][0]["params"][::-1]  # same state, other order
    for state in (named, opt.state_dict()):
        target = copy.deepcopy(source)
        target_opt = build_optimizer(target.parameters(), 1e-3, 0.0)
        _load_optimizer(target, target_opt, copy.deepcopy(state), sharded=False)
        for name, p in target.named_parameters():
            assert torch.equal(target_opt.state[p]["exp_avg"], expected[name]), name


def test_a_resume_may_change_the_memory_switches(tiny_data_root):  # noqa: F811
    """The switches that move memory but not values (activation checkpointing, where the EMA and
    the FSDP shards live, the VGGT teacher's weight dtype) may differ from the checkpoint's
    without train.resume_allow_changes; a value that matters still may not."""
    from omegaconf import OmegaConf

    from gfcore.train.resume import ResumeError, check_config

    def config(*extra):
        return OmegaConf.to_container(load_config(tiny_overrides(tiny_data_root, "unused", "teacher=vggt", *extra)),
                                      resolve=True)

    old = config()
    new = config("train.activation_checkpointing=selective", "train.ema_device=cpu", "train.fsdp_offload=true",
                 "train.strategy=fsdp", "teacher.weights_dtype=fp32")
    assert check_config(old, new, [], "ckpt.pt") == {}
    with pytest.raises(ResumeError, match="teacher.dtype"):
        check_config(old, config("teacher.dtype=float32"), [], "ckpt.pt")
