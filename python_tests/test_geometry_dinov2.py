"""DINOv2 teacher: official key names, key-exact loading, an independent forward, the teacher protocol,
teacher=dinov2 training (live and from a feature cache) and caches of any teacher."""
import json
import math
import os

import pytest
import torch
import torch.nn.functional as F

from gfcore.geometry import (CheckpointError, DINOv2Teacher, DINOv2ViT, FeatureTeacher, VGGTTeacher,
                             check_teacher, dinov2_config, official_state_dict_shapes, save_state_dict,
                             teacher_features)
from gfcore.geometry.cache import FeatureCache, build_feature_cache
from gfcore.train import load_config, train
from gfcore.train.data import StepBatcher, build_dataset
from gfcore.train.teachers import PointmapTeacher, TeacherTargets, build_teacher
from trainer_helpers import one_torch_thread, tiny_data_root, tiny_overrides  # noqa: F401  (fixtures)

SMALL = dict(img_size=56, embed_dim=32, depth=3, num_heads=2)  # a 4 x 4 position table


def small_vit(seed=0, registers=0):
    torch.manual_seed(seed)
    model = DINOv2ViT(**dinov2_config("dinov2_vits14", **SMALL, num_register_tokens=registers))
    with torch.no_grad():  # non-trivial values everywhere (LayerScale 1.0 by default, registers ~0)
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


def test_vitb14_keys_and_shapes_match_the_official_checkpoint():
    """The official dinov2_vitb14(_reg) backbone state_dict, written down from its known structure."""
    d, h = 768, 3072
    block = {"norm1.weight": (d,), "norm1.bias": (d,), "attn.qkv.weight": (3 * d, d), "attn.qkv.bias": (3 * d,),
             "attn.proj.weight": (d, d), "attn.proj.bias": (d,), "ls1.gamma": (d,), "norm2.weight": (d,),
             "norm2.bias": (d,), "mlp.fc1.weight": (h, d), "mlp.fc1.bias": (h,), "mlp.fc2.weight": (d, h),
             "mlp.fc2.bias": (d,), "ls2.gamma": (d,)}
    official = {"cls_token": (1, 1, d), "pos_embed": (1, 1370, d), "mask_token": (1, d),
                "patch_embed.proj.weight": (d, 3, 14, 14), "patch_embed.proj.bias": (d,),
                "norm.weight": (d,), "norm.bias": (d,)}
    official.update({f"blocks.{n}.{k}": v for n in range(12) for k, v in block.items()})
    for variant, extra in (("dinov2_vitb14", {}), ("dinov2_vitb14_reg", {"register_tokens": (1, 4, d)})):
        with torch.device("meta"):
            model = DINOv2ViT(**dinov2_config(variant))
        ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        assert ours == {**official, **extra}, variant
        assert len(ours) == 175 + len(extra)
        assert official_state_dict_shapes(num_register_tokens=len(extra) * 4) == ours
        assert sum(math.prod(s) for s in ours.values()) == 86_580_480 + len(extra) * 4 * d  # ViT-B/14: 86.6 M
    with pytest.raises(ValueError, match="SwiGLU"):
        dinov2_config("dinov2_vitg14")


def reference_dinov2(state, images, num_heads, registers, layers, patch=14, offset=0.1):
    """DINOv2's forward written out from the official code on raw state_dict tensors (float64):
    patchify, cls, pos_embed interpolated with scale (g + 0.1) / M, registers after cls, blocks, norm."""
    sd = {k: v.double() for k, v in state.items()}
    x = F.conv2d(images.double(), sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=patch)
    n, dim, gh, gw = x.shape
    x = x.flatten(2).transpose(1, 2)
    x = torch.cat([sd["cls_token"].expand(n, -1, -1), x], 1)
    pos = sd["pos_embed"]
    side = int(math.sqrt(pos.shape[1] - 1))
    grid = F.interpolate(pos[:, 1:].reshape(1, side, side, dim).permute(0, 3, 1, 2), mode="bicubic",
                         scale_factor=((gh + offset) / side, (gw + offset) / side), antialias=False)
    x = x + torch.cat([pos[:, :1], grid.permute(0, 2, 3, 1).reshape(1, gh * gw, dim)], 1)
    if registers:
        x = torch.cat([x[:, :1], sd["register_tokens"].expand(n, -1, -1), x[:, 1:]], 1)
    out = {}
    for i in range(max(layers) + 1):
        b = f"blocks.{i}."
        y = F.layer_norm(x, (dim,), sd[b + "norm1.weight"], sd[b + "norm1.bias"], 1e-6)
        qkv = F.linear(y, sd[b + "attn.qkv.weight"], sd[b + "attn.qkv.bias"]).reshape(n, -1, 3, num_heads, dim // num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        attn = (q @ k.transpose(-1, -2) / math.sqrt(dim // num_heads)).softmax(-1) @ v
        y = F.linear(attn.transpose(1, 2).reshape(n, -1, dim), sd[b + "attn.proj.weight"], sd[b + "attn.proj.bias"])
        x = x + y * sd[b + "ls1.gamma"]
        y = F.layer_norm(x, (dim,), sd[b + "norm2.weight"], sd[b + "norm2.bias"], 1e-6)
        y = F.linear(F.gelu(F.linear(y, sd[b + "mlp.fc1.weight"], sd[b + "mlp.fc1.bias"])),
                     sd[b + "mlp.fc2.weight"], sd[b + "mlp.fc2.bias"])
        x = x + y * sd[b + "ls2.gamma"]
        out[i] = F.layer_norm(x, (dim,), sd["norm.weight"], sd["norm.bias"], 1e-6)[:, 1 + registers:]
    return [out[i].reshape(n, gh, gw, dim) for i in layers]


@pytest.mark.parametrize("registers", [0, 4])
def test_forward_matches_the_official_forward_written_out(registers):
    model = small_vit(registers=registers)
    images = torch.randn(2, 3, 42, 56)  # a 3 x 4 grid: the 4 x 4 table is interpolated
    ours = model.forward_layers(images, [0, -1])
    ref = reference_dinov2(model.state_dict(), images, 2, registers, [0, 2])
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a.double(), b, atol=1e-5, rtol=1e-5)
    feats = model.forward_features(images)
    torch.testing.assert_close(feats["x_norm_patchtokens"].double(), ref[1].reshape(2, 12, -1), atol=1e-5, rtol=1e-5)
    assert feats["x_norm_regtokens"].shape == (2, registers, 32)


def test_key_exact_loading_and_clear_errors(tmp_path):
    model = small_vit(seed=1)
    save_state_dict(model, tmp_path / "w.pt")
    save_state_dict(model, tmp_path / "w.safetensors")
    frames = torch.rand(1, 2, 3, 20, 24)
    reference = DINOv2Teacher(model=model, dtype=torch.float32, image_size=28)(frames)
    for name in ("w.pt", "w.safetensors"):
        loaded = DINOv2Teacher(tmp_path / name, variant="dinov2_vits14", config=SMALL, dtype=torch.float32,
                               image_size=28)
        assert torch.equal(loaded(frames), reference)
    state = model.state_dict()
    bad = {k: v for k, v in state.items() if k != "blocks.1.ls1.gamma"}
    bad["blocks.3.norm1.weight"] = torch.zeros(32)
    bad["head.weight"] = torch.zeros(2, 2)
    bad["pos_embed"] = torch.zeros(1, 10, 32)
    torch.save(bad, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError) as info:
        DINOv2Teacher(tmp_path / "bad.pt", variant="dinov2_vits14", config=SMALL)
    message = str(info.value)
    assert "missing keys (1): blocks.1.ls1.gamma" in message
    assert "unexpected keys (2): blocks.3.norm1.weight, head.weight" in message
    assert "shape mismatches (1): pos_embed (checkpoint [1, 10, 32], model [1, 17, 32])" in message
    torch.save({"backbone." + k: v for k, v in state.items()}, tmp_path / "train.pt")
    with pytest.raises(CheckpointError, match="backbone"):
        DINOv2Teacher(tmp_path / "train.pt", variant="dinov2_vits14", config=SMALL)


def test_teacher_protocol_layers_grid_chunks_and_preprocessing():
    model = small_vit()
    teacher = DINOv2Teacher(model=model, layers=(0, -1), dtype=torch.float32, image_size=42, frames_per_call=3)
    assert isinstance(teacher, FeatureTeacher) and teacher.layers == [0, 2] and teacher.feature_dim == 32
    frames = torch.rand(2, 3, 3, 16, 20)
    feats = teacher_features(teacher, frames, grid=(2, 5))
    assert feats.shape == (2, 3, 2, 2, 5, 32) and feats.dtype == torch.float32
    native = teacher(frames)  # the ViT's own 3 x 3 grid
    assert native.shape == (2, 3, 2, 3, 3, 32)
    # each frame is encoded on its own: chunking and batch composition change nothing
    one_call = DINOv2Teacher(model=model, layers=(0, -1), dtype=torch.float32, image_size=42, frames_per_call=64)
    torch.testing.assert_close(one_call(frames), native, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(teacher(frames[1:, 2:]), native[1:, 2:], atol=1e-6, rtol=1e-6)
    # preprocessing: bicubic resize (no antialias) then ImageNet normalisation, as REPA
    images = F.interpolate(frames.flatten(0, 1), size=(42, 42), mode="bicubic", align_corners=False)
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    images = (images - mean[:, None, None]) / std[:, None, None]
    expected = torch.stack(model.forward_layers(images, [0, 2]), 1).reshape(2, 3, 2, 3, 3, 32)
    torch.testing.assert_close(native, expected, atol=1e-5, rtol=1e-5)
    # norm=False: the raw residual stream of the block
    raw = DINOv2Teacher(model=model, layers=(-1,), norm=False, dtype=torch.float32, image_size=42)(frames)
    assert not torch.allclose(raw, native[:, :, 1:])
    with pytest.raises(ValueError, match="layers"):
        DINOv2Teacher(model=model, layers=(3,))
    with pytest.raises(ValueError, match="multiple of the patch size"):
        DINOv2Teacher(model=model, image_size=40)


def test_check_teacher_names_what_is_missing():
    with pytest.raises(TypeError, match="lacks .*feature_dim"):
        check_teacher(torch.nn.Identity())
    vggt = VGGTTeacher.__new__(VGGTTeacher)  # the class attributes of the protocol, without weights
    assert vggt.name == "vggt" and vggt.requires == ()
    assert PointmapTeacher((2, 2)).requires == ("depth", "intrinsics", "c2w")


@pytest.fixture(scope="module")
def dinov2_checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("dinov2") / "dinov2_small.pt"
    save_state_dict(small_vit(seed=3), path)
    return str(path)


def dinov2_overrides(checkpoint):
    return ["teacher=dinov2", f"teacher.checkpoint={checkpoint}", "teacher.variant=dinov2_vits14",
            "+teacher.dinov2_config={img_size: 56, embed_dim: 32, depth: 3, num_heads: 2}",
            "teacher.image_size=28", "teacher.dtype=float32", "teacher.layers=[1,-1]"]


def test_training_with_teacher_dinov2_live_and_from_its_cache(tmp_path, tiny_data_root, dinov2_checkpoint):  # noqa: F811
    """teacher=dinov2 (the REPA baseline): live features, and the same run from a cache the
    same teacher filled gives the same losses (float16 storage: close, not equal)."""
    overrides = dinov2_overrides(dinov2_checkpoint)
    cfg = load_config(tiny_overrides(tiny_data_root, str(tmp_path / "live"), *overrides, "train.steps=2"))
    targets = build_teacher(cfg.teacher, (4, 4))
    assert targets.name == "dinov2" and targets.num_layers == 2 and targets.feature_dim == 32
    live = train(cfg)
    assert live["teacher"] == "DINOv2 teacher" and "cosine" in live["final"]

    cache = tmp_path / "cache"
    build_feature_cache(targets.teacher, build_dataset(cfg.data, with_depth=False), cache, grid=(4, 4))
    index = json.loads((cache / "index.json").read_text())
    assert index["teacher"] == "dinov2" and index["layers"] == [1, 2] and index["teacher_info"]["image_size"] == 28
    cached_cfg = load_config(tiny_overrides(tiny_data_root, str(tmp_path / "cached"), "teacher=dinov2",
                                            f"teacher.cache={cache}", "train.steps=2"))
    batch = StepBatcher(build_dataset(cfg.data, with_depth=False), 4, 2, seed=0, camera=True).batch(1)
    torch.testing.assert_close(build_teacher(cached_cfg.teacher, (4, 4))(batch), targets(batch), atol=2e-3, rtol=2e-3)
    cached = train(cached_cfg)
    for key in ("loss", "diffusion", "alignment"):
        assert cached["final"][key] == pytest.approx(live["final"][key], rel=1e-3, abs=1e-4), key
    # a cache is used only by the teacher that filled it
    with pytest.raises(ValueError, match="holds dinov2 features"):
        build_teacher(load_config(tiny_overrides(tiny_data_root, "unused", "teacher=vggt",
                                                 f"teacher.cache={cache}")).teacher, (4, 4))


def test_dinov2_needs_a_source(tiny_data_root):  # noqa: F811
    cfg = load_config(tiny_overrides(tiny_data_root, "unused", "teacher=dinov2"))
    with pytest.raises(ValueError, match="teacher.checkpoint .*nothing is downloaded"):
        build_teacher(cfg.teacher, (4, 4))


def test_the_oracle_teacher_fills_a_cache_too(tmp_path, tiny_data_root):  # noqa: F811
    """Any protocol teacher fills a cache: the pointmap teacher takes depth and cameras from the items."""
    cfg = load_config(tiny_overrides(tiny_data_root, "unused"))
    dataset = build_dataset(cfg.data, with_depth=True)
    teacher = PointmapTeacher((4, 4), num_frequencies=1)
    build_feature_cache(teacher, dataset, tmp_path, grid=(4, 4))
    cache = FeatureCache(tmp_path)
    assert cache.teacher == "pointmap" and cache.feature_dim == 21
    item = dataset[0]
    direct = teacher(item["frames"][None], (4, 4), depth=item["depth"][None], intrinsics=item["intrinsics"][None],
                     c2w=item["c2w"][None])[0]
    torch.testing.assert_close(cache.features(item["key"]).float(), direct, atol=1e-2, rtol=1e-3)
    with pytest.raises(ValueError, match="needs \\['depth'"):
        build_feature_cache(teacher, [{"key": "a", "frames": item["frames"], "intrinsics": item["intrinsics"],
                                       "c2w": item["c2w"]}], tmp_path / "x", grid=(4, 4))
