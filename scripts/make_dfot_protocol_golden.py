"""Make the facts of DFoT's history guidance and long-rollout protocol that
python_tests/test_dfot_protocol.py checks gfcore against: the authors' HistoryGuidance schemes in
DFoTVideo._sample_sequence, and _predict_videos / _predict_sequence / _interpolate_videos with
the keyframe-then-interpolate settings of their scripts/eval_geometry_forcing.sh.

Never run in CI. As scripts/make_dfot_diffusion_golden.py (whose importer, stand-in backbone
and namespace it reuses; see there for what is stubbed):

    git -C <mirror of CIntellifusion/GeometryForcing> archive HEAD algorithms configurations utils \\
        | tar -x -C /tmp/gf_authors
    PYTHONPATH=/tmp/dfot_extra python scripts/make_dfot_protocol_golden.py --authors /tmp/gf_authors \\
        --out python_tests/data/dfot_protocol_golden.npz

What runs of theirs, unmodified: HistoryGuidance (from_config, both managers), DFoTVideo
._sample_sequence, _predict_videos, _predict_sequence, _interpolate_videos, _pad_to_max_tokens,
_generate_scheduling_matrix, and ContinuousDiffusion's DDIM step, with the stand-in backbone.
One thing is fixed in this process only: the noise of their q_sample, which noises history
frames, is a constant pattern [C, H, W] (stored) instead of draws from torch's global RNG, so
that gfcore (given the same pattern as history_noise) must reproduce every value; their
initial noise comes from the sampling generator, as gfcore's does.
"""
from __future__ import annotations

import argparse
import json
import sys
import types
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_dfot_diffusion_golden import (_NoBar, build_diffusion, compose_re10k, fake_algo,  # noqa: E402
                                        import_authors, random_standin)

C, H, W, K = 3, 4, 4, 2  # K: channels of the stand-in's external condition


def protocol_algo(DFoTVideo, algo, diffusion, *, max_tokens, n_context, generator, prediction, interpolation):
    """fake_algo plus what _predict_videos / _interpolate_videos read."""
    from omegaconf import OmegaConf

    fake = fake_algo(DFoTVideo, algo, diffusion, x_shape=(C, H, W), n_frames=max_tokens, n_context=n_context,
                     generator=generator)
    cfg = OmegaConf.to_container(fake.cfg, resolve=True)
    cfg["tasks"]["prediction"].update(prediction)
    cfg["tasks"]["interpolation"].update(interpolation)
    fake.cfg = OmegaConf.create(cfg)
    fake.chunk_size = -1
    for name in ("_predict_videos", "_predict_sequence", "_interpolate_videos", "_pad_to_max_tokens"):
        setattr(fake, name, types.MethodType(getattr(DFoTVideo, name), fake))
    return fake


def guidance_cfg(name, **kw):
    return {"name": name, "visualize": False, **kw}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--authors", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    ContinuousDiffusion, DFoTVideo, _ = import_authors(args.authors)
    from algorithms.dfot.diffusion.discrete_diffusion import DiscreteDiffusion
    algo = compose_re10k(args.authors)

    gen = torch.Generator().manual_seed(20251)
    pattern = torch.randn(C, H, W, generator=gen)
    out = {"history_noise": pattern}
    facts = {"source": "CIntellifusion/GeometryForcing algorithms/dfot (DFoTVideo._sample_sequence, _predict_videos, "
                       "_predict_sequence, _interpolate_videos; HistoryGuidance); settings of "
                       "scripts/eval_geometry_forcing.sh for the protocol", "cases": {}}

    def standin_for(tokens):
        return random_standin(gen, tokens, C)

    def diffusion_with(standin, steps):
        d = build_diffusion(ContinuousDiffusion, algo, standin, sampling_timesteps=steps)
        # their q_sample with the stored noise pattern instead of global-RNG draws (this process only)
        d.q_sample = lambda x_start, k, noise=None: DiscreteDiffusion.q_sample(d, x_start, k,
                                                                               noise=pattern.expand_as(x_start))
        return d

    # 1. one window, each scheme (a ground-truth, a generated and two frames to generate)
    T, B, steps = 4, 2, 7
    standin = standin_for(T)
    out.update({"window.w": standin.w, "window.a": standin.a, "window.b": standin.b})
    context = torch.randn(B, T, C, H, W, generator=gen)
    cond = torch.randn(B, T, K, H, W, generator=gen)
    mask = torch.tensor([[1, 2, 0, 0]] * B)
    out.update({"window.context": context, "window.cond": cond, "window.mask": mask})
    schemes = {"conditional": {}, "vanilla": {"guidance_scale": 1.5}, "vanilla_nocond": {
        "guidance_scale": 2.0, "use_external_cond_guidance": False},
        "stabilized_vanilla": {"guidance_scale": 4.0, "stabilization_level": 0.02},
        "stabilized_conditional": {"stabilization_level": 0.1},
        "fractional": {"guidance_scale": 3.0, "freq_scale": 0.5},
        "stabilized_fractional": {"guidance_scale": 3.0, "freq_scale": 0.3, "stabilization_level": 0.05}}
    for i, (case, kw) in enumerate(schemes.items()):
        name = case.removesuffix("_nocond")
        d = diffusion_with(standin, steps)
        fake = protocol_algo(DFoTVideo, algo, d, max_tokens=T, n_context=0, generator=None, prediction={},
                             interpolation={})
        from algorithms.dfot.history_guidance import HistoryGuidance
        from omegaconf import OmegaConf
        hg = HistoryGuidance.from_config(OmegaConf.create(guidance_cfg(name, **kw)), timesteps=1000)
        fake.generator = torch.Generator().manual_seed(500 + i)
        standin.calls.clear()
        with torch.no_grad():
            xs, _ = fake._sample_sequence(B, length=T, context=context, context_mask=mask.clone(), conditions=cond,
                                          history_guidance=hg, pbar=_NoBar())
        out[f"window.{case}.x"] = xs
        out[f"window.{case}.seed"] = torch.tensor(500 + i)
        out[f"window.{case}.noise_levels"] = torch.stack([c["noise_levels"] for c in standin.calls])
        masks = [c["external_cond_mask"] for c in standin.calls]
        out[f"window.{case}.cond_mask"] = (torch.stack(masks) if masks[0] is not None
                                           else torch.zeros(len(masks), standin.calls[0]["x"].shape[0], dtype=torch.bool))
        facts["cases"][f"window.{case}"] = {"name": name, **kw}

    # 2. the protocol: keyframes then interpolation (reduced: 11 frames, windows of 4)
    N, T, B = 11, 4, 2
    standin = standin_for(T)
    out.update({"protocol.w": standin.w, "protocol.a": standin.a, "protocol.b": standin.b})
    video = torch.randn(B, N, C, H, W, generator=gen)
    cond = torch.randn(B, N, K, H, W, generator=gen)
    out.update({"protocol.video": video, "protocol.cond": cond})
    runs = {
        "keyframes": dict(density=4 / 11, n=N, steps=5, prediction=guidance_cfg("stabilized_vanilla", guidance_scale=4.0,
                                                                                 stabilization_level=0.02),
                          interpolation=guidance_cfg("vanilla", guidance_scale=1.5), max_batch=2, sliding=None),
        "sliding": dict(density=None, n=8, steps=4, prediction=guidance_cfg("stabilized_vanilla", guidance_scale=4.0,
                                                                             stabilization_level=0.02),
                        interpolation=guidance_cfg("conditional"), max_batch=None, sliding=2),
    }
    for i, (case, r) in enumerate(runs.items()):
        d = diffusion_with(standin, r["steps"])
        fake = protocol_algo(DFoTVideo, algo, d, max_tokens=T, n_context=1,
                             generator=torch.Generator().manual_seed(600 + i),
                             prediction={"history_guidance": r["prediction"], "keyframe_density": r["density"],
                                         "sliding_context_len": r["sliding"]},
                             interpolation={"history_guidance": r["interpolation"], "max_batch_size": r["max_batch"]})
        standin.calls.clear()
        with torch.no_grad():
            xs = fake._predict_videos(video[:, :r["n"]].clone(), conditions=cond[:, :r["n"]])
        out[f"protocol.{case}.x"] = xs
        out[f"protocol.{case}.seed"] = torch.tensor(600 + i)
        out[f"protocol.{case}.calls"] = torch.tensor(len(standin.calls))
        facts["cases"][f"protocol.{case}"] = {k: v for k, v in r.items()}

    # 3. the plan of the 256-frame protocol: which frames each interpolation call takes
    N, T = 256, 16
    ids = torch.arange(N, dtype=torch.float32).reshape(1, N, 1, 1, 1)
    calls = []

    def record(self, batch_size, length=None, context=None, context_mask=None, **kwargs):
        calls.append((context[:, :, 0, 0, 0].round().long().clone(), context_mask.clone()))
        return context, None

    d = diffusion_with(standin_for(2), 50)
    fake = protocol_algo(DFoTVideo, algo, d, max_tokens=T, n_context=1, generator=None,
                         prediction={}, interpolation={"history_guidance": guidance_cfg("vanilla", guidance_scale=1.5),
                                                       "max_batch_size": 4})
    fake.x_shape = [1, 1, 1]
    fake._sample_sequence = types.MethodType(record, fake)
    keys = torch.linspace(0, N - 1, round(0.0625 * N)).round().long()
    keys = torch.cat([torch.arange(1), keys]).unique()
    known = torch.zeros(1, N, dtype=torch.bool)
    known[:, keys] = True
    # conditions given: with None their batch loop zips with a list of len // max_batch_size Nones and
    # drops the last, partial batch of each stage
    fake._interpolate_videos(ids.clone(), context_mask=known, conditions=ids.reshape(1, N, 1).clone())
    out["dfot256.keyframes"] = keys
    out["dfot256.frames"] = torch.cat([c[0] for c in calls])
    out["dfot256.mask"] = torch.cat([c[1] for c in calls])
    out["dfot256.batch_sizes"] = torch.tensor([c[0].shape[0] for c in calls])

    arrays = {k: (v.numpy() if isinstance(v, torch.Tensor) else v) for k, v in out.items()}
    arrays["facts"] = np.array(json.dumps(facts))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, **arrays)
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes, {len(arrays)} arrays)")
    print(json.dumps(facts, indent=1))
    print("dfot256 interpolation calls:", out["dfot256.batch_sizes"].tolist())


if __name__ == "__main__":
    main()
