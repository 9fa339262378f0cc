"""Resume never loses work: unreadable checkpoints refuse (or are kept as *.corrupt), a changed
config is refused unless named in train.resume_allow_changes, and every resume is logged."""
import json
import os
import re
import time

import pytest
import torch
import yaml

from gfcore.io.checkpoint_file import read_checkpoint, write_checkpoint
from gfcore.cli import main
from gfcore.train import load_config, train
from gfcore.train.checkpoint import list_checkpoints
from gfcore.train.resume import ResumeError, config_changes
from trainer_helpers import one_torch_thread, tiny_data_root, tiny_overrides  # noqa: F401  (fixtures)


def _records(out_dir):
    with open(os.path.join(out_dir, "log.jsonl")) as handle:
        return [json.loads(line) for line in handle if line.strip()]


def _metrics(out_dir):
    return [r for r in _records(out_dir) if "event" not in r]


def _events(out_dir):
    return [r for r in _records(out_dir) if "event" in r]


def _read(path):
    with open(path, "rb") as handle:
        return handle.read()


def test_all_checkpoints_unreadable_refuses_and_resume_none_keeps_the_old_run(tmp_path, tiny_data_root, capsys):  # noqa: F811
    out = str(tmp_path / "run")
    overrides = tiny_overrides(tiny_data_root, out, "teacher=none", "train.steps=4")
    train(load_config(overrides))
    ckpt_dir = os.path.join(out, "checkpoints")
    for _, path in list_checkpoints(ckpt_dir):  # disk trouble: both step_2 and step_4 damaged
        with open(path, "wb") as handle:
            handle.write(b"not a checkpoint")
    before = {name: _read(os.path.join(out, name)) for name in ("log.jsonl", "config.yaml")}

    more = overrides + ["train.steps=6"]
    with pytest.raises(ResumeError, match="no checkpoint in .* can be read") as info:
        train(load_config(more))
    assert "step_00000002.pt" in str(info.value) and "step_00000004.pt" in str(info.value)
    assert "train.resume=none" in str(info.value)
    # nothing in the run folder changed: no restart from step 0 over the old log
    assert {name: _read(os.path.join(out, name)) for name in before} == before
    assert sorted(os.listdir(ckpt_dir)) == ["step_00000002.pt", "step_00000004.pt"]
    # the command prints the refusal, without a traceback, and fails
    assert main(["train", *more]) == 2
    err = capsys.readouterr().err
    assert "step_00000004.pt" in err and "Traceback" not in err

    # the user asks to start fresh: the earlier run's files move to previous/, nothing is deleted
    summary = train(load_config(more + ["train.resume=none"]))
    assert summary["resumed_from"] == 0
    previous = os.path.join(out, "previous")
    (archived,) = os.listdir(previous)
    assert sorted(os.listdir(os.path.join(previous, archived, "checkpoints"))) == ["step_00000002.pt",
                                                                                   "step_00000004.pt"]
    assert _read(os.path.join(previous, archived, "log.jsonl")) == before["log.jsonl"]
    assert [r["step"] for r in _metrics(out)] == [1, 2, 3, 4, 5, 6]
    assert _events(out)[0]["event"] == "start" and _events(out)[0]["previous_run"].endswith(archived)
    assert [s for s, _ in list_checkpoints(ckpt_dir)] == [4, 6]


def test_resume_none_over_a_longer_run_does_not_mix_the_two(tmp_path, tiny_data_root):  # noqa: F811
    """Without moving the old run aside, its step_6 would outrank (and prune) the new run's files."""
    out = str(tmp_path / "run")
    train(load_config(tiny_overrides(tiny_data_root, out, "teacher=none", "train.steps=6")))
    from gfcore.train.trainer import CrashForTesting

    with pytest.raises(CrashForTesting):
        train(load_config(tiny_overrides(tiny_data_root, out, "teacher=none", "train.steps=6", "train.resume=none",
                                         "train.crash_after_step=3")))
    assert [s for s, _ in list_checkpoints(os.path.join(out, "checkpoints"))] == [2]
    assert train(load_config(tiny_overrides(tiny_data_root, out, "teacher=none", "train.steps=6")))["resumed_from"] == 2


def test_unreadable_newest_checkpoint_is_kept_as_corrupt(tmp_path, tiny_data_root):  # noqa: F811
    out = str(tmp_path / "run")
    train(load_config(tiny_overrides(tiny_data_root, out, "teacher=none", "train.steps=6")))
    ckpt_dir = os.path.join(out, "checkpoints")
    assert [s for s, _ in list_checkpoints(ckpt_dir)] == [4, 6]
    damaged = os.path.join(ckpt_dir, "step_00000006.pt")
    with open(damaged, "wb") as handle:
        handle.write(b"half a checkpoint")

    # a refused resume (changed lr) renames nothing
    with pytest.raises(ResumeError, match="train.lr"):
        train(load_config(tiny_overrides(tiny_data_root, out, "teacher=none", "train.steps=10", "train.lr=0.001")))
    assert sorted(os.listdir(ckpt_dir)) == ["step_00000004.pt", "step_00000006.pt"]
    # resume from step 4, then run to 10: saving step 6 again and pruning 4 and 6 must not touch the damaged file
    with pytest.warns(UserWarning, match="step_00000006.pt.*kept as .*step_00000006.pt.corrupt; "
                                         "resuming from .*step_00000004.pt$"):
        summary = train(load_config(tiny_overrides(tiny_data_root, out, "teacher=none", "train.steps=10")))
    assert summary["resumed_from"] == 4
    assert sorted(os.listdir(ckpt_dir)) == ["step_00000006.pt.corrupt", "step_00000008.pt", "step_00000010.pt"]
    assert _read(damaged + ".corrupt") == b"half a checkpoint"
    (event,) = _events(out)
    assert event["event"] == "resume" and event["step"] == 4 and event["checkpoint"].endswith("step_00000004.pt")
    assert [r["step"] for r in _metrics(out)] == list(range(1, 11))


def test_changed_config_is_refused_unless_named(tmp_path, tiny_data_root):  # noqa: F811
    out = str(tmp_path / "run")
    base = tiny_overrides(tiny_data_root, out, "teacher=pointmap", "train.steps=2")
    train(load_config(base))
    config_before = _read(os.path.join(out, "config.yaml"))
    log_before = _read(os.path.join(out, "log.jsonl"))

    changed = base + ["train.steps=4", "train.lr=0.001", "loss.lambda_angular=0.7", "train.log_every=1"]
    with pytest.raises(ResumeError, match="these keys changed") as info:
        train(load_config(changed))
    message = str(info.value)
    assert "train.lr: 0.0003 -> 0.001" in message and "loss.lambda_angular: 0.5 -> 0.7" in message
    assert "train.steps" not in message and "log_every" not in message  # extending a constant-lr run is free
    assert "train.resume_allow_changes=[loss.lambda_angular,train.lr]" in message
    # a baseline config on a GF run: named, not a raw load_state_dict error
    with pytest.raises(ResumeError, match=r"teacher.name: 'pointmap' -> 'none'"):
        train(load_config(base + ["teacher=none"]))
    # refused resumes leave the run folder as it was
    assert _read(os.path.join(out, "config.yaml")) == config_before
    assert _read(os.path.join(out, "log.jsonl")) == log_before

    # a misspelt name allows nothing, and says so
    with pytest.warns(UserWarning, match="'train.lrr' is not a config key"), pytest.raises(ResumeError):
        train(load_config(changed + ["train.resume_allow_changes=[train.lrr,loss]"]))
    # named changes (a key, or a prefix such as `loss`) are accepted, take effect, and are logged
    summary = train(load_config(changed + ["train.resume_allow_changes=[train.lr,loss]"]))
    assert summary["resumed_from"] == 2
    saved = yaml.safe_load(open(os.path.join(out, "config.yaml")))
    assert saved["train"]["lr"] == 0.001 and saved["loss"]["lambda_angular"] == 0.7
    (event,) = _events(out)
    assert event["event"] == "resume" and event["step"] == 2
    assert event["changes"] == {"train.lr": {"old": 0.0003, "new": 0.001},
                                "loss.lambda_angular": {"old": 0.5, "new": 0.7}}
    metrics = _metrics(out)
    assert [r["step"] for r in metrics] == [1, 2, 3, 4]
    assert metrics[1]["lr"] == pytest.approx(3e-4) and metrics[2]["lr"] == pytest.approx(1e-3)  # the new lr is used

    # an allowed change that alters the trained parameters still cannot resume: a clear error
    with pytest.raises(ResumeError, match="do not fit"):
        train(load_config(changed + ["train.steps=6", "teacher=none", "train.resume_allow_changes=[train.lr,loss,teacher]"]))


def test_config_changes_rules():
    old = {"train": {"lr": 3e-4, "steps": 10, "lr_decay": "constant", "log_every": 5}, "out_dir": "a",
           "teacher": {"name": "pointmap", "num_frequencies": 4}}
    new = {"train": {"lr": 3e-4, "steps": 20, "lr_decay": "constant", "log_every": 1, "compile": True},
           "out_dir": "b", "teacher": {"name": "none"}}
    assert config_changes(old, new) == {"teacher.name": ("pointmap", "none"),
                                        "teacher.num_frequencies": (4, "<absent>")}
    # under a cosine schedule the total number of steps shapes the lr: extending the run is a change
    old["train"]["lr_decay"] = new["train"]["lr_decay"] = "cosine"
    assert "train.steps" in config_changes(old, new)
    # a run from before loss.align_start existed aligned from step 0: a late start is a change,
    # and so are more steps (they move the start step), even under a constant lr
    old["train"]["lr_decay"] = new["train"]["lr_decay"] = "constant"
    new["teacher"], new["loss"] = dict(old["teacher"]), {"align_start": 0.0}
    assert config_changes(old, new) == {}
    new["loss"]["align_start"] = 0.5
    assert config_changes(old, new) == {"loss.align_start": (0.0, 0.5), "train.steps": (10, 20)}



def _two_step_run(tiny_data_root, out, *extra):  # noqa: F811
    overrides = tiny_overrides(tiny_data_root, out, "teacher=pointmap", "train.steps=2", *extra)
    train(load_config(overrides))
    return overrides, os.path.join(out, "checkpoints", "step_00000002.pt")


def test_resume_messages_name_the_checkpoint_and_the_changes(tmp_path, tiny_data_root, capsys):  # noqa: F811
    """What a resume prints and logs: the checkpoint, the step and the accepted changes (none: no
    suffix); a refused config names the checkpoint; weights that do not fit name the part."""
    out = str(tmp_path / "run")
    base, ckpt = _two_step_run(tiny_data_root, out)
    capsys.readouterr()
    train(load_config(base))
    assert capsys.readouterr().out.splitlines()[-1] == f"resumed from {ckpt} at step 2"
    (event,) = _events(out)
    assert time.strptime(event["time"], "%Y-%m-%dT%H:%M:%SZ")  # an ISO UTC time stamp
    with pytest.raises(ResumeError, match=f"^resuming from {re.escape(ckpt)} with a different config"):
        train(load_config(base + ["train.lr=0.001"]))
    changed = base + ["train.lr=0.001", "loss.lambda_angular=0.7", "train.resume_allow_changes=[train.lr,loss]"]
    train(load_config(changed))
    assert capsys.readouterr().out.splitlines()[-1] == (
        f"resumed from {ckpt} at step 2 with changes: loss.lambda_angular, train.lr")
    with pytest.raises(ResumeError, match="^the checkpoint's model weights do not fit the model built from this "
                                          "config \\(changed keys: model.hidden_dim\\)"):
        train(load_config(base + ["model.hidden_dim=64", "train.resume_allow_changes=[model]"]))
    with pytest.raises(ResumeError, match="^the checkpoint's alignment projector/head weights do not fit the "
                                          "alignment projector/head built from this config \\(changed keys: "
                                          "loss.projector_dim\\)"):
        train(load_config(base + ["loss.projector_dim=64", "train.resume_allow_changes=[loss]"]))


def test_optimizer_state_that_does_not_fit_is_named(tmp_path, tiny_data_root):  # noqa: F811
    """A checkpoint whose optimizer state lacks a parameter: a ResumeError naming the file and the
    accepted config changes ("none" when there are none), not a raw KeyError."""
    out = str(tmp_path / "run")
    base, ckpt = _two_step_run(tiny_data_root, out)
    state = read_checkpoint(ckpt)
    dropped = state["optimizer"]["param_groups"][0]["params"].pop()
    state["optimizer"]["state"].pop(dropped)
    write_checkpoint(state, ckpt)
    with pytest.raises(ResumeError, match=f"^the optimizer state in {re.escape(ckpt)} does not fit this run's "
                                          "parameters \\(changed keys: none\\): "):
        train(load_config(base))
    with pytest.raises(ResumeError, match="does not fit this run's parameters \\(changed keys: "
                                          "loss.lambda_angular, train.lr\\): "):
        train(load_config(base + ["train.lr=0.001", "loss.lambda_angular=0.7",
                                  "train.resume_allow_changes=[train.lr,loss]"]))


def test_checkpoint_records_the_resume_facts_and_a_resolved_config(tmp_path, tiny_data_root):  # noqa: F811
    """The checkpoint holds the data position (next step, seed), the world size and the config with
    interpolations resolved, and a resume compares resolved values: a config whose batch size is
    an interpolation (${train.ckpt_every} = 2) resumes."""
    from omegaconf import OmegaConf

    out = str(tmp_path / "run")
    overrides = tiny_overrides(tiny_data_root, out, "teacher=pointmap", "train.steps=2")
    cfg = load_config(overrides)
    OmegaConf.update(cfg, "train.batch_size", "${train.ckpt_every}")
    assert OmegaConf.to_container(cfg)["train"]["batch_size"] == "${train.ckpt_every}"
    train(cfg)
    state = read_checkpoint(os.path.join(out, "checkpoints", "step_00000002.pt"))
    assert state["data"] == {"next_step": 2, "seed": int(cfg.seed)} and state["world_size"] == 1
    assert state["config"]["train"]["batch_size"] == 2
    assert train(cfg)["resumed_from"] == 2  # no "these keys changed" for the interpolated key


def _rng_restores(monkeypatch, out, overrides, edit):
    """The RNG states set_rng_state is given when resuming from the step-2 checkpoint after
    edit(state), and that checkpoint's first RNG entry."""
    import gfcore.train.trainer as trainer

    ckpt = os.path.join(out, "checkpoints", "step_00000002.pt")
    state = read_checkpoint(ckpt)
    saved = state["rng"][0]
    edit(state)
    write_checkpoint(state, ckpt)
    calls = []
    monkeypatch.setattr(trainer, "set_rng_state", calls.append)
    train(load_config(overrides))
    return calls, saved


@pytest.mark.parametrize("edit,restored", [
    (lambda state: None, True),                                      # the same world size: restored
    (lambda state: state.pop("world_size"), True),                   # older checkpoints: one process
    (lambda state: state.update(world_size=2, rng=state["rng"] * 2), False),  # another world size: not
])
def test_rng_state_restored_only_for_the_same_world_size(tmp_path, tiny_data_root, monkeypatch, edit,  # noqa: F811
                                                         restored):
    out = str(tmp_path / "run")
    overrides, _ = _two_step_run(tiny_data_root, out)
    calls, saved = _rng_restores(monkeypatch, out, overrides, edit)
    if restored:
        (given,) = calls
        assert torch.equal(given["torch"], saved["torch"]) and given["python"] == saved["python"]
    else:
        assert calls == []


def test_archive_previous_run_moves_exactly_the_run_files(tmp_path, monkeypatch):
    """What counts as an earlier run, where its files go (previous/{UTC time}, -1, -2 when taken),
    and that only the run's own files move."""
    import time as time_module

    from gfcore.train.resume import RUN_FILES, archive_previous_run

    out = tmp_path / "run"
    out.mkdir()
    assert archive_previous_run(str(out)) is None and not (out / "previous").exists()
    (out / "log.jsonl").write_text("")  # an empty log is no run
    (out / "checkpoints").mkdir()
    (out / "checkpoints" / "notes.txt").write_text("x")
    assert archive_previous_run(str(out)) is None and not (out / "previous").exists()

    monkeypatch.setattr(time_module, "gmtime", lambda: time_module.struct_time((2026, 1, 2, 3, 4, 5, 4, 2, 0)))
    made = []
    for marker in ("step_00000002.pt", "step_00000002.pt.corrupt", "step_00000002.pt.corrupt.1", "final.pt",
                   "log.jsonl"):
        (out / "checkpoints").mkdir(exist_ok=True)
        where = out / ("checkpoints" if "step" in marker else "") / marker
        where.write_text("{}\n")
        made.append(archive_previous_run(str(out)))
        assert not where.exists()
    assert made == [str(out / "previous" / name) for name in
                    ("20260102-030405", "20260102-030405-1", "20260102-030405-2", "20260102-030405-3",
                     "20260102-030405-4")]
    for name in RUN_FILES:  # every run file moves; the rest stays
        path = out / name
        path.mkdir() if name in ("checkpoints", "tensorboard", "wandb", "samples") else path.write_text("x")
    (out / "checkpoints" / "step_00000004.pt").write_text("x")
    (out / "mine.txt").write_text("keep")
    target = archive_previous_run(str(out))
    assert sorted(os.listdir(target)) == sorted(RUN_FILES)
    assert sorted(os.listdir(out)) == ["mine.txt", "previous"]


def test_resume_helpers_one_by_one(tmp_path):
    """as_list, config_changes' free keys, check_config's listing and warning, find_checkpoint's
    refusals, keep_unreadable on other ranks and load_into's message, each against its contract."""
    import warnings as warnings_module

    from gfcore.train.resume import (ResumeError, as_list, check_config, config_changes, find_checkpoint,
                                     keep_unreadable, load_into)

    assert as_list(None) == [] and as_list("") == [] and as_list("a") == ["a"] and as_list(["a", 1]) == ["a", "1"]

    base = {"train": {"steps": 4, "lr_decay": "constant"}, "loss": {"align_start": 0.5}}
    longer = {"train": {"steps": 8, "lr_decay": "constant"}, "loss": {"align_start": 0.5}}
    assert config_changes(base, longer) == {}  # no teacher: the share of steps changes nothing
    with_teacher = [{**c, "teacher": {"name": "vggt"}} for c in (base, longer)]
    assert config_changes(*with_teacher) == {"train.steps": (4, 8)}
    for old_decay, new_decay in (("cosine", "constant"), ("constant", "cosine")):
        old = {"train": {"steps": 4, "lr_decay": old_decay}}
        new = {"train": {"steps": 8, "lr_decay": new_decay}}
        assert config_changes(old, new)["train.steps"] == (4, 8)
    assert config_changes({"a": True}, {"a": 1}) == {} and config_changes({"a": 1}, {"a": 1.0}) == {}

    old, new = {"x": 1, "y": 2, "gone": 1}, {"x": 2, "y": 3, "added": 1}
    with pytest.raises(ResumeError) as info:
        check_config(old, new, [], "ck.pt")
    assert "these keys changed:\n  gone: 1 -> '<absent>'\n  x: 1 -> 2\n  y: 2 -> 3\nResume with" in str(info.value)
    with warnings_module.catch_warnings():
        warnings_module.simplefilter("error")
        check_config(old, new, ["x", "y", "gone", "added"], "ck.pt")  # keys of either config are known names
    with pytest.warns(UserWarning, match=r"'nope' is not a config key"):
        check_config(old, new, ["x", "y", "gone", "nope"], "ck.pt")

    assert find_checkpoint(False, str(tmp_path)) == (None, []) and find_checkpoint("none", str(tmp_path)) == (None, [])
    ckpts = tmp_path / "checkpoints"
    ckpts.mkdir()
    for step in (2, 4):
        (ckpts / f"step_{step:08d}.pt").write_bytes(b"damaged")
    with pytest.raises(ResumeError) as info:
        find_checkpoint("auto", str(ckpts))
    text = str(info.value)  # one line per file, newest first (torch's reasons may span lines)
    assert f":\n  {ckpts / 'step_00000004.pt'}: " in text and f"\n  {ckpts / 'step_00000002.pt'}: " in text
    assert text.index("step_00000004.pt: ") < text.index("step_00000002.pt: ")
    damaged = str(ckpts / "step_00000004.pt")
    with pytest.raises(ResumeError, match=rf"^train.resume={damaged!r}: the checkpoint cannot be read "
                                          r"\((RuntimeError|UnpicklingError): "):
        find_checkpoint(damaged, str(ckpts))

    with pytest.warns(UserWarning, match=rf"kept as {damaged}.corrupt; resuming from other"):
        keep_unreadable([(damaged, "why")], "other", is_main=False)
    assert os.path.exists(damaged)  # only the main process renames
    with pytest.warns(UserWarning, match="kept as .*absent.pt.corrupt"):
        keep_unreadable([(str(ckpts / "absent.pt"), "why")], "other", is_main=True)

    for changes, named in (({}, "none"), ({"a": 1, "b": 2}, "a, b")):
        with pytest.raises(ResumeError, match=rf"\(changed keys: {named}\)"):
            load_into(torch.nn.Linear(2, 2), {"weight": torch.zeros(1)}, "model", changes)
