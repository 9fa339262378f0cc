"""Make the DFoT facts that python_tests/test_models_dfot.py checks gfcore against.

Run against the Geometry Forcing authors' code (which vendors DFoT under algorithms/dfot/),
never in CI:

    git -C <mirror of CIntellifusion/GeometryForcing> archive HEAD algorithms/dfot configurations utils \\
        | tar -x -C /tmp/gf_authors
    pip install --target /tmp/dfot_extra --no-deps rotary_embedding_torch roma   # their imports
    PYTHONPATH=/tmp/dfot_extra python scripts/make_dfot_golden.py --authors /tmp/gf_authors \\
        --out python_tests/data

Their code also needs torch, einops, omegaconf, hydra-core, diffusers (TimestepEmbedding) and timm
(PatchEmbed). Their package __init__ files import the training stack (lightning, wandb,
transformers, VGGT); this script does not run them: it registers the packages by path only and
stubs the four names dfot_video_pose.py imports but _process_conditions and
_update_backbone_cfg never use (DFoTVideo, get_scheduler, VGGTAlignmentLoss, HistoryGuidance).
Nothing of theirs is edited.

Writes:
  dfot_re10k_manifest.json  the RE10K backbone, built by their UViT3DPose on the meta device from
                            their own configuration as their training script composes it
                            (dataset=realestate10k algorithm=dfot_geometry_forcing
                            experiment=video_generation @diffusion/continuous): every state_dict
                            key in order with shape and dtype, the parameters in order (the order
                            of their EMA list), the parameter count, the composed backbone config.
  dfot_golden_small.npz     a small config of their UViT3DPose (Fourier noise embedding, as in
                            RE10K), every state_dict tensor set to non-zero random values, inputs,
                            outputs with and without the pose mask, the seven level latents; and
                            the ray map their DFoTVideoPose._process_conditions makes from a
                            16-D pose with rotations.
  dfot_golden_variant.npz   a second small config: patch size 1, sinusoidal noise embedding
                            (use_fourier_noise_embedding false), other head split, so that the
                            deepest level has a 2x2 grid.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import types
from pathlib import Path

import numpy as np
import torch

PREFIX = "diffusion_model.model."


# ---------------------------------------------------------------------------------------------
# importing their code without its training stack
# ---------------------------------------------------------------------------------------------

def _package(name: str, path: Path) -> None:
    """Register a package by path without running its __init__.py."""
    module = types.ModuleType(name)
    module.__path__ = [str(path)]
    sys.modules[name] = module


def import_authors(root: Path):
    root = root.resolve()
    sys.path.insert(0, str(root))
    _package("algorithms", root / "algorithms")
    _package("algorithms.dfot", root / "algorithms" / "dfot")
    from algorithms.dfot.backbones.u_vit.u_vit3d_pose import UViT3DPose  # before the stubs below
    # names dfot_video_pose.py imports at module level, unused by the two methods called here
    stub = types.ModuleType("algorithms.dfot.dfot_video")
    stub.DFoTVideo = type("DFoTVideo", (), {})
    sys.modules["algorithms.dfot.dfot_video"] = stub
    stub = types.ModuleType("algorithms.dfot.history_guidance")
    stub.HistoryGuidance = type("HistoryGuidance", (), {})
    sys.modules["algorithms.dfot.history_guidance"] = stub
    stub = types.ModuleType("transformers")
    stub.get_scheduler = None
    sys.modules.setdefault("transformers", stub)
    stub = types.ModuleType("external")
    stub.VGGTAlignmentLoss = None
    sys.modules["external"] = stub

    from algorithms.dfot.dfot_video_pose import DFoTVideoPose
    return UViT3DPose, DFoTVideoPose


# ---------------------------------------------------------------------------------------------
# their RE10K configuration, composed as their training script does
# ---------------------------------------------------------------------------------------------

def compose_re10k(root: Path, DFoTVideoPose):
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf, open_dict
    from utils.hydra_utils import unwrap_shortcuts  # theirs

    config_dir = str((root / "configurations").resolve())
    argv = ["main.py", "+name=RE10k", "dataset=realestate10k", "algorithm=dfot_geometry_forcing",
            "experiment=video_generation", "@diffusion/continuous"]  # scripts/train_geometry_forcing.sh
    argv = unwrap_shortcuts(argv, config_path=config_dir, config_name="config")
    with initialize_config_dir(config_dir=config_dir, version_base=None):
        cfg = compose(config_name="config", overrides=argv[1:])
    algo = cfg.algorithm
    # DFoTVideoPose.__init__ -> _update_backbone_cfg (sets backbone.conditioning.dim)
    fake = types.SimpleNamespace(conditioning_type=algo.camera_pose_conditioning.type)
    with open_dict(algo):
        DFoTVideoPose._update_backbone_cfg(fake, algo)
    # DFoTVideo.__init__: x_shape = cfg.x_shape (pixel space); max_tokens = max_frames
    # ((max_frames - 1) // temporal_downsampling_factor + 1 with factor latent.downsampling_factor[0])
    x_shape = [int(v) for v in algo.x_shape]
    assert not algo.latent.enable
    factor = int(algo.latent.downsampling_factor[0])
    max_tokens = (int(algo.max_frames) - 1) // factor + 1
    return cfg, algo, x_shape, max_tokens, OmegaConf


def re10k_manifest(root: Path, UViT3DPose, DFoTVideoPose) -> dict:
    cfg, algo, x_shape, max_tokens, OmegaConf = compose_re10k(root, DFoTVideoPose)
    with torch.device("meta"):
        model = UViT3DPose(cfg=algo.backbone, x_shape=x_shape, max_tokens=max_tokens,
                           external_cond_dim=int(algo.external_cond_dim),
                           use_causal_mask=bool(algo.diffusion.use_causal_mask))
    state = model.state_dict()
    params = [name for name, _ in model.named_parameters()]
    # their EMA list follows diffusion_model.named_parameters(): check that these are exactly the
    # backbone's parameters (under `model.`) in the same order, and that the diffusion wrapper
    # saves nothing else
    from algorithms.dfot.diffusion.continuous_diffusion import ContinuousDiffusion
    with torch.device("meta"):
        wrapper = ContinuousDiffusion(cfg=algo.diffusion, backbone_cfg=algo.backbone, x_shape=x_shape,
                                      max_tokens=max_tokens, external_cond_dim=int(algo.external_cond_dim))
    ema_order = [name for name, _ in wrapper.named_parameters()]
    assert ema_order == ["model." + name for name in params]
    assert list(wrapper.state_dict()) == ["model." + key for key in state]
    persistent = set(state)
    buffers = [name for name, _ in model.named_buffers() if name in persistent]
    return {
        "source": "UViT3DPose of CIntellifusion/GeometryForcing algorithms/dfot/backbones/u_vit/u_vit3d_pose.py, "
                  "config composed from their configurations/ (dataset=realestate10k algorithm=dfot_geometry_forcing "
                  "experiment=video_generation @diffusion/continuous), built on the meta device",
        "checkpoint_prefixes": [PREFIX, "diffusion_model._orig_mod.model."],
        "backbone_config": OmegaConf.to_container(algo.backbone, resolve=True),
        "x_shape": x_shape,
        "max_tokens": max_tokens,
        "diffusion": {"is_continuous": bool(algo.diffusion.is_continuous),
                      "precond_scale": float(algo.diffusion.precond_scale)},
        "camera_pose_conditioning": OmegaConf.to_container(algo.camera_pose_conditioning, resolve=True),
        "state_dict": [{"key": k, "shape": list(v.shape), "dtype": str(v.dtype).replace("torch.", "")}
                       for k, v in state.items()],
        "parameters": params,
        "ema_order": "optimizer_states[0]['ema'] follows diffusion_model.named_parameters(), checked equal to "
                     "'model.' + parameters in this order; the wrapper's state_dict is 'model.' + state_dict",
        "persistent_buffers": buffers,
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "num_buffer_elements": sum(state[b].numel() for b in buffers),
    }


# ---------------------------------------------------------------------------------------------
# small configs with random weights
# ---------------------------------------------------------------------------------------------

SMALL = {
    "name": "u_vit3d_pose",
    "channels": [32, 32, 32, 40],
    "emb_channels": 32,
    "patch_size": 2,
    "block_types": ["ResBlock", "ResBlock", "TransformerBlock", "TransformerBlock"],
    "block_dropouts": [0.0, 0.0, 0.1, 0.1],
    "num_updown_blocks": [2, 1, 1],
    "num_mid_blocks": 2,
    "num_heads": 2,  # head dims 16 and 20: RoPE3D splits (4, 6, 6) and (8, 6, 6), as RE10K's 64 and 128
    "pos_emb_type": "rope",
    "use_checkpointing": [False, False, False, False],
    "conditioning": {"dim": 180},
    "external_cond_dropout": 0.1,
    "use_fourier_noise_embedding": True,
}
SMALL_SHAPE = dict(batch=2, frames=3, resolution=16)

VARIANT = dict(SMALL, channels=[32, 32, 24, 24], emb_channels=16, patch_size=1, num_updown_blocks=[1, 1, 1],
               num_mid_blocks=1, num_heads=1, use_fourier_noise_embedding=False)  # head dim 24: split (8, 8, 8)
VARIANT_SHAPE = dict(batch=1, frames=2, resolution=16)


def randomize(model: torch.nn.Module, gen: torch.Generator) -> None:
    """Every state_dict tensor non-zero random; their init zeroes the output layers."""
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if tensor.ndim >= 2:  # weights: ~ 1/sqrt(fan_in), so that activations stay O(1)
                fan_in = tensor[0].numel()
                new = torch.randn(tensor.shape, generator=gen) / math.sqrt(fan_in)
            elif name.endswith(("freqs", "phases")):  # Fourier noise embedding buffers
                new = torch.randn(tensor.shape, generator=gen) * (2 * math.pi)
            elif "norm" in name and name.endswith("weight") or name.endswith("in_layers.0.weight"):
                new = 1.0 + 0.2 * torch.randn(tensor.shape, generator=gen)
            else:  # biases
                new = 0.2 * torch.randn(tensor.shape, generator=gen)
            new = torch.where(new == 0, torch.full_like(new, 0.01), new)
            tensor.copy_(new)
    assert all(bool((t != 0).all()) for t in model.state_dict().values())


def make_pose(batch: int, frames: int, gen: torch.Generator) -> torch.Tensor:
    """[B, T, 16]: (fx, fy, px, py) normalised by the frame size, then a flattened 3x4 world-to-camera
    [R | t]; rotations about all three axes, first frame not the identity."""
    out = torch.empty(batch, frames, 16, dtype=torch.float64)
    for b in range(batch):
        for t in range(frames):
            angles = torch.randn(3, generator=gen, dtype=torch.float64) * 0.6 + 0.1 * t
            cx, cy, cz = torch.cos(angles)
            sx, sy, sz = torch.sin(angles)
            rx = torch.tensor([[1, 0, 0], [0, cx, -sx], [0, sx, cx]], dtype=torch.float64)
            ry = torch.tensor([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]], dtype=torch.float64)
            rz = torch.tensor([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]], dtype=torch.float64)
            rot = rz @ ry @ rx
            trans = torch.randn(3, generator=gen, dtype=torch.float64) * 1.5
            fx = 0.8 + 0.3 * torch.rand((), generator=gen, dtype=torch.float64)
            fy = 0.8 + 0.3 * torch.rand((), generator=gen, dtype=torch.float64)
            px = 0.5 + 0.05 * torch.randn((), generator=gen, dtype=torch.float64)
            py = 0.5 + 0.05 * torch.randn((), generator=gen, dtype=torch.float64)
            out[b, t, :4] = torch.stack([fx, fy, px, py])
            out[b, t, 4:] = torch.cat([rot, trans[:, None]], dim=1).reshape(12)
    return out.float()


def their_ray_map(DFoTVideoPose, pose: torch.Tensor, resolution: int) -> torch.Tensor:
    """DFoTVideoPose._process_conditions, as configured for RE10K (normalize_by first, bound null,
    type ray_encoding, conditional history guidance)."""
    from omegaconf import OmegaConf
    fake = types.SimpleNamespace(
        cfg=OmegaConf.create({"tasks": {"prediction": {"history_guidance": {"name": "conditional"}}}}),
        camera_pose_conditioning=OmegaConf.create({"normalize_by": "first", "bound": None}),
        conditioning_type="ray_encoding",
        x_shape=[3, resolution, resolution],
        timesteps=1000,
    )
    return DFoTVideoPose._process_conditions(fake, pose)


def golden(UViT3DPose, DFoTVideoPose, config: dict, shape: dict, seed: int, tag: str) -> dict:
    from omegaconf import OmegaConf
    gen = torch.Generator().manual_seed(seed)
    res, frames, batch = shape["resolution"], shape["frames"], shape["batch"]
    model = UViT3DPose(cfg=OmegaConf.create(config), x_shape=[3, res, res], max_tokens=frames,
                       external_cond_dim=16, use_causal_mask=False)
    randomize(model, gen)
    model.eval()
    x = torch.randn(batch, frames, 3, res, res, generator=gen)
    noise_levels = 0.125 * (torch.rand(batch, frames, generator=gen) * 30 - 15)  # 0.125 * logSNR
    pose = make_pose(batch, frames, gen)
    # the model's pose input is their ray map of `pose`; stored as float16 (exact in the file)
    cond = their_ray_map(DFoTVideoPose, pose, res).to(torch.float16).float()
    mask = torch.zeros(batch, dtype=torch.bool)
    mask[-1] = True
    out = {f"{tag}.config": np.array(json.dumps(dict(config, resolution=res, frames=frames)))}
    for key, tensor in model.state_dict().items():
        out[f"{tag}.state.{key}"] = tensor.numpy()
    out.update({f"{tag}.x": x.numpy(), f"{tag}.noise_levels": noise_levels.numpy(),
                f"{tag}.external_cond": cond.numpy().astype(np.float16), f"{tag}.mask": mask.numpy(),
                f"{tag}.pose": pose.numpy()})
    with torch.no_grad():
        y, latents = model(x, noise_levels, cond, None, return_latents=True)
        y_masked = model(x, noise_levels, cond, mask)
    assert len(latents) == 2 * (len(config["channels"]) - 1) + 1
    out[f"{tag}.out"] = y.numpy()
    out[f"{tag}.out_masked"] = y_masked.numpy()
    for i, latent in enumerate(latents):
        out[f"{tag}.latent.{i}"] = latent.numpy()
    # the mask is per sample: the masked sample changes, the others do not
    assert not torch.allclose(y_masked[-1], y[-1])
    assert torch.allclose(y_masked[:-1], y[:-1])
    return out


def ray_golden(DFoTVideoPose, seed: int) -> dict:
    gen = torch.Generator().manual_seed(seed)
    pose = make_pose(2, 4, gen)
    rays = their_ray_map(DFoTVideoPose, pose, 8)
    return {"rays.pose": pose.numpy(), "rays.resolution": np.array(8), "rays.map": rays.numpy()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--authors", required=True, type=Path,
                        help="checkout of their repo (algorithms/, configurations/, utils/)")
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args()
    torch.use_deterministic_algorithms(True)
    UViT3DPose, DFoTVideoPose = import_authors(args.authors)
    args.out.mkdir(parents=True, exist_ok=True)

    manifest = re10k_manifest(args.authors, UViT3DPose, DFoTVideoPose)
    (args.out / "dfot_re10k_manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    print("manifest:", len(manifest["state_dict"]), "keys,", manifest["num_parameters"], "parameters")

    small = golden(UViT3DPose, DFoTVideoPose, SMALL, SMALL_SHAPE, seed=23, tag="a")
    small.update(ray_golden(DFoTVideoPose, seed=24))
    np.savez_compressed(args.out / "dfot_golden_small.npz", **small)
    variant = golden(UViT3DPose, DFoTVideoPose, VARIANT, VARIANT_SHAPE, seed=25, tag="b")
    np.savez_compressed(args.out / "dfot_golden_variant.npz", **variant)
    for name in ("dfot_re10k_manifest.json", "dfot_golden_small.npz", "dfot_golden_variant.npz"):
        print(name, (args.out / name).stat().st_size, "bytes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
