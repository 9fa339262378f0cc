"""Time of one training step (data excluded) of baseline vs Geometry Forcing, by phase.

    python -m benchmarks.bench_train_step [--device cpu|cuda] [--model tiny|small|dit_b] [--resolution 32]
                                          [--batch 8 --frames 8] [--teachers none vggt vggt_cache]
                                          [--switches plain ckpt compile ckpt+compile] [--tag TAG]

Teachers: none (the baseline), pointmap (oracle), vggt (a VGGT teacher online: the small random
config shipped as gfcore/geometry/vggt_small_config.json, frames resized to --teacher-image-size;
with --teacher-dim 2048, VGGT-1B's width (embed 1024, features 2048) with one DINO and one
aggregator block, random weights: only the feature size matters to the cached path),
vggt_cache (the same teacher's features read from a gfcore FeatureCache built once up front),
dinov2 (a random ViT-S/14 DINOv2 teacher online). Switches: plain, ckpt
(train.activation_checkpointing), compile (train.compile, inductor), ckpt+compile.

Model sizes (--model): tiny and small use the demo's alignment head (projector 128, head 64) and
the small VGGT's 768-wide features; dit_b and dit_l (hidden 768 x 12 blocks / 1024 x 24) the
paper's head (projector 2048, head 512, as experiment=re10k) and VGGT-1B's 2048-wide features.
--projector-dim, --head-dim and --teacher-dim override them. Each row also has the FLOPs of one
eager step (forward + backward, no recomputation) counted by torch.utils.flop_counter, and its
ratio to the baseline's: the FLOP model of the GF overhead beside the measured time ratio.
--interleave builds every run first and times them in rounds of one step each, in turn, so a
changing load on a shared machine falls on all alike; it adds paired_vs_baseline, the median over
rounds of the step time over the same round's baseline step.

Phases: teacher (targets), forward (model + losses), backward, optimizer (clip + AdamW + EMA).
Also samples/s, peak memory (CUDA: max_memory_allocated; not measured on CPU), the model FLOPs
of a step, achieved TFLOP/s and MFU (GPUs with a known peak, or --peak-tflops), and each
run's step time relative to the baseline with the same switch. Writes
benchmarks/results/bench_train_step_<device>_<model>[_<tag>].json and .md.
"""
import argparse
import os
import sys
import tempfile
import time
from contextlib import nullcontext

import torch
from omegaconf import OmegaConf

from benchmarks.common import environment, markdown_table, measure, sync, time_stats, write_results
from gfcore.train import load_config
from gfcore.train.flops import forward_flops, peak_flops
from gfcore.train.objective import draw_noise
from gfcore.train.optim import EMA, build_optimizer
from gfcore.train.trainer import TrainModule, build_alignment, build_training, configure_model, model_config

SWITCHES = {"plain": (False, False), "ckpt": (True, False), "compile": (False, True), "ckpt+compile": (True, True)}


def _synthetic_batch(cfg, device, with_depth: bool):
    """A batch shaped like the trainer's (random frames, rays, and depth/cameras for the oracle teacher)."""
    B, T, (H, W) = cfg.train.batch_size, cfg.train.num_frames, cfg.data.resolution
    batch = {"frames": torch.rand(B, T, 3, H, W, device=device) * 2 - 1,
             "rays": torch.randn(B, T, 6, H, W, device=device)}
    if with_depth:
        K = torch.tensor([[W * 0.9, 0, W / 2], [0, W * 0.9, H / 2], [0, 0, 1]], device=device)
        batch.update(depth=torch.rand(B, T, H, W, device=device) + 1, intrinsics=K.expand(B, T, 3, 3),
                     c2w=torch.eye(4, device=device).expand(B, T, 4, 4))
    return batch


# Model presets: (projector_dim, head_dim, teacher feature dim); None: the config's (experiment=demo).
PRESETS = {"tiny": (None, None, 768), "small": (None, None, 768), "dit_b": (2048, 512, 2048),
           "dit_l": (2048, 512, 2048)}


def vggt_config(feature_dim: int) -> dict:
    """Random-weight VGGT keyword arguments whose features are feature_dim wide: 768 is the shipped
    small config; 2048 is VGGT-1B's width (embed 1024) with one DINO and one aggregator block."""
    from gfcore.geometry import small_config

    heads_off = {"enable_camera": False, "enable_depth": False, "enable_point": False}
    if feature_dim == 768:
        return {**small_config(), **heads_off}
    if feature_dim == 2048:
        return {**small_config(), "embed_dim": 1024, "num_heads": 16, "patch_embed": "dinov2_vitl14_reg",
                "depth": 1, "dino_depth": 1, **heads_off}
    raise ValueError(f"--teacher-dim must be 768 (small VGGT) or 2048 (VGGT-1B width), got {feature_dim}")


def step_flops(module, batch, noise, features) -> float:
    """FLOPs of one eager forward + backward of `module` (torch.utils.flop_counter), gradients dropped.

    The count runs the attention through gfcore's reference implementation with SDPA's math
    backend (plain matmuls: gfcore's fused kernels and the CPU flash kernel are invisible to
    the counter), then restores each impl."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    from gfcore.nn.attention import FactorizedAttention

    attention = [m for m in module.modules() if isinstance(m, FactorizedAttention)]
    impls = [m.impl for m in attention]
    for m in attention:
        m.impl = "reference"
    counter = FlopCounterMode(display=False)
    try:
        with counter, sdpa_kernel(SDPBackend.MATH):
            module(batch, noise, features)["loss"].backward()
    finally:
        for m, impl in zip(attention, impls):
            m.impl = impl
    module.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def _online_teacher(name: str, args, device):
    """A protocol teacher with random weights: a VGGT (vggt_config(args.teacher_dim)), or a 2-block ViT-S/14 DINOv2."""
    torch.manual_seed(123)
    dtype = torch.bfloat16 if args.precision == "bf16" else torch.float32
    if name.startswith("vggt"):
        from gfcore.geometry import VGGT, VGGTTeacher

        vggt = VGGT(**vggt_config(args.teacher_dim))
        return VGGTTeacher(model=vggt.to(device), dtype=dtype, image_size=args.teacher_image_size,
                           out_dtype=torch.float32)
    from gfcore.geometry import DINOv2Teacher

    return DINOv2Teacher(variant="dinov2_vits14", config={"depth": 2}, dtype=dtype, device=device,
                         image_size=args.teacher_image_size, out_dtype=torch.float32)


def _cache_for(teacher, batch, grid, folder):
    """A FeatureCache holding the teacher's features of the batch's clips (keys clip0, clip1, ...)."""
    from gfcore.geometry.cache import build_feature_cache

    clips = [{"key": f"clip{i}", "frames": ((batch["frames"][i] + 1) / 2).cpu()} for i in range(len(batch["frames"]))]
    build_feature_cache(teacher, clips, folder, grid)
    batch["key"] = [c["key"] for c in clips]
    batch["frame_indices"] = [torch.arange(batch["frames"].shape[1]) for _ in clips]
    return folder


def prepare(teacher: str, switch: str, args, device: torch.device, folder: str) -> dict:
    """Build one run (model, objective, teacher, optimizer), count its FLOPs, take its first step.

    Returns {"row", "full_step", "phases", "model", "objective"}; finish() times it."""
    cfg_teacher = "pointmap" if teacher == "pointmap" else "none"
    ckpt, compiled = SWITCHES[switch]
    cfg = load_config(["experiment=demo", f"model={args.model}", f"teacher={cfg_teacher}",
                       f"data.resolution=[{args.resolution},{args.resolution}]", f"train.batch_size={args.batch}",
                       f"train.num_frames={args.frames}", f"train.precision={args.precision}",
                       f"train.activation_checkpointing={str(ckpt).lower()}", f"train.compile={str(compiled).lower()}",
                       f"loss.projector_dim={args.projector_dim}", f"loss.head_dim={args.head_dim}"])
    batch = _synthetic_batch(cfg, device, teacher == "pointmap")
    if teacher in ("none", "pointmap"):
        model, objective, teacher_module = build_training(cfg, device)
    else:
        from gfcore.models.dit import build_model
        from gfcore.train.objective import GFObjective
        from gfcore.train.teachers import TeacherTargets

        torch.manual_seed(cfg.seed)
        model = build_model(model_config(cfg)).to(device)
        online = _online_teacher(teacher, args, device)
        if teacher.endswith("_cache"):
            teacher_module = TeacherTargets(model.config.grid, cache=_cache_for(online, batch, model.config.grid,
                                                                                os.path.join(folder, teacher)))
        else:
            teacher_module = TeacherTargets(model.config.grid, online)
        objective = GFObjective(build_alignment(cfg, model, teacher_module)).to(device)
    module = TrainModule(model, objective).train()
    params = [p for p in module.parameters() if p.requires_grad]
    optimizer, ema = build_optimizer(params, 1e-4, 0.0), EMA(model, 0.99)
    shape = (args.batch, args.frames, 3, args.resolution, args.resolution)
    noise = draw_noise(shape, torch.Generator().manual_seed(0))
    for name in ("t", "eps", "context", "drop_cond"):
        setattr(noise, name, getattr(noise, name).to(device))
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if args.precision == "bf16" else nullcontext
    with autocast():
        counted = step_flops(module, batch, noise, teacher_module(batch) if teacher_module is not None else None)
    configure_model(model, cfg)  # activation checkpointing / compile after the eager FLOP count
    state = {}

    def teacher_step():
        state["features"] = teacher_module(batch) if teacher_module is not None else None

    def forward_step():
        with autocast():
            state["loss"] = module(batch, noise, state.get("features"))["loss"]

    def backward_step():
        state["loss"].backward()

    def optimizer_step():
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        ema.update(model)

    def full_step():
        teacher_step(), forward_step(), backward_step(), optimizer_step()

    label = {"none": "baseline", "vggt": "GF (VGGT online)", "vggt_cache": "GF (VGGT cache)",
             "dinov2": "GF (DINOv2 online)", "dinov2_cache": "GF (DINOv2 cache)"}.get(teacher, f"GF ({teacher})")
    row = {"run": label, "switch": switch}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t_compile = time.perf_counter()
    full_step()  # first step: compilation (compile), cache warm-up
    sync(device)
    row["first_step_s"] = time.perf_counter() - t_compile
    row["counted_gflop_per_step"] = counted / 1e9
    phases = (("teacher", teacher_step), ("forward", forward_step), ("backward", backward_step),
              ("optimizer", optimizer_step))
    return {"row": row, "full_step": full_step, "phases": phases, "model": model, "objective": objective}


def finish(run: dict, args, device: torch.device, samples=None) -> dict:
    """Step time (measured here, or the pooled `samples` of interleaved rounds), phase split, FLOPs."""
    row, full_step, model, objective = run["row"], run["full_step"], run["model"], run["objective"]
    if samples is None:
        stats = measure(full_step, device, min_time_ms=args.min_time_ms, min_reps=args.reps)
    else:
        stats = time_stats(samples)
    row["step_ms"], row["p20_ms"], row["p80_ms"] = stats["median_ms"], stats["p20_ms"], stats["p80_ms"]
    row["timed_steps"] = stats["reps"]
    row["samples_per_s"] = args.batch / (row["step_ms"] * 1e-3)
    row["peak_mem_mb"] = (torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda"
                          else "n/a (CPU)")
    timings = {"teacher": 0.0, "forward": 0.0, "backward": 0.0, "optimizer": 0.0}
    phase_reps = args.phase_reps or args.reps
    for _ in range(phase_reps):  # phase split: synchronise between phases
        for phase, fn in run["phases"]:
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
            timings[phase] += (time.perf_counter() - t0) * 1e3 / phase_reps
    row.update({f"{k}_ms": v for k, v in timings.items()})
    align = sum(p.numel() for p in objective.parameters() if p.dim() == 2)
    flops = 3 * forward_flops(model, args.batch, args.frames, align)
    row["gflop_per_step"] = flops / 1e9
    row["achieved_tflops"] = flops / (row["step_ms"] * 1e-3) / 1e12
    peak = peak_flops(device, args.peak_tflops)
    row["mfu"] = row["achieved_tflops"] * 1e12 / peak if peak else "n/a (no peak for this device)"
    return row


def interleaved(args, device: torch.device, folder: str) -> list:
    """All runs built first, then timed in rounds of one step each, in turn, so that a changing load
    on a shared machine falls on every run alike. Also the median over rounds of each run's step
    time over the same round's baseline step with the same switch (paired_vs_baseline)."""
    torch._dynamo.reset()
    runs = []
    for switch in args.switches:
        for teacher in args.teachers:
            runs.append(prepare(teacher, switch, args, device, folder))
            print(f"built {runs[-1]['row']['run']} [{switch}] (first step {runs[-1]['row']['first_step_s']:.1f} s)",
                  flush=True)
    for run in runs:  # warm-up (the first step was taken in prepare())
        for _ in range(args.warmup):
            run["full_step"]()
    clock = time.thread_time if args.clock == "cpu" else time.perf_counter
    samples = [[] for _ in runs]
    for round_ in range(args.reps):
        for run, times in zip(runs, samples):
            sync(device)
            t0 = clock()
            run["full_step"]()
            sync(device)
            times.append((clock() - t0) * 1e3)
        print(f"round {round_ + 1}/{args.reps}: " + ", ".join(f"{t[-1]:.0f}" for t in samples) + " ms", flush=True)
    rows = []
    for i, run in enumerate(runs):
        base = next((j for j, r in enumerate(runs) if r["row"]["switch"] == run["row"]["switch"]
                     and r["row"]["run"] == "baseline"), None)
        if base is not None:
            run["row"]["paired_vs_baseline"] = time_stats([a / b for a, b in zip(samples[i], samples[base])])["median_ms"]
        rows.append(finish(run, args, device, samples[i]))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--model", default="tiny", choices=["tiny", "small", "dit_b", "dit_l"])
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--precision", default=None, choices=["fp32", "bf16"],
                        help="default: bf16 on cuda, fp32 on cpu")
    parser.add_argument("--teachers", nargs="+", default=["none", "vggt", "vggt_cache"],
                        choices=["none", "pointmap", "vggt", "vggt_cache", "dinov2", "dinov2_cache"])
    parser.add_argument("--switches", nargs="+", default=list(SWITCHES), choices=list(SWITCHES))
    parser.add_argument("--teacher-image-size", type=int, default=None,
                        help="frames resized for the online teacher (default 518 for VGGT / 224 for DINOv2 on cuda, "
                             "112 on cpu)")
    parser.add_argument("--projector-dim", type=int, default=None,
                        help="alignment projector width (default: 2048 for dit_b/dit_l, else the demo's 128)")
    parser.add_argument("--head-dim", type=int, default=None,
                        help="alignment head width (default: 512 for dit_b/dit_l, else the demo's 64)")
    parser.add_argument("--teacher-dim", type=int, default=None, choices=[768, 2048],
                        help="VGGT teacher feature width (default: 2048 for dit_b/dit_l, else 768)")
    parser.add_argument("--peak-tflops", type=float, default=None, help="peak for MFU (known GPUs are looked up)")
    parser.add_argument("--tag", default="", help="suffix of the result files")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--min-time-ms", type=float, default=500.0)
    parser.add_argument("--phase-reps", type=int, default=None, help="steps of the phase split (default: --reps)")
    parser.add_argument("--warmup", type=int, default=2, help="--interleave: untimed steps per run after the first")
    parser.add_argument("--clock", default="wall", choices=["wall", "cpu"],
                        help="--interleave on the CPU: wall time, or the timing thread's CPU time (time.thread_time: "
                             "the time the step ran on a core, not the time other processes held it; for a "
                             "shared machine, with one torch thread)")
    parser.add_argument("--interleave", action="store_true",
                        help="build every run first, then time --reps rounds of one step per run in turn "
                             "(for a machine whose load changes; adds paired_vs_baseline)")
    args = parser.parse_args()
    device = torch.device(args.device)
    args.precision = args.precision or ("bf16" if device.type == "cuda" else "fp32")
    projector, head, width = PRESETS[args.model]
    demo = load_config(["experiment=demo"]).loss
    args.projector_dim = args.projector_dim or projector or int(demo.projector_dim)
    args.head_dim = args.head_dim or head or int(demo.head_dim)
    args.teacher_dim = args.teacher_dim or width
    if args.teacher_image_size is None:
        args.teacher_image_size = 112 if device.type == "cpu" else (224 if "dinov2" in " ".join(args.teachers) else 518)
    if args.clock == "cpu" and (device.type != "cpu" or not args.interleave or torch.get_num_threads() != 1):
        parser.error("--clock cpu needs --device cpu, --interleave and one torch thread (OMP_NUM_THREADS=1)")
    load_start = os.getloadavg()
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        if args.interleave:
            rows = interleaved(args, device, folder)
        else:
            for switch in args.switches:
                for teacher in args.teachers:
                    torch._dynamo.reset()
                    rows.append(finish(prepare(teacher, switch, args, device, folder), args, device))
                    print(f"{rows[-1]['run']} [{switch}]: {rows[-1]['step_ms']:.1f} ms", flush=True)
    for row in rows:
        base = next((r for r in rows if r["switch"] == row["switch"] and r["run"] == "baseline"), None)
        row["vs_baseline"] = row["step_ms"] / base["step_ms"] if base else "n/a"
        row["flops_vs_baseline"] = row["counted_gflop_per_step"] / base["counted_gflop_per_step"] if base else "n/a"
        row["teacher_share"] = row["teacher_ms"] / max(1e-9, sum(row[f"{k}_ms"] for k in
                                                                ("teacher", "forward", "backward", "optimizer")))
    load_end = os.getloadavg()
    columns = ["run", "switch", "step_ms", "p20_ms", "p80_ms", "timed_steps", "vs_baseline"]
    columns += ["paired_vs_baseline"] if args.interleave else []
    columns += ["flops_vs_baseline", "samples_per_s",
               "teacher_ms", "teacher_share", "forward_ms", "backward_ms", "optimizer_ms", "peak_mem_mb",
               "first_step_s", "gflop_per_step", "counted_gflop_per_step", "achieved_tflops", "mfu"]
    table = markdown_table(rows, columns)
    table += "\n\nCommand: `python -m benchmarks.bench_train_step " + " ".join(sys.argv[1:]) + "`"
    table += (f"\n\nLoad average (1, 5, 15 min): {load_start} at the start, {load_end} at the end "
              f"({os.cpu_count()} CPUs). Online teacher input: {args.teacher_image_size} px. Model {args.model}, "
              f"{args.resolution} px, batch {args.batch} x {args.frames} frames, {args.precision}; alignment projector "
              f"{args.projector_dim}, head {args.head_dim}, teacher features {args.teacher_dim}. first_step_s: the "
              f"first step alone (compilation with compile), not in step_ms. flops_vs_baseline: counted FLOPs "
              f"(torch.utils.flop_counter, one eager step) over the baseline's. Clock: {args.clock}"
              + (" (step_ms, p20/p80 and paired ratios in thread CPU time; the phase split and first_step_s in wall "
                 "time)" if args.clock == "cpu" else "") + ".")
    payload = {"env": environment(device), "config": vars(args), "rows": rows,
               "load_average_start_end": [load_start, load_end],
               "note": "step_ms: median of full steps (p20/p80 alongside); phase columns: separately synchronised "
                       "means; vs_baseline: step_ms over the baseline's with the same switch; paired_vs_baseline "
                       "(--interleave): median over rounds of step / the same round's baseline step"}
    name = f"bench_train_step_{device.type}_{args.model}" + (f"_{args.tag}" if args.tag else "")
    path = write_results(name, payload, table)
    print(table)
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
