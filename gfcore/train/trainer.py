"""The training loop: flow matching (VideoDiT) or DFoT's diffusion (UViT3DPose) + Geometry
Forcing, gradient accumulation, checkpoints, resume=auto, init_from, DDP, logs.

train(cfg) runs cfg.train.steps steps and returns a summary. All randomness of step s
(batch choice, noise, context, guidance dropout) comes from generators seeded with
(cfg.seed, s), so a run resumed from any checkpoint ends bit-identical to one never stopped,
and N DDP ranks each take their slice of the same global batch as one process would.

train.objective: "flow" (GFObjective, model.arch dit) or "dfot" (gfcore.train.dfot.DFoTObjective,
model.arch dfot: model=dfot_re10k or dfot_tiny).

train.grad_accum=N: each optimizer step takes a global batch of N * train.batch_size clips
(the batch, noise and pose drops of step s are drawn for all of them from (seed, s)), split in N
micro-batches of train.batch_size; each micro-batch's loss is scaled by 1/N before its backward
(DDP syncs the gradients on the last one only), then one clip / optimizer / scheduler / EMA
update. The losses of equal-sized micro-batches average to the loss of the whole batch, so
grad_accum=N equals one step on the N-times batch (to float rounding). Logged steps,
checkpoints, train.steps and the lr schedule count optimizer steps; logged losses are the mean
over the micro-batches. A checkpoint is written between optimizer steps only, so a resume is
exact as without accumulation.

train.init_from=PATH: the model starts from the weights of PATH (gfcore.train.models.init_weights:
a DFoT release through load_dfot_checkpoint, or a gfcore step_*.pt / final.pt; strict; EMA
weights when train.init_use_ema), the EMA starts from them, the optimizer, scheduler and
alignment projector/head start fresh. It applies to a run's start only: with train.resume=auto,
checkpoints of a run started from the same init_from are resumed as usual (the file is not read
again); checkpoints of a run that did not start from it (another init_from or none), and an
explicit train.resume=PATH, are refused with ResumeError (two sources of weights).
"""
from __future__ import annotations

import gc
import json
import os
import time
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from gfcore.losses import GeometryAlignmentLoss
from gfcore.models.build import build_backbone, latent_index, model_arch
from gfcore.models.checkpointing import checkpoint_mode
from gfcore.models.dit import VideoDiT
from gfcore.nvtx import nvtx_range
from gfcore.train.checkpoint import rng_state, save_checkpoint, set_rng_state, write_checkpoint
from gfcore.train.data import BatchPrefetcher, batch_to_device, build_batcher, build_dataset, check_feature_cache
from gfcore.train.distributed import (DistInfo, barrier, gather_objects, mean_across_ranks, setup_distributed,
                                     teardown_distributed)
from gfcore.train.flops import forward_flops, peak_flops
from gfcore.train.loggers import Loggers, check_loggers
from gfcore.train.models import alignment_geometry, init_weights
from gfcore.train.objective import GFObjective, NoiseDraw, draw_noise
from gfcore.train.optim import EMA, build_optimizer, build_scheduler, full_tensor
from gfcore.train.resume import (ResumeError, archive_previous_run, as_list, changes_record, check_config,
                                 find_checkpoint, keep_unreadable, load_into)
from gfcore.train.plan import check_planned_memory
from gfcore.train.teachers import TEACHER_LABELS, build_teacher, teacher_weights_dtype


class CrashForTesting(RuntimeError):
    """Raised by train.crash_after_step: simulates a run killed mid-way."""


class CachedTargetsBatcher:
    """batcher.batch(step) plus the cached teacher's targets of that batch under KEY, so the
    prefetch threads read the feature cache ahead of the step. Same values as teacher(batch)."""

    KEY = "_teacher_targets"

    def __init__(self, batcher, teacher):
        self.batcher, self.teacher = batcher, teacher

    def batch(self, step: int, device: Optional[torch.device] = None) -> Dict:
        batch = self.batcher.batch(step, device)
        batch[self.KEY] = self.teacher(batch)
        return batch


class TrainModule(torch.nn.Module):
    """Model + objective (with its projector/head) as one module, so DDP sees every trained parameter."""

    def __init__(self, model: VideoDiT, objective: GFObjective):
        super().__init__()
        self.model, self.objective = model, objective

    def forward(self, batch, noise, features, alignment_weight: float = 1.0):
        return self.objective(self.model, batch, noise, features, alignment_weight)


def resolve_device(name: str, info: Optional[DistInfo] = None) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and info is not None and info.enabled:
        return torch.device("cuda", info.local_rank)
    return torch.device(name)


def _launch_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def _launch_local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def build_alignment(cfg: DictConfig, hidden_dim, teacher) -> Optional[GeometryAlignmentLoss]:
    """The alignment loss for an aligned hidden state of width hidden_dim (an int, or a VideoDiT:
    its hidden_dim); None without a teacher."""
    if teacher is None:
        return None
    if not isinstance(hidden_dim, int):
        hidden_dim = hidden_dim.hidden_dim
    loss_cfg = cfg.loss
    return GeometryAlignmentLoss(int(hidden_dim), teacher.feature_dim, num_targets=getattr(teacher, "num_layers", 1),
                                 projector_dim=loss_cfg.projector_dim, head_dim=loss_cfg.head_dim,
                                 lambda_angular=loss_cfg.lambda_angular, lambda_scale=loss_cfg.lambda_scale,
                                 impl=loss_cfg.impl)


def alignment_start(cfg: DictConfig) -> int:
    """The first step whose alignment loss counts: loss.align_start (a share of train.steps) x steps.
    Before it the GF run trains on the diffusion loss alone (the alignment is still computed and
    logged, with weight 0)."""
    share = cfg.loss.get("align_start", 0.0)
    if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 <= share < 1:
        raise ValueError(f"loss.align_start must be a share of train.steps in [0, 1), got {share!r}")
    return round(share * int(cfg.train.steps))  # round: int(0.29 * 100) would be 28


def model_config(cfg: DictConfig) -> dict:
    """The model node, with sizes the data decides (image size, camera / action conditioning)."""
    node = OmegaConf.to_container(cfg.model, resolve=True)
    if model_arch(node) == "dit":
        node.setdefault("image_size", list(cfg.data.resolution))
    else:
        resolution = list(cfg.data.resolution)
        if resolution[0] != resolution[1] or node.get("resolution") != resolution[0]:
            raise ValueError(f"model.arch=dfot takes square frames of model.resolution={node.get('resolution')}, "
                             f"the data gives {resolution}")
        if node.get("frames") != int(cfg.train.num_frames):
            raise ValueError(f"model.frames={node.get('frames')} must equal train.num_frames={cfg.train.num_frames} "
                             f"(UViT3DPose takes clips of exactly its frame count)")
    return node


OBJECTIVES = {"flow": "dit", "dfot": "dfot"}  # train.objective -> the model.arch it trains


def train_objective(cfg: DictConfig) -> str:
    name = cfg.train.get("objective", "flow")
    if name not in OBJECTIVES:
        raise ValueError(f"train.objective must be one of {sorted(OBJECTIVES)}, got {name!r}")
    arch = model_arch(cfg.model)
    if OBJECTIVES[name] != arch:
        raise ValueError(f"train.objective={name} trains model.arch={OBJECTIVES[name]} models, the model is {arch} "
                         f"(model=dfot_re10k / dfot_tiny go with train.objective=dfot)")
    return name


def grad_accum(cfg: DictConfig) -> int:
    value = cfg.train.get("grad_accum", 1)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"train.grad_accum must be an int >= 1, got {value!r}")
    return value


def build_training(cfg: DictConfig, device: torch.device, teacher_weights: bool = True):
    """(model, objective, teacher): the model is built first from cfg.seed, so baseline and GF
    runs start from the same weights; the projector/head come from a separate seed.
    teacher_weights=False: the teacher's architecture with random weights (memory planning)."""
    name = train_objective(cfg)
    node = model_config(cfg)
    torch.manual_seed(cfg.seed)
    model = _on_device(build_backbone(node), device)
    hidden_dim, grid = alignment_geometry(model, node)
    # planning (no weights) builds on the CPU as it is: Module.to would swap fake tensors
    teacher = build_teacher(cfg.teacher, grid, str(device) if teacher_weights else None,
                            random_weights=not teacher_weights)
    torch.manual_seed(cfg.seed + 1)
    alignment = build_alignment(cfg, hidden_dim, teacher)
    if name == "dfot":
        from gfcore.models.dfot import DFoTDiffusion
        from gfcore.train.dfot import DFoTObjective

        objective = _on_device(DFoTObjective(DFoTDiffusion(**dict(node.get("diffusion") or {})), alignment,
                                             latent_index(model, node), node.get("input_norm", "dfot")), device)
    else:
        objective = _on_device(GFObjective(alignment, cfg.train.get("loss_space", "v")), device)
    return model, objective, teacher


def _on_device(module: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """module.to(device), left alone when it is there already (so fake tensors are not swapped)."""
    tensors = list(module.parameters()) + list(module.buffers())
    if all(t.device == device for t in tensors):
        return module
    return module.to(device)


def draw_step_noise(cfg: DictConfig, module: "TrainModule", shape, generator: torch.Generator) -> NoiseDraw:
    """Everything random about one optimizer step's global batch (shape [N * batch_size, T, C, H, W])."""
    if train_objective(cfg) == "dfot":
        from gfcore.train.dfot import draw_dfot_noise

        return draw_dfot_noise(shape, generator, module.objective.diffusion,
                               float(module.model.external_cond_embedding.dropout))
    return draw_noise(shape, generator, cfg.train.context_prob, cfg.train.max_context, cfg.train.cond_drop_prob,
                      cfg.train.get("noise_mode", "independent"), float(cfg.train.get("t_shift", 1.0)))


def slice_batch(batch: Dict, start: int, stop: int) -> Dict:
    """Samples start:stop of a batch (tensors along dim 0, lists such as the clip keys)."""
    return {k: (v[start:stop] if isinstance(v, (torch.Tensor, list, tuple)) else v) for k, v in batch.items()}


class JsonlLog:
    """Append-only JSONL log; on resume, lines from steps after the checkpoint are dropped.

    Metric records have a "step"; event records (a resume, a fresh start) also have an
    "event" key and are kept whatever step a later resume goes back to: they are history.
    """

    def __init__(self, path: str, resume_step: int, enabled: bool):
        self.path, self.enabled = path, enabled
        if not enabled:
            return
        os.makedirs(os.path.dirname(path), exist_ok=True)
        kept = []
        if resume_step > 0 and os.path.isfile(path):
            with open(path) as handle:
                for line in handle:
                    try:
                        record = json.loads(line)
                        if "event" in record or record.get("step", 0) <= resume_step:
                            kept.append(line)
                    except json.JSONDecodeError:
                        break  # a line cut by the crash: everything after it is stale
        with open(path, "w") as handle:
            handle.writelines(kept)

    def last(self) -> Dict:
        """The newest metric record, or {} when there is none."""
        record = {}
        if os.path.isfile(self.path):
            with open(self.path) as handle:
                for line in handle:
                    if line.strip():
                        parsed = json.loads(line)
                        if "event" not in parsed:
                            record = parsed
        return record

    def write(self, record: Dict) -> None:
        if self.enabled:
            with open(self.path, "a") as handle:
                handle.write(json.dumps(record) + "\n")


def _progress(total: int, initial: int, enabled: bool, label: str):
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, initial=initial, desc=label, dynamic_ncols=True, leave=True)


def _precision(cfg: DictConfig, device: torch.device) -> Optional[torch.dtype]:
    mode = cfg.train.precision
    if mode == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    if mode in ("fp32", "float32"):
        return None
    if mode in ("bf16", "bfloat16"):
        return torch.bfloat16
    raise ValueError(f"train.precision must be auto, fp32 or bf16, got {mode!r}")


def _wrap(module: TrainModule, cfg: DictConfig, info: DistInfo, device: torch.device, mesh=None):
    """DDP or FSDP2 around the TrainModule (as is in one process). mesh: FSDP's device mesh
    (None: the default over the world; the memory planner gives one made outside fake mode)."""
    if not info.enabled:
        return module
    strategy = cfg.train.strategy
    if strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None)
    if strategy == "fsdp":
        from torch.distributed.fsdp import fully_shard

        policy = fsdp_mixed_precision(cfg, device)
        kwargs = {} if policy is None else {"mp_policy": policy}
        if mesh is not None:
            kwargs["mesh"] = mesh
        if fsdp_offload(cfg):  # shards, gradients and optimizer state in host memory
            from torch.distributed.fsdp import CPUOffloadPolicy

            # pinned for async copies; pinning needs a CUDA driver (the planner wraps for a GPU anywhere)
            kwargs["offload_policy"] = CPUOffloadPolicy(pin_memory=device.type == "cuda" and torch.cuda.is_available())
        # one unit per block: VideoDiT's blocks, UViT3DPose.shard_units()
        units = (module.model.shard_units() if hasattr(module.model, "shard_units")
                 else getattr(module.model, "blocks", []))
        for block in units:
            fully_shard(block, **kwargs)
        return fully_shard(module, **kwargs)
    raise ValueError(f"train.strategy must be 'ddp' or 'fsdp', got {strategy!r}")


def fsdp_mixed_precision(cfg: DictConfig, device: torch.device):
    """train.fsdp_mixed_precision as an FSDP2 MixedPrecisionPolicy, or None for full precision.

    bf16: parameters all-gathered and computed in bfloat16, gradients reduce-scattered in
    float32; the sharded parameters, the optimizer state (and so the checkpoints) stay float32.
    auto: bf16 on CUDA, none on CPU (gloo). none: float32 throughout.
    """
    mode = str(cfg.train.get("fsdp_mixed_precision", "auto"))
    if mode == "auto":
        mode = "bf16" if device.type == "cuda" else "none"
    if mode in ("none", "fp32", "float32"):
        return None
    if mode not in ("bf16", "bfloat16"):
        raise ValueError(f"train.fsdp_mixed_precision must be auto, bf16 or none, got {mode!r}")
    from torch.distributed.fsdp import MixedPrecisionPolicy

    return MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)


@dataclass
class StepParts:
    """What one optimizer step uses: train() builds it once; gfcore.train.plan builds the same on
    fake tensors to plan the step's memory."""

    wrapped: torch.nn.Module        # the TrainModule, as DDP / FSDP wrapped it
    model: torch.nn.Module          # the backbone (for the EMA)
    teacher: Optional[torch.nn.Module]
    params: List[torch.Tensor]      # the trained parameters (clipped together)
    optimizer: torch.optim.Optimizer
    scheduler: Any
    ema: EMA
    device: torch.device
    autocast_dtype: Optional[torch.dtype]
    accum: int                      # micro-batches per step
    micro: int                      # this rank's clips per micro-batch
    grad_clip: float                # inf: no clipping
    align_start_step: int


def optimizer_step(parts: StepParts, step: int, batch: Dict, step_noise: NoiseDraw):
    """One optimizer step on this rank's batch: the teacher's targets (or the cached ones the batch
    carries), forward and backward of each micro-batch, clipping, optimizer, scheduler and EMA.
    Returns (the loss terms averaged over the micro-batches, the gradient norm)."""
    accum, micro, device, teacher = parts.accum, parts.micro, parts.device, parts.teacher
    cached_features = batch.pop(CachedTargetsBatcher.KEY, None)
    summed: Dict[str, torch.Tensor] = {}
    for part in range(accum):  # micro-batches; accum == 1: the whole batch
        lo, hi = part * micro, (part + 1) * micro
        part_batch = batch if accum == 1 else slice_batch(batch, lo, hi)
        noise = step_noise if accum == 1 else step_noise.slice(lo, hi)
        noise.t, noise.eps = noise.t.to(device), noise.eps.to(device)
        noise.context, noise.drop_cond = noise.context.to(device), noise.drop_cond.to(device)
        with nvtx_range("train.teacher"):
            features = (cached_features[lo:hi] if cached_features is not None and accum > 1
                        else cached_features if cached_features is not None
                        else teacher(part_batch) if teacher is not None else None)
        # DDP: gradients all-reduced on the last micro-batch only
        sync = (parts.wrapped.no_sync() if part < accum - 1 and hasattr(parts.wrapped, "no_sync") else nullcontext())
        with sync:
            with nvtx_range("train.forward"):
                autocast = (torch.autocast(device.type, dtype=parts.autocast_dtype)
                            if parts.autocast_dtype is not None else nullcontext())
                with autocast:
                    terms = parts.wrapped(part_batch, noise, features, 0.0 if step < parts.align_start_step else 1.0)
            with nvtx_range("train.backward"):
                (terms["loss"] / accum).backward()
        for key, value in terms.items():  # logged: the mean over the micro-batches
            summed[key] = summed[key] + value.detach() / accum if key in summed else value.detach() / accum
    with nvtx_range("train.optimizer"):
        grad_norm = torch.nn.utils.clip_grad_norm_(parts.params, parts.grad_clip)
        parts.optimizer.step()
        parts.scheduler.step()
        parts.optimizer.zero_grad(set_to_none=True)
        parts.ema.update(parts.model)
    return summed, grad_norm


def _full_state_dict(module: torch.nn.Module) -> Dict:
    return {k: full_tensor(v).detach().cpu() for k, v in module.state_dict().items()}


def _optimizer_state(module, optimizer, sharded: bool) -> Dict:
    """The optimizer state keyed by parameter names, with full (unsharded) tensors, whatever the
    strategy and world size: a checkpoint resumes on any number of processes, with DDP or FSDP."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return get_optimizer_state_dict(module, optimizer, options=StateDictOptions(full_state_dict=True))


def _load_optimizer(module, optimizer, state: Dict, sharded: bool) -> None:
    if not sharded and all(isinstance(k, int) for k in state.get("state", {})):
        optimizer.load_state_dict(state)  # a checkpoint from before names were used (one process / DDP)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(module, optimizer, state, options=StateDictOptions(full_state_dict=True))


def configure_model(model: VideoDiT, cfg: DictConfig) -> VideoDiT:
    """train.activation_checkpointing and train.compile, applied to the DiT in place (its
    parameters and state_dict keys stay the same, so checkpoints do not depend on either).

    activation_checkpointing (gfcore.models.checkpointing): none | full | selective (true /
    false: full / none); the recomputed activations are computed again in the backward
    (torch.utils.checkpoint, use_reentrant=False). VideoDiT: full = each block, selective = each
    block's attentions and MLP. UViT3DPose: added to its per-level use_checkpointing
    (UViT3DPose.checkpoint_levels). compile=true: torch.compile of the model's forward (the default
    inductor backend; a string names another backend, e.g. aot_eager); the objective and the
    alignment loss stay eager.
    """
    mode = checkpoint_mode(cfg.train.get("activation_checkpointing", "none"))
    if hasattr(model, "use_checkpointing"):  # UViT3DPose: per-level recompute
        model.use_checkpointing = model.checkpoint_levels(mode)
    else:
        model.activation_checkpointing = mode
    backend = cfg.train.get("compile", False)
    if backend not in (None, False, "none", "false"):
        model.compile(**({} if backend is True else {"backend": str(backend)}))
    return model


def ema_device(cfg: DictConfig) -> Optional[torch.device]:
    """train.ema_device: auto (None: the EMA sits with the weights, sharded like them under FSDP)
    or cpu (host memory; gfcore.train.optim.EMA)."""
    value = cfg.train.get("ema_device", "auto")
    if value == "auto":
        return None
    if value == "cpu":
        return torch.device("cpu")
    raise ValueError(f"train.ema_device must be auto or cpu, got {value!r}")


def fsdp_offload(cfg: DictConfig) -> bool:
    """train.fsdp_offload: FSDP keeps the sharded parameters, gradients and optimizer state in host
    memory (CPUOffloadPolicy); the optimizer step runs on the CPU."""
    value = cfg.train.get("fsdp_offload", False)
    if not isinstance(value, bool):
        raise ValueError(f"train.fsdp_offload must be true or false, got {value!r}")
    if value and cfg.train.get("strategy") != "fsdp":
        raise ValueError(f"train.fsdp_offload=true needs train.strategy=fsdp, got {cfg.train.get('strategy')!r}")
    return value


def check_memory_switches(cfg: DictConfig) -> None:
    """The memory switches' values, checked before the run folder is touched."""
    checkpoint_mode(cfg.train.get("activation_checkpointing", "none"))
    ema_device(cfg)
    fsdp_offload(cfg)
    teacher_weights_dtype(cfg.teacher)


def _state_for_checkpoint(module: TrainModule, optimizer, scheduler, ema: EMA, step: int, cfg, info: DistInfo,
                          sharded: bool) -> Dict:
    """Everything a resume needs; collectives inside, so every rank calls it."""
    rngs = gather_objects(rng_state(), info)
    return {
        "step": step,
        "model": _full_state_dict(module.model),
        "objective": _full_state_dict(module.objective),
        "optimizer": _optimizer_state(module, optimizer, sharded),
        "scheduler": scheduler.state_dict(),
        "ema": ema.state_dict(),
        "rng": rngs,  # one entry per rank
        "data": {"next_step": step, "seed": int(cfg.seed)},  # the batcher is indexed by step
        "world_size": info.world_size,
        "config": OmegaConf.to_container(cfg, resolve=True),
    }


def _apply_hyperparameters(cfg: DictConfig, optimizer, scheduler, ema: EMA) -> None:
    """After loading optimizer / scheduler / EMA state: the config's lr, betas, weight decay and
    EMA decay win over the checkpoint's (an allowed change must take effect; unchanged values
    are left untouched, so a plain resume stays bit-identical)."""
    lr, betas, decay = float(cfg.train.lr), tuple(float(b) for b in cfg.train.betas), float(cfg.train.weight_decay)
    if any(base != lr for base in scheduler.base_lrs):
        scheduler.base_lrs = [lr] * len(optimizer.param_groups)
        for group in optimizer.param_groups:
            group["initial_lr"] = lr
    # the schedule (warmup_steps, lr_decay, steps) is rebuilt from the config: this step's lr by it
    factor = scheduler.lr_lambdas[0](scheduler.last_epoch)
    for group, base in zip(optimizer.param_groups, scheduler.base_lrs):
        if group["lr"] != base * factor:
            group["lr"] = base * factor
    scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]
    for group in optimizer.param_groups:
        if tuple(group["betas"]) != betas:
            group["betas"] = betas
        if group["weight_decay"] != decay:
            group["weight_decay"] = decay
    if ema.decay != float(cfg.train.ema_decay):
        ema.decay = float(cfg.train.ema_decay)


def _sample_every(cfg: DictConfig) -> int:
    every = cfg.train.get("sample_every")
    return int(every) if every else 0


class SampleVideos:
    """Every train.sample_every steps: roll out train.sample_clips clips of the training data
    with the sample.* settings (EMA or raw weights per sample.use_ema), write
    {out_dir}/samples/step_{step:08d}.gif (clips side by side) and hand it to the loggers.

    The rollout draws from its own generator (sample.seed) inside torch.random.fork_rng, so
    sampling changes no training value: a run with samples ends as one without.
    """

    def __init__(self, cfg: DictConfig, dataset, device: torch.device):
        self.cfg, self.device = cfg, device
        self.clips = [dataset[i] for i in range(min(int(cfg.train.get("sample_clips") or 1), len(dataset)))]
        self.model = None

    def __call__(self, step: int, model, ema: EMA, info: DistInfo, loggers: Loggers, out_dir: str) -> None:
        from gfcore.data import write_gif
        from gfcore.sample import rollout, to_uint8

        cfg, sample = self.cfg, self.cfg.sample
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            if self.model is None:
                self.model = build_backbone(model_config(cfg))
            if sample.get("use_ema", True):
                ema.copy_to(self.model)  # gathers FSDP shards: every rank takes part
            else:
                self.model.load_state_dict(_full_state_dict(model))
            if not info.is_main:
                return
            plain = self.model.to(self.device).eval()
            frames, window = int(cfg.train.num_frames), int(sample.window)
            context = min(int(sample.context_frames), window - 1)
            generator = torch.Generator().manual_seed(int(sample.seed))
            videos = []
            for clip in self.clips:
                repeat = lambda x: x[torch.arange(frames) % x.shape[0]]  # noqa: E731
                kwargs = {}
                if plain.config.camera_cond:
                    kwargs.update(intrinsics=repeat(clip["intrinsics"])[None].to(self.device),
                                  c2w=repeat(clip["c2w"])[None].to(self.device))
                if plain.config.action_dim:
                    kwargs["actions"] = repeat(clip["actions"])[None].to(self.device)
                first = repeat(clip["frames"])[None, :context].to(self.device)
                video = rollout(plain, first, frames, window, context, int(sample.steps), str(sample.method),
                                generator=generator, guidance_scale=float(sample.guidance_scale),
                                history_guidance=_history_guidance(sample), **kwargs)[0]
                videos.append(to_uint8(video))
        tiled = np.concatenate(videos, axis=2)  # [T, H, W * clips, 3]
        path = os.path.join(out_dir, "samples", f"step_{step:08d}.gif")
        write_gif(path, tiled)
        loggers.video(step, "samples/video", path, tiled.shape[1], tiled.shape[2])


def _history_guidance(sample: DictConfig):
    from gfcore.sample import HistoryGuidance

    node = sample.get("history_guidance")
    return HistoryGuidance.parse(None if node is None else OmegaConf.to_container(node, resolve=True))


def _utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def train(cfg: DictConfig) -> Dict:
    """Train as cfg says; writes {out_dir}/checkpoints, log.jsonl, config.yaml, final.pt, summary.json."""
    device_type = resolve_device(cfg.train.device).type
    check_memory_switches(cfg)
    # before the process group exists (the plan runs on a fake one) and before anything is written
    check_planned_memory(cfg, resolve_device(cfg.train.device, DistInfo(world_size=_launch_world_size(),
                                                                        local_rank=_launch_local_rank())),
                         _launch_world_size())
    # CPU offload: gradient clipping and checkpoints gather host-memory shards, so gloo joins NCCL
    info = setup_distributed(device_type, cpu_collectives=fsdp_offload(cfg))
    summary = _train_in_group(cfg, info)
    # DDP's reducer and FSDP's hooks go before their process group: freed after it (a reference
    # cycle outliving the run), their threads can abort the process at exit
    gc.collect()
    teardown_distributed(info)
    return summary


def _train_in_group(cfg: DictConfig, info: DistInfo) -> Dict:
    """train(cfg)'s run, once the process group (if any) exists."""
    device = resolve_device(cfg.train.device, info)
    logger_names = check_loggers(cfg.train.get("loggers", ["jsonl"]))  # before the run folder is touched
    align_start_step = alignment_start(cfg)
    accum = grad_accum(cfg)
    objective_name = train_objective(cfg)
    if objective_name == "dfot" and _sample_every(cfg):
        raise ValueError("train.sample_every is not supported with train.objective=dfot yet (DDIM sampling of the "
                         "DFoT backbone is gfcore.sample.ddim, not wired into the trainer): set train.sample_every=null")
    if cfg.train.batch_size % info.world_size:
        raise ValueError(f"train.batch_size={cfg.train.batch_size} must be divisible by the world size {info.world_size}")
    # "required": set by configs that start from a checkpoint (a ??? would not override the default null)
    if OmegaConf.is_missing(cfg.train, "init_from") or cfg.train.get("init_from") == "required":
        raise ValueError("train.init_from is required by this config (e.g. experiment=re10k_gf_finetune starts from "
                         "the released DFoT checkpoint): give train.init_from=PATH")
    # a feature cache cannot serve flipped clips: refused before the run folder is touched
    check_feature_cache(cfg.data, cfg.teacher.get("name", "none") != "none" and bool(cfg.teacher.get("cache")))
    init_from = cfg.train.get("init_from") or None
    out_dir = os.path.expanduser(cfg.out_dir)
    ckpt_dir = os.path.join(out_dir, "checkpoints")
    events = []  # written to log.jsonl once it is open
    resume = cfg.train.resume
    if init_from is not None and resume not in (None, "none", False, "auto"):
        raise ResumeError(f"train.init_from={init_from!r} and train.resume={resume!r} both name the weights to start "
                          f"from: keep one (init_from: a new run from those weights, fresh optimizer; resume: the "
                          f"run of that checkpoint, continued)")
    if resume in (None, "none", False) and info.is_main:
        archived = archive_previous_run(out_dir)
        if archived is not None:
            print(f"train.resume=none: the earlier run's files in {out_dir} were moved to {archived}")
            events.append({"event": "start", "step": 0, "time": _utc_now(), "previous_run": archived})
    barrier(info)
    # Found and checked before anything in the run folder is written: a refused resume changes nothing.
    found, unreadable = find_checkpoint(resume, ckpt_dir)
    changes = {}
    if found is not None and init_from is not None:
        before = (found[1].get("config") or {}).get("train", {}).get("init_from")
        if before != init_from:
            raise ResumeError(
                f"train.init_from={init_from!r} but {found[0]} is a checkpoint of a run that "
                + (f"started from {before!r}" if before else "did not start from init_from")
                + f" (step {found[1].get('step')}): init_from only starts a run. To continue that run, drop "
                  f"train.init_from (or give its own); to start a new run from {init_from!r}, use another out_dir "
                  f"or train.resume=none (the earlier files move to previous/).")
    if found is not None:
        changes = check_config(found[1].get("config"), OmegaConf.to_container(cfg, resolve=True),
                               as_list(cfg.train.get("resume_allow_changes")), found[0])
    model, objective, teacher = build_training(cfg, device)
    module = TrainModule(model, objective)
    if found is None and init_from is not None:  # weights only, before the EMA copies them and DDP wraps
        loaded = init_weights(model, model_config(cfg), init_from, bool(cfg.train.get("init_use_ema", True)))
        if info.is_main:
            print(f"train.init_from: {loaded} from {init_from}")
        events.append({"event": "init_from", "step": 0, "time": _utc_now(), "checkpoint": str(init_from),
                       "loaded": loaded})
    if found is not None:  # weights go into the plain module, before DDP / FSDP wrap it
        load_into(model, found[1]["model"], "model", changes)
        load_into(objective, found[1]["objective"], "alignment projector/head", changes)
        keep_unreadable(unreadable, found[0], info.is_main)  # the resume is accepted: now files may move
    if info.is_main:
        os.makedirs(out_dir, exist_ok=True)
        OmegaConf.save(cfg, os.path.join(out_dir, "config.yaml"))
    wrapped = _wrap(module, cfg, info, device)
    configure_model(model, cfg)  # after FSDP's fully_shard, which compile must see
    # Built after wrapping: FSDP replaces the parameters by sharded ones.
    params = [p for p in module.parameters() if p.requires_grad]
    optimizer = build_optimizer(params, cfg.train.lr, cfg.train.weight_decay, cfg.train.betas)
    scheduler = build_scheduler(optimizer, cfg.train.warmup_steps, cfg.train.steps, cfg.train.lr_decay)
    ema = EMA(model, cfg.train.ema_decay, device=ema_device(cfg))
    sharded = info.enabled and cfg.train.strategy == "fsdp"

    start_step = 0
    if found is not None:
        path, state = found
        try:
            _load_optimizer(module, optimizer, state["optimizer"], sharded)
        except (ValueError, KeyError, RuntimeError) as exc:
            raise ResumeError(f"the optimizer state in {path} does not fit this run's parameters "
                              f"(changed keys: {', '.join(changes) or 'none'}): {exc}") from exc
        scheduler.load_state_dict(state["scheduler"])
        ema.load_state_dict(state["ema"])
        _apply_hyperparameters(cfg, optimizer, scheduler, ema)
        start_step = int(state["step"])
        if state.get("world_size", 1) == info.world_size:
            set_rng_state(state["rng"][info.rank])
        if info.is_main:
            print(f"resumed from {path} at step {start_step}"
                  + (f" with changes: {', '.join(changes)}" if changes else ""))
        events.append({"event": "resume", "step": start_step, "time": _utc_now(), "checkpoint": path,
                       "changes": changes_record(changes)})

    with_depth = teacher is not None and "depth" in teacher.requires
    dataset = build_dataset(cfg.data, with_depth=with_depth, generate_missing=info.is_main)
    barrier(info)
    step_batch = cfg.train.batch_size * accum  # clips per optimizer step
    batcher = build_batcher(cfg, dataset, step_batch, rank=info.rank, world_size=info.world_size)
    per_rank = step_batch // info.world_size
    micro = per_rank // accum  # this rank's clips per micro-batch
    frame_shape = (step_batch, cfg.train.num_frames, 3, *cfg.data.resolution)
    autocast_dtype = _precision(cfg, device)
    align_params = sum(p.numel() for p in objective.parameters() if p.dim() == 2)
    # model FLOPs: VideoDiT's formula (gfcore.train.flops); none yet for the DFoT U-ViT (no MFU logged)
    step_flops = (3 * forward_flops(model, step_batch, cfg.train.num_frames, align_params)
                  if isinstance(model, VideoDiT) else None)
    peak = peak_flops(device, cfg.train.get("peak_tflops"))
    label = TEACHER_LABELS[cfg.teacher.name]
    log = JsonlLog(os.path.join(out_dir, "log.jsonl"), start_step, info.is_main and "jsonl" in logger_names)
    loggers = Loggers(logger_names, log, out_dir, cfg, OmegaConf.to_container(cfg, resolve=True), start_step,
                      OmegaConf.to_yaml(cfg), info.is_main)
    for event in events:
        loggers.event(event)
    sample_every = _sample_every(cfg)
    sampler = SampleVideos(cfg, dataset, device) if sample_every else None
    bar = _progress(cfg.train.steps, start_step, info.is_main and cfg.train.progress, f"train [{label}]")

    last_terms: Dict[str, float] = {}
    window_start, window_steps = time.perf_counter(), 0
    # Batches are built ahead on threads (a batch depends on its step alone: same values).
    prefetch_steps = int(cfg.data.get("prefetch_steps", 2))
    # A cache-backed teacher's targets are read there too (disk + float16 -> float32: host work
    # that would otherwise stall every step); a live teacher runs in the loop on the device.
    cached = teacher is not None and getattr(teacher, "cache", None) is not None
    prefetcher = (BatchPrefetcher(CachedTargetsBatcher(batcher, teacher) if cached else batcher, start_step,
                                  cfg.train.steps, depth=prefetch_steps,
                                  workers=int(cfg.data.get("num_workers", 2)))
                  if prefetch_steps > 0 and start_step < cfg.train.steps else None)
    parts = StepParts(wrapped, model, teacher, params, optimizer, scheduler, ema, device, autocast_dtype, accum, micro,
                      float(cfg.train.grad_clip) if cfg.train.grad_clip else float("inf"), align_start_step)
    try:
        for step in range(start_step, cfg.train.steps):
            module.train()
            with nvtx_range("train.data"):
                batch = (batch_to_device(prefetcher.get(step), device, pin=True) if prefetcher is not None
                         else batcher.batch(step, device))
                generator = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step + 7_919)
                step_noise = draw_step_noise(cfg, module, frame_shape, generator).slice(
                    info.rank * per_rank, (info.rank + 1) * per_rank)
            terms, grad_norm = optimizer_step(parts, step, batch, step_noise)
            done = step + 1
            window_steps += 1
            if done % cfg.train.log_every == 0 or done == cfg.train.steps:
                logged = mean_across_ranks(terms, info)
                elapsed = time.perf_counter() - window_start
                record = {"step": done, **logged, "grad_norm": float(full_tensor(grad_norm)), "lr": scheduler.get_last_lr()[0],
                          "samples_per_s": window_steps * step_batch / elapsed,
                          "achieved_tflops": window_steps * step_flops / elapsed / 1e12 if step_flops else None,
                          "mfu": (window_steps * step_flops / elapsed / peak) if peak and step_flops else None,
                          "teacher": label}
                loggers.metrics(done, record)
                last_terms = record
                window_start, window_steps = time.perf_counter(), 0
                if bar is not None:
                    bar.set_postfix(loss=f"{logged['loss']:.4f}", **({"cos": f"{logged['cosine']:.3f}"} if "cosine" in logged else {}))
            if bar is not None:
                bar.update(1)
            if sampler is not None and done % sample_every == 0:
                sample_start = time.perf_counter()
                with nvtx_range("train.sample"):
                    sampler(done, model, ema, info, loggers, out_dir)
                window_start += time.perf_counter() - sample_start  # samples/s and MFU time training alone
            if done % cfg.train.ckpt_every == 0 or done == cfg.train.steps:
                state = _state_for_checkpoint(module, optimizer, scheduler, ema, done, cfg, info, sharded)
                if info.is_main:
                    save_checkpoint(ckpt_dir, done, state, cfg.train.keep_last)
                barrier(info)
            if cfg.train.get("crash_after_step") is not None and done == cfg.train.crash_after_step:
                raise CrashForTesting(f"train.crash_after_step={done}: stopping as if killed")
    finally:
        if prefetcher is not None:
            prefetcher.close()
        loggers.close()
    if bar is not None:
        bar.close()
    if not last_terms and info.is_main:  # nothing left to run after a resume: report the logged end
        last_terms = log.last()

    summary = {"steps": cfg.train.steps, "resumed_from": start_step, "teacher": label, "final": last_terms,
               "step_flops": step_flops, "out_dir": out_dir}
    ema_model = build_backbone(model_config(cfg))
    ema.copy_to(ema_model)  # gathers FSDP shards: every rank takes part
    final_weights = _full_state_dict(model)
    if info.is_main:
        write_checkpoint({"model": final_weights, "ema": ema_model.state_dict(), "model_config": model_config(cfg),
                     "config": OmegaConf.to_container(cfg, resolve=True), "teacher": label},
                    os.path.join(out_dir, "final.pt"))
        with open(os.path.join(out_dir, "summary.json"), "w") as handle:
            json.dump(summary, handle, indent=1)
    barrier(info)
    return summary
