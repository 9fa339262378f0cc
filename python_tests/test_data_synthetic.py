"""Synthetic scenes: determinism, ground-truth geometry (reprojection), path kinds, the walker's
actions, the written layouts read back by the readers, and the command line."""
import subprocess
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("av", reason="writing clips needs PyAV (pip install av)")

from data_test_utils import depth_agreement, reproject  # noqa: E402
from gfcore.data import Minecraft, RealEstate10K  # noqa: E402
from gfcore.data.geometry import relative_to_first  # noqa: E402
from gfcore.data.synthetic import ACTION_NAMES, PATH_KINDS, generate, generate_clip  # noqa: E402
from gfcore.data.synthetic.__main__ import main  # noqa: E402
from gfcore.data.video import read_video  # noqa: E402

HW = (40, 56)
T = 8


@pytest.fixture(scope="module")
def camera_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic_camera")
    keys = generate(root, num_clips=4, num_frames=T, resolution=HW, seed=7, task="camera")
    return root, keys


@pytest.fixture(scope="module")
def action_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic_action")
    keys = generate(root, num_clips=2, num_frames=12, resolution=HW, seed=7, task="action")
    return root, keys


def test_same_seed_same_clip_other_seed_other_clip():
    a = generate_clip(3, 1, 5, HW)
    b = generate_clip(3, 1, 5, HW)
    c = generate_clip(4, 1, 5, HW)
    for name in ("frames", "depth", "c2w", "intrinsics"):
        np.testing.assert_array_equal(a[name], b[name])
    assert not np.array_equal(a["frames"], c["frames"])
    assert not np.allclose(a["c2w"], c["c2w"])


def test_generate_is_deterministic_on_disk(tmp_path, camera_root):
    root, keys = camera_root
    again = generate(tmp_path, num_clips=2, num_frames=T, resolution=HW, seed=7, task="camera")
    assert again == keys[:2]
    for key in again:
        for suffix in (".txt", ".mp4"):  # byte for byte
            assert (tmp_path / "train" / f"{key}{suffix}").read_bytes() == (root / "train" / f"{key}{suffix}").read_bytes()
        d1 = np.load(tmp_path / "train" / f"{key}.depth.npz")
        d2 = np.load(root / "train" / f"{key}.depth.npz")
        np.testing.assert_array_equal(d1["depth"], d2["depth"])


def test_path_kinds_cycle_and_turn360_returns_to_start():
    kinds = [generate_clip(0, i, 9, (16, 16))["kind"] for i in range(4)]
    assert kinds == list(PATH_KINDS)
    turn = generate_clip(0, 3, 9, (16, 16))
    np.testing.assert_array_equal(turn["c2w"][-1], turn["c2w"][0])
    np.testing.assert_array_equal(turn["frames"][-1], turn["frames"][0])
    # Midway it faces the other way: the forward axes of frames 0 and 4 (half a turn) oppose.
    f0, f4 = turn["c2w"][0, :3, 2], turn["c2w"][4, :3, 2]
    assert np.dot(f0[[0, 2]], f4[[0, 2]]) < -0.9 * np.linalg.norm(f0[[0, 2]]) * np.linalg.norm(f4[[0, 2]])


@pytest.mark.parametrize("index", range(4))
def test_rendered_depth_and_poses_satisfy_reprojection(index):
    """A pixel of frame 0 unprojected with its depth and moved with the poses lands where frame k
    sees the same depth and the same colour; with a wrong pose it does not."""
    clip = generate_clip(11, index, 12, (48, 64))
    K, c2w, depth, frames = clip["intrinsics"], clip["c2w"], clip["depth"], clip["frames"].astype(np.float64)
    assert depth.min() > 0.3  # no camera has an object glued to the lens
    for k in (1, 2) if clip["kind"] != "turn360" else (1,):  # a turn shares little beyond 1 step
        agree, inside = depth_agreement(depth[0], depth[k], K, K, c2w[0], c2w[k], rel_tol=0.01)
        assert inside > 1000 and agree > 0.85, (clip["kind"], k, agree, inside)
    # Wrong poses (frame 1's camera moved 0.3 m sideways, or 0.3 m forward) break the agreement.
    right, _ = depth_agreement(depth[0], depth[1], K, K, c2w[0], c2w[1], rel_tol=0.01)
    for axis in (0, 2):
        moved = c2w[1].copy()
        moved[:3, 3] += 0.3 * moved[:3, axis]
        wrong, _ = depth_agreement(depth[0], depth[1], K, K, c2w[0], moved, rel_tol=0.01)
        assert wrong < right - 0.3, (clip["kind"], axis, wrong, right)
    # Colours: surfaces look the same from every view, so visible points keep their colour.
    u1, v1, z1 = reproject(depth[0], K, K, c2w[0], c2w[1])
    inside = (u1 >= 0) & (u1 < 64) & (v1 >= 0) & (v1 < 48)
    ui, vi = np.floor(u1[inside]).astype(int), np.floor(v1[inside]).astype(int)
    visible = np.abs(depth[1][vi, ui] - z1[inside]) < 0.01 * z1[inside]
    warped_error = np.abs(frames[1][vi, ui] - frames[0][inside])[visible].mean()
    static_error = np.abs(frames[1] - frames[0]).mean()
    assert warped_error < 12.0 and warped_error < 0.5 * static_error, (warped_error, static_error)


def test_reader_returns_the_rendered_poses_and_depth(camera_root):
    root, keys = camera_root
    ds = RealEstate10K(root, "train", num_frames=T, resolution=HW, random_start=False, with_depth=True)
    assert ds.keys == sorted(keys)
    for index, key in enumerate(ds.keys):
        item = ds[index]
        clip = generate_clip(7, int(key.split("_")[-1]), T, HW)
        expected = relative_to_first(torch.from_numpy(clip["c2w"])).float()
        torch.testing.assert_close(item["c2w"], expected, atol=2e-6, rtol=0)
        torch.testing.assert_close(item["intrinsics"], torch.from_numpy(clip["intrinsics"]).float().expand(T, 3, 3),
                                   atol=1e-5, rtol=1e-7)
        # float16 storage: relative error below 1e-3.
        torch.testing.assert_close(item["depth"], torch.from_numpy(clip["depth"]), rtol=1e-3, atol=0)
        frames_u8 = (item["frames"].permute(0, 2, 3, 1) + 1) * 127.5
        error = frames_u8.numpy() - clip["frames"]
        assert 10 * np.log10(255.0**2 / np.mean(error**2)) > 24.0  # lossy 4:2:0 H.264 of tiny frames
        # Reprojection with what the reader returns (relative poses).
        agree, inside = depth_agreement(item["depth"][0].numpy(), item["depth"][1].numpy(), item["intrinsics"][0].numpy(),
                                        item["intrinsics"][1].numpy(), item["c2w"][0].numpy(), item["c2w"][1].numpy())
        assert inside > 100 and agree > 0.85, (key, agree, inside)


def test_walker_actions_move_the_camera_as_named():
    clip = generate_clip(5, 0, 150, (8, 8), task="action")
    actions, c2w = clip["actions"], clip["c2w"]
    assert actions[0] == ACTION_NAMES.index("noop")
    seen = set()
    for t in range(1, len(actions)):
        name = ACTION_NAMES[actions[t]]
        # Motion of camera t expressed in camera t-1's axes (x right, y down, z forward).
        motion = np.linalg.inv(c2w[t - 1]) @ c2w[t]
        step, rotation = motion[:3, 3], motion[:3, :3]
        moved = np.linalg.norm(step) > 1e-9
        forward_now = rotation[:, 2]
        if name == "noop":
            np.testing.assert_allclose(motion, np.eye(4), atol=1e-12)
        elif name in ("forward", "back", "strafe_left", "strafe_right"):
            np.testing.assert_allclose(rotation, np.eye(3), atol=1e-12)
            if moved:  # a blocked move leaves the pose alone
                seen.add(name)
                # Horizontal motion: along the heading (z, with pitch) or sideways (x).
                axis = {"forward": 2, "back": 2, "strafe_left": 0, "strafe_right": 0}[name]
                sign = {"forward": 1, "back": -1, "strafe_left": -1, "strafe_right": 1}[name]
                other = 0 if axis == 2 else 2
                assert sign * step[axis] > 0.1 and abs(step[other]) < 1e-9
        else:
            seen.add(name)
            np.testing.assert_allclose(step, 0, atol=1e-12)
            # turn_left brings the forward axis to the left (negative x in the old camera).
            assert (forward_now[0] < -0.05) == (name == "turn_left")
    assert {"forward", "back", "turn_left", "turn_right", "strafe_left", "strafe_right"} <= seen


def test_minecraft_reader_returns_the_generated_actions(action_root):
    root, keys = action_root
    ds = Minecraft(root, "train", num_frames=5, frame_skip=2, random_start=False, with_depth=True)
    assert ds.keys == sorted(keys)
    item = ds[1]
    clip = generate_clip(7, 1, 12, HW, task="action")
    idx = np.arange(5) * 2
    np.testing.assert_array_equal(item["frame_indices"].numpy(), idx)
    np.testing.assert_array_equal(item["actions"].numpy(), np.eye(len(ACTION_NAMES))[clip["actions"][idx]])
    assert item["frames"].shape == (5, 3) + HW and item["depth"].shape == (5,) + HW
    expected_c2w = relative_to_first(torch.from_numpy(clip["c2w"][idx])).float()
    torch.testing.assert_close(item["c2w"], expected_c2w, atol=1e-6, rtol=0)
    torch.testing.assert_close(item["intrinsics"], torch.from_numpy(clip["intrinsics"]).float().expand(5, 3, 3))
    # Resized items keep geometry and pixels consistent: reprojection still holds at 20 x 28.
    small = Minecraft(root, "train", num_frames=3, resolution=(20, 28), random_start=False, with_depth=True)[1]
    assert small["frames"].shape == (3, 3, 20, 28) and small["depth"].shape == (3, 20, 28)
    agree, inside = depth_agreement(small["depth"][0].numpy(), small["depth"][1].numpy(), small["intrinsics"][0].numpy(),
                                    small["intrinsics"][1].numpy(), small["c2w"][0].numpy(), small["c2w"][1].numpy())
    assert inside > 100 and agree > 0.8, (agree, inside)
    stored = np.load(root / "train" / f"{keys[1]}.npz")
    assert list(stored["action_names"]) == list(ACTION_NAMES)
    np.testing.assert_array_equal(stored["action_ids"], clip["actions"])


def test_command_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0 and "--num-clips" in capsys.readouterr().out
    assert main([str(tmp_path), "--num-clips", "1", "--num-frames", "3", "--resolution", "16", "24",
                 "--task", "action", "--split", "val", "--seed", "2"]) == 0
    assert read_video(tmp_path / "val" / "action_s2_00000.mp4").shape == (3, 16, 24, 3)
    # The module entry point itself.
    result = subprocess.run([sys.executable, "-m", "gfcore.data.synthetic", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "RealEstate10K layout" in result.stdout


def test_bad_arguments():
    with pytest.raises(ValueError, match="task must be one of"):
        generate_clip(0, 0, 4, 16, task="walk")
    with pytest.raises(ValueError, match="num_frames >= 2"):
        generate("/nonexistent", 1, 1, 16)
    with pytest.raises(ValueError, match="resolution must be an int or"):
        generate_clip(0, 0, 4, (16, 16, 3))
