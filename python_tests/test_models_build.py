"""gfcore.models.build: which backbone a model node builds, the checks on its GF and input fields
with their messages, the defaults a node may leave out, and dfot_frames."""
import re
from types import SimpleNamespace

import pytest
import torch

from gfcore.data.dfot_re10k import normalize
from gfcore.models.build import build_backbone, dfot_frames, latent_index, model_arch
from gfcore.models.dfot import UViT3DPose
from gfcore.models.dit import VideoDiT
from gfcore.sample.dfot_run import model_config

DIT = dict(image_size=[8, 8], hidden_dim=32, depth=2, num_heads=2, align_depth=1)


def tiny_dfot(**changes) -> dict:
    node = model_config("dfot_tiny", 16, 4)
    node.update(changes)
    return node


def test_the_arch_picks_the_backbone_and_is_not_passed_on():
    assert type(build_backbone(DIT)) is VideoDiT  # no arch: gfcore's VideoDiT
    assert type(build_backbone({"arch": "dit", **DIT})) is VideoDiT  # VideoDiT's config has no arch field
    assert type(build_backbone(tiny_dfot())) is UViT3DPose
    with pytest.raises(ValueError, match=re.escape("model.arch must be one of ('dit', 'dfot'), got 'unet'")):
        model_arch({"arch": "unet"})


def test_input_norm_defaults_to_dfot_and_is_checked():
    node = tiny_dfot()
    del node["input_norm"]
    assert type(build_backbone(node)) is UViT3DPose  # absent: DFoT's normalisation, accepted
    assert type(build_backbone(tiny_dfot(input_norm="none"))) is UViT3DPose
    with pytest.raises(ValueError, match=re.escape("model.input_norm must be one of ('dfot', 'none'), got 'imagenet'")):
        build_backbone(tiny_dfot(input_norm="imagenet"))


def test_latent_index_defaults_to_the_papers_level_2_down_and_names_bad_choices():
    model = SimpleNamespace(num_levels=4)  # 3 down levels (0-2), the middle (3), 3 up levels
    assert latent_index(model, {}) == 2
    assert [latent_index(model, {"align_level": lv, "align_path": "up"}) for lv in (2, 1, 0)] == [4, 5, 6]
    assert latent_index(model, {"align_level": 3, "align_path": "mid"}) == 3
    with pytest.raises(ValueError, match=re.escape("model.align_path must be one of ('down', 'mid', 'up'), got "
                                                   "'side'")):
        latent_index(model, {"align_path": "side"})
    with pytest.raises(ValueError, match=re.escape("model.align_path=mid is level 3 (the last of 4), got "
                                                   "align_level=2")):
        latent_index(model, {"align_path": "mid"})
    with pytest.raises(ValueError, match=re.escape("model.align_level=3 with align_path=down: the model's down "
                                                   "levels are 0..2 (level 3 is the middle: align_path=mid)")):
        latent_index(model, {"align_level": 3})


def test_dfot_frames_normalises_as_dfot_unless_told_not_to():
    frames = torch.rand(2, 3, 3, 4, 4) * 2 - 1
    torch.testing.assert_close(dfot_frames(frames), normalize((frames + 1) / 2), rtol=0, atol=0)
    assert dfot_frames(frames, "none") is frames
    assert not torch.equal(dfot_frames(frames, "dfot"), frames)
    with pytest.raises(ValueError, match=re.escape("input_norm must be one of ('dfot', 'none'), got 'imagenet'")):
        dfot_frames(frames, "imagenet")
