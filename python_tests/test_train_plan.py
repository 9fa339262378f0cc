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


# ------------------------------------------------------------------------- by hand, without a step

MIB = 2 ** 20


def hand_plan(**changes):
    """A MemoryPlan made by hand: 1 GiB of parameters (exactly: printed as GiB), 2.25 GiB of
    activations, 500 MiB of batch, no gradients (a zero: not printed)."""
    from gfcore.train.plan import MemoryPlan

    values = dict(world_size=2, strategy="fsdp", per_rank_batch=3, peak_bytes=GIB + 2 * GIB + GIB // 4 + 500 * MIB,
                  breakdown={"parameters": GIB, "gradients": 0, "model activations": 2 * GIB + GIB // 4,
                             "batch": 500 * MIB},
                  peak_owner="model activations", peak_during="backward", bytes_per_clip=300 * MIB + 512 * 1024,
                  max_batch={"24GB": 0, "80GB": 6}, seconds=12.34)
    values.update(changes)
    return MemoryPlan(**values)


# what `gfcore plan` prints for hand_plan(): worked out by hand (3.25 GiB + 500 MiB = 3.738 GiB)
HAND_PLAN_TEXT = [
    "planned peak per rank: 3.74 GiB at 3 clip(s) per rank (world size 2, fsdp); peak during backward, "
    "largest part: model activations",
    "breakdown at the peak:",
    "  parameters" + " " * 17 + "1.00 GiB",
    "  model activations" + " " * 10 + "2.25 GiB",
    "  batch" + " " * 21 + "500.0 MiB",
    "each further clip per rank: +300.5 MiB",
    "largest global batch that fits (nominal size less 6% for what is not planned):",
    "    24GB: none (not even 1 clip per rank)",
    "    80GB: 6",
    "(planned in 12.3 s on fake tensors; eager, without the CUDA context)",
]


def test_format_plan_prints_sizes_in_gib_or_mib_and_each_device_size():
    """The printed plan, line by line: sizes of 1 GiB and more in GiB (2 decimals), less in MiB
    (1 decimal), zero parts left out, a device size no batch fits says so."""
    from gfcore.train.plan import _size, format_plan

    assert format_plan(hand_plan()).split("\n") == HAND_PLAN_TEXT
    assert _size(GIB) == "    1.00 GiB" and _size(GIB - MIB) == "  1023.0 MiB" and _size(-3 * GIB) == "   -3.00 GiB"
    assert _size(0) == "     0.0 MiB" and _size(1536 * MIB) == "    1.50 GiB"


def test_cli_prints_the_plan_and_its_json(capsys, monkeypatch):
    """main() hands the world size and the parsed --device-gib to plan_memory (here a stand-in
    returning hand_plan()) and prints format_plan's text, or with --json the plan as JSON
    indented by one space."""
    import gfcore.train.plan as plan_module

    calls = []

    def fake_plan_memory(cfg, world_size=1, device_gib=plan_module.DEVICE_GIB):
        calls.append((int(cfg.train.batch_size), world_size, device_gib))
        return hand_plan()

    monkeypatch.setattr(plan_module, "plan_memory", fake_plan_memory)
    overrides = tiny_overrides("/unused", "/unused", "train.batch_size=6")
    assert main(["--world-size", "2", "--device-gib", "24,80", *overrides]) == 0
    assert capsys.readouterr().out == "\n".join(HAND_PLAN_TEXT) + "\n"
    assert calls == [(6, 2, (24, 80))]
    assert main(["--json", *overrides]) == 0
    out = capsys.readouterr().out
    assert calls[-1] == (6, 1, (24, 40, 80, 141))
    assert out.split("\n")[:3] == ["{", ' "world_size": 2,', ' "strategy": "fsdp",']
    assert json.loads(out) == {
        "world_size": 2, "strategy": "fsdp", "per_rank_batch": 3, "peak_bytes": 3828 * MIB,
        "breakdown": {"parameters": GIB, "gradients": 0, "model activations": 2304 * MIB, "batch": 500 * MIB},
        "peak_owner": "model activations", "peak_during": "backward", "bytes_per_clip": 300 * MIB + 512 * 1024,
        "max_batch": {"24GB": 0, "80GB": 6}, "seconds": 12.34}


def test_cli_help(capsys, monkeypatch):
    """gfcore plan --help: the program's name, what it does and each option's help."""
    monkeypatch.setenv("COLUMNS", "300")  # one line per option: nothing wrapped
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert text.startswith("usage: gfcore plan [-h] [--world-size WORLD_SIZE] [--json] [--device-gib DEVICE_GIB] ")
    for words in ("Plan the peak memory per GPU of a training run on the CPU (fake tensors: no GPU, no weights).",
                  "--world-size WORLD_SIZE ranks of the run (FSDP shards over them)",
                  "--json print one JSON object",
                  "--device-gib DEVICE_GIB device sizes for the largest batch, GiB, comma-separated"):
        assert words in text, words


def test_parse_device_gib_keeps_whole_sizes_as_ints_and_refuses_non_positive_ones():
    from gfcore.train.plan import parse_device_gib

    sizes = parse_device_gib("24, 40,1.5")
    assert sizes == (24, 40, 1.5) and [type(v) for v in sizes] == [int, int, float]
    for text in ("0", "-1", "inf", "80,0"):
        bad = text.split(",")[-1]
        with pytest.raises(PlanError, match=rf"^--device-gib takes positive numbers of GiB, got '{bad}'$"):
            parse_device_gib(text)


def test_plan_memory_refuses_bools_floats_and_strings_before_planning():
    """A bool is not a world size or a memory size, a float world size or a string size neither:
    PlanError naming the value (no cfg is read before)."""
    for world_size in (True, 2.0):
        with pytest.raises(PlanError, match=rf"^--world-size must be an int >= 1, got {world_size!r}$"):
            plan_memory(None, world_size=world_size)
    for gib in (True, "80"):
        with pytest.raises(PlanError, match=rf"^device memory sizes must be positive numbers of GiB, got {gib!r}$"):
            plan_memory(None, device_gib=(80, gib))


SWITCHES = ("train.activation_checkpointing=full (or selective); train.strategy=fsdp (with several GPUs); "
            "teacher.cache=DIR (precomputed features: no teacher on the GPU); train.ema_device=cpu; "
            "train.fsdp_offload=true; a smaller train.batch_size with train.grad_accum to keep the global batch")


def test_check_planned_memory_refusal_by_hand(monkeypatch):
    """check_planned_memory with plan_memory replaced by a stand-in: it plans for the run's world
    size and the device's size in GiB, passes a peak of exactly the budget (94 % of the device),
    refuses one byte more with the sizes, the batch that fits (or none) and the switches; the
    device's size comes from device_memory_bytes when not given; a config without
    train.plan_check is checked."""
    from omegaconf import OmegaConf

    import gfcore.train.plan as plan_module

    calls, answer = [], {}

    def fake_plan_memory(cfg, world_size=1, device_gib=plan_module.DEVICE_GIB):
        calls.append((world_size, device_gib))
        return hand_plan(peak_bytes=answer["peak"], max_batch={f"{g:g}GB": answer["fits"] for g in device_gib})

    monkeypatch.setattr(plan_module, "plan_memory", fake_plan_memory)
    cfg = OmegaConf.create({"train": {"batch_size": 8}})  # no train.plan_check: checked
    cpu = torch.device("cpu")
    total = 400 * MIB  # 94 % of it: 376 MiB exactly
    answer.update(peak=376 * MIB, fits=2)
    assert check_planned_memory(cfg, cpu, world_size=2, total_bytes=total).peak_bytes == 376 * MIB
    assert calls == [(2, (400 / 1024,))]
    answer.update(peak=376 * MIB + 1, fits=2)
    with pytest.raises(PlanRefusal) as refusal:
        check_planned_memory(cfg, cpu, world_size=2, total_bytes=total)
    assert str(refusal.value) == (
        "this run is planned to need 0.4 GiB per GPU (model activations largest, at train.batch_size=8 over 2 "
        "rank(s)), more than the 0.4 GiB device less 6% (0.4 GiB): train.batch_size=2 fits; what lowers the peak: "
        f"{SWITCHES}. `gfcore plan ...` shows the breakdown; train.plan_check=false skips this check")
    # a CUDA device's size from device_memory_bytes
    monkeypatch.setattr(plan_module, "device_memory_bytes", lambda device: 10 * GIB if device.type == "cuda" else None)
    answer.update(peak=12 * GIB, fits=0)
    with pytest.raises(PlanRefusal) as refusal:
        check_planned_memory(cfg, torch.device("cuda"), world_size=4)
    assert calls[-1] == (4, (10.0,))
    assert str(refusal.value) == (
        "this run is planned to need 12.0 GiB per GPU (model activations largest, at train.batch_size=8 over 4 "
        "rank(s)), more than the 10.0 GiB device less 6% (9.4 GiB): not even 1 clip per rank fits; what lowers the "
        f"peak: {SWITCHES}. `gfcore plan ...` shows the breakdown; train.plan_check=false skips this check")
    assert check_planned_memory(cfg, cpu) is None and len(calls) == 3  # no size: nothing planned
    off = OmegaConf.create({"train": {"batch_size": 8, "plan_check": False}})
    assert check_planned_memory(off, torch.device("cuda")) is None and len(calls) == 3


def test_device_memory_bytes_is_the_cuda_devices_total(monkeypatch):
    """The total of mem_get_info for the device asked (not the current one); None off CUDA or
    where CUDA is not available (CUDA stood in for here)."""
    from gfcore.train.plan import device_memory_bytes

    totals = {0: 24 * GIB, 1: 80 * GIB}

    def mem_get_info(device=None):
        index = 0 if device is None else torch.device(device).index
        return (GIB, totals[0 if index is None else index])

    monkeypatch.setattr(torch.cuda, "mem_get_info", mem_get_info)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert device_memory_bytes(torch.device("cuda", 1)) == 80 * GIB
    assert device_memory_bytes(torch.device("cuda", 0)) == 24 * GIB
    assert device_memory_bytes(torch.device("cpu")) is None
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert device_memory_bytes(torch.device("cuda", 1)) is None
    assert device_memory_bytes(torch.device("cpu")) is None


def test_cached_features_shape_and_tokens():
    """A cached teacher's features ride in the batch as [B, T, P, (L,) D]: (D,) for one layer,
    (L, D) for several; P is the model's token grid, here 32 x 64 px in 4 px patches: 8 x 16."""
    from types import SimpleNamespace

    from gfcore.train.plan import _feature_tail, _tokens
    from gfcore.train.trainer import build_training

    assert _feature_tail(SimpleNamespace(num_layers=1, feature_dim=64)) == (64,)
    assert _feature_tail(SimpleNamespace(num_layers=2, feature_dim=64)) == (2, 64)
    assert _feature_tail(SimpleNamespace(num_layers=3, feature_dim=16)) == (3, 16)
    cfg = plan_cfg("data.resolution=[32,64]")
    model, _, _ = build_training(cfg, torch.device("cpu"), teacher_weights=False)
    assert _tokens(cfg, model) == (32 // 4) * (64 // 4)


def test_tracker_follows_storage_resizes_by_label():
    """A storage grown by a single byte raises the peak, a shrunk one leaves its label's count
    (not only the total), and a host label's resize stays out of the total."""
    from gfcore.train.memory import LiveTensorBytes

    tracker = LiveTensorBytes(host_labels=("host",))
    with tracker:
        with tracker.label("a"):
            x = torch.zeros(10, dtype=torch.uint8)
        with tracker.label("host"):
            h = torch.zeros(8, dtype=torch.uint8)
        assert tracker.total == tracker.peak == 10
        storage = x.untyped_storage()
        assert storage.resize_(11) is storage  # resize_ still returns its storage
        assert tracker.total == tracker.peak == 11 and tracker.peak_by_label == {"a": 11}
        x.untyped_storage().resize_(4)
        assert tracker.total == 4 and tracker.by_label["a"] == 4 and tracker.peak == 11
        h.untyped_storage().resize_(2)
        assert tracker.total == 4 and tracker.by_label["host"] == 2


def test_plan_memory_reads_the_line_through_two_stand_in_steps(monkeypatch):
    """plan_memory with step_memory stood in by a line worked out by hand (2 GiB + 1 GiB per
    clip): the slope, the largest global batch per device size (floor of (94 % of it - 2 GiB) /
    1 GiB clips per rank, times the world size; none below the intercept), the breakdown in
    BREAKDOWN's order then other labels, the largest part, the strategy. A peak that does not
    rise with the batch gives no slope: 10**6 clips per rank where the peak fits (exactly at the
    budget included), none where it does not."""
    from omegaconf import OmegaConf

    import gfcore.train.plan as plan_module
    from gfcore.train.plan import BREAKDOWN, StepMemory, configured_micro_batch

    line = {}

    def fake_step_memory(cfg, world_size=1, per_rank=None, **_):
        per_rank = configured_micro_batch(cfg, world_size) if per_rank is None else per_rank
        peak = line["base"] + line["slope"] * per_rank
        return StepMemory(per_rank, peak, {"model activations": peak - line["weights"], "custom": line["custom"],
                                           "parameters": line["weights"] - line["custom"]}, "backward")

    monkeypatch.setattr(plan_module, "step_memory", fake_step_memory)
    line.update(base=2 * GIB, slope=GIB, weights=GIB, custom=GIB // 4)
    cfg = OmegaConf.create({"train": {"batch_size": 6, "strategy": "fsdp"}})
    plan = plan_memory(cfg, world_size=2, device_gib=(2, 4.5, 10))
    assert plan.max_batch == {"2GB": 0, "4.5GB": 2 * 2, "10GB": 7 * 2}  # 9.4 - 2 = 7.4: 7 clips per rank
    assert (plan.world_size, plan.strategy, plan.per_rank_batch, plan.peak_bytes) == (2, "fsdp", 3, 5 * GIB)
    assert plan.bytes_per_clip == GIB and type(plan.bytes_per_clip) is int
    assert (plan.peak_owner, plan.peak_during) == ("model activations", "backward")
    expected = dict.fromkeys(BREAKDOWN, 0)
    expected.update({"parameters": 3 * GIB // 4, "model activations": 4 * GIB})
    assert list(plan.breakdown.items()) == [*expected.items(), ("custom", GIB // 4)]
    assert 0 < plan.seconds < 60
    # no slope (the larger batch planned 1 MiB lower): the peak at 2 clips is the intercept
    line.update(base=376 * MIB + 2 * MIB, slope=-MIB, weights=MIB, custom=0)
    plan = plan_memory(OmegaConf.create({"train": {"batch_size": 6}}), world_size=3, device_gib=(400 / 1024, 0.25))
    assert plan.bytes_per_clip == 0 and plan.strategy == "ddp" and plan.peak_bytes == 376 * MIB
    assert plan.max_batch == {"0.390625GB": 10 ** 6 * 3, "0.25GB": 0}  # 94 % of 400 MiB: 376 MiB, the peak
    for gib in (0, -1):
        with pytest.raises(PlanError, match=rf"^device memory sizes must be positive numbers of GiB, got {gib}$"):
            plan_memory(cfg, world_size=2, device_gib=(80, gib))


def test_configured_micro_batch_and_the_plans_config():
    """train.batch_size is the global micro-batch: per rank it is batch_size / world size, an
    int, or PlanError naming both; the planned config (a resolved copy) has per_rank x world
    size clips, one micro-batch, no compile and no init_from."""
    from omegaconf import OmegaConf

    from gfcore.train.plan import _plan_config, configured_micro_batch

    cfg = OmegaConf.create({"train": {"batch_size": 6, "grad_accum": 4, "compile": True, "init_from": "/w.pt",
                                      "lr": "${train.base_lr}", "base_lr": 0.5}})
    assert configured_micro_batch(cfg, 2) == 3 and type(configured_micro_batch(cfg, 2)) is int
    assert configured_micro_batch(cfg, 6) == 1 and configured_micro_batch(cfg, 1) == 6
    with pytest.raises(PlanError, match=r"^train.batch_size=6 does not divide over --world-size 4$"):
        configured_micro_batch(cfg, 4)
    planned = _plan_config(cfg, 4, 3)
    assert planned.train.batch_size == 12 and type(planned.train.batch_size) is int
    assert planned.train.grad_accum == 1 and planned.train.compile is False and planned.train.init_from is None
    assert planned.train.lr == 0.5 and not OmegaConf.is_interpolation(planned.train, "lr")
    assert cfg.train.batch_size == 6 and cfg.train.grad_accum == 4 and cfg.train.init_from == "/w.pt"  # a copy


def test_fake_batch_holds_what_the_run_reads():
    """The planned batch, by hand: frames in [-1, 1) of [B, T, 3, H, W], keys, frame indices;
    cameras (intrinsics of focal W, H and centre W/2, H/2, identity poses, their rays) when the
    data has them or the teacher requires intrinsics; actions and depth when asked for."""
    from omegaconf import OmegaConf

    from gfcore.data.geometry import plucker_rays
    from gfcore.train.plan import _fake_batch

    torch.manual_seed(0)
    full = _fake_batch(OmegaConf.create({"train": {"num_frames": 3}, "data": {"resolution": [4, 6], "camera": True,
                                                                              "action_dim": 5}}), 2, ("depth",))
    assert set(full) == {"frames", "key", "frame_indices", "intrinsics", "c2w", "rays", "actions", "depth"}
    frames = full["frames"]
    assert frames.shape == (2, 3, 3, 4, 6) and frames.dtype == torch.float32
    assert -1 <= frames.min() < -0.5 and 0.5 < frames.max() < 1
    assert full["key"] == ["clip0", "clip1"] and full["frame_indices"].tolist() == [[0, 1, 2]] * 2
    k = torch.tensor([[6.0, 0.0, 3.0], [0.0, 4.0, 2.0], [0.0, 0.0, 1.0]])
    assert full["intrinsics"].shape == (2, 3, 3, 3) and torch.equal(full["intrinsics"], k.expand(2, 3, 3, 3))
    assert full["c2w"].shape == (2, 3, 4, 4) and torch.equal(full["c2w"], torch.eye(4).expand(2, 3, 4, 4))
    rays = plucker_rays(k.expand(2, 3, 3, 3), torch.eye(4).expand(2, 3, 4, 4), 4, 6)
    assert full["rays"].shape == (2, 3, 6, 4, 6) and torch.equal(full["rays"], rays)
    assert full["actions"].shape == (2, 3, 5) and 0 <= full["actions"].min() and full["actions"].max() < 1
    assert full["depth"].shape == (2, 3, 4, 6) and torch.equal(full["depth"], torch.ones(2, 3, 4, 6))
    plain = _fake_batch(OmegaConf.create({"train": {"num_frames": 2}, "data": {"resolution": [4, 4]}}), 1, ())
    assert set(plain) == {"frames", "key", "frame_indices"} and plain["frames"].shape == (1, 2, 3, 4, 4)
    asked = _fake_batch(OmegaConf.create({"train": {"num_frames": 2}, "data": {"resolution": [4, 4], "camera": False,
                                                                               "action_dim": None}}), 1, ("intrinsics",))
    assert set(asked) == {"frames", "key", "frame_indices", "intrinsics", "c2w", "rays"}


def test_tracker_labels_nest_and_the_peak_keeps_its_first_split():
    """LiveTensorBytes by hand, continued: the default label, the innermost of nested labels,
    ranges and module hooks (popped back to the enclosing label), relabel of an untracked
    tensor, meta tensors (no storage) not counted, the peak's split taken when first reached
    (zero and host labels left out), reset_peak, and resize_ restored after the mode."""
    from gfcore.nvtx import nvtx_range
    from gfcore.train.memory import LiveTensorBytes

    outside = torch.zeros(64)  # 256 B, made before the tracker
    tracker = LiveTensorBytes(range_labels={"train.forward": "forward"}, host_labels=("host",))
    assert (tracker.total, tracker.peak, tracker.peak_by_label, tracker.peak_context) == (0, 0, {}, [])
    with tracker:
        a = torch.zeros(256)  # 1 KiB, no label given
        assert tracker.by_label["other"] == 1024 and tracker.peak_context == ["other"]
        with tracker.label("outer"):
            with tracker.label("inner"):
                b = torch.zeros(256)
            with nvtx_range("train.forward"):
                c = torch.zeros(256)
            d = torch.zeros(256)  # after the range: the enclosing label again
            layer = torch.nn.Linear(4, 4)  # 64 + 16 B
            tracker.label_module(layer, "layer")
            inp = torch.zeros(1, 4)
            out = layer(inp)  # 16 B inside the module
            e = torch.zeros(256)  # after the module: the enclosing label again
            meta = torch.empty(1000, device="meta")
        assert tracker.by_label["inner"] == tracker.by_label["forward"] == 1024 and tracker.by_label["layer"] == 16
        assert tracker.by_label["outer"] == 2048 + 16 + 64 + 16  # d, e, the input, weight, bias
        assert tracker.total == 1024 * 5 + 112 and meta.shape == (1000,)
        tracker.relabel(outside, "z")  # not yet counted: counted under its new label
        assert tracker.by_label["z"] == 256 and tracker.total == 1024 * 5 + 368
        peak = tracker.total
        tracker.relabel(b, "inner2")  # the same total: the peak keeps its split
        del c
        f = torch.zeros(256)  # back to the peak, not above it
        assert tracker.peak == peak and "inner2" not in tracker.peak_by_label
        assert tracker.peak_by_label["inner"] == tracker.peak_by_label["forward"] == 1024
        with tracker.label("host"):
            g = torch.zeros(512)  # 2 KiB of host memory: not in the total
        del a, f
        tracker.reset_peak()  # the peak from now on: the live bytes now
        assert tracker.peak == tracker.total == peak - 2048 and tracker.peak_context == ["other"]
        assert tracker.peak_by_label == {"inner2": 1024, "outer": 2048 + 96, "layer": 16, "z": 256}
        assert tracker.by_label["host"] == 2048 and tracker.by_label["other"] == 0
        with tracker.label("late"):
            h = torch.zeros(64)
        assert tracker.peak == peak - 2048 + 256 and tracker.peak_context == ["other", "late"]
        assert tracker.peak_by_label["late"] == 256 and "host" not in tracker.peak_by_label
    storage = torch.zeros(4).untyped_storage()
    storage.resize_(0)  # the original resize_ is back
    assert storage.nbytes() == 0 and tracker.total == peak - 2048 + 256
    assert [t.numel() for t in (b, d, e, g, h, out)] == [256, 256, 256, 512, 64, 4]


def test_tracker_counts_a_dtensors_local_shard():
    """A DTensor (FSDP's sharded parameter) counts its rank's shard, not the whole tensor: 256
    floats sharded over 2 (fake) ranks are 512 B on rank 0."""
    from torch.distributed.tensor import Shard, distribute_tensor

    from gfcore.train.memory import LiveTensorBytes
    from gfcore.train.plan import _fake_group

    with _fake_group(2) as mesh:
        sharded = distribute_tensor(torch.zeros(256), mesh, [Shard(0)])
        tracker = LiveTensorBytes()
        with tracker:
            tracker.relabel(sharded, "sharded")
        assert tracker.by_label["sharded"] == tracker.total == 512
