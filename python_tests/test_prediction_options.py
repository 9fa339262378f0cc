"""Model parameterisations (v, x0, x0_residual), the sampled-task noise draw, the x0 loss, and
one-line config errors."""
import numpy as np
import pytest
import torch

from conftest import rel_err
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


def test_last_clean_frame_single_clean_frame_and_one_frame_clips():
    """One clean leading frame is an anchor too (count 1), and a one-frame noisy clip gives zeros
    (index clamped to the only frame, masked out)."""
    x = torch.randn(2, 3, 3, 4, 4)
    t = torch.tensor([[0.0, 0.5, 0.0], [0.3, 0.0, 0.0]])  # clip 0: run of 1; clip 1: starts noisy
    anchor = last_clean_frame(x, t)
    assert torch.equal(anchor[0], x[0, 0]) and torch.equal(anchor[1], torch.zeros_like(x[1, 0]))
    one = last_clean_frame(x[:, :1], torch.tensor([[0.7], [0.0]]))
    assert torch.equal(one[0], torch.zeros_like(x[0, 0])) and torch.equal(one[1], x[1, 0])


def test_x0_from_v_by_hand():
    """x0 = x_t - t v; the t >= PREDICTION_T_MIN (1e-3) floor only for x0 / x0_residual, not for
    v (the default). float64 by hand; bf16 inputs give a bf16 estimate."""
    x_t, v = torch.randn(1, 3, 2, 2, 2, dtype=torch.float64), torch.randn(1, 3, 2, 2, 2, dtype=torch.float64)
    t = torch.tensor([[0.0, 1e-4, 0.5]])
    plain = x_t - t.double()[:, :, None, None, None] * v
    floored = x_t - t.double().clamp_min(1e-3)[:, :, None, None, None] * v
    torch.testing.assert_close(x0_from_v(x_t, t, v), plain, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(x0_from_v(x_t, t, v, "v"), plain, rtol=1e-12, atol=1e-12)
    for prediction in ("x0", "x0_residual"):
        torch.testing.assert_close(x0_from_v(x_t, t, v, prediction), floored, rtol=1e-12, atol=1e-12)
    assert (plain - floored).abs().max() > 1e-4  # the floor matters at t = 0 and 1e-4
    got = x0_from_v(x_t.bfloat16(), t, v.bfloat16())
    assert got.dtype == torch.bfloat16
    # bf16 rounding of x_t, t, v and t v: a few 2^-8 relative of |x_t| + |v|
    assert ((got.double() - plain).abs() <= 4 * 2.0**-8 * (x_t.abs() + v.abs())).all()


def _twins(prediction, dtype=torch.float32):
    """A model predicting `prediction` and a "v" model with the same weights, whose v is the raw
    network output."""
    torch.manual_seed(0)
    model = build_model(dict(image_size=[16, 16], hidden_dim=32, depth=1, num_heads=2, align_depth=1,
                             prediction=prediction))
    for p in model.parameters():
        p.data.add_(0.05 * torch.randn_like(p))
    raw = build_model(dict(image_size=[16, 16], hidden_dim=32, depth=1, num_heads=2, align_depth=1))
    raw.load_state_dict(model.state_dict())
    return model.to(dtype), raw.to(dtype)


@pytest.mark.parametrize("prediction", ["x0", "x0_residual"])
def test_x0_predictions_convert_the_raw_output_by_hand(prediction):
    """x0: x0_hat = out; x0_residual: x0_hat = out + last clean frame (clip 0: frame 1, clip 1:
    none, so 0); v = (x_t - x0_hat) / max(t, 1e-3), and v = 0 on clean frames."""
    model, raw = _twins(prediction)
    x, t, rays = _inputs()
    t[1, 3] = 1e-4  # below the floor
    out = raw(x, t, rays=rays)[0].double()
    anchor = torch.zeros_like(x, dtype=torch.float64)
    if prediction == "x0_residual":
        anchor[0] = x[0, 1].double()
    tt = t.double()[:, :, None, None, None]
    expected = ((x.double() - out - anchor) / tt.clamp_min(1e-3)).masked_fill(tt == 0, 0.0)
    got = model(x, t, rays=rays)[0]
    assert rel_err(got, expected) < 1e-5 and expected.abs().max() > 1.0


def test_bf16_model_returns_bf16_v_for_every_prediction():
    """A bf16 model returns v in bf16 whatever it predicts (t, given in float32, is converted to
    the output's dtype), close to the float32 model's v."""
    x, t, rays = _inputs()
    for prediction in ("v", "x0", "x0_residual"):
        model, _ = _twins(prediction)
        ref = model(x, t, rays=rays)[0]
        got = model.to(torch.bfloat16)(x.bfloat16(), t, rays=rays.bfloat16())[0]
        assert got.dtype == torch.bfloat16, prediction
        # bf16 weights, activations and t (8 mantissa bits, ~0.4 % per rounding): measured 0.4 to 0.6 %
        assert rel_err(got, ref) < 0.02, prediction
