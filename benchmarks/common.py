"""Shared benchmark plumbing: timing with CUDA events, environment facts, result files."""
import datetime
import json
import os
import platform
import statistics
import subprocess
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import torch

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def git_commit() -> str:
    """HEAD's hash, with '+dirty' when the working tree differs from it."""
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, check=True).stdout.strip()
        return head + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"


def environment(device: torch.device) -> Dict:
    import gfcore

    return {
        "device": device_name(device),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "gfcore": gfcore.__version__,
        "gfcore_backends": gfcore.backends(),
        "commit": git_commit(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        # glibc's malloc settings change CPU timings a lot at >= 32 MiB tensors (README).
        "malloc_env": {k: v for k, v in os.environ.items() if k.startswith("MALLOC_") or k == "LD_PRELOAD"},
    }


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_stats(times: Sequence[float]) -> Dict[str, float]:
    """Median, p20 and p80 (ms) and the number of repetitions."""
    times = list(times)
    quantiles = statistics.quantiles(times, n=10, method="inclusive") if len(times) > 1 else [times[0]] * 9
    return {"median_ms": statistics.median(times), "p20_ms": quantiles[1], "p80_ms": quantiles[7], "reps": len(times)}


def measure(fn: Callable[[], None], device: torch.device, min_time_ms: float = 100.0, min_reps: int = 10,
            warmup: int = 3, setup: Optional[Callable[[], None]] = None,
            max_wall_s: float = 30.0, samples: Optional[List[float]] = None) -> Dict[str, float]:
    """Median, p20 and p80 of fn's time in ms over >= min_reps runs and >= min_time_ms in total.

    CUDA: events around each run (setup runs outside them); CPU: perf_counter. Once min_reps
    runs are in, a costly setup (say, a forward before each timed backward) ends the loop
    after max_wall_s of wall time even if the timed total is still under min_time_ms.
    `samples`, when given, receives every repetition's time (to pool interleaved rounds).
    """
    wall_start = time.perf_counter()
    for _ in range(warmup):
        if setup:
            setup()
        fn()
    sync(device)
    times: List[float] = []
    while len(times) < min_reps or (sum(times) < min_time_ms and time.perf_counter() - wall_start < max_wall_s):
        if setup:
            setup()
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
        if len(times) > 10000:
            break
    if samples is not None:
        samples.extend(times)
    return time_stats(times)


def copy_bandwidth_gbps(device: torch.device, nbytes: int = 1 << 30) -> float:
    """Device-to-device copy bandwidth, counting bytes read plus bytes written."""
    src = torch.empty(nbytes // 2, dtype=torch.bfloat16, device=device).normal_()
    dst = torch.empty_like(src)
    stats = measure(lambda: dst.copy_(src), device, min_time_ms=50, min_reps=5)
    return 2 * nbytes / (stats["median_ms"] * 1e-3) / 1e9


def markdown_table(rows: Sequence[Dict], columns: Sequence[str]) -> str:
    def cell(value):
        return f"{value:.3g}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(c, "")) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def write_results(name: str, payload: Dict, table: str, out_dir: Path = RESULTS_DIR) -> Path:
    """Writes {name}.json and {name}.md under out_dir; returns the JSON path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2) + "\n")
    header = f"# {name}\n\n{payload['env']['device']}, torch {payload['env']['torch']}, commit {payload['env']['commit']}\n\n"
    (out_dir / f"{name}.md").write_text(header + table + "\n")
    return path
