"""The CPU replays of the CUDA kernels' index math (scripts/emulate_*.py) must agree with the
tested CPU paths. They check logic only -- not the compiler or the hardware -- so they run on
every machine, catching an indexing slip in a kernel before any GPU sees it."""
import importlib.util
import pathlib

import pytest

SCRIPTS = pathlib.Path(__file__).resolve().parents[1] / "scripts"


def load_script(name):
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", ["emulate_alignment_grids", "emulate_attention_kernels"])
def test_emulated_kernels_match(name, capsys):
    status = load_script(name).main()
    report = capsys.readouterr().out
    assert status == 0, report
    assert "ALL OK" in report
