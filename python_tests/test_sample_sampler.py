"""Euler / Heun integration against exact ODE solutions, sliding-window rollouts, revisit paths."""
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from gfcore.models import build_model
from gfcore.sample import denoise_window, revisit_path, rollout
from trainer_helpers import one_torch_thread  # noqa: F401  (autouse fixture)


class FieldModel(torch.nn.Module):
    """A stand-in network with an analytic velocity field; records what it is called with."""

    def __init__(self, field, camera=False):
        super().__init__()
        self.field = field
        self.config = SimpleNamespace(camera_cond=camera)
        self.calls = []

    def forward(self, x, t, rays=None, actions=None, drop_cond=None):
        self.calls.append({"x": x.clone(), "t": t.clone(), "rays": rays})
        return self.field(x, t), None


def test_euler_and_heun_recover_a_point_mass_exactly():
    """Data = one point c: v(x, t) = (x - c) / t is exact, and both solvers land on c from any noise."""
    c = torch.randn(1, 1, 3, 4, 4)
    model = FieldModel(lambda x, t: (x - c) / t[:, :, None, None, None].clamp_min(1e-12))
    context = torch.randn(2, 2, 3, 4, 4)
    for method in ("euler", "heun"):
        out = denoise_window(model, context, 3, steps=5, method=method, generator=torch.Generator().manual_seed(0))
        torch.testing.assert_close(out, c.expand(2, 3, -1, -1, -1), atol=1e-5, rtol=1e-5)
    # context frames are passed clean (t = 0) and unchanged on every call
    for call in model.calls:
        assert torch.equal(call["x"][:, :2], context) and (call["t"][:, :2] == 0).all() and (call["t"][:, 2:] > 0).all()


def test_heun_is_second_order_on_a_linear_field():
    """dx/dt = a x from t = 1 to 0 gives x(0) = x(1) exp(-a); Heun's error falls ~4x per step doubling."""
    a = 1.5
    model = FieldModel(lambda x, t: a * x)
    context = torch.zeros(1, 1, 1, 1, 1)
    errors = {}
    for method in ("euler", "heun"):
        for steps in (8, 16):
            gen = torch.Generator().manual_seed(0)
            x1 = torch.randn((1, 1, 1, 1, 1), generator=torch.Generator().manual_seed(0))
            out = denoise_window(model, context, 1, steps=steps, method=method, generator=gen)
            errors[method, steps] = float((out - x1 * math.exp(-a)).abs())
    assert errors["heun", 8] < errors["euler", 8] / 3
    # Heun's last step to t = 0 is Euler, so allow a little less than the ideal 4x
    assert errors["heun", 8] / errors["heun", 16] > 2.5
    assert 1.7 < errors["euler", 8] / errors["euler", 16] < 2.3


def _tiny_camera_model():
    torch.manual_seed(0)
    model = build_model(dict(image_size=[8, 8], hidden_dim=32, depth=2, num_heads=2, align_depth=1))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "modulation" in name or name.startswith("out."):
                p.normal_(0, 0.05)
    return model.eval()


def _path(B, N):
    K = torch.tensor([[8.0, 0, 4], [0, 8.0, 4], [0, 0, 1]]).expand(B, N, 3, 3)
    c2w = revisit_path(N).float().expand(B, N, 4, 4).clone()
    c2w[..., 2, 3] = torch.linspace(0, 1, N)  # and a forward walk, so the moments change too
    return K, c2w


def test_rollout_shapes_windows_and_determinism():
    model = _tiny_camera_model()
    first = torch.rand(2, 2, 3, 8, 8) * 2 - 1
    K, c2w = _path(2, 13)
    kwargs = dict(window=5, context_frames=2, steps=2, method="euler", intrinsics=K, c2w=c2w)
    a = rollout(model, first, 13, generator=torch.Generator().manual_seed(1), **kwargs)
    b = rollout(model, first, 13, generator=torch.Generator().manual_seed(1), **kwargs)
    c = rollout(model, first, 13, generator=torch.Generator().manual_seed(2), **kwargs)
    assert a.shape == (2, 13, 3, 8, 8)
    assert torch.equal(a, b) and not torch.equal(a[:, 2:], c[:, 2:])
    assert torch.equal(a[:, :2], first) and a.abs().max() <= 1


def test_rollout_slides_the_window_with_relative_poses():
    spy = FieldModel(lambda x, t: torch.zeros_like(x), camera=True)
    K, c2w = _path(1, 10)
    rollout(spy, torch.zeros(1, 1, 3, 8, 8), 10, window=4, context_frames=2, steps=1, method="euler",
            intrinsics=K, c2w=c2w)
    lengths = [call["x"].shape[1] for call in spy.calls]
    assert lengths == [4, 4, 4, 4]  # 1 given + 3 new, then 2 context + 2 new (x2), then 2 + 1
    # every window's rays are relative to its own first frame: frame 0 of a window has origin 0 (moment 0)
    for call in spy.calls:
        assert call["rays"][:, 0, 3:].abs().max() < 1e-5


def test_rollout_input_errors():
    model = _tiny_camera_model()
    first = torch.zeros(1, 2, 3, 8, 8)
    with pytest.raises(ValueError, match="intrinsics"):
        rollout(model, first, 6, window=4)
    K, c2w = _path(1, 5)
    with pytest.raises(ValueError, match="c2w must be"):
        rollout(model, first, 6, window=4, intrinsics=_path(1, 6)[0], c2w=c2w)
    with pytest.raises(ValueError, match="window"):
        rollout(model, torch.zeros(1, 4, 3, 8, 8), 6, window=4, intrinsics=K, c2w=c2w)
    with pytest.raises(ValueError, match="method"):
        denoise_window(model, first, 1, method="rk4")


def test_revisit_path_turns_once_and_returns():
    c2w = revisit_path(9)
    torch.testing.assert_close(c2w[0], c2w[-1], atol=1e-12, rtol=0)
    R = c2w[:, :3, :3]
    torch.testing.assert_close(R @ R.transpose(1, 2), torch.eye(3, dtype=R.dtype).expand(9, 3, 3))
    forward = R[:, :, 2]  # the viewing direction sweeps the horizontal circle in equal steps
    angles = torch.atan2(forward[:, 0], forward[:, 2])
    torch.testing.assert_close(angles[2] - angles[1], torch.tensor(math.pi / 4, dtype=R.dtype))
    assert (c2w[:, :3, 3] == 0).all() and (R[:, 1, 1] == 1).all()
    assert c2w.dtype == torch.float64  # poses are composed in float64 (relative_to_first, rays)


class GuidedModel(torch.nn.Module):
    """Constant velocities: `cond` with the condition, `uncond` when drop_cond drops it; records its calls."""

    def __init__(self, cond: float, uncond: float):
        super().__init__()
        self.cond, self.uncond = cond, uncond
        self.config = SimpleNamespace(camera_cond=False)
        self.calls = []

    def forward(self, x, t, rays=None, actions=None, drop_cond=None):
        self.calls.append(dict(x=x, t=t, rays=rays, actions=actions, drop_cond=drop_cond))
        value = self.cond if drop_cond is None else self.uncond
        return torch.full_like(x, value), None


@pytest.mark.parametrize("scale", [1.0, 3.0, 0.25])
@pytest.mark.parametrize("method", ["euler", "heun"])
def test_classifier_free_guidance_extrapolates_away_from_the_unconditional(scale, method):
    """Guided velocity v_u + s (v_c - v_u) (Ho & Salimans). With constant velocities the ODE from
    t = 1 to 0 moves the noise by -v exactly: x0 = eps - (v_u + s (v_c - v_u)), for Euler and Heun."""
    v_c, v_u = 1.0, -0.25
    guided = v_u + scale * (v_c - v_u)  # s = 3: 3.5; s = 0.25: 0.0625; s = 1: v_c
    context = torch.zeros(2, 1, 3, 4, 4)
    rays, actions = torch.randn(2, 3, 6, 4, 4), torch.randn(2, 3, 5)
    model = GuidedModel(v_c, v_u)
    out = denoise_window(model, context, 2, steps=4, method=method, rays=rays, actions=actions,
                         generator=torch.Generator().manual_seed(3), guidance_scale=scale)
    eps = torch.randn((2, 2, 3, 4, 4), generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(out, eps - guided, atol=1e-6, rtol=0)
    # both passes see the same x, t, rays and actions; the unconditional one drops every clip's condition
    calls = model.calls
    assert len(calls) == (1 if scale == 1.0 else 2) * (4 if method == "euler" else 7)
    for call in calls:
        assert call["rays"] is rays and call["actions"] is actions and call["t"].dtype == torch.float32
    if scale != 1.0:
        for cond, uncond in zip(calls[::2], calls[1::2]):
            assert cond["drop_cond"] is None
            assert uncond["drop_cond"].dtype == torch.bool and uncond["drop_cond"].tolist() == [True, True]
            assert torch.equal(cond["x"], uncond["x"]) and torch.equal(cond["t"], uncond["t"])


def test_noise_levels_are_float32_whatever_the_default_dtype():
    model = FieldModel(lambda x, t: torch.zeros_like(x))
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        denoise_window(model, torch.zeros(1, 1, 1, 2, 2), 1, steps=2, method="euler")
    finally:
        torch.set_default_dtype(previous)
    assert all(call["t"].dtype == torch.float32 for call in model.calls)
    assert model.calls[0]["t"].tolist() == [[0.0, 1.0]] and model.calls[1]["t"].tolist() == [[0.0, 0.5]]


def test_to_uint8_by_hand():
    """[T, C, H, W] in [-1, 1] -> uint8 [T, H, W, C]: round((clamp(v) + 1) * 127.5)."""
    from gfcore.sample.sampler import to_uint8

    values = torch.tensor([-1.5, -1.0, -0.5, 0.0, 0.2, 0.999, 1.0, 3.0])
    video = torch.zeros(2, 3, 1, 8)
    video[1, 2, 0] = values
    out = to_uint8(video)
    assert out.dtype == np.uint8 and out.shape == (2, 1, 8, 3)
    # by hand: 0, 0, 63.75 -> 64, 127.5 -> 128 (half to even), 153, 254.87 -> 255, 255, 255
    assert out[1, 0, :, 2].tolist() == [0, 0, 64, 128, 153, 255, 255, 255]
    assert (out[0] == 128).all() and (out[1, :, :, :2] == 128).all()
