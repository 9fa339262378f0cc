"""Finding metric network weights on local disk only (nothing is ever downloaded)."""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Iterable, Optional

import torch

from gfcore.io.safe_load import UnsafeFileError, load_weights_only, verify_sha256


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
    """A state_dict read onto the CPU without running code, with a clear error naming the file
    (UnsafeFileError, naming the classes, for a pickle that asks for more than tensors)."""
    path = Path(path)
    if not path.is_file():
        raise WeightsUnavailable(f"{what}: file not found: {path}")
    try:
        state = load_weights_only(path, what)
    except UnsafeFileError:
        raise
    except Exception as exc:  # corrupt or not a torch file
        raise ValueError(f"{what}: cannot read {path} as a torch state_dict ({exc})") from exc
    if not isinstance(state, dict):
        raise ValueError(f"{what}: {path} holds a {type(state).__name__}, expected a state_dict")
    return state


# SHA-256 of the published TorchScript files, checked before torch.jit.load: a TorchScript file
# is code. None: gfcore has not recorded the published file's digest yet (no copy of it could be
# hashed on the offline machines gfcore is built on); such a file loads only with --trust-weights.
PUBLISHED_SHA256 = {
    "i3d": None,        # StyleGAN-V's i3d_torchscript.pt (FVD)
    "inception": None,  # StyleGAN2-ADA's inception-2015-12-05.pt (FID)
}
TRUST_FLAG = "--trust-weights"


def load_torchscript(path: Optional[os.PathLike], what: str, flag: str, device="cpu", *, network: str,
                     trust: bool = False) -> torch.jit.ScriptModule:
    """Load a TorchScript feature network from a local file, once its SHA-256 is the published
    file's (PUBLISHED_SHA256[network]) or the user trusts it (`trust`, the --trust-weights flag).

    Raises WeightsUnavailable when no path is given or the file is absent (the message
    names the command-line flag), UnsafeFileError for an unverified file (before anything in
    it is read by torch), ValueError when the file is not TorchScript.
    """
    import warnings

    if path is None:
        raise WeightsUnavailable(f"no {what} given (pass {flag} PATH)")
    path = Path(path)
    if not path.is_file():
        raise WeightsUnavailable(f"{what} not found: {path}")
    verify_sha256(path, PUBLISHED_SHA256[network], f"{flag} {what}", TRUST_FLAG, trusted=trust)
    try:
        with warnings.catch_warnings():  # the published networks only exist as TorchScript:
            warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit.load's deprecation notice,
            warnings.simplefilter("ignore", FutureWarning)  # a FutureWarning in torch >= 2.10
            return torch.jit.load(str(path), map_location=device).eval()
    except Exception as exc:
        raise ValueError(f"{flag}: cannot load {path} as a TorchScript module ({exc})") from exc
