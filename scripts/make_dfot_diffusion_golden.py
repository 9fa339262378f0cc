"""Make the DFoT diffusion facts that python_tests/test_dfot_diffusion.py checks gfcore against:
the continuous-time training objective and the DDIM sampler of the Geometry Forcing authors'
code (which vendors DFoT under algorithms/dfot/), run with a small stand-in backbone.

Never run in CI:

    git -C <mirror of CIntellifusion/GeometryForcing> archive HEAD algorithms configurations utils \\
        | tar -x -C /tmp/gf_authors
    PYTHONPATH=/tmp/dfot_extra python scripts/make_dfot_diffusion_golden.py --authors /tmp/gf_authors \\
        --out python_tests/data/dfot_diffusion_golden.npz

(/tmp/dfot_extra: `pip install --target /tmp/dfot_extra --no-deps rotary_embedding_torch roma`, as
for scripts/make_dfot_golden.py.) Their code also needs torch, einops, omegaconf, hydra-core,
diffusers and timm. Nothing of theirs is edited. Their package __init__ files are bypassed
(packages registered by path), and the names their modules import at module level but the
methods run here never use are stubbed: lightning (STEP_OUTPUT, grad_norm, rank_zero_only,
Logger), wandb, transformers.get_scheduler, colorama, algorithms.common.* (BasePytorchAlgo,
metrics), algorithms.vae, utils.logging_utils, utils.distributed_utils, external
(VGGTAlignmentLoss).

What runs of theirs, unmodified:
  - ContinuousDiffusion (built from their composed RE10K config: dataset=realestate10k
    algorithm=dfot_geometry_forcing experiment=video_generation @diffusion/continuous) with its
    backbone replaced by the stand-in below (DiscreteDiffusion._build_model is patched in this
    process only, so that their 459M-parameter backbone is not built): training_schedule,
    forward, forward_with_alignment_loss, the discrete buffers, ddim_idx_to_noise_level,
    ddim_sample_step.
  - DFoTVideo._get_training_noise_levels, _reweight_loss, _generate_scheduling_matrix,
    _sample_sequence, _extend_x_dim, called on a namespace holding the attributes they read;
    _process_conditions is the identity there (gfcore's sampler takes the processed ray map;
    their ray map is checked by make_dfot_golden.py). HistoryGuidance is theirs (the default
    conditional guidance of _sample_sequence).

Stand-in backbone (the test rebuilds it from the stored W, a, b):
    v = W @ x (over frames x channels, per pixel) + a_c * noise_levels + b_c * sum_k cond_k,
    the cond term zeroed for samples where external_cond_mask is True.
"""
from __future__ import annotations

import argparse
import json
import sys
import types
from pathlib import Path

import numpy as np
import torch


# ---------------------------------------------------------------------------------------------
# importing their code without its training stack
# ---------------------------------------------------------------------------------------------

def _package(name: str, path: Path) -> None:
    """Register a package by path without running its __init__.py."""
    module = types.ModuleType(name)
    module.__path__ = [str(path)]
    sys.modules[name] = module


def _stub(name: str, **attrs) -> None:
    module = types.ModuleType(name)
    module.__dict__.update(attrs)
    sys.modules[name] = module


class _Anything:
    def __getattr__(self, name):
        return ""


def import_authors(root: Path):
    root = root.resolve()
    sys.path.insert(0, str(root))
    _package("algorithms", root / "algorithms")
    _package("algorithms.dfot", root / "algorithms" / "dfot")
    # before the stubs below (diffusers, imported by their backbones, looks packages up by spec)
    from algorithms.dfot.diffusion import discrete_diffusion, continuous_diffusion
    # module-level imports of dfot_video.py / history_guidance.py / dfot_video_pose.py that the
    # methods run here never use
    for name in ("lightning", "lightning.pytorch", "lightning.pytorch.utilities", "lightning.pytorch.loggers"):
        _package(name, root / "__none__")
    _stub("lightning.pytorch.utilities.types", STEP_OUTPUT=object)
    sys.modules["lightning.pytorch.utilities"].grad_norm = None
    _stub("lightning.pytorch.utilities.rank_zero", rank_zero_only=lambda f: f)
    _stub("lightning.pytorch.loggers.logger", Logger=object)
    _stub("wandb")
    _stub("transformers", get_scheduler=None)
    _stub("colorama", Fore=_Anything())
    _package("algorithms.common", root / "__none__")
    _stub("algorithms.common.base_pytorch_algo", BasePytorchAlgo=object)
    _package("algorithms.common.metrics", root / "__none__")
    _stub("algorithms.common.metrics.video", VideoMetric=None, SharedVideoMetricModelRegistry=None)
    _stub("algorithms.vae", ImageVAE=None, VideoVAE=None)
    _stub("utils.logging_utils", log_video=None)
    _stub("utils.distributed_utils", rank_zero_print=print, is_rank_zero=True)
    _stub("external", VGGTAlignmentLoss=None)

    # their backbone is not built (the stand-in replaces it): patched in this process only
    discrete_diffusion.DiscreteDiffusion._build_model = lambda self: None
    from algorithms.dfot.dfot_video import DFoTVideo
    from algorithms.dfot.dfot_video_pose import DFoTVideoPose
    return continuous_diffusion.ContinuousDiffusion, DFoTVideo, DFoTVideoPose


def compose_re10k(root: Path):
    from hydra import compose, initialize_config_dir
    from utils.hydra_utils import unwrap_shortcuts  # theirs

    config_dir = str((root / "configurations").resolve())
    argv = ["main.py", "+name=RE10k", "dataset=realestate10k", "algorithm=dfot_geometry_forcing",
            "experiment=video_generation", "@diffusion/continuous"]  # scripts/train_geometry_forcing.sh
    argv = unwrap_shortcuts(argv, config_path=config_dir, config_name="config")
    with initialize_config_dir(config_dir=config_dir, version_base=None):
        cfg = compose(config_name="config", overrides=argv[1:])
    return cfg.algorithm


# ---------------------------------------------------------------------------------------------
# stand-in backbone
# ---------------------------------------------------------------------------------------------

class StandIn(torch.nn.Module):
    def __init__(self, w: torch.Tensor, a: torch.Tensor, b: torch.Tensor):
        super().__init__()
        self.w, self.a, self.b = w, a, b
        self.calls = []

    def forward(self, x, noise_levels, external_cond=None, external_cond_mask=None, return_latents=False):
        self.calls.append({"x": x.clone(), "noise_levels": noise_levels.clone(),
                           "external_cond_mask": None if external_cond_mask is None else external_cond_mask.clone()})
        b, t, c, h, w = x.shape
        out = torch.einsum("oi,bihw->bohw", self.w, x.reshape(b, t * c, h, w)).reshape(b, t, c, h, w)
        out = out + self.a[None, None, :, None, None] * noise_levels[:, :, None, None, None]
        if external_cond is not None:
            cond = external_cond.sum(2, keepdim=True)
            if external_cond_mask is not None:
                cond = cond * (~external_cond_mask.bool()).float()[:, None, None, None, None]
            out = out + self.b[None, None, :, None, None] * cond
        return (out, [out.mean(2)]) if return_latents else out


def random_standin(gen: torch.Generator, tokens: int, channels: int) -> StandIn:
    """A stand-in over `tokens` frames of `channels` channels, its W, a, b drawn from gen."""
    w = torch.randn(tokens * channels, tokens * channels, generator=gen) * (0.6 / (tokens * channels) ** 0.5)
    a = torch.randn(channels, generator=gen) * 0.3
    b = torch.randn(channels, generator=gen) * 0.2
    return StandIn(w, a, b)


def build_diffusion(ContinuousDiffusion, algo, standin, sampling_timesteps=None):
    from omegaconf import OmegaConf, open_dict
    cfg = OmegaConf.create(OmegaConf.to_container(algo.diffusion, resolve=True))
    if sampling_timesteps is not None:
        with open_dict(cfg):
            cfg.sampling_timesteps = sampling_timesteps
    x_shape = [int(v) for v in algo.x_shape]
    diffusion = ContinuousDiffusion(cfg=cfg, backbone_cfg=algo.backbone, x_shape=x_shape, max_tokens=16,
                                    external_cond_dim=int(algo.external_cond_dim))
    diffusion.model = standin
    return diffusion


def fake_algo(DFoTVideo, algo, diffusion, *, x_shape, n_frames, n_context=0, fixed_context=None, generator=None):
    """The attributes DFoTVideo's training / sampling methods read, with their values for RE10K."""
    from omegaconf import OmegaConf
    cfg = OmegaConf.create(OmegaConf.to_container(algo, resolve=True))
    if fixed_context is not None:
        cfg.fixed_context = fixed_context
    fake = types.SimpleNamespace(
        cfg=cfg, timesteps=int(cfg.diffusion.timesteps), sampling_timesteps=diffusion.sampling_timesteps,
        clip_noise=float(cfg.diffusion.clip_noise), x_shape=list(x_shape), max_tokens=n_frames,
        use_causal_mask=bool(cfg.diffusion.use_causal_mask), device=torch.device("cpu"), generator=generator,
        n_context_tokens=n_context, trainer=types.SimpleNamespace(training=True), diffusion_model=diffusion,
        is_full_sequence=(cfg.noise_level == "random_uniform" and not cfg.fixed_context.enabled
                          and not cfg.variable_context.enabled),
    )
    for name in ("_extend_x_dim", "_generate_scheduling_matrix", "_get_training_noise_levels", "_sample_sequence"):
        setattr(fake, name, types.MethodType(getattr(DFoTVideo, name), fake))
    fake._process_conditions = lambda conditions, noise_levels=None: conditions
    return fake


# ---------------------------------------------------------------------------------------------
# goldens
# ---------------------------------------------------------------------------------------------

B, T, C, H, W, K = 2, 4, 3, 4, 4, 2  # K: channels of the stand-in's external_cond


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--authors", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    ContinuousDiffusion, DFoTVideo, DFoTVideoPose = import_authors(args.authors)
    algo = compose_re10k(args.authors)
    from omegaconf import OmegaConf

    gen = torch.Generator().manual_seed(20250)
    standin = random_standin(gen, T, C)
    w, a, b = standin.w, standin.a, standin.b
    out = {"standin.w": w, "standin.a": a, "standin.b": b}
    facts = {
        "source": "CIntellifusion/GeometryForcing algorithms/dfot (ContinuousDiffusion, DiscreteDiffusion, "
                  "DFoTVideo, HistoryGuidance), config composed as their training script does (dataset=realestate10k "
                  "algorithm=dfot_geometry_forcing experiment=video_generation @diffusion/continuous)",
        "diffusion": OmegaConf.to_container(algo.diffusion, resolve=True),
        "noise_level": algo.noise_level, "fixed_context": OmegaConf.to_container(algo.fixed_context),
        "variable_context": OmegaConf.to_container(algo.variable_context),
        "uniform_future": OmegaConf.to_container(algo.uniform_future),
        "scheduling_matrix": algo.scheduling_matrix, "context_frames": int(algo.context_frames),
        "n_frames": int(algo.n_frames),
        "history_guidance": OmegaConf.to_container(algo.tasks.prediction.history_guidance),
    }

    diffusion = build_diffusion(ContinuousDiffusion, algo, standin)
    assert diffusion.sampling_timesteps == 50 and diffusion.is_ddim_sampling

    # 1. schedules
    t_grid = torch.tensor([0.0, 1e-4, 0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99, 0.9999, 1.0])
    with torch.no_grad():
        out["schedule.t"] = t_grid
        out["schedule.logsnr"] = diffusion.training_schedule(t_grid)
        out["schedule.max_min"] = torch.stack([diffusion.training_schedule.max_logsnr,
                                               diffusion.training_schedule.min_logsnr])
    for name in ("alphas_cumprod", "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod", "logsnr"):
        out[f"discrete.{name}"] = getattr(diffusion, name)
    grids = {}
    for steps in (1, 2, 3, 7, 10, 33, 50, 100, 250, 999):
        d = build_diffusion(ContinuousDiffusion, algo, standin, sampling_timesteps=steps)
        fake = fake_algo(DFoTVideo, algo, d, x_shape=(C, H, W), n_frames=T)
        grids[str(steps)] = fake._generate_scheduling_matrix(1)[:, 0].tolist()
    facts["ddim_grids"] = grids

    # 2. training: the RE10K setting (no context) and the fixed_context option (context frames)
    x0 = torch.randn(B, T, C, H, W, generator=gen)
    cond = torch.randn(B, T, K, H, W, generator=gen)
    out["train.x0"], out["train.cond"] = x0, cond
    # (fixed_context, number of context frames, seed of their generator: 108 drops one sample's context)
    cases = {"plain": (None, 0, 100), "context": ({"enabled": True, "indices": [0, 1], "dropout": 0.0}, 2, 101),
             "dropout": ({"enabled": True, "indices": [0], "dropout": 0.5}, 1, 108)}
    for seed, (case, (fixed, n_ctx, tseed)) in enumerate(cases.items()):
        masks = torch.ones(B, T, dtype=torch.bool)
        masks[1, 3] = False  # an unavailable frame
        tgen = torch.Generator().manual_seed(tseed)
        fake = fake_algo(DFoTVideo, algo, diffusion, x_shape=(C, H, W), n_frames=T, n_context=n_ctx,
                         fixed_context=fixed, generator=tgen)
        k, loss_mask = fake._get_training_noise_levels(x0, masks)
        standin.calls.clear()
        torch.manual_seed(200 + seed)
        with torch.no_grad():
            x_pred, elementwise, latents = diffusion.forward_with_alignment_loss(x0, cond, k)
        (call,) = standin.calls
        torch.manual_seed(200 + seed)
        with torch.no_grad():
            x_pred2, elementwise2 = diffusion(x0, cond, k)  # their forward (no latents): the same
        assert torch.equal(x_pred, x_pred2) and torch.equal(elementwise, elementwise2)
        torch.manual_seed(200 + seed)
        noise = torch.clamp(torch.randn_like(x0), -diffusion.clip_noise, diffusion.clip_noise)
        with torch.no_grad():
            logsnr = diffusion.training_schedule(k)
        loss = DFoTVideo._reweight_loss(None, elementwise, loss_mask)
        out.update({f"train.{case}.seed": torch.tensor(tseed), f"train.{case}.frame_mask": masks,
                    f"train.{case}.t": k, f"train.{case}.loss_mask": loss_mask, f"train.{case}.noise": noise,
                    f"train.{case}.logsnr": logsnr, f"train.{case}.alpha": torch.sigmoid(logsnr).sqrt(),
                    f"train.{case}.sigma": torch.sigmoid(-logsnr).sqrt(),
                    f"train.{case}.weight": torch.sigmoid(diffusion.sigmoid_bias - logsnr),
                    f"train.{case}.x_t": call["x"], f"train.{case}.model_noise_levels": call["noise_levels"],
                    f"train.{case}.x_pred": x_pred, f"train.{case}.elementwise": elementwise,
                    f"train.{case}.loss": loss})
        if n_ctx:
            facts[f"train.{case}.fixed_context"] = fixed

    # 3. DDIM sampling with context (their _sample_sequence, conditional history guidance)
    context = torch.randn(B, T, C, H, W, generator=gen)
    context_mask = torch.tensor([[1, 1, 0, 0], [1, 0, 0, 0]])
    out["sample.context"], out["sample.context_mask"] = context, context_mask.bool()
    out["sample.cond"] = torch.randn(B, T, K, H, W, generator=gen)
    for steps in (50, 7):
        d = build_diffusion(ContinuousDiffusion, algo, standin, sampling_timesteps=steps)
        sgen = torch.Generator().manual_seed(300 + steps)
        fake = fake_algo(DFoTVideo, algo, d, x_shape=(C, H, W), n_frames=T, generator=sgen)
        standin.calls.clear()
        with torch.no_grad():
            xs, record = fake._sample_sequence(B, length=T, context=context, context_mask=context_mask.clone(),
                                               conditions=out["sample.cond"], return_all=True, pbar=_NoBar())
        init = torch.clamp(torch.randn((B, T, C, H, W), generator=torch.Generator().manual_seed(300 + steps)),
                           -d.clip_noise, d.clip_noise)
        assert len(standin.calls) == steps
        out.update({f"sample.{steps}.seed": torch.tensor(300 + steps), f"sample.{steps}.noise": init,
                    f"sample.{steps}.x": xs, f"sample.{steps}.record": record,
                    f"sample.{steps}.model_noise_levels": torch.stack([c["noise_levels"] for c in standin.calls])})

    # 4. single DDIM steps with eta > 0 (their ddim_sample_step; z from torch's global generator)
    x = torch.randn(B, T, C, H, W, generator=gen)
    curr = torch.tensor([[-1, 999, 519, 19], [-1, 39, 259, 999]])
    nxt = torch.tensor([[-1, 979, 499, -1], [-1, 19, 239, 999]])
    out.update({"step.x": x, "step.curr": curr, "step.next": nxt, "step.cond": out["sample.cond"]})
    for eta in (0.0, 0.5, 1.0):
        diffusion.ddim_sampling_eta = eta
        torch.manual_seed(400)
        with torch.no_grad():
            y = diffusion.ddim_sample_step(x, curr, nxt, out["sample.cond"])
        out[f"step.eta{eta}"] = y
    torch.manual_seed(400)
    out["step.z"] = torch.clamp(torch.randn_like(x), -diffusion.clip_noise, diffusion.clip_noise)

    arrays = {k: (v.numpy() if isinstance(v, torch.Tensor) else v) for k, v in out.items()}
    arrays["facts"] = np.array(json.dumps(facts))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, **arrays)
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes, {len(arrays)} arrays)")
    print(json.dumps({k: v for k, v in facts.items() if k != "ddim_grids"}, indent=1))
    print("grid 50:", grids["50"])


class _NoBar:
    def set_postfix(self, **kwargs):
        pass

    def update(self, n):
        pass


if __name__ == "__main__":
    main()
