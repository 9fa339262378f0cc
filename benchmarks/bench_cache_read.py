"""python -m benchmarks.bench_cache_read [REPS]

Before/after of the cached teacher path (TeacherTargets with a FeatureCache), interleaved in one process.
before: the previous code (np.load per clip per step, np.array copy, .float() per clip, torch.stack);
after: TeacherTargets as committed (memmap opened once, one float16 -> float32 copy into the batch).
One torch thread; times are the thread's CPU time (time.thread_time: robust to other processes on a
shared machine; page faults of fresh buffers count, as system time). Both paths give identical
targets (asserted). Writes benchmarks/results/cache_read_cpu.md."""
import json, os, sys, tempfile, time
import numpy as np, torch
from gfcore.train.teachers import TeacherTargets
torch.set_num_threads(1)

def build(folder, T, grid, D, n):
    os.makedirs(f"{folder}/features", exist_ok=True)
    clips = {}
    for i in range(n):
        a = np.lib.format.open_memmap(f"{folder}/features/c{i}.npy", mode="w+", dtype=np.float16, shape=(T, 1, *grid, D))
        a[:] = np.random.randn(T, 1, *grid, D).astype(np.float16); a.flush(); del a
        clips[f"c{i}"] = {"file": f"features/c{i}.npy", "frames": T}
    json.dump({"version": 1, "teacher": "vggt", "layers": [-1], "grid": list(grid), "feature_dim": D,
               "dtype": "float16", "clips": clips}, open(f"{folder}/index.json", "w"))

def before(folder, batch):
    feats = torch.stack([torch.from_numpy(np.array(np.load(f"{folder}/features/{k}.npy", mmap_mode="r", allow_pickle=False)[idx.tolist()])).float()
                         for k, idx in zip(batch["key"], batch["frame_indices"])])
    feats = feats.permute(0, 1, 3, 4, 2, 5).flatten(2, 3)
    return feats[:, :, :, 0]

reps = int(sys.argv[1]) if len(sys.argv) > 1 else 15
lines = ["# Cached teacher path: before / after (CPU, thread CPU time)", "", f"load average at start {os.getloadavg()}", ""]
print(lines[-2])
for name, (B, T, grid, D) in {"bench tiny: 8 clips x 8 frames, 8x8 grid, D 768": (8, 8, (8, 8), 768),
                              "bench dit_b: 1 clip x 4 frames, 4x4 grid, D 2048": (1, 4, (4, 4), 2048),
                              "paper-like: 8 clips x 16 frames, 32x32 grid, D 2048 (per step 1 GiB fp32)": (8, 16, (32, 32), 2048)}.items():
    with tempfile.TemporaryDirectory() as f:
        build(f, T, grid, D, B)
        tt = TeacherTargets(grid, cache=f)
        batch = {"frames": torch.zeros(B, T, 3, 8, 8), "key": [f"c{i}" for i in range(B)],
                 "frame_indices": [torch.arange(T)] * B}
        assert torch.equal(before(f, batch), tt(batch))
        times = {"before": [], "after": []}
        for r in range(reps if B * T * grid[0] * grid[1] * D < 1e8 else 5):
            for label, fn in (("before", lambda: before(f, batch)), ("after", lambda: tt(batch))):
                t0 = time.thread_time(); fn(); times[label].append((time.thread_time() - t0) * 1e3)
        b, a = np.median(times["before"]), np.median(times["after"])
        lines.append(f"- {name}: before {b:.3f} ms, after {a:.3f} ms (median of {len(times['after'])} interleaved; "
                     f"ratio {b / a:.2f})")
        print(lines[-1], flush=True)
from benchmarks.common import RESULTS_DIR, git_commit
lines += ["", f"load average at end {os.getloadavg()}; commit {git_commit()}; `python -m benchmarks.bench_cache_read {reps}`"]
(RESULTS_DIR / "cache_read_cpu.md").write_text("\n".join(lines) + "\n")
