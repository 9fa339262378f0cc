"""Loading the hydra-core configs shipped in gfcore/configs (compose API, no working-dir change)."""
from __future__ import annotations

import os
from typing import Optional, Sequence

from omegaconf import DictConfig, OmegaConf

CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


def load_config(overrides: Optional[Sequence[str]] = None, config_name: str = "config") -> DictConfig:
    """Compose gfcore/configs/{config_name}.yaml with hydra overrides, e.g.
    ["experiment=demo", "train.steps=50", "teacher=none", "model.depth=2"]."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():
        GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name=config_name, overrides=list(overrides or []))
    OmegaConf.resolve(cfg)
    return cfg
