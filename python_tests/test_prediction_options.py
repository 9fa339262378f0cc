"""Model parameterisations (v, x0, x0_residual), the sampled-task noise draw, the x0 loss, and
one-line config errors."""
import numpy as np
import pytest
import torch

from gfcore.metrics.clips import list_clips
from gfcore.models.dit import build_model, last_clean_frame, x0_from_v
from gfcore.train.config import ConfigError, load_config
from gfcore.train.objective import GFObjective, draw_noise, noisy_input


def _inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 4, 3, 16, 16, generator=g)
    t = torch.rand(2, 4, generator=g)
    t[0, :2] = 0.0  # clip 0: two clean context frames; clip 1: none
    return x, t, torch.randn(2, 4, 6, 16, 16, generator=g)


def test_last_clean_frame():
    x, t, _ = _inputs()
    anchor = last_clean_frame(x, t)
    assert torch.equal(anchor[0], x[0, 1]) and torch.equal(anchor[1], torch.zeros_like(x[1, 0]))


@pytest.mark.parametrize("prediction", ["v", "x0", "x0_residual"])
def test_prediction_returns_v_and_x0_inverts(prediction):
    torch.manual_seed(0)
    model = build_model(dict(image_size=[16, 16], prediction=prediction))
    for p in model.parameters():  # leave the zero init so that the output depends on the input
        p.data.add_(0.02 * torch.randn_like(p))
    x, t, rays = _inputs()
    v, hidden = model(x, t, rays=rays)
    assert v.shape == x.shape and hidden is not None
    x0 = x0_from_v(x, t, v, prediction)
    if prediction != "v":
        assert torch.allclose(x0[0, :2], x[0, :2])  # clean frames come back unchanged (v = 0 there)
        out = x0 - (last_clean_frame(x, t)[:, None] if prediction == "x0_residual" else 0)
        assert torch.isfinite(out).all()


def test_residual_starts_by_repeating_the_last_context_frame():
    model = build_model(dict(image_size=[16, 16], prediction="x0_residual"))  # zero-initialised output
    x, t, rays = _inputs()
    x0 = x0_from_v(x, t, model(x, t, rays=rays)[0], "x0_residual")
    assert torch.allclose(x0[0, 2:], x[0, 1:2].expand(2, -1, -1, -1), atol=1e-5)


def test_sampled_task_noise_and_default_unchanged():
    shape = (3, 6, 3, 4, 4)
    a = draw_noise(shape, torch.Generator().manual_seed(1))
    b = draw_noise(shape, torch.Generator().manual_seed(1), mode="independent", t_shift=1.0)
    assert torch.equal(a.t, b.t) and torch.equal(a.eps, b.eps) and torch.equal(a.context, b.context)
    n = draw_noise(shape, torch.Generator().manual_seed(1), max_context=2, mode="sampled_task", t_shift=3.0)
    assert n.context[:, :2].all() and not n.context[:, 2:].any()
    assert (n.t[:, :2] == 0).all() and (n.t[:, 2:] == n.t[:, 2:3]).all()
    shifted = draw_noise((4000, 3, 1, 1, 1), torch.Generator().manual_seed(2), max_context=1, mode="sampled_task",
                         t_shift=3.0).t[:, 1]
    assert 0.6 < float(shifted.mean()) < 0.8  # E[3u / (1 + 2u)] ~ 0.68
    with pytest.raises(ValueError, match="noise mode"):
        draw_noise(shape, torch.Generator(), mode="bogus")


def test_x0_loss_space():
    model = build_model(dict(image_size=[16, 16], prediction="x0_residual"))
    x, t, rays = _inputs()
    noise = draw_noise(x.shape, torch.Generator().manual_seed(3), mode="sampled_task")
    terms = GFObjective(loss_space="x0")(model, {"frames": x, "rays": rays}, noise)
    # zero-initialised residual model: x0_hat repeats frame 1, so the loss is that error on frames 2..
    expected = (x[:, 2:] - x[:, 1:2]).pow(2).mean()
    assert torch.allclose(terms["diffusion"], expected, rtol=1e-4)
    assert torch.isfinite(noisy_input(x, noise.t, noise.eps)).all()
    with pytest.raises(ValueError, match="loss_space"):
        GFObjective(loss_space="eps")


@pytest.mark.parametrize("override,expected", [
    ("experiment=dem", "no config experiment=dem; nearest: demo"),
    ("train.stepz=5", "unknown config key 'train.stepz'; nearest: train.steps"),
    ("model=tinyy", "nearest: tiny"),
])
def test_config_typos_name_the_key(override, expected):
    with pytest.raises(ConfigError) as info:
        load_config([override])
    assert expected in str(info.value) and "\n" not in str(info.value)


def test_cli_config_typo_is_one_line(capsys):
    from gfcore.cli import main

    assert main(["train", "train.stepz=5"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "train.stepz" in err and "train.steps" in err


def test_list_clips_skips_dataset_geometry(tmp_path):
    np.save(tmp_path / "a.npy", np.zeros((2, 4, 4, 3), np.uint8))
    np.savez(tmp_path / "a.depth.npz", depth=np.zeros((2, 4, 4)))
    assert list(list_clips(tmp_path)) == ["a"]


def test_texture_detail_keeps_scene_and_path(tmp_path):
    from gfcore.data.synthetic.generate import generate, generate_clip

    a, b = generate_clip(0, 1, 3, 16), generate_clip(0, 1, 3, 16, texture_detail=0.5)
    assert np.array_equal(a["depth"], b["depth"]) and np.array_equal(a["c2w"], b["c2w"])
    assert not np.array_equal(a["frames"], b["frames"])
    generate(tmp_path, 1, 2, 16, texture_detail=0.5)
    import json

    assert json.loads((tmp_path / "train" / "generator.json").read_text())["texture_detail"] == 0.5
