"""Minecraft reader: frames and actions read back, resize, bad inputs, on_error skip, DataLoader workers."""
import os

import numpy as np
import pytest
import torch

pytest.importorskip("av", reason="writing test videos needs PyAV (pip install av)")

from data_test_utils import smooth_frames  # noqa: E402
from gfcore.data import DataError, Minecraft, VideoError  # noqa: E402
from gfcore.data.video import write_video  # noqa: E402


def make_clip(directory, key, num_frames=10, height=24, width=40, num_actions=4, seed=0):
    os.makedirs(directory, exist_ok=True)
    frames = smooth_frames(num_frames, height, width, seed=seed)
    actions = np.random.default_rng(seed).normal(size=(num_frames, num_actions)).astype(np.float32)
    write_video(os.path.join(directory, f"{key}.mp4"), frames)
    np.savez(os.path.join(directory, f"{key}.npz"), actions=actions)
    return frames, actions


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("minecraft")
    clips = {key: make_clip(root / "val", key, seed=i) for i, key in enumerate(["a", "b", "c"])}
    return root, clips


def test_items_carry_frames_and_their_actions(root):
    root, clips = root
    ds = Minecraft(root, "val", num_frames=4, frame_skip=3)
    assert ds.keys == ["a", "b", "c"] and not ds.random_start
    item = ds[2]
    frames, actions = clips["c"]
    np.testing.assert_array_equal(item["frame_indices"].numpy(), [0, 3, 6, 9])
    np.testing.assert_array_equal(item["actions"].numpy(), actions[[0, 3, 6, 9]])
    assert item["actions"].dtype == torch.float32 and item["key"] == "c"
    assert item["frames"].shape == (4, 3, 24, 40)
    decoded = (item["frames"].permute(0, 2, 3, 1).numpy() + 1) * 127.5
    error = decoded - frames[[0, 3, 6, 9]]
    assert 10 * np.log10(255.0**2 / np.mean(error**2)) > 30


def test_resolution_and_random_start(root):
    root, clips = root
    ds = Minecraft(root, "val", num_frames=3, resolution=(16, 16), random_start=True)
    torch.manual_seed(1)
    items = [ds[0] for _ in range(20)]
    assert items[0]["frames"].shape == (3, 3, 16, 16)
    starts = {int(i["frame_indices"][0]) for i in items}
    assert len(starts) > 3 and max(starts) <= 7
    for item in items:  # actions always follow their frames
        np.testing.assert_array_equal(item["actions"].numpy(), clips["a"][1][item["frame_indices"].numpy()])


def test_bad_inputs_name_the_file(tmp_path):
    directory = tmp_path / "train"
    make_clip(directory, "no_npz")
    os.remove(directory / "no_npz.npz")
    make_clip(directory, "no_key")
    np.savez(directory / "no_key.npz", keys=np.zeros((10, 4)))
    make_clip(directory, "short")
    np.savez(directory / "short.npz", actions=np.zeros((9, 4)))
    make_clip(directory, "flat")
    np.savez(directory / "flat.npz", actions=np.zeros(10))
    make_clip(directory, "broken")
    (directory / "broken.mp4").write_bytes(b"\x00" * 64)
    make_clip(directory, "zipbad")
    (directory / "zipbad.npz").write_bytes(b"PK\x03\x04 truncated")
    ds = Minecraft(tmp_path, "train", num_frames=4)
    expected = {
        "broken": (VideoError, r"broken.mp4"),
        "flat": (DataError, r"flat.npz: 'actions' must be a numeric \[T, A\] array"),
        "no_key": (DataError, r"no_key.npz: missing key\(s\) \['actions'\]"),
        "no_npz": (DataError, r"file not found: .*no_npz.npz"),
        "short": (DataError, r"short.npz: 9 action rows but .*short.mp4 has 10 frames"),
        "zipbad": (DataError, r"zipbad.npz: cannot read .npz"),
    }
    assert ds.keys == sorted(expected)
    for index, key in enumerate(ds.keys):
        error, match = expected[key]
        with pytest.raises(error, match=match):
            ds[index]
    os.makedirs(tmp_path / "empty")
    with pytest.raises(DataError, match="no Minecraft video files"):
        Minecraft(tmp_path, "empty")


def test_skip_bad_clips(tmp_path):
    directory = tmp_path / "train"
    make_clip(directory, "bad")
    (directory / "bad.npz").unlink()
    make_clip(directory, "good", seed=5)
    ds = Minecraft(tmp_path, "train", num_frames=4, random_start=False, on_error="skip")
    assert ds[0]["key"] == "good" and ds.num_skipped == 1 and ds.skipped_keys == ["bad"]


def test_dataloader_with_workers(root):
    root, _ = root
    ds = Minecraft(root, "val", num_frames=5, resolution=16, random_start=True)
    batches = list(torch.utils.data.DataLoader(ds, batch_size=3, num_workers=2))
    assert len(batches) == 1
    batch = batches[0]
    assert batch["frames"].shape == (3, 5, 3, 16, 16) and batch["actions"].shape == (3, 5, 4)
    assert list(batch["key"]) == ["a", "b", "c"]
