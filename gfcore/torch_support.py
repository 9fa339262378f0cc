"""The torch versions gfcore supports, checked once at import.

SUPPORTED is the declared range: MINIMUM is the oldest torch that CI builds gfcore against and
runs the Python tests on (the GPU machines run it); NEWEST_TESTED is the minor of the pinned
torch (scripts/setup_env.sh). An older torch is refused at import (the ops use torch.library
and serialization APIs whose behaviour older versions lack); a newer one gets a warning, once.
setup.py reads this file without importing gfcore, so it imports nothing but the standard library.
"""
import os
import re
import warnings

MINIMUM = (2, 11)
NEWEST_TESTED = (2, 14)
ALLOW_ENV = "GFCORE_ALLOW_UNSUPPORTED_TORCH"


def parse_minor(version: str) -> tuple:
    """(major, minor) of a torch version string ('2.11.0+cu130', '2.12.0a0+git1234' -> (2, 12))."""
    match = re.match(r"\s*(\d+)\.(\d+)", str(version))
    if match is None:
        raise ValueError(f"cannot read a torch version from {version!r}")
    return int(match.group(1)), int(match.group(2))


def describe_range() -> str:
    return f"torch {MINIMUM[0]}.{MINIMUM[1]} through {NEWEST_TESTED[0]}.{NEWEST_TESTED[1]}"


def support_problem(version: str):
    """("error" | "warning", message) when `version` is outside the supported range, else None."""
    found = parse_minor(version)
    if found < MINIMUM:
        return "error", (
            f"gfcore supports {describe_range()}, but this environment has torch {version}. Install a "
            f"supported torch (pip install 'torch>={MINIMUM[0]}.{MINIMUM[1]}') and rebuild gfcore against it "
            f"(pip install --no-build-isolation .); {ALLOW_ENV}=1 turns this error into a warning, at your risk.")
    if found > NEWEST_TESTED:
        return "warning", (
            f"gfcore is tested with {describe_range()}; torch {version} is newer and untested. "
            f"Report what breaks; {ALLOW_ENV}=1 silences this warning.")
    return None


def check_torch_version(version: str) -> None:
    """Raise ImportError for a too-old torch, warn for an untested newer one (both unless allowed)."""
    problem = support_problem(version)
    if problem is None:
        return
    kind, message = problem
    allowed = os.environ.get(ALLOW_ENV) == "1"
    if kind == "error" and not allowed:
        raise ImportError(message)
    if kind == "error" or not allowed:
        warnings.warn(message, UserWarning, stacklevel=3)
