"""torch.profiler over one training step, baseline vs GF with the feature cache, at DiT-B width.

    OMP_NUM_THREADS=1 python -m benchmarks.profile_train_step

Looks for avoidable work on the cached path (copies, casts, the cache read) beside the GEMMs and
the optimizer. DiT-B (768 x 12), 32 px, batch 1 x 4 frames, fp32, the paper's alignment head and
2048-wide cached targets, as `bench_train_step --model dit_b --resolution 32 --frames 4 --batch 1`.
One profiled step after one untimed step; profiler times are wall times of the ops on the thread,
so on a shared machine compare the shares, not the totals across runs.
Writes benchmarks/results/profile_train_step_cpu_dit_b.md.
"""
import argparse
import os
import tempfile

import torch
from torch.profiler import ProfilerActivity, profile

from benchmarks import bench_train_step as B
from benchmarks.common import RESULTS_DIR, git_commit


def main() -> None:
    args = argparse.Namespace(model="dit_b", resolution=32, frames=4, batch=1, precision="fp32", projector_dim=2048,
                              head_dim=512, teacher_dim=2048, teacher_image_size=112, peak_tflops=None, reps=1,
                              min_time_ms=1)
    device = torch.device("cpu")
    load_start = os.getloadavg()
    lines = ["# One training step under torch.profiler (CPU, DiT-B width, GF with the feature cache)", "",
             "| run | profiled ms | GEMM ms (mm, addmm, bmm) | AdamW step ms | teacher phase ms | aten::copy_ ms (calls) "
             "| aten::_to_copy ms (aten::to calls) |", "|---|---|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as folder:
        for teacher in ("none", "vggt_cache"):
            run = B.prepare(teacher, "plain", args, device, folder)
            run["full_step"]()
            phases = dict(run["phases"])
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                with torch.profiler.record_function("phase_teacher"):
                    phases["teacher"]()
                phases["forward"](), phases["backward"](), phases["optimizer"]()
            events = {e.key: e for e in prof.key_averages()}

            def ms(key, inclusive=False):
                event = events.get(key)
                return 0.0 if event is None else (event.cpu_time_total if inclusive else event.self_cpu_time_total) / 1e3

            def calls(key):
                return events[key].count if key in events else 0

            total = sum(e.self_cpu_time_total for e in prof.key_averages() if not e.key.startswith("phase_")) / 1e3
            gemm = ms("aten::mm") + ms("aten::addmm") + ms("aten::bmm")
            lines.append(f"| {run['row']['run']} | {total:.0f} | {gemm:.0f} ({100 * gemm / total:.0f} %) | "
                         f"{ms('Optimizer.step#AdamW.step', True):.0f} | {ms('phase_teacher', True):.2f} | "
                         f"{ms('aten::copy_'):.1f} ({calls('aten::copy_')}) | {ms('aten::_to_copy', True):.1f} "
                         f"({calls('aten::to')}) |")
            print(lines[-1], flush=True)
            del run
    lines += ["", f"Load average {load_start} at the start, {os.getloadavg()} at the end; {torch.get_num_threads()} "
                  f"torch thread(s); commit {git_commit()}. `OMP_NUM_THREADS=1 python -m benchmarks.profile_train_step`."]
    (RESULTS_DIR / "profile_train_step_cpu_dit_b.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
