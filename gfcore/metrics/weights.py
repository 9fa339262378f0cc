"""Finding metric network weights on local disk only (nothing is ever downloaded)."""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Iterable, Optional

import torch


class WeightsUnavailable(RuntimeError):
    """A metric cannot run because its weights are not on this machine.

    The message says why; reports print it as "unavailable: <message>".
    """


def torch_hub_checkpoint_dir() -> Path:
    """The folder where torch.hub / torchvision cache downloaded checkpoints."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def lpips_package_weight_dir() -> Optional[Path]:
    """Folder of the linear-layer weights bundled with the `lpips` pip package, if installed.

    Found without importing lpips (its import needs torchvision, which may be missing).
    """
    spec = importlib.util.find_spec("lpips")
    if spec is None or spec.origin is None:
        return None
    folder = Path(spec.origin).parent / "weights" / "v0.1"
    return folder if folder.is_dir() else None


def find_first(candidates: Iterable[Path]) -> Optional[Path]:
    for path in candidates:
        if path is not None and path.is_file():
            return path
    return None


def load_state_dict_file(path: os.PathLike, what: str) -> dict:
    """torch.load a state_dict onto the CPU with a clear error naming the file."""
    path = Path(path)
    if not path.is_file():
        raise WeightsUnavailable(f"{what}: file not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt or not a torch file
        raise ValueError(f"{what}: cannot read {path} as a torch state_dict ({exc})") from exc
    if not isinstance(state, dict):
        raise ValueError(f"{what}: {path} holds a {type(state).__name__}, expected a state_dict")
    return state


def load_torchscript(path: Optional[os.PathLike], what: str, flag: str, device="cpu") -> torch.jit.ScriptModule:
    """Load a TorchScript feature network from a local file.

    Raises WeightsUnavailable when no path is given or the file is absent (the message
    names the command-line flag), ValueError when the file is not TorchScript.
    """
    import warnings

    if path is None:
        raise WeightsUnavailable(f"no {what} given (pass {flag} PATH)")
    path = Path(path)
    if not path.is_file():
        raise WeightsUnavailable(f"{what} not found: {path}")
    try:
        with warnings.catch_warnings():  # the published networks only exist as TorchScript
            warnings.simplefilter("ignore", DeprecationWarning)
            return torch.jit.load(str(path), map_location=device).eval()
    except Exception as exc:
        raise ValueError(f"{flag}: cannot load {path} as a TorchScript module ({exc})") from exc
