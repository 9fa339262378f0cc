"""Time of one training step (data excluded) of baseline vs Geometry Forcing, by phase.

    python -m benchmarks.bench_train_step [--device cpu|cuda] [--model tiny|small|dit_b] [--resolution 32]
                                          [--batch 8 --frames 8] [--teacher pointmap]

Phases: teacher (targets), forward (model + losses), backward, optimizer (clip + AdamW + EMA).
Also the model FLOPs of a step and achieved TFLOP/s (MFU on GPUs with a known peak). Writes
benchmarks/results/bench_train_step_<device>_<model>.json and .md; prints a markdown table.
"""
import argparse
import time
from contextlib import nullcontext

import torch

from benchmarks.common import environment, markdown_table, measure, sync, write_results
from gfcore.train import load_config
from gfcore.train.flops import forward_flops, peak_flops
from gfcore.train.objective import draw_noise
from gfcore.train.optim import EMA, build_optimizer
from gfcore.train.trainer import TrainModule, build_training


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


def bench(teacher: str, args, device: torch.device) -> dict:
    cfg = load_config(["experiment=demo", f"model={args.model}", f"teacher={teacher}",
                       f"data.resolution=[{args.resolution},{args.resolution}]", f"train.batch_size={args.batch}",
                       f"train.num_frames={args.frames}", f"train.precision={args.precision}"])
    model, objective, teacher_module = build_training(cfg, device)
    module = TrainModule(model, objective).train()
    params = [p for p in module.parameters() if p.requires_grad]
    optimizer, ema = build_optimizer(params, 1e-4, 0.0), EMA(model, 0.99)
    batch = _synthetic_batch(cfg, device, teacher == "pointmap")
    shape = (args.batch, args.frames, 3, args.resolution, args.resolution)
    noise = draw_noise(shape, torch.Generator().manual_seed(0))
    for name in ("t", "eps", "context", "drop_cond"):
        setattr(noise, name, getattr(noise, name).to(device))
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if args.precision == "bf16" else nullcontext
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

    row = {"run": "baseline" if teacher == "none" else f"GF ({teacher})"}
    row["step_ms"] = measure(full_step, device, min_time_ms=args.min_time_ms, min_reps=args.reps)["median_ms"]
    timings = {"teacher": 0.0, "forward": 0.0, "backward": 0.0, "optimizer": 0.0}
    for _ in range(args.reps):  # phase split: synchronise between phases
        for phase, fn in (("teacher", teacher_step), ("forward", forward_step), ("backward", backward_step),
                          ("optimizer", optimizer_step)):
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
            timings[phase] += (time.perf_counter() - t0) * 1e3 / args.reps
    row.update({f"{k}_ms": v for k, v in timings.items()})
    align = sum(p.numel() for p in objective.parameters() if p.dim() == 2)
    flops = 3 * forward_flops(model, args.batch, args.frames, align)
    row["gflop_per_step"] = flops / 1e9
    row["achieved_tflops"] = flops / (row["step_ms"] * 1e-3) / 1e12
    peak = peak_flops(device, None)
    row["mfu"] = row["achieved_tflops"] * 1e12 / peak if peak else "n/a (no peak for this device)"
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--model", default="tiny", choices=["tiny", "small", "dit_b", "dit_l"])
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--precision", default=None, choices=["fp32", "bf16"],
                        help="default: bf16 on cuda, fp32 on cpu")
    parser.add_argument("--teachers", nargs="+", default=["none", "pointmap"])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--min-time-ms", type=float, default=500.0)
    args = parser.parse_args()
    device = torch.device(args.device)
    args.precision = args.precision or ("bf16" if device.type == "cuda" else "fp32")
    rows = [bench(teacher, args, device) for teacher in args.teachers]
    columns = ["run", "step_ms", "teacher_ms", "forward_ms", "backward_ms", "optimizer_ms", "gflop_per_step",
               "achieved_tflops", "mfu"]
    table = markdown_table(rows, columns)
    payload = {"env": environment(device), "config": vars(args), "rows": rows,
               "note": "step_ms: median of full steps; phase columns: separately synchronised means"}
    path = write_results(f"bench_train_step_{device.type}_{args.model}", payload, table)
    print(table)
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
