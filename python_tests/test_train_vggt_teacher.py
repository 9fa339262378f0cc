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


def _small_vggt_checkpoint(path):
    """A random small VGGT (weights perturbed away from their init, so every layer counts)."""
    torch.manual_seed(0)
    model = VGGT(**{**small_config(), "enable_camera": False, "enable_depth": False, "enable_point": False})
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    save_state_dict(model, path)
    return str(path)


def test_bf16_weights_give_the_autocast_features_of_the_fp32_weights(tmp_path, tiny_data_root):  # noqa: F811
    """teacher.weights_dtype=auto with teacher.dtype=bfloat16: the linear / conv weights are held in
    bf16 (half the bytes), the rest (norms, LayerScale, tokens, position table) in fp32. The
    features equal those of the fp32 weights under bf16 autocast exactly (tolerance 0): autocast
    rounds each fp32 weight to bf16 at the call as .to(bfloat16) did once, so the kernels see the
    same operands, and the residual stream stays fp32. Holding every parameter in bf16 instead
    (the residual stream then bf16) moves them by ~1e-2 on features of size ~1 (measured 0.067
    max on values up to 3.7), which this would catch."""
    checkpoint = _small_vggt_checkpoint(tmp_path / "vggt_small.pt")
    base = ["teacher=vggt", f"teacher.checkpoint={checkpoint}", "teacher.image_size=28", "teacher.layers=[0,-1]"]
    teachers = {}
    for weights in ("auto", "bf16", "fp32"):
        cfg = load_config(tiny_overrides(tiny_data_root, "unused", *base, f"teacher.weights_dtype={weights}"))
        cfg.teacher.vggt_config = small_config()
        teachers[weights] = build_teacher(cfg.teacher, (4, 4), "cpu")
    for weights in ("auto", "bf16"):
        vggt = teachers[weights].teacher.vggt
        for module in vggt.modules():
            for name, p in module.named_parameters(recurse=False):
                matmul = isinstance(module, (torch.nn.Linear, torch.nn.Conv2d))
                assert p.dtype == (torch.bfloat16 if matmul else torch.float32), (type(module).__name__, name)
        total = sum(p.numel() * p.element_size() for p in vggt.parameters())
        full = sum(p.numel() * 4 for p in vggt.parameters())
        assert total < 0.53 * full  # 0.524 here (the 518 px position table stays fp32); VGGT-1B: 0.501
    assert {p.dtype for p in teachers["fp32"].teacher.vggt.parameters()} == {torch.float32}
    frames = torch.rand(2, 3, 3, 8, 12) * 2 - 1
    expected = teachers["fp32"]({"frames": frames})
    assert expected.abs().max() > 1 and expected.shape == (2, 3, 16, 2, teachers["fp32"].feature_dim)
    for weights in ("auto", "bf16"):
        assert torch.equal(teachers[weights]({"frames": frames}), expected), weights


def test_weights_dtype_values_are_checked(tiny_data_root):  # noqa: F811
    from gfcore.train.teachers import teacher_weights_dtype

    def resolve(*extra):
        return teacher_weights_dtype(load_config(tiny_overrides(tiny_data_root, "unused", "teacher=vggt",
                                                                *extra)).teacher)

    assert resolve() == torch.bfloat16  # auto, teacher.dtype=bfloat16
    assert resolve("teacher.dtype=float32") == resolve("teacher.dtype=float16") == torch.float32
    assert resolve("teacher.weights_dtype=fp32") == torch.float32
    with pytest.raises(ValueError, match=r"^teacher.weights_dtype must be auto, fp32 or bf16, got 'fp16'$"):
        resolve("teacher.weights_dtype=fp16")
    with pytest.raises(ValueError, match=r"^teacher.weights_dtype=bf16 needs teacher.dtype=bfloat16"):
        resolve("teacher.weights_dtype=bf16", "teacher.dtype=float32")


def test_with_a_cache_the_vggt_is_never_built(tmp_path, cache_dir, tiny_data_root, monkeypatch):  # noqa: F811
    """teacher.cache serves the targets: even with a checkpoint given, no VGGT is built or loaded,
    so no teacher weights are allocated, on the device or anywhere (the targets module has no
    parameters at all), and a run trains from the cache alone."""
    import gfcore.geometry

    checkpoint = _small_vggt_checkpoint(tmp_path / "vggt_small.pt")

    def refuse(*args, **kwargs):
        raise AssertionError("a VGGT was built although the cache serves the run")

    monkeypatch.setattr(gfcore.geometry, "VGGTTeacher", refuse)
    monkeypatch.setattr(gfcore.geometry.model.VGGT, "__init__", refuse)
    overrides = ["teacher=vggt", f"teacher.cache={cache_dir}", f"teacher.checkpoint={checkpoint}"]
    teacher = build_teacher(load_config(tiny_overrides(tiny_data_root, "unused", *overrides)).teacher, (4, 4), "cpu")
    assert teacher.teacher is None and list(teacher.parameters()) == [] and list(teacher.buffers()) == []
    summary = train(load_config(tiny_overrides(tiny_data_root, str(tmp_path / "run"), *overrides, "train.steps=1")))
    assert summary["teacher"] == "VGGT teacher"
