"""RealEstate10K reader: real camera files with frames made here, all three layouts, resize/crop,
flip consistency with ground-truth depth, every kind of bad input, and DataLoader workers."""
import os
import shutil

import numpy as np
import pytest
import torch

pytest.importorskip("av", reason="writing test videos needs PyAV (pip install av)")

from malicious_files import PAYLOAD_GLOBAL, write_malicious
from data_test_utils import REAL_CAMERA_DIR, REAL_CAMERA_KEYS, depth_agreement, smooth_frames  # noqa: E402
from gfcore.data import DataError, RealEstate10K, VideoError  # noqa: E402
from gfcore.data.camera_file import read_camera_file  # noqa: E402
from gfcore.data.synthetic import generate  # noqa: E402
from gfcore.data.video import write_video  # noqa: E402

SRC_H, SRC_W = 36, 64  # 16:9 like the real clips


def make_raw_layout(root, split="test", images_for=()):
    """Real camera files, each with an .mp4 of one made-up frame per line (or a folder of PNGs
    named by timestamp for the keys in images_for). Returns {key: frames uint8}."""
    from PIL import Image

    directory = os.path.join(root, split)
    os.makedirs(directory, exist_ok=True)
    frames_by_key = {}
    for n, key in enumerate(REAL_CAMERA_KEYS):
        shutil.copy(os.path.join(REAL_CAMERA_DIR, key + ".txt"), directory)
        frames = smooth_frames(16, SRC_H, SRC_W, seed=n)
        frames_by_key[key] = frames
        if key in images_for:
            os.makedirs(os.path.join(directory, key))
            for stamp, frame in zip(read_camera_file(os.path.join(directory, key + ".txt")).timestamps, frames):
                Image.fromarray(frame).save(os.path.join(directory, key, f"{stamp}.png"))
        else:
            write_video(os.path.join(directory, key + ".mp4"), frames)
    return frames_by_key


@pytest.fixture(scope="module")
def raw_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("re10k_raw")
    frames = make_raw_layout(root, images_for=(REAL_CAMERA_KEYS[1],))
    return root, frames


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("re10k_synthetic")
    generate(root, num_clips=4, num_frames=8, resolution=(48, 64), seed=3, task="camera")
    return root


def expected_cameras(key, indices, out_hw):
    """Intrinsics and relative poses computed by hand from the camera file (numpy only)."""
    cameras = read_camera_file(os.path.join(REAL_CAMERA_DIR, key + ".txt"))
    rows = cameras.rows[indices]
    # 64x36 -> cover out_hw: the scale is set by the tighter side, then a centre crop.
    scale = max(out_hw[0] / SRC_H, out_hw[1] / SRC_W)
    rh, rw = max(out_hw[0], round(SRC_H * scale)), max(out_hw[1], round(SRC_W * scale))
    top, left = (rh - out_hw[0]) // 2, (rw - out_hw[1]) // 2
    K = np.zeros((len(rows), 3, 3))
    K[:, 0, 0] = rows[:, 0] * rw
    K[:, 1, 1] = rows[:, 1] * rh
    K[:, 0, 2] = rows[:, 2] * rw - left
    K[:, 1, 2] = rows[:, 3] * rh - top
    K[:, 2, 2] = 1
    w2c = np.tile(np.eye(4), (len(rows), 1, 1))
    w2c[:, :3, :] = rows[:, 6:].reshape(-1, 3, 4)
    c2w = np.linalg.inv(w2c)
    return K, np.linalg.inv(c2w[0]) @ c2w


@pytest.mark.parametrize("out_hw", [(36, 64), (32, 32), (24, 40), (48, 48)])
def test_raw_video_layout_items(raw_root, out_hw):
    root, frames = raw_root
    ds = RealEstate10K(root, "test", num_frames=5, resolution=out_hw, frame_skip=3)
    assert ds.keys == REAL_CAMERA_KEYS and not ds.random_start and ds.layout == "raw"
    item = ds[0]
    key = REAL_CAMERA_KEYS[0]
    assert item["key"] == key
    np.testing.assert_array_equal(item["frame_indices"].numpy(), [0, 3, 6, 9, 12])
    assert item["frames"].shape == (5, 3) + out_hw and item["frames"].dtype == torch.float32
    assert item["frames"].min() >= -1 and item["frames"].max() <= 1
    K, c2w = expected_cameras(key, [0, 3, 6, 9, 12], out_hw)
    np.testing.assert_allclose(item["intrinsics"].numpy(), K, rtol=1e-6, atol=1e-4)
    np.testing.assert_allclose(item["c2w"].numpy(), c2w, atol=1e-5)
    if out_hw == (SRC_H, SRC_W):  # no resampling: frames are the decoded video
        decoded = (item["frames"].permute(0, 2, 3, 1).numpy() + 1) * 127.5
        assert np.abs(decoded - frames[key][[0, 3, 6, 9, 12]]).mean() < 4.5


def test_image_folder_layout_is_lossless(raw_root):
    root, frames = raw_root
    ds = RealEstate10K(root, "test", num_frames=4, resolution=(SRC_H, SRC_W), frame_skip=5)
    item = ds[1]  # the key stored as PNGs
    key = REAL_CAMERA_KEYS[1]
    assert item["key"] == key
    decoded = ((item["frames"].permute(0, 2, 3, 1) + 1) * 127.5).round().numpy()
    np.testing.assert_array_equal(decoded, frames[key][[0, 5, 10, 15]])
    K, c2w = expected_cameras(key, [0, 5, 10, 15], (SRC_H, SRC_W))
    np.testing.assert_allclose(item["intrinsics"].numpy(), K, rtol=1e-6)
    np.testing.assert_allclose(item["c2w"].numpy(), c2w, atol=1e-5)


def test_dfot_layout_matches_raw_layout(tmp_path, raw_root):
    root, _ = raw_root
    key = REAL_CAMERA_KEYS[0]
    os.makedirs(tmp_path / "test_256")
    os.makedirs(tmp_path / "test_poses")
    shutil.copy(root / "test" / f"{key}.mp4", tmp_path / "test_256" / f"{key}.mp4")
    rows = torch.from_numpy(read_camera_file(root / "test" / f"{key}.txt").rows)
    torch.save(rows.float(), tmp_path / "test_poses" / f"{key}.pt")  # DFoT stores the 18 numbers
    dfot = RealEstate10K(tmp_path, "test", num_frames=6, resolution=32, frame_skip=2)
    raw = RealEstate10K(root, "test", num_frames=6, resolution=32, frame_skip=2)
    assert dfot.layout == "dfot" and dfot.keys == [key]
    a, b = dfot[0], raw[0]
    torch.testing.assert_close(a["frames"], b["frames"])
    torch.testing.assert_close(a["intrinsics"], b["intrinsics"])
    torch.testing.assert_close(a["c2w"], b["c2w"], atol=1e-5, rtol=0)  # the .pt holds float32


def test_random_start_for_training_fixed_for_evaluation(raw_root):
    root, _ = raw_root
    train = RealEstate10K(root, "test", num_frames=4, resolution=16, frame_skip=2, random_start=True)
    torch.manual_seed(0)
    starts = {int(train[0]["frame_indices"][0]) for _ in range(30)}
    assert len(starts) > 3 and min(starts) >= 0 and max(starts) <= 16 - 7
    item = train[0]
    np.testing.assert_array_equal(np.diff(item["frame_indices"].numpy()), [2, 2, 2])
    evaluation = RealEstate10K(root, "test", num_frames=4, resolution=16, frame_skip=2)
    assert {int(evaluation[0]["frame_indices"][0]) for _ in range(5)} == {0}
    # The poses are relative to the clip's first returned frame.
    torch.testing.assert_close(item["c2w"][0], torch.eye(4), atol=1e-6, rtol=0)


def test_flip_is_consistent_with_ground_truth_geometry(synthetic_root):
    plain = RealEstate10K(synthetic_root, "train", num_frames=4, resolution=(48, 64), random_start=False,
                          with_depth=True, hflip_prob=0.0)
    flipped = RealEstate10K(synthetic_root, "train", num_frames=4, resolution=(48, 64), random_start=False,
                            with_depth=True, hflip_prob=1.0)
    moving = 0
    for index in range(len(plain)):
        a, b = plain[index], flipped[index]
        assert b["flipped"] and not a["flipped"]
        torch.testing.assert_close(b["frames"], a["frames"].flip(-1))
        torch.testing.assert_close(b["depth"], a["depth"].flip(-1))
        assert torch.allclose(torch.det(b["c2w"][:, :3, :3]), torch.ones(4), atol=1e-5)
        # Reprojection holds in the flipped clip as well as in the original one.
        for item in (a, b):
            agree, inside = depth_agreement(item["depth"][0].numpy(), item["depth"][1].numpy(),
                                            item["intrinsics"][0].numpy(), item["intrinsics"][1].numpy(),
                                            item["c2w"][0].numpy(), item["c2w"][1].numpy(), rel_tol=0.01)
            assert inside > 300 and agree > 0.85, (item["key"], item["flipped"], agree)
        # ... and mixing the flipped images with unflipped poses breaks it (for clips that move).
        if torch.linalg.norm(a["c2w"][1, :3, 3]) > 0.05:
            agree, _ = depth_agreement(b["depth"][0].numpy(), b["depth"][1].numpy(), b["intrinsics"][0].numpy(),
                                       b["intrinsics"][1].numpy(), a["c2w"][0].numpy(), a["c2w"][1].numpy(), rel_tol=0.01)
            assert agree < 0.7
            moving += 1
    assert moving >= 2  # the forward and orbit clips


def test_with_depth_resizes_depth_with_the_frames(synthetic_root):
    ds = RealEstate10K(synthetic_root, "train", num_frames=3, resolution=(24, 24), random_start=False, with_depth=True)
    item = ds[0]
    assert item["depth"].shape == (3, 24, 24) and item["depth"].dtype == torch.float32
    stored = np.load(synthetic_root / "train" / f"{ds.keys[0]}.depth.npz")["depth"][:3].astype(np.float32)
    # 48x64 -> 24x32 by nearest-exact (pixel 2i+1 of 2i, 2i+1), then crop 4 columns on each side.
    np.testing.assert_array_equal(item["depth"].numpy(), stored[:, 1::2, 1::2][:, :, 4:28])


# ------------------------------------------------------------------------------------- bad input
def copy_clip(src_root, dst, key, split="test"):
    os.makedirs(dst / split, exist_ok=True)
    for suffix in (".txt", ".mp4"):
        shutil.copy(src_root / split / f"{key}{suffix}", dst / split / f"{key}{suffix}")


def test_line_count_differs_from_frame_count(tmp_path, raw_root):
    root, _ = raw_root
    key = REAL_CAMERA_KEYS[0]
    copy_clip(root, tmp_path, key)
    lines = (tmp_path / "test" / f"{key}.txt").read_text().splitlines()
    (tmp_path / "test" / f"{key}.txt").write_text("\n".join(lines[:-1]) + "\n")
    ds = RealEstate10K(tmp_path, "test", num_frames=4, resolution=16)
    with pytest.raises(DataError, match=rf"{key}.txt: 15 camera lines but .*{key}.mp4 has 16 frames"):
        ds[0]


def test_image_folder_with_a_missing_timestamp(tmp_path, raw_root):
    key, stamps, _ = _image_folder_copy(tmp_path, raw_root)
    os.rename(tmp_path / "test" / key / f"{stamps[2]}.png", tmp_path / "test" / key / "999.png")
    ds = RealEstate10K(tmp_path, "test", num_frames=4, resolution=16)
    with pytest.raises(DataError, match=rf"{key}.txt:4: no image for timestamp {stamps[2]}"):
        ds[0]
    (tmp_path / "test" / key / "999.png").write_bytes(b"not a png")
    os.rename(tmp_path / "test" / key / "999.png", tmp_path / "test" / key / f"{stamps[2]}.png")
    with pytest.raises(DataError, match=rf"{stamps[2]}.png: cannot read image"):
        ds[0]


def test_malformed_line_missing_frames_corrupt_video_short_clip(tmp_path, raw_root):
    root, _ = raw_root
    keys = REAL_CAMERA_KEYS
    for key in keys:
        copy_clip(root, tmp_path, key) if key != keys[1] else None
    bad_lines = (tmp_path / "test" / f"{keys[0]}.txt").read_text().splitlines()
    bad_lines[5] = bad_lines[5].replace(" 0.000000000 0.000000000 ", " 0.0 zero ", 1)
    (tmp_path / "test" / f"{keys[0]}.txt").write_text("\n".join(bad_lines))
    shutil.copy(root / "test" / f"{keys[1]}.txt", tmp_path / "test")  # no frames at all
    (tmp_path / "test" / f"{keys[2]}.mp4").write_bytes(b"\x00" * 1000)  # corrupt video
    ds = RealEstate10K(tmp_path, "test", num_frames=4, resolution=16)
    with pytest.raises(DataError, match=rf"{keys[0]}.txt:6: not a number"):
        ds[0]
    with pytest.raises(DataError, match=rf"{keys[1]}.txt: no frames: neither .*{keys[1]}.mp4 nor the folder"):
        ds[1]
    with pytest.raises(VideoError, match=rf"{keys[2]}.mp4"):
        ds[2]
    too_long = RealEstate10K(root, "test", num_frames=9, frame_skip=2, resolution=16)
    with pytest.raises(DataError, match=rf"{keys[0]}.txt: has 16 frames, fewer than the 17 needed"):
        too_long[0]


def test_missing_directories_files_and_bad_arguments(tmp_path, raw_root, synthetic_root):
    with pytest.raises(DataError, match="RealEstate10K camera directory not found: .*nowhere"):
        RealEstate10K(tmp_path / "nowhere", "test")
    os.makedirs(tmp_path / "empty" / "test")
    with pytest.raises(DataError, match=r"no RealEstate10K camera files \(\*.txt\)"):
        RealEstate10K(tmp_path / "empty", "test")
    root, _ = raw_root
    with pytest.raises(DataError, match=r"file not found: .*\.depth\.npz"):
        RealEstate10K(root, "test", num_frames=2, resolution=16, with_depth=True)[0]
    with pytest.raises(ValueError, match="on_error must be"):
        RealEstate10K(root, "test", on_error="ignore")
    with pytest.raises(ValueError, match="resolution must be"):
        RealEstate10K(root, "test", resolution=(1, 2, 3))
    with pytest.raises(ValueError, match="hflip_prob"):
        RealEstate10K(root, "test", hflip_prob=2)
    # A depth file without the 'depth' array.
    bad = tmp_path / "bad_depth"
    shutil.copytree(synthetic_root / "train", bad / "train")
    key = sorted(os.listdir(bad / "train"))[0].split(".")[0]
    np.savez(bad / "train" / f"{key}.depth.npz", wrong=np.zeros(3))
    with pytest.raises(DataError, match=r"depth.npz: missing key\(s\) \['depth'\]"):
        RealEstate10K(bad, "train", num_frames=2, resolution=16, with_depth=True, random_start=False)[0]
    # Depth of another size than the frames.
    np.savez(bad / "train" / f"{key}.depth.npz", depth=np.ones((8, 24, 32), np.float16))
    with pytest.raises(DataError, match=r"depth.npz: depth must have shape \[8, 48, 64\] .* got \[8, 24, 32\]"):
        RealEstate10K(bad, "train", num_frames=2, resolution=16, with_depth=True, random_start=False)[0]


def test_bad_dfot_pose_file(tmp_path, raw_root):
    root, _ = raw_root
    key = REAL_CAMERA_KEYS[0]
    os.makedirs(tmp_path / "test_256")
    os.makedirs(tmp_path / "test_poses")
    shutil.copy(root / "test" / f"{key}.mp4", tmp_path / "test_256" / f"{key}.mp4")
    torch.save(torch.zeros(16, 16), tmp_path / "test_poses" / f"{key}.pt")
    ds = RealEstate10K(tmp_path, "test", num_frames=2, resolution=16)
    with pytest.raises(DataError, match=rf"{key}.pt: expected camera rows \[T, 18\].*got \[16, 16\] \(already a DFoT pose"):
        ds[0]
    torch.save(torch.zeros(15, 18), tmp_path / "test_poses" / f"{key}.pt")
    with pytest.raises(DataError, match=rf"{key}.pt: 15 poses but .*{key}.mp4 has 16 frames"):
        ds[0]
    (tmp_path / "test_poses" / f"{key}.pt").write_bytes(b"garbage")
    with pytest.raises(DataError, match=rf"{key}.pt: cannot load poses"):
        ds[0]


def test_on_error_skip_logs_counts_and_moves_on(tmp_path, raw_root, caplog):
    root, _ = raw_root
    keys = REAL_CAMERA_KEYS
    copy_clip(root, tmp_path, keys[0])
    copy_clip(root, tmp_path, keys[2])
    (tmp_path / "test" / f"{keys[0]}.mp4").write_bytes(b"\x00" * 100)
    ds = RealEstate10K(tmp_path, "test", num_frames=4, resolution=16, on_error="skip")
    with caplog.at_level("WARNING", logger="gfcore.data"):
        item = ds[0]
    assert item["key"] == keys[2]
    assert ds.num_skipped == 1 and ds.skipped_keys == [keys[0]]
    assert f"skipping clip {keys[0]}" in caplog.text and f"{keys[0]}.mp4" in caplog.text
    (tmp_path / "test" / f"{keys[2]}.mp4").write_bytes(b"\x00" * 100)
    with pytest.raises(DataError, match="every one of the 2 clips failed"):
        ds[1]


def test_dataloader_with_workers(raw_root):
    root, _ = raw_root
    ds = RealEstate10K(root, "test", num_frames=3, resolution=(16, 24), random_start=True, hflip_prob=0.5)
    loader = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=2, shuffle=False)
    batches = list(loader)
    assert [len(b["key"]) for b in batches] == [2, 1]
    assert sorted(k for b in batches for k in b["key"]) == sorted(REAL_CAMERA_KEYS)
    first = batches[0]
    assert first["frames"].shape == (2, 3, 3, 16, 24)
    assert first["intrinsics"].shape == (2, 3, 3, 3) and first["c2w"].shape == (2, 3, 4, 4)
    assert first["frame_indices"].shape == (2, 3) and first["flipped"].dtype == torch.bool


def _image_folder_copy(tmp_path, raw_root):
    root, frames = raw_root
    key = REAL_CAMERA_KEYS[1]
    shutil.copytree(root / "test" / key, tmp_path / "test" / key)
    shutil.copy(root / "test" / f"{key}.txt", tmp_path / "test")
    stamps = read_camera_file(tmp_path / "test" / f"{key}.txt").timestamps
    return key, stamps, frames[key]


def test_image_folder_grayscale_other_files_and_bad_images(tmp_path, raw_root):
    """A grayscale PNG is read as RGB; files that are not <timestamp>.<image ext> are ignored (an
    upper-case extension counts); a missing frame, an image of another size and an unreadable
    image are each reported with the file and what is wrong."""
    from PIL import Image

    key, stamps, frames = _image_folder_copy(tmp_path, raw_root)
    folder = tmp_path / "test" / key
    gray = np.array(Image.fromarray(frames[1]).convert("L"))
    Image.fromarray(gray).save(folder / f"{stamps[1]}.png")
    os.rename(folder / f"{stamps[3]}.png", folder / f"{stamps[3]}.PNG")
    Image.fromarray(frames[0]).save(folder / "preview.png")  # not a timestamp
    (folder / "12345.json").write_text("{}")  # not an image
    ds = RealEstate10K(tmp_path, "test", num_frames=4, resolution=(SRC_H, SRC_W), random_start=False)
    item = ds[0]
    as_float = torch.from_numpy(gray).float() / 127.5 - 1
    for channel in range(3):  # the gray frame, replicated
        torch.testing.assert_close(item["frames"][1, channel], as_float, rtol=0, atol=1e-6)
    torch.testing.assert_close(item["frames"][3], torch.from_numpy(frames[3]).permute(2, 0, 1).float() / 127.5 - 1,
                               rtol=0, atol=1e-6)
    Image.fromarray(frames[1][:20, :30]).save(folder / f"{stamps[1]}.png")  # the second frame read
    with pytest.raises(DataError, match=rf"{stamps[1]}\.png: image size \(20, 30\) differs from "
                                        rf".*{stamps[0]}\.png \({SRC_H}, {SRC_W}\)$"):
        ds[0]
    Image.fromarray(frames[1]).save(folder / f"{stamps[1]}.png")
    (folder / f"{stamps[2]}.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match=rf"{stamps[2]}\.png: cannot read image \([A-Za-z]*Error: "):
        ds[0]
    os.remove(folder / f"{stamps[2]}.png")
    with pytest.raises(DataError, match=rf"^.*{key}\.txt: 16 camera lines but .*{key} holds 15 frames$"):
        ds[0]


def test_too_short_clips_name_their_file_in_every_layout(tmp_path, raw_root):
    root, _ = raw_root
    key = REAL_CAMERA_KEYS[0]
    image_key, _, _ = _image_folder_copy(tmp_path / "images", raw_root)
    with pytest.raises(DataError, match=rf"{image_key}\.txt: has 16 frames, fewer than the 17 needed"):
        RealEstate10K(tmp_path / "images", "test", num_frames=17, resolution=16)[0]
    os.makedirs(tmp_path / "test_256")
    os.makedirs(tmp_path / "test_poses")
    shutil.copy(root / "test" / f"{key}.mp4", tmp_path / "test_256" / f"{key}.mp4")
    rows = torch.from_numpy(read_camera_file(root / "test" / f"{key}.txt").rows)
    torch.save(rows, tmp_path / "test_poses" / f"{key}.pt")
    with pytest.raises(DataError, match=rf"{key}\.pt: has 16 frames, fewer than the 17 needed"):
        RealEstate10K(tmp_path, "test", num_frames=17, resolution=16)[0]


def test_dfot_pose_files_are_loaded_safely_and_checked(tmp_path, raw_root):
    """Pose files are read with weights_only (a pickled numpy array, or a pickle that would run a
    command, is refused with the class named, not unpickled);
    a file that is not a tensor says what it holds; errors carry the exception type."""
    root, _ = raw_root
    key = REAL_CAMERA_KEYS[0]
    os.makedirs(tmp_path / "test_256")
    os.makedirs(tmp_path / "test_poses")
    shutil.copy(root / "test" / f"{key}.mp4", tmp_path / "test_256" / f"{key}.mp4")
    pose_file = tmp_path / "test_poses" / f"{key}.pt"
    torch.save(np.zeros((16, 16)), pose_file)
    ds = RealEstate10K(tmp_path, "test", num_frames=2, resolution=16)
    with pytest.raises(DataError, match=rf"{key}\.pt: cannot load poses \(UnsafeFileError: pose file .*: refused, "
                                        rf"not loaded: it asks for .*numpy"):
        ds[0]
    marker = tmp_path / "code_ran"
    write_malicious(pose_file, marker)
    with pytest.raises(DataError, match=rf"{key}\.pt: cannot load poses \(UnsafeFileError: .*{PAYLOAD_GLOBAL}"):
        ds[0]
    assert not marker.exists()
    torch.save({"poses": torch.zeros(16, 16)}, pose_file)
    with pytest.raises(DataError, match=rf"{key}\.pt: expected a tensor of camera rows \[T, 18\], got dict$"):
        ds[0]
    torch.save(torch.zeros(16), pose_file)
    with pytest.raises(DataError, match=rf"{key}\.pt: expected camera rows \[T, 18\] .*got \[16\]$"):
        ds[0]


def test_flip_probability_and_flips_without_depth(raw_root):
    """hflip_prob 1: every clip flipped (no depth needed); 0: none, and no random number is drawn;
    0.5: both happen."""
    root, _ = raw_root
    plain = RealEstate10K(root, "test", num_frames=3, resolution=(16, 24), random_start=False)
    always = RealEstate10K(root, "test", num_frames=3, resolution=(16, 24), random_start=False, hflip_prob=1.0)
    item, flipped = plain[0], always[0]
    assert flipped["flipped"] and not item["flipped"] and "depth" not in flipped
    torch.testing.assert_close(flipped["frames"], item["frames"].flip(-1), rtol=0, atol=0)
    torch.manual_seed(0)
    state = torch.get_rng_state()
    assert not any(plain[i]["flipped"] for i in range(len(plain)))
    assert torch.equal(torch.get_rng_state(), state)
    half = RealEstate10K(root, "test", num_frames=3, resolution=(16, 24), random_start=False, hflip_prob=0.5)
    draws = {half[i % len(half)]["flipped"] for i in range(24)}
    assert draws == {True, False}


def test_constructor_defaults_and_layout_errors(tmp_path, raw_root):
    """Defaults: split "train", 16 frames at 256 x 256, a random start for "train" only; a bad layout,
    depth with the DFoT layout and an empty DFoT pose folder are named."""
    root, _ = raw_root
    shutil.copytree(root / "test", tmp_path / "train")
    train = RealEstate10K(tmp_path)
    assert (train.split, train.num_frames, train.resolution, train.random_start) == ("train", 16, (256, 256), True)
    assert train.raw_dir == os.path.join(str(tmp_path), "train")
    test = RealEstate10K(root, "test")
    assert test.split == "test" and test.random_start is False
    assert RealEstate10K(root, "test", random_start=True).random_start is True
    assert RealEstate10K(tmp_path, random_start=False).random_start is False
    with pytest.raises(ValueError, match=r"^layout must be 'auto', 'raw' or 'dfot', got 'mp4'$"):
        RealEstate10K(root, "test", layout="mp4")
    with pytest.raises(ValueError, match=r"^with_depth needs the raw layout \(\{key\}\.depth\.npz next to the camera file\)$"):
        RealEstate10K(root, "test", layout="dfot", with_depth=True)
    os.makedirs(tmp_path / "val_poses")
    with pytest.raises(DataError, match=r"^no DFoT pose files \(\*\.pt\) in .*val_poses$"):
        RealEstate10K(tmp_path, "val")


def test_read_images_names_the_size_of_the_image_that_differs(tmp_path):
    """The third image differs: its own size is named (not the second's)."""
    from PIL import Image

    from gfcore.data.re10k import _read_images

    paths = []
    for i, size in enumerate([(8, 6), (8, 6), (10, 4)]):
        paths.append(str(tmp_path / f"{i}.png"))
        Image.new("RGB", size).save(paths[-1])
    with pytest.raises(DataError, match=rf"^{paths[2]}: image size \(4, 10\) differs from {paths[0]} \(6, 8\)$"):
        _read_images(paths)
    assert _read_images(paths[:2]).shape == (2, 6, 8, 3)
