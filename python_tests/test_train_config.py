"""hydra-core configs: presets, command-line overrides, and the gfcore command."""
import json
import os
import subprocess
import sys

import pytest
import torch
import yaml

from gfcore.io.checkpoint_file import read_checkpoint
from gfcore.cli import main
from gfcore.train import load_config, train
from trainer_helpers import one_torch_thread, tiny_data_root, tiny_overrides  # noqa: F401  (fixtures)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_overrides_and_presets():
    cfg = load_config(["model.depth=3", "teacher=none", "train.lr=1e-3", "data.resolution=[48,64]"])
    assert cfg.model.depth == 3 and cfg.teacher.name == "none" and cfg.train.lr == pytest.approx(1e-3)
    assert list(cfg.data.resolution) == [48, 64] and cfg.data.root.endswith("synthetic_48px_32f")
    assert cfg.loss.lambda_angular == 0.5 and cfg.loss.lambda_scale == 0.05  # paper defaults
    re10k = load_config(["experiment=re10k", "data.root=/data/re10k", "teacher.checkpoint=/w/vggt.pt"])
    assert (re10k.model.hidden_dim, re10k.data.kind, re10k.teacher.name, re10k.train.lr) == (768, "re10k", "vggt", 8e-6)
    mc = load_config(["experiment=minecraft", "data.root=/data/mc"])
    assert mc.model.action_dim == 7 and mc.model.camera_cond is False and mc.train.num_frames == 32
    demo = load_config(["experiment=demo", "train.steps=7"])
    assert demo.train.steps == 7 and demo.name == "demo"
    from gfcore.demo.job import SCALES

    gpu = load_config(SCALES["gpu"])  # `gfcore demo --scale gpu` composes (it is not run here)
    assert gpu.model.hidden_dim == 192 and list(gpu.data.resolution) == [64, 64] and gpu.train.steps == 3000


def test_bad_overrides_are_reported():
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException, match="trian"):
        load_config(["trian.steps=3"])
    with pytest.raises(ConfigCompositionException, match="teacher"):
        load_config(["teacher=clip"])  # no such teacher (dinov2 exists since issue #14)


def test_gfcore_train_command_applies_overrides(tmp_path, tiny_data_root, capsys):  # noqa: F811
    out = str(tmp_path / "run")
    assert main(["train", *tiny_overrides(tiny_data_root, out, "teacher=none", "train.steps=2", "model.depth=1",
                                          "train.lr=0.002")]) == 0
    saved = yaml.safe_load(open(os.path.join(out, "config.yaml")))
    assert saved["model"]["depth"] == 1 and saved["train"]["lr"] == 0.002 and saved["teacher"]["name"] == "none"
    assert os.path.isfile(os.path.join(out, "final.pt")) and os.path.isfile(os.path.join(out, "log.jsonl"))


def test_cli_help_and_unknown_command(capsys):
    assert main(["--help"]) == 0 and "demo" in capsys.readouterr().out
    assert main(["frobnicate"]) == 2 and "unknown command" in capsys.readouterr().err
    assert main(["train", "--help"]) == 0 and "hydra overrides" in capsys.readouterr().out
    for command in ("synthetic", "eval", "sample", "demo"):  # delegated parsers answer --help
        with pytest.raises(SystemExit) as exit_info:
            main([command, "--help"])
        assert exit_info.value.code == 0


def test_action_conditioned_training_on_the_synthetic_walker(tmp_path):
    """Minecraft layout (task=action): actions condition the model, the oracle teacher uses the walker's geometry."""
    out = str(tmp_path / "run")
    overrides = tiny_overrides(str(tmp_path / "data"), out, "data.task=action", "data.camera=false",
                               "data.action_dim=7", "data.num_clips=2", "teacher=pointmap", "train.steps=2")
    cfg = load_config(overrides)
    assert cfg.model.action_dim == 7 and cfg.model.camera_cond is False
    summary = train(cfg)
    assert summary["final"]["teacher"] == "oracle pointmap teacher" and "cosine" in summary["final"]
    state = read_checkpoint(os.path.join(out, "final.pt"))
    assert any(k.startswith("action_embed") for k in state["model"]) and not any(
        k.startswith("ray_embed") for k in state["model"])


def test_python_dash_m_gfcore_runs():
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    result = subprocess.run([sys.executable, "-m", "gfcore", "--help"], capture_output=True, text=True, env=env,
                            cwd=ROOT, timeout=60)
    assert result.returncode == 0 and "gfcore COMMAND" in result.stdout


def test_bf16_autocast_training_tracks_fp32(tmp_path, tiny_data_root):  # noqa: F811
    """train.precision=bf16 (the GPU default) exercised on CPU autocast: same losses to bf16 precision."""
    runs = {}
    for precision in ("fp32", "bf16"):
        out = str(tmp_path / precision)
        train(load_config(tiny_overrides(tiny_data_root, out, f"train.precision={precision}", "train.steps=2")))
        with open(os.path.join(out, "log.jsonl")) as handle:
            runs[precision] = [json.loads(line) for line in handle]
    # Tolerances from bf16's precision (eps = 2^-7) and the magnitudes compared: losses and the
    # gradient norm (values of order 1) within 2 eps relative; the cosine, a mean over
    # rows = batch x frames x patches = 2 x 4 x 16 per-token cosines bounded by 1, within
    # 2 eps max(|cosine|, 1 / sqrt(rows)) (about 1.4e-3 against a cosine of about 0.07, so a
    # zero or halved cosine fails; measured differences are about 1e-4).
    eps = torch.finfo(torch.bfloat16).eps
    rows = 2 * 4 * (16 // 4) ** 2
    assert len(runs["fp32"]) == len(runs["bf16"]) == 2
    for fp32, bf16 in zip(runs["fp32"], runs["bf16"]):
        for key in ("diffusion", "scale", "loss", "grad_norm"):
            assert abs(fp32[key] - bf16[key]) <= 2 * eps * abs(fp32[key]), key
        for key in ("cosine", "angular"):
            assert abs(fp32[key] - bf16[key]) <= 2 * eps * max(abs(fp32[key]), rows**-0.5), key
        assert abs(fp32["cosine"]) > 4 * eps * rows**-0.5  # the check can tell a zero cosine apart
