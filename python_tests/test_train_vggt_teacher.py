"""teacher=vggt from a feature cache: targets are the cached features of the batch's frames."""
import os

import pytest
import torch

from gfcore.io.checkpoint_file import read_checkpoint
from gfcore.geometry import VGGT, VGGTTeacher, save_state_dict, small_config
from gfcore.geometry.cache import FeatureCache, build_feature_cache
from gfcore.train import load_config, train
from gfcore.train.data import StepBatcher, build_dataset
from gfcore.train.teachers import VGGTFeatureTeacher, build_teacher
from trainer_helpers import one_torch_thread, tiny_data_root, tiny_overrides  # noqa: F401  (fixtures)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory, tiny_data_root):  # noqa: F811
    """Features of a random-weight small VGGT (two layers) on the tiny clips, on the 4 x 4 model grid."""
    torch.manual_seed(0)
    model = VGGT(**{**small_config(), "enable_camera": False, "enable_depth": False, "enable_point": False})
    teacher = VGGTTeacher(model=model, layers=(0, 1), dtype=torch.float32, image_size=28, frames_per_call=8)
    cfg = load_config(tiny_overrides(tiny_data_root, "unused"))
    out = tmp_path_factory.mktemp("vggt_cache")
    build_feature_cache(teacher, build_dataset(cfg.data, with_depth=False), out, grid=(4, 4))
    return str(out)


def test_cached_features_follow_the_batch_windows(cache_dir, tiny_data_root):  # noqa: F811
    cfg = load_config(tiny_overrides(tiny_data_root, "unused", "teacher=vggt", f"teacher.cache={cache_dir}"))
    teacher = build_teacher(cfg.teacher, (4, 4))
    assert isinstance(teacher, VGGTFeatureTeacher) and teacher.num_layers == 2
    batcher = StepBatcher(build_dataset(cfg.data, with_depth=False), 4, 2, seed=0, camera=True)
    batch = batcher.batch(3)
    feats = teacher(batch)
    cache = FeatureCache(cache_dir)
    assert feats.shape == (2, 4, 16, 2, cache.feature_dim)
    for b, (key, indices) in enumerate(zip(batch["key"], batch["frame_indices"])):
        stored = torch.from_numpy(cache[key][indices.numpy()].astype("float32"))  # [t, L, h, w, C]
        expected = stored.permute(0, 2, 3, 1, 4).reshape(4, 16, 2, -1)
        torch.testing.assert_close(feats[b], expected)


def test_training_with_the_vggt_cache(tmp_path, cache_dir, tiny_data_root):  # noqa: F811
    out = str(tmp_path / "run")
    summary = train(load_config(tiny_overrides(tiny_data_root, out, "teacher=vggt", f"teacher.cache={cache_dir}",
                                               "train.steps=2")))
    assert summary["teacher"] == "VGGT teacher" and "cosine" in summary["final"]
    state = read_checkpoint(os.path.join(out, "final.pt"))
    assert state["teacher"] == "VGGT teacher"


def test_vggt_teacher_needs_a_source_and_a_matching_grid(tiny_data_root, cache_dir):  # noqa: F811
    cfg = load_config(tiny_overrides(tiny_data_root, "unused", "teacher=vggt"))
    with pytest.raises(ValueError, match="teacher.checkpoint"):
        build_teacher(cfg.teacher, (4, 4))
    with pytest.raises(ValueError, match="grid"):
        VGGTFeatureTeacher((8, 8), cache=cache_dir)


def test_live_vggt_teacher_from_a_checkpoint(tmp_path):
    """teacher.checkpoint: a frozen VGGT run on the batch; targets = its features on the model grid."""
    torch.manual_seed(0)
    config = {**small_config(), "enable_camera": False, "enable_depth": False, "enable_point": False}
    reference = VGGTTeacher(model=VGGT(**config), layers=(-1,), dtype=torch.float32, image_size=28)
    save_state_dict(reference.vggt, tmp_path / "vggt_small.pt")
    teacher = VGGTFeatureTeacher((2, 3), checkpoint=str(tmp_path / "vggt_small.pt"), dtype="float32",
                                 config=small_config(), image_size=28)
    frames = torch.rand(2, 3, 3, 8, 12) * 2 - 1
    feats = teacher({"frames": frames})
    expected = reference((frames + 1) / 2, grid=(2, 3))[:, :, 0].reshape(2, 3, 6, -1)
    assert feats.shape == (2, 3, 6, teacher.feature_dim)
    torch.testing.assert_close(feats, expected)


def test_cached_targets_are_read_on_the_prefetch_threads_with_the_same_values(tmp_path, cache_dir, tiny_data_root,  # noqa: F811
                                                                             monkeypatch):
    """With prefetching, the feature cache is read ahead on the batch threads (not in the step);
    losses and weights are bit-identical to a run that reads it in the step."""
    import json
    import threading

    from gfcore.train.teachers import TeacherTargets

    threads = []
    original = TeacherTargets.forward
    monkeypatch.setattr(TeacherTargets, "forward",
                        lambda self, batch: threads.append(threading.current_thread().name) or original(self, batch))
    runs = {}
    for depth in (0, 2):
        threads.clear()
        out = str(tmp_path / f"prefetch{depth}")
        train(load_config(tiny_overrides(tiny_data_root, out, "teacher=vggt", f"teacher.cache={cache_dir}",
                                         "train.steps=3", "train.log_every=1", f"data.prefetch_steps={depth}")))
        on_batch_threads = [name.startswith("gfcore-batches") for name in threads]
        assert len(threads) == 3 and all(on_batch_threads) == (depth > 0) and any(on_batch_threads) == (depth > 0)
        with open(os.path.join(out, "log.jsonl")) as handle:
            records = [r for r in map(json.loads, handle) if "event" not in r]
        runs[depth] = ([(r["loss"], r["angular"], r["scale"], r["cosine"]) for r in records],
                       read_checkpoint(os.path.join(out, "final.pt"))["model"])
    assert len(runs[0][0]) == 3 and runs[0][0] == runs[2][0]
    for key, value in runs[0][1].items():
        assert torch.equal(value, runs[2][1][key]), key
