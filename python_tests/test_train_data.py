"""The training batch: windows cut from the clips, and Pluecker rays relative to each window's first frame."""
import numpy as np
import pytest
import torch

from gfcore.train import load_config
from gfcore.train.data import StepBatcher, build_dataset
from trainer_helpers import tiny_data_root, tiny_overrides  # noqa: F401  (fixture)


def _rays_by_hand(K: np.ndarray, c2w: np.ndarray, height: int, width: int) -> np.ndarray:
    """[T, 6, H, W] in float64: c2w made relative to frame 0 (inv(c2w_0) c2w_t), one ray through each
    pixel centre (u + 0.5, v + 0.5): d = R K^-1 p / |.|, moment = camera centre x d."""
    out = np.zeros((len(c2w), 6, height, width))
    first_inv = np.linalg.inv(c2w[0])
    for t in range(len(c2w)):
        pose = first_inv @ c2w[t]
        rotation, centre = pose[:3, :3], pose[:3, 3]
        for v in range(height):
            for u in range(width):
                d = rotation @ np.linalg.solve(K[t], np.array([u + 0.5, v + 0.5, 1.0]))
                d /= np.linalg.norm(d)
                out[t, :3, v, u] = d
                out[t, 3:, v, u] = np.cross(centre, d)
    return out


def test_batch_rays_are_relative_to_the_window_first_frame(tiny_data_root):  # noqa: F811
    cfg = load_config(tiny_overrides(tiny_data_root, "unused"))
    dataset = build_dataset(cfg.data, with_depth=False)
    batcher = StepBatcher(dataset, num_frames=4, batch_size=2, seed=5, camera=True, cache=False)
    for step in (0, 3):
        batch = batcher.batch(step)
        height, width = batch["frames"].shape[-2:]
        assert batch["rays"].shape == (2, 4, 6, height, width)
        for sample, (index, fraction) in enumerate(batcher.plan(step)):
            clip = dataset[index]
            total = clip["frames"].shape[0]
            start = int(fraction * (total - 4 + 1))
            window = slice(start, start + 4)
            torch.testing.assert_close(batch["frames"][sample], clip["frames"][window], rtol=0, atol=0)
            K = clip["intrinsics"][window].double().numpy()
            c2w = clip["c2w"][window].double().numpy()
            expected = _rays_by_hand(K, c2w, height, width)
            torch.testing.assert_close(batch["rays"][sample].double(), torch.from_numpy(expected), rtol=0, atol=1e-5)
            # the batch's poses are the relative ones: frame 0 is the identity
            torch.testing.assert_close(batch["c2w"][sample].double(),
                                       torch.from_numpy(np.linalg.inv(c2w[0]) @ c2w), rtol=0, atol=1e-5)
    # the window must actually move, or the test could not tell relative from absolute poses
    c2w = dataset[0]["c2w"].double()
    assert (c2w[1:, :3, 3] - c2w[:1, :3, 3]).norm(dim=-1).max() > 1e-2


class CountingClips(torch.utils.data.Dataset):
    """Clips whose frame values encode (clip, frame); counts the reads."""

    def __init__(self, frames=(6, 9, 7)):
        self.frames, self.reads = frames, []

    def __len__(self):
        return len(self.frames)

    def _frames(self, index):
        """Counts the read; frame f of clip i holds the value 100 i + f, shape [T, 3, 2, 2]."""
        self.reads.append(index)
        total = self.frames[index]
        return (100 * index + torch.arange(total, dtype=torch.float32)).view(total, 1, 1, 1).expand(total, 3, 2, 2).clone()

    def __getitem__(self, index):
        return {"frames": self._frames(index), "key": f"clip{index}", "scalar": torch.tensor(1.0)}


def test_windows_ranks_and_cache():
    dataset = CountingClips()
    whole = StepBatcher(dataset, num_frames=4, batch_size=6, seed=1, camera=False, cache=True)
    for step in range(3):
        batch = whole.batch(step)
        assert batch["frames"].shape == (6, 4, 3, 2, 2) and "scalar" not in batch
        for sample, (index, fraction) in enumerate(whole.plan(step)):
            # the window start by hand: int(fraction * (T - n + 1)) covers every start 0 .. T - n
            start = int(fraction * (dataset.frames[index] - 4 + 1))
            expected = 100 * index + torch.arange(start, start + 4, dtype=torch.float32)
            assert torch.equal(batch["frames"][sample, :, 0, 0, 0], expected)
            assert batch["key"][sample] == f"clip{index}"
    assert sorted(dataset.reads) == sorted(set(dataset.reads))  # cached: each clip read once
    # rank r of W takes rows [r B / W, (r + 1) B / W) of the same global batch
    parts = [StepBatcher(dataset, 4, 6, seed=1, camera=False, rank=r, world_size=3).batch(2) for r in range(3)]
    assert torch.equal(torch.cat([p["frames"] for p in parts]), whole.batch(2)["frames"])
    assert sum((p["key"] for p in parts), []) == whole.batch(2)["key"]


def test_batcher_errors_and_devices():
    from gfcore.train.data import batch_to_device

    with pytest.raises(ValueError, match="divisible by the world size 4"):
        StepBatcher(CountingClips(), 4, 6, seed=0, camera=False, world_size=4)
    with pytest.raises(ValueError, match="empty"):
        StepBatcher(CountingClips(frames=()), 4, 2, seed=0, camera=False)
    with pytest.raises(ValueError, match="has 6 frames, fewer than train num_frames 8"):
        StepBatcher(CountingClips(frames=(6,)), 8, 1, seed=0, camera=False).batch(0)
    batch = {"frames": torch.ones(2), "key": ["a", "b"]}
    assert batch_to_device(batch, None) is batch
    moved = batch_to_device(batch, torch.device("cpu"), pin=True)
    assert moved["key"] == ["a", "b"] and torch.equal(moved["frames"], batch["frames"])


def test_build_dataset_kinds(tmp_path):
    from omegaconf import OmegaConf

    from gfcore.train.data import build_dataset as build

    with pytest.raises(ValueError, match="data.kind must be one of"):
        build(OmegaConf.create({"kind": "kinetics", "resolution": [8, 8]}), with_depth=False)
    # whole clips (what the sampler reads): DFoT's training stream is not one of them
    from gfcore.data.build import build_clip_dataset

    with pytest.raises(ValueError, match=r"data.kind must be one of \('synthetic', 're10k', 'minecraft'\) for whole "
                                         r"clips, got 'dfot_re10k'"):
        build_clip_dataset(OmegaConf.create({"kind": "dfot_re10k", "resolution": [8, 8]}), False, "train", False)


def test_ensure_synthetic_generates_only_when_the_marker_differs(tmp_path, monkeypatch):
    """{root}/{split}/generator.json written by an earlier generation with the same clips, frames,
    seed, task and texture detail (1.0 when the marker predates it) means nothing is generated;
    any difference, or another split, generates."""
    import json

    import gfcore.data.synthetic as synthetic
    from gfcore.data.build import ensure_synthetic

    calls = []
    monkeypatch.setattr(synthetic, "generate", lambda *args, **kwargs: calls.append((args, kwargs)))
    root = str(tmp_path)
    ensure_synthetic(root, 3, 8, [16, 16], 5, "camera")
    assert calls == [((root, 3, 8, [16, 16], 5, "camera", "train"), {"texture_detail": 1.0})]
    (tmp_path / "train").mkdir()
    marker = {"num_clips": 3, "num_frames": 8, "seed": 5, "task": "camera", "resolution": [16, 16]}
    (tmp_path / "train" / "generator.json").write_text(json.dumps(marker))
    calls.clear()
    ensure_synthetic(root, 3, 8, [16, 16], 5, "camera")
    assert calls == []
    changed = [dict(num_clips=4), dict(num_frames=9), dict(seed=6), dict(task="action"), dict(texture_detail=2.0),
               dict(split="test")]
    for change in changed:
        args = dict(num_clips=3, num_frames=8, resolution=[16, 16], seed=5, task="camera", split="train",
                    texture_detail=1.0) | change
        calls.clear()
        ensure_synthetic(root, **args)
        assert len(calls) == 1, change
        assert calls[0][0][-1] == args["split"] and calls[0][1] == {"texture_detail": args["texture_detail"]}
    (tmp_path / "train" / "generator.json").write_text(json.dumps(marker | {"texture_detail": 2.0}))
    calls.clear()
    ensure_synthetic(root, 3, 8, [16, 16], 5, "camera", texture_detail=2.0)
    assert calls == []


def test_build_dataset_passes_the_config_to_the_readers(monkeypatch):
    """Which reader each data.kind builds, with which root (~ expanded), split, window settings and
    depth flag; the built-in scenes are generated first (unless told not to) with their texture detail."""
    import os

    from omegaconf import OmegaConf

    import gfcore.data as data_package
    import gfcore.data.build as data_build
    import gfcore.train.data as train_data

    ensured, built = [], []
    monkeypatch.setattr(data_build, "ensure_synthetic", lambda *args: ensured.append(args))
    monkeypatch.setattr(data_package, "RealEstate10K", lambda *a, **k: built.append(("re10k", a, k)) or "re10k")
    monkeypatch.setattr(data_package, "Minecraft", lambda *a, **k: built.append(("minecraft", a, k)) or "minecraft")
    base = dict(root="~/gf-data", num_clips=3, clip_frames=8, resolution=[16, 24], seed=5, task="camera")
    home = os.path.expanduser("~/gf-data")
    window = dict(num_frames=8, resolution=[16, 24], random_start=False)

    assert train_data.build_dataset(OmegaConf.create(base | {"kind": "synthetic"}), with_depth=True) == "re10k"
    assert ensured == [(home, 3, 8, [16, 24], 5, "camera", "train", 1.0)]
    assert built == [("re10k", (home, "train"), window | dict(with_depth=True, layout="raw"))]
    ensured.clear(), built.clear()
    cfg = OmegaConf.create(base | {"kind": "synthetic", "task": "action", "texture_detail": 0.25})
    assert train_data.build_dataset(cfg, with_depth=False, split="test") == "minecraft"
    assert ensured == [(home, 3, 8, [16, 24], 5, "action", "test", 0.25)]
    assert built == [("minecraft", (home, "test"), window | dict(with_depth=False))]
    ensured.clear(), built.clear()
    train_data.build_dataset(OmegaConf.create(base | {"kind": "synthetic"}), with_depth=False, generate_missing=False)
    assert ensured == [] and len(built) == 1
    built.clear()
    assert train_data.build_dataset(OmegaConf.create(base | {"kind": "re10k", "frame_skip": 3}), with_depth=True) == "re10k"
    assert built == [("re10k", (home, "train"), window | dict(frame_skip=3, with_depth=True))]
    built.clear()
    assert train_data.build_dataset(OmegaConf.create(base | {"kind": "minecraft"}), with_depth=False,
                                    split="val") == "minecraft"
    assert built == [("minecraft", (home, "val"), window | dict(frame_skip=1, with_depth=False))]
    built.clear()
    train_data.build_dataset(OmegaConf.create(base | {"kind": "minecraft", "frame_skip": 2}), with_depth=True)
    train_data.build_dataset(OmegaConf.create(base | {"kind": "re10k"}), with_depth=False)
    assert built == [("minecraft", (home, "train"), window | dict(frame_skip=2, with_depth=True)),
                     ("re10k", (home, "train"), window | dict(frame_skip=1, with_depth=False))]
    assert ensured == []


def test_a_synthetic_split_is_read_at_the_clip_length_it_was_generated_with(tmp_path, monkeypatch):
    """The sampler and the evaluation read a synthetic split at the length in its generator.json (the
    demo's test split is longer than data.clip_frames); the trainer on every rank, every other
    kind, and a split not generated yet use data.clip_frames."""
    import json

    from omegaconf import OmegaConf

    import gfcore.data as data_package
    import gfcore.data.build as data_build

    built = []
    monkeypatch.setattr(data_build, "ensure_synthetic", lambda *args: None)
    monkeypatch.setattr(data_package, "RealEstate10K", lambda *a, **k: built.append(k["num_frames"]) or "re10k")
    monkeypatch.setattr(data_package, "Minecraft", lambda *a, **k: built.append(k["num_frames"]) or "minecraft")
    (tmp_path / "test").mkdir()
    (tmp_path / "test" / "generator.json").write_text(json.dumps({"num_frames": 40, "num_clips": 2}))
    base = dict(kind="synthetic", root=str(tmp_path), num_clips=3, clip_frames=8, resolution=[16, 16], seed=5,
                task="camera")
    cfg = OmegaConf.create(base)
    assert data_build.split_clip_frames(cfg, "test") == 40
    assert data_build.split_clip_frames(cfg, "train") == 8  # no marker: not generated yet
    assert data_build.split_clip_frames(OmegaConf.create(base | {"kind": "re10k"}), "test") == 8
    data_build.build_clip_dataset(cfg, False, "test", generate_missing=False)
    data_build.build_clip_dataset(OmegaConf.create(base | {"task": "action"}), False, "test", generate_missing=False)
    data_build.build_clip_dataset(cfg, False, "test", generate_missing=True)
    data_build.build_clip_dataset(cfg, False, "train", generate_missing=False)
    data_build.build_clip_dataset(cfg, False, "test", generate_missing=False, split_length=False)
    data_build.build_clip_dataset(cfg, False, "test", generate_missing=True, split_length=True)
    assert built == [40, 40, 8, 8, 8, 40]
    assert cfg.clip_frames == 8  # the run's config is left as it was
    # the trainer: every rank at data.clip_frames, also those that do not generate (rank 0 may be
    # rewriting generator.json meanwhile)
    import gfcore.train.data as train_data

    built.clear()
    train_data.build_dataset(cfg, with_depth=False, split="test", generate_missing=False)
    assert built == [8]


class KeylessClips(CountingClips):
    """Clips without a "key", with a per-frame 1-D tensor (like frame_indices) and a per-clip scalar."""

    def __init__(self, frames=(4, 7)):
        super().__init__(frames)

    def __getitem__(self, index):
        frames = self._frames(index)
        return {"frames": frames, "frame_indices": 10 * torch.arange(len(frames)), "fps": torch.tensor(30.0)}


def test_batcher_windows_per_frame_vectors_default_keys_and_cache():
    """A clip of exactly num_frames frames is one window; 1-D per-frame tensors are cut with the
    frames; a clip without a key is named by its index; clips are cached by default."""
    dataset = KeylessClips()
    batcher = StepBatcher(dataset, num_frames=4, batch_size=3, seed=2, camera=False)
    for step in range(4):
        batch = batcher.batch(step)
        assert "fps" not in batch
        for sample, (index, fraction) in enumerate(batcher.plan(step)):
            start = int(fraction * (dataset.frames[index] - 4 + 1))
            assert torch.equal(batch["frame_indices"][sample], 10 * torch.arange(start, start + 4))
            assert torch.equal(batch["frames"][sample, :, 0, 0, 0], 100 * index + torch.arange(start, start + 4.0))
            assert batch["key"][sample] == str(index)
    assert sorted(dataset.reads) == sorted(set(dataset.reads))  # each clip read once
    with pytest.raises(ValueError, match=r"^clip 0 has 4 frames, fewer than train num_frames 5$"):
        StepBatcher(KeylessClips(), num_frames=5, batch_size=1, seed=0, camera=False)._clip(0)
    with pytest.raises(ValueError, match=r"^clip 'clip0' has 6 frames, fewer than train num_frames 8$"):
        StepBatcher(CountingClips(frames=(6,)), 8, 1, seed=0, camera=False).batch(0)
    with pytest.raises(ValueError, match=r"^the training dataset is empty$"):
        StepBatcher(KeylessClips(frames=()), 4, 1, seed=0, camera=False)
