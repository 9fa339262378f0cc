"""The DFoT backbone (UViT3DPose) and diffusion in the trainer: model=dfot_re10k / dfot_tiny,
train.objective=dfot with Geometry Forcing on a backbone latent, train.grad_accum,
train.init_from, experiment=re10k_gf_finetune, and exact resume of a DFoT run."""
import json
import os

import pytest
import torch

from gfcore.io.checkpoint_file import read_checkpoint
from gfcore.models.dfot import RE10K, CheckpointError, UViT3DPose, camera_rays
from gfcore.train import load_config, train
from gfcore.train.trainer import CrashForTesting
from gfcore.train.resume import ResumeError
from trainer_helpers import one_torch_thread, tiny_data_root  # noqa: F401  (fixtures)

NO_DROPOUT = ["model.block_dropouts=[0.0,0.0,0.0,0.0]"]


def dfot_overrides(data_root: str, out_dir: str, *extra: str) -> list:
    """dfot_tiny on the 16 px built-in scenes: 4-frame clips, batch 2, GF with the oracle pointmap teacher."""
    return ["model=dfot_tiny", "train.objective=dfot", "teacher=pointmap", f"data.root={data_root}", "data.num_clips=4",
            "data.clip_frames=8", "data.resolution=[16,16]", "train.batch_size=2", "train.num_frames=4",
            "train.steps=6", "train.ckpt_every=2", "train.log_every=1", "train.warmup_steps=2", "train.progress=false",
            "train.device=cpu", "loss.projector_dim=32", "loss.head_dim=16", f"out_dir={out_dir}", *extra]


def _log(out_dir):
    with open(os.path.join(out_dir, "log.jsonl")) as handle:
        return [r for r in (json.loads(line) for line in handle) if "event" not in r]


def _events(out_dir):
    with open(os.path.join(out_dir, "log.jsonl")) as handle:
        return [r for r in (json.loads(line) for line in handle) if "event" in r]


def _final(out_dir):
    return read_checkpoint(os.path.join(out_dir, "final.pt"))


def _ckpt(out_dir, step):
    return read_checkpoint(os.path.join(out_dir, "checkpoints", f"step_{step:08d}.pt"))


def _tiny_model(seed: int = 0, **overrides) -> UViT3DPose:
    """The model dfot_overrides builds (dfot_tiny at 16 px, 4 frames)."""
    from gfcore.models.build import build_backbone
    from gfcore.train.trainer import model_config

    cfg = load_config(dfot_overrides("/unused", "/unused", *[f"model.{k}={v}" for k, v in overrides.items()]))
    torch.manual_seed(seed)
    return build_backbone(model_config(cfg))


# ------------------------------------------------------------------------------------- configs


def test_dfot_re10k_config_is_the_re10k_backbone():
    from gfcore.models.build import build_backbone
    from gfcore.train.models import alignment_geometry
    from gfcore.train.trainer import model_config

    cfg = load_config(["model=dfot_re10k", "train.objective=dfot", "data=re10k", "data.root=/x", "train.num_frames=16",
                       "teacher=none"])
    node = model_config(cfg)
    fields = {k: (tuple(v) if isinstance(v, list) else v) for k, v in node.items()}
    for key, value in RE10K.items():
        assert fields[key] == value, key
    with torch.device("meta"):
        model = build_backbone(node)
    assert sum(p.numel() for p in model.parameters()) == 458_818_051
    # GF aligns the level-2 down latent: 576 channels on a 32 x 32 grid at 256 px
    assert alignment_geometry(model, node) == (576, (32, 32))


def test_re10k_gf_finetune_is_the_authors_recipe():
    cfg = load_config(["experiment=re10k_gf_finetune", "train.init_from=/ckpt/DFoT_RE10K.ckpt", "data.root=/x"])
    t = cfg.train
    assert (t.objective, t.init_from, t.lr, list(t.betas), t.weight_decay) == (
        "dfot", "/ckpt/DFoT_RE10K.ckpt", 8e-6, [0.9, 0.99], 0.01)
    assert (t.batch_size, t.grad_accum, t.ema_decay, t.grad_clip, t.num_frames) == (4, 5, 0.9999, 1.0, 16)
    assert (cfg.model.arch, cfg.model.align_level, cfg.model.align_path, cfg.teacher.name) == ("dfot", 2, "down", "vggt")
    assert list(cfg.data.resolution) == [256, 256] and cfg.model.resolution == 256 and cfg.model.frames == 16
    assert list(cfg.model.channels) == list(RE10K["channels"])
    # without the checkpoint the recipe does not silently train from scratch
    with pytest.raises(ValueError, match="train.init_from is required"):
        train(load_config(["experiment=re10k_gf_finetune", "data.root=/x", "train.device=cpu"]))


def test_bad_combinations_are_refused(tmp_path, tiny_data_root):  # noqa: F811
    out = str(tmp_path / "run")
    with pytest.raises(ValueError, match="train.objective=dfot trains model.arch=dfot"):
        train(load_config(dfot_overrides(tiny_data_root, out, "model=tiny")))
    with pytest.raises(ValueError, match="train.objective=flow trains model.arch=dit"):
        train(load_config(dfot_overrides(tiny_data_root, out, "train.objective=flow")))
    with pytest.raises(ValueError, match="model.frames=8 must equal train.num_frames=4"):
        train(load_config(dfot_overrides(tiny_data_root, out, "model.frames=8")))
    with pytest.raises(ValueError, match="train.grad_accum"):
        train(load_config(dfot_overrides(tiny_data_root, out, "train.grad_accum=0")))
    with pytest.raises(ValueError, match="sample_every"):
        train(load_config(dfot_overrides(tiny_data_root, out, "train.sample_every=2")))
    with pytest.raises(ValueError, match="align_level=3 with align_path=down"):
        train(load_config(dfot_overrides(tiny_data_root, out, "model.align_level=3")))
    assert not os.path.exists(os.path.join(out, "final.pt"))


def test_latent_index_and_shapes_follow_return_latents():
    from gfcore.models.build import latent_index, latent_shape

    model = _tiny_model()
    x = torch.randn(1, 4, 3, 16, 16)
    _, latents = model(x, torch.zeros(1, 4), torch.zeros(1, 4, 180, 16, 16), return_latents=True)
    cases = [("down", 0, 0), ("down", 1, 1), ("down", 2, 2), ("mid", 3, 3), ("up", 2, 4), ("up", 1, 5), ("up", 0, 6)]
    for path, level, index in cases:
        node = {"align_level": level, "align_path": path}
        assert latent_index(model, node) == index
        channels, grid = latent_shape(model, node)
        assert list(latents[index].shape) == [1, 4, channels, *grid], (path, level)
    for bad in ({"align_level": 3, "align_path": "down"}, {"align_level": 2, "align_path": "mid"},
                {"align_level": 0, "align_path": "sideways"}):
        with pytest.raises(ValueError):
            latent_index(model, bad)


# -------------------------------------------------------------------------------- poses, objective


def test_cameras_to_dfot_poses_convention(tiny_data_root):  # noqa: F811
    """The batch's pixel K and c2w become DFoT's 16-D rows (fx/W, fy/H, cx/W, cy/H, w2c [R|t] row
    by row): they map back through dfot_poses_to_cameras, and DFoT's rays of those rows are the
    batch's own Pluecker rays (unit direction, moment o x d)."""
    from gfcore.data.geometry import cameras_to_dfot_poses, dfot_poses_to_cameras
    from gfcore.train.data import StepBatcher, build_dataset

    cfg = load_config(dfot_overrides(tiny_data_root, "/unused"))
    batch = StepBatcher(build_dataset(cfg.data, with_depth=False), 4, 2, 0, camera=True).batch(0)
    K, c2w = batch["intrinsics"].double(), batch["c2w"].double()
    pose = cameras_to_dfot_poses(K, c2w, 16, 16)
    assert pose.shape == (2, 4, 16)
    K_back, w2c_back, c2w_back = dfot_poses_to_cameras(pose, 16, 16)
    assert torch.allclose(K_back, K, atol=1e-12) and torch.allclose(c2w_back, c2w, atol=1e-12)
    # float32 rotations are orthonormal to ~1e-8: the transpose inverts them to that
    assert torch.allclose(w2c_back @ c2w, torch.eye(4, dtype=torch.float64).expand_as(c2w), atol=1e-6)
    assert torch.allclose(pose[..., :4], torch.stack([K[..., 0, 0] / 16, K[..., 1, 1] / 16, K[..., 0, 2] / 16,
                                                      K[..., 1, 2] / 16], -1))
    origins, directions = camera_rays(pose, 16, 16)  # [B, T, H, W, 3], first frame's camera = world
    unit = torch.nn.functional.normalize(directions, dim=-1).permute(0, 1, 4, 2, 3)
    rays = batch["rays"].double()  # c2w already relative to the window's first frame
    assert torch.allclose(unit, rays[:, :, :3], atol=1e-5)
    moment = torch.cross(origins, torch.nn.functional.normalize(directions, dim=-1), dim=-1).permute(0, 1, 4, 2, 3)
    assert torch.allclose(moment, rays[:, :, 3:], atol=1e-5)


def test_objective_is_dfot_loss_plus_alignment_on_the_level2_down_latent(tiny_data_root):  # noqa: F811
    """DFoTObjective's terms, recomputed by hand: DFoT's loss of the normalised frames with the
    ray map of the batch's poses, and GF's alignment of latents[2] (the level-2 down blocks' output)
    as [B, T, h*w, C] tokens."""
    from gfcore.data.dfot_re10k import normalize
    from gfcore.data.geometry import cameras_to_dfot_poses
    from gfcore.models.dfot import ray_encoding
    from gfcore.train.data import StepBatcher, build_dataset
    from gfcore.train.trainer import build_training, draw_step_noise, TrainModule

    cfg = load_config(dfot_overrides(tiny_data_root, "/unused", *NO_DROPOUT))
    model, objective, teacher = build_training(cfg, torch.device("cpu"))
    batch = StepBatcher(build_dataset(cfg.data, with_depth=True), 4, 2, 0, camera=True).batch(0)
    noise = draw_step_noise(cfg, TrainModule(model, objective), (2, 4, 3, 16, 16), torch.Generator().manual_seed(3))
    assert not noise.context.any() and (noise.t > 0).all() and (noise.t < 1).all()
    features = teacher(batch)
    assert features.shape[:3] == (2, 4, 4)  # the pointmap teacher on the latent's 2 x 2 grid
    terms = objective(model, batch, noise, features)

    x0 = normalize((batch["frames"] + 1) / 2)
    cond = ray_encoding(cameras_to_dfot_poses(batch["intrinsics"], batch["c2w"], 16, 16), 16, 16)
    d = objective.diffusion
    logsnr = d.logsnr(noise.t)
    alpha, sigma = (a[..., None, None, None] for a in d.alpha_sigma(logsnr))
    x_t = alpha * x0 + sigma * noise.eps
    v, latents = model(x_t, d.noise_levels(logsnr), cond, external_cond_mask=noise.drop_cond, return_latents=True)
    eps_hat = alpha * v + sigma * x_t
    diffusion = (d.loss_weight(logsnr)[..., None, None, None] * (eps_hat - noise.eps) ** 2).mean()
    assert torch.allclose(terms["diffusion"], diffusion, rtol=1e-5, atol=1e-7)
    hidden = latents[2].permute(0, 1, 3, 4, 2).reshape(2, 4, 4, 48)
    aligned = objective.alignment(hidden, features)
    assert torch.allclose(terms["alignment"], aligned.loss, rtol=1e-5, atol=1e-7)
    assert torch.allclose(terms["loss"], diffusion + aligned.loss, rtol=1e-5, atol=1e-7)
    # another latent of the same shape (the level-2 up blocks) gives another value
    other = objective.alignment(latents[4].permute(0, 1, 3, 4, 2).reshape(2, 4, 4, 48), features)
    assert not torch.allclose(other.loss, aligned.loss)


# ---------------------------------------------------------------------------------- training


def test_dfot_tiny_trains_20_steps_with_gf(tmp_path, tiny_data_root):  # noqa: F811
    out = str(tmp_path / "run")
    summary = train(load_config(dfot_overrides(tiny_data_root, out, "train.steps=20", "train.ckpt_every=10",
                                               "train.lr=1e-3")))
    log = _log(out)
    assert [r["step"] for r in log] == list(range(1, 21))
    for record in log:
        for key in ("loss", "diffusion", "alignment", "angular", "scale", "cosine", "grad_norm"):
            assert record[key] is not None and torch.isfinite(torch.tensor(record[key])), (key, record)
        assert record["loss"] == pytest.approx(record["diffusion"] + record["alignment"], rel=1e-5)
        assert record["alignment"] != 0.0
    assert summary["teacher"] == "oracle pointmap teacher" and log[-1]["teacher"] == "oracle pointmap teacher"
    # the alignment trains: the mean cosine of the last steps beats the first steps'
    assert sum(r["cosine"] for r in log[-5:]) > sum(r["cosine"] for r in log[:5])
    final = _final(out)
    assert final["model_config"]["arch"] == "dfot" and set(final["model"]) == set(final["ema"])
    assert set(_ckpt(out, 20)["objective"]) and all(k.startswith("alignment.") for k in _ckpt(out, 20)["objective"])


def test_grad_accum_equals_one_step_on_the_doubled_batch(tmp_path, tiny_data_root):  # noqa: F811
    """grad_accum=2 with batch 2 takes the same 4 clips, noise and pose drops per optimizer step as
    batch 4: the logged losses and gradient norms and the weights agree to float rounding; the
    log and the optimizer count optimizer steps."""
    extra = (*NO_DROPOUT, "train.steps=3", "train.ckpt_every=3")
    accum, doubled = str(tmp_path / "accum"), str(tmp_path / "doubled")
    train(load_config(dfot_overrides(tiny_data_root, accum, *extra, "train.grad_accum=2")))
    train(load_config(dfot_overrides(tiny_data_root, doubled, *extra, "train.batch_size=4")))
    log_a, log_b = _log(accum), _log(doubled)
    assert [r["step"] for r in log_a] == [r["step"] for r in log_b] == [1, 2, 3]
    for a, b in zip(log_a, log_b):
        for key in ("loss", "diffusion", "alignment", "grad_norm"):
            assert a[key] == pytest.approx(b[key], rel=1e-5), key
    a, b = _final(accum), _final(doubled)
    for key in a["model"]:
        assert torch.allclose(a["model"][key], b["model"][key], rtol=1e-5, atol=1e-6), key
    state = _ckpt(accum, 3)
    assert {int(s["step"]) for s in state["optimizer"]["state"].values()} == {3}
    assert state["scheduler"]["last_epoch"] == 3


def test_killed_dfot_run_resumes_bit_identical(tmp_path, tiny_data_root):  # noqa: F811
    """GF on dfot_tiny with grad_accum=2 and the transformer levels' dropout on (global RNG):
    killed after step 3, resumed from step 2, it ends bit-identical to a run never stopped."""
    extra = ("train.grad_accum=2",)
    straight, interrupted = str(tmp_path / "straight"), str(tmp_path / "interrupted")
    train(load_config(dfot_overrides(tiny_data_root, straight, *extra)))
    with pytest.raises(CrashForTesting):
        train(load_config(dfot_overrides(tiny_data_root, interrupted, *extra, "train.crash_after_step=3")))
    assert not os.path.exists(os.path.join(interrupted, "final.pt"))
    assert train(load_config(dfot_overrides(tiny_data_root, interrupted, *extra)))["resumed_from"] == 2
    a, b = _final(straight), _final(interrupted)
    for part in ("model", "ema"):
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key]), f"{part}.{key} differs after resume"
    ca, cb = _ckpt(straight, 6), _ckpt(interrupted, 6)
    for key, value in ca["objective"].items():
        assert torch.equal(value, cb["objective"][key])
    for key, value in ca["optimizer"]["state"].items():
        assert torch.equal(value["exp_avg_sq"], cb["optimizer"]["state"][key]["exp_avg_sq"])
    log_a, log_b = _log(straight), _log(interrupted)
    assert [r["step"] for r in log_b] == [1, 2, 3, 4, 5, 6]
    assert [r["loss"] for r in log_a] == [r["loss"] for r in log_b]


def test_resume_refuses_a_changed_grad_accum(tmp_path, tiny_data_root):  # noqa: F811
    out = str(tmp_path / "run")
    with pytest.raises(CrashForTesting):
        train(load_config(dfot_overrides(tiny_data_root, out, "train.crash_after_step=2")))
    with pytest.raises(ResumeError, match="train.grad_accum"):
        train(load_config(dfot_overrides(tiny_data_root, out, "train.grad_accum=2")))


# ---------------------------------------------------------------------------------- init_from


def _lightning_file(path, model, ema_offset=None):
    """A DFoT release-like Lightning checkpoint of `model` (and an EMA list = weights + offset)."""
    state = {f"diffusion_model.model.{k}": v.clone() for k, v in model.state_dict().items()}
    state["diffusion_model.alignment_projector.weight"] = torch.zeros(2, 2)  # other modules' keys are left out
    content = {"state_dict": state, "epoch": 3, "global_step": 1234}
    if ema_offset is not None:
        content["optimizer_states"] = [{"ema": [p.detach() + ema_offset for p in model.parameters()],
                                        "state": {0: {"step": torch.tensor(1234.0)}}}]
    torch.save(content, path)
    return str(path)


def test_init_from_a_dfot_release_loads_its_weights_with_a_fresh_optimizer(tmp_path, tiny_data_root):  # noqa: F811
    """lr 0 for one step: the trained model, the EMA and final.pt hold exactly the file's weights
    (its EMA weights with init_use_ema); the optimizer starts at step 1 (the file's 1234 is not
    read); the run's own build (seed 0) differs from the file's (seed 7)."""
    released = _tiny_model(seed=7)
    path = _lightning_file(tmp_path / "dfot.ckpt", released, ema_offset=0.5)
    frozen = ("train.lr=0.0", "train.steps=1", "train.ckpt_every=1")
    for use_ema, offset in (("false", 0.0), ("true", 0.5)):
        out = str(tmp_path / f"ema_{use_ema}")
        train(load_config(dfot_overrides(tiny_data_root, out, *frozen, f"train.init_from={path}",
                                         f"train.init_use_ema={use_ema}")))
        final = _final(out)
        params = dict(released.named_parameters())
        for key, value in released.state_dict().items():
            expected = value + offset if key in params else value
            assert torch.equal(final["model"][key], expected), key
            assert torch.equal(final["ema"][key], expected), key
        state = _ckpt(out, 1)
        assert {int(s["step"]) for s in state["optimizer"]["state"].values()} == {1}
        assert [e["event"] for e in _events(out)] == ["init_from"]
    fresh = _tiny_model(seed=0)  # what the run builds before init_from
    assert any(not torch.equal(p, q) for p, q in zip(fresh.parameters(), released.parameters()))


def test_init_from_a_gfcore_checkpoint_takes_weights_not_optimizer(tmp_path, tiny_data_root):  # noqa: F811
    """Starting from another run's step_2.pt: its model weights, but step 1 of a fresh AdamW and a
    fresh lr schedule (warmup from its start), not the file's optimizer / scheduler / step."""
    first = str(tmp_path / "first")
    train(load_config(dfot_overrides(tiny_data_root, first, "train.steps=2", "teacher=none")))
    source = os.path.join(first, "checkpoints", "step_00000002.pt")
    out = str(tmp_path / "second")
    summary = train(load_config(dfot_overrides(tiny_data_root, out, "train.steps=1", "train.ckpt_every=1",
                                               "train.lr=0.0", "teacher=none", f"train.init_from={source}",
                                               "train.init_use_ema=false")))
    assert summary["resumed_from"] == 0
    loaded = read_checkpoint(source)
    final = _final(out)
    for key, value in loaded["model"].items():
        assert torch.equal(final["model"][key], value), key
    state = _ckpt(out, 1)
    assert {int(s["step"]) for s in state["optimizer"]["state"].values()} == {1}
    assert state["scheduler"]["last_epoch"] == 1 and _log(out)[0]["step"] == 1
    # init_use_ema (the default): the file's EMA shadow
    out_ema = str(tmp_path / "third")
    train(load_config(dfot_overrides(tiny_data_root, out_ema, "train.steps=1", "train.lr=0.0", "teacher=none",
                                     f"train.init_from={source}")))
    for key, value in loaded["ema"]["shadow"].items():
        assert torch.equal(_final(out_ema)["model"][key], value), key


def test_init_from_refuses_a_mismatched_checkpoint(tmp_path, tiny_data_root):  # noqa: F811
    other = _tiny_model(seed=0, channels="[32,32,48,96]")
    path = _lightning_file(tmp_path / "other.ckpt", other)
    out = str(tmp_path / "run")
    with pytest.raises(CheckpointError, match="mis-shaped keys"):
        train(load_config(dfot_overrides(tiny_data_root, out, f"train.init_from={path}")))
    assert not os.path.exists(os.path.join(out, "checkpoints"))
    with pytest.raises(CheckpointError, match="no such file"):
        train(load_config(dfot_overrides(tiny_data_root, out, f"train.init_from={tmp_path}/missing.ckpt")))


def test_init_from_and_resume(tmp_path, tiny_data_root):  # noqa: F811
    """init_from starts a run only: refused with train.resume=PATH and in a folder holding
    checkpoints of a run that did not start from it; the same init_from run killed and relaunched
    with the same command resumes (the file is not read again) and ends as one never stopped."""
    path = _lightning_file(tmp_path / "dfot.ckpt", _tiny_model(seed=7))
    init = (f"train.init_from={path}", "teacher=none", "train.steps=4")
    plain = str(tmp_path / "plain")
    train(load_config(dfot_overrides(tiny_data_root, plain, "teacher=none", "train.steps=2")))
    with pytest.raises(ResumeError, match="did not start from init_from"):
        train(load_config(dfot_overrides(tiny_data_root, plain, *init)))
    with pytest.raises(ResumeError, match="both name the weights"):
        train(load_config(dfot_overrides(tiny_data_root, str(tmp_path / "x"), *init,
                                         f"train.resume={plain}/checkpoints/step_00000002.pt")))

    straight, killed = str(tmp_path / "straight"), str(tmp_path / "killed")
    train(load_config(dfot_overrides(tiny_data_root, straight, *init)))
    with pytest.raises(CrashForTesting):
        train(load_config(dfot_overrides(tiny_data_root, killed, *init, "train.crash_after_step=3")))
    os.rename(path, path + ".moved")  # a resume does not read init_from again
    assert train(load_config(dfot_overrides(tiny_data_root, killed, *init)))["resumed_from"] == 2
    a, b = _final(straight), _final(killed)
    for part in ("model", "ema"):
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key]), f"{part}.{key}"


def test_two_gloo_ranks_with_grad_accum_match_one_process(tmp_path, tiny_data_root):  # noqa: F811
    """DDP: each rank splits its half of the step's 8 clips in 2 micro-batches (gradients synced
    on the last one only) and ends as one process with grad_accum=2 on the same 8 clips."""
    import torch.multiprocessing as mp

    from trainer_helpers import ddp_worker, free_port

    extra = (*NO_DROPOUT, "train.steps=2", "train.ckpt_every=2", "train.batch_size=4", "train.grad_accum=2")
    single, double = str(tmp_path / "single"), str(tmp_path / "ddp")
    train(load_config(dfot_overrides(tiny_data_root, single, *extra)))
    mp.spawn(ddp_worker, args=(2, free_port(), dfot_overrides(tiny_data_root, double, *extra)), nprocs=2, join=True)
    a, b = _final(single)["model"], _final(double)["model"]
    for key in a:
        torch.testing.assert_close(b[key], a[key], atol=2e-6, rtol=1e-5, msg=lambda m: f"{key}: {m}")
    assert [r["loss"] for r in _log(single)] == pytest.approx([r["loss"] for r in _log(double)], rel=1e-5)


def test_fsdp_two_ranks_match_one_process_and_shard_per_block(tmp_path, tiny_data_root):  # noqa: F811
    """FSDP (float32, 2 gloo ranks, each UViT block its own unit): the same weights and losses as
    one process on the same 4 clips per step, within float rounding; the units are every block."""
    import torch.multiprocessing as mp

    from trainer_helpers import ddp_worker, free_port

    model = _tiny_model()
    units = model.shard_units()
    assert len(units) == sum(len(level) for level in (*model.down_blocks, model.mid_blocks, *model.up_blocks))
    assert {type(u).__name__ for u in units} >= {"ResBlock", "TransformerBlock", "Downsample", "Upsample"}
    extra = (*NO_DROPOUT, "train.steps=2", "train.ckpt_every=2", "train.batch_size=4", "train.strategy=fsdp",
             "train.fsdp_mixed_precision=none")
    single, sharded = str(tmp_path / "single"), str(tmp_path / "fsdp")
    train(load_config(dfot_overrides(tiny_data_root, single, *extra)))
    mp.spawn(ddp_worker, args=(2, free_port(), dfot_overrides(tiny_data_root, sharded, *extra)), nprocs=2, join=True)
    a, b = _final(single), _final(sharded)
    for part in ("model", "ema"):
        for key in a[part]:
            torch.testing.assert_close(b[part][key], a[part][key], atol=2e-6, rtol=1e-5, msg=lambda m: f"{key}: {m}")
    assert [r["loss"] for r in _log(single)] == pytest.approx([r["loss"] for r in _log(sharded)], rel=1e-5)


def test_fsdp_wraps_every_uvit_block_as_its_own_unit():
    """_wrap with strategy fsdp (one gloo process standing in for the group): each of
    shard_units() becomes an FSDP module, so a step gathers one block's weights at a time."""
    import torch.distributed as dist
    from omegaconf import OmegaConf
    from torch.distributed.fsdp import FSDPModule

    from gfcore.train.distributed import DistInfo
    from gfcore.train.trainer import TrainModule, _wrap

    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        model = _tiny_model()
        cfg = OmegaConf.create({"train": {"strategy": "fsdp", "fsdp_mixed_precision": "none"}})
        wrapped = _wrap(TrainModule(model, torch.nn.Identity()), cfg, DistInfo(rank=0, world_size=2),
                        torch.device("cpu"))
        assert isinstance(wrapped, FSDPModule)
        assert all(isinstance(unit, FSDPModule) for unit in model.shard_units())
        assert not isinstance(model.embed_input, FSDPModule)
    finally:
        dist.destroy_process_group()


def test_a_zero_pose_drop_probability_never_drops(monkeypatch):
    """cond_drop_prob 0 means "never drop", also for a draw of exactly 0.0 (torch.rand's [0, 1)
    includes it): the drop is rand < p, not rand <= p; p 1 always drops."""
    import gfcore.train.dfot as dfot
    from gfcore.models.dfot import DFoTDiffusion

    real_rand = torch.rand
    monkeypatch.setattr(dfot.torch, "rand", lambda *a, **k: torch.zeros_like(real_rand(*a, **k)))
    diffusion = DFoTDiffusion()
    assert not dfot.draw_dfot_noise((4, 2, 3, 4, 4), torch.Generator().manual_seed(0), diffusion, 0.0).drop_cond.any()
    assert dfot.draw_dfot_noise((4, 2, 3, 4, 4), torch.Generator().manual_seed(0), diffusion, 1.0).drop_cond.all()


def test_the_dfot_noise_of_a_step_comes_from_its_generator_alone():
    """draw_dfot_noise: the same generator state gives the same times, noise, context mask and
    pose drops whatever the global RNG holds (a resumed run, each DDP rank, draws as one process);
    eps is clamped to the diffusion's clip_noise; no frame is context; drops follow the probability."""
    from gfcore.models.dfot import DFoTDiffusion
    from gfcore.train.dfot import draw_dfot_noise

    diffusion = DFoTDiffusion(clip_noise=1.5)
    draws = []
    for global_seed in (1, 2):
        torch.manual_seed(global_seed)
        draws.append(draw_dfot_noise((64, 3, 3, 4, 4), torch.Generator().manual_seed(7), diffusion, 0.5))
    first, second = draws
    for name in ("t", "eps", "context", "drop_cond"):
        assert torch.equal(getattr(first, name), getattr(second, name)), name
    assert first.t.shape == (64, 3) and first.context.shape == (64, 3) and first.context.dtype == torch.bool
    assert not first.context.any() and first.eps.abs().max() == 1.5  # clamped, and the clamp was reached
    assert 16 < int(first.drop_cond.sum()) < 48  # about half of 64 samples drop their pose
    assert not draw_dfot_noise((64, 3, 3, 4, 4), torch.Generator().manual_seed(7), diffusion, 0.0).drop_cond.any()
    assert draw_dfot_noise((64, 3, 3, 4, 4), torch.Generator().manual_seed(7), diffusion, 1.0).drop_cond.all()


def test_init_weights_takes_each_files_weights_and_names_them(tmp_path):
    """init_weights on a small module: a step file (ema = {decay, shadow}) and a final.pt (ema = a
    state dict) give their EMA weights by default and their raw weights with use_ema=False, a file
    without EMA its raw weights, and the text for the log says which; a DFoT release (a plain state
    dict) loads into a dfot model; a gfcore file of other shapes, or one that is not a trainer
    checkpoint (weights without config, config without weights, a plain state dict for a dit model),
    is refused with a CheckpointError naming train.init_from=PATH."""
    import re

    from gfcore.io.checkpoint_file import write_checkpoint
    from gfcore.train.models import init_weights

    raw = {"weight": torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]), "bias": torch.tensor([0.5, -0.5])}
    shadow = {"weight": torch.tensor([[-1.0, 0.25, 7.0], [0.0, 9.0, -3.0]]), "bias": torch.tensor([2.0, 3.0])}
    config = {"model": {"arch": "dit"}, "train": {"steps": 2}}
    dit, dfot = {"arch": "dit"}, {"arch": "dfot"}

    def path_of(name, content, gfcore=True):
        path = str(tmp_path / name)
        write_checkpoint(content, path) if gfcore else torch.save(content, path)
        return path

    def loaded(node, path, **kwargs):
        module = torch.nn.Linear(3, 2)
        text = init_weights(module, node, path, **kwargs)
        return text, {k: v.detach() for k, v in module.state_dict().items()}

    step = path_of("step_00000002.pt", {"model": raw, "ema": {"decay": 0.9, "shadow": shadow}, "config": config})
    final = path_of("final.pt", {"model": raw, "ema": shadow, "config": config})
    no_ema = path_of("no_ema.pt", {"model": raw, "config": config})
    release = path_of("release.ckpt", raw, gfcore=False)
    for path, use_ema, text, expected in (
            (step, None, "gfcore checkpoint (EMA weights)", shadow),
            (step, False, "gfcore checkpoint (raw weights)", raw),
            (final, None, "gfcore checkpoint (EMA weights)", shadow),
            (final, False, "gfcore checkpoint (raw weights)", raw),
            (no_ema, True, "gfcore checkpoint (raw weights)", raw)):
        got, state = loaded(dit, path, **({} if use_ema is None else {"use_ema": use_ema}))
        assert got == text, (path, use_ema)
        for key in raw:
            assert torch.equal(state[key], expected[key]), (path, use_ema, key)
    for use_ema, text in ((True, "DFoT checkpoint (EMA weights where held)"), (False, "DFoT checkpoint")):
        got, state = loaded(dfot, release, use_ema=use_ema)
        assert got == text and all(torch.equal(state[k], raw[k]) for k in raw)

    wide = path_of("wide.pt", {"model": {"weight": torch.zeros(2, 4), "bias": torch.zeros(2)}, "config": config})
    with pytest.raises(CheckpointError, match=rf"^train\.init_from={re.escape(repr(wide))} does not match the model "
                                              r"\(Linear\):\n  mis-shaped keys \(1\): weight"):
        loaded(dit, wide)
    for name, content, gfcore in (("weights_only.pt", {"model": raw}, True),
                                  ("config_only.pt", {"config": config, "step": 2}, True),
                                  ("plain.pt", raw, False)):
        path = path_of(name, content, gfcore)
        with pytest.raises(CheckpointError, match=rf"^train\.init_from={re.escape(repr(path))} is not a gfcore "
                                                  r"trainer checkpoint \(step_\*\.pt or final\.pt\); a dit model "
                                                  r"can only start from one$"):
            loaded(dit, path)


def _camera_batch(generator, batch=2, frames=4):
    """Frames in [-1, 1] and moving pinhole cameras at 16 px (gfcore.data convention: pixel K, c2w)."""
    K = torch.tensor([[14.0, 0.0, 7.5], [0.0, 15.0, 8.5], [0.0, 0.0, 1.0]]).expand(batch, frames, 3, 3).clone()
    c2w = torch.eye(4).repeat(batch, frames, 1, 1)
    c2w[:, :, :3, 3] = 0.3 * torch.randn(batch, frames, 3, generator=generator)
    c2w[:, 0, :3, 3] = 0.0  # relative to the first frame
    return {"frames": torch.rand(batch, frames, 3, 16, 16, generator=generator) * 2 - 1, "intrinsics": K, "c2w": c2w}


def _trained_like_tiny_model():
    """dfot_tiny in eval mode with every weight moved off its initialisation (DFoT zero-initialises
    output layers, the pose embedding's among them: a fresh model ignores the poses)."""
    model = _tiny_model().eval()
    generator = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=generator))
    return model


def _dfot_loss_by_hand(model, diffusion, x0, batch, t, eps, drop):
    """DFoT's v-prediction loss written out (as test_objective_is_dfot_loss_plus_alignment_...),
    in x0's dtype; returns it and the backbone's latents."""
    from gfcore.data.geometry import cameras_to_dfot_poses
    from gfcore.models.dfot import ray_encoding

    cond = ray_encoding(cameras_to_dfot_poses(batch["intrinsics"], batch["c2w"], 16, 16), 16, 16).to(x0.dtype)
    t, eps = t.to(x0.dtype), eps.to(x0.dtype)
    logsnr = diffusion.logsnr(t)
    alpha, sigma = (a[..., None, None, None] for a in diffusion.alpha_sigma(logsnr))
    x_t = alpha * x0 + sigma * eps
    v, latents = model(x_t, diffusion.noise_levels(logsnr), cond, external_cond_mask=drop, return_latents=True)
    eps_hat = alpha * v + sigma * x_t
    return (diffusion.loss_weight(logsnr)[..., None, None, None] * (eps_hat - eps) ** 2).mean(), latents


def test_dfot_objective_normalises_drops_poses_and_keeps_the_dtype():
    """DFoTObjective built without input_norm normalises the frames as DFoT does, with "none" takes
    them as they are; the noise's drop_cond drops those samples' poses (the model in eval mode
    drops none itself); a float64 model on float64 frames gets a float64 ray map and loss."""
    from gfcore.data.dfot_re10k import normalize
    from gfcore.models.dfot import DFoTDiffusion
    from gfcore.train.dfot import DFoTObjective
    from gfcore.train.objective import NoiseDraw

    generator = torch.Generator().manual_seed(5)
    batch = _camera_batch(generator)
    t = 0.05 + 0.9 * torch.rand(2, 4, generator=generator)
    eps = torch.randn(2, 4, 3, 16, 16, generator=generator)
    drop = torch.tensor([True, False])
    noise = NoiseDraw(t, eps, torch.zeros(2, 4, dtype=torch.bool), drop)
    model, diffusion = _trained_like_tiny_model(), DFoTDiffusion()
    normalised = normalize((batch["frames"] + 1) / 2)
    with torch.no_grad():
        losses = []
        for objective, x0 in ((DFoTObjective(diffusion, None, 2), normalised),
                              (DFoTObjective(diffusion, None, 2, input_norm="none"), batch["frames"])):
            terms = objective(model, batch, noise)
            expected, _ = _dfot_loss_by_hand(model, diffusion, x0, batch, t, eps, drop)
            kept, _ = _dfot_loss_by_hand(model, diffusion, x0, batch, t, eps, None)
            assert terms["diffusion"].dtype == torch.float32 and terms["loss"] is terms["diffusion"]
            torch.testing.assert_close(terms["diffusion"], expected, rtol=1e-5, atol=1e-7)
            assert abs(kept - expected) > 1e-3 * expected  # the drop shows
            losses.append(expected)
        assert abs(losses[0] - losses[1]) > 1e-3 * losses[1]  # and the normalisation
        model = model.double()
        wide = dict(batch, frames=batch["frames"].double())
        terms = DFoTObjective(diffusion, None, 2)(model, wide, noise)
        expected, _ = _dfot_loss_by_hand(model, diffusion, normalize((wide["frames"] + 1) / 2), batch, t, eps, drop)
    assert terms["diffusion"].dtype == torch.float64
    torch.testing.assert_close(terms["diffusion"], expected, rtol=1e-12, atol=1e-14)


def test_dfot_objective_aligns_teacher_features_in_the_latents_dtype_and_names_what_is_missing():
    """Teacher features of another dtype (float64 here) are cast to the latent's float32 before the
    alignment loss (which outside autocast refuses mixed dtypes); without features, or without the
    batch's cameras, the error says what is missing."""
    from gfcore.losses import GeometryAlignmentLoss
    from gfcore.models.dfot import DFoTDiffusion
    from gfcore.train.dfot import DFoTObjective, dfot_external_cond
    from gfcore.train.objective import NoiseDraw

    generator = torch.Generator().manual_seed(6)
    batch = _camera_batch(generator)
    t = 0.05 + 0.9 * torch.rand(2, 4, generator=generator)
    eps = torch.randn(2, 4, 3, 16, 16, generator=generator)
    noise = NoiseDraw(t, eps, torch.zeros(2, 4, dtype=torch.bool), torch.zeros(2, dtype=torch.bool))
    model, diffusion = _trained_like_tiny_model(), DFoTDiffusion()
    torch.manual_seed(0)
    alignment = GeometryAlignmentLoss(hidden_dim=48, target_dim=8, projector_dim=32, head_dim=16)
    objective = DFoTObjective(diffusion, alignment, 2, input_norm="none")
    features = torch.randn(2, 4, 4, 8, generator=generator, dtype=torch.float64)
    with torch.no_grad():
        terms = objective(model, batch, noise, features, alignment_weight=0.5)
        diffusion_loss, latents = _dfot_loss_by_hand(model, diffusion, batch["frames"], batch, t, eps, None)
        aligned = alignment(latents[2].permute(0, 1, 3, 4, 2).reshape(2, 4, 4, 48), features.float())
    assert terms["alignment"].dtype == torch.float32
    torch.testing.assert_close(terms["alignment"], aligned.loss, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(terms["loss"], diffusion_loss + 0.5 * aligned.loss, rtol=1e-5, atol=1e-7)
    assert abs(aligned.loss) > 1e-3
    with pytest.raises(ValueError, match="^DFoTObjective has an alignment loss but no teacher features were given$"):
        objective(model, batch, noise)
    for key in ("intrinsics", "c2w"):
        with pytest.raises(KeyError, match=rf"train\.objective=dfot needs batch\['{key}'\] \(camera-conditioned "
                                           r"data: data\.camera=true\)"):
            dfot_external_cond({k: v for k, v in batch.items() if k != key})
