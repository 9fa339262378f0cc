"""The `gfcore` command: demo, train, sample, eval and synthetic subcommands."""
from __future__ import annotations

import sys
from typing import Optional, Sequence

USAGE = """usage: gfcore COMMAND [ARGS]

commands:
  demo [--out DIR] [--scale cpu|gpu] [overrides]   the main job: data, baseline + GF training, rollouts, report
  train [hydra overrides]                           train, e.g. gfcore train experiment=demo teacher=none
  plan [--world-size N] [--json] [overrides]       peak GPU memory of a training run, planned on the CPU
  sample RUN --out DIR [...]                        rollouts of a trained run (mp4 + gif); DFoT runs: DDIM,
                                                    history guidance, --protocol dfot256
  sample --checkpoint PATH --model dfot_re10k --data-root ROOT --out DIR [...]   a released DFoT / GF model
  eval --generated DIR --reference DIR --out DIR    the paper's metrics (python -m gfcore.metrics)
  eval --protocol dfot256 (--run RUN | --checkpoint PATH --model dfot_re10k) --data-root ROOT --out DIR
                                                    sample with the 256-frame protocol, then score
  synthetic ROOT [...]                              render the built-in synthetic scenes
  convert-checkpoint PATH --trust                   rewrite an earlier gfcore's checkpoints in the safe format
"""


def _train(argv: Sequence[str]) -> int:
    from omegaconf import OmegaConf

    from gfcore.train import load_config, train
    from gfcore.train.loggers import MissingLoggerPackage
    from gfcore.train.resume import ResumeError
    from gfcore.models.dfot.checkpoint import CheckpointError

    if any(a in ("-h", "--help") for a in argv):
        print("usage: gfcore train [hydra overrides]\n\nconfigs: gfcore/configs (model, data, teacher, train, sample, "
              "experiment=demo|re10k|minecraft|re10k_gf_finetune)\n"
              "example: gfcore train experiment=demo teacher=none train.steps=50\n"
              "multi-GPU: torchrun --nproc_per_node=8 -m gfcore train experiment=re10k data.root=...\n"
              "resume: train.resume=auto|none|PATH, train.resume_allow_changes=[train.lr,...]\n"
              "DFoT: model=dfot_re10k train.objective=dfot train.init_from=PATH train.grad_accum=N\n"
              "logging: train.loggers=[jsonl,tensorboard,wandb] train.sample_every=N\n"
              "memory/speed: train.activation_checkpointing=true train.compile=true")
        return 0
    cfg = load_config(argv)
    print(OmegaConf.to_yaml(cfg))
    try:
        train(cfg)
    # a refusal with its remedy, not a crash: no traceback
    except (ResumeError, MissingLoggerPackage, CheckpointError) as exc:
        print(f"gfcore train: error: {exc}", file=sys.stderr)
        return 2
    return 0


# The optional packages behind the commands, by import name: the extra of setup.py that brings each.
OPTIONAL_PACKAGES = {"hydra": "train", "omegaconf": "train", "av": "train", "PIL": "train", "scipy": "eval",
                     "matplotlib": "demo"}


def main(argv: Optional[Sequence[str]] = None) -> int:
    try:
        from gfcore.train.config import ConfigError
    except ModuleNotFoundError as exc:
        return _missing_extra(exc, argv)
    try:
        return _dispatch(argv)
    except ConfigError as exc:  # a typo in an override: one line naming the key, not a traceback
        print(f"gfcore: error: {exc}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:
        return _missing_extra(exc, argv)


def _missing_extra(exc: ModuleNotFoundError, argv) -> int:
    """A command whose optional package is not installed: name the extra that brings it."""
    package = (exc.name or "").split(".")[0]
    if package not in OPTIONAL_PACKAGES:
        raise exc
    command = (list(sys.argv[1:] if argv is None else argv) or ["gfcore"])[0]
    extra = OPTIONAL_PACKAGES[package]
    print(f"gfcore {command}: error: this command needs the package {package!r}, which `pip install gfcore` "
          f"leaves out (it installs only what the loss needs). Install the extra: pip install --no-build-isolation "
          f"'.[{extra}]' in the checkout (or '.[train,eval,demo]' for every command).", file=sys.stderr)
    return 2


def _dispatch(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command == "demo":
        from gfcore.demo.job import main as demo_main

        return demo_main(rest)
    if command == "train":
        return _train(rest)
    if command == "plan":
        from gfcore.train.plan import main as plan_main

        return plan_main(rest)
    if command == "sample":
        from gfcore.sample.run import main as sample_main

        return sample_main(rest)
    if command == "eval":
        from gfcore.metrics.cli import main as eval_main

        return eval_main(rest)
    if command == "synthetic":
        from gfcore.data.synthetic.__main__ import main as synthetic_main

        return synthetic_main(rest)
    if command == "convert-checkpoint":
        from gfcore.io.convert import main as convert_main

        return convert_main(rest)
    print(f"gfcore: unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
    return 2
