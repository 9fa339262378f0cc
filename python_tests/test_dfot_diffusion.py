"""DFoT continuous-time diffusion (gfcore.models.dfot.diffusion) and its DDIM sampler
(gfcore.sample.ddim) against the authors' code: python_tests/data/dfot_diffusion_golden.npz was
written by scripts/make_dfot_diffusion_golden.py, which runs the Geometry Forcing authors'
ContinuousDiffusion / DiscreteDiffusion / DFoTVideo (algorithms/dfot) with their composed RE10K
config and the stand-in backbone rebuilt here from the stored weights."""
import numpy as np
import pytest
import torch

from gfcore.models.dfot import DFoTDiffusion, DFoTLoss
from gfcore.sample import ddim_noise_levels, ddim_sample, ddim_step
from dfot_golden_helpers import StandIn, load_golden


@pytest.fixture(scope="module")
def golden():
    return load_golden("dfot_diffusion_golden.npz")


def close(actual, expected, rtol=1e-6, atol=1e-6):
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol)


# ------------------------------------------------------------------------------- config facts

def test_their_config_is_the_one_implemented(golden):
    """The RE10K / Geometry Forcing config numbers, as their composed config has them, are gfcore's
    defaults; from_config reads them."""
    _, facts = golden
    d = facts["diffusion"]
    assert d["is_continuous"] is True and d["objective"] == "pred_v"
    assert d["loss_weighting"]["strategy"] == "sigmoid" and d["loss_weighting"]["sigmoid_bias"] == -1.0
    assert d["training_schedule"] == {"name": "cosine", "shift": 0.125}  # logsnr_min/max default -15/15
    assert d["beta_schedule"] == "cosine_simple_diffusion"
    assert d["schedule_fn_kwargs"]["shifted"] == 0.125 and d["schedule_fn_kwargs"]["interpolated"] is False
    assert d["precond_scale"] == 0.125 and d["clip_noise"] == 20.0 and d["timesteps"] == 1000
    assert d["sampling_timesteps"] == 50 and d["ddim_sampling_eta"] == 0.0
    assert facts["noise_level"] == "random_independent" and facts["scheduling_matrix"] == "full_sequence"
    assert facts["fixed_context"]["enabled"] is False and facts["variable_context"]["enabled"] is False
    assert facts["uniform_future"]["enabled"] is False
    assert facts["history_guidance"] == {"name": "conditional"}
    ours = DFoTDiffusion()
    assert (ours.shift, ours.logsnr_min, ours.logsnr_max, ours.precond_scale, ours.sigmoid_bias, ours.clip_noise,
            ours.timesteps) == (0.125, -15.0, 15.0, 0.125, -1.0, 20.0, 1000)
    again = DFoTDiffusion.from_config(d)
    assert torch.equal(again.alphas_cumprod, ours.alphas_cumprod)
    assert (again.shift, again.precond_scale, again.sigmoid_bias) == (0.125, 0.125, -1.0)


# ------------------------------------------------------------------------------- schedules

def test_training_schedule_logsnr(golden):
    g, _ = golden
    ours = DFoTDiffusion()
    close(ours.logsnr(g["schedule.t"]), g["schedule.logsnr"])
    close(torch.tensor([ours.max_logsnr, ours.min_logsnr]), g["schedule.max_min"])
    # the end points by hand: 15 + 2 ln 0.125 and -15 + 2 ln 0.125 (no clamp beyond them)
    assert ours.max_logsnr == pytest.approx(15 + 2 * np.log(0.125), abs=1e-5)
    assert ours.min_logsnr == pytest.approx(-15 + 2 * np.log(0.125), abs=5e-5)  # float32 tan near pi/2


def test_alpha_sigma_and_weights_by_formula():
    ours = DFoTDiffusion()
    logsnr = ours.logsnr(torch.linspace(0, 1, 101))
    alpha, sigma = ours.alpha_sigma(logsnr)
    close(alpha ** 2 + sigma ** 2, torch.ones(101))
    close(torch.log(alpha ** 2 / sigma ** 2), logsnr, rtol=1e-4, atol=1e-4)
    close(ours.loss_weight(logsnr), 1 / (1 + torch.exp(1 + logsnr)))
    close(ours.noise_levels(logsnr), 0.125 * logsnr)


def test_discrete_sampling_schedule(golden):
    """Their float32 buffers of the 1000-step shifted cosine grid, bit-for-bit."""
    g, _ = golden
    ours = DFoTDiffusion()
    for name, mine in (("alphas_cumprod", ours.alphas_cumprod), ("sqrt_alphas_cumprod", ours.sqrt_alphas_cumprod),
                       ("sqrt_one_minus_alphas_cumprod", ours.sqrt_one_minus_alphas_cumprod),
                       ("logsnr", ours.discrete_logsnr)):
        assert mine.dtype == torch.float32 and mine.shape == (1000,)
        assert torch.equal(mine, g[f"discrete.{name}"]), name
    # index k is the continuous schedule at t = k / 999
    close(ours.discrete_logsnr, ours.logsnr(torch.linspace(0, 1, 1000)), rtol=1e-5, atol=2e-5)


@pytest.mark.parametrize("steps", [1, 2, 3, 7, 10, 33, 50, 100, 250, 999])
def test_ddim_grid(golden, steps):
    _, facts = golden
    grid = ddim_noise_levels(steps)
    assert grid.dtype == torch.long
    assert grid.tolist() == facts["ddim_grids"][str(steps)]
    assert grid[0] == 999 and grid[-1] == -1 and len(grid) == steps + 1


# ------------------------------------------------------------------------------- training loss

CASES = {"plain": (None, 0.0), "context": ([0, 1], 0.0), "dropout": ([0], 0.5)}


def _context(indices, batch=2, frames=4):
    if indices is None:
        return None
    mask = torch.zeros(batch, frames, dtype=torch.bool)
    mask[:, indices] = True
    return mask


@pytest.mark.parametrize("return_latents", [False, True])
@pytest.mark.parametrize("case", list(CASES))
def test_training_loss_golden(golden, case, return_latents):
    """Their per-frame t (same generator), noisy input, backbone noise levels, alpha, sigma,
    weights, x_0 prediction, elementwise loss and reduced loss."""
    g, facts = golden
    indices, dropout = CASES[case]
    if indices is not None:
        fixed = facts[f"train.{case}.fixed_context"]
        assert fixed["indices"] == indices and fixed["dropout"] == dropout
    p = f"train.{case}."
    model = StandIn(g)
    ours = DFoTDiffusion(context_dropout=dropout)
    gen = torch.Generator().manual_seed(int(g[p + "seed"]))
    res = ours.training_loss(model, g["train.x0"], g["train.cond"], context_mask=_context(indices),
                             frame_mask=g[p + "frame_mask"], noise=g[p + "noise"], generator=gen,
                             return_latents=return_latents)
    assert isinstance(res, DFoTLoss)
    assert torch.equal(res.t, g[p + "t"])
    assert torch.equal(res.loss_mask, g[p + "loss_mask"])
    close(res.logsnr, g[p + "logsnr"])
    close(res.weight, g[p + "weight"])
    (call,) = model.calls
    close(call["noise_levels"], g[p + "model_noise_levels"])
    close(res.x_t, g[p + "x_t"])
    close(res.x_pred, g[p + "x_pred"])
    close(res.elementwise, g[p + "elementwise"])
    close(res.loss, g[p + "loss"])
    close(res.frame_loss.mean(), res.loss)
    assert (res.frame_loss[~res.loss_mask] == 0).all() and (res.frame_loss[res.loss_mask] > 0).all()
    assert (res.latents is not None) == return_latents
    # alpha / sigma of the golden, through q_sample
    close(ours.q_sample(g["train.x0"], res.t, g[p + "noise"]), g[p + "x_t"])
    a, s = ours.alpha_sigma(res.logsnr)
    close(a, g[p + "alpha"])
    close(s, g[p + "sigma"])


def test_training_loss_with_given_t(golden):
    """t given explicitly is used as is (the golden's final t)."""
    g, _ = golden
    p = "train.context."
    res = DFoTDiffusion().training_loss(StandIn(g), g["train.x0"], g["train.cond"], context_mask=_context([0, 1]),
                                        frame_mask=g[p + "frame_mask"], t=g[p + "t"], noise=g[p + "noise"])
    close(res.loss, g[p + "loss"])
    close(res.elementwise, g[p + "elementwise"])


def test_training_context_frames():
    """Context frames: t = 0 (logSNR 10.84: alpha ~ 1, a trace of noise as in their code), out of
    the loss; frames not available: t = 1, out of the loss; without masks every frame counts."""
    x0 = torch.randn(3, 5, 2, 4, 4)
    ctx = torch.zeros(3, 5, dtype=torch.bool)
    ctx[:, :2] = True
    ctx[2, 4] = True
    avail = torch.ones(3, 5, dtype=torch.bool)
    avail[1, 3] = False
    model = lambda x, nl, c: 0.3 * x  # noqa: E731
    d = DFoTDiffusion()
    res = d.training_loss(model, x0, context_mask=ctx, frame_mask=avail, generator=torch.Generator().manual_seed(0))
    assert (res.t[ctx] == 0).all() and res.t[1, 3] == 1
    assert torch.equal(res.loss_mask, avail & ~ctx)
    assert (res.frame_loss[ctx] == 0).all()
    alpha, sigma = d.alpha_sigma(res.logsnr[ctx])
    assert (alpha > 0.99999).all() and (sigma < 0.005).all()
    # every frame in the loss when no masks are given; same generator -> same result
    r1 = d.training_loss(model, x0, generator=torch.Generator().manual_seed(3))
    r2 = d.training_loss(model, x0, generator=torch.Generator().manual_seed(3))
    assert r1.loss_mask.all() and torch.equal(r1.loss, r2.loss) and torch.equal(r1.t, r2.t)
    # the scalar loss is the mean over every element (masked ones count as zeros, as theirs)
    close(res.loss, (res.elementwise * res.loss_mask[..., None, None, None]).sum() / res.elementwise.numel())


def test_loss_is_on_epsilon_not_v():
    """A model that returns the true v has zero loss; one that returns the true epsilon does not."""
    d = DFoTDiffusion()
    x0 = torch.randn(2, 3, 2, 4, 4)
    noise = torch.randn_like(x0)
    t = torch.rand(2, 3) * 0.9 + 0.05
    alpha, sigma = (v[..., None, None, None] for v in d.alpha_sigma(d.logsnr(t)))
    v_true = alpha * noise - sigma * x0
    res = d.training_loss(lambda x, nl, c: v_true, x0, t=t, noise=noise)
    assert res.loss < 1e-10
    close(res.x_pred, x0, rtol=1e-5, atol=1e-5)
    res = d.training_loss(lambda x, nl, c: noise, x0, t=t, noise=noise)
    assert res.loss > 1e-3


# ------------------------------------------------------------------------------- DDIM sampling

@pytest.mark.parametrize("steps", [50, 7])
def test_ddim_sample_golden(golden, steps):
    """Their _sample_sequence (full_sequence grid, conditional guidance, context frames clean):
    the initial noise from the same generator, every intermediate clip, the backbone's noise
    levels at every step and the result agree; context frames stay bit-identical."""
    g, _ = golden
    p = f"sample.{steps}."
    ctx, mask, cond = g["sample.context"], g["sample.context_mask"], g["sample.cond"]
    model = StandIn(g)
    gen = torch.Generator().manual_seed(int(g[p + "seed"]))
    x, record = ddim_sample(model, DFoTDiffusion(), ctx, mask, cond, steps=steps, generator=gen, return_all=True)
    assert record.shape == (steps + 1, *ctx.shape)
    close(record[0], torch.where(mask[..., None, None, None], ctx, g[p + "noise"]), rtol=0, atol=0)
    close(record, g[p + "record"], rtol=1e-5, atol=1e-5)
    close(x, g[p + "x"], rtol=1e-5, atol=1e-5)
    close(torch.stack([c["noise_levels"] for c in model.calls]), g[p + "model_noise_levels"], rtol=1e-6, atol=1e-6)
    for r in record:
        assert torch.equal(r[mask], ctx[mask])
    assert torch.equal(x[mask], ctx[mask])
    # the same with the initial noise given instead of drawn
    y = ddim_sample(StandIn(g), DFoTDiffusion(), ctx, mask, cond, steps=steps, noise=g[p + "noise"])
    assert torch.equal(x, y)


@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
def test_ddim_step_golden(golden, eta):
    """One step of their ddim_sample_step with mixed levels per frame (context -1 -> -1, a last
    step to -1, a frame that stays at 999) and eta, z given."""
    g, _ = golden
    z = g["step.z"] if eta > 0 else None
    y = ddim_step(StandIn(g), DFoTDiffusion(), g["step.x"], g["step.curr"], g["step.next"], g["step.cond"],
                  eta=eta, noise=z)
    close(y, g[f"step.eta{eta}"], rtol=1e-5, atol=1e-5)
    stay = g["step.curr"] == g["step.next"]
    assert torch.equal(y[stay], g["step.x"][stay])


def test_ddim_sample_deterministic_and_noise_used():
    d = DFoTDiffusion()
    ctx = torch.randn(2, 3, 2, 4, 4)
    mask = torch.tensor([[True, False, False], [False, False, False]])
    model = lambda x, nl, c, m: 0.5 * x + 0.1 * nl[..., None, None, None]  # noqa: E731
    a = ddim_sample(model, d, ctx, mask, steps=4, generator=torch.Generator().manual_seed(1))
    b = ddim_sample(model, d, ctx, mask, steps=4, generator=torch.Generator().manual_seed(1))
    c = ddim_sample(model, d, ctx, mask, steps=4, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a[~mask], c[~mask])
    assert torch.equal(a[mask], ctx[mask]) and torch.equal(c[mask], ctx[mask])


# ------------------------------------------------------------------------------- bad input

def test_bad_input_training():
    d = DFoTDiffusion()
    model = lambda x, nl, c: x  # noqa: E731
    x0 = torch.randn(2, 3, 2, 4, 4)
    with pytest.raises(ValueError, match="x0"):
        d.training_loss(model, torch.randn(2, 3, 4, 4))
    with pytest.raises(ValueError, match="context_mask"):
        d.training_loss(model, x0, context_mask=torch.zeros(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="context_mask"):
        d.training_loss(model, x0, context_mask=torch.zeros(2, 3))
    with pytest.raises(ValueError, match="frame_mask"):
        d.training_loss(model, x0, frame_mask=torch.ones(3, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="t must lie in"):
        d.training_loss(model, x0, t=torch.full((2, 3), 1.5))
    with pytest.raises(ValueError, match="t must lie in"):
        d.training_loss(model, x0, t=torch.full((2, 3), -0.1))
    with pytest.raises(ValueError, match="t must be"):
        d.training_loss(model, x0, t=torch.rand(2, 4))
    with pytest.raises(ValueError, match="t must lie in"):
        d.logsnr(torch.tensor([0.5, 1.01]))
    with pytest.raises(ValueError, match="noise"):
        d.training_loss(model, x0, noise=torch.randn(2, 3, 2, 4, 5))
    with pytest.raises(ValueError, match="model output"):
        d.training_loss(lambda x, nl, c: x[:, :2], x0)
    with pytest.raises(ValueError, match="context_dropout"):
        DFoTDiffusion(context_dropout=1.5)
    with pytest.raises(ValueError, match="shift"):
        DFoTDiffusion(shift=0)


def test_bad_input_sampling():
    d = DFoTDiffusion()
    model = lambda x, nl, c, m: x  # noqa: E731
    ctx = torch.randn(1, 3, 2, 4, 4)
    mask = torch.zeros(1, 3, dtype=torch.bool)
    for steps in (0, -2, 1000, 2.5, True):
        with pytest.raises(ValueError, match="steps"):
            ddim_sample(model, d, ctx, mask, steps=steps)
    with pytest.raises(ValueError, match="context must"):
        ddim_sample(model, d, torch.randn(3, 2, 4, 4), mask)
    with pytest.raises(ValueError, match="context_mask"):
        ddim_sample(model, d, ctx, torch.zeros(1, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="context_mask"):
        ddim_sample(model, d, ctx, torch.zeros(1, 3))
    with pytest.raises(ValueError, match="noise"):
        ddim_sample(model, d, ctx, mask, noise=torch.randn(1, 3, 2, 4, 3))
    with pytest.raises(ValueError, match="eta"):
        ddim_sample(model, d, ctx, mask, steps=2, eta=-1.0)


# ------------------------------------------------------------------------------- with gfcore's backbone

def test_with_tiny_uvit3dpose():
    """The loss (with the latents for an alignment loss) and the sampler call gfcore's UViT3DPose
    as the authors call theirs: gradients flow, context frames stay, the output is finite."""
    from gfcore.models.dfot import UViT3DPose
    torch.manual_seed(0)
    model = UViT3DPose(channels=(32, 32, 32, 40), emb_channels=32, patch_size=2,
                       block_types=("ResBlock", "ResBlock", "TransformerBlock", "TransformerBlock"),
                       block_dropouts=(0.0,) * 4, num_updown_blocks=(1, 1, 1), num_mid_blocks=1, num_heads=2,
                       external_cond_dropout=0.0, resolution=16, frames=3)
    x0 = torch.randn(2, 3, 3, 16, 16)
    rays = torch.randn(2, 3, 180, 16, 16)
    ctx = torch.tensor([[True, False, False], [True, True, False]])
    d = DFoTDiffusion()
    res = d.training_loss(model, x0, rays, context_mask=ctx, generator=torch.Generator().manual_seed(0),
                          return_latents=True)
    assert len(res.latents) == 7 and torch.isfinite(res.loss)
    res.loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    model.eval()
    out = ddim_sample(model, d, x0, ctx, rays, steps=2, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(out).all() and torch.equal(out[ctx], x0[ctx])


def test_from_config_reads_every_field_and_its_defaults():
    """Every field of the authors' diffusion node, at values other than RE10K's, reaches the
    object; an empty node gives their defaults (shift 1, logSNR +-15, ...); a sampling shift that
    differs from the training one, or an interpolated schedule, is refused."""
    node = {"training_schedule": {"shift": 0.5, "logsnr_min": -12.0, "logsnr_max": 11.0},
            "schedule_fn_kwargs": {"shifted": 0.5}, "precond_scale": 0.25, "loss_weighting": {"sigmoid_bias": -2.0},
            "clip_noise": 7.0, "timesteps": 500, "context_dropout": 0.3}
    d = DFoTDiffusion.from_config(node)
    assert (d.shift, d.logsnr_min, d.logsnr_max, d.precond_scale, d.sigmoid_bias, d.clip_noise, d.timesteps,
            d.context_dropout) == (0.5, -12.0, 11.0, 0.25, -2.0, 7.0, 500, 0.3)
    assert len(d.alphas_cumprod) == 500
    e = DFoTDiffusion.from_config({})
    assert (e.shift, e.logsnr_min, e.logsnr_max, e.precond_scale, e.sigmoid_bias, e.clip_noise, e.timesteps,
            e.context_dropout) == (1.0, -15.0, 15.0, 0.125, -1.0, 20.0, 1000, 0.0)
    with pytest.raises(ValueError, match=r"schedule_fn_kwargs.shifted \(0.25\) differs from training_schedule.shift "
                                         r"\(0.5\)"):
        DFoTDiffusion.from_config({**node, "schedule_fn_kwargs": {"shifted": 0.25}})
    with pytest.raises(ValueError, match="schedule_fn_kwargs.interpolated is not supported"):
        DFoTDiffusion.from_config({**node, "schedule_fn_kwargs": {"shifted": 0.5, "interpolated": True}})


def test_q_sample_by_hand():
    """x_t = sqrt(sigmoid(logSNR)) x0 + sqrt(sigmoid(-logSNR)) eps per frame; a noise of another
    shape is refused."""
    d = DFoTDiffusion()
    gen = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(2, 3, 2, 2, 2, generator=gen), torch.randn(2, 3, 2, 2, 2, generator=gen)
    t = torch.tensor([[0.0, 0.3, 1.0], [0.5, 0.7, 0.1]])
    lam = d.logsnr(t).double()
    want = (torch.sigmoid(lam).sqrt()[..., None, None, None] * x0.double()
            + torch.sigmoid(-lam).sqrt()[..., None, None, None] * eps.double())
    close(d.q_sample(x0, t, eps).double(), want, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match=r"noise must have the shape of x0 \[2, 3, 2, 2, 2\], got \[2, 3, 2, 2\]"):
        d.q_sample(x0, t, eps[..., 0])


def test_constructor_bounds_and_messages():
    """Each argument check at its boundary: the smallest accepted value passes, the first refused
    one fails with a message that names the argument and the value."""
    DFoTDiffusion(logsnr_min=-1.0, logsnr_max=-0.999, clip_noise=0.5, timesteps=2, context_dropout=1.0)
    DFoTDiffusion(context_dropout=0.0)
    for kwargs, message in (
            (dict(shift=0.0), r"^shift must be a positive number, got 0.0$"),
            (dict(shift="1"), r"^shift must be a positive number, got '1'$"),
            (dict(logsnr_min=2.0, logsnr_max=2.0), r"^logsnr_min must be < logsnr_max, got 2.0 and 2.0$"),
            (dict(clip_noise=0.0), r"^clip_noise must be > 0, got 0.0$"),
            (dict(timesteps=1), r"^timesteps must be an int >= 2, got 1$"),
            (dict(timesteps=2.0), r"^timesteps must be an int >= 2, got 2.0$"),
            (dict(timesteps=True), r"^timesteps must be an int >= 2, got True$"),
            (dict(context_dropout=1.5), r"^context_dropout must lie in \[0, 1\], got 1.5$"),
            (dict(context_dropout=-0.1), r"^context_dropout must lie in \[0, 1\], got -0.1$")):
        with pytest.raises(ValueError, match=message):
            DFoTDiffusion(**kwargs)


def test_time_checks_name_the_argument_and_the_values():
    d, x0 = DFoTDiffusion(), torch.zeros(2, 3, 1, 2, 2)
    with pytest.raises(ValueError, match=r"^t must be \[B, T\] = \[2, 3\], got \[2, 2\]$"):
        d.q_sample(x0, torch.zeros(2, 2), x0)
    with pytest.raises(ValueError, match=r"^t must be \[B, T\] = \[2, 3\], got list$"):
        d.q_sample(x0, [[0.0] * 3] * 2, x0)
    with pytest.raises(TypeError, match=r"^t must be a floating tensor, got torch.int64$"):
        d.q_sample(x0, torch.zeros(2, 3, dtype=torch.long), x0)
    with pytest.raises(ValueError, match=r"^t must lie in \[0, 1\], got values in \[-0.5, 1.0\]$"):
        d.q_sample(x0, torch.tensor([[0.0, 1.0, -0.5], [0.5, 0.5, 0.5]]), x0)
    d.q_sample(x0, torch.tensor([[0.0, 1.0, 0.5], [0.0, 1.0, 0.5]]), x0)  # the ends are allowed


def _numpy_grid(shift, logsnr_min, logsnr_max, timesteps):
    """The discrete grid by hand in float64 numpy: shifted cosine logSNR at k / (timesteps - 1),
    betas from the ratios of alpha-bar clipped to [1e-9, 1], alpha-bar again as their cumprod."""
    t_min, t_max = np.arctan(np.exp(-0.5 * logsnr_max)), np.arctan(np.exp(-0.5 * logsnr_min))
    t = np.linspace(0.0, 1.0, timesteps)
    lam = -2 * np.log(np.tan(t_min + t * (t_max - t_min))) + 2 * np.log(shift)
    acp = 1 / (1 + np.exp(-lam))
    betas = np.clip(1 - np.concatenate([acp[:1], acp[1:] / acp[:-1]]), 1e-9, 1.0)
    acp = np.cumprod(1 - betas)
    return acp, np.log(acp / (1 - acp))


def test_discrete_grid_shift_and_beta_floor_by_hand():
    """The sampling grid carries the shift for any shift other than 1 (shift 2 adds 2 ln 2), and
    the first beta is floored at 1e-9: with logsnr_max 30 alpha-bar[0] is 1 - 1e-9, so the grid's
    first logSNR is ln(1e9) = 20.72, not 30."""
    for shift, lmin, lmax in ((2.0, -15.0, 15.0), (1.0, -10.0, 30.0), (0.5, -12.0, 11.0)):
        d = DFoTDiffusion(shift=shift, logsnr_min=lmin, logsnr_max=lmax, timesteps=6)
        acp, lam = _numpy_grid(shift, lmin, lmax, 6)
        np.testing.assert_allclose(d.alphas_cumprod.double().numpy(), acp, rtol=1e-6, atol=0)
        np.testing.assert_allclose(d.discrete_logsnr.double().numpy(), lam, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(d.sqrt_one_minus_alphas_cumprod.double().numpy(), np.sqrt(1 - acp), rtol=1e-6,
                                   atol=0)
    d = DFoTDiffusion(shift=1.0, logsnr_min=-10.0, logsnr_max=30.0, timesteps=6)
    assert abs(float(d.discrete_logsnr[0]) - 9 * np.log(10.0)) < 1e-4
    d = DFoTDiffusion(shift=2.0, timesteps=6)
    assert abs(float(d.discrete_logsnr[3] - DFoTDiffusion(shift=1.0, timesteps=6).discrete_logsnr[3])
               - 2 * np.log(2.0)) < 1e-4


def test_training_constants_are_float32_whatever_the_default_dtype():
    """The continuous schedule's constants are float32 (the authors' CosineNoiseSchedule) even
    under torch.set_default_dtype(float64): logSNR of float64 times equals the one of a schedule
    built under the float32 default, bit for bit."""
    t = torch.tensor([0.0, 0.25, 0.5, 1.0], dtype=torch.float64)
    want = DFoTDiffusion(shift=0.125, logsnr_min=-15.0, logsnr_max=15.0).logsnr(t)
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        d = DFoTDiffusion(shift=0.125, logsnr_min=-15.0, logsnr_max=15.0)
    finally:
        torch.set_default_dtype(old)
    got = d.logsnr(t)
    assert got.dtype == torch.float64 and torch.equal(got, want)
    # and those are the float32-rounded constants, not float64 ones
    t_min, t_max = np.arctan(np.exp(-7.5)), np.arctan(np.exp(7.5))
    exact = -2 * np.log(np.tan(t_min + t.numpy() * (t_max - t_min))) + 2 * np.log(0.125)
    assert not np.array_equal(got.numpy(), exact)
    np.testing.assert_allclose(got.numpy(), exact, rtol=1e-5, atol=1e-5)


def test_input_messages_name_the_argument_and_what_came():
    """x0, masks and t: the message names the argument and the shape/dtype (or type) it got; the
    t range is checked before the noise shape; an integer t for logsnr is named with its dtype."""
    d = DFoTDiffusion()
    model = lambda x, nl, c: x  # noqa: E731
    x0 = torch.zeros(2, 3, 1, 2, 2)
    for call in (lambda x: d.q_sample(x, torch.zeros(2, 3), x0), lambda x: d.training_loss(model, x)):
        with pytest.raises(ValueError, match=r"^x0 must be a floating tensor \[B, T, C, H, W\], got \[2, 3, 2, 2\]$"):
            call(torch.zeros(2, 3, 2, 2))
        with pytest.raises(ValueError, match=r"^x0 must be a floating tensor \[B, T, C, H, W\], got ndarray$"):
            call(np.zeros((2, 3, 1, 2, 2), dtype=np.float32))
    for name in ("context_mask", "frame_mask"):
        for call in (lambda **m: d.training_loss(model, x0, **m), lambda **m: d.training_times(2, 3, **m)):
            with pytest.raises(ValueError, match=rf"^{name} must be a bool tensor \[B, T\] = \[2, 3\], "
                                                 rf"got torch.float32 \[2, 3\]$"):
                call(**{name: torch.zeros(2, 3)})
            with pytest.raises(ValueError, match=rf"^{name} must be a bool tensor \[B, T\] = \[2, 3\], got list$"):
                call(**{name: [[True] * 3] * 2})
    bad_noise = torch.zeros(2, 3, 1, 2, 3)
    for t in (torch.full((2, 3), 1.5), torch.full((2, 3), 2.5), torch.full((2, 3), -0.5)):
        with pytest.raises(ValueError, match=r"^t must lie in \[0, 1\]"):
            d.q_sample(x0, t, bad_noise)
        with pytest.raises(ValueError, match=r"^t must lie in \[0, 1\]"):
            d.training_loss(model, x0, t=t, noise=bad_noise)
    with pytest.raises(TypeError, match=r"^t must be a floating tensor, got torch.int64$"):
        d.logsnr(torch.tensor([0, 1]))


def test_from_config_shift_defaults_and_messages():
    """A sampling shift given without a training shift is compared against the training default 1
    (equal: accepted; else the message shows 1.0); the interpolated refusal is the whole message."""
    d = DFoTDiffusion.from_config({"schedule_fn_kwargs": {"shifted": 1.0}})
    assert d.shift == 1.0
    with pytest.raises(ValueError, match=r"^schedule_fn_kwargs.shifted \(0.5\) differs from training_schedule.shift "
                                         r"\(1.0\): sampling and training schedules would differ$"):
        DFoTDiffusion.from_config({"schedule_fn_kwargs": {"shifted": 0.5}})
    with pytest.raises(ValueError, match=r"^schedule_fn_kwargs.interpolated is not supported$"):
        DFoTDiffusion.from_config({"schedule_fn_kwargs": {"interpolated": True}})


def test_training_loss_returns_what_it_used():
    """The drawn times and noise follow x0's dtype (float64 here), the noise is the generator's
    normal draw after the times, clamped to +-clip_noise; given noise and v_pred come back as
    they are; frame_loss [B, T] is each frame's mean of the masked elementwise loss."""
    d = DFoTDiffusion(clip_noise=0.5)
    x0 = torch.randn(2, 3, 2, 3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    out = 0.3 * x0.flip(0)
    ctx = torch.tensor([[True, False, False], [False, False, False]])
    res = d.training_loss(lambda x, nl, c: out, x0, context_mask=ctx, generator=torch.Generator().manual_seed(7))
    g = torch.Generator().manual_seed(7)
    t = torch.rand((2, 3), generator=g)
    torch.bernoulli(torch.zeros(2, 1), generator=g)  # the context dropout draw
    eps = torch.randn(x0.shape, dtype=torch.float64, generator=g)
    assert res.t.dtype == torch.float64 and res.noise.dtype == torch.float64
    torch.testing.assert_close(res.t, torch.where(ctx, 0.0, t).double(), rtol=0, atol=0)
    want_noise = torch.tensor(np.clip(eps.numpy(), -0.5, 0.5))
    torch.testing.assert_close(res.noise, want_noise, rtol=0, atol=0)
    assert float(res.noise.min()) == -0.5 and float(res.noise.max()) == 0.5
    assert ((res.noise.abs() < 0.5) & (res.noise != 0)).any()
    assert res.v_pred is out
    frame = (res.elementwise * res.loss_mask[..., None, None, None]).reshape(2, 3, -1).mean(-1)
    assert res.frame_loss.shape == (2, 3) and res.frame_loss[0, 0] == 0 and (res.frame_loss[~ctx] > 0).all()
    torch.testing.assert_close(res.frame_loss, frame, rtol=1e-12, atol=0)
    given = torch.randn(x0.shape, dtype=torch.float64)
    res = d.training_loss(lambda x, nl, c: out, x0, t=torch.full((2, 3), 0.5), noise=given)
    assert res.noise is given and res.t.dtype == torch.float64


def test_training_times_without_generator_or_device():
    """training_times with neither a generator nor a device draws on the default device from the
    global RNG; masks put t = 1 (unavailable) and t = 0 (context, no dropout)."""
    torch.manual_seed(11)
    want = torch.rand(2, 3)
    torch.manual_seed(11)
    t = DFoTDiffusion().training_times(2, 3)
    assert torch.equal(t, want)
    fm = torch.tensor([[True, False, True], [True, True, True]])
    cm = torch.tensor([[False, False, True], [True, False, False]])
    t = DFoTDiffusion().training_times(2, 3, frame_mask=fm, context_mask=cm)
    assert t[0, 1] == 1 and t[0, 2] == 0 and t[1, 0] == 0
