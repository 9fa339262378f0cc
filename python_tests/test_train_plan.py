"""`gfcore plan` (gfcore.train.plan): the step's peak memory planned on fake tensors, against
the same step really run on the CPU and measured by PyTorch's profiler (the allocator's own
record of every allocation and free), its linearity in the batch, FSDP sharding, a feature
cache, the trainer's refusal, the CLI and its bad input."""
import contextlib
import json

import pytest
import torch

from gfcore.train import load_config
from gfcore.train.plan import (GIB, PlanError, PlanRefusal, check_planned_memory, main, plan_memory, step_memory)
from trainer_helpers import tiny_overrides

# 32 px and 8 frames: activations (not weights) make most of the peak, as at the paper's size
PLAN_RUN = ["data.resolution=[32,32]", "train.num_frames=8", "data.clip_frames=8", "teacher=pointmap",
            "train.precision=fp32"]


def plan_cfg(*extra):
    return load_config(tiny_overrides("/unused", "/unused", *PLAN_RUN, *extra))


@contextlib.contextmanager
def allocator_peak(record):
    """The largest rise of allocated CPU bytes inside, from the profiler's memory events."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        yield
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                    if e.name() == "[memory]")
    running = peak = 0
    for _, nbytes in events:
        running += nbytes
        peak = max(peak, running)
    record["rise"] = peak


def test_plan_matches_the_allocator_on_a_real_step():
    """Planned on fake tensors vs the same two steps run for real: the bytes live before the
    steps equal the weights, EMA and alignment head counted by hand, and the rise above them
    agrees with the allocator's record within 5 %."""
    cfg = plan_cfg()
    planned = step_memory(cfg, per_rank=2)
    record = {}
    real = step_memory(cfg, per_rank=2, fake=False, around_steps=lambda: allocator_peak(record))
    from gfcore.train.trainer import build_training

    model, objective, _ = build_training(_plan_cfg_like(cfg, 2), torch.device("cpu"))
    weights = sum(t.numel() * t.element_size() for m in (model, objective) for t in [*m.parameters(), *m.buffers()])
    ema = sum(v.numel() * 4 for v in model.state_dict().values() if v.is_floating_point())
    assert planned.before_steps == real.before_steps == weights + ema
    assert planned.breakdown["parameters"] == weights and planned.breakdown["ema"] == ema
    rise = planned.peak_bytes - planned.before_steps
    assert rise > 5 * planned.before_steps  # activations dominate: the check is about them
    assert rise == pytest.approx(record["rise"], rel=0.05)
    assert planned.peak_bytes == pytest.approx(real.peak_bytes, rel=1e-3)  # the accounting itself, real or fake


def _plan_cfg_like(cfg, per_rank):
    from gfcore.train.plan import _plan_config

    return _plan_config(cfg, 1, per_rank)


def test_peak_is_linear_in_the_batch_and_the_plan_reads_the_line():
    """From 2 clips per rank on, the peak rises by the same bytes per clip (2 -> 3 -> 5 -> 8,
    within 0.1 %); from 1 to 2 by at most 4 % more (batch-1 kernels), so a line from 1 clip
    errs on the safe side. The largest batch is read off the line through two plans."""
    cfg = plan_cfg()
    peaks = {b: step_memory(cfg, per_rank=b).peak_bytes for b in (1, 2, 3, 5, 8)}
    slope = peaks[3] - peaks[2]
    assert slope > 0
    for b in (5, 8):
        assert peaks[b] - peaks[2] == pytest.approx((b - 2) * slope, rel=1e-3)
    assert slope <= peaks[2] - peaks[1] <= 1.04 * slope
    plan = plan_memory(cfg, device_gib=((peaks[2] + 3.5 * slope) / GIB / (1 - 0.06),))
    assert list(plan.max_batch.values()) == [5]  # 2 + 3.5 more clips fit: 5 clips
    assert plan.per_rank_batch == 2 and plan.peak_bytes == peaks[2] and plan.bytes_per_clip == slope


def test_fsdp_shards_weights_gradients_and_optimizer_states():
    """FSDP2 over 4 (fake) ranks: parameters, optimizer states and EMA per rank are a quarter
    of one process's (the tiny model's shards are padded: within 10 %), activations are not;
    with bf16 mixed precision (fsdp_mixed_precision=auto, as on a GPU) the activations halve."""
    fp32 = "train.fsdp_mixed_precision=none"  # as the unsharded run (bf16 gathers would halve activations)
    one = plan_memory(plan_cfg("train.strategy=fsdp", "train.batch_size=4", fp32), world_size=1)
    four = plan_memory(plan_cfg("train.strategy=fsdp", "train.batch_size=16", fp32), world_size=4)
    assert one.per_rank_batch == four.per_rank_batch == 4
    for name in ("parameters", "optimizer states", "ema"):
        assert four.breakdown[name] == pytest.approx(one.breakdown[name] / 4, rel=0.1), name
    assert four.breakdown["model activations"] >= one.breakdown["model activations"]
    assert all(v % 4 == 0 for v in four.max_batch.values())  # global batches: per-rank clips x 4
    bf16 = plan_memory(plan_cfg("train.strategy=fsdp", "train.batch_size=16"), world_size=4)
    assert bf16.breakdown["model activations"] < 0.75 * four.breakdown["model activations"]


def test_a_cached_teacher_is_not_on_the_device():
    """teacher.cache: no teacher weights or activations are planned, the features ride in the
    batch as float32 [B, T, P, (L,) D]."""
    live = step_memory(plan_cfg("teacher=dinov2", "teacher.checkpoint=/unused", "+teacher.dinov2_config={embed_dim:64,depth:2,num_heads:2}",
                                "teacher.image_size=28"), per_rank=1)
    cached = step_memory(plan_cfg("teacher=dinov2", "teacher.cache=/unused", "+teacher.dinov2_config={embed_dim:64,depth:2,num_heads:2}",
                                  "teacher.image_size=28"), per_rank=1)
    assert live.breakdown.get("teacher weights", 0) > 0
    assert cached.breakdown.get("teacher weights", 0) == 0 and cached.breakdown.get("teacher activations", 0) == 0


def test_the_trainer_refuses_a_run_that_does_not_fit():
    """check_planned_memory with the device's size given: a run planned above it is refused with
    the largest batch that fits and the switches; one below passes; off with plan_check=false."""
    cfg = plan_cfg("train.batch_size=4")
    plan = plan_memory(cfg)
    small = int(plan.peak_bytes * 0.9)
    with pytest.raises(PlanRefusal, match=r"planned to need .* GiB per GPU .*train.batch_size=\d+ fits; what lowers "
                                          r"the peak: train.activation_checkpointing=full.*train.plan_check=false"):
        check_planned_memory(cfg, torch.device("cpu"), total_bytes=small)
    assert check_planned_memory(cfg, torch.device("cpu"), total_bytes=plan.peak_bytes * 2) is not None
    with pytest.raises(PlanRefusal):  # 6 % of the device is kept for what the plan does not see
        check_planned_memory(cfg, torch.device("cpu"), total_bytes=int(plan.peak_bytes / 0.97))
    assert check_planned_memory(plan_cfg("train.batch_size=4", "train.plan_check=false"), torch.device("cpu"),
                                total_bytes=1) is None
    assert check_planned_memory(cfg, torch.device("cpu")) is None  # no CUDA device: nothing to check


def test_cli_json_and_bad_input(capsys):
    overrides = tiny_overrides("/unused", "/unused", *PLAN_RUN)
    assert main(["--json", "--device-gib", "1,2", *overrides]) == 0
    out = json.loads(capsys.readouterr().out)
    assert {"peak_bytes", "breakdown", "max_batch"} <= set(out) and set(out["max_batch"]) == {"1GB", "2GB"}
    assert out["peak_bytes"] == sum(out["breakdown"].values())
    for argv, message in ((["--world-size", "0"], "--world-size must be an int >= 1, got 0"),
                          (["--world-size", "two"], "--world-size must be an int >= 1, got 'two'"),
                          (["--world-size", "3"], "train.batch_size=2 does not divide over --world-size 3"),
                          (["--device-gib", "80,lots"], "--device-gib takes numbers of GiB separated by commas, "
                                                        "got 'lots'")):
        assert main([*argv, *overrides]) == 2
        assert message in capsys.readouterr().err
    from gfcore.train.config import ConfigError

    with pytest.raises(ConfigError, match="train.bacth_size"):
        main([*overrides, "train.bacth_size=3"])
    # train.batch_size is the global micro-batch: grad_accum leaves the per-rank peak as it is
    assert plan_memory(plan_cfg("train.grad_accum=3")).peak_bytes == plan_memory(plan_cfg()).peak_bytes
    with pytest.raises(PlanError, match="train.batch_size=2 does not divide over --world-size 4"):
        plan_memory(plan_cfg(), world_size=4)


def test_tracker_counts_storages_once_and_follows_frees_resizes_and_labels():
    """LiveTensorBytes by hand: a new storage counts once (views do not), a freed one leaves,
    a storage resize (how FSDP frees gathered weights) changes the count, labels come from
    `label`, from NVTX ranges and from module hooks, relabel moves bytes."""
    from gfcore.nvtx import nvtx_range
    from gfcore.train.memory import LiveTensorBytes

    tracker = LiveTensorBytes(range_labels={"train.forward": "forward"})
    with tracker:
        with tracker.label("a"):
            x = torch.zeros(256)  # 1 KiB
            view = x[:10].view(2, 5)  # noqa: F841 (a view: same storage)
        assert tracker.total == 1024 and tracker.by_label["a"] == 1024
        with nvtx_range("train.forward"):
            y = torch.ones(128, dtype=torch.float64)  # 1 KiB
        assert tracker.by_label["forward"] == 1024
        layer = torch.nn.Linear(4, 4)
        tracker.label_module(layer, "layer")
        out = layer(torch.zeros(2, 4))  # input 32 B outside, output 32 B inside
        assert tracker.by_label["layer"] == 32 and isinstance(out, torch.Tensor)
        tracker.relabel(y, "b")
        assert tracker.by_label["forward"] == 0 and tracker.by_label["b"] == 1024
        peak = tracker.total
        x.untyped_storage().resize_(0)
        assert tracker.total == peak - 1024
        del y
        assert tracker.total == peak - 2048
    assert tracker.peak == peak and "b" not in tracker.peak_by_label and tracker.peak_by_label["forward"] == 1024


def test_what_the_run_keeps_in_host_memory_is_not_planned_on_the_gpu():
    """train.ema_device=cpu: the peak drops by the EMA's bytes exactly (it is there all step);
    train.fsdp_offload: no sharded parameters or optimizer states on the GPU."""
    plain, host = step_memory(plan_cfg()), step_memory(plan_cfg("train.ema_device=cpu"))
    assert host.peak_bytes == plain.peak_bytes - plain.breakdown["ema"] and "ema" not in host.breakdown
    fsdp = ["train.strategy=fsdp", "train.batch_size=8", "train.fsdp_mixed_precision=none"]
    sharded = step_memory(plan_cfg(*fsdp), world_size=4)
    offloaded = step_memory(plan_cfg(*fsdp, "train.fsdp_offload=true"), world_size=4)
    assert sharded.breakdown["parameters"] > 0 and sharded.breakdown["optimizer states"] > 0
    assert offloaded.breakdown.get("optimizer states", 0) == 0
    assert offloaded.breakdown.get("parameters", 0) < sharded.breakdown["parameters"]  # buffers stay
    assert offloaded.peak_bytes < sharded.peak_bytes


def test_a_vggt_teacher_planned_in_bf16_weights_holds_about_half():
    """teacher=vggt (a small config) planned without its checkpoint: weights_dtype=bf16 holds the
    linear/conv weights in bf16, about half the fp32 bytes (norms, tokens, positions stay fp32)."""
    from gfcore.geometry import small_config

    small = "+teacher.vggt_config=" + json.dumps(small_config()).replace(" ", "").replace('"', "")
    base = ["teacher=vggt", "teacher.checkpoint=/unused", "teacher.image_size=28", small]
    fp32 = step_memory(plan_cfg(*base, "teacher.weights_dtype=fp32"), per_rank=1).breakdown["teacher weights"]
    bf16 = step_memory(plan_cfg(*base, "teacher.weights_dtype=bf16"), per_rank=1).breakdown["teacher weights"]
    assert 0.5 * fp32 < bf16 < 0.56 * fp32
