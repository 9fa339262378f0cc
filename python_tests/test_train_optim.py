"""The optimizer helpers against hand-derived values: the LR schedule and the EMA of the weights."""
import math
import os

import pytest
import torch

from gfcore.train.optim import EMA, build_optimizer, build_scheduler


def _lrs(scheduler_kwargs, steps, lr=0.1):
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = build_optimizer([param], lr=lr, weight_decay=0.0)
    scheduler = build_scheduler(optimizer, **scheduler_kwargs)
    lrs = []
    for _ in range(steps):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


def test_cosine_schedule_values():
    """warmup 2, total 10, floor 0.2: lr/base = 0.5, 1 (warmup), then 0.2 + 0.8 * (1 + cos(pi p)) / 2 for
    p = (step - 2) / 8; written out: p = 0 -> 1, p = 1/4 -> 0.2 + 0.4 (1 + sqrt(2)/2), p = 1/2 -> 0.6, p = 1 -> 0.2."""
    lrs = _lrs(dict(warmup_steps=2, total_steps=10, decay="cosine", min_lr_ratio=0.2), 12, lr=0.1)
    half_sqrt2 = 0.7071067811865476
    expected = {0: 0.5, 1: 1.0, 2: 1.0, 4: 0.2 + 0.4 * (1 + half_sqrt2), 6: 0.6, 8: 0.2 + 0.4 * (1 - half_sqrt2),
                10: 0.2, 11: 0.2}  # past total_steps the floor holds
    for step, factor in expected.items():
        assert lrs[step] == pytest.approx(0.1 * factor, rel=1e-12, abs=0), f"step {step}"
    assert all(a > b for a, b in zip(lrs[2:10], lrs[3:11]))  # strictly decreasing during the decay


def test_constant_schedule_and_no_warmup():
    assert _lrs(dict(warmup_steps=4, total_steps=10), 7, lr=2.0) == pytest.approx([0.5, 1.0, 1.5, 2.0, 2.0, 2.0, 2.0])
    lrs = _lrs(dict(warmup_steps=0, total_steps=4, decay="cosine"), 5, lr=1.0)
    assert lrs == pytest.approx([1.0, 0.5 * (1 + math.sqrt(0.5)), 0.5, 0.5 * (1 - math.sqrt(0.5)), 0.0], abs=1e-12)
    with pytest.raises(ValueError, match="lr_decay"):
        _lrs(dict(warmup_steps=0, total_steps=4, decay="linear"), 1)


def test_ema_update_is_decay_old_plus_one_minus_decay_new():
    """shadow <- d * shadow + (1 - d) * weights, kept in fp32 for bf16 modules; integer buffers ignored."""
    module = torch.nn.Linear(3, 2)
    module.register_buffer("count", torch.tensor(4))
    with torch.no_grad():
        module.weight.copy_(torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]))
        module.bias.zero_()
    ema = EMA(module, decay=0.9)
    assert set(ema.shadow) == {"weight", "bias"}
    w0 = module.weight.detach().double().clone()
    for value in (10.0, -2.0):
        with torch.no_grad():
            module.weight.fill_(value)
            module.bias.fill_(value)
        ema.update(module)
    # by hand: s1 = 0.9 w0 + 0.1 * 10, s2 = 0.9 s1 + 0.1 * (-2)
    s1 = 0.9 * w0 + 0.1 * 10.0
    s2 = 0.9 * s1 + 0.1 * (-2.0)
    torch.testing.assert_close(ema.shadow["weight"].double(), s2, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(ema.shadow["bias"].double(), torch.full((2,), 0.9 * 1.0 - 0.2, dtype=torch.float64),
                               rtol=1e-6, atol=1e-6)
    assert ema.shadow["weight"][0, 0].item() == pytest.approx(0.9 * (0.9 * 1 + 1.0) - 0.2, rel=1e-6)

    target = torch.nn.Linear(3, 2).to(torch.bfloat16)
    ema.copy_to(target)
    torch.testing.assert_close(target.weight.float(), ema.shadow["weight"].bfloat16().float(), rtol=0, atol=0)


def test_ema_state_round_trip_and_errors():
    module = torch.nn.Linear(2, 2)
    ema = EMA(module, decay=0.5)
    with torch.no_grad():
        module.weight.add_(1.0)
    ema.update(module)
    other = EMA(torch.nn.Linear(2, 2), decay=0.99)
    other.load_state_dict(ema.state_dict())
    assert other.decay == 0.5
    for key in ema.shadow:
        assert torch.equal(other.shadow[key], ema.shadow[key])
    with pytest.raises(KeyError, match="EMA state lacks"):
        other.load_state_dict({"decay": 0.5, "shadow": {}})
    for bad in (1.0, -0.1):
        with pytest.raises(ValueError, match="ema_decay"):
            EMA(module, decay=bad)
    assert EMA(module, decay=0.0).decay == 0.0


def test_warmup_of_one_step_and_a_one_step_decay():
    """warmup 1: step 0 already runs at the full lr; total = warmup + 1: the decay reaches the floor
    (progress 1) at step warmup + 1, passing through 1.0 at step warmup."""
    assert _lrs(dict(warmup_steps=1, total_steps=5, decay="cosine"), 2, lr=1.0) == pytest.approx([1.0, 1.0])
    lrs = _lrs(dict(warmup_steps=2, total_steps=3, decay="cosine", min_lr_ratio=0.1), 4, lr=1.0)
    assert lrs == pytest.approx([0.5, 1.0, 1.0, 0.1], abs=1e-12)


def _adamw_by_hand(p, grads, lr, wd, betas, eps):
    """Decoupled weight decay, then the bias-corrected Adam step (Loshchilov & Hutter), in float64."""
    m = v = 0.0
    for step, g in enumerate(grads, start=1):
        p = p * (1 - lr * wd)
        m = betas[0] * m + (1 - betas[0]) * g
        v = betas[1] * v + (1 - betas[1]) * g * g
        m_hat, v_hat = m / (1 - betas[0] ** step), v / (1 - betas[1] ** step)
        p = p - lr * m_hat / (math.sqrt(v_hat) + eps)
    return p


@pytest.mark.parametrize("weight_decay,betas,eps", [(0.0, (0.9, 0.999), None), (0.1, (0.5, 0.75), 1e-7)])
def test_optimizer_is_adamw_with_the_given_settings(weight_decay, betas, eps):
    """Two steps against AdamW written out by hand; gradients of 1e-7 make eps (default 1e-8) count."""
    grads = [3e-7, -1e-7]
    param = torch.nn.Parameter(torch.tensor([2.0], dtype=torch.float64))
    extra = {} if eps is None else {"eps": eps}
    optimizer = build_optimizer([param], lr=0.01, weight_decay=weight_decay, betas=betas, **extra)
    for g in grads:
        param.grad = torch.tensor([g], dtype=torch.float64)
        optimizer.step()
    expected = _adamw_by_hand(2.0, grads, 0.01, weight_decay, betas, 1e-8 if eps is None else eps)
    assert param.item() == pytest.approx(expected, rel=1e-14)
    assert optimizer.defaults["foreach"] is False  # the per-parameter kernels: bit-identical across world sizes


class FakeDTensor:
    """Duck-typed stand-in for an FSDP-sharded DTensor (no process group needed)."""

    def __init__(self, value):
        self.value, self.device_mesh, self.placements, self.device = value, "mesh", ("shard0",), torch.device("meta")

    def full_tensor(self):
        return self.value * 10


def test_full_tensor_and_shard_like_without_a_process_group(monkeypatch):
    from gfcore.train.optim import full_tensor, shard_like

    plain = torch.ones(2)
    assert full_tensor(plain) is plain
    assert torch.equal(full_tensor(FakeDTensor(torch.ones(2))), torch.full((2,), 10.0))
    # a plain target: a copy on the target's device (meta here, so a wrong device shows)
    full = torch.arange(3.0)
    out = shard_like(full, torch.empty(3, device="meta"))
    assert out.device.type == "meta" and out.shape == (3,)
    copied = shard_like(full, torch.empty(3))
    assert torch.equal(copied, full) and copied.data_ptr() != full.data_ptr()
    # a sharded target: distribute_tensor(full on like's device, like's mesh, like's placements)
    import torch.distributed.tensor as dtensor

    calls, sharded = [], torch.empty(3, device="meta")
    monkeypatch.setattr(dtensor, "distribute_tensor", lambda *args: calls.append(args) or sharded)
    assert shard_like(full, FakeDTensor(None)) is sharded
    (tensor, mesh, placements), = calls
    assert tensor.device.type == "meta" and (mesh, placements) == ("mesh", ("shard0",))
    # the shard goes back to like's device when distribute_tensor put it on the mesh's (FSDP's CPU
    # offload: the mesh is CUDA, the shards live in host memory; here cpu stands for the mesh's)
    monkeypatch.setattr(dtensor, "distribute_tensor", lambda *args: torch.arange(3.0))
    assert shard_like(full, FakeDTensor(None)).device.type == "meta"


def test_ema_defaults_and_missing_key_message():
    module = torch.nn.Sequential(*[torch.nn.Linear(1, 1) for _ in range(4)])  # 8 tensors
    assert EMA(module).decay == 0.999
    with pytest.raises(KeyError) as error:
        EMA(module).load_state_dict({"decay": 0.5, "shadow": {}})
    # the message names the first five missing keys, sorted
    assert error.value.args[0] == "EMA state lacks ['0.bias', '0.weight', '1.bias', '1.weight', '2.bias']"


def _perturbed(module, seed):
    with torch.no_grad():
        generator = torch.Generator().manual_seed(seed)
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=generator))
    return module


def test_ema_on_the_cpu_is_the_same_arithmetic_bit_for_bit():
    """train.ema_device=cpu: the averages live on the device asked for, and each update is the
    arithmetic of the default EMA, bit for bit: lerp_ with weight w = 1 - decay < 1/2, which is
    s + w (p - s) rounded once (a fused multiply-add), written out by hand below in float32 as
    addcmul. (d s + (1 - d) p in float32 rounds three times and differs in the last bit in ~40 %
    of the entries, so it is checked to within 2 ulp only.)"""
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.LayerNorm(7))
    module.register_buffer("count", torch.tensor(4))
    held, default = EMA(module, decay=0.9, device="cpu"), EMA(module, decay=0.9)
    assert set(held.shadow) == set(default.shadow) == {"0.weight", "0.bias", "1.weight", "1.bias"}
    by_hand = {k: v.detach().clone() for k, v in module.state_dict().items() if k in held.shadow}
    for seed in range(3):
        _perturbed(module, seed)
        held.update(module)
        default.update(module)
        for key, value in module.state_dict().items():
            if key in by_hand:
                s, p = by_hand[key], value.detach()
                by_hand[key] = torch.addcmul(s, p - s, torch.tensor(1 - 0.9, dtype=torch.float32))
                torch.testing.assert_close(by_hand[key], 0.9 * s + 0.1 * p, rtol=2 ** -22, atol=1e-7)
    for key in by_hand:
        assert held.shadow[key].device.type == "cpu" and held.shadow[key].dtype == torch.float32
        assert torch.equal(held.shadow[key], by_hand[key]), key
        assert torch.equal(default.shadow[key], by_hand[key]), key
    # the checkpointed state is the same, and loads across the switch either way
    for source, target in ((held, EMA(module, decay=0.9)), (default, EMA(module, decay=0.9, device="cpu"))):
        target.load_state_dict(source.state_dict())
        for key in by_hand:
            assert torch.equal(target.state_dict()["shadow"][key], by_hand[key]), key
        assert target.shadow["0.weight"].data_ptr() != source.shadow["0.weight"].data_ptr()


def test_ema_shadow_is_held_on_the_device_asked_for():
    """The averages of a module on one device kept on another (meta: no memory, but the device
    shows): built there, updated there, loaded there; without a device they stay with the weights."""
    module = torch.nn.Linear(3, 2)
    ema = EMA(module, decay=0.5, device="meta")
    assert {v.device.type for v in ema.shadow.values()} == {"meta"}
    ema.update(_perturbed(module, 0))
    ema.load_state_dict(EMA(module, decay=0.5).state_dict())
    assert {v.device.type for v in ema.shadow.values()} == {"meta"}
    assert {v.device.type for v in EMA(torch.nn.Linear(3, 2, device="meta")).shadow.values()} == {"meta"}


@pytest.fixture
def one_rank_mesh():
    """A 1-process gloo group and its 1-rank CPU mesh, torn down even when the test fails."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        yield init_device_mesh("cpu", (1,))
    finally:
        dist.destroy_process_group()


def test_cpu_ema_of_dtensor_weights_holds_plain_shards_and_gathers_them(one_rank_mesh):
    """train.ema_device=cpu on sharded weights (a Shard(0) weight, a Replicate bias on a 1-rank
    mesh): the averages are plain float32 tensors (this rank's shard), updated by the lerp
    (dyadic values: exact), gathered back to full tensors by state_dict, and load_state_dict
    copies this rank's shard into the buffer already held."""
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor

    module = torch.nn.Linear(3, 2)
    w0, b0 = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]), torch.tensor([0.5, -1.0])
    module.weight = torch.nn.Parameter(distribute_tensor(w0, one_rank_mesh, [Shard(0)]))
    module.bias = torch.nn.Parameter(distribute_tensor(b0, one_rank_mesh, [Replicate()]))
    held, default = EMA(module, decay=0.75, device="cpu"), EMA(module, decay=0.75)
    assert set(held.shadow) == {"weight", "bias"}
    assert all(type(v) is torch.Tensor and v.dtype == torch.float32 for v in held.shadow.values())
    assert all(hasattr(v, "device_mesh") for v in default.shadow.values())
    assert torch.equal(held.shadow["weight"], w0) and torch.equal(held.shadow["bias"], b0)

    with torch.no_grad():
        module.weight.to_local().fill_(-3.0)
        module.bias.to_local().copy_(torch.tensor([2.5, 7.0]))
    held.update(module)
    default.update(module)
    # by hand: 0.75 old + 0.25 new, exact in float32 for these values
    expected = {"weight": 0.75 * w0 - 0.75, "bias": torch.tensor([0.75 * 0.5 + 0.25 * 2.5, -0.75 + 1.75])}
    state = held.state_dict()
    assert state["decay"] == 0.75 and set(state["shadow"]) == {"weight", "bias"}
    for key, value in expected.items():
        assert type(state["shadow"][key]) is torch.Tensor, key
        assert torch.equal(state["shadow"][key], value), key
        assert torch.equal(default.state_dict()["shadow"][key], value), key

    buffers = {k: v.data_ptr() for k, v in held.shadow.items()}
    held.load_state_dict({"decay": 0.5, "shadow": {k: v + 1 for k, v in expected.items()}})
    default.load_state_dict({"decay": 0.5, "shadow": {k: v + 1 for k, v in expected.items()}})
    assert held.decay == 0.5
    for key, value in expected.items():
        assert type(held.shadow[key]) is torch.Tensor and held.shadow[key].data_ptr() == buffers[key], key
        assert torch.equal(held.shadow[key], value + 1), key
        assert torch.equal(held.state_dict()["shadow"][key], value + 1), key
        assert default.shadow[key].placements == getattr(module, key).placements, key
        assert torch.equal(default.state_dict()["shadow"][key], value + 1), key


def test_ema_buffers_are_float32_and_pinned_only_on_the_host_with_cuda(monkeypatch):
    """_empty_like: float32 whatever the default dtype; pin_memory=True exactly when the averages
    live on the host and CUDA is available (faked here; the request is recorded, not carried out)."""
    from gfcore.train import optim

    module = torch.nn.Linear(3, 2).double()
    empty, pins = torch.empty, []

    def recording_empty(*args, **kwargs):
        pins.append(kwargs.get("pin_memory", "absent"))
        return empty(*args, **{**kwargs, "pin_memory": False})

    monkeypatch.setattr(torch, "empty", recording_empty)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        ema = EMA(module, decay=0.5, device="cpu")
        ema.update(_perturbed(module, 0))
    finally:
        torch.set_default_dtype(previous)
    assert {v.dtype for v in ema.shadow.values()} == {torch.float32}
    assert pins == [False] * 4 and all(p is False for p in pins)  # 2 averages, 2 staging buffers: no CUDA here
    for available, device, pin in ((True, "cpu", True), (True, "meta", False), (False, "cpu", False)):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: available)
        pins.clear()
        value = optim._empty_like(torch.zeros(2, 3, dtype=torch.float64), torch.device(device))
        assert value.shape == (2, 3) and value.dtype == torch.float32 and value.device.type == device
        assert pins == [pin] and type(pins[0]) is bool, (available, device)


# two ranks, uneven shards: a (3, 2) weight split 2 + 1 rows (Shard(0)), a replicated bias
_W0 = [[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]
_W1 = [[-3.0, 1.0], [0.5, 2.0], [7.0, -1.0]]
_B0, _B1 = [0.5, -1.0, 2.0], [2.5, 7.0, -2.0]


def _two_rank_ema_worker(rank, store_path, out_dir):
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor

    torch.set_num_threads(1)
    dist.init_process_group("gloo", store=dist.FileStore(store_path, 2), rank=rank, world_size=2)
    try:
        mesh = init_device_mesh("cpu", (2,))
        module = torch.nn.Linear(2, 3)
        module.weight = torch.nn.Parameter(distribute_tensor(torch.tensor(_W0), mesh, [Shard(0)]))
        module.bias = torch.nn.Parameter(distribute_tensor(torch.tensor(_B0), mesh, [Replicate()]))
        ema = EMA(module, decay=0.75, device="cpu")
        out = {"held": {k: v.clone() for k, v in ema.shadow.items()}}
        with torch.no_grad():
            module.weight.to_local().copy_(torch.tensor(_W1)[[0, 1] if rank == 0 else [2]])
            module.bias.to_local().copy_(torch.tensor(_B1))
        ema.update(module)
        # cloned: like a module's state_dict, a gathered replicated (or unsharded) average is the held buffer itself
        out["state"] = {k: v.clone() for k, v in ema.state_dict()["shadow"].items()}
        buffers = {k: v.data_ptr() for k, v in ema.shadow.items()}
        ema.load_state_dict({"decay": 0.5, "shadow": {k: v + 1 for k, v in out["state"].items()}})
        out["loaded"] = {k: v.clone() for k, v in ema.shadow.items()}
        out["same_buffers"] = all(v.data_ptr() == buffers[k] for k, v in ema.shadow.items())
        out["reloaded_state"] = ema.state_dict()["shadow"]
        torch.save(out, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()
    from trainer_helpers import exit_finished_rank

    exit_finished_rank()  # its work is saved: no interpreter shutdown, where gloo's threads can abort a rank


def test_cpu_ema_of_unevenly_sharded_weights_on_two_ranks(tmp_path):
    """train.ema_device=cpu, 2 gloo ranks, a weight of 3 rows sharded 2 + 1: each rank holds its own
    rows; state_dict gathers the whole (3, 2) average on both ranks (by hand: 0.75 old + 0.25 new,
    exact here) and load_state_dict puts each rank's rows back into the buffers it holds."""
    import torch.multiprocessing as mp

    mp.spawn(_two_rank_ema_worker, args=(str(tmp_path / "store"), str(tmp_path)), nprocs=2, join=True)
    w = 0.75 * torch.tensor(_W0) + 0.25 * torch.tensor(_W1)
    b = 0.75 * torch.tensor(_B0) + 0.25 * torch.tensor(_B1)
    assert torch.equal(w[0], torch.tensor([0.0, 1.75])) and torch.equal(b, torch.tensor([1.0, 1.0, 1.0]))
    rows = {0: slice(0, 2), 1: slice(2, 3)}
    for rank in (0, 1):
        out = torch.load(tmp_path / f"rank{rank}.pt")
        assert torch.equal(out["held"]["weight"], torch.tensor(_W0)[rows[rank]]), rank
        assert torch.equal(out["held"]["bias"], torch.tensor(_B0)), rank
        for state in (out["state"], out["reloaded_state"]):
            offset = 0.0 if state is out["state"] else 1.0
            assert type(state["weight"]) is torch.Tensor and state["weight"].shape == (3, 2), rank
            assert torch.equal(state["weight"], w + offset) and torch.equal(state["bias"], b + offset), rank
        assert torch.equal(out["loaded"]["weight"], w[rows[rank]] + 1), rank
        assert torch.equal(out["loaded"]["bias"], b + 1), rank
        assert out["same_buffers"] is True, rank
