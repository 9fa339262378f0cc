"""DDP (and FSDP) with 2 CPU processes (gloo) agree with one process on the same global batch."""
import os

import pytest
import torch
import torch.multiprocessing as mp

from gfcore.io.checkpoint_file import read_checkpoint
from gfcore.train import load_config, train
from gfcore.train.trainer import build_training
from trainer_helpers import (ddp_worker, exit_finished_rank, free_port, one_torch_thread, tiny_data_root,  # noqa: F401
                             tiny_overrides, train_rank)


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_gloo_ranks_match_one_process(tmp_path, tiny_data_root, strategy):  # noqa: F811
    extra = ["teacher=pointmap", "train.steps=3", "train.ckpt_every=3", "train.batch_size=4",
             f"train.strategy={strategy}"]
    single = str(tmp_path / "single")
    train(load_config(tiny_overrides(tiny_data_root, single, *extra)))  # one thread, as each rank uses
    double = str(tmp_path / "ddp")
    mp.spawn(ddp_worker, args=(2, free_port(), tiny_overrides(tiny_data_root, double, *extra)), nprocs=2, join=True)

    a = read_checkpoint(os.path.join(single, "final.pt"))["model"]
    b = read_checkpoint(os.path.join(double, "final.pt"))["model"]
    assert a.keys() == b.keys()
    for key in a:
        # all-reduce sums in another order than one process: equal up to float rounding
        torch.testing.assert_close(b[key], a[key], atol=2e-6, rtol=1e-5, msg=lambda m: f"{key}: {m}")
    initial, _, _ = build_training(load_config(tiny_overrides(tiny_data_root, single, *extra)), torch.device("cpu"))
    changed = [k for k, v in initial.state_dict().items() if not torch.equal(v, a[k])]
    assert len(changed) > len(a) // 2  # the runs did train
    # the per-rank RNG states of both ranks are in the checkpoint
    ckpt = read_checkpoint(os.path.join(double, "checkpoints", "step_00000003.pt"))
    assert len(ckpt["rng"]) == 2 and ckpt["world_size"] == 2


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_gloo_ranks_with_checkpointing_samples_and_tensorboard(tmp_path, tiny_data_root, strategy):  # noqa: F811
    """The issue-14 switches under DDP / FSDP: activation checkpointing, sample videos (the EMA
    gathered on every rank, the rollout on rank 0 only) and TensorBoard on rank 0."""
    pytest.importorskip("tensorboard", reason="pip install tensorboard to test the tensorboard logger")
    extra = ["teacher=pointmap", "train.steps=3", "train.ckpt_every=3", "train.batch_size=4",
             f"train.strategy={strategy}", "train.activation_checkpointing=true", "train.sample_every=2",
             "sample.steps=1", "sample.use_ema=true", "train.loggers=[jsonl,tensorboard]"]
    single = str(tmp_path / "single")
    train(load_config(tiny_overrides(tiny_data_root, single, *extra)))
    double = str(tmp_path / "ddp")
    mp.spawn(ddp_worker, args=(2, free_port(), tiny_overrides(tiny_data_root, double, *extra)), nprocs=2, join=True)
    a = read_checkpoint(os.path.join(single, "final.pt"))["model"]
    b = read_checkpoint(os.path.join(double, "final.pt"))["model"]
    for key in a:
        torch.testing.assert_close(b[key], a[key], atol=2e-6, rtol=1e-5, msg=lambda m: f"{key}: {m}")
    assert os.listdir(os.path.join(double, "samples")) == ["step_00000002.gif"]
    assert len(os.listdir(os.path.join(double, "tensorboard"))) == 1  # one writer: rank 0's


def _metric_records(out):
    import json

    with open(os.path.join(out, "log.jsonl")) as handle:
        return [r for r in (json.loads(line) for line in handle) if "event" not in r]


def _counting_worker(rank: int, world_size: int, port: int, overrides: list, folder: str) -> None:
    """train_rank, then the number of graphs dynamo compiled in this rank, in folder/graphs_<rank>."""
    from torch._dynamo.utils import counters

    counters.clear()
    train_rank(rank, world_size, port, overrides)
    with open(os.path.join(folder, f"graphs_{rank}"), "w") as handle:
        handle.write(str(counters["stats"]["unique_graphs"]))
    exit_finished_rank()


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_gloo_ranks_with_compile_match_one_eager_process(tmp_path, tiny_data_root, strategy):  # noqa: F811
    """train.compile under DDP (2 gloo ranks; the model compiled after wrapping, so dynamo's
    DDPOptimizer splits the graph at the gradient buckets) against one eager process on the same
    global batch: each step's logged loss terms within rel 1e-4 (inductor reorders float
    arithmetic, as in test_train_speed_switches) and the final weights within atol 1e-5 / rtol 1e-3."""
    base = ["teacher=pointmap", "train.steps=3", "train.ckpt_every=3", "train.batch_size=4", "train.log_every=1"]
    single = str(tmp_path / "single")
    torch._dynamo.reset()
    train(load_config(tiny_overrides(tiny_data_root, single, *base)))
    double = str(tmp_path / "ddp")
    mp.spawn(_counting_worker, args=(2, free_port(), tiny_overrides(tiny_data_root, double, *base,
                                                                   f"train.strategy={strategy}", "train.compile=true"),
                                     str(tmp_path)), nprocs=2, join=True)
    for rank in (0, 1):  # the model really was compiled in both ranks
        with open(tmp_path / f"graphs_{rank}") as handle:
            assert int(handle.read()) > 0
    eager, compiled = _metric_records(single), _metric_records(double)
    assert [r["step"] for r in eager] == [r["step"] for r in compiled] and len(eager) == 3
    for a, b in zip(eager, compiled):
        for key in ("loss", "diffusion", "angular", "scale", "cosine", "grad_norm"):
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), (a["step"], key)
    a = read_checkpoint(os.path.join(single, "final.pt"))["model"]
    b = read_checkpoint(os.path.join(double, "final.pt"))["model"]
    assert a.keys() == b.keys()  # compile kept the parameter names (no _orig_mod., no module.)
    for key in a:
        torch.testing.assert_close(b[key], a[key], atol=1e-5, rtol=1e-3, msg=lambda m: f"{key}: {m}")
