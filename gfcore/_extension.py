"""Loading the compiled extension and reporting which backends it carries."""
import glob
import os
import warnings

import torch

try:
    from gfcore import _C  # noqa: F401  (importing registers the gfcore:: ops)

    EXTENSION_ERROR = None
except ImportError as exc:  # the pure-PyTorch reference paths still work
    _C = None
    EXTENSION_ERROR = exc

PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


def is_source_checkout(package_dir: str = PACKAGE_DIR) -> bool:
    """True when gfcore is imported from its source tree (setup.py and csrc/ beside it)."""
    root = os.path.dirname(package_dir)
    return os.path.isfile(os.path.join(root, "setup.py")) and os.path.isdir(
        os.path.join(root, "csrc"))


def extension_warning(error, package_dir: str = PACKAGE_DIR):
    """Why gfcore._C did not load, and the fixes, or None when there is nothing to say.

    Said when the extension failed to import from a source checkout (typically `python -c
    "import gfcore"` or `python -m pytest` run from the checkout root: the checkout shadows the
    installed package, and it has no compiled gfcore._C unless built in place), or when a
    gfcore._C file is present but failed to load. An install built without torch
    (GFCORE_ALLOW_NO_TORCH=1) has no _C file and stays quiet.
    """
    if error is None:
        return None
    built = glob.glob(os.path.join(package_dir, "_C.*"))
    if is_source_checkout(package_dir):
        if built:
            cause = f"the in-place build {os.path.basename(built[0])} failed to load ({error})"
        else:
            cause = "this source checkout has no compiled gfcore._C"
        return (f"gfcore was imported from the source checkout {package_dir}, and {cause}: "
                "gfcore.backends() reports no compiled kernels and the ops fall back to their "
                "PyTorch implementations. Either import the installed gfcore: run from outside "
                "the checkout (for the tests, the environment's `pytest` rather than `python -m "
                "pytest`, which puts the current directory first on sys.path), or build the "
                "extension in place: `python setup.py build_ext --inplace` (GFCORE_CUDA=0: CPU "
                "kernels only).")
    if built:
        return (f"gfcore: the compiled extension {built[0]} failed to load ({error}); the ops "
                "fall back to their PyTorch implementations. Rebuild gfcore against the "
                "installed torch: `pip install --no-build-isolation .` in the gfcore checkout.")
    return None


# Once per process: this module runs once.
_message = extension_warning(EXTENSION_ERROR)
if _message is not None:
    warnings.warn(_message, UserWarning, stacklevel=1)
del _message


def extension_loaded() -> bool:
    return _C is not None


def assume_constant_result(fn):
    """torch.compiler.assume_constant_result without importing torch._dynamo, which costs about
    0.9 s of `import gfcore`: in the supported torch versions that decorator does nothing but
    set this attribute, which dynamo reads when it traces a call (a test checks that the two
    mark a function alike)."""
    fn._dynamo_marked_constant = True
    return fn


@assume_constant_result  # registrations are fixed once loaded: no graph break
def has_kernel(op_name: str, device_type: str) -> bool:
    """True when gfcore::op_name has a compiled kernel for device_type (only 'cpu' and 'cuda'
    have any: every other device, mps, xpu, meta, ..., runs the PyTorch references)."""
    key = {"cpu": "CPU", "cuda": "CUDA"}.get(device_type)
    if _C is None or key is None:
        return False
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"gfcore::{op_name}", key)


def backends() -> dict:
    """Which compiled backends this install carries, e.g. {"cpu": True, "cuda": False}.

    "cuda" is True when the CUDA kernels were compiled in, whether or not a GPU is visible
    now (torch.cuda.is_available() tells that).
    """
    return {"cpu": has_kernel("bias_silu", "cpu"), "cuda": has_kernel("bias_silu", "cuda")}


_warned = set()


def warn_once(message: str, stacklevel: int = 3) -> None:
    """warnings.warn(message) the first time only; the default stacklevel names the line that
    called warn_once's caller."""
    if message not in _warned:
        _warned.add(message)
        warnings.warn(message, stacklevel=stacklevel)


def values_known(t: torch.Tensor) -> bool:
    """False for tensors without data (fake or meta: the memory planner's), whose values a check
    cannot read."""
    from torch._subclasses.fake_tensor import is_fake

    return t.device.type != "meta" and not is_fake(t)
