"""`gfcore plan`: the peak memory per rank of one training step, planned on the CPU.

plan_memory(cfg) builds the configured run as train() does (build_training, _wrap with DDP or
FSDP2 on a fake process group of --world-size ranks, configure_model, the optimizer, scheduler
and EMA) on fake tensors (torch._subclasses.FakeTensorMode: shapes and dtypes, no data, no
weights read), then runs the trainer's own optimizer_step twice (the first creates the
optimizer states) under LiveTensorBytes (gfcore.train.memory), which counts every live tensor
storage by owner. So the plan follows the code: a change to the model, the loss or the step
changes the plan.

The peak is taken over the steps, from the weights, EMA and state the built run holds: the
trainer builds on the host and moves the result, so build-time copies (e.g. a teacher cast to
bf16) never meet on the GPU. What it does not see: the CUDA context and kernels' workspaces (cuBLAS, cuDNN: a few hundred
MB), the caching allocator's fragmentation, NCCL buffers, and torch.compile's fusion (planned
eager). The step runs on the CPU's kernels (attention through PyTorch's scaled dot product attention,
whose CPU flash kernel keeps O(tokens) like the CUDA one) with the GPU's choices: gfcore's
attention impl="auto" picks what it picks on an H100 (gfcore.ops.attention.choose_as),
train.precision=auto is bf16 autocast, fsdp_mixed_precision=auto bf16. Fits are judged
against a device's nominal size less FIT_RESERVE.

Memory is linear in the micro-batch: the step is planned at the configured micro-batch and one
clip more per rank, and the largest batch for each device size is read off the line through the
two (checked against direct plans by python_tests/test_train_plan.py).
"""
from __future__ import annotations

import contextlib
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Dict, Optional, Tuple

import torch
from omegaconf import DictConfig, OmegaConf

from gfcore.train.memory import LiveTensorBytes

GIB = 1024 ** 3
GPU = torch.device("cuda")            # the device a plan is for (its precision choices); it runs on the CPU
DEVICE_GIB = (24, 40, 80, 141)        # the device sizes max_batch answers for (nominal GiB)
FIT_RESERVE = 0.06                    # CUDA context, workspaces, fragmentation: not planned
BREAKDOWN = ("parameters", "gradients", "optimizer states", "ema", "teacher weights", "teacher activations",
             "model activations", "alignment activations", "backward", "ddp buckets", "batch", "other")
RANGE_LABELS = {"train.teacher": "teacher activations", "train.forward": "model activations",
                "train.backward": "backward", "train.optimizer": "optimizer states"}
# tensors the run keeps in host memory (train.ema_device=cpu, train.fsdp_offload): not in the GPU's peak
HOST_EMA, HOST_PARAMETERS = "ema (host)", "parameters (host)"
HOST_GRADIENTS, HOST_OPTIMIZER = "gradients (host)", "optimizer states (host)"
HOST_LABELS = (HOST_EMA, HOST_PARAMETERS, HOST_GRADIENTS, HOST_OPTIMIZER)


class PlanError(ValueError):
    """A plan that cannot be made as asked (bad world size, batch, memory size)."""


@dataclass
class StepMemory:
    """The planned peak of one step at a given batch."""

    per_rank_batch: int
    peak_bytes: int
    breakdown: Dict[str, int]
    peak_during: str          # the label current at the peak (e.g. backward)
    before_steps: int = 0     # live bytes when the steps start (weights, EMA, ...)


@dataclass
class MemoryPlan:
    """What plan_memory returns (see `gfcore plan --json`)."""

    world_size: int
    strategy: str
    per_rank_batch: int                # the configured micro-batch per rank
    peak_bytes: int                    # at the configured batch
    breakdown: Dict[str, int]          # label -> bytes at that peak
    peak_owner: str                    # the largest label at the peak
    peak_during: str                   # the step phase at the peak
    bytes_per_clip: int                # the slope of the peak in clips per rank
    max_batch: Dict[str, int] = field(default_factory=dict)   # "80GB" -> largest global batch (0: none fits)
    seconds: float = 0.0

    def to_json(self) -> dict:
        return asdict(self)


# ------------------------------------------------------------------------------------------ the step

def _plan_config(cfg: DictConfig, world_size: int, per_rank: int) -> DictConfig:
    """The run's config at `per_rank` clips per rank and micro-batch, eager."""
    cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    cfg.train.batch_size = per_rank * world_size
    cfg.train.grad_accum = 1  # memory is that of one micro-batch (gradients accumulate in place)
    cfg.train.compile = False
    cfg.train.init_from = None
    return cfg


def _fake_batch(cfg: DictConfig, batch: int, requires: Tuple[str, ...]) -> Dict:
    frames, (height, width) = int(cfg.train.num_frames), tuple(int(v) for v in cfg.data.resolution)
    out = {"frames": torch.rand(batch, frames, 3, height, width) * 2 - 1, "key": [f"clip{i}" for i in range(batch)],
           "frame_indices": torch.arange(frames).repeat(batch, 1)}
    if cfg.data.get("camera", False) or "intrinsics" in requires:
        k = torch.tensor([[width, 0.0, width / 2], [0.0, height, height / 2], [0.0, 0.0, 1.0]])
        out["intrinsics"] = k.expand(batch, frames, 3, 3).clone()
        out["c2w"] = torch.eye(4).expand(batch, frames, 4, 4).clone()
        from gfcore.data.geometry import plucker_rays

        out["rays"] = plucker_rays(out["intrinsics"], out["c2w"], height, width)
    if int(cfg.data.get("action_dim", 0) or 0):
        out["actions"] = torch.rand(batch, frames, int(cfg.data.action_dim))
    if "depth" in requires:
        out["depth"] = torch.ones(batch, frames, height, width)
    return out


@contextlib.contextmanager
def _values_not_drawn(fake: bool):
    """Fake tensors have no values: truncated-normal init, which redraws until every value lies
    within bounds (a data-dependent loop in recent torch), is skipped while the run is built."""
    if not fake:
        yield
        return
    import torch.nn.init as init

    original = init._no_grad_trunc_normal_
    init._no_grad_trunc_normal_ = lambda tensor, *args, **kwargs: tensor
    try:
        yield
    finally:
        init._no_grad_trunc_normal_ = original


@contextlib.contextmanager
def _fake_group(world_size: int):
    """A fake process group of world_size ranks (collectives return at once, with no data)."""
    import torch.distributed as dist

    if world_size == 1:
        yield None
        return
    from torch.distributed.device_mesh import init_device_mesh
    from torch.testing._internal.distributed.fake_pg import FakeStore

    if dist.is_initialized():
        raise PlanError("gfcore plan runs outside torchrun (a process group is already initialised)")
    dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=world_size)
    try:
        yield init_device_mesh("cpu", (world_size,))  # made from real tensors, before fake mode
    finally:
        dist.destroy_process_group()


def step_memory(cfg: DictConfig, world_size: int = 1, per_rank: Optional[int] = None, fake: bool = True,
                steps: int = 2, around_steps=contextlib.nullcontext, device: str = "cpu") -> StepMemory:
    """The peak of live tensor bytes on rank 0 over `steps` optimizer steps of the run at
    `per_rank` clips per rank (default: the configured micro-batch). fake=False runs the same on
    real tensors on `device` (a plan is always made on the CPU); around_steps() is a context
    entered around the steps (the validations measure the real run's allocations there)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from gfcore.train.distributed import DistInfo
    from gfcore.train.optim import EMA, build_optimizer, build_scheduler
    from gfcore.train.trainer import (StepParts, TrainModule, _precision, _wrap, alignment_start, build_training,
                                      configure_model, ema_device)

    if per_rank is None:
        per_rank = configured_micro_batch(cfg, world_size)
    cfg = _plan_config(cfg, world_size, per_rank)
    strategy = str(cfg.train.get("strategy", "ddp"))
    device = torch.device("cpu") if fake else torch.device(device)
    # what the run keeps in host memory is not on the GPU: counted under a host label, left out of the peak
    offload = strategy == "fsdp" and world_size > 1 and bool(cfg.train.get("fsdp_offload", False))
    ema_on_host = str(cfg.train.get("ema_device", "auto")) == "cpu"
    ranges = dict(RANGE_LABELS, **({"train.optimizer": HOST_OPTIMIZER} if offload else {}))
    tracker = LiveTensorBytes(default_label="other", range_labels=ranges, host_labels=HOST_LABELS)
    mode = FakeTensorMode(allow_non_fake_inputs=True) if fake else contextlib.nullcontext()
    cached = bool(cfg.teacher.get("cache")) and cfg.teacher.get("name", "none") != "none"
    from gfcore.ops.attention import choose_as

    with _fake_group(world_size) as mesh, mode, tracker, choose_as("cuda"):
        with tracker.label("parameters"), _values_not_drawn(fake):
            model, objective, teacher = build_training(cfg, device, teacher_weights=False)
            if teacher is not None and not fake:
                teacher.to(device)  # built where it stands (on the CPU) without weights
        module = TrainModule(model, objective)
        info = DistInfo(rank=0, world_size=world_size)
        # precision and FSDP's policy as on a GPU (train.precision=auto: bf16 autocast there)
        wrapped = _wrap(module, cfg, info, GPU, mesh) if strategy == "fsdp" else module
        configure_model(model, cfg)
        for p in module.parameters():
            tracker.relabel(p, HOST_PARAMETERS if offload else "parameters")
        for b in module.buffers():
            tracker.relabel(b, "parameters")
        shape_of = teacher
        if teacher is not None:
            for p in list(teacher.parameters()) + list(teacher.buffers()):
                tracker.relabel(p, "teacher weights")
            if cached:  # a cache serves the targets: no teacher on the device, float32 features in the batch
                teacher = None
        params = [p for p in module.parameters() if p.requires_grad]
        for p in params:
            p.register_post_accumulate_grad_hook(
                lambda q: tracker.relabel(q.grad, HOST_GRADIENTS if offload else "gradients"))
        optimizer = build_optimizer(params, cfg.train.lr, cfg.train.weight_decay, cfg.train.betas)
        scheduler = build_scheduler(optimizer, cfg.train.warmup_steps, cfg.train.steps, cfg.train.lr_decay)
        with tracker.label(HOST_EMA if ema_on_host else "ema"):
            ema = EMA(model, cfg.train.ema_decay, device=ema_device(cfg))
            if ema_on_host:  # its staging buffers, made by the first update: host memory too
                ema.update(model)
        alignment = getattr(objective, "alignment", None)
        if alignment is not None:
            tracker.label_module(alignment, "alignment activations")
            alignment.check_finite = False  # reads values, which fake tensors do not have
        frame_shape = (per_rank * world_size, int(cfg.train.num_frames), 3, *cfg.data.resolution)
        parts = StepParts(wrapped, model, teacher, params, optimizer, scheduler, ema, device, _precision(cfg, GPU),
                          1, per_rank, float(cfg.train.grad_clip) if cfg.train.grad_clip else float("inf"),
                          alignment_start(cfg))
        if strategy == "ddp" and world_size > 1:  # DDP's gradient buckets: a second copy of the gradients
            with tracker.label("ddp buckets"):
                buckets = [torch.empty_like(p) for p in params]  # noqa: F841 (held to the end)
        requires = tuple(getattr(teacher, "requires", ()) if teacher is not None else ())
        before = tracker.total
        # the run is built on the host and then moved: its build-time copies never meet on the GPU
        tracker.reset_peak()
        with around_steps():
            for step in range(steps):
                _one_step(cfg, tracker, parts, module, step, per_rank, world_size, frame_shape, requires,
                          shape_of if cached else None, model)
    during = tracker.peak_context[-1] if tracker.peak_context else "other"
    return StepMemory(per_rank, tracker.peak, dict(tracker.peak_by_label), during, before)


def _one_step(cfg, tracker, parts, module, step, per_rank, world_size, frame_shape, requires, cache_of, model):
    from gfcore.train.data import batch_to_device
    from gfcore.train.trainer import CachedTargetsBatcher, draw_step_noise, optimizer_step

    with tracker.label("batch"):
        batch = _fake_batch(cfg, per_rank, requires)
        if cache_of is not None:  # the cache's float32 features, as the prefetcher puts them in the batch
            batch[CachedTargetsBatcher.KEY] = torch.empty(per_rank, int(cfg.train.num_frames), _tokens(cfg, model),
                                                          *_feature_tail(cache_of))
        batch = batch_to_device(batch, parts.device)
        noise = draw_step_noise(cfg, module, frame_shape, torch.Generator().manual_seed(step)).slice(0, per_rank)
    optimizer_step(parts, parts.align_start_step + step, batch, noise)


def _tokens(cfg: DictConfig, model) -> int:
    from gfcore.train.models import alignment_geometry
    from gfcore.train.trainer import model_config

    _, grid = alignment_geometry(model, model_config(cfg))
    return int(grid[0]) * int(grid[1])


def _feature_tail(teacher) -> Tuple[int, ...]:
    layers, dim = int(teacher.num_layers), int(teacher.feature_dim)
    return (dim,) if layers == 1 else (layers, dim)


def configured_micro_batch(cfg: DictConfig, world_size: int) -> int:
    """Clips per rank per micro-batch of the configured run: train.batch_size is the global
    micro-batch (train.grad_accum of them make a step), as the trainer reads it."""
    batch = int(cfg.train.batch_size)
    if batch % world_size:
        raise PlanError(f"train.batch_size={batch} does not divide over --world-size {world_size}")
    return batch // world_size


# ------------------------------------------------------------------------------------------ the plan

def plan_memory(cfg: DictConfig, world_size: int = 1, device_gib=DEVICE_GIB) -> MemoryPlan:
    """The planned peak per rank of the configured run, its breakdown, and the largest global
    batch that fits each device size (see the module docstring)."""
    if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
        raise PlanError(f"--world-size must be an int >= 1, got {world_size!r}")
    for gib in device_gib:
        if isinstance(gib, bool) or not isinstance(gib, (int, float)) or not gib > 0:
            raise PlanError(f"device memory sizes must be positive numbers of GiB, got {gib!r}")
    start = time.perf_counter()
    per_rank = configured_micro_batch(cfg, world_size)
    chosen = step_memory(cfg, world_size, per_rank)
    more = step_memory(cfg, world_size, per_rank + 1)
    slope = max(0, more.peak_bytes - chosen.peak_bytes)
    intercept = chosen.peak_bytes - slope * per_rank
    max_batch = {}
    for gib in device_gib:
        budget = gib * GIB * (1 - FIT_RESERVE)
        clips = math.floor((budget - intercept) / slope) if slope else (10 ** 6 if budget >= intercept else 0)
        max_batch[f"{gib:g}GB"] = max(0, clips) * world_size
    breakdown = {name: int(chosen.breakdown.get(name, 0)) for name in BREAKDOWN}
    breakdown.update({k: int(v) for k, v in chosen.breakdown.items() if k not in breakdown})
    owner = max(breakdown, key=breakdown.get)
    return MemoryPlan(world_size, str(cfg.train.get("strategy", "ddp")), per_rank, chosen.peak_bytes, breakdown,
                      owner, chosen.peak_during, int(slope), max_batch, time.perf_counter() - start)


class PlanRefusal(RuntimeError):
    """The run is planned to need more memory than its device has (train.plan_check)."""


def device_memory_bytes(device: torch.device) -> Optional[int]:
    """The device's total memory (torch.cuda.mem_get_info), or None off CUDA (nothing to check)."""
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    return int(torch.cuda.mem_get_info(device)[1])


# the switches that lower the peak, in the order a plan suggests them
MEMORY_SWITCHES = ("train.activation_checkpointing=full (or selective)", "train.strategy=fsdp (with several GPUs)",
                   "teacher.cache=DIR (precomputed features: no teacher on the GPU)", "train.ema_device=cpu",
                   "train.fsdp_offload=true", "a smaller train.batch_size with train.grad_accum to keep the global "
                   "batch")


def check_planned_memory(cfg: DictConfig, device: torch.device, world_size: int = 1,
                         total_bytes: Optional[int] = None) -> Optional[MemoryPlan]:
    """Refuse (PlanRefusal) a run planned to exceed the device's memory less FIT_RESERVE, naming
    the largest batch that fits and the switches that help. Nothing is checked off CUDA (unless
    total_bytes is given) or with train.plan_check=false. Returns the plan it made, if any."""
    if not cfg.train.get("plan_check", True):
        return None
    total = total_bytes if total_bytes is not None else device_memory_bytes(device)
    if total is None:
        return None
    plan = plan_memory(cfg, world_size, device_gib=(total / GIB,))
    budget = total * (1 - FIT_RESERVE)
    if plan.peak_bytes <= budget:
        return plan
    fits = next(iter(plan.max_batch.values()))
    advice = (f"train.batch_size={fits} fits" if fits else "not even 1 clip per rank fits") + \
        "; what lowers the peak: " + "; ".join(MEMORY_SWITCHES)
    raise PlanRefusal(f"this run is planned to need {plan.peak_bytes / GIB:.1f} GiB per GPU ({plan.peak_owner} "
                      f"largest, at train.batch_size={cfg.train.batch_size} over {world_size} rank(s)), more than "
                      f"the {total / GIB:.1f} GiB device less {FIT_RESERVE:.0%} ({budget / GIB:.1f} GiB): {advice}. "
                      f"`gfcore plan ...` shows the breakdown; train.plan_check=false skips this check")


def _size(nbytes: int) -> str:
    return f"{nbytes / GIB:8.2f} GiB" if abs(nbytes) >= GIB else f"{nbytes / 1024 ** 2:8.1f} MiB"


def format_plan(plan: MemoryPlan) -> str:
    gib = _size
    lines = [f"planned peak per rank: {gib(plan.peak_bytes).strip()} at {plan.per_rank_batch} clip(s) per rank "
             f"(world size {plan.world_size}, {plan.strategy}); peak during {plan.peak_during}, "
             f"largest part: {plan.peak_owner}",
             "breakdown at the peak:"]
    for name, value in plan.breakdown.items():
        if value:
            lines.append(f"  {name:<22} {gib(value)}")
    lines.append(f"each further clip per rank: +{_size(plan.bytes_per_clip).strip()}")
    lines.append("largest global batch that fits (nominal size less "
                 f"{FIT_RESERVE:.0%} for what is not planned):")
    for size, clips in plan.max_batch.items():
        lines.append(f"  {size:>6}: {clips if clips else 'none (not even 1 clip per rank)'}")
    lines.append(f"(planned in {plan.seconds:.1f} s on fake tensors; eager, without the CUDA context)")
    return "\n".join(lines)


def parse_device_gib(text: str):
    """--device-gib "24,40,80,141" -> (24, 40, 80, 141); a one-line error naming the option."""
    sizes = []
    for part in str(text).split(","):
        try:
            value = float(part)
        except ValueError:
            raise PlanError(f"--device-gib takes numbers of GiB separated by commas, got {part.strip()!r}") from None
        if not value > 0 or math.isinf(value):
            raise PlanError(f"--device-gib takes positive numbers of GiB, got {part.strip()!r}")
        sizes.append(int(value) if value == int(value) else value)
    return tuple(sizes)


def main(argv=None) -> int:
    """gfcore plan [--world-size N] [--json] [--device-gib 24,40,80,141] [hydra overrides]"""
    import argparse
    import json
    import sys
    import warnings

    from gfcore.train import load_config

    parser = argparse.ArgumentParser(prog="gfcore plan", description="Plan the peak memory per GPU of a training "
                                     "run on the CPU (fake tensors: no GPU, no weights).")
    parser.add_argument("--world-size", type=str, default="1", help="ranks of the run (FSDP shards over them)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--device-gib", default=",".join(str(g) for g in DEVICE_GIB),
                        help="device sizes for the largest batch, GiB, comma-separated")
    args, overrides = parser.parse_known_args(argv)
    try:
        try:
            world_size = int(args.world_size)
        except ValueError:
            raise PlanError(f"--world-size must be an int >= 1, got {args.world_size!r}") from None
        sizes = parse_device_gib(args.device_gib)
        cfg = load_config(overrides)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "random weights": the plan reads none on purpose
            plan = plan_memory(cfg, world_size, sizes)
    except PlanError as exc:
        print(f"gfcore plan: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(plan.to_json(), indent=1) if args.json else format_plan(plan))
    return 0


__all__ = ["MemoryPlan", "PlanError", "PlanRefusal", "StepMemory", "check_planned_memory", "format_plan", "main",
           "plan_memory", "step_memory"]
