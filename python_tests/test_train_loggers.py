"""train.loggers: jsonl (default), tensorboard event files and offline wandb runs, sample videos,
and a clear error naming the pip package when a logger's package is missing."""
import glob
import json
import os
import subprocess
import sys

import pytest

from gfcore.io.checkpoint_file import read_checkpoint
from gfcore.train import load_config, train
from gfcore.train.trainer import CrashForTesting
from trainer_helpers import one_torch_thread, tiny_data_root, tiny_overrides  # noqa: F401  (fixtures)

SCALAR_KEYS = ("loss", "diffusion", "alignment", "angular", "scale", "cosine", "lr", "grad_norm", "samples_per_s",
               "achieved_tflops", "mfu")


def _metrics(out_dir):
    with open(os.path.join(out_dir, "log.jsonl")) as handle:
        return [r for r in (json.loads(line) for line in handle if line.strip()) if "event" not in r]


def _tensorboard_scalars(log_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(log_dir, size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    acc.Reload()
    return acc, {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_default_is_jsonl_and_other_loggers_are_not_imported(tmp_path, tiny_data_root):  # noqa: F811
    assert list(load_config([]).train.loggers) == ["jsonl"]
    out = str(tmp_path / "run")
    code = ("import sys; from gfcore.train import load_config, train; "
            f"train(load_config({tiny_overrides(tiny_data_root, out, 'teacher=none', 'train.steps=2')!r})); "
            "print('IMPORTED', sorted(m for m in ('tensorboard', 'wandb', 'torch.utils.tensorboard') if m in sys.modules))")
    import gfcore

    root = os.path.dirname(os.path.dirname(os.path.abspath(gfcore.__file__)))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=str(tmp_path),
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "IMPORTED []" in result.stdout
    assert len(_metrics(out)) == 2 and not os.path.exists(os.path.join(out, "tensorboard"))


@pytest.mark.parametrize("logger,package", [("tensorboard", "tensorboard"), ("wandb", "wandb")])
def test_missing_package_names_the_pip_package(tmp_path, tiny_data_root, monkeypatch, capsys, logger,  # noqa: F811
                                              package):
    monkeypatch.setitem(sys.modules, package, None)  # `import <package>` now raises ImportError
    out = str(tmp_path / "run")
    with pytest.raises(ImportError, match=rf"needs the Python package '{package}': pip install {package}"):
        train(load_config(tiny_overrides(tiny_data_root, out, "teacher=none", f"train.loggers=[jsonl,{logger}]")))
    assert not os.path.exists(out)  # refused before the run folder was touched
    from gfcore.cli import main

    assert main(["train", *tiny_overrides(tiny_data_root, out, f"train.loggers=[{logger}]")]) == 2
    assert f"pip install {package}" in capsys.readouterr().err


def test_unknown_logger_is_refused(tmp_path, tiny_data_root):  # noqa: F811
    with pytest.raises(ValueError, match="unknown logger.*'tensorbord'"):
        train(load_config(tiny_overrides(tiny_data_root, str(tmp_path / "r"), "train.loggers=[tensorbord]")))


def test_tensorboard_scalars_match_the_jsonl_log_and_samples_are_logged(tmp_path, tiny_data_root):  # noqa: F811
    pytest.importorskip("tensorboard", reason="pip install tensorboard to test the tensorboard logger")
    import numpy as np

    out = str(tmp_path / "run")
    overrides = tiny_overrides(tiny_data_root, out, "teacher=pointmap", "train.loggers=[jsonl,tensorboard]",
                               "train.sample_every=3", "sample.steps=2", "train.peak_tflops=1.0")
    # killed after step 5 (newest checkpoint: step 4), then resumed: the curves hold each step once
    with pytest.raises(CrashForTesting):
        train(load_config(overrides + ["train.crash_after_step=5"]))
    train(load_config(overrides))
    log = _metrics(out)
    assert [r["step"] for r in log] == [1, 2, 3, 4, 5, 6]
    acc, tb = _tensorboard_scalars(os.path.join(out, "tensorboard"))
    assert {f"train/{k}" for k in SCALAR_KEYS} == set(tb)
    for key in SCALAR_KEYS:
        assert tb[f"train/{key}"] == [(r["step"], float(np.float32(r[key]))) for r in log], key  # stored as float32
    # sample videos every 3 steps: GIFs on disk and in the event file
    assert sorted(os.listdir(os.path.join(out, "samples"))) == ["step_00000003.gif", "step_00000006.gif"]
    images = acc.Images("samples/video")
    assert [e.step for e in images] == [3, 6]
    assert images[0].encoded_image_string[:6] in (b"GIF87a", b"GIF89a")
    # the resume and the config are in the event file too
    assert {"events/resume/text_summary", "config/text_summary"} <= set(acc.Tags()["tensors"])


def test_wandb_offline_run_is_written_without_network(tmp_path, tiny_data_root, monkeypatch):  # noqa: F811
    pytest.importorskip("wandb", reason="pip install wandb to test the wandb logger")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_API_KEY", "")  # no credentials: offline needs none
    out = str(tmp_path / "run")
    overrides = tiny_overrides(tiny_data_root, out, "teacher=none", "train.steps=4", "train.loggers=[jsonl,wandb]",
                               "train.sample_every=4", "sample.steps=1")
    train(load_config(overrides))
    runs = glob.glob(os.path.join(out, "wandb", "offline-run-*"))
    assert len(runs) == 1
    with open(os.path.join(out, "wandb_run_id")) as handle:
        run_id = handle.read().strip()
    assert runs[0].endswith(run_id)
    (data,) = glob.glob(os.path.join(runs[0], f"run-{run_id}.wandb"))
    assert os.path.getsize(data) > 0  # what `wandb sync` uploads later
    assert glob.glob(os.path.join(runs[0], "files", "media", "videos", "samples", "*.gif"))

    # the logged history: every metric of log.jsonl against trainer/step
    history = _wandb_history(data)
    log = _metrics(out)
    assert [h["trainer/step"] for h in history if "train/loss" in h] == [r["step"] for r in log]
    for h, r in zip([h for h in history if "train/loss" in h], log):
        assert h["train/loss"] == pytest.approx(r["loss"]) and h["train/lr"] == pytest.approx(r["lr"])

    # a resumed training continues the same wandb run (another offline directory, the same id)
    train(load_config(overrides + ["train.steps=6"]))
    runs = sorted(glob.glob(os.path.join(out, "wandb", "offline-run-*")))
    assert len(runs) == 2 and all(r.endswith(run_id) for r in runs)
    resumed = [h for h in _wandb_history(os.path.join(runs[1], f"run-{run_id}.wandb")) if "train/loss" in h]
    assert [h["trainer/step"] for h in resumed] == [5, 6]


def _wandb_records(path):
    """The protobuf records of a .wandb file: a 7-byte header (":W&B", magic, version), then the
    LevelDB log format (32 KiB blocks; records of crc32c[4] length[2] type[1] + payload,
    split FIRST / MIDDLE / LAST across blocks)."""
    import struct

    from wandb.proto import wandb_internal_pb2

    with open(path, "rb") as handle:
        data = handle.read()
    assert data[:4] == b":W&B"
    block, offset, pending, records = 32 * 1024, 7, b"", []
    while offset + 7 <= len(data):
        if block - offset % block < 7:  # a block tail too short for a header is padding
            offset += block - offset % block
            continue
        _, length, kind = struct.unpack("<IHB", data[offset:offset + 7])
        payload, offset = data[offset + 7:offset + 7 + length], offset + 7 + length
        if kind == 0 and length == 0:
            continue
        pending = payload if kind in (1, 2) else pending + payload
        if kind in (1, 4):  # FULL or LAST: a whole record
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
    return records


def _wandb_history(path):
    """The history rows stored in an offline .wandb file."""
    rows = []
    for record in _wandb_records(path):
        if record.WhichOneof("record_type") == "history":
            rows.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                         for item in record.history.item})
    return rows


def test_sample_videos_change_no_training_value(tmp_path, tiny_data_root):  # noqa: F811
    import torch

    runs = {}
    for name, extra in (("plain", []), ("sampled", ["train.sample_every=2", "sample.steps=1", "train.sample_clips=2",
                                                   "sample.use_ema=true"])):
        out = str(tmp_path / name)
        train(load_config(tiny_overrides(tiny_data_root, out, "teacher=pointmap", "train.steps=4", *extra)))
        runs[name] = (_metrics(out), read_checkpoint(os.path.join(out, "final.pt")))
    assert sorted(os.listdir(tmp_path / "sampled" / "samples")) == ["step_00000002.gif", "step_00000004.gif"]
    assert not os.path.exists(tmp_path / "plain" / "samples")
    (log_a, final_a), (log_b, final_b) = runs["plain"], runs["sampled"]
    assert [r["loss"] for r in log_a] == [r["loss"] for r in log_b]
    for part in ("model", "ema"):
        for key in final_a[part]:
            assert torch.equal(final_a[part][key], final_b[part][key]), f"{part}.{key}"


def test_tensorboard_restart_before_the_first_checkpoint_logs_each_step_once(tmp_path, tiny_data_root):  # noqa: F811
    pytest.importorskip("tensorboard", reason="pip install tensorboard to test the tensorboard logger")
    out = str(tmp_path / "run")
    overrides = tiny_overrides(tiny_data_root, out, "teacher=none", "train.steps=4", "train.loggers=[tensorboard]")
    with pytest.raises(CrashForTesting):  # killed at step 1: no checkpoint yet, the rerun starts at step 0
        train(load_config(overrides + ["train.crash_after_step=1"]))
    train(load_config(overrides))
    _, tb = _tensorboard_scalars(os.path.join(out, "tensorboard"))
    assert [step for step, _ in tb["train/loss"]] == [1, 2, 3, 4]
    assert not os.path.exists(os.path.join(out, "log.jsonl"))  # jsonl left out of train.loggers
