"""DFoT history guidance (gfcore.sample.dfot_guidance, guided_ddim_sample) and the long-rollout
protocol (gfcore.sample.dfot_protocol) against the authors' code:
python_tests/data/dfot_protocol_golden.npz was written by scripts/make_dfot_protocol_golden.py,
which runs their HistoryGuidance, DFoTVideo._sample_sequence, _predict_videos, _predict_sequence
and _interpolate_videos with a stand-in backbone (rebuilt here from the stored weights) and a
fixed pattern as the noise of noised history."""
import numpy as np
import pytest
import torch

from gfcore.models.dfot import DFoTDiffusion
from gfcore.sample.ddim import ddim_sample, guided_ddim_sample
from gfcore.sample.dfot_guidance import DFoTHistoryGuidance
from gfcore.sample.dfot_protocol import (PROTOCOLS, dfot_long_rollout, interpolation_plan, keyframe_indices,
                                         sliding_windows)
from dfot_golden_helpers import StandIn, load_golden


@pytest.fixture(scope="module")
def golden():
    return load_golden("dfot_protocol_golden.npz")


def close(actual, expected, tol=1e-5):
    torch.testing.assert_close(actual, expected, rtol=tol, atol=tol)


def without_visualize(config):
    """Their scheme config (which also switches their plotting off) as DFoTHistoryGuidance fields."""
    return {k: v for k, v in config.items() if k != "visualize"}


def identity(conditions):
    return conditions


# ------------------------------------------------------------------------------- guidance schemes

SCHEMES = ["conditional", "vanilla", "vanilla_nocond", "stabilized_vanilla", "stabilized_conditional", "fractional",
           "stabilized_fractional"]


@pytest.mark.parametrize("case", SCHEMES)
def test_guided_window_golden(golden, case):
    """Each scheme on a window holding a ground-truth, a generated and two frames to generate:
    the result, the number of model evaluations per step and the set of (noise levels, pose
    dropped) rows the backbone saw agree with their _sample_sequence; history stays identical."""
    g, facts = golden
    spec = dict(facts["cases"][f"window.{case}"])
    name = spec.pop("name")
    guidance = DFoTHistoryGuidance.parse({"name": name, **spec})
    model = StandIn(g, "window")
    ctx, mask = g["window.context"], g["window.mask"]
    gen = torch.Generator().manual_seed(int(g[f"window.{case}.seed"]))
    x = guided_ddim_sample(model, DFoTDiffusion(), ctx, mask, g["window.cond"], guidance, steps=7, generator=gen,
                           history_noise=g["history_noise"])
    close(x, g[f"window.{case}.x"])
    history = mask >= 1
    assert torch.equal(x[history], ctx[history])
    theirs = g[f"window.{case}.noise_levels"]  # [steps, B * branches, T]
    assert len(model.calls) == theirs.shape[0] == 7
    theirs_mask = g[f"window.{case}.cond_mask"]
    for step, call in enumerate(model.calls):
        assert call["noise_levels"].shape == theirs[step].shape
        ours_rows = {(tuple(r.tolist()), bool(m)) for r, m in zip(call["noise_levels"].round(decimals=4),
                                                                   call["mask"])}
        their_rows = {(tuple(r.tolist()), bool(m)) for r, m in zip(theirs[step].round(decimals=4), theirs_mask[step])}
        assert ours_rows == their_rows


def test_branches_by_hand():
    """The branch table of the docstring: levels int(k * 1000 - 1) per history state, pose drops
    and weights; conditional schemes refuse a scale; unknown names and keys are refused."""
    branches = lambda g, states=(1, 2): [(b.levels, b.drop_cond, b.weight) for b in g.branches(states)]  # noqa: E731
    assert branches(DFoTHistoryGuidance()) == [({1: -1, 2: -1}, False, 1.0)]
    assert branches(DFoTHistoryGuidance("vanilla", 1.5)) == [({1: 999, 2: 999}, True, -0.5), ({1: -1, 2: -1}, False, 1.5)]
    assert branches(DFoTHistoryGuidance("stabilized_vanilla", 4.0), (1,)) == [({1: 999}, True, -3.0),
                                                                             ({1: -1}, False, 4.0)]
    assert branches(DFoTHistoryGuidance("stabilized_vanilla", 4.0, 0.02)) == [({1: 999, 2: 999}, True, -3.0),
                                                                             ({1: -1, 2: 19}, False, 4.0)]
    assert branches(DFoTHistoryGuidance("fractional", 3.0, freq_scale=0.5), (1,)) == [
        ({1: 999}, True, -2.0), ({1: -1}, False, 1.0), ({1: 499}, False, 2.0)]
    # no history and no pose guidance: the terms cancel to one plain evaluation
    assert branches(DFoTHistoryGuidance("vanilla", 2.0, use_external_cond_guidance=False), ()) == [({}, False, 1.0)]
    assert branches(DFoTHistoryGuidance("vanilla", 2.0), ()) == [({}, True, -1.0), ({}, False, 2.0)]  # pose CFG
    assert DFoTHistoryGuidance("vanilla", 1.0).branches((1,)) == DFoTHistoryGuidance().branches((1,))
    assert DFoTHistoryGuidance.parse({"name": "vanilla", "guidance_scale": 1.5}).scale == 1.5
    with pytest.raises(ValueError, match="no scale"):
        DFoTHistoryGuidance("conditional", 2.0)
    with pytest.raises(ValueError, match="must be one of"):
        DFoTHistoryGuidance("temporal")
    with pytest.raises(ValueError, match="unknown history guidance keys"):
        DFoTHistoryGuidance.parse({"name": "vanilla", "scael": 2})
    with pytest.raises(ValueError, match="stabilization_level"):
        DFoTHistoryGuidance("stabilized_vanilla", 2.0, stabilization_level=1.5)


def test_conditional_guidance_is_plain_ddim(golden):
    """Conditional guidance on a window of ground-truth history is gfcore's plain DDIM sampler
    (checked against theirs in test_dfot_diffusion.py), bit for bit, with the same noise."""
    g, _ = golden
    ctx, cond = g["window.context"], g["window.cond"]
    states = torch.tensor([[1, 1, 0, 0], [1, 0, 0, 0]])
    d = DFoTDiffusion()
    a = guided_ddim_sample(StandIn(g, "window"), d, ctx, states, cond, None, steps=5,
                           generator=torch.Generator().manual_seed(3))
    b = ddim_sample(StandIn(g, "window"), d, ctx, states >= 1, cond, steps=5, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


def test_guided_history_noise_drawn_from_generator(golden):
    """Without history_noise, noised history is drawn from the generator: the same seed gives the
    same video, another seed another; padding frames keep their initial noise."""
    g, _ = golden
    ctx, cond = g["window.context"], g["window.cond"]
    states = torch.tensor([[1, 2, 0, -1]] * 2)
    guidance = DFoTHistoryGuidance("stabilized_vanilla", 3.0)
    run = lambda seed: guided_ddim_sample(StandIn(g, "window"), DFoTDiffusion(), ctx, states, cond,  # noqa: E731
                                          guidance, steps=3, generator=torch.Generator().manual_seed(seed))
    a, b, c = run(1), run(1), run(2)
    assert torch.equal(a, b) and not torch.equal(a[:, 2], c[:, 2])
    initial = torch.randn(ctx.shape, generator=torch.Generator().manual_seed(1)).clamp(-20, 20)
    assert torch.equal(a[:, 3], initial[:, 3])


def test_guided_window_bad_input(golden):
    g, _ = golden
    ctx = g["window.context"]
    model, d = StandIn(g, "window"), DFoTDiffusion()
    with pytest.raises(ValueError, match="states must be an integer tensor"):
        guided_ddim_sample(model, d, ctx, torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="states must hold"):
        guided_ddim_sample(model, d, ctx, torch.full((2, 4), 3))
    with pytest.raises(ValueError, match="context must be"):
        guided_ddim_sample(model, d, ctx[0], torch.zeros(2, 4, dtype=torch.long))


# ------------------------------------------------------------------------------- protocol

@pytest.mark.parametrize("case", ["keyframes", "sliding"])
def test_protocol_golden(golden, case):
    """Their _predict_videos: keyframes (stabilized vanilla 4) then interpolation (vanilla 1.5,
    2 windows per batch) of 11 frames in windows of 4; and sliding windows (context 2) over 8
    frames with generated history stabilised at level 19. Same initial-noise generator."""
    g, facts = golden
    spec = facts["cases"][f"protocol.{case}"]
    n = spec["n"]
    video, cond = g["protocol.video"][:, :n], g["protocol.cond"][:, :n]
    model = StandIn(g, "protocol")
    x = dfot_long_rollout(model, DFoTDiffusion(), video[:, :1], cond, identity, n, max_tokens=4,
                          keyframe_density=spec["density"] or 1.0, key_guidance=without_visualize(spec["prediction"]),
                          interp_guidance=without_visualize(spec["interpolation"]),
                          steps=spec["steps"], interp_max_batch=spec["max_batch"],
                          sliding_context_len=spec["sliding"],
                          generator=torch.Generator().manual_seed(int(g[f"protocol.{case}.seed"])),
                          history_noise=g["history_noise"])
    close(x, g[f"protocol.{case}.x"])
    assert torch.equal(x[:, 0], video[:, 0])
    assert len(model.calls) == int(g[f"protocol.{case}.calls"])


def test_dfot256_plan_golden(golden):
    """The 256-frame protocol's keyframes (0, 17, ..., 255) and its interpolation windows, as
    their _interpolate_videos cuts and batches them (4 per batch, padded by the last frame)."""
    g, _ = golden
    spec = PROTOCOLS["dfot256"]
    keys = keyframe_indices(spec["num_frames"], spec["keyframe_density"], spec["num_context"])
    assert keys.tolist() == g["dfot256.keyframes"].tolist() == list(range(0, 256, 17))
    known = torch.zeros(256, dtype=torch.bool)
    known[keys] = True
    plan = interpolation_plan(known, spec["max_tokens"])
    windows, masks = [], []
    for stage in plan:
        for frames in stage:
            pad = torch.cat([frames, frames[-1:].expand(spec["max_tokens"] - len(frames))])
            windows.append(pad)
            masks.append(known[pad])
            known[frames] = True
    assert torch.equal(torch.stack(windows), g["dfot256.frames"])
    assert torch.equal(torch.stack(masks).long(), g["dfot256.mask"].long())
    sizes = [min(4, len(stage) - i) for stage in plan for i in range(0, len(stage), 4)]
    assert sizes == g["dfot256.batch_sizes"].tolist()


def test_protocol_progress_and_shapes():
    """dfot256's step counts: one keyframe window (50 steps), then 8 interpolation batches of
    50 steps; progress reaches each stage's total; context returned unchanged."""
    class Tiny(torch.nn.Module):
        def forward(self, x, noise_levels, external_cond=None, external_cond_mask=None):
            return 0.5 * x

    spec = dict(PROTOCOLS["dfot256"])
    seen = {}
    ctx = torch.randn(1, 1, 3, 2, 2)
    out = dfot_long_rollout(Tiny(), DFoTDiffusion(), ctx, torch.zeros(1, 256, 1), identity,
                            spec.pop("num_frames"), progress=lambda s, d, t: seen.__setitem__(s, (d, t)),
                            **{k: v for k, v in spec.items() if k != "num_context"})
    assert out.shape == (1, 256, 3, 2, 2) and torch.equal(out[:, :1], ctx) and out.isfinite().all()
    assert seen == {"keyframes": (50, 50), "interpolation": (400, 400)}


def test_sliding_windows_and_padding():
    """Windows of predict_sequence; a last short window is padded and its padding never enters
    the video."""
    assert sliding_windows(1, 8, 4, 2) == [(1, 1, 3), (4, 2, 2), (6, 2, 2)]
    assert sliding_windows(1, 7, 4, 2) == [(1, 1, 3), (4, 2, 2), (6, 2, 1)]

    class Tiny(torch.nn.Module):
        def forward(self, x, noise_levels, external_cond=None, external_cond_mask=None):
            assert x.shape[1] == 4 and external_cond.shape[1] == 4
            return 0.5 * x

    out = dfot_long_rollout(Tiny(), DFoTDiffusion(), torch.randn(2, 1, 3, 2, 2), torch.randn(2, 7, 1), identity, 7,
                            max_tokens=4, steps=2, sliding_context_len=2, generator=torch.Generator().manual_seed(0))
    assert out.shape == (2, 7, 3, 2, 2) and out.isfinite().all()


def test_protocol_bad_input():
    tiny = lambda x, *a, **k: x  # noqa: E731
    d = DFoTDiffusion()
    with pytest.raises(ValueError, match="conditions must be"):
        dfot_long_rollout(tiny, d, torch.randn(1, 1, 3, 2, 2), torch.randn(1, 5, 1), identity, 6, max_tokens=4)
    with pytest.raises(ValueError, match="context frames"):
        dfot_long_rollout(tiny, d, torch.randn(1, 4, 3, 2, 2), torch.randn(1, 6, 1), identity, 6, max_tokens=4)
    with pytest.raises(ValueError, match="keyframe_density"):
        keyframe_indices(10, 0.0, 1)
    with pytest.raises(ValueError, match="first and the last"):
        interpolation_plan(torch.tensor([True, False, False]), 4)


# ------------------------------------------------------------------------------- edges by hand

class Recorder(torch.nn.Module):
    """v = 0.5 x, and the states / branches seen: guided_ddim_sample is wrapped to record them."""

    def forward(self, x, noise_levels, external_cond=None, external_cond_mask=None):
        return 0.5 * x


def test_history_states_of_each_sliding_window(monkeypatch):
    """3 ground-truth frames, windows of 4 sliding by one: the history of each window is
    ground truth (1) until generated frames (2) enter it, oldest first; the new frame is 0."""
    import gfcore.sample.dfot_protocol as protocol

    seen = []
    real = protocol.guided_ddim_sample

    def spy(model, diffusion, frames, states, *args, **kwargs):
        seen.append(states[0].tolist())
        return real(model, diffusion, frames, states, *args, **kwargs)

    monkeypatch.setattr(protocol, "guided_ddim_sample", spy)
    out = protocol.predict_sequence(Recorder(), DFoTDiffusion(), torch.randn(1, 3, 3, 2, 2), 6,
                                    torch.zeros(1, 6, 1), identity, max_tokens=4, sliding_context_len=3, steps=1)
    assert seen == [[1, 1, 1, 0], [1, 1, 2, 0], [1, 2, 2, 0]]
    assert out.shape[1] == 6
    seen.clear()  # sliding_context_len -1 is max_tokens - 1, as None is when one window suffices
    protocol.predict_sequence(Recorder(), DFoTDiffusion(), torch.randn(1, 3, 3, 2, 2), 6, torch.zeros(1, 6, 1),
                              identity, max_tokens=4, sliding_context_len=-1, steps=1)
    assert seen == [[1, 1, 1, 0], [1, 1, 2, 0], [1, 2, 2, 0]]
    seen.clear()
    protocol.predict_sequence(Recorder(), DFoTDiffusion(), torch.randn(1, 3, 3, 2, 2), 4, torch.zeros(1, 4, 1),
                              identity, max_tokens=4, steps=1)
    assert seen == [[1, 1, 1, 0]]


def test_predict_sequence_checks_its_window_settings():
    d, ctx = DFoTDiffusion(), torch.randn(1, 2, 3, 2, 2)
    run = lambda length, sliding, cond=None: dfot_predict(d, ctx, length, sliding, cond)  # noqa: E731
    assert run(6, 2).shape[1] == 6  # the history may be just the given frames
    with pytest.raises(ValueError, match=r"^sliding_context_len must lie in \[context frames 2, max_tokens - 1 = 3\], "
                                         r"got 4$"):
        run(6, 4)
    with pytest.raises(ValueError, match=r"^sliding_context_len must lie in .*got 1$"):
        run(6, 1)
    with pytest.raises(ValueError, match=r"^length 6 > max_tokens 4: give sliding_context_len$"):
        run(6, None)
    with pytest.raises(ValueError, match=r"^conditions must cover the 6 frames, got 5$"):
        run(6, 2, torch.zeros(1, 5, 1))


def dfot_predict(d, ctx, length, sliding, cond=None):
    from gfcore.sample.dfot_protocol import predict_sequence

    cond = torch.zeros(1, length, 1) if cond is None else cond
    return predict_sequence(Recorder(), d, ctx, length, cond, identity, max_tokens=4, sliding_context_len=sliding,
                            steps=1)


def test_interpolation_batches_and_progress():
    """max_batch None: all of a stage's windows in one call (so the same noise as max_batch = their
    number, and not as smaller batches); the progress total counts calls x steps for 2 clips."""
    from gfcore.sample.dfot_protocol import interpolate

    known = torch.zeros(19, dtype=torch.bool)
    known[::3] = True  # 6 gaps of 2 frames: 6 windows of 4 frames, 12 for the 2 clips
    # 3 x 3 frames, 3 windows a call: a call's noise (324 values) is not a multiple of torch's
    # 16-value normal blocks, so drawing it in other batches gives other values
    video, cond = torch.randn(2, 19, 3, 3, 3), torch.zeros(2, 19, 1)
    totals = {}
    run = lambda max_batch: interpolate(Recorder(), DFoTDiffusion(), video, known, cond, identity, 4,  # noqa: E731
                                        steps=2, max_batch=max_batch, generator=torch.Generator().manual_seed(0),
                                        progress=lambda s, d, t: totals.__setitem__(max_batch, (d, t)))
    windows = sum(len(stage) for stage in interpolation_plan(known, 4))
    assert 2 * windows > 4
    whole, same, split = run(None), run(2 * windows), run(3)
    assert torch.equal(whole, same) and not torch.equal(whole, split)
    stages = len(interpolation_plan(known, 4))
    assert totals[None] == (2 * stages, 2 * stages)
    assert totals[3][1] == 2 * sum(-(-2 * len(stage) // 3) for stage in interpolation_plan(known, 4))
    assert torch.equal(whole[:, known], video[:, known])


def test_ddim_step_defaults_and_edges():
    """steps 50 and eta 0 by default; a step to level 0 (not on the DDIM grid, but allowed) uses
    alphas_cumprod[0], not 1; eta > 0 without noise draws it from the generator (clamped N(0, 1));
    the shape checks name both level tensors and the model output."""
    from gfcore.sample.ddim import ddim_noise_levels, ddim_step

    assert len(ddim_noise_levels()) == 51
    d = DFoTDiffusion()
    model = Recorder()
    x = torch.randn(1, 3, 3, 2, 2)
    curr, nxt = torch.tensor([[19, 19, 5]]), torch.tensor([[0, -1, 0]])
    assert torch.equal(ddim_step(model, d, x, curr, nxt), ddim_step(model, d, x, curr, nxt, eta=0.0))
    out = ddim_step(model, d, x, curr, nxt)
    a, a0 = d.alphas_cumprod[19], d.alphas_cumprod[0]
    v = 0.5 * x[:, 0]
    x0 = a.sqrt() * x[:, 0] - (1 - a).sqrt() * v
    eps = a.sqrt() * v + (1 - a).sqrt() * x[:, 0]
    torch.testing.assert_close(out[:, 0], a0.sqrt() * x0 + (1 - a0).sqrt() * eps, rtol=1e-6, atol=1e-6)
    z = torch.randn(x.shape, generator=torch.Generator().manual_seed(5))
    drawn = ddim_step(model, d, x, curr, nxt, eta=0.7, generator=torch.Generator().manual_seed(5))
    given = ddim_step(model, d, x, curr, nxt, eta=0.7, noise=z)
    assert torch.equal(drawn, given) and not torch.equal(drawn, out)
    with pytest.raises(ValueError, match=r"^curr and nxt must be \[B, T\] = \[1, 3\], got \[1, 3\] and \[1, 2\]$"):
        ddim_step(model, d, x, curr, nxt[:, :2])
    with pytest.raises(ValueError, match=r"^curr and nxt must be \[B, T\] = \[1, 3\], got \[1, 2\] and \[1, 3\]$"):
        ddim_step(model, d, x, curr[:, :2], nxt)
    with pytest.raises(ValueError, match=r"^model output must have the shape of x \[1, 3, 3, 2, 2\], got \[1, 3, 3, 2\]$"):
        ddim_step(lambda x, *a: x[..., 0], d, x, curr, nxt)


def test_guidance_fields_at_their_bounds():
    assert DFoTHistoryGuidance("stabilized_vanilla", 2.0, stabilization_level=0.0).stabilization_level == 0.0
    assert DFoTHistoryGuidance("fractional", 2.0, freq_scale=1.0).freq_scale == 1.0
    assert DFoTHistoryGuidance.parse("stabilized_vanilla").name == "stabilized_vanilla"
    with pytest.raises(ValueError, match=r"^keyframe_density must lie in \(0, 1\], got 1.5$"):
        keyframe_indices(10, 1.5, 1)
    with pytest.raises(ValueError, match="^interpolation needs the first and the last frame known$"):
        interpolation_plan(torch.tensor([False, False, True]), 4)


def test_float64_rollouts_stay_float64_and_draw_in_float64():
    """A float64 clip is sampled in float64: windows, noise (initial, history, eta) drawn in the
    clip's dtype from the generator, context returned bit-identical; 50 steps by default."""
    from gfcore.sample.ddim import ddim_step
    from gfcore.sample.dfot_protocol import interpolate, predict_sequence

    d, ctx = DFoTDiffusion(), torch.randn(1, 1, 3, 2, 2, dtype=torch.float64)
    seen = {}
    out = dfot_long_rollout(Recorder(), d, ctx, torch.zeros(1, 7, 1), identity, 7, max_tokens=4,
                            keyframe_density=0.5, key_guidance=DFoTHistoryGuidance("vanilla", 2.0),
                            generator=torch.Generator().manual_seed(0),
                            progress=lambda s, done, total: seen.__setitem__(s, total))
    assert out.dtype == torch.float64 and torch.equal(out[:, :1], ctx)
    # keyframes (2, 4, 6) computed in float64, not in float32 and promoted: values float32 cannot hold
    keys = out[:, [2, 4, 6]]
    assert not torch.equal(keys, keys.float().double())
    assert seen == {"keyframes": 50, "interpolation": 50 * len(interpolation_plan(
        torch.tensor([True, False, True, False, True, False, True]), 4))}
    states = torch.tensor([[1, 0, 0, 0]])
    noise = torch.randn(1, 4, 3, 2, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    drawn = guided_ddim_sample(Recorder(), d, torch.cat([ctx, ctx, ctx, ctx], 1), states, steps=2,
                               generator=torch.Generator().manual_seed(3))
    given = guided_ddim_sample(Recorder(), d, torch.cat([ctx, ctx, ctx, ctx], 1), states, steps=2, noise=noise)
    assert drawn.dtype == torch.float64 and torch.equal(drawn, given)
    x = torch.randn(1, 2, 3, 2, 2, dtype=torch.float64)
    curr, nxt = torch.tensor([[19, 39]]), torch.tensor([[-1, 19]])
    z = torch.randn(x.shape, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    assert torch.equal(ddim_step(Recorder(), d, x, curr, nxt, eta=0.5, generator=torch.Generator().manual_seed(4)),
                       ddim_step(Recorder(), d, x, curr, nxt, eta=0.5, noise=z))
    counted = {}
    predict_sequence(Recorder(), d, ctx.float(), 4, torch.zeros(1, 4, 1), identity, 4,
                     progress=lambda s, done, total: counted.__setitem__("p", total))
    interpolate(Recorder(), d, torch.zeros(1, 4, 3, 2, 2), torch.tensor([True, False, False, True]),
                torch.zeros(1, 4, 1), identity, 4, progress=lambda s, done, total: counted.__setitem__("i", total))
    assert counted == {"p": 50, "i": 50}


# ------------------------------------------------------------ RealEstate10K clips (ProtocolClips)

# protocol_selection of three 12-frame videos, 8-frame clips, by hand: cumulative clip numbers
# 5, 10, 15; random.Random(0) draws 3, 8, 10 (randrange(0, 5), (5, 10), (10, 15)) and shuffles them
# to 3, 10, 8: (video 0, start 3), (video 2, start 0), (video 1, start 3).
CHOSEN_3X12_8 = [(0, 3), (2, 0), (1, 3)]


def _two_layouts(root):
    """The built-in scenes' test split in the raw layout (test/{key}.txt + {key}.mp4, 3 clips x 12
    frames, 16 px; beside it an empty test_256 folder without test_poses) and the same clips in
    DFoT's layout (test_256/{key}.mp4, test_poses/{key}.pt holding the camera rows [T, 18])."""
    import shutil

    from gfcore.data.camera_file import read_camera_file
    from gfcore.data.synthetic import generate

    raw, dfot = root / "raw", root / "dfot"
    generate(str(raw), num_clips=3, num_frames=12, resolution=16, seed=1, task="camera", split="test")
    (raw / "test_256").mkdir()
    (dfot / "test_256").mkdir(parents=True)
    (dfot / "test_poses").mkdir()
    for txt in sorted((raw / "test").glob("*.txt")):
        shutil.copy(txt.with_suffix(".mp4"), dfot / "test_256" / f"{txt.stem}.mp4")
        torch.save(torch.as_tensor(read_camera_file(str(txt)).rows).float(), dfot / "test_poses" / f"{txt.stem}.pt")
    return raw, dfot


def test_protocol_clips_of_both_layouts(tmp_path):
    """ProtocolClips on the raw layout and on DFoT's: the clips chosen (the authors' random
    starts by default, frame 0 with first_frames), each clip's name, video file, frames, model
    input (from_unit) and poses, read here from the files themselves."""
    import shutil
    from types import SimpleNamespace

    from gfcore.data.camera_file import read_camera_file
    from gfcore.data.dfot_re10k import frames_to_unit, pose_from_rows
    from gfcore.data.video import read_video
    from gfcore.sample.dfot_run import ProtocolClips

    raw, dfot = _two_layouts(tmp_path)
    keys = sorted(p.stem for p in (raw / "test").glob("*.txt"))
    source = SimpleNamespace(from_unit=lambda x: x * 2 - 1)
    for root, layout, folder in ((raw, "raw", raw / "test"), (dfot, "dfot", dfot / "test_256")):
        clips = ProtocolClips(str(root), "test", num_frames=8, resolution=16, num_clips=None)
        assert clips.layout == layout and clips.chosen == CHOSEN_3X12_8 and clips.lengths == [12, 12, 12]
        assert ProtocolClips(str(root), "test", 8, 16, None, first_frames=True).chosen == [(0, 0), (1, 0), (2, 0)]
        assert len(ProtocolClips(str(root), "test", 8, 16, 2)) == 2
        for index, (video, start) in enumerate(CHOSEN_3X12_8):
            key = keys[video]
            assert clips.name(index) == key
            clips.check(index)
            clip = clips.clip(index, source)
            video_file = str(folder / f"{key}.mp4")
            reference = read_video(video_file)[start:start + 8]
            assert (clip.name, clip.source) == (key, video_file)
            assert np.array_equal(clip.reference, reference)
            assert torch.equal(clip.frames, frames_to_unit(reference) * 2 - 1)
            rows = read_camera_file(str(raw / "test" / f"{key}.txt")).rows
            assert torch.equal(clip.pose, pose_from_rows(rows)[start:start + 8])
    # a split name DFoT's layout has no alias for is its own folder prefix: extra_256, extra_poses
    shutil.copytree(dfot / "test_256", dfot / "extra_256")
    shutil.copytree(dfot / "test_poses", dfot / "extra_poses")
    clips = ProtocolClips(str(dfot), "extra", 8, 16, None)
    assert clips.layout == "dfot" and clips.clip(1, source).source == str(dfot / "extra_256" / f"{keys[2]}.mp4")


def test_protocol_clips_refusals_name_the_file(tmp_path):
    import argparse
    import re

    from gfcore.data.errors import DataError
    from gfcore.sample.dfot_run import ProtocolClips

    raw, dfot = _two_layouts(tmp_path)
    keys = sorted(p.stem for p in (raw / "test").glob("*.txt"))
    with pytest.raises(DataError, match=re.escape(f"{tmp_path}: no RealEstate10K split 'test': expected "
                                                  f"{tmp_path / 'test_256'} with {tmp_path / 'test_poses'}")):
        ProtocolClips(str(tmp_path), "test", 8, 16, None)
    (tmp_path / "empty" / "test").mkdir(parents=True)
    with pytest.raises(DataError, match=re.escape(f"{tmp_path / 'empty'}: the split 'test' holds no clips (raw layout)")):
        ProtocolClips(str(tmp_path / "empty"), "test", 8, 16, None)
    (tmp_path / "empty" / "test_256").mkdir()
    (tmp_path / "empty" / "test_poses").mkdir()
    with pytest.raises(DataError, match=re.escape(f"{tmp_path / 'empty'}: the split 'test' holds no clips (dfot layout)")):
        ProtocolClips(str(tmp_path / "empty"), "test", 8, 16, None)

    # raw layout: a camera file without its video
    first = keys[CHOSEN_3X12_8[0][0]]
    (raw / "test" / f"{first}.mp4").unlink()
    clips = ProtocolClips(str(raw), "test", 8, 16, None)
    with pytest.raises(DataError, match=re.escape(f"{raw / 'test' / first}.txt: no video {raw / 'test' / first}.mp4")):
        clips.check(0)

    # DFoT's layout: pose files missing, of the wrong type, refused, mis-shaped, too short
    clips = ProtocolClips(str(dfot), "test", 8, 16, None)
    pose, video = dfot / "test_poses" / f"{first}.pt", dfot / "test_256" / f"{first}.mp4"
    torch.save(torch.zeros(11, 18), pose)
    with pytest.raises(DataError, match=re.escape(f"{video}: 11 poses for the 12 frames of {video}")):
        clips.check(0)
    torch.save(torch.zeros(12, 17), pose)
    with pytest.raises(Exception, match=re.escape(str(pose))):
        clips.check(0)
    torch.save({"rows": torch.zeros(12, 18)}, pose)
    with pytest.raises(DataError, match=re.escape(f"{pose}: expected a tensor of camera rows [T, 18], got dict")):
        clips.check(0)
    torch.save(argparse.Namespace(rows=1), pose)
    with pytest.raises(DataError, match=re.escape(f"{pose}: cannot load poses (UnsafeFileError: pose file '{pose}'")):
        clips.check(0)
    pose.unlink()
    with pytest.raises(DataError, match=re.escape(f"{pose}: cannot load poses (FileNotFoundError: ") + r".*No such file"):
        clips.check(0)


def test_dfot_source_from_unit():
    """[0, 1] frames -> the model's input: 2x - 1 for input_norm none, DFoT's per-channel
    (x - mean) / std otherwise (mean 0.577 0.517 0.461, std 0.249 0.249 0.268)."""
    from types import SimpleNamespace

    from gfcore.sample.dfot_run import DFoTSource

    x = torch.tensor([0.0, 0.25, 1.0]).view(1, 3, 1, 1).expand(1, 3, 1, 2)
    close(DFoTSource.from_unit(SimpleNamespace(input_norm="none"), x), torch.tensor([-1.0, -0.5, 1.0]).view(1, 3, 1, 1).expand(1, 3, 1, 2))
    expected = torch.tensor([(0.0 - 0.577) / 0.249, (0.25 - 0.517) / 0.249, (1.0 - 0.461) / 0.268])
    close(DFoTSource.from_unit(SimpleNamespace(input_norm="dfot"), x), expected.view(1, 3, 1, 1).expand(1, 3, 1, 2))


def test_check_out_refuses_any_earlier_evaluation_part(tmp_path):
    """gfcore eval --protocol's --out check: a generated/ or reference/ folder or results.json of an
    earlier evaluation is refused by name (--overwrite removes it)."""
    import re
    from pathlib import Path
    from types import SimpleNamespace

    from gfcore.metrics.protocol import _check_out
    from gfcore.sample.dfot_run import SampleError

    for part in ("generated", "reference", "results.json"):
        out = Path(tmp_path / part.replace(".", "_"))
        (out / part).mkdir(parents=True)
        args = SimpleNamespace(out=out, overwrite=False, resume=False)
        with pytest.raises(SampleError, match=re.escape(f"{out} already holds an evaluation ({out / part}): --resume")):
            _check_out(args, {})
        _check_out(SimpleNamespace(out=out, overwrite=True, resume=False), {})
        assert list(out.iterdir()) == []
