"""gfcore says so when the compiled extension did not load from a source checkout.

`python -c "import gfcore"` run from the checkout root imports the checkout's gfcore/, which
has no gfcore._C unless built in place: backends() then reports no kernels, and a warning
names the cause and the fixes.
"""
import os
import shutil
import subprocess
import sys

import gfcore
import gfcore._extension as extension

MISSING = ModuleNotFoundError("No module named 'gfcore._C'")


def _fake_tree(root, checkout, built=False):
    package = root / "gfcore"
    package.mkdir(parents=True)
    if checkout:
        (root / "setup.py").write_text("")
        (root / "csrc").mkdir()
    if built:
        (package / "_C.cpython-311-x86_64-linux-gnu.so").write_bytes(b"")
    return str(package)


def test_source_checkout_without_extension_warns_with_the_fixes(tmp_path):
    message = extension.extension_warning(MISSING, _fake_tree(tmp_path, checkout=True))
    assert "imported from the source checkout" in message
    assert "no compiled gfcore._C" in message
    assert "run from outside the checkout" in message
    assert "python setup.py build_ext --inplace" in message


def test_broken_in_place_build_names_the_error(tmp_path):
    error = ImportError("undefined symbol: _ZN3c10")
    message = extension.extension_warning(error, _fake_tree(tmp_path, checkout=True, built=True))
    assert "failed to load (undefined symbol: _ZN3c10)" in message


def test_installed_package(tmp_path):
    # Built without torch (GFCORE_ALLOW_NO_TORCH=1): no _C by choice, nothing to say.
    assert extension.extension_warning(MISSING, _fake_tree(tmp_path / "a", checkout=False)) is None
    # A compiled _C that does not load (e.g. torch upgraded under it) is worth a warning.
    message = extension.extension_warning(ImportError("undefined symbol: x"),
                                          _fake_tree(tmp_path / "b", checkout=False, built=True))
    assert "failed to load (undefined symbol: x)" in message
    assert "pip install --no-build-isolation ." in message
    assert extension.extension_warning(None, _fake_tree(tmp_path / "c", checkout=True)) is None


def test_this_import_matches_its_layout():
    assert extension.is_source_checkout() == os.path.isfile(
        os.path.join(os.path.dirname(os.path.dirname(gfcore.__file__)), "setup.py"))


def test_python_c_from_a_checkout_root_warns_once(tmp_path):
    """The new user's command, run from the root of a copy of the checkout without _C."""
    checkout = tmp_path / "checkout"
    shutil.copytree(os.path.dirname(gfcore.__file__), checkout / "gfcore",
                    ignore=shutil.ignore_patterns("_C.*", "__pycache__"))
    (checkout / "setup.py").write_text("")
    (checkout / "csrc").mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONWARNINGS")}
    env["OMP_NUM_THREADS"] = "1"
    done = subprocess.run(
        [sys.executable, "-c", "import gfcore, gfcore.ops; print(gfcore.__file__); "
                               "print(gfcore.backends())"],
        cwd=checkout, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    imported, backends = done.stdout.splitlines()
    assert imported == str(checkout / "gfcore" / "__init__.py")
    assert backends == "{'cpu': False, 'cuda': False}"
    assert done.stderr.count("UserWarning: gfcore was imported from the source checkout") == 1
    assert "python setup.py build_ext --inplace" in done.stderr
