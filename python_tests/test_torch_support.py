"""The declared torch range (gfcore/torch_support.py): enforced at import and at build, and
consistent with the pins of scripts/setup_env.sh, the Makefile's minimum and the installation docs."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gfcore import torch_support
from gfcore.torch_support import MINIMUM, NEWEST_TESTED, check_torch_version, parse_minor, support_problem

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("version, expected", [
    ("2.11.0+cu130", (2, 11)), ("2.14.1", (2, 14)), ("2.12.0a0+git1234abc", (2, 12)), ("10.2", (10, 2))])
def test_parse_minor(version, expected):
    assert parse_minor(version) == expected


def test_parse_minor_refuses_garbage():
    with pytest.raises(ValueError, match="'nightly'"):
        parse_minor("nightly")


def _minor_string(minor, patch=0):
    return f"{minor[0]}.{minor[1]}.{patch}"


def test_the_range_itself_is_supported():
    assert MINIMUM <= NEWEST_TESTED
    for version in (_minor_string(MINIMUM), _minor_string(MINIMUM) + "+cu130", _minor_string(NEWEST_TESTED, 1),
                    f"{NEWEST_TESTED[0]}.{NEWEST_TESTED[1]}.9a0+gitdeadbee"):
        assert support_problem(version) is None, version
    assert support_problem(torch.__version__) is None, "the tests run on a torch outside the declared range"


def test_range_reads_as_major_dot_minor():
    dotted = lambda v: ".".join(str(n) for n in v)  # noqa: E731
    assert torch_support.describe_range() == f"torch {dotted(MINIMUM)} through {dotted(NEWEST_TESTED)}"
    kind, message = support_problem("1.0.0")
    assert f"pip install 'torch>={dotted(MINIMUM)}'" in message


def test_older_is_an_error_newer_a_warning():
    older = f"{MINIMUM[0]}.{MINIMUM[1] - 1}.1"
    newer = f"{NEWEST_TESTED[0]}.{NEWEST_TESTED[1] + 1}.0"
    kind, message = support_problem(older)
    assert kind == "error" and older in message and torch_support.describe_range() in message
    assert support_problem("1.13.1")[0] == "error"
    kind, message = support_problem(newer)
    assert kind == "warning" and newer in message and "untested" in message
    assert support_problem("3.0.0")[0] == "warning"


def test_check_raises_for_old_and_warns_for_new(monkeypatch):
    monkeypatch.delenv(torch_support.ALLOW_ENV, raising=False)
    with pytest.raises(ImportError, match="gfcore supports torch"):
        check_torch_version(f"{MINIMUM[0]}.{MINIMUM[1] - 1}.0")
    with pytest.warns(UserWarning, match="newer and untested"):
        check_torch_version(f"{NEWEST_TESTED[0]}.{NEWEST_TESTED[1] + 1}.0")


def test_allow_env_turns_the_error_into_a_warning_and_silences_newer(monkeypatch, recwarn):
    monkeypatch.setenv(torch_support.ALLOW_ENV, "1")
    with pytest.warns(UserWarning, match="gfcore supports torch"):
        check_torch_version(f"{MINIMUM[0]}.{MINIMUM[1] - 1}.0")
    recwarn.clear()
    check_torch_version(f"{NEWEST_TESTED[0]}.{NEWEST_TESTED[1] + 1}.0")
    assert not [w for w in recwarn if "untested" in str(w.message)]


def _python_with_torch_version(version, code, env_extra=None):
    """Run `code` in a fresh interpreter whose torch reports `version` (set before gfcore sees it)."""
    env = {k: v for k, v in os.environ.items() if k != torch_support.ALLOW_ENV}
    env.update(env_extra or {})
    script = f"import torch; torch.__version__ = {version!r}\n{code}"
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd="/",
                          timeout=300)


def test_import_refuses_a_too_old_torch():
    old = f"{MINIMUM[0]}.{MINIMUM[1] - 1}.0"
    result = _python_with_torch_version(old, "import gfcore")
    assert result.returncode != 0
    assert "ImportError" in result.stderr and f"this environment has torch {old}" in result.stderr


def test_import_warns_for_a_newer_torch():
    new = f"{NEWEST_TESTED[0]}.{NEWEST_TESTED[1] + 1}.0"
    result = _python_with_torch_version(new, "import warnings; warnings.simplefilter('always')\nimport gfcore")
    assert result.returncode == 0, result.stderr
    # attributed to the line that imported gfcore (stacklevel), not to gfcore's own files
    assert "<string>:3: UserWarning: gfcore is tested with" in result.stderr  # line 3: "import gfcore"
    assert f"torch {new} is newer and untested" in result.stderr


@pytest.mark.skipif(not (ROOT / "setup.py").is_file(), reason="needs the source checkout (setup.py)")
def test_build_refuses_a_too_old_torch():
    old = f"{MINIMUM[0]}.{MINIMUM[1] - 1}.0"
    code = f"import runpy, sys; sys.argv = ['setup.py', '--name']; runpy.run_path({str(ROOT / 'setup.py')!r})"
    result = _python_with_torch_version(old, code)
    assert result.returncode != 0
    assert f"gfcore: gfcore supports torch" in result.stderr and old in result.stderr


@pytest.mark.skipif(not (ROOT / "Makefile").is_file(), reason="needs the source checkout")
def test_pins_agree_with_the_declared_range():
    setup_env = (ROOT / "scripts" / "setup_env.sh").read_text()
    pinned_cuda = re.search(r"^TORCH_CUDA_VERSION=(\S+)", setup_env, re.M).group(1)
    pinned_cpu = re.search(r"^TORCH_CPU_VERSION=(\S+)", setup_env, re.M).group(1)
    assert parse_minor(pinned_cuda) == NEWEST_TESTED
    assert MINIMUM <= parse_minor(pinned_cpu) <= NEWEST_TESTED
    tested_minimum = re.search(r"^TORCH_MIN \?= (\S+)", (ROOT / "Makefile").read_text(), re.M).group(1)
    assert parse_minor(tested_minimum) == MINIMUM
    # the installation page (docs/installation.md, linked from the README's quickstart) states the range
    assert torch_support.describe_range() in (ROOT / "docs" / "installation.md").read_text()


def test_our_constant_marking_is_torchs():
    """gfcore marks has_kernel / choose as constant for torch.compile without importing dynamo;
    torch's own decorator must mark a function exactly alike (else the fullgraph tests break)."""
    from gfcore._extension import assume_constant_result

    def ours():
        return 1

    def theirs():
        return 1

    assume_constant_result(ours)
    torch.compiler.assume_constant_result(theirs)
    assert vars(ours) == vars(theirs) == {"_dynamo_marked_constant": True}


def test_import_gfcore_and_the_loss_leaves_dynamo_unloaded():
    """`import gfcore; gfcore.GeometryAlignmentLoss` costs ~0.03 s beyond torch (measured in the
    issue-21 note); torch._dynamo alone would add ~0.9 s, so its absence is what this guards."""
    code = "import sys, gfcore; gfcore.GeometryAlignmentLoss; print('torch._dynamo' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/", timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"
