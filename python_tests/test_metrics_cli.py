"""End to end: `python -m gfcore.metrics` on small synthetic clips, and the clip readers."""
import json
import math

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from gfcore.metrics.cli import main
from gfcore.metrics.clips import load_clip, load_geometry
from gfcore.metrics.lpips import BACKBONE_FILES, load_lpips
from gfcore.metrics.report import COLUMNS, json_safe, markdown_report
from gfcore.metrics.synthetic import camera_path, render_plane_scene




pytestmark = [pytest.mark.filterwarnings("ignore::DeprecationWarning"),  # torch.jit.script
              pytest.mark.usefixtures("single_thread")]


class TinyVideoNet(nn.Module):
    """Stand-in for I3D (same call signature)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv3d(3, 12, 3, stride=(1, 2, 2), padding=1)

    def forward(self, x: torch.Tensor, rescale: bool = False, resize: bool = True, return_features: bool = True):
        return F.relu(self.conv(x)).mean(dim=(2, 3, 4))


class TinyImageNet(nn.Module):
    """Stand-in for StyleGAN's Inception: uint8 images in, features out."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 10, 3, stride=2)

    def forward(self, x: torch.Tensor, return_features: bool = True):
        return F.relu(self.conv(x.float() / 127.5 - 1)).mean(dim=(2, 3))


def _write_geometry(path, scene):
    np.savez(path, depth=scene["depth"].numpy(), intrinsics=scene["intrinsics"].numpy(), c2w=scene["c2w"].numpy())


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    dirs = {k: root / k for k in ("gen", "ref", "geo", "gen_geo", "revisit", "weights")}
    for d in dirs.values():
        d.mkdir()
    g = torch.Generator().manual_seed(0)
    for n in range(3):
        scene = render_plane_scene(camera_path(6, step=0.06 + 0.01 * n), height=32, width=40)
        ref = (scene["frames"] * 255).round() / 255  # exactly what the uint8 file holds
        drift = torch.linspace(0, 0.15, 6).view(6, 1, 1, 1)  # error grows with the frame index
        gen = (ref + drift * torch.randn(ref.shape, generator=g)).clamp(0, 1)
        np.save(dirs["ref"] / f"clip{n}.npy", (ref.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8))
        torch.save(gen, dirs["gen"] / f"clip{n}.pt")  # [T, 3, H, W] float
        _write_geometry(dirs["geo"] / f"clip{n}.npz", {**scene, "frames": ref})
        _write_geometry(dirs["gen_geo"] / f"clip{n}.npz", scene)
        np.savez(dirs["revisit"] / f"turn{n}.npz", video=torch.cat([ref, ref[:1] * 0.9]).numpy())
    torch.manual_seed(0)
    torch.jit.script(TinyVideoNet()).save(str(dirs["weights"] / "i3d.pt"))
    torch.jit.script(TinyImageNet()).save(str(dirs["weights"] / "inception.pt"))
    return dirs


def test_without_weights_reports_unavailable(inputs, tmp_path, monkeypatch, capsys):
    import gfcore.metrics.lpips as lpips_module

    monkeypatch.setattr(lpips_module, "torch_hub_checkpoint_dir", lambda: tmp_path / "empty_hub")
    out = tmp_path / "out"
    assert main(["--generated", str(inputs["gen"]), "--reference", str(inputs["ref"]), "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    metrics = results["metrics"]
    for name in ("FVD", "LPIPS", "RPE", "RVE"):
        assert metrics[name].startswith("unavailable: "), (name, metrics[name])
    assert "--i3d" in metrics["FVD"]
    if _has_lpips_package():  # lin layers from the package; the AlexNet backbone is what is missing
        assert "alexnet" in metrics["LPIPS"]
    else:  # without the lpips package the lin layers are missing first (and named so)
        assert "alex.pth" in metrics["LPIPS"] and "install the lpips package" in metrics["LPIPS"]
    assert isinstance(metrics["PSNR"], float) and 0 < metrics["SSIM"] < 1
    table = (out / "results.md").read_text()
    assert table.splitlines()[0] == "| FVD | LPIPS | SSIM | PSNR | RPE | RVE |"
    assert "unavailable: " in table.splitlines()[2]
    assert (out / "psnr_vs_frame.png").stat().st_size > 1000
    assert "results.json" in capsys.readouterr().out


def test_all_metrics_with_local_weights(inputs, tmp_path):
    if not _has_lpips_package():
        pytest.skip("the lpips package (lin-layer weights) is not installed")
    # LPIPS backbone saved in torchvision's file layout (random weights; lin layers from lpips)
    model = load_lpips("alex", random_backbone=True)
    torch.save({f"features.{k}": v for k, v in model.features.state_dict().items()}, inputs["weights"] / BACKBONE_FILES["alex"])
    out = tmp_path / "out"
    argv = [
        "--generated", str(inputs["gen"]), "--reference", str(inputs["ref"]), "--out", str(out),
        "--geometry", str(inputs["geo"]), "--generated-geometry", str(inputs["gen_geo"]),
        "--revisit", str(inputs["revisit"]), "--lpips-weights", str(inputs["weights"]),
        "--i3d", str(inputs["weights"] / "i3d.pt"), "--inception", str(inputs["weights"] / "inception.pt"), "--trust-weights",
        "--fvd-window", "4", "--fvd-stride", "2",
    ]
    assert main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    metrics, details = results["metrics"], results["details"]
    assert all(isinstance(metrics[c], float) for c in COLUMNS), metrics
    assert metrics["FVD"] > 0 and metrics["LPIPS"] > 0
    # drift: later frames are worse than earlier ones
    curves = details["curves"]
    assert curves["psnr"][0] == "inf" and details["psnr_identical_frames"] == 3
    assert curves["psnr"][1] > curves["psnr"][-1] and curves["lpips"][1] < curves["lpips"][-1]
    assert len(curves["fvd_windows"]) == 2  # starts 0 and 2 of 6 frames
    # RPE: generated clips are noisy versions of the ground truth with the same geometry
    rpe = details["rpe"]
    assert rpe["ground_truth"] < 0.3 and rpe["generated"] > rpe["ground_truth"]
    assert rpe["ratio"] == pytest.approx(rpe["generated"] / rpe["ground_truth"])
    assert details["rve"]["clips"] == 3 and details["rve"]["ssim"] < 1
    for png in ("psnr_vs_frame.png", "ssim_vs_frame.png", "lpips_vs_frame.png", "fvd_vs_window.png"):
        assert (out / png).is_file()


def _has_lpips_package():
    from gfcore.metrics.weights import lpips_package_weight_dir

    return lpips_package_weight_dir() is not None


def test_identical_inputs(inputs, tmp_path):
    out = tmp_path / "out"
    argv = ["--generated", str(inputs["ref"]), "--reference", str(inputs["ref"]), "--out", str(out),
            "--i3d", str(inputs["weights"] / "i3d.pt"), "--trust-weights", "--fvd-window", "4"]
    assert main(argv) == 0
    metrics = json.loads((out / "results.json").read_text())["metrics"]
    assert metrics["PSNR"] == "inf" and metrics["SSIM"] == pytest.approx(1.0)
    assert abs(metrics["FVD"]) < 1e-6


def test_clip_readers_and_errors(tmp_path):
    video = np.random.default_rng(0).integers(0, 256, size=(4, 20, 24, 3), dtype=np.uint8)
    np.save(tmp_path / "a.npy", video)
    clip = load_clip(tmp_path / "a.npy")
    assert clip.shape == (4, 3, 20, 24) and clip.dtype == torch.float32
    torch.testing.assert_close(clip[1, 2, 3, 4], torch.tensor(video[1, 3, 4, 2] / 255.0, dtype=torch.float32))
    np.savez(tmp_path / "b.npz", frames=video.transpose(0, 3, 1, 2) / 255.0)
    torch.testing.assert_close(load_clip(tmp_path / "b.npz"), clip)

    np.save(tmp_path / "bad_range.npy", video.astype(np.float32))
    with pytest.raises(ValueError, match=r"bad_range.npy.*\[0, 1\]"):
        load_clip(tmp_path / "bad_range.npy")
    (tmp_path / "corrupt.npy").write_bytes(b"nonsense")
    with pytest.raises(ValueError, match="corrupt.npy"):
        load_clip(tmp_path / "corrupt.npy")
    (tmp_path / "damaged.pt").write_bytes(b"\x80\x02garbage")  # a pickle with a bad opcode
    with pytest.raises(ValueError, match=r"^\S*damaged.pt: cannot read clip \(a damaged pickle, not a readable clip "
                                         r"\(Unsupported operand 103\)\)$"):
        load_clip(tmp_path / "damaged.pt")
    np.save(tmp_path / "bad_shape.npy", video[0])
    with pytest.raises(ValueError, match="bad_shape.npy"):
        load_clip(tmp_path / "bad_shape.npy")
    np.savez(tmp_path / "geo.npz", depth=np.ones((4, 20, 24)), intrinsics=np.ones((4, 3, 3)))
    with pytest.raises(ValueError, match=r"geo.npz.*c2w"):
        load_geometry(tmp_path / "geo.npz")
    np.savez(tmp_path / "geo2.npz", depth=np.ones((4, 20, 25)), intrinsics=np.ones((4, 3, 3)), c2w=np.ones((4, 4, 4)))
    with pytest.raises(ValueError, match="geo2.npz"):
        load_geometry(tmp_path / "geo2.npz", clip)


def test_mismatched_folders_fail_clearly(tmp_path, capsys):
    (tmp_path / "g").mkdir()
    (tmp_path / "r").mkdir()
    np.save(tmp_path / "g" / "x.npy", np.zeros((2, 16, 16, 3), np.uint8))
    np.save(tmp_path / "r" / "y.npy", np.zeros((2, 16, 16, 3), np.uint8))
    assert main(["--generated", str(tmp_path / "g"), "--reference", str(tmp_path / "r"), "--out", str(tmp_path / "o")]) == 2
    assert "no clip names in common" in capsys.readouterr().err


def test_report_formatting():
    assert json_safe({"a": math.inf, "b": [math.nan, 1.5]}) == {"a": "inf", "b": [None, 1.5]}
    md = markdown_report({"metrics": {"FVD": 243.04, "LPIPS": 0.5123, "SSIM": 0.38, "PSNR": 11.871,
                                      "RPE": 0.3337, "RVE": "unavailable: no revisit clips"}})
    assert md.splitlines()[2] == "| 243.0 | 0.5123 | 0.3800 | 11.87 | 0.3337 | unavailable: no revisit clips |"
