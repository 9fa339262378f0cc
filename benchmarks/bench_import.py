"""What `import gfcore` costs beyond `import torch`, in fresh interpreters.

    python -m benchmarks.bench_import            # 5 runs: median, min, max; writes results/import_time.json

Each run is a new process that imports torch, then times `import gfcore;
gfcore.GeometryAlignmentLoss` with perf_counter (so torch's own import, which any user pays
anyway, is left out). The goal (issue 21): median at most 0.3 s.
"""
import argparse
import statistics
import subprocess
import sys

import torch

from benchmarks.common import environment, markdown_table, write_results

PROBE = ("import time, torch; t = time.perf_counter(); import gfcore; gfcore.GeometryAlignmentLoss; "
         "print(time.perf_counter() - t)")
GOAL_S = 0.3


def import_seconds(runs: int):
    # cwd=/: the installed gfcore (with its kernels), not the checkout's sources
    return [float(subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True,
                                 cwd="/").stdout) for _ in range(runs)]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args(argv)
    times = import_seconds(args.runs)
    row = {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times), "runs": len(times),
           "goal_s": GOAL_S, "meets_goal": statistics.median(times) <= GOAL_S}
    payload = {"env": environment(torch.device("cpu")), "seconds": times, "summary": row}
    print(markdown_table([row], list(row)))
    write_results("import_time", payload, markdown_table([row], list(row)))
    return 0 if row["meets_goal"] else 1


if __name__ == "__main__":
    sys.exit(main())
