"""FSDP bf16 mixed precision (2 gloo ranks) against the plain float32 path, and checkpoints that
resume on another world size (2 processes, then 1; 1, then 2)."""
import json
import os

import pytest
import torch
import torch.multiprocessing as mp
from omegaconf import OmegaConf

from gfcore.io.checkpoint_file import read_checkpoint
from gfcore.train import load_config, train
from gfcore.train.trainer import fsdp_mixed_precision
from trainer_helpers import ddp_worker, free_port, one_torch_thread, tiny_data_root, tiny_overrides  # noqa: F401

EXTRA = ["teacher=pointmap", "train.batch_size=4", "train.ckpt_every=2"]


def losses(run):
    with open(os.path.join(run, "log.jsonl")) as handle:
        records = [json.loads(line) for line in handle if line.strip()]
    return {r["step"]: r["loss"] for r in records if "event" not in r}


def spawn(overrides, world_size=2):
    mp.spawn(ddp_worker, args=(world_size, free_port(), overrides), nprocs=world_size, join=True)


def test_the_switch_resolves_per_device():
    cfg = load_config(["train.strategy=fsdp"])
    assert cfg.train.fsdp_mixed_precision == "auto"
    assert fsdp_mixed_precision(cfg, torch.device("cpu")) is None  # CPU tests run gloo in float32
    policy = fsdp_mixed_precision(cfg, torch.device("cuda"))
    assert policy.param_dtype == torch.bfloat16 and policy.reduce_dtype == torch.float32
    assert fsdp_mixed_precision(OmegaConf.merge(cfg, {"train": {"fsdp_mixed_precision": "none"}}),
                                torch.device("cuda")) is None
    with pytest.raises(ValueError, match="fsdp_mixed_precision must be auto, bf16 or none"):
        fsdp_mixed_precision(OmegaConf.merge(cfg, {"train": {"fsdp_mixed_precision": "fp16"}}), torch.device("cpu"))


def test_fsdp_bf16_matches_the_float32_path_within_bf16_rounding(tmp_path, tiny_data_root):  # noqa: F811
    """2 ranks, params in bf16 and gradients reduced in fp32: every step's loss within 2 % of one
    float32 process (bf16 keeps 8 mantissa bits, 0.4 % per rounding), not equal to it (the policy
    is applied), and float32 weights in the checkpoints."""
    extra = [*EXTRA, "train.steps=4", "train.strategy=fsdp"]
    single = str(tmp_path / "single")
    train(load_config(tiny_overrides(tiny_data_root, single, *extra)))
    bf16 = str(tmp_path / "bf16")
    spawn(tiny_overrides(tiny_data_root, bf16, *extra, "train.fsdp_mixed_precision=bf16"))
    a, b = losses(single), losses(bf16)
    assert sorted(a) == sorted(b) == [1, 2, 3, 4]
    for step in a:
        assert b[step] == pytest.approx(a[step], rel=2e-2), step
    assert max(abs(a[s] - b[s]) for s in a) > 1e-6  # bf16 compute did happen
    final = read_checkpoint(os.path.join(bf16, "final.pt"))
    assert all(v.dtype == torch.float32 for v in final["model"].values() if v.is_floating_point())
    ckpt = read_checkpoint(os.path.join(bf16, "checkpoints", "step_00000004.pt"))
    assert all(v.dtype == torch.float32 for s in ckpt["optimizer"]["state"].values() for k, v in s.items()
               if k != "step")


@pytest.mark.parametrize("strategy,first,second", [("fsdp", 2, 1), ("fsdp", 1, 2), ("ddp", 1, 2)])
def test_a_checkpoint_resumes_on_another_world_size(tmp_path, tiny_data_root, strategy, first, second):  # noqa: F811
    """Steps 1-2 on `first` processes, steps 3-4 resumed from the step-2 checkpoint on `second`:
    the same weights and losses as 4 uninterrupted steps in one process (float rounding apart)."""
    extra = [*EXTRA, f"train.strategy={strategy}"]
    whole = str(tmp_path / "whole")
    train(load_config(tiny_overrides(tiny_data_root, whole, *extra, "train.steps=4")))
    run = str(tmp_path / "run")
    for world, steps in ((first, 2), (second, 4)):
        overrides = tiny_overrides(tiny_data_root, run, *extra, f"train.steps={steps}")
        if world == 1:
            train(load_config(overrides))
        else:
            spawn(overrides, world)
    ckpt = read_checkpoint(os.path.join(run, "checkpoints", "step_00000004.pt"))
    assert ckpt["world_size"] == second and isinstance(next(iter(ckpt["optimizer"]["state"])), str)
    with open(os.path.join(run, "log.jsonl")) as handle:
        events = [json.loads(line) for line in handle if '"event"' in line]
    assert [e["event"] for e in events] == ["resume"] and events[0]["step"] == 2
    a = read_checkpoint(os.path.join(whole, "final.pt"))
    b = read_checkpoint(os.path.join(run, "final.pt"))
    for part in ("model", "ema"):
        for key in a[part]:
            torch.testing.assert_close(b[part][key], a[part][key], atol=2e-6, rtol=1e-5,
                                       msg=lambda m: f"{part}.{key}: {m}")
    la, lb = losses(whole), losses(run)
    for step in (1, 2, 3, 4):
        assert lb[step] == pytest.approx(la[step], rel=1e-5), step


def _same_states(a, b, parts):
    for part in parts:
        state_a, state_b = a[part], b[part]
        if "shadow" in state_a:
            state_a, state_b = state_a["shadow"], state_b["shadow"]
        assert state_a.keys() == state_b.keys()
        for key in state_a:
            assert torch.equal(state_a[key], state_b[key]), (part, key)


def test_fsdp_ema_on_the_cpu_and_a_resume_across_the_switch(tmp_path, tiny_data_root, monkeypatch):  # noqa: F811
    """2 ranks: steps 1-2 with the default EMA (sharded like the weights), 3-4 resumed with
    ema_device=cpu (each rank holds its own shard of the averages as a plain host tensor, gathered
    through the mesh for checkpoints): bit-identical to 4 steps with the default (same world size,
    same shards: nothing is reordered). The in-process check below sees the shard layout."""
    extra = [*EXTRA, "train.strategy=fsdp"]
    straight = str(tmp_path / "straight")
    spawn(tiny_overrides(tiny_data_root, straight, *extra, "train.steps=4"))
    run = str(tmp_path / "run")
    spawn(tiny_overrides(tiny_data_root, run, *extra, "train.steps=2"))
    spawn(tiny_overrides(tiny_data_root, run, *extra, "train.steps=4", "train.ema_device=cpu"))
    assert losses(straight) == losses(run)
    _same_states(read_checkpoint(os.path.join(straight, "final.pt")), read_checkpoint(os.path.join(run, "final.pt")),
                 ("model", "ema"))
    name = os.path.join("checkpoints", "step_00000004.pt")
    _same_states(read_checkpoint(os.path.join(straight, name)), read_checkpoint(os.path.join(run, name)),
                 ("model", "ema", "objective"))


def test_cpu_ema_of_an_fsdp_model_keeps_plain_local_shards():
    """In one gloo process (a 1-rank mesh): the averages of a fully_shard-ed module are plain
    float32 tensors (this rank's shard, here all of it), and state_dict / load_state_dict go
    through the mesh as the default EMA's DTensors do."""
    import torch.distributed as dist
    from torch.distributed.fsdp import fully_shard

    from gfcore.train.optim import EMA

    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        torch.manual_seed(0)
        module = fully_shard(torch.nn.Linear(4, 3))
        held, default = EMA(module, 0.9, device="cpu"), EMA(module, 0.9)
        assert all(type(v) is torch.Tensor for v in held.shadow.values())
        assert all(hasattr(v, "device_mesh") for v in default.shadow.values())
        with torch.no_grad():
            for p in module.parameters():
                p.add_(1.0)
        held.update(module)
        default.update(module)
        for key, value in default.state_dict()["shadow"].items():
            assert torch.equal(held.state_dict()["shadow"][key], value), key
        held.load_state_dict({"decay": 0.9, "shadow": {k: v + 1 for k, v in default.state_dict()["shadow"].items()}})
        for key, value in default.state_dict()["shadow"].items():
            assert type(held.shadow[key]) is torch.Tensor and torch.equal(held.shadow[key], value + 1), key
    finally:
        dist.destroy_process_group()


def test_fsdp_offload_matches_the_plain_fsdp_run(tmp_path, tiny_data_root):  # noqa: F811
    """train.fsdp_offload=true, 2 gloo ranks: bit-identical losses, weights, EMA and optimizer
    state to the same FSDP run without it. Exact, not within rounding: on the CPU the offload
    only changes where FSDP says the shards live (host memory either way), the arithmetic and its
    order are the same. (On GPU the optimizer step then runs on the CPU: rounding may differ.)"""
    extra = [*EXTRA, "train.steps=2", "train.strategy=fsdp"]
    runs = {}
    for name, switch in (("plain", []), ("offload", ["train.fsdp_offload=true"])):
        runs[name] = str(tmp_path / name)
        spawn(tiny_overrides(tiny_data_root, runs[name], *extra, *switch))
    assert losses(runs["plain"]) == losses(runs["offload"]) and sorted(losses(runs["plain"])) == [1, 2]
    _same_states(*(read_checkpoint(os.path.join(runs[n], "final.pt")) for n in ("plain", "offload")),
                 ("model", "ema"))
    a, b = (read_checkpoint(os.path.join(runs[n], "checkpoints", "step_00000002.pt")) for n in ("plain", "offload"))
    _same_states(a, b, ("model", "ema", "objective"))
    assert a["optimizer"]["state"].keys() == b["optimizer"]["state"].keys()
    for key, state in a["optimizer"]["state"].items():
        for name in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(state[name], b["optimizer"]["state"][key][name]), (key, name)


def test_fsdp_offload_policy_is_applied_to_every_unit():
    """_wrap with fsdp_offload=true (one gloo process standing in for the group): every FSDP unit
    (each block and the root) carries a CPUOffloadPolicy (pinned memory only with CUDA: pinning
    needs it); without the switch none does."""
    import torch.distributed as dist
    from torch.distributed.fsdp import CPUOffloadPolicy, FSDPModule

    from gfcore.models.dit import build_model
    from gfcore.train.distributed import DistInfo
    from gfcore.train.trainer import TrainModule, _wrap

    def policies(offload):
        model = build_model(dict(image_size=[8, 8], hidden_dim=32, depth=2, num_heads=2, align_depth=1))
        cfg = OmegaConf.create({"train": {"strategy": "fsdp", "fsdp_mixed_precision": "none",
                                          "fsdp_offload": offload}})
        wrapped = _wrap(TrainModule(model, torch.nn.Identity()), cfg, DistInfo(rank=0, world_size=2),
                        torch.device("cpu"))
        units = [wrapped, *model.blocks]
        assert all(isinstance(unit, FSDPModule) for unit in units)
        return [unit._get_fsdp_state()._fsdp_param_group.offload_policy for unit in units]

    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        offloaded = policies(True)
        assert len(offloaded) == 3 and all(isinstance(p, CPUOffloadPolicy) and p.pin_memory is False
                                           for p in offloaded)
        assert not any(isinstance(p, CPUOffloadPolicy) for p in policies(False))
    finally:
        dist.destroy_process_group()


def test_fsdp_offload_values_and_the_cpu_collectives(monkeypatch):
    """A bad value or another strategy: a one-line error naming the key. On GPU the offload joins
    gloo to NCCL (cuda:nccl,cpu:gloo): clipping the host-memory gradients and gathering them for
    checkpoints are collectives on CPU tensors, which NCCL alone cannot run."""
    import torch.distributed as dist

    from gfcore.train.distributed import setup_distributed
    from gfcore.train.trainer import fsdp_offload

    cfg = load_config(["train.strategy=fsdp"])
    assert fsdp_offload(cfg) is False
    with pytest.raises(ValueError, match=r"^train.fsdp_offload must be true or false, got 'yes'$"):
        fsdp_offload(OmegaConf.merge(cfg, {"train": {"fsdp_offload": "yes"}}))
    with pytest.raises(ValueError, match=r"^train.fsdp_offload=true needs train.strategy=fsdp, got 'ddp'$"):
        fsdp_offload(OmegaConf.merge(cfg, {"train": {"fsdp_offload": True, "strategy": "ddp"}}))

    backends = []
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda backend: backends.append(backend))
    monkeypatch.setattr(dist, "get_rank", lambda: 0)
    monkeypatch.setattr(dist, "get_world_size", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", lambda index: None)
    for device, cpu_collectives in (("cuda", True), ("cuda", False), ("cpu", True), ("cpu", False)):
        setup_distributed(device, cpu_collectives=cpu_collectives)
    assert backends == ["cuda:nccl,cpu:gloo", "nccl", "gloo", "gloo"]


def test_train_ends_only_the_process_group_it_started(monkeypatch):
    """setup_distributed owns the group it creates under torchrun's variables, and
    teardown_distributed ends exactly that one; a group the caller made stays open for the caller."""
    import torch.distributed as dist

    from gfcore.train.distributed import setup_distributed, teardown_distributed

    monkeypatch.setenv("WORLD_SIZE", "1")
    assert setup_distributed("cpu").owns_group is False  # one process: no group at all
    monkeypatch.setenv("WORLD_SIZE", "2")  # as torchrun says it; a 1-rank group stands in for the 2 ranks
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        info = setup_distributed("cpu")
        assert info.owns_group is False
        teardown_distributed(info)
        assert dist.is_initialized()  # the caller's group is the caller's to end
    finally:
        dist.destroy_process_group()
    init = dist.init_process_group
    monkeypatch.setattr(dist, "init_process_group",
                        lambda backend: init(backend, store=dist.HashStore(), rank=0, world_size=1))
    info = setup_distributed("cpu")
    assert info.owns_group is True and dist.is_initialized()
    teardown_distributed(info)
    assert not dist.is_initialized()
