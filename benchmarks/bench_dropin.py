"""The drop-in against the plain PyTorch it replaces: forward + backward, interleaved rounds.

    python -m benchmarks.bench_dropin --device cpu    # writes results/dropin_cpu.{json,md}
    python -m benchmarks.bench_dropin --device cuda   # writes results/dropin_cuda.{json,md}

Per shape [batch, tokens, hidden -> projector -> target] and dtype (fp32, bf16 autocast), each a
training step's loss part (projector included, fwd + bwd, gradients of h and every weight):
  repa_plain        the REPA formula: z = MLP(h); -mean cos(z, y) with F.normalize
  repa_functional   the same MLP, then gfcore.functional.angular_loss(z, y)
  angular_module    GeometryAlignmentLoss(lambda_scale=0) with the same weights: the fused chain
  gf_plain          the paper's loss written out: 0.5 angular + 0.05 mean (head(zhat) - y)^2
  gf_module         GeometryAlignmentLoss (its fused chain) with the same weights
Variants take turns within each round; a ratio is gfcore's median over the plain median of the
same round, reported as min / median / max over the rounds. Each timed call is an NVTX range
"bench.dropin.<variant>" in the gfcore domain.
"""
import argparse
import copy
import statistics

import torch
import torch.nn.functional as F

from benchmarks.common import environment, markdown_table, measure, write_results
from gfcore import GeometryAlignmentLoss
from gfcore import functional as gf
from gfcore.nvtx import nvtx_range

SHAPES = {"dinov2_b": (4, 256, 384, 2048, 768), "vggt": (4, 256, 1152, 2048, 2048)}
DTYPES = {"fp32": None, "bf16_autocast": torch.bfloat16}
PAIRS = [("repa_functional", "repa_plain"), ("angular_module", "repa_plain"), ("gf_module", "gf_plain")]


def build(shape, device):
    batch, tokens, hidden, width, target = shape
    torch.manual_seed(0)
    module = GeometryAlignmentLoss(hidden, target, projector_dim=width, head_dim=512, check_finite=False).to(device)
    angular_module = GeometryAlignmentLoss(hidden, target, projector_dim=width, lambda_scale=0, lambda_angular=1.0,
                                           check_finite=False).to(device)
    angular_module.projector.load_state_dict(module.projector.state_dict())
    projector, head = copy.deepcopy(module.projector), copy.deepcopy(module.head)
    h = torch.randn(batch, tokens, hidden, device=device, requires_grad=True)
    y = torch.randn(batch, tokens, target, device=device)

    def repa_plain():
        z = projector(h)
        return -(F.normalize(z, dim=-1) * F.normalize(y, dim=-1)).sum(-1).mean()

    def gf_plain():
        z = projector(h)
        angular = -(F.normalize(z, dim=-1) * F.normalize(y, dim=-1)).sum(-1).mean()
        return 0.5 * angular + 0.05 * F.mse_loss(head(F.normalize(z, dim=-1)).float(), y)

    losses = {
        "repa_plain": repa_plain,
        "repa_functional": lambda: gf.angular_loss(projector(h), y),
        "angular_module": lambda: angular_module(h, y).loss,
        "gf_plain": gf_plain,
        "gf_module": lambda: module(h, y).loss,
    }
    params = [h, *projector.parameters(), *head.parameters(), *module.parameters(), *angular_module.parameters()]
    return losses, params


def run_case(shape, dtype, device, rounds, min_time_ms):
    losses, params = build(shape, device)

    def zero():
        for p in params:
            p.grad = None

    def step(name):
        def fn():
            with nvtx_range(f"bench.dropin.{name}"), torch.autocast(device.type, dtype=dtype or torch.float32,
                                                                    enabled=dtype is not None):
                loss = losses[name]()
            loss.backward()
        return fn

    per_round = {name: [] for name in losses}
    for _ in range(rounds):
        for name in losses:
            stats = measure(step(name), device, min_time_ms=min_time_ms, min_reps=3, warmup=1, setup=zero)
            per_round[name].append(stats["median_ms"])
    rows = []
    for fused, plain in PAIRS:
        ratios = [f / p for f, p in zip(per_round[fused], per_round[plain])]
        rows.append({"gfcore": fused, "plain": plain, "gfcore_ms": statistics.median(per_round[fused]),
                     "plain_ms": statistics.median(per_round[plain]), "ratio_min": min(ratios),
                     "ratio_median": statistics.median(ratios), "ratio_max": max(ratios)})
    return rows, per_round


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--rounds", type=int, default=None, help="default: 5 on the CPU, 3 on CUDA")
    parser.add_argument("--min-time-ms", type=float, default=None, help="per variant per round")
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=list(DTYPES))
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    rounds = args.rounds or (5 if device.type == "cpu" else 3)
    min_time_ms = args.min_time_ms or (1000.0 if device.type == "cpu" else 200.0)
    rows, raw = [], {}
    for shape_name in args.shapes:
        for dtype_name in args.dtypes:
            case_rows, per_round = run_case(SHAPES[shape_name], DTYPES[dtype_name], device, rounds, min_time_ms)
            shape = "[{}, {}, {} -> {} -> {}]".format(*SHAPES[shape_name])
            for row in case_rows:
                rows.append({"shape": shape, "dtype": dtype_name, **row})
                print(rows[-1], flush=True)
            raw[f"{shape_name}/{dtype_name}"] = per_round
    columns = ["shape", "dtype", "gfcore", "plain", "gfcore_ms", "plain_ms", "ratio_min", "ratio_median", "ratio_max"]
    table = markdown_table(rows, columns)
    print(table)
    write_results(f"dropin_{device.type}", {"env": environment(device), "rounds": rounds, "rows": rows,
                                            "per_round_median_ms": raw}, table)


if __name__ == "__main__":
    main()
