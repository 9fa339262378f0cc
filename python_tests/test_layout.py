"""The package's layers: data -> teacher (geometry) -> model -> losses -> trainer -> sampler ->
metrics. A lower layer never imports a higher one (also inside functions), so that the sampler
and the metrics run without the trainer, and the library without the demo."""
import ast
from pathlib import Path

import pytest

import gfcore

PACKAGE = Path(gfcore.__file__).parent

# layer -> the gfcore modules (top-level names) it must not import
FORBIDDEN = {
    "data": ("geometry", "models", "losses", "train", "sample", "metrics", "demo", "demo_report", "demo_analysis"),
    "geometry": ("models", "losses", "train", "sample", "metrics", "demo", "demo_report", "demo_analysis"),
    "models": ("train", "sample", "metrics", "demo", "demo_report", "demo_analysis"),
    "losses": ("train", "sample", "metrics", "demo", "demo_report", "demo_analysis"),
    "ops": ("train", "sample", "metrics", "demo", "demo_report", "demo_analysis"),
    "io": ("train", "sample", "metrics", "demo", "demo_report", "demo_analysis"),
    "sample": ("train", "demo", "demo_report", "demo_analysis"),
    "metrics": ("train", "demo", "demo_report", "demo_analysis"),
}


def gfcore_imports(path: Path):
    """(line, top-level gfcore module) of every import of gfcore.X in the file, wherever it is."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + ([f"{node.module}.{a.name}" for a in node.names] if node.module == "gfcore" else [])
        for name in names:
            parts = name.split(".")
            if parts[0] == "gfcore" and len(parts) > 1:
                yield node.lineno, parts[1]


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_a_layer_imports_nothing_above_it(layer):
    files = sorted((PACKAGE / layer).rglob("*.py"))
    assert files, layer
    found = [f"{path.relative_to(PACKAGE.parent)}:{line} imports gfcore.{module}"
             for path in files for line, module in gfcore_imports(path) if module in FORBIDDEN[layer]]
    assert not found, "\n".join(found)


def test_the_check_sees_imports_inside_functions(tmp_path):
    planted = tmp_path / "planted.py"
    planted.write_text("def f():\n    from gfcore.train.data import build_dataset\n    import gfcore.demo\n"
                       "from gfcore import metrics\n")
    assert sorted(gfcore_imports(planted)) == [(2, "train"), (3, "demo"), (4, "metrics")]
