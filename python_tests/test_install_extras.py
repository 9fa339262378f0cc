"""`pip install .` brings only what the loss needs; the trainer, metrics and demo are extras.

The core is exercised in a fresh interpreter whose imports of every optional package fail, as in
an environment with only torch, numpy and einops."""
import importlib.metadata
import subprocess
import sys
import textwrap

import torch

OPTIONAL = ["hydra", "omegaconf", "av", "PIL", "scipy", "matplotlib", "decord", "safetensors", "nvtx", "diffusers",
            "timm", "accelerate", "torchvision", "lpips", "torchmetrics", "skimage"]

BLOCKER = textwrap.dedent(f"""
    import importlib.abc, sys
    BLOCKED = {OPTIONAL!r}
    class Missing(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
    sys.meta_path.insert(0, Missing())
""")


def run_without_optional_packages(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCKER + textwrap.dedent(code)], capture_output=True, text=True,
                          cwd="/", timeout=300)


def test_the_loss_runs_with_only_the_core_dependencies():
    result = run_without_optional_packages("""
        import torch
        import gfcore, gfcore.functional as gf
        assert "torch._dynamo" not in sys.modules, "import gfcore imported torch._dynamo (about 1 s)"
        h, y = torch.randn(2, 5, 8, requires_grad=True), torch.randn(2, 5, 12)
        out = gfcore.GeometryAlignmentLoss(8, 12, projector_dim=16, head_dim=8)(h, y)
        out.loss.backward()
        z = torch.randn(2, 5, 12, requires_grad=True)
        (gf.angular_loss(z, y) + gf.scale_loss(z, y)).backward()
        hidden = gfcore.capture(torch.nn.Sequential(torch.nn.Linear(8, 8)), "0")
        print("core ok", float(out.loss) == float(out.loss), h.grad.abs().sum() > 0, z.grad.abs().sum() > 0)
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "core ok True tensor(True) tensor(True)"


def test_a_command_without_its_extra_names_it():
    result = run_without_optional_packages("""
        from gfcore.cli import main
        sys.exit(main(["train", "experiment=demo"]))
    """)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "gfcore train: error: this command needs the package 'hydra'" in result.stderr or \
        "gfcore train: error: this command needs the package 'omegaconf'" in result.stderr, result.stderr
    assert "'.[train]'" in result.stderr and "Traceback" not in result.stderr


def test_installed_metadata_declares_core_and_extras():
    requires = importlib.metadata.requires("gfcore")
    core = sorted(r for r in requires if "extra ==" not in r)
    assert core == ["einops", "numpy", f"torch=={torch.__version__.split('+')[0]}"], core  # torch as built against
    extras = set(importlib.metadata.metadata("gfcore").get_all("Provides-Extra"))
    assert {"train", "eval", "demo", "dev"} <= extras

    def extra(name):
        return {r.split(";")[0].strip() for r in requires if f'extra == "{name}"' in r}

    assert {"hydra-core", "av", "pillow"} <= extra("train")
    assert {"scipy", "av"} <= extra("eval")
    assert "matplotlib" in extra("demo") and extra("train") | extra("eval") <= extra("demo")
    assert {"pytest", "diffusers", "timm"} <= extra("dev")
