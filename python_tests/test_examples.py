"""The drop-in examples run as a user runs them, match the plain-PyTorch formula after four AdamW
steps, and the REPA-style adoption stays a change of at most 6 lines."""
import difflib
import importlib.util
import inspect
import re
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def load(name):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def changed_lines(before, after) -> int:
    """Lines removed plus lines added between two functions' bodies (their def lines left out)."""
    a, b = (inspect.getsource(f).splitlines()[1:] for f in (before, after))
    return sum(1 for line in difflib.unified_diff(a, b, lineterm="", n=0)
               if line[:1] in "+-" and not line.startswith(("+++", "---")))


@pytest.mark.parametrize("name", ["repa_style_step", "diffusers_dit_step"])
def test_example_matches_the_formula_after_four_adamw_steps(name):
    result = subprocess.run([sys.executable, str(EXAMPLES / f"{name}.py")], capture_output=True, text=True, cwd="/",
                            timeout=600)
    assert result.returncode == 0, result.stderr
    difference = float(re.search(r"relative L2 difference: (\S+)", result.stdout).group(1))
    assert difference <= 1e-6, result.stdout
    rows = [line.split(":", 1)[1].split() for line in result.stdout.splitlines() if line.startswith("losses")]
    assert len(rows) >= 2 and all(len(r) == 4 for r in rows)
    assert rows[-1] == rows[-2], result.stdout  # gfcore and the formula print the same losses (6 decimals)


def test_repa_style_adoption_is_at_most_six_lines():
    example = load("repa_style_step")
    body = changed_lines(example.step_before, example.step_after)
    imports = sum(1 for line in (EXAMPLES / "repa_style_step.py").read_text().splitlines()
                  if line.startswith("import gfcore"))
    assert imports == 1 and body + imports <= 6, (body, imports)


def test_the_step_changes_are_what_the_readme_says():
    """The README shows these diffs; if a step function changes, its count here (and there) must."""
    assert changed_lines(load("repa_style_step").step_before, load("repa_style_step").step_after) == 4
    dit = load("diffusers_dit_step")
    assert changed_lines(dit.step_before, dit.step_after) == 2  # the loss line (the def line aside)
