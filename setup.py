"""Build gfcore and its C++/CUDA extension ``gfcore._C``.

torch must be installed first, in the environment gfcore is installed into (install_requires
leaves it out: the kernels are compiled against the torch you chose, CPU or CUDA build); then
build against it without build isolation:
    pip install torch && pip install --no-build-isolation .
(scripts/setup_env.sh does this with the tested torch.) Without torch the build stops with a
message saying so, rather than quietly installing the package without its kernels.

Switches (environment variables):
  GFCORE_ALLOW_NO_TORCH=1  build without torch anyway: the pure-Python package only (no
                         gfcore._C; the ops fall back to their PyTorch references once torch
                         is installed), e.g. for `python -m build --sdist` on a machine
                         without torch.
  GFCORE_CUDA=auto|0|1   auto (default): build the CUDA kernels when nvcc and a CUDA build of
                         torch are present; 0: CPU kernels only; 1: fail unless CUDA builds.
  TORCH_CUDA_ARCH_LIST   architectures to compile for; defaults to "8.0;9.0" when no GPU is
                         visible (A100 and H100), else the visible GPU's.
  GFCORE_FAIL_ON_SPILLS=1  fail the CUDA build when ptxas spills registers in any kernel
                         (ptxas -warn-spills -Werror); `make test`, and so CI, sets it.
  GFCORE_BUILD_DIR       build folder (default build/): one per torch version avoids rebuilds.
  MAX_JOBS               parallel compile jobs (torch's ninja builder honours it).
  CUDA_HOME              toolkit location; found from nvcc or /usr/local/cuda otherwise.
"""
import glob
import os
import shutil
import sys

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _find_cuda_home():
    """The CUDA toolkit: $CUDA_HOME, else nvcc's real location, else the standard path."""
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            return os.environ[var]
    candidates = []
    nvcc = shutil.which("nvcc")
    if nvcc:
        # nvcc on the PATH may be a symlink or a wrapper (/usr/local/bin/nvcc): the toolkit
        # is the folder above the real binary only if its headers are there.
        candidates.append(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
    candidates += ["/usr/local/cuda"] + sorted(glob.glob("/usr/local/cuda-*"), reverse=True)
    for candidate in candidates:
        if os.path.exists(os.path.join(candidate, "bin", "nvcc")) and os.path.exists(
                os.path.join(candidate, "include", "cuda_runtime.h")):
            return candidate
    return None


def _pip_cuda_include_dirs():
    """Headers of the CUDA libraries that pip's torch brings (cuSPARSE, cuBLAS, ...).

    torch's CUDA headers include them, and a minimal toolkit may not carry them. They go on
    the -isystem path, after the toolkit's own headers, so that nvcc keeps its runtime headers.
    """
    import importlib.util

    spec = importlib.util.find_spec("nvidia")
    if spec is None or not spec.submodule_search_locations:
        return []
    dirs = []
    for base in spec.submodule_search_locations:
        dirs += sorted(d for d in glob.glob(os.path.join(base, "*", "include")) if os.path.isdir(d))
    return dirs


def _want_cuda(torch):
    mode = os.environ.get("GFCORE_CUDA", "auto").lower()
    if mode not in ("auto", "0", "1"):
        raise SystemExit(f"GFCORE_CUDA must be auto, 0 or 1, got {mode!r}")
    if mode == "0":
        return False
    cuda_home = _find_cuda_home()
    reasons = []
    if cuda_home is None:
        reasons.append("no CUDA toolkit found (set CUDA_HOME)")
    if torch.version.cuda is None:
        reasons.append(f"torch {torch.__version__} is a CPU-only build")
    if reasons:
        if mode == "1":
            raise SystemExit("GFCORE_CUDA=1 but " + "; ".join(reasons))
        print("gfcore: building CPU kernels only: " + "; ".join(reasons))
        return False
    os.environ["CUDA_HOME"] = cuda_home
    return True


def _import_torch():
    """torch of the environment gfcore is being installed into, or the ImportError.

    A plain `pip install .` builds in an isolated environment that hides it; the extension
    must be compiled against that very torch (same version and ABI), so look for it in the
    target environment's site-packages rather than letting pip fetch another one.
    """
    try:
        import torch

        return torch
    except ImportError:
        pass
    import sysconfig

    for key in ("purelib", "platlib"):
        path = sysconfig.get_paths()[key]
        if os.path.isdir(os.path.join(path, "torch")) and path not in sys.path:
            sys.path.append(path)
    try:
        import torch

        return torch
    except ImportError as exc:
        return exc


def _no_torch_message(error):
    return f"""
gfcore: cannot build the compiled kernels (gfcore._C): torch cannot be imported by
{sys.executable}
({type(error).__name__}: {error}).

torch must be installed in this environment before gfcore (gfcore does not pull it in: its
kernels are compiled against the torch you chose, CPU or CUDA build), then gfcore built
against it without build isolation:
    {sys.executable} -m pip install torch
    {sys.executable} -m pip install --no-build-isolation .      (in the gfcore checkout)
or run `make setup` (scripts/setup_env.sh), which installs the tested torch and then gfcore.
To install the pure-Python package without the kernels anyway, set GFCORE_ALLOW_NO_TORCH=1.
"""


def _check_torch_support(version):
    """Refuse to build against a torch older than gfcore supports (gfcore/torch_support.py)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("_gfcore_torch_support",
                                                  os.path.join(ROOT, "gfcore", "torch_support.py"))
    support = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(support)
    problem = support.support_problem(version)
    if problem is None:
        return
    kind, message = problem
    if kind == "error" and os.environ.get(support.ALLOW_ENV) != "1":
        raise SystemExit("gfcore: " + message)
    print("gfcore: warning: " + message)


def _extension():
    torch = _import_torch()
    if isinstance(torch, ImportError):
        if os.environ.get("GFCORE_ALLOW_NO_TORCH") == "1":
            print(f"gfcore: GFCORE_ALLOW_NO_TORCH=1 and torch cannot be imported ({torch}): "
                  "building the pure-Python package only, without gfcore._C")
            return [], {}
        raise SystemExit(_no_torch_message(torch))
    _check_torch_support(torch.__version__)
    from torch.utils import cpp_extension

    with_cuda = _want_cuda(torch)
    # Every family of ops lives in csrc/<family>/: *.cpp are CPU kernels, *.cu CUDA kernels.
    sources = sorted(glob.glob("csrc/**/*.cpp", recursive=True))
    # -fopenmp: at::parallel_for is an inline `#pragma omp parallel` in torch's headers, so
    # without it every CPU kernel runs on one thread. The libgomp it links is the one torch
    # already loaded (same soname), so both share one thread pool and torch.set_num_threads.
    # -fno-trapping-math: let the compiler turn clamps into vector selects.
    cxx_flags = ["-O3", "-std=c++20", "-fno-trapping-math"]
    link_flags = []
    if sys.platform.startswith("linux"):
        cxx_flags.append("-fopenmp")
        link_flags.append("-fopenmp")
    else:
        cxx_flags.append("-fopenmp-simd")  # the `omp simd` loops still vectorise
    define_macros = []
    extra = {"cxx": cxx_flags}
    if with_cuda:
        # Must be set before cpp_extension reads it; without a GPU torch would guess.
        if not os.environ.get("TORCH_CUDA_ARCH_LIST"):
            if torch.cuda.is_available():
                major, minor = torch.cuda.get_device_capability()
                os.environ["TORCH_CUDA_ARCH_LIST"] = f"{major}.{minor}"
            else:
                os.environ["TORCH_CUDA_ARCH_LIST"] = "8.0;9.0"
        # cpp_extension caches CUDA_HOME at import time; refresh it.
        cpp_extension.CUDA_HOME = os.environ["CUDA_HOME"]
        sources += sorted(glob.glob("csrc/**/*.cu", recursive=True))
        define_macros.append(("GFCORE_WITH_CUDA", None))
        extra["cxx"].append("-DGFCORE_WITH_CUDA")
        extra["nvcc"] = ["-O3", "-std=c++20", "--use_fast_math", "-lineinfo", "-DGFCORE_WITH_CUDA"]
        if os.environ.get("GFCORE_FAIL_ON_SPILLS") == "1":
            # A spill to local memory is a performance bug: ptxas reports it (-warn-spills) and
            # -Werror makes it an error, at no extra compile cost (the gate of `make test` / CI).
            extra["nvcc"] += ["-Xptxas", "-warn-spills", "-Xptxas", "-Werror"]
            print("gfcore: GFCORE_FAIL_ON_SPILLS=1: a CUDA kernel that spills registers fails the build")
        for include in _pip_cuda_include_dirs():
            if not os.path.exists(os.path.join(cpp_extension.CUDA_HOME, "include", "cusparse.h")):
                extra["cxx"] += ["-isystem", include]
                extra["nvcc"] += ["-isystem", include]
        print(f"gfcore: building CUDA kernels for {os.environ['TORCH_CUDA_ARCH_LIST']} "
              f"with {cpp_extension.CUDA_HOME}")
        ext_cls = cpp_extension.CUDAExtension
    else:
        ext_cls = cpp_extension.CppExtension
    ext = ext_cls(
        name="gfcore._C",
        sources=sources,
        include_dirs=[os.path.join(ROOT, "csrc")],
        define_macros=define_macros,
        extra_compile_args=extra,
        extra_link_args=link_flags,
    )
    return [ext], {"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)}


# What `pip install .` brings is what the loss needs: torch (the user's, installed first; the
# metadata pins the version built against), numpy, einops; the trainer, the metrics and the demo
# are extras. gfcore/cli.py names the extra a
# command needs when one of its packages is missing.
CORE_REQUIRES = ["numpy", "einops"]
TRAIN_REQUIRES = ["hydra-core", "av", "pillow"]  # configs, video decoding, image frames
EVAL_REQUIRES = ["scipy", "av", "pillow"]        # FVD's matrix square root, reading videos


def _dev_requires():
    """requirements-dev.txt without its --no-deps lines (setup_env.sh installs those apart)."""
    path = os.path.join(ROOT, "requirements-dev.txt")
    if not os.path.exists(path):  # an sdist built without it
        return []
    lines = [line.split("#")[0].strip() for line in open(path) if "# no-deps" not in line]
    return [line for line in lines if line]


EXTRAS_REQUIRE = {
    "train": TRAIN_REQUIRES,
    "eval": EVAL_REQUIRES,
    "demo": sorted(set(TRAIN_REQUIRES + EVAL_REQUIRES + ["matplotlib"])),
    "dev": sorted(set(TRAIN_REQUIRES + EVAL_REQUIRES + ["matplotlib"] + _dev_requires())),
    "nvtx": ["nvtx"],
    "safetensors": ["safetensors"],
    "decord": ["decord"],
}

def _torch_requirement():
    """torch as the kernels were built against (its public version: a CPU or CUDA build of it
    both satisfy it), so that pip refuses, rather than silently makes, a swap to a torch whose
    ABI the compiled gfcore._C does not match. None when built without torch."""
    torch = _import_torch()
    if isinstance(torch, ImportError):
        return []
    return [f"torch=={torch.__version__.split('+')[0]}"]


ext_modules, cmdclass = _extension()
CORE_REQUIRES = CORE_REQUIRES + _torch_requirement()
# GFCORE_BUILD_DIR: where the build's objects go (default build/), so that environments built
# against different torch versions (make test-torch-min) do not rebuild each other's objects.
build_options = {"build": {"build_base": os.environ["GFCORE_BUILD_DIR"]}} if os.environ.get("GFCORE_BUILD_DIR") else {}

setup(
    name="gfcore",
    version="0.1.0",
    description="Fused kernels and a thin trainer for Geometry Forcing video diffusion",
    packages=find_packages(include=["gfcore", "gfcore.*"]),
    package_data={"gfcore": ["configs/*.yaml", "configs/**/*.yaml"], "gfcore.geometry": ["*.json"]},
    python_requires=">=3.10",
    install_requires=CORE_REQUIRES,
    extras_require=EXTRAS_REQUIRE,
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    options=build_options,
    entry_points={"console_scripts": ["gfcore=gfcore.cli:main"]},
)
