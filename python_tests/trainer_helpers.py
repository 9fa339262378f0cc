"""Shared set-up for the model / trainer / sampler / demo tests: tiny configs on tiny synthetic data."""
from __future__ import annotations

import os
import sys

import pytest

TINY_MODEL = ["model.hidden_dim=32", "model.depth=2", "model.num_heads=2", "model.align_depth=1",
              "loss.projector_dim=32", "loss.head_dim=16"]


# The trainer tests keep the recipe they were written for (flow matching on v, per-frame noise,
# constant lr 3e-4, alignment from step 0), not the demo's current one (issue #13), which
# experiment=demo now sets.
PLAIN_RECIPE = ["model.prediction=v", "train.loss_space=v", "train.noise_mode=independent", "train.t_shift=1.0",
                "train.lr=3e-4", "train.lr_decay=constant", "sample.method=heun", "sample.steps=10",
                "loss.align_start=0.0"]


def tiny_overrides(data_root: str, out_dir: str, *extra: str) -> list:
    """A 16 px, 4-clip, 2-block run that takes well under a second per step on one CPU core."""
    return ["experiment=demo", *PLAIN_RECIPE, f"data.root={data_root}", "data.num_clips=4", "data.clip_frames=8",
            "data.resolution=[16,16]", "train.batch_size=2", "train.num_frames=4", "train.steps=6",
            "train.ckpt_every=2", "train.log_every=1", "train.warmup_steps=2", "train.progress=false",
            "train.device=cpu", f"out_dir={out_dir}", *TINY_MODEL, *extra]


def generate_tiny_data(root: str) -> str:
    from gfcore.data.synthetic import generate

    if not os.path.isfile(os.path.join(root, "train", "generator.json")):
        generate(root, num_clips=4, num_frames=8, resolution=16, seed=0, task="camera", split="train")
    return root


@pytest.fixture(scope="session")
def tiny_data_root(tmp_path_factory):
    """4 synthetic camera clips x 8 frames at 16 px, generated once per test session."""
    return generate_tiny_data(str(tmp_path_factory.mktemp("gf_tiny_data")))


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def train_rank(rank: int, world_size: int, port: int, overrides: list) -> None:
    """One gloo rank of a training run, as torchrun would start it."""
    import torch
    import torch.distributed as dist

    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    from gfcore.train import load_config, train

    try:
        train(load_config(overrides))
    finally:
        if dist.is_initialized():  # train() raised before its own teardown
            dist.destroy_process_group()
    # A line per rank: a rank that dies shows in the test's captured stderr how far it got.
    print(f"rank {rank}: trained, process group ended", file=sys.stderr, flush=True)


def exit_finished_rank() -> None:
    """End a spawned rank whose work is done and checked without interpreter shutdown, where gloo's
    threads can still abort a finished rank (SIGABRT, "terminate called without an active exception",
    seen once in CI; the failure pytorch/pytorch#179291 proposed an atexit handler against)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def ddp_worker(rank: int, world_size: int, port: int, overrides: list) -> None:
    """torch.multiprocessing.spawn target: train_rank, then exit_finished_rank."""
    train_rank(rank, world_size, port, overrides)
    exit_finished_rank()


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny models run faster on one thread, and do not stall when other processes hold the cores."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
