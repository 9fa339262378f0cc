"""Docs that cannot rot: every ```python block of README.md and docs/*.md runs.

Each block runs in a fresh interpreter (its own namespace, its own process group, no state from the
test session), in an empty working folder, against the gfcore this test imported. A block that
needs a GPU, weights or data carries an HTML comment on the line right above its fence,

    <!-- skip: the reason -->

and is reported as skipped with that reason (`pytest -rs` lists them); a skip marker without a
reason, or one that is not right above a python block, fails.
"""
import os
import pathlib
import re
import subprocess
import sys

import pytest

import gfcore

ROOT = pathlib.Path(__file__).resolve().parent.parent
FILES = [ROOT / "README.md"] + sorted((ROOT / "docs").glob("*.md"))
FENCE = re.compile(r"^```python\s*$")
SKIP = re.compile(r"^\s*<!--\s*skip\s*(?::(?P<reason>.*?))?\s*-->\s*$")
TIMEOUT_S = 120


def _blocks():
    """(file, line of the fence, code, skip reason or None, marker problems) per python block."""
    found, problems = [], []
    for path in FILES:
        lines = path.read_text().splitlines()
        rel = path.relative_to(ROOT).as_posix()
        for i, line in enumerate(lines):
            marker = SKIP.match(line)
            if marker and not (i + 1 < len(lines) and FENCE.match(lines[i + 1])):
                problems.append(f"{rel}:{i + 1}: skip marker not right above a ```python block")
            if not FENCE.match(line):
                continue
            end = next((j for j in range(i + 1, len(lines)) if lines[j].strip() == "```"), None)
            if end is None:
                problems.append(f"{rel}:{i + 1}: ```python block never closed")
                continue
            above = SKIP.match(lines[i - 1]) if i > 0 else None
            reason = None
            if above:
                reason = (above.group("reason") or "").strip()
                if not reason:
                    problems.append(f"{rel}:{i}: skip marker without a reason (write <!-- skip: why -->)")
            found.append((rel, i + 1, "\n".join(lines[i + 1:end]) + "\n", reason))
    return found, problems


BLOCKS, PROBLEMS = _blocks()


def test_docs_have_python_blocks_and_well_formed_skip_markers():
    assert BLOCKS, "no ```python block found in README.md and docs/*.md"
    assert not PROBLEMS, "\n".join(PROBLEMS)


def test_list_of_skipped_blocks(capsys):
    """Prints every skipped block with its reason (shown with pytest -s; each also skips below)."""
    skipped = [(f, n, r) for f, n, _, r in BLOCKS if r is not None]
    with capsys.disabled():
        print(f"\ndocs python blocks: {len(BLOCKS)}, run {len(BLOCKS) - len(skipped)}, skipped {len(skipped)}")
        for f, n, r in skipped:
            print(f"  skipped {f}:{n}: {r}")
    assert all(r for _, _, r in skipped)


@pytest.mark.parametrize("block", BLOCKS, ids=[f"{f}:{n}" for f, n, _, _ in BLOCKS])
def test_python_block_runs(block, tmp_path):
    rel, line, code, reason = block
    if reason is not None:
        if not reason:
            pytest.fail(f"{rel}:{line}: skip marker without a reason")
        pytest.skip(f"{rel}:{line}: {reason}")
    env = dict(os.environ)
    package_parent = str(pathlib.Path(gfcore.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join([package_parent] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    env.setdefault("OMP_NUM_THREADS", "2")
    script = tmp_path / "block.py"
    script.write_text(code)
    result = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=TIMEOUT_S)
    assert result.returncode == 0, (f"{rel}:{line}: the block failed (exit {result.returncode})\n"
                                    f"--- code ---\n{code}--- stdout ---\n{result.stdout}\n"
                                    f"--- stderr ---\n{result.stderr}")


def test_api_page_shows_the_current_cli_usage():
    """docs/api.md carries `gfcore`'s usage text verbatim, in a ```text block."""
    from gfcore.cli import USAGE

    page = (ROOT / "docs" / "api.md").read_text()
    assert f"```text\n{USAGE}```\n" in page, "docs/api.md: the usage of `gfcore` differs from gfcore/cli.py's USAGE"


def command_help(command: str) -> str:
    """`gfcore sample --help` / `gfcore eval --protocol dfot256 --help` as a 100-column terminal prints it."""
    import os
    from unittest import mock

    from gfcore.metrics.protocol import build_parser as protocol_parser
    from gfcore.sample.run import build_parser as sample_parser

    with mock.patch.dict(os.environ, {"COLUMNS": "100"}):
        return {"sample": sample_parser, "eval --protocol": protocol_parser}[command]().format_help()


@pytest.mark.parametrize("command", ["sample", "eval --protocol"])
def test_api_page_shows_each_commands_current_help(command, tmp_path):
    """docs/api.md carries the commands' --help verbatim: a changed option or help text fails here
    until the page is updated (the text expected is written to the failure message)."""
    text = command_help(command)
    page = (ROOT / "docs" / "api.md").read_text()
    assert f"```text\n{text}```\n" in page, f"docs/api.md: `gfcore {command} --help` is now:\n{text}"
