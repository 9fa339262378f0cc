"""GeometryAlignmentLoss under a process group (2 gloo ranks): inside DDP or sharded by FSDP2 its
projector gradients are averaged (equal on both ranks, and equal to one process on the union of
the data), and left outside any wrapper it warns once that they are not."""
import gc
import os
import warnings

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from trainer_helpers import free_port

WORLD = 2


class ModelWithLoss(nn.Module):
    """The drop-in pattern: the loss module is a submodule of what DDP / FSDP wraps."""

    def __init__(self, model, align):
        super().__init__()
        self.model, self.align = model, align

    def forward(self, x, y):
        return self.align(self.model(x), y).loss


def _build():
    from gfcore import GeometryAlignmentLoss

    torch.manual_seed(0)
    return nn.Linear(8, 8), GeometryAlignmentLoss(hidden_dim=8, target_dim=12, projector_dim=16, head_dim=8)


def _data(rank):
    g = torch.Generator().manual_seed(100 + rank)
    return torch.randn(6, 8, generator=g), torch.randn(6, 12, generator=g)


def _worker(rank, port, pattern, out_dir):
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(WORLD))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        model, align = _build()
        x, y = _data(rank)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if pattern == "ddp":
                from torch.nn.parallel import DistributedDataParallel

                wrapped = DistributedDataParallel(ModelWithLoss(model, align))  # kept: its reducer works in backward
                wrapped(x, y).backward()
            elif pattern == "accelerate":  # accelerate wraps what it prepares (here DDP)
                from accelerate import Accelerator

                accelerator = Accelerator(cpu=True)
                wrapped = accelerator.prepare(ModelWithLoss(model, align))
                accelerator.backward(wrapped(x, y))
            elif pattern == "fsdp2":
                from torch.distributed.fsdp import fully_shard

                both = ModelWithLoss(model, align)
                fully_shard(both.align)
                wrapped = fully_shard(both)
                both(x, y).backward()
            else:  # the mistake: only the model in DDP, the loss module beside it
                from torch.nn.parallel import DistributedDataParallel

                wrapped = DistributedDataParallel(model)
                align(wrapped(x), y).loss.backward()
        grad = align.projector[0].weight.grad
        grad = grad.full_tensor() if hasattr(grad, "full_tensor") else grad
        torch.save({"grad": grad.detach().clone(),
                    "warned": [str(w.message) for w in caught if "never averaged across ranks" in str(w.message)]},
                   os.path.join(out_dir, f"rank{rank}.pt"))
        # The wrappers (DDP's reducer) go before their process group: destroyed after it, a
        # reducer's threads can abort the process at exit.
        del wrapped
        if pattern == "fsdp2":
            del both
        gc.collect()
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _one_process_grad():
    """The projector gradient of one process on both ranks' data (the mean of their losses)."""
    model, align = _build()
    losses = [ModelWithLoss(model, align)(*_data(rank)) for rank in range(WORLD)]
    (sum(losses) / WORLD).backward()
    return align.projector[0].weight.grad


@pytest.mark.parametrize("pattern", ["ddp", "fsdp2", "accelerate", "outside"])
def test_projector_gradients_across_ranks(tmp_path, pattern):
    mp.spawn(_worker, args=(free_port(), pattern, str(tmp_path)), nprocs=WORLD, join=True)
    results = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    if pattern == "outside":
        assert all(len(r["warned"]) == 1 for r in results)  # once per module, on every rank
        assert not torch.allclose(results[0]["grad"], results[1]["grad"])  # the drift the warning is about
        return
    assert all(r["warned"] == [] for r in results)
    torch.testing.assert_close(results[0]["grad"], results[1]["grad"], rtol=0, atol=0)
    torch.testing.assert_close(results[0]["grad"], _one_process_grad(), rtol=1e-5, atol=1e-7)


def test_no_check_without_a_process_group(recwarn):
    model, align = _build()
    ModelWithLoss(model, align)(*_data(0)).backward()
    assert not [w for w in recwarn if "never averaged" in str(w.message)]


# -- the check itself, in this process (a one-rank gloo group; the world size faked for the warning) --


@pytest.fixture
def one_rank_group():
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    try:
        yield
    finally:
        gc.collect()
        dist.destroy_process_group()


def test_which_modules_count_as_synchronised(one_rank_group):
    from torch.distributed.fsdp import fully_shard
    from torch.nn.parallel import DistributedDataParallel

    from gfcore.losses import sync_check

    model, align = _build()
    assert not sync_check.parameters_synchronized(align)  # no wrapper holds it
    assert sync_check.parameters_synchronized(nn.ReLU())  # no parameters: nothing to synchronise
    wrapped = DistributedDataParallel(ModelWithLoss(model, align))
    assert sync_check.parameters_synchronized(align)
    assert sync_check.parameters_synchronized(wrapped)  # the wrapper itself
    other_model, other_align = _build()
    assert not sync_check.parameters_synchronized(other_align)  # another module's DDP does not count
    del wrapped
    gc.collect()
    assert not sync_check.parameters_synchronized(align)  # the wrapper is gone
    fully_shard(other_align)
    assert sync_check.parameters_synchronized(other_align)  # FSDP2 (sharded parameters)


def test_the_warning_names_the_world_and_comes_once(one_rank_group, monkeypatch):
    from gfcore.losses import sync_check

    model, align = _build()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        align(model(_data(0)[0]), _data(0)[1])  # world size 1: nothing to synchronise, no warning
    assert not [w for w in caught if "never averaged" in str(w.message)]
    monkeypatch.setattr(sync_check, "_distributed_world_size", lambda: 2)
    model, align = _build()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(2):
            align(model(_data(0)[0]), _data(0)[1])
    messages = [str(w.message) for w in caught if "never averaged" in str(w.message)]
    assert messages == [
        "GeometryAlignmentLoss: a process group of 2 ranks is initialised, but this module's parameters (the "
        "projector and head) are inside no DistributedDataParallel and are not sharded by FSDP, so their gradients "
        "are never averaged across ranks and each rank's copy drifts apart. Put the loss module inside the "
        "DDP/FSDP-wrapped module (or wrap it too); see the README's drop-in section."]


def test_the_warning_points_at_the_callers_line(one_rank_group, monkeypatch):
    """Past nn.Module.__call__ and the loss's forward, at the line that called the loss. (Left out of the
    mutation runs: mutmut's trampolines add frames of their own, outside torch and gfcore.)"""
    from gfcore.losses import sync_check

    monkeypatch.setattr(sync_check, "_distributed_world_size", lambda: 2)
    model, align = _build()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        align(model(_data(0)[0]), _data(0)[1])
    assert [w.filename for w in caught if "never averaged" in str(w.message)] == [__file__]


def test_world_size_without_and_with_a_group(one_rank_group):
    from gfcore.losses import sync_check

    assert sync_check._distributed_world_size() == 1
