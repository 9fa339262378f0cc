"""Loading the hydra-core configs shipped in gfcore/configs (compose API, no working-dir change)."""
from __future__ import annotations

import os
from typing import Optional, Sequence

from hydra.errors import ConfigCompositionException
from omegaconf import DictConfig, OmegaConf

CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


class ConfigError(ConfigCompositionException, ValueError):
    """A bad override, in one line: the key or option and the nearest valid names (still a hydra
    ConfigCompositionException for callers that catch those)."""


def _compose(overrides: Sequence[str], config_name: str) -> DictConfig:
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():
        GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config_name=config_name, overrides=list(overrides))


def _group_options(group: str) -> list:
    folder = os.path.join(CONFIG_DIR, group)
    return sorted(f[:-5] for f in os.listdir(folder) if f.endswith(".yaml")) if os.path.isdir(folder) else []


def _flat_keys(node, prefix: str = "") -> list:
    keys = []
    for key, value in node.items():
        name = f"{prefix}{key}"
        keys.append(name)
        if OmegaConf.is_dict(value):
            keys += _flat_keys(value, name + ".")
    return keys


def _explain(exc: Exception, overrides: Sequence[str], config_name: str) -> Optional[str]:
    """A one-line message for a hydra composition error, or None when it is not about an override."""
    import difflib
    import re

    text = str(exc)
    missing = re.search(r"Could not find '([^']+)/([^']+)'", text)
    if missing:
        group, option = missing.groups()
        options = _group_options(group)
        near = difflib.get_close_matches(option, options, n=3, cutoff=0.3)
        return (f"no config {group}={option}" + (f"; nearest: {', '.join(near)}" if near else "")
                + f" (all {group} options: {', '.join(options)})")
    unknown = re.search(r"Could not override '([^']+)'", text)
    if unknown:
        key = unknown.group(1)
        rest = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") != key]
        try:
            keys = _flat_keys(_compose(rest, config_name))
        except Exception:  # noqa: BLE001 - another bad override: name the candidates from the defaults
            keys = _flat_keys(_compose([], config_name))
        keys += [g for g in os.listdir(CONFIG_DIR) if os.path.isdir(os.path.join(CONFIG_DIR, g))]
        near = difflib.get_close_matches(key, sorted(set(keys)), n=3, cutoff=0.5)
        return (f"unknown config key {key!r}" + (f"; nearest: {', '.join(near)}" if near else "")
                + f" (a new key needs a leading '+': +{key}=...)")
    if "Error parsing override" in text:
        return text.splitlines()[0] + " (hydra override syntax: key=value, e.g. train.steps=100)"
    return None


def load_config(overrides: Optional[Sequence[str]] = None, config_name: str = "config") -> DictConfig:
    """Compose gfcore/configs/{config_name}.yaml with hydra overrides, e.g.
    ["experiment=demo", "train.steps=50", "teacher=none", "model.depth=2"].

    A typo in an override raises ConfigError with a one-line message naming the key (or group
    option) and the nearest valid names."""
    from hydra.errors import HydraException

    overrides = list(overrides or [])
    try:
        cfg = _compose(overrides, config_name)
    except HydraException as exc:
        message = _explain(exc, overrides, config_name)
        if message is None:
            raise
        raise ConfigError(message) from None
    OmegaConf.resolve(cfg)
    return cfg
