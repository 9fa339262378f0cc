"""VGGT-estimated geometry for RPE (gfcore.metrics.geometry_estimate) and the --vggt eval flag.

A randomly initialised small VGGT (camera and depth heads on) stands in for VGGT-1B; its
input size is 28 (2 x 2 patches) so every call is cheap. The expectations are derived
independently: focal lengths from the fields of view in the pose encoding (a field of view
does not change when an image is resized), depth from torch's own bilinear resize, poses
composed by hand from separate model calls.
"""
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gfcore.geometry import CheckpointError, VGGT, pose_encoding_to_cameras, resize_for_vggt, save_state_dict, small_config
from gfcore.metrics.cli import main
from gfcore.metrics.clips import load_geometry
from gfcore.metrics.geometry_estimate import (InputMap, chain_chunks, chunk_bounds, depth_to_clip, estimate_geometry,
                                              load_geometry_model)
from gfcore.metrics.rpe import reprojection_error
from gfcore.metrics.synthetic import camera_path, render_plane_scene

pytestmark = pytest.mark.usefixtures("single_thread")

TINY = {**small_config(), "img_size": 28, "dpt_features": 16, "dpt_out_channels": [8, 16, 24, 24],
        "camera_trunk_depth": 1, "camera_num_heads": 4, "enable_point": False}


def tiny_vggt(seed: int = 0, pose_noise: float = 0.05) -> VGGT:
    """Random small VGGT whose camera head gives fields of view near 1 rad (a random head can give
    fov 0 after its ReLU) and poses that vary with the frame by `pose_noise`."""
    torch.manual_seed(seed)
    model = VGGT(**TINY).eval()
    fc2 = model.camera_head.pose_branch.fc2
    with torch.no_grad():  # the head adds its output 4 times (4 refinement iterations)
        fc2.weight.normal_(0, pose_noise)
        fc2.bias.copy_(torch.tensor([0, 0, 0, 0, 0, 0, 1, 1.0, 1.2]) / 4)
    return model


@pytest.fixture(scope="module")
def model():
    return tiny_vggt()


def model_call(model, frames, mode="square"):
    """Direct model call on resized frames: (c2w [S,4,4] float64, depth [S,h,w], pose encoding [S,9])."""
    images = resize_for_vggt(frames, mode, 28, 14)
    with torch.no_grad():
        pred = model(images[None])
    extrinsics, _ = pose_encoding_to_cameras(pred["pose_enc"], images.shape[-2:])
    bottom = torch.tensor([[[0.0, 0, 0, 1]]]).expand(frames.shape[0], 1, 4)
    c2w = torch.linalg.inv(torch.cat([extrinsics[0], bottom], dim=1).double())
    return c2w, pred["depth"][0, ..., 0], pred["pose_enc"][0]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_shapes_dtypes_and_first_camera(model, dtype):
    frames = torch.rand(3, 3, 28, 42)
    geo = estimate_geometry(frames, model, dtype=dtype)
    assert geo.depth.shape == (3, 28, 42) and geo.depth_conf.shape == (3, 28, 42)
    assert geo.intrinsics.shape == (3, 3, 3) and geo.c2w.shape == (3, 4, 4)
    assert all(t.dtype == torch.float32 for t in (geo.depth, geo.depth_conf, geo.intrinsics, geo.c2w))
    assert torch.isfinite(geo.depth).all() and (geo.depth > 0).all()
    torch.testing.assert_close(geo.c2w[0], torch.eye(4), atol=1e-5, rtol=0)
    rot = geo.c2w[:, :3, :3].double()
    torch.testing.assert_close(rot @ rot.transpose(1, 2), torch.eye(3, dtype=torch.float64).expand(3, 3, 3), atol=1e-5, rtol=0)
    torch.testing.assert_close(geo.c2w[:, 3], torch.tensor([0.0, 0, 0, 1]).expand(3, 4))
    if dtype == torch.bfloat16:  # autocast on the aggregator only: close to the float32 estimate
        ref = estimate_geometry(frames, model)
        torch.testing.assert_close(geo.depth, ref.depth, rtol=0.05, atol=0)
        torch.testing.assert_close(geo.intrinsics, ref.intrinsics, rtol=0.05, atol=0.05)


@pytest.mark.parametrize("mode,height,width,span_h,span_w", [
    ("square", 28, 42, 28, 42),  # both axes fill the input: the fields of view span the clip
    ("pad", 28, 42, 56, 42),  # 42 -> 28 wide, 28 -> 14 high, padded to 28: fov_h spans 56 clip rows
    ("crop", 56, 28, 28, 28),  # 56 x 28 keeps its scale, the middle 28 rows are seen: fov_h spans 28 rows
])
def test_intrinsics_follow_the_resize(model, mode, height, width, span_h, span_w):
    frames = torch.rand(2, 3, height, width)
    geo = estimate_geometry(frames, model, resize_mode=mode)
    _, _, enc = model_call(model, frames, mode)
    fov_h, fov_w = enc[:, 7].double(), enc[:, 8].double()
    k = geo.intrinsics.double()
    torch.testing.assert_close(k[:, 0, 0], (span_w / 2) / torch.tan(fov_w / 2), rtol=1e-5, atol=0)
    torch.testing.assert_close(k[:, 1, 1], (span_h / 2) / torch.tan(fov_h / 2), rtol=1e-5, atol=0)
    # principal point: the clip's centre with pixel centres at integers
    assert torch.allclose(k[:, 0, 2], torch.tensor((width - 1) / 2, dtype=torch.float64))
    assert torch.allclose(k[:, 1, 2], torch.tensor((height - 1) / 2, dtype=torch.float64))
    if mode == "crop":  # rows the model never saw have no depth
        assert torch.isnan(geo.depth[:, :14]).all() and torch.isnan(geo.depth[:, 42:]).all()
        assert torch.isfinite(geo.depth[:, 14:42]).all()


def test_clip_rays_match_input_rays():
    """A clip pixel and the input position it was resized to see the same ray through the cameras."""
    from gfcore.metrics.geometry_estimate import input_map, intrinsics_to_clip

    height, width = 31, 45  # odd sizes: rounding to the patch grid makes the two axes' scales differ
    for mode in ("square", "crop", "pad"):
        mapping = input_map(height, width, mode, 28, 14)
        h_in, w_in = mapping.input_hw
        k_in = torch.tensor([[30.0, 0, w_in / 2], [0, 25.0, h_in / 2], [0, 0, 1]], dtype=torch.float64)
        k_clip = intrinsics_to_clip(k_in, mapping)
        v, u = torch.meshgrid(torch.arange(height, dtype=torch.float64), torch.arange(width, dtype=torch.float64), indexing="ij")
        u_in = (u + 0.5) * mapping.scale[0] + mapping.offset[0]  # continuous input coordinates
        v_in = (v + 0.5) * mapping.scale[1] + mapping.offset[1]
        ray_in = torch.linalg.inv(k_in) @ torch.stack([u_in, v_in, torch.ones_like(u)]).reshape(3, -1)
        ray_clip = torch.linalg.inv(k_clip) @ torch.stack([u, v, torch.ones_like(u)]).reshape(3, -1)
        torch.testing.assert_close(ray_clip, ray_in, rtol=0, atol=1e-12, msg=mode)


def test_depth_resampling_matches_bilinear_resize():
    depth_in = torch.rand(3, 28, 28) + 0.5
    mapping = InputMap((28 / 23, 28 / 17), (0.0, 0.0), (28, 28))  # square mode for a 17 x 23 clip
    expected = F.interpolate(depth_in[:, None], size=(17, 23), mode="bilinear", align_corners=False)[:, 0]
    torch.testing.assert_close(depth_to_clip(depth_in, mapping, 17, 23), expected, rtol=1e-5, atol=1e-6)


def test_estimated_depth_is_the_models_depth_resized(model):
    base = torch.rand(3, 23, 3, 17)  # non-contiguous frames [T, 3, 17, 23]
    frames = base.permute(0, 2, 3, 1)
    assert not frames.is_contiguous()
    geo = estimate_geometry(frames, model)
    _, depth, _ = model_call(model, frames.contiguous())
    expected = F.interpolate(depth[:, None], size=(17, 23), mode="bilinear", align_corners=False)[:, 0]
    torch.testing.assert_close(geo.depth, expected, rtol=1e-5, atol=1e-6)


def test_one_call_when_frames_per_call_covers_the_clip(model):
    frames = torch.rand(4, 3, 28, 28)
    c2w, depth, _ = model_call(model, frames)
    expected = torch.linalg.inv(c2w[0]) @ c2w  # every pose relative to the first camera
    for frames_per_call in (4, 16):
        geo = estimate_geometry(frames, model, frames_per_call=frames_per_call)
        assert geo.chunk_scales == [1.0]
        torch.testing.assert_close(geo.c2w.double(), expected, atol=1e-5, rtol=0)
        torch.testing.assert_close(geo.depth, depth, rtol=1e-5, atol=0)


def test_chunks_are_chained_over_the_shared_frame(model):
    frames = torch.rand(4, 3, 28, 28)
    geo = estimate_geometry(frames, model, frames_per_call=2)
    assert chunk_bounds(4, 2) == [(0, 2), (1, 3), (2, 4)]
    # by hand: each step j-1 -> j is chunk (j-1, j)'s relative pose, rescaled so that frame j-1's
    # depth matches the previous step's estimate of it
    c2w, depth_prev = [torch.eye(4, dtype=torch.float64)], None
    for j in range(1, 4):
        pair_c2w, pair_depth, _ = model_call(model, frames[j - 1:j + 1])
        if depth_prev is None:  # the first chunk sets the scale
            depth_prev = pair_depth[0]
        scale = float((depth_prev.double() / pair_depth[0].double()).median())
        step = torch.linalg.inv(pair_c2w[0]) @ pair_c2w[1]
        step[:3, 3] *= scale
        c2w.append(c2w[-1] @ step)
        depth_prev = pair_depth[1] * scale
        torch.testing.assert_close(geo.depth[j], depth_prev, rtol=1e-5, atol=0)
        assert geo.chunk_scales[j - 1] == pytest.approx(scale, rel=1e-6)
    torch.testing.assert_close(geo.c2w.double(), torch.stack(c2w), atol=1e-5, rtol=0)
    torch.testing.assert_close(geo.c2w[0], torch.eye(4), atol=1e-6, rtol=0)


def _random_rigid(gen):
    q = torch.randn(4, generator=gen, dtype=torch.float64)
    q = q / q.norm()
    x, y, z, w = q
    rot = torch.tensor([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]], dtype=torch.float64)
    out = torch.eye(4, dtype=torch.float64)
    out[:3, :3], out[:3, 3] = rot, torch.randn(3, generator=gen, dtype=torch.float64)
    return out


def test_chaining_recovers_a_trajectory_seen_in_chunks_with_own_world_and_scale():
    gen = torch.Generator().manual_seed(3)
    truth = [_random_rigid(gen) for _ in range(7)]
    truth_depth = torch.rand(7, 5, 6, generator=gen, dtype=torch.float64) + 1
    chunks = []
    for start, stop in chunk_bounds(7, 3):  # (0,3) (2,5) (4,7)
        world, scale = _random_rigid(gen), 0.5 + float(torch.rand((), generator=gen))
        seen = []
        for i in range(start, stop):  # the chunk's world is rigidly moved and scaled by `scale`
            pose = truth[i].clone()
            pose[:3, 3] *= scale
            seen.append(world @ pose)
        chunks.append((torch.stack(seen), truth_depth[start:stop] * scale))
    c2w, depth, scales = chain_chunks(chunks)
    first_scale = float(chunks[0][1][0, 0, 0] / truth_depth[0, 0, 0])
    expected = []
    for pose in truth:
        rel = torch.linalg.inv(truth[0]) @ pose
        rel[:3, 3] *= first_scale
        expected.append(rel)
    torch.testing.assert_close(c2w, torch.stack(expected), atol=1e-10, rtol=0)
    torch.testing.assert_close(depth, truth_depth * first_scale, atol=1e-10, rtol=0)
    assert len(scales) == 3 and scales[0] == 1.0


def test_bad_inputs_name_the_argument(model, tmp_path):
    with pytest.raises(ValueError, match=r"frames: expected \[T, 3, H, W\]"):
        estimate_geometry(torch.rand(2, 28, 28, 3), model)
    with pytest.raises(TypeError, match="frames"):
        estimate_geometry(torch.zeros(2, 3, 28, 28, dtype=torch.uint8), model)
    with pytest.raises(ValueError, match=r"frames: expected values in \[0, 1\]"):
        estimate_geometry(torch.rand(2, 3, 28, 28) * 255, model)
    with pytest.raises(ValueError, match="frames_per_call=1"):
        estimate_geometry(torch.rand(3, 3, 28, 28), model, frames_per_call=1)
    with pytest.raises(ValueError, match="resize_mode"):
        estimate_geometry(torch.rand(2, 3, 28, 28), model, resize_mode="stretch")
    headless = VGGT(**{**TINY, "enable_camera": False})
    with pytest.raises(ValueError, match="model: .*camera and depth heads"):
        estimate_geometry(torch.rand(2, 3, 28, 28), headless)
    with pytest.raises(FileNotFoundError, match=r"--vggt: no such checkpoint file .*absent\.pt"):
        load_geometry_model(tmp_path / "absent.pt", TINY)
    save_state_dict(headless, tmp_path / "headless.pt")
    with pytest.raises(CheckpointError, match=r"(?s)headless\.pt.*missing keys.*camera_head"):
        load_geometry_model(tmp_path / "headless.pt", TINY)


@pytest.fixture(scope="module")
def eval_inputs(tmp_path_factory):
    """Plane scenes (6 frames, 24 x 32) as reference, noisy copies as generated clips, ground-truth
    geometry of the reference, and a tiny VGGT checkpoint with its config."""
    root = tmp_path_factory.mktemp("vggt_eval")
    dirs = {k: root / k for k in ("gen", "ref", "geo")}
    for d in dirs.values():
        d.mkdir()
    g = torch.Generator().manual_seed(0)
    for n in range(2):
        scene = render_plane_scene(camera_path(6, step=0.06 + 0.02 * n), height=24, width=32)
        ref = scene["frames"]
        gen = (ref + 0.05 * torch.randn(ref.shape, generator=g)).clamp(0, 1)
        torch.save(ref, dirs["ref"] / f"clip{n}.pt")
        torch.save(gen, dirs["gen"] / f"clip{n}.pt")
        np.savez(dirs["geo"] / f"clip{n}.npz", depth=scene["depth"].numpy(),
                 intrinsics=scene["intrinsics"].numpy(), c2w=scene["c2w"].numpy())
    # a near-static camera and smooth depth keep pixels co-visible, so RPE is a finite number
    model = tiny_vggt(seed=1, pose_noise=0.0)
    save_state_dict(model, root / "vggt_tiny.pt")
    save_state_dict(model, root / "vggt_tiny.safetensors")
    (root / "vggt_tiny.json").write_text(json.dumps(TINY))
    dirs.update(root=root, model=model, checkpoint=root / "vggt_tiny.pt", config=root / "vggt_tiny.json")
    return dirs


def test_eval_estimates_geometry_with_vggt(eval_inputs, tmp_path):
    d = eval_inputs
    out = tmp_path / "out"
    argv = ["--generated", str(d["gen"]), "--reference", str(d["ref"]), "--out", str(out),
            "--vggt", str(d["checkpoint"]), "--vggt-config", str(d["config"]), "--vggt-frames-per-call", "4"]
    assert main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    rpe = results["details"]["rpe"]
    assert isinstance(results["metrics"]["RPE"], float) and results["metrics"]["RPE"] == rpe["generated"]
    assert math.isfinite(rpe["ground_truth"]) and rpe["ratio"] == pytest.approx(rpe["generated"] / rpe["ground_truth"])
    assert rpe["geometry_sources"] == {"generated": {"vggt": 2}, "ground_truth": {"vggt": 2}}
    # the written estimates are what the metric used: recompute clip0's RPE from them and directly
    gen = torch.load(d["gen"] / "clip0.pt")
    saved = load_geometry(out / "vggt_geometry" / "generated" / "clip0.npz", gen)
    direct = estimate_geometry(gen, d["model"], frames_per_call=4)
    torch.testing.assert_close(saved["c2w"], direct.c2w)
    torch.testing.assert_close(saved["depth"], direct.depth)
    value = reprojection_error(gen, direct.depth, direct.intrinsics, direct.c2w).rpe
    assert results["details"]["per_clip"]["clip0"]["rpe_generated"] == pytest.approx(value, rel=1e-6)


def test_eval_prefers_geometry_files_and_notes_mixed_sources(eval_inputs, tmp_path):
    d = eval_inputs
    out = tmp_path / "out"
    argv = ["--generated", str(d["gen"]), "--reference", str(d["ref"]), "--out", str(out), "--geometry", str(d["geo"]),
            "--vggt", str(d["root"] / "vggt_tiny.safetensors"), "--vggt-config", str(d["config"]),
            "--vggt-dtype", "bfloat16"]
    assert main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["details"]["rpe"]["geometry_sources"] == {"generated": {"vggt": 2}, "ground_truth": {"file": 2}}
    assert not (out / "vggt_geometry" / "ground_truth").exists()
    assert any("different sources" in note for note in results["notes"])


def test_eval_vggt_errors_name_the_flag(eval_inputs, tmp_path, capsys):
    d = eval_inputs
    base = ["--generated", str(d["gen"]), "--reference", str(d["ref"]), "--out", str(tmp_path / "out")]
    assert main(base + ["--vggt", str(tmp_path / "missing.safetensors")]) == 2
    assert "--vggt: no such checkpoint file" in capsys.readouterr().err
    (tmp_path / "bad.json").write_text("{not json")
    assert main(base + ["--vggt", str(d["checkpoint"]), "--vggt-config", str(tmp_path / "bad.json")]) == 2
    err = capsys.readouterr().err
    assert "--vggt-config" in err and "bad.json" in err
    assert main(base + ["--vggt", str(d["checkpoint"]), "--vggt-frames-per-call", "1"]) == 2
    assert "--vggt-frames-per-call must be >= 2" in capsys.readouterr().err
    # the default (VGGT-1B) architecture does not match the tiny checkpoint: the file is named
    assert main(base + ["--vggt", str(d["checkpoint"])]) == 2
    assert "vggt_tiny.pt" in capsys.readouterr().err
    # without --vggt nor geometry RPE stays unavailable and says how to get it
    assert main(base) == 0
    metrics = json.loads((tmp_path / "out" / "results.json").read_text())["metrics"]
    assert metrics["RPE"].startswith("unavailable: ") and "--vggt" in metrics["RPE"]
