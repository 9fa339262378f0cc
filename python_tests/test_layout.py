"""The package's layers: data -> teacher (geometry) -> model -> losses -> trainer -> sampler ->
metrics. A lower layer never imports a higher one (also inside functions), so that the sampler
and the metrics run without the trainer, and the library without the demo (gfcore/demo/, the
main job, which only the command line imports)."""
import ast
from pathlib import Path

import pytest

import gfcore

PACKAGE = Path(gfcore.__file__).parent

# layer -> the gfcore modules (top-level names) it must not import
FORBIDDEN = {
    "data": ("geometry", "models", "losses", "train", "sample", "metrics", "demo"),
    "geometry": ("models", "losses", "train", "sample", "metrics", "demo"),
    "models": ("losses", "train", "sample", "metrics", "demo"),
    "losses": ("train", "sample", "metrics", "demo"),
    "ops": ("train", "sample", "metrics", "demo"),
    "nn": ("train", "sample", "metrics", "demo"),
    "io": ("train", "sample", "metrics", "demo"),
    "sample": ("train", "demo"),
    "metrics": ("train", "demo"),
    # the trainer draws samples during training (train.sample_every) with the sampler
    "train": ("metrics", "demo"),
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


def test_only_the_command_line_imports_the_demo():
    importers = sorted(str(path.relative_to(PACKAGE)) for path in PACKAGE.rglob("*.py")
                       if path.parent.name != "demo" and any(m == "demo" for _, m in gfcore_imports(path)))
    assert importers == ["cli.py"]
