"""History guidance (DFoT): the guidance formula against a hand computation with a stub model,
the noise levels of each branch, plain sampling where guidance is off, shapes and determinism."""
from types import SimpleNamespace

import pytest
import torch

from gfcore.models import build_model
from gfcore.sample import HistoryGuidance, denoise_window, revisit_path, rollout
from gfcore.train import load_config
from trainer_helpers import one_torch_thread  # noqa: F401  (autouse fixture)


class HistoryStub(torch.nn.Module):
    """v[:, j] = 0.5 x[:, j] + 2 * mean over history frames of (1 - t) x - t: depends on the history
    and on its noise level, elementwise over the batch; records every call."""

    def __init__(self, num_context):
        super().__init__()
        self.k = num_context
        self.config = SimpleNamespace(camera_cond=False)
        self.calls = []

    def forward(self, x, t, rays=None, actions=None, drop_cond=None):
        self.calls.append({"x": x.clone(), "t": t.clone()})
        tt = t[:, :self.k, None, None, None]
        summary = ((1 - tt) * x[:, :self.k] - tt).mean(1, keepdim=True)
        return 0.5 * x + 2.0 * summary, None


def stub_velocity(x, t, k):
    tt = t[:, :k, None, None, None]
    return 0.5 * x + 2.0 * ((1 - tt) * x[:, :k] - tt).mean(1, keepdim=True)


@pytest.mark.parametrize("c", [1, 2])  # c = 1: a single history frame is guided too
@pytest.mark.parametrize("mode,k_cond,k_uncond", [("vanilla", 0.0, 1.0), ("stabilized", 0.1, 1.0),
                                                  ("fractional", 0.0, 0.4)])
def test_guidance_formula_by_hand(mode, k_cond, k_uncond, c):
    """One Euler step from t = 1 to 0: x_0 = x_1 - v, with v = v_u + s (v_c - v_u) computed by hand
    from the noise the generator hands out in order: new frames, cond history (if noised), uncond history."""
    B, n, shape = 2, 3, (3, 4, 4)
    context = torch.randn(B, c, *shape)
    guidance = HistoryGuidance(mode=mode, scale=2.5, stabilization_level=0.1, fractional_level=0.4)
    model = HistoryStub(c)
    out = denoise_window(model, context, n, steps=1, method="euler", generator=torch.Generator().manual_seed(7),
                         history_guidance=guidance)

    gen = torch.Generator().manual_seed(7)
    x1 = torch.randn(B, n, *shape, generator=gen)
    eps_c = torch.randn(B, c, *shape, generator=gen) if k_cond > 0 else None
    eps_u = torch.randn(B, c, *shape, generator=gen)
    hist_c = context if eps_c is None else (1 - k_cond) * context + k_cond * eps_c
    hist_u = eps_u if k_uncond == 1.0 else (1 - k_uncond) * context + k_uncond * eps_u
    t = torch.ones(B, c + n)
    t_c, t_u = t.clone(), t.clone()
    t_c[:, :c], t_u[:, :c] = k_cond, k_uncond
    v_c = stub_velocity(torch.cat([hist_c, x1], 1), t_c, c)[:, c:]
    v_u = stub_velocity(torch.cat([hist_u, x1], 1), t_u, c)[:, c:]
    expected = x1 - (v_u + 2.5 * (v_c - v_u))
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=1e-6)
    # one batched call: conditional branch first, unconditional second, new frames at t = 1
    (call,) = model.calls
    torch.testing.assert_close(call["x"][:B, :c], hist_c)
    torch.testing.assert_close(call["x"][B:, :c], hist_u)
    assert (call["t"][:B, :c] == k_cond).all() and (call["t"][B:, :c] == k_uncond).all()
    assert (call["t"][:, c:] == 1).all()


def _tiny_camera_model():
    torch.manual_seed(0)
    model = build_model(dict(image_size=[8, 8], hidden_dim=32, depth=2, num_heads=2, align_depth=1))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "modulation" in name or name.startswith("out."):
                p.normal_(0, 0.05)
    return model.eval()


def _run(model, guidance, seed=1, method="heun"):
    first = torch.rand(2, 2, 3, 8, 8, generator=torch.Generator().manual_seed(5)) * 2 - 1
    K = torch.tensor([[8.0, 0, 4], [0, 8.0, 4], [0, 0, 1]]).expand(2, 11, 3, 3)
    c2w = revisit_path(11).float().expand(2, 11, 4, 4)
    gen = torch.Generator().manual_seed(seed)
    video = rollout(model, first, 11, window=5, context_frames=2, steps=3, method=method, intrinsics=K, c2w=c2w,
                    generator=gen, history_guidance=guidance)
    return video, gen.get_state()


def test_guidance_off_is_plain_sampling_exactly():
    """mode none, and vanilla / fractional at scale 1 (clean history in the only branch), give the
    plain rollout bit for bit and draw nothing extra from the generator."""
    model = _tiny_camera_model()
    plain, plain_state = _run(model, None)
    for guidance in ("none", HistoryGuidance("vanilla", scale=1.0), HistoryGuidance("fractional", scale=1.0),
                     {"mode": "none", "scale": 3.0}):
        video, state = _run(model, guidance)
        assert torch.equal(video, plain) and torch.equal(state, plain_state), guidance


@pytest.mark.parametrize("mode", ["vanilla", "stabilized", "fractional"])
def test_guided_rollouts_shapes_determinism_and_effect(mode):
    model = _tiny_camera_model()
    plain, _ = _run(model, None)
    guidance = HistoryGuidance(mode, scale=3.0)
    a, _ = _run(model, guidance)
    b, _ = _run(model, guidance)
    assert a.shape == plain.shape == (2, 11, 3, 8, 8) and torch.isfinite(a).all()
    assert torch.equal(a, b)  # same seed: same video
    assert torch.equal(a[:, :2], plain[:, :2])  # the given frames are kept
    assert not torch.allclose(a[:, 2:], plain[:, 2:], atol=1e-4)  # guidance changes the new frames
    c, _ = _run(model, guidance, seed=2)
    assert not torch.equal(a, c)


def test_stabilized_at_scale_one_still_noises_the_history():
    """Scale 1 leaves one branch, the conditional one: for stabilized its history is noised to the level."""
    context = torch.randn(1, 2, 3, 4, 4)
    model = HistoryStub(2)
    out = denoise_window(model, context, 1, steps=1, method="euler", generator=torch.Generator().manual_seed(3),
                         history_guidance=HistoryGuidance("stabilized", scale=1.0, stabilization_level=0.2))
    gen = torch.Generator().manual_seed(3)
    x1 = torch.randn(1, 1, 3, 4, 4, generator=gen)
    hist = 0.8 * context + 0.2 * torch.randn(1, 2, 3, 4, 4, generator=gen)
    (call,) = model.calls
    assert call["x"].shape[0] == 1 and (call["t"][:, :2] == 0.2).all()
    torch.testing.assert_close(call["x"][:, :2], hist)
    t = torch.tensor([[0.2, 0.2, 1.0]])
    torch.testing.assert_close(out, x1 - stub_velocity(torch.cat([hist, x1], 1), t, 2)[:, 2:])


def test_settings_are_checked_and_come_from_the_config():
    with pytest.raises(ValueError, match="mode must be one of"):
        HistoryGuidance("cfg")
    with pytest.raises(ValueError, match="fractional_level must lie in \\(0, 1\\)"):
        HistoryGuidance("fractional", fractional_level=1.0)
    with pytest.raises(ValueError, match="stabilization_level must lie in"):
        HistoryGuidance("stabilized", stabilization_level=-0.1)
    with pytest.raises(ValueError, match="unknown history_guidance keys \\['level'\\]"):
        HistoryGuidance.parse({"mode": "vanilla", "level": 0.5})
    cfg = load_config(["sample.history_guidance.mode=fractional", "sample.history_guidance.scale=1.5"])
    from omegaconf import OmegaConf

    parsed = HistoryGuidance.parse(OmegaConf.to_container(cfg.sample.history_guidance))
    assert parsed == HistoryGuidance("fractional", 1.5, 0.02, 0.5) and parsed.levels == (0.0, 0.5)
    assert HistoryGuidance.parse(OmegaConf.to_container(load_config([]).sample.history_guidance)).mode == "none"


class ConditionedStub(HistoryStub):
    """HistoryStub that also records the rays and actions it is given."""

    def forward(self, x, t, rays=None, actions=None, drop_cond=None):
        out = super().forward(x, t)
        self.calls[-1].update(rays=rays, actions=actions)
        return out


@pytest.mark.parametrize("guidance", [None, HistoryGuidance("vanilla", scale=2.0),
                                      HistoryGuidance("stabilized", scale=1.0)])
def test_rays_and_actions_reach_every_model_call(guidance):
    """Plain, guided and stabilized-at-scale-1 (one noised branch) sampling pass the window's rays
    and actions to the model (the guided call batches both branches: rays and actions repeated)."""
    B, c, n = 2, 2, 1
    context = torch.randn(B, c, 3, 4, 4)
    rays, actions = torch.randn(B, c + n, 6, 4, 4), torch.randn(B, c + n, 5)
    model = ConditionedStub(c)
    denoise_window(model, context, n, steps=2, method="heun", rays=rays, actions=actions,
                   generator=torch.Generator().manual_seed(0), history_guidance=guidance)
    assert len(model.calls) == 3  # Heun: 2 steps, the last one Euler
    for call in model.calls:
        copies = 2 if guidance is not None and guidance.scale != 1.0 else 1
        assert torch.equal(call["rays"], torch.cat([rays] * copies)), guidance
        assert torch.equal(call["actions"], torch.cat([actions] * copies)), guidance


class DtypeStub(HistoryStub):
    """HistoryStub returning v in x's dtype, like a model whose weights are in that dtype."""

    def forward(self, x, t, rays=None, actions=None, drop_cond=None):
        v, _ = super().forward(x, t)
        return v.to(x.dtype), None


def test_guided_sampling_keeps_a_bf16_model_in_bf16():
    """The history noise (drawn in float32 for reproducibility) is cast to the frames' dtype: a
    bf16 window stays bf16 in every model call and in the result, close to the float32 result."""
    B, c, n = 2, 2, 2
    context = torch.randn(B, c, 3, 4, 4)
    guidance = HistoryGuidance("fractional", scale=2.0, fractional_level=0.5)
    ref = denoise_window(HistoryStub(c), context, n, steps=2, method="heun",
                         generator=torch.Generator().manual_seed(4), history_guidance=guidance)
    model = DtypeStub(c)
    got = denoise_window(model, context.bfloat16(), n, steps=2, method="heun",
                         generator=torch.Generator().manual_seed(4), history_guidance=guidance)
    assert got.dtype == torch.bfloat16 and all(call["x"].dtype == torch.bfloat16 for call in model.calls)
    # bf16 rounding (2^-8 relative) of the inputs and of each stage's state: measured 0.3 %
    assert float((got.float() - ref).norm() / ref.norm()) < 0.03


def test_level_bounds_are_inclusive_and_exact():
    """Noise levels lie in [0, 1] (both ends allowed: 0 = clean, 1 = pure noise); fractional needs
    (0, 1) open (0 or 1 would make its branches identical to vanilla's)."""
    assert HistoryGuidance("stabilized", stabilization_level=0.0).levels == (0.0, 1.0)
    assert HistoryGuidance("stabilized", stabilization_level=1.0).levels == (1.0, 1.0)
    with pytest.raises(ValueError, match="stabilization_level must lie in \\[0, 1\\], got 1.5"):
        HistoryGuidance("stabilized", stabilization_level=1.5)
    with pytest.raises(ValueError, match="fractional_level must lie in \\(0, 1\\) for mode fractional"):
        HistoryGuidance("fractional", fractional_level=0.0)
