"""loss.align_start: a GF run trains on the diffusion loss alone for that share of its steps, then with the alignment."""
import pytest
import torch

from gfcore.io.checkpoint_file import read_checkpoint
from gfcore.losses import GeometryAlignmentLoss
from gfcore.train import load_config, train
from gfcore.train.checkpoint import list_checkpoints
from gfcore.train.objective import GFObjective
from test_train_objective import _setup
from trainer_helpers import one_torch_thread, tiny_data_root, tiny_overrides  # noqa: F401  (fixtures)


def test_alignment_weight_scales_only_the_alignment_term():
    model, batch, noise, features = _setup()
    alignment = GeometryAlignmentLoss(32, 10, projector_dim=16, head_dim=8, impl="reference")
    objective = GFObjective(alignment)
    full = objective(model, batch, noise, features)
    off = objective(model, batch, noise, features, alignment_weight=0.0)
    # the terms are the same either way (logged before align_start); only the loss differs
    for key in ("diffusion", "alignment", "angular", "scale", "cosine"):
        torch.testing.assert_close(off[key], full[key], rtol=0, atol=0)
    assert full["alignment"].abs() > 1e-3
    torch.testing.assert_close(off["loss"], off["diffusion"], rtol=0, atol=0)
    half = objective(model, batch, noise, features, alignment_weight=0.5)
    torch.testing.assert_close(half["loss"], half["diffusion"] + 0.5 * half["alignment"])
    off["loss"].backward()
    assert all(p.grad is None or torch.count_nonzero(p.grad) == 0 for p in alignment.parameters())


def _weights_at(out_dir, step):
    path = dict((s, p) for s, p in list_checkpoints(str(out_dir / "checkpoints")))[step]
    return read_checkpoint(path)["model"]


def test_before_align_start_the_gf_run_trains_like_the_baseline(tmp_path, tiny_data_root):  # noqa: F811
    """Same initial weights, batches and noise: up to align_start the GF run's model weights are
    the baseline's bit for bit; the step after, the alignment has moved them."""
    common = ["train.steps=4", "train.ckpt_every=1", "train.keep_last=10"]  # align_start 0.5: steps 0, 1 without it
    train(load_config(tiny_overrides(tiny_data_root, str(tmp_path / "base"), "teacher=none", *common)))
    train(load_config(tiny_overrides(tiny_data_root, str(tmp_path / "gf"), "teacher=pointmap", "loss.align_start=0.5",
                                     *common)))
    for step in (1, 2):
        base, gf = _weights_at(tmp_path / "base", step), _weights_at(tmp_path / "gf", step)
        assert all(torch.equal(base[k], gf[k]) for k in base), step
    base, gf = _weights_at(tmp_path / "base", 3), _weights_at(tmp_path / "gf", 3)
    assert not all(torch.equal(base[k], gf[k]) for k in base)


@pytest.mark.parametrize("value", [-0.1, 1, 1.5, "late", True])
def test_align_start_outside_the_run_is_refused(tmp_path, tiny_data_root, value):  # noqa: F811
    cfg = load_config(tiny_overrides(tiny_data_root, str(tmp_path / "gf"), "teacher=pointmap"))
    cfg.loss.align_start = value
    with pytest.raises(ValueError, match=r"loss\.align_start must be a share of train\.steps in \[0, 1\)"):
        train(cfg)
    assert not (tmp_path / "gf").exists()  # refused before the run folder is written


def test_a_run_killed_before_align_start_resumes_bit_identical(tmp_path, tiny_data_root):  # noqa: F811
    from gfcore.train.trainer import CrashForTesting

    common = ["teacher=pointmap", "loss.align_start=0.5", "train.steps=4", "train.ckpt_every=1"]
    straight = train(load_config(tiny_overrides(tiny_data_root, str(tmp_path / "straight"), *common)))
    with pytest.raises(CrashForTesting):
        train(load_config(tiny_overrides(tiny_data_root, str(tmp_path / "killed"), *common, "train.crash_after_step=1")))
    resumed = train(load_config(tiny_overrides(tiny_data_root, str(tmp_path / "killed"), *common)))
    timing = ("samples_per_s", "achieved_tflops", "mfu")
    assert resumed["resumed_from"] == 1
    assert {k: v for k, v in resumed["final"].items() if k not in timing} == \
        {k: v for k, v in straight["final"].items() if k not in timing}
    final = [read_checkpoint(tmp_path / run / "final.pt")["model"] for run in ("straight", "killed")]
    assert all(torch.equal(final[0][k], final[1][k]) for k in final[0])
