"""Where the trainer's records go: train.loggers=[jsonl] (default), tensorboard, wandb.

Every logger gets the same metric records (step, loss terms, cosine, lr, grad norm,
samples/s, TFLOP/s, MFU), the run's events (a resume with its config changes, a fresh start)
and, every train.sample_every steps, the sample videos as GIF files.

tensorboard and wandb are imported only when named in train.loggers; a missing package is
an ImportError that names the pip package, raised before the run touches its folder.
"""
from __future__ import annotations

import importlib
import json
import os
from typing import Dict, List, Optional, Sequence

LOGGERS = {"jsonl": None, "tensorboard": "tensorboard", "wandb": "wandb"}  # name -> pip package


class MissingLoggerPackage(ImportError):
    """A logger named in train.loggers whose package is not installed."""


def _require(module: str, logger: str):
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingLoggerPackage(f"train.loggers includes {logger!r}, which needs the Python package {LOGGERS[logger]!r}: "
                          f"pip install {LOGGERS[logger]}  (or drop {logger!r} from train.loggers)") from exc


def logger_names(value) -> List[str]:
    """train.loggers as a list of known names (a single string is taken as one name)."""
    if value in (None, ""):
        return []
    names = [value] if isinstance(value, str) else [str(v) for v in value]
    unknown = [n for n in names if n not in LOGGERS]
    if unknown:
        raise ValueError(f"train.loggers: unknown logger(s) {unknown}; choose from {sorted(LOGGERS)}")
    return list(dict.fromkeys(names))


def check_loggers(value) -> List[str]:
    """Validate the names and import what they need (fails fast, before any work)."""
    names = logger_names(value)
    for name in names:
        if name == "tensorboard":
            _require("tensorboard", name)
            _require("torch.utils.tensorboard", name)
        elif name == "wandb":
            _require("wandb", name)
    return names


def scalars(record: Dict) -> Dict[str, float]:
    """The numeric entries of a metric record as {"train/<key>": value} (step, strings, None left out)."""
    return {f"train/{k}": float(v) for k, v in record.items()
            if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)}


class TensorBoardLogger:
    """Event files in {out_dir}/tensorboard: scalars train/*, events as text, samples as animated GIFs.

    The writer purges what an earlier process logged after the step it starts from
    (purge_step; everything from step 1 on a fresh start), as log.jsonl drops those lines:
    the curves hold each step once.
    """

    def __init__(self, log_dir: str, resume_step: int, config_yaml: Optional[str] = None):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir, purge_step=resume_step + 1)
        if config_yaml is not None:
            self.writer.add_text("config", f"```\n{config_yaml}\n```", global_step=resume_step)

    def metrics(self, step: int, record: Dict) -> None:
        for tag, value in scalars(record).items():
            self.writer.add_scalar(tag, value, global_step=step)
        self.writer.flush()

    def event(self, record: Dict) -> None:
        self.writer.add_text(f"events/{record['event']}", json.dumps(record), global_step=record.get("step", 0))
        self.writer.flush()

    def video(self, step: int, tag: str, gif_path: str, height: int, width: int) -> None:
        # The summary torch's add_video writes, from the GIF file itself: no moviepy needed.
        from tensorboard.compat.proto.summary_pb2 import Summary

        with open(gif_path, "rb") as handle:
            image = Summary.Image(height=height, width=width, colorspace=3, encoded_image_string=handle.read())
        self.writer._get_file_writer().add_summary(Summary(value=[Summary.Value(tag=tag, image=image)]), step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandbLogger:
    """A wandb run; offline with WANDB_MODE=offline (or train.wandb.mode=offline), synced later
    with `wandb sync {out_dir}/wandb/offline-run-*`. The run id is kept in {out_dir}/wandb_run_id,
    so a resumed training continues the same wandb run. Metrics are plotted against
    trainer/step (not wandb's own step), so re-logging steps after a resume is accepted."""

    def __init__(self, out_dir: str, cfg, config: Dict, resume_step: int):
        import wandb

        self.wandb = wandb
        options = cfg.train.get("wandb") or {}
        id_file = os.path.join(out_dir, "wandb_run_id")
        run_id = None
        if resume_step > 0 and os.path.isfile(id_file):
            with open(id_file) as handle:
                run_id = handle.read().strip() or None
        if run_id is None:
            import secrets  # not `random`: the trainer's Python RNG state is part of every checkpoint

            run_id = secrets.token_hex(4)
        os.makedirs(out_dir, exist_ok=True)
        with open(id_file, "w") as handle:
            handle.write(run_id)
        self.run = wandb.init(project=options.get("project") or "gfcore", entity=options.get("entity"),
                              name=options.get("name") or str(cfg.name), tags=list(options.get("tags") or []),
                              mode=options.get("mode"), dir=out_dir, id=run_id, resume="allow", config=config)
        self.run.define_metric("trainer/step")
        self.run.define_metric("*", step_metric="trainer/step")

    def metrics(self, step: int, record: Dict) -> None:
        self.run.log({"trainer/step": step, **scalars(record)})

    def event(self, record: Dict) -> None:
        self.run.log({"trainer/step": record.get("step", 0), f"events/{record['event']}": json.dumps(record)})

    def video(self, step: int, tag: str, gif_path: str, height: int, width: int) -> None:
        self.run.log({"trainer/step": step, tag: self.wandb.Video(gif_path, format="gif")})

    def close(self) -> None:
        self.run.finish()


class Loggers:
    """The loggers of train.loggers; a no-op on ranks other than the main one."""

    def __init__(self, names: Sequence[str], jsonl, out_dir: str, cfg, config: Dict, resume_step: int,
                 config_yaml: Optional[str], enabled: bool):
        self.jsonl = jsonl if "jsonl" in names else None
        self.others = []
        if not enabled:
            return
        if "tensorboard" in names:
            self.others.append(TensorBoardLogger(os.path.join(out_dir, "tensorboard"), resume_step, config_yaml))
        if "wandb" in names:
            self.others.append(WandbLogger(out_dir, cfg, config, resume_step))

    def metrics(self, step: int, record: Dict) -> None:
        if self.jsonl is not None:
            self.jsonl.write(record)
        for logger in self.others:
            logger.metrics(step, record)

    def event(self, record: Dict) -> None:
        if self.jsonl is not None:
            self.jsonl.write(record)
        for logger in self.others:
            logger.event(record)

    def video(self, step: int, tag: str, gif_path: str, height: int, width: int) -> None:
        for logger in self.others:
            logger.video(step, tag, gif_path, height, width)

    def close(self) -> None:
        for logger in self.others:
            logger.close()
        self.others = []
