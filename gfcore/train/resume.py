"""What a resume may and may not do: find the checkpoint, refuse silent restarts and silent
config changes, keep damaged files and earlier runs instead of deleting them.

- train.resume=auto with checkpoints that all fail to load: ResumeError naming each file
  (never a silent restart from step 0, which would overwrite log.jsonl).
- Damaged files skipped in favour of an older one are renamed *.corrupt.
- The config of the checkpoint is compared with the current one: a changed key that affects
  training (lr, loss weights, model, teacher, data, ...) is an error unless it is named in
  train.resume_allow_changes (a key, or a prefix such as `loss`). Keys that only steer the
  run (logging, checkpoint cadence, progress bar, sampling settings, ...) may change freely.
- train.resume=none in a folder that holds an earlier run moves that run's checkpoints and
  logs to {out_dir}/previous/{time}/ rather than mixing the two runs' files.
"""
from __future__ import annotations

import os
import shutil
import time
import warnings
from typing import Any, Dict, Iterable, List, Optional, Tuple

import torch

from gfcore.io.checkpoint_file import read_checkpoint
from gfcore.io.safe_load import UnsafeFileError
from gfcore.train.checkpoint import find_resumable, list_checkpoints, quarantine


class ResumeError(RuntimeError):
    """A resume the trainer refuses to do silently; the message says what to do instead."""


# Keys that steer the run but not what it computes: they may differ from the checkpoint's.
FREE_KEYS = (
    "name", "out_dir", "sample",
    "train.resume", "train.resume_allow_changes", "train.progress", "train.crash_after_step",
    "train.log_every", "train.ckpt_every", "train.keep_last", "train.peak_tflops", "train.device",
    "train.loggers", "train.sample_every", "train.sample_clips", "train.tensorboard_dir", "train.wandb",
    "train.activation_checkpointing", "train.compile", "train.strategy", "train.plan_check", "teacher.frames_per_call",
    "train.ema_device", "train.fsdp_offload", "teacher.weights_dtype",
    "data.prefetch_steps", "data.num_workers", "data.cache_in_memory",
)

_ABSENT = "<absent>"

# Keys added after runs were made that lack them, with the value those runs trained with: a
# resume that sets another value is a change like any other.
ADDED_WITH_DEFAULTS = {"loss.align_start": 0.0, "train.objective": "flow", "train.grad_accum": 1,
                       "train.init_from": None}


def _under(key: str, prefixes: Iterable[str]) -> bool:
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def flatten(node: Any, prefix: str = "") -> Dict[str, Any]:
    """{"train.lr": 3e-4, "model.depth": 4, ...}: dicts flattened with dots, lists kept as values."""
    if not isinstance(node, dict):
        return {prefix: node}
    flat: Dict[str, Any] = {}
    for key, value in node.items():
        flat.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def config_changes(old: Dict, new: Dict) -> Dict[str, Tuple[Any, Any]]:
    """{key: (old value, new value)} for every training-relevant key that differs.

    Keys missing from the old config (added by a newer gfcore) are not changes, except those of
    ADDED_WITH_DEFAULTS, read as their old value; keys gone from the new one are (new value
    "<absent>"). train.steps is free unless the learning rate follows a cosine schedule over the
    total or the alignment starts at a share of it, which extending the run would move.
    """
    old_flat, new_flat = flatten(old), flatten(new)
    for key, default in ADDED_WITH_DEFAULTS.items():  # a run from before the key had its default
        if key in new_flat:
            old_flat.setdefault(key, default)
    free = list(FREE_KEYS)
    # train.steps is free unless the run depends on its total: a cosine lr, or an alignment
    # that starts at a share of it (extending the run would move the start)
    aligned_late = any(flat.get("teacher.name", "none") != "none" and flat.get("loss.align_start")
                       for flat in (old_flat, new_flat))
    if "cosine" not in (old_flat.get("train.lr_decay"), new_flat.get("train.lr_decay")) and not aligned_late:
        free.append("train.steps")
    changes = {}
    for key in sorted(old_flat):
        if _under(key, free):
            continue
        after = new_flat.get(key, _ABSENT)
        before = old_flat[key]
        if isinstance(before, (int, float)) and isinstance(after, (int, float)) and not isinstance(before, bool):
            same = float(before) == float(after)
        else:
            same = before == after
        if not same:
            changes[key] = (before, after)
    return changes


def check_config(old: Optional[Dict], new: Dict, allowed: Iterable[str], path: str) -> Dict[str, Tuple[Any, Any]]:
    """The changes (all allowed), or ResumeError listing those that are not."""
    if old is None:
        return {}
    allowed = [str(a) for a in allowed]
    known = set(flatten(old)) | set(flatten(new))
    for name in allowed:
        if not any(_under(key, [name]) for key in known):
            warnings.warn(f"train.resume_allow_changes: {name!r} is not a config key (nor a prefix of one)")
    changes = config_changes(old, new)
    refused = {k: v for k, v in changes.items() if not _under(k, allowed)}
    if refused:
        lines = "\n".join(f"  {k}: {a!r} -> {b!r}" for k, (a, b) in refused.items())
        names = ",".join(refused)
        raise ResumeError(
            f"resuming from {path} with a different config; these keys changed:\n{lines}\n"
            f"Resume with the checkpoint's values, or accept the changes with "
            f"train.resume_allow_changes=[{names}], or start a new run (another out_dir, or train.resume=none).")
    return changes


def find_checkpoint(resume, ckpt_dir: str) -> Tuple[Optional[Tuple[str, Dict]], List[Tuple[str, str]]]:
    """((path, state) to resume from or None to start at step 0, [(path, why)] of newer
    unreadable files); ResumeError rather than a silent restart. Changes no file."""
    if resume in (None, "none", False):
        return None, []
    if resume == "auto":
        try:
            found, unreadable = find_resumable(ckpt_dir)
        except UnsafeFileError as exc:
            raise ResumeError(f"train.resume=auto: {exc}") from exc
        if unreadable and found is None:
            lines = "\n".join(f"  {p}: {why}" for p, why in unreadable)
            raise ResumeError(
                f"train.resume=auto: no checkpoint in {ckpt_dir} can be read:\n{lines}\n"
                f"Refusing to start over from step 0 (that would overwrite log.jsonl). Repair or move these files, "
                f"resume from a given file with train.resume=PATH, or start fresh with train.resume=none "
                f"(the run folder's files are then moved to previous/, not deleted).")
        return found, unreadable
    resume = os.path.expanduser(str(resume))
    if not os.path.isfile(resume):
        raise FileNotFoundError(f"train.resume={resume!r}: no such checkpoint file")
    try:
        return (resume, read_checkpoint(resume)), []
    except UnsafeFileError as exc:
        raise ResumeError(f"train.resume={resume!r}: {exc}") from exc
    except Exception as exc:
        raise ResumeError(f"train.resume={resume!r}: the checkpoint cannot be read ({type(exc).__name__}: {exc})") \
            from exc


def keep_unreadable(unreadable: List[Tuple[str, str]], resumed_from: str, is_main: bool) -> None:
    """Once the resume is accepted: rename each skipped file to *.corrupt, with a warning."""
    for path, why in unreadable:
        kept = quarantine(path) if is_main and os.path.exists(path) else f"{path}.corrupt"
        warnings.warn(f"skipping unreadable checkpoint {path} ({why}); kept as {kept}; resuming from {resumed_from}")


RUN_FILES = ("checkpoints", "log.jsonl", "config.yaml", "final.pt", "summary.json", "tensorboard", "wandb", "wandb_run_id",
             "samples")


def archive_previous_run(out_dir: str) -> Optional[str]:
    """train.resume=none in a folder with an earlier run: move its files to previous/{time}/.

    Otherwise the earlier run's higher-numbered checkpoints would outrank the new run's in
    pruning (deleting the new files) and in a later resume=auto. Returns the folder, or None.
    """
    ckpt_dir = os.path.join(out_dir, "checkpoints")
    has_checkpoints = bool(list_checkpoints(ckpt_dir)) or (
        os.path.isdir(ckpt_dir) and any(n.endswith(".corrupt") or ".corrupt." in n for n in os.listdir(ckpt_dir)))
    has_log = os.path.isfile(os.path.join(out_dir, "log.jsonl")) and os.path.getsize(os.path.join(out_dir, "log.jsonl"))
    if not (has_checkpoints or has_log or os.path.isfile(os.path.join(out_dir, "final.pt"))):
        return None
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    target, n = os.path.join(out_dir, "previous", stamp), 0
    while os.path.exists(target):
        n += 1
        target = os.path.join(out_dir, "previous", f"{stamp}-{n}")
    os.makedirs(target)
    for name in RUN_FILES:
        source = os.path.join(out_dir, name)
        if os.path.exists(source):
            shutil.move(source, os.path.join(target, name))
    return target


def load_into(module: torch.nn.Module, state: Dict, what: str, changes: Dict) -> None:
    """load_state_dict with an error that says why the weights do not fit."""
    try:
        module.load_state_dict(state)
    except RuntimeError as exc:
        changed = ", ".join(changes) or "none"
        raise ResumeError(
            f"the checkpoint's {what} weights do not fit the {what} built from this config (changed keys: {changed}); "
            f"a change of architecture, teacher or loss sizes cannot be resumed: start a new run "
            f"(another out_dir, or train.resume=none).\n{exc}") from exc


def changes_record(changes: Dict[str, Tuple[Any, Any]]) -> Dict[str, Dict[str, Any]]:
    return {k: {"old": a, "new": b} for k, (a, b) in changes.items()}


def as_list(value) -> List[str]:
    if value in (None, ""):
        return []
    if isinstance(value, str):
        return [value]
    return [str(v) for v in value]
