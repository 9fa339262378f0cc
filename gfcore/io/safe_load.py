"""torch.load that can never run code, with errors that name the file and what it asked for."""
from __future__ import annotations

import hashlib
import os
import pickle
import re
from pathlib import Path
from typing import Any, Iterable, List, Optional

import torch


class UnsafeFileError(ValueError):
    """A file that would need more than tensors and plain containers to load.

    It is refused before anything in it runs; `globals` names the classes or functions that
    its pickle asks for.
    """

    def __init__(self, message: str, globals_needed: Iterable[str] = ()):
        super().__init__(message)
        self.globals = list(globals_needed)


def _qualified_name(obj: Any) -> str:
    """module.name of an allowed class or function, as a pickle names it."""
    return f"{obj.__module__}.{obj.__qualname__}"


def _named_in(error: Exception) -> List[str]:
    """The global torch's refusal message names (the first one the unpickler met)."""
    return sorted(set(re.findall(r"GLOBAL ([\w.]+)", str(error))))


def _globals_asked_for(path: Path, error: Exception) -> List[str]:
    """Every global the pickle in `path` names beyond torch's defaults, read without running it
    (zip files), else the one in torch's refusal message (legacy, non-zip files)."""
    try:
        return sorted(set(torch.serialization.get_unsafe_globals_in_checkpoint(str(path))))
    except Exception:  # not a zip checkpoint
        return _named_in(error)


def _damage_found(error: Exception) -> str:
    """What torch's unpickler found wrong in a damaged pickle, in one line (its message around it
    advises loading with weights_only=False, which would run the file's code)."""
    text = str(error)
    detail = text.split("WeightsUnpickler error:", 1)[1] if "WeightsUnpickler error:" in text else text
    lines = [line.strip() for line in detail.splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


def load_weights_only(path: os.PathLike | str, what: str, allowed: Iterable[Any] = (), mmap: bool = False) -> Any:
    """`torch.load(path, weights_only=True)` onto the CPU, with `allowed` (classes or functions)
    added to torch's allowlist for this call only.

    A pickle that asks for anything else is refused with UnsafeFileError naming the file and
    each class it wanted; nothing in it is executed. A damaged pickle raises
    pickle.UnpicklingError in one line saying what the unpickler found; it and other read errors
    (a truncated zip file, a missing file) reach the caller, which names the file, so that callers
    can tell damage from danger.
    """
    path = Path(path)
    allowed = list(allowed)
    try:
        with torch.serialization.safe_globals(allowed):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:
        names = _globals_asked_for(path, exc)
        names = [n for n in names if n not in {_qualified_name(a) for a in allowed}]
        if not names:  # a damaged pickle (nothing outside the allowlist named), not a dangerous one
            raise pickle.UnpicklingError(f"a damaged pickle, not a readable {what} ({_damage_found(exc)})") from exc
        listed = ", ".join(names)
        raise UnsafeFileError(
            f"{what} {str(path)!r}: refused, not loaded: it asks for {listed}, which loading with "
            f"weights_only=True does not allow (a pickle that names arbitrary classes or functions can run "
            f"code when read)", names) from exc


def sha256_of(path: os.PathLike | str, chunk_bytes: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


def verify_sha256(path: os.PathLike | str, expected: Optional[str], what: str, trust_flag: str,
                  trusted: bool = False) -> str:
    """The file's SHA-256, after checking it against `expected` (the published file's).

    A mismatch, or a file whose published digest gfcore has not recorded (`expected` None), is
    refused with UnsafeFileError unless `trusted` (the user passed `trust_flag`).
    """
    actual = sha256_of(path)
    if expected is not None and actual == expected.lower():
        return actual
    if trusted:
        return actual
    known = f"the published file's is {expected}" if expected else "gfcore has no published digest recorded for it"
    raise UnsafeFileError(
        f"{what} {str(path)!r}: SHA-256 {actual} is not verified ({known}). This file is code "
        f"(TorchScript) and runs when loaded; load it only if you trust where it came from, by passing {trust_flag}.")
