"""Feature cache: dataset and .mp4 folder inputs, fp16 memory-mapped storage, index and errors."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from gfcore.geometry import VGGT, VGGTTeacher, save_state_dict, small_config
from gfcore.geometry.cache import FeatureCache, build_feature_cache, read_video, to_unit_range

pytestmark = pytest.mark.usefixtures("single_thread")

HEADLESS = {"enable_camera": False, "enable_depth": False, "enable_point": False}
SIZE = 56
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def teacher():
    torch.manual_seed(0)
    model = VGGT(**{**small_config(), **HEADLESS})
    return VGGTTeacher(model=model, layers=(1,), dtype=torch.float32, image_size=SIZE, frames_per_call=2)


def test_value_ranges():
    x = torch.rand(2, 3, 4, 4)
    torch.testing.assert_close(to_unit_range(x * 2 - 1), x)
    torch.testing.assert_close(to_unit_range(x), x)
    torch.testing.assert_close(to_unit_range((x * 255).round().to(torch.uint8)), (x * 255).round() / 255)
    with pytest.raises(ValueError, match="value_range"):
        to_unit_range(x, "0,255")


def test_dataset_cache_round_trip_and_resume(tmp_path, teacher):
    clips = [torch.rand(3, 3, 40, 60), torch.rand(2, 3, SIZE, SIZE)]
    dataset = [{"key": "scene/a", "frames": clips[0] * 2 - 1},  # [-1, 1] input
               {"key": "scene/b", "frames": clips[1]}]
    index_path = build_feature_cache(teacher, dataset, tmp_path, grid=(3, 5))
    index = json.loads(index_path.read_text())
    assert index["layers"] == [1] and index["grid"] == [3, 5] and index["feature_dim"] == 768
    cache = FeatureCache(tmp_path)
    assert cache.keys() == ["scene/a", "scene/b"] and len(cache) == 2
    for key, clip in zip(cache.keys(), clips):
        stored = cache[key]
        assert isinstance(stored, np.memmap) and stored.dtype == np.float16
        expected = teacher(clip[None], grid=(3, 5))[0]
        assert stored.shape == tuple(expected.shape)
        np.testing.assert_allclose(stored.astype(np.float32), expected.numpy(), rtol=2e-3, atol=2e-3)
    part = cache.features("scene/a", slice(1, 3))
    assert part.shape == (2, 1, 3, 5, 768) and part.dtype == torch.float16
    # resumable: an existing clip of the right shape is not recomputed
    file_a = tmp_path / index["clips"]["scene/a"]["file"]
    mtime = file_a.stat().st_mtime_ns
    build_feature_cache(teacher, dataset, tmp_path, grid=(3, 5))
    assert file_a.stat().st_mtime_ns == mtime


def test_bad_items_and_index_are_named(tmp_path, teacher):
    with pytest.raises(ValueError, match="dataset item 1.*'k2'.*\\[T, 3, H, W\\]"):
        build_feature_cache(teacher, [{"key": "k1", "frames": torch.rand(1, 3, 8, 8)},
                                      {"key": "k2", "frames": torch.rand(3, 8, 8)}], tmp_path / "c", (2, 2))
    with pytest.raises(ValueError, match="dataset item 0.*'key' and 'frames'"):
        build_feature_cache(teacher, [{"frames": torch.rand(1, 3, 8, 8)}], tmp_path / "c", (2, 2))
    with pytest.raises(FileNotFoundError, match="index.json"):
        FeatureCache(tmp_path / "empty")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "index.json").write_text('{"version": 1,\n "layers": [1,\n')
    with pytest.raises(ValueError, match="index.json.*line 3"):
        FeatureCache(tmp_path / "broken")
    (tmp_path / "broken" / "index.json").write_text('{"version": 1}')
    with pytest.raises(ValueError, match="lacks keys"):
        FeatureCache(tmp_path / "broken")


def _write_mp4(path, frames):
    av = pytest.importorskip("av", reason="PyAV not installed")
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=8)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def test_command_line_on_mp4_folder(tmp_path, teacher):
    videos = tmp_path / "videos"
    (videos / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    _write_mp4(videos / "sub" / "clip.mp4", rng.integers(0, 255, (3, 48, 64, 3), dtype=np.uint8))
    (videos / "broken.mp4").write_bytes(b"not a video")
    with pytest.raises(ValueError, match="broken.mp4"):
        read_video(videos / "broken.mp4")
    (videos / "broken.mp4").unlink()
    save_state_dict(teacher.vggt, tmp_path / "small.pt")
    command = [sys.executable, "-m", "gfcore.geometry.cache", "--videos", str(videos), "--out", str(tmp_path / "c"),
               "--checkpoint", str(tmp_path / "small.pt"), "--config", "small", "--layers", "1", "--grid", "2", "3",
               "--dtype", "fp32", "--image-size", str(SIZE), "--device", "cpu", "--frames-per-call", "2"]
    env = {"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    cache = FeatureCache(tmp_path / "c")
    assert cache.keys() == ["sub/clip"]
    frames = read_video(videos / "sub" / "clip.mp4")
    assert frames.shape == (3, 3, 48, 64) and frames.dtype == torch.uint8
    expected = teacher(frames[None].float() / 255, grid=(2, 3))[0]
    np.testing.assert_allclose(cache["sub/clip"].astype(np.float32), expected.numpy(), rtol=2e-3, atol=2e-3)


def _random_cache(root, clips, layers=2, grid=(2, 3), dim=5):
    """A cache index + float16 files written by hand (no teacher): {key: frames}."""
    (root / "features").mkdir(parents=True)
    entries, arrays = {}, {}
    rng = np.random.default_rng(0)
    for n, (key, frames) in enumerate(clips.items()):
        arrays[key] = rng.standard_normal((frames, layers, *grid, dim)).astype(np.float16)
        np.save(root / "features" / f"c{n}.npy", arrays[key])
        entries[key] = {"file": f"features/c{n}.npy", "frames": frames}
    (root / "index.json").write_text(json.dumps({"version": 1, "teacher": "vggt", "layers": list(range(layers)),
                                                 "grid": list(grid), "feature_dim": dim, "dtype": "float16",
                                                 "clips": entries}))
    return arrays


def test_cache_reads_open_each_file_once_and_match_the_files(tmp_path, monkeypatch):
    from gfcore.train.teachers import TeacherTargets

    arrays = _random_cache(tmp_path, {"a": 6, "b": 4})
    opened = []
    original = np.load
    monkeypatch.setattr(np, "load", lambda *a, **k: opened.append(a[0]) or original(*a, **k))
    targets = TeacherTargets((2, 3), cache=str(tmp_path))
    batch = {"frames": torch.zeros(2, 3, 3, 4, 4), "key": ["a", "b"],
             "frame_indices": [torch.tensor([5, 0, 5]), torch.tensor([1, 2, 3])]}  # out of order, repeated
    for _ in range(3):
        got = targets(batch)
        # independent: the files as numpy reads them, frames picked, [B, T, P, L, D] in float32
        expected = np.stack([arrays["a"][[5, 0, 5]], arrays["b"][[1, 2, 3]]]).astype(np.float32)
        expected = torch.from_numpy(expected).permute(0, 1, 3, 4, 2, 5).flatten(2, 3)
        assert got.dtype == torch.float32 and torch.equal(got, expected)
    assert len(opened) == 2  # one open per clip file, not one per step
    # features(): float16, the selected frames, a writable copy that does not alias the file
    part = targets.cache.features("a", slice(1, 3))
    assert part.dtype == torch.float16 and torch.equal(part, torch.from_numpy(arrays["a"][1:3]))
    part.zero_()
    assert torch.equal(targets.cache.features("a", [1, 2]), torch.from_numpy(arrays["a"][1:3]))
    out = torch.empty(2, 2, 2, 3, 5, dtype=torch.float64)
    targets.cache.read_into("b", [3, 0], out)
    assert torch.equal(out, torch.from_numpy(arrays["b"][[3, 0]]).double())
    with pytest.raises(ValueError, match="out is"):
        targets.cache.read_into("b", [3], out)
    with pytest.raises(ValueError, match="same number of frames"):
        targets({**batch, "frame_indices": [torch.tensor([0, 1]), torch.tensor([1, 2, 3])]})
