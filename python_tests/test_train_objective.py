"""Flow-matching objective, the oracle pointmap teacher, and baseline vs GF equivalence."""
import math

import pytest
import torch

from gfcore.losses import GeometryAlignmentLoss
from gfcore.models import build_model
from gfcore.train.objective import GFObjective, draw_noise, flow_matching_loss, noisy_input
from gfcore.train.teachers import ORACLE_LABEL, PointmapTeacher, TeacherTargets, backproject
from trainer_helpers import one_torch_thread  # noqa: F401  (autouse fixture)


def test_noisy_input_and_loss_against_formula():
    x0, eps = torch.randn(2, 3, 3, 4, 5), torch.randn(2, 3, 3, 4, 5)
    t = torch.tensor([[0.0, 0.3, 1.0], [0.5, 0.9, 0.1]])
    xt = noisy_input(x0, t, eps)
    for b in range(2):
        for f in range(3):
            torch.testing.assert_close(xt[b, f], (1 - t[b, f]) * x0[b, f] + t[b, f] * eps[b, f])
    v_hat = torch.randn_like(x0, requires_grad=True)
    context = torch.tensor([[True, False, False], [False, False, False]])
    loss = flow_matching_loss(v_hat, x0, eps, context)
    err = (v_hat - (eps - x0)).pow(2).mean(dim=(2, 3, 4))
    expected = ((err[0, 1] + err[0, 2]) / 2 + err[1].mean()) / 2  # per clip over noisy frames, then over clips
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert torch.count_nonzero(v_hat.grad[0, 0]) == 0  # context frames carry no loss
    assert torch.count_nonzero(v_hat.grad[0, 1]) > 0


def test_draw_noise_is_seeded_and_context_is_clean():
    a = draw_noise((64, 6, 3, 2, 2), torch.Generator().manual_seed(3), context_prob=0.5, max_context=2)
    b = draw_noise((64, 6, 3, 2, 2), torch.Generator().manual_seed(3), context_prob=0.5, max_context=2)
    assert torch.equal(a.t, b.t) and torch.equal(a.eps, b.eps) and torch.equal(a.context, b.context)
    assert (a.t[a.context] == 0).all() and (a.t[~a.context] > 0).all()
    counts = a.context.sum(1)
    assert set(counts.tolist()) <= {0, 1, 2} and (counts > 0).any() and (counts == 0).any()
    # context frames are always a prefix of the clip
    for row in a.context:
        k = int(row.sum())
        assert row[:k].all() and not row[k:].any()


def test_backproject_reprojects_to_pixels():
    """World points projected back with K and the inverse pose land on the pixel centres, at the depth."""
    H, W = 5, 7
    K = torch.tensor([[6.0, 0, 3.5], [0, 5.0, 2.5], [0, 0, 1]])
    angle = torch.tensor(0.3)
    c2w = torch.eye(4)
    c2w[0, 0], c2w[0, 2], c2w[2, 0], c2w[2, 2] = angle.cos(), angle.sin(), -angle.sin(), angle.cos()
    c2w[:3, 3] = torch.tensor([0.5, -0.2, 1.0])
    depth = torch.rand(H, W) + 1.0
    world = backproject(depth, K, c2w)
    w2c = torch.linalg.inv(c2w)
    cam = world @ w2c[:3, :3].T + w2c[:3, 3]
    torch.testing.assert_close(cam[..., 2], depth, atol=1e-5, rtol=1e-5)
    uv = (cam @ K.T)[..., :2] / cam[..., 2:]
    v, u = torch.meshgrid(torch.arange(H) + 0.5, torch.arange(W) + 0.5, indexing="ij")
    torch.testing.assert_close(uv, torch.stack([u, v], -1), atol=1e-4, rtol=1e-4)


def test_pointmap_teacher_features():
    teacher = TeacherTargets((2, 3), PointmapTeacher((2, 3), num_frequencies=2))
    assert teacher.label == ORACLE_LABEL and teacher.feature_dim == 7 * 5
    B, T, H, W = 2, 3, 4, 6
    K = torch.tensor([[5.0, 0, 3], [0, 5.0, 2], [0, 0, 1]]).expand(B, T, 3, 3)
    batch = {"frames": torch.zeros(B, T, 3, H, W), "depth": torch.rand(B, T, H, W) + 1, "intrinsics": K,
             "c2w": torch.eye(4).expand(B, T, 4, 4)}
    feats = teacher(batch)
    assert feats.shape == (B, T, 6, 35)
    # identity pose: the world point equals the camera point; channel 6 is the mean log depth of each 2x2 patch
    torch.testing.assert_close(feats[..., :3], feats[..., 3:6])
    log_depth = batch["depth"].log().reshape(B, T, 2, 2, 3, 2).mean(dim=(3, 5)).reshape(B, T, 6)
    torch.testing.assert_close(feats[..., 6], log_depth)
    with pytest.raises(KeyError, match="depth"):
        teacher({"frames": batch["frames"], "intrinsics": K, "c2w": batch["c2w"]})


def _setup(seed=0):
    torch.manual_seed(seed)
    model = build_model(dict(image_size=[8, 8], hidden_dim=32, depth=2, num_heads=2, align_depth=1))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "modulation" in name or name.startswith("out."):
                p.normal_(0, 0.05)
    batch = {"frames": torch.rand(2, 4, 3, 8, 8) * 2 - 1, "rays": torch.randn(2, 4, 6, 8, 8)}
    noise = draw_noise((2, 4, 3, 8, 8), torch.Generator().manual_seed(1), cond_drop_prob=0.5)
    features = torch.randn(2, 4, 4, 10)
    return model, batch, noise, features


def test_baseline_and_gf_differ_only_by_the_alignment_term():
    model, batch, noise, features = _setup()
    torch.manual_seed(5)
    alignment = GeometryAlignmentLoss(32, 10, projector_dim=16, head_dim=8, impl="reference")
    base = GFObjective(None)(model, batch, noise)
    base["loss"].backward()
    g_base = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    gf = GFObjective(alignment)(model, batch, noise, features)
    torch.testing.assert_close(gf["diffusion"], base["diffusion"], rtol=0, atol=0)
    torch.testing.assert_close(gf["loss"], gf["diffusion"] + gf["alignment"])
    assert set(gf) == {"loss", "diffusion", "alignment", "angular", "scale", "cosine"}
    gf["loss"].backward()
    g_gf = {n: p.grad.clone() for n, p in model.named_parameters()}
    # the alignment term alone, through the hidden state
    model.zero_grad()
    _, hidden = model(noisy_input(batch["frames"], noise.t, noise.eps), noise.t, rays=batch["rays"],
                      drop_cond=noise.drop_cond)
    alignment(hidden, features).loss.backward()
    for name, p in model.named_parameters():
        g_align = p.grad if p.grad is not None else torch.zeros_like(g_base[name])
        torch.testing.assert_close(g_gf[name], g_base[name] + g_align, atol=1e-6, rtol=1e-5)
    # blocks after the alignment block get no alignment gradient
    assert all(p.grad is None or torch.count_nonzero(p.grad) == 0 for p in model.blocks[1].parameters())


def test_gf_objective_needs_features():
    model, batch, noise, _ = _setup()
    with pytest.raises(ValueError, match="teacher features"):
        GFObjective(GeometryAlignmentLoss(32, 10, projector_dim=16, head_dim=8))(model, batch, noise)


def test_tiny_model_overfits_one_clip():
    """One clip and one noise draw (the classic overfit-one-batch check): the loss falls to ~0."""
    torch.manual_seed(0)
    model = build_model(dict(image_size=[8, 8], patch_size=4, hidden_dim=48, depth=2, num_heads=2, align_depth=1,
                             camera_cond=False))
    clip = (torch.rand(1, 4, 3, 8, 8) * 2 - 1).expand(4, -1, -1, -1, -1)
    noise = draw_noise((4, 4, 3, 8, 8), torch.Generator().manual_seed(0), context_prob=0.0, cond_drop_prob=0.0)
    objective = GFObjective(None)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(80):
        loss = objective(model, {"frames": clip}, noise)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.02 * losses[0], (losses[0], losses[-1])


def _binomial_ok(count: int, n: int, p: float) -> bool:
    """count within 4 standard deviations of n p (a false alarm about once in 16000 runs)."""
    return abs(count - n * p) <= 4 * math.sqrt(n * p * (1 - p))


def test_draw_noise_distribution_with_the_defaults():
    """Defaults: context for half the clips, k ~ U{1, 2} clean frames, conditioning dropped for 10 %."""
    n, frames = 4000, 6
    draw = draw_noise((n, frames, 1, 1, 1), torch.Generator().manual_seed(11))
    assert draw.t.shape == (n, frames) and draw.eps.shape == (n, frames, 1, 1, 1)
    assert draw.drop_cond.dtype == torch.bool and draw.drop_cond.shape == (n,)
    counts = draw.context.sum(1)
    with_context = int((counts > 0).sum())
    assert _binomial_ok(with_context, n, 0.5)
    assert set(counts.tolist()) == {0, 1, 2} and _binomial_ok(int((counts == 1).sum()), with_context, 0.5)
    assert _binomial_ok(int(draw.drop_cond.sum()), n, 0.1)
    # noise levels: independent U(0, 1) per frame of every clip (not one row shared by the clips)
    noisy = draw.t[~draw.context]
    assert abs(float(noisy.mean()) - 0.5) < 4 * math.sqrt(1 / 12 / noisy.numel())
    assert not torch.equal(draw.t[0, 2:], draw.t[1, 2:])
    assert abs(float(torch.corrcoef(draw.t[:, 2:].T)[0, 1])) < 0.1


@pytest.mark.parametrize("frames,max_context,largest", [(2, 2, 1), (3, 5, 2), (3, 2, 2), (4, 1, 1), (6, 3, 3)])
def test_context_never_covers_the_whole_clip(frames, max_context, largest):
    """k ~ U{1 .. min(max_context, frames - 1)}: every value occurs, and at least one frame stays noisy."""
    draw = draw_noise((2000, frames, 1, 1, 1), torch.Generator().manual_seed(frames), context_prob=1.0,
                      max_context=max_context)
    assert set(draw.context.sum(1).tolist()) == set(range(1, largest + 1))


@pytest.mark.parametrize("frames,max_context", [(1, 2), (5, 0)])
def test_no_context_when_impossible_or_disabled(frames, max_context):
    draw = draw_noise((50, frames, 1, 1, 1), torch.Generator().manual_seed(0), context_prob=1.0,
                      max_context=max_context)
    assert draw.context.dtype == torch.bool and not draw.context.any() and (draw.t > 0).all()


def test_draw_noise_uses_only_its_generator():
    torch.manual_seed(1)
    a = draw_noise((64, 4, 1, 1, 1), torch.Generator().manual_seed(5), cond_drop_prob=0.5)
    torch.manual_seed(2)  # the global generator must not matter
    b = draw_noise((64, 4, 1, 1, 1), torch.Generator().manual_seed(5), cond_drop_prob=0.5)
    assert torch.equal(a.drop_cond, b.drop_cond) and torch.equal(a.t, b.t) and torch.equal(a.context, b.context)
    part = a.slice(10, 20)
    for name in ("t", "eps", "context", "drop_cond"):
        assert torch.equal(getattr(part, name), getattr(a, name)[10:20])


def test_loss_of_a_clip_with_one_noisy_frame_and_dtypes():
    x0, eps = torch.randn(2, 3, 1, 2, 2), torch.randn(2, 3, 1, 2, 2)
    v_hat = torch.randn_like(x0)
    context = torch.tensor([[True, True, False], [True, True, True]])  # clip 1: all context, no loss
    err = (v_hat - (eps - x0)).pow(2).mean(dim=(2, 3, 4))
    loss = flow_matching_loss(v_hat, x0, eps, context)
    torch.testing.assert_close(loss, (err[0, 2] + 0.0) / 2)
    t = torch.tensor([[0.25, 0.5, 1.0], [0.0, 0.1, 0.9]])
    assert noisy_input(x0.bfloat16(), t, eps.bfloat16()).dtype == torch.bfloat16


class SpyModel(torch.nn.Module):
    """Returns fixed v_hat / hidden and records the arguments the objective passes."""

    def __init__(self, hidden_dtype=torch.float32):
        super().__init__()
        self.hidden_dtype, self.calls = hidden_dtype, []

    def forward(self, x, t, rays=None, actions=None, drop_cond=None):
        self.calls.append(dict(x=x, t=t, rays=rays, actions=actions, drop_cond=drop_cond))
        return torch.zeros_like(x), torch.ones(*x.shape[:2], 4, 8, dtype=self.hidden_dtype)


class SpyAlignment(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.features = []

    def forward(self, hidden, features):
        from types import SimpleNamespace

        self.features.append(features)
        return SimpleNamespace(loss=torch.tensor(0.5), angular=torch.tensor(-0.25), scale=torch.tensor(2.0),
                               cosine=torch.tensor(0.25))


def test_objective_passes_the_batch_and_returns_every_term():
    x0, eps = torch.randn(2, 3, 3, 8, 8), torch.randn(2, 3, 3, 8, 8)
    noise = draw_noise((2, 3, 3, 8, 8), torch.Generator().manual_seed(0), cond_drop_prob=0.5)
    noise.eps = eps
    batch = {"frames": x0, "rays": torch.randn(2, 3, 6, 8, 8), "actions": torch.randn(2, 3, 7)}
    model, alignment = SpyModel(torch.float64), SpyAlignment()
    features = torch.randn(2, 3, 4, 10)
    terms = GFObjective(alignment)(model, batch, noise, features)
    (call,) = model.calls
    assert call["rays"] is batch["rays"] and call["actions"] is batch["actions"]
    assert call["drop_cond"] is noise.drop_cond and call["t"] is noise.t
    torch.testing.assert_close(call["x"], noisy_input(x0, noise.t, eps))
    # features follow the hidden state's dtype outside autocast, and stay as they are under it
    assert alignment.features[0].dtype == torch.float64
    with torch.autocast("cpu", dtype=torch.bfloat16):
        GFObjective(alignment)(SpyModel(torch.bfloat16), batch, noise, features)
    assert alignment.features[1] is features
    expected_diffusion = flow_matching_loss(torch.zeros_like(x0), x0, eps, noise.context)
    assert terms.keys() == {"loss", "diffusion", "alignment", "angular", "scale", "cosine"}
    torch.testing.assert_close(terms["diffusion"], expected_diffusion)
    torch.testing.assert_close(terms["loss"], expected_diffusion + 0.5)
    assert (terms["alignment"], terms["angular"], terms["scale"], terms["cosine"]) == (0.5, -0.25, 2.0, 0.25)
    with pytest.raises(ValueError, match="^GFObjective has an alignment loss but no teacher features"):
        GFObjective(alignment)(model, batch, noise)


def test_shift_t_formula():
    """t' = s t / (1 + (s - 1) t) (SD3's shift), by hand in float64; s = 1 is the identity."""
    from gfcore.train.objective import shift_t

    t = torch.tensor([0.0, 0.1, 0.5, 0.9], dtype=torch.float64)
    for s in (2.0, 3.0, 0.5):
        expected = torch.tensor([s * u / (1 + (s - 1) * u) for u in t.tolist()], dtype=torch.float64)
        torch.testing.assert_close(shift_t(t, s), expected, rtol=1e-15, atol=0)
    assert torch.equal(shift_t(t, 1.0), t)
    assert float(shift_t(t, 2.0)[2]) == 2 * 0.5 / 1.5  # 0.667, not 0.5


@pytest.mark.parametrize("frames,max_context,clean", [(3, 2, 2), (3, 5, 2), (4, 0, 0), (1, 2, 0), (6, 2, 2)])
def test_sampled_task_context_count(frames, max_context, clean):
    """sampled_task: k = min(max_context, frames - 1) clean frames (never the whole clip, 0 when
    max_context is 0) and one noise level > 0 shared by the other frames of a clip."""
    draw = draw_noise((64, frames, 1, 1, 1), torch.Generator().manual_seed(3), max_context=max_context,
                      mode="sampled_task")
    assert draw.context.dtype == torch.bool
    assert (draw.context.sum(1) == clean).all() and draw.context[:, :clean].all()
    assert (draw.t[:, :clean] == 0).all() and (draw.t[:, clean:] > 0).all()
    assert (draw.t[:, clean:] == draw.t[:, -1:]).all()


def test_sampled_task_draw_uses_only_its_generator_and_drops_conditioning():
    """Every random part of a sampled_task draw comes from the generator (the global RNG must not
    matter: resume and ranks rely on it), and conditioning is dropped for ~cond_drop_prob of clips."""
    torch.manual_seed(1)
    a = draw_noise((4000, 3, 1, 1, 1), torch.Generator().manual_seed(5), mode="sampled_task", cond_drop_prob=0.3)
    torch.manual_seed(2)
    b = draw_noise((4000, 3, 1, 1, 1), torch.Generator().manual_seed(5), mode="sampled_task", cond_drop_prob=0.3)
    for name in ("t", "eps", "context", "drop_cond"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert a.drop_cond.dtype == torch.bool and a.drop_cond.shape == (4000,)
    assert _binomial_ok(int(a.drop_cond.sum()), 4000, 0.3)


class FixedV(torch.nn.Module):
    """A model whose v_hat is a fixed tensor; `prediction` set: it has a config naming it."""

    def __init__(self, v, prediction=None):
        super().__init__()
        self.v = v
        if prediction is not None:
            from types import SimpleNamespace

            self.config = SimpleNamespace(prediction=prediction)

    def forward(self, x, t, rays=None, actions=None, drop_cond=None):
        return self.v, None


@pytest.mark.parametrize("prediction", [None, "v", "x0", "x0_residual"])
def test_x0_loss_space_by_hand(prediction):
    """loss_space="x0": x0_hat = x_t - t' v_hat with t' = t for a v model (or a model without a
    config) and max(t, 1e-3) for x0 / x0_residual models; squared error averaged over each clip's
    noisy frames (clip 1 has exactly one), then over clips. float64 by hand."""
    from gfcore.train.objective import NoiseDraw

    x0, eps, v = (torch.randn(2, 3, 1, 2, 2, dtype=torch.float64) for _ in range(3))
    # every noisy t small: the 1e-3 floor changes each error by a large factor, not a rounding
    t = torch.tensor([[0.0, 1e-4, 5e-4], [0.0, 0.0, 2e-4]], dtype=torch.float64)
    context = t == 0
    noise = NoiseDraw(t, eps, context, torch.zeros(2, dtype=torch.bool))
    floor = 1e-3 if prediction in ("x0", "x0_residual") else 0.0
    per_clip = []
    for b in range(2):
        errors = []
        for f in range(3):
            if context[b, f]:
                continue
            tf = float(t[b, f])
            x_t = (1 - tf) * x0[b, f] + tf * eps[b, f]
            errors.append(float((x_t - max(tf, floor) * v[b, f] - x0[b, f]).pow(2).mean()))
        per_clip.append(sum(errors) / len(errors))
    expected = sum(per_clip) / 2
    got = GFObjective(loss_space="x0")(FixedV(v, prediction), {"frames": x0}, noise)["diffusion"]
    # the loss subtracts x0 in float32: rounding ~1e-7 of |x0| ~ 1 against errors ~1e-4, so ~1e-3
    # relative; the floor, or halving the loss of the clip with one noisy frame, changes it by far more
    assert abs(float(got) - expected) <= 1e-2 * expected
