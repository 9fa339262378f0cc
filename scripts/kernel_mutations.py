"""Mutation check of the kernel harness: each entry plants one deliberate bug in a copy of
csrc/, rebuilds the harness against the copy and runs the affected family of cases. The
harness must fail on every mutation; the table says which check caught it.

    python scripts/kernel_mutations.py [--only ID,ID] [--jobs 2] [--out benchmarks/results/kernel_mutations.md]

Exit status 1 if any mutation survives (a harness that passes a mutated kernel is a defect).
"""
import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KERNELS = os.path.join(ROOT, "cpp_tests", "kernels")
BASE_BUILD = os.path.join(ROOT, "build", "kernel-harness")

# (id, scope, description, [(file under csrc, old text, new text), ...], extra harness args); the scope
# (alignment, spatial or temporal attention) says which harness file to rebuild and which cases to run.
MUTATIONS = [
    ("A1", "alignment", "bias_silu_backward: tail bound shifted by one (col > cols)",
     [("alignment/alignment_kernels.cuh", "  if (col >= cols) return;", "  if (col > cols) return;")], []),
    ("A2", "alignment", "normalize_cosine_backward: reads one pack past the row (p <= packs)",
     [("alignment/alignment_kernels.cuh",
       "      if (active && p < packs) {\n        gv[k] = load_pack",
       "      if (active && p <= packs) {\n        gv[k] = load_pack")], []),
    ("A3", "alignment", "bias_mse: __syncthreads before the block's sum of squares removed",
     [("alignment/alignment_kernels.cuh",
       "warp_squares[threadIdx.x / kWarp] = squares;\n  __syncthreads();",
       "warp_squares[threadIdx.x / kWarp] = squares;")], []),
    ("A4", "alignment", "normalize_cosine_backward: __syncthreads before the column sums removed",
     [("alignment/alignment_kernels.cuh",
       "  __syncthreads();\n  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {",
       "  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {")], []),
    ("A5", "alignment", "normalize_cosine_backward: launched shared memory 4 bytes short",
     [("alignment/alignment_launch.cuh", "p.smem = sizeof(float) * p.layout.slots() * cols;",
       "p.smem = sizeof(float) * p.layout.slots() * cols - 4;")], []),
    ("A6", "alignment", "pack_width ignores pointer alignment (16-byte loads on misaligned rows)",
     [("alignment/alignment_launch.cuh", "return (aligned && cols % width == 0) ? width : 1;",
       "return (cols % width == 0) ? width : 1;")], []),
    ("A7", "alignment", "sum_partials: row-slice stride 16 instead of 32 (slices overlap)",
     [("alignment/sum_partials.cuh", "g < groups; g += 32)", "g < groups; g += 16)")], []),
    ("A8", "alignment", "bias_silu_backward: sign flipped in silu'",
     [("alignment/alignment_kernels.cuh", "* s * (1.f + a * (1.f - s));", "* s * (1.f - a * (1.f - s));")], []),
    ("A9", "alignment", "warp_sum: the last butterfly step (offset 1) dropped",
     [("alignment/alignment_kernels.cuh", "offset > 0; offset /= 2) v +=", "offset > 1; offset /= 2) v +=")], []),
    # The row layouts keep normalize_cosine_backward's shared memory at 32 KiB at most, so its
    # opt-in above 48 KiB is never taken (the former A10 mutation, removing it, cannot fail).
    ("A10", "alignment", "row_sum: one reduction buffer instead of two alternating (rows race)",
     [("alignment/alignment_kernels.cuh", "red[parity][s.warp][i] = v[i];", "red[0][s.warp][i] = v[i];"),
      ("alignment/alignment_kernels.cuh", "v[i] += red[parity][s.slot * s.row_warps + w][i];",
       "v[i] += red[0][s.slot * s.row_warps + w][i];")], ["--filter", "bias_normalize_cosine"]),
    ("B1", "spatial", "mma forward: __syncthreads at the top of the key loop removed (tile reused too early)",
     [("attention/attention_mma.cuh", "    __syncthreads();  // every warp is done with the previous tile\n", "")],
     []),
    ("B2", "spatial", "mma forward: __syncthreads after staging the key/value tile removed",
     [("attention/attention_mma.cuh",
       "vb, lv.seq, n0, false, pb);\n    __syncthreads();\n",
       "vb, lv.seq, n0, false, pb);\n")], []),
    ("B3", "spatial", "load_a_frag: fragment registers a1 and a2 swapped",
     [("attention/attention_mma.cuh",
       "  a[1] = pair_at(tile + (row0 + 8) * ld, k0 + 2 * t);\n  a[2] = pair_at(tile + row0 * ld, k0 + 8 + 2 * t);",
       "  a[2] = pair_at(tile + (row0 + 8) * ld, k0 + 2 * t);\n  a[1] = pair_at(tile + row0 * ld, k0 + 8 + 2 * t);")],
     []),
    ("B4", "spatial", "mma backward: RoPE^T dropped (unrotate_acc returns at once)",
     [("attention/attention_mma_bwd.cuh", "  if (pb.rope_cos == nullptr) return;\n  constexpr int kHalfTiles",
       "  return;\n  constexpr int kHalfTiles")], []),
    # The last 16 bytes of the dQ kernel's shared memory are row padding no thread touches, so
    # "16 bytes short" is an equivalent mutant (it survived); 32 bytes cut into used elements.
    ("B5", "spatial", "mma dQ kernel: launched shared memory 32 bytes short",
     [("attention/attention_mma_bwd.cuh", "2 * (2 * kOwn * kLdRow + 2 * kStream * kLdRow + D * kLdT);",
       "2 * (2 * kOwn * kLdRow + 2 * kStream * kLdRow + D * kLdT) - 32;")], []),
    ("B6", "spatial", "store_acc_rows: tail bound shifted by one (writes row S)",
     [("attention/attention_mma_bwd.cuh", "    if (i >= S) continue;\n#pragma unroll\n    for (int dt = 0; dt < D / 8; ++dt) {\n      const int d = dt * 8 + 2 * t;\n      base[",
       "    if (i > S) continue;\n#pragma unroll\n    for (int dt = 0; dt < D / 8; ++dt) {\n      const int d = dt * 8 + 2 * t;\n      base[")],
     []),
    ("B7", "temporal", "temporal tensor-core backward: __syncthreads between phase 1 and the q/dO transposes removed",
     [("attention/attention_temporal_mma.cuh",
       "  __syncthreads();  // P^T and dS^T complete; k_s, v_s and kt_s free\n", "")], []),
    ("B8", "temporal", "FMA forward: causal mask dropped",
     [("attention/attention_kernels.cuh", "      const bool visible = j < S && (!pb.causal || j <= i);\n      const float score",
       "      const bool visible = j < S;\n      const float score")], []),
    ("B9", "spatial", "stage_rows: reads the row past the sequence end (i <= seq_len)",
     [("attention/attention_mma.cuh", "    if (i < pb.seq_len)\n      x = rotate", "    if (i <= pb.seq_len)\n      x = rotate")],
     []),
    ("B10", "spatial", "acc_to_a_frag: P fragment registers a1 and a2 swapped",
     [("attention/attention_mma.cuh", "  a[1] = Mma::pack(lo[2], lo[3]);\n  a[2] = Mma::pack(hi[0], hi[1]);",
       "  a[2] = Mma::pack(lo[2], lo[3]);\n  a[1] = Mma::pack(hi[0], hi[1]);")], []),
    ("B11", "temporal", "temporal tensor-core backward: no opt-in for its dynamic shared memory",
     [("attention/attention_launch.cuh",
       "      const auto kernel = temporal_bwd_tc_kernel<scalar_t, D, T_PAD>;\n"
       "      const cudaError_t err = allow_dynamic_smem(kernel, Tiles::kBwdBytes);\n      if (err != cudaSuccess) return err;\n",
       "      const auto kernel = temporal_bwd_tc_kernel<scalar_t, D, T_PAD>;\n")], []),
    ("B12", "spatial", "tensor-core kernels chosen on sm_70 (major >= 7)",
     [("attention/attention_launch.cuh", "return dev.major >= 8;", "return dev.major >= 7;")], []),
    ("B13", "temporal", "FMA dK/dV: __syncthreads after staging the query tile removed",
     [("attention/attention_kernels.cuh",
       "      delta_t[tid] = i < S ? in.delta[i * ll.seq] : 0.f;\n    }\n    __syncthreads();\n",
       "      delta_t[tid] = i < S ? in.delta[i * ll.seq] : 0.f;\n    }\n")], []),
    ("B14", "temporal", "16-byte loads whatever the views' alignment (rows_16b_aligned always true)",
     [("attention/attention_launch.cuh", "  return reinterpret_cast<uintptr_t>(p) % 16 == 0 && s.b % kPer16 == 0",
       "  return true || s.b % kPer16 == 0")], []),
    ("B15", "temporal", "temporal tensor-core forward: padded keys not masked (j < S dropped)",
     [("attention/attention_temporal_mma.cuh",
       "        const bool visible = j < S && (!pb.causal || j <= rows[half]);",
       "        const bool visible = !pb.causal || j <= rows[half];")], []),
    ("B16", "temporal", "stage_chunk: RoPE sign flipped on the second half",
     [("attention/attention_temporal_mma.cuh", "hi[e] = x2 * cs[d_hi + e] + x1 * sn[d_hi + e];",
       "hi[e] = x2 * cs[d_hi + e] - x1 * sn[d_hi + e];")], []),
    ("B17", "temporal", "claim_sequences: every CTA claims kSeqs sequences (the last CTA reads past the end)",
     [("attention/attention_temporal_mma.cuh", "  const int live = left < kSeqs ? static_cast<int>(left) : kSeqs;",
       "  const int live = kSeqs;")], []),
    ("B18", "temporal", "temporal tensor-core backward: P^T written untransposed (pt_s[i][j])",
     [("attention/attention_temporal_mma.cuh", "        pt_s[j * kLdT + i] = Mma::bits(p);",
       "        pt_s[i * kLdT + j] = Mma::bits(p);")], []),
    # H: bugs that only the hostile cases (cpp_tests/kernels/attention_cases.h, Spec::hostile) can
    # reveal: RoPE tables with equal halves hide a read of the wrong half, and unit-scale scores
    # never overflow without the row max. Each is also run without the hostile cases, which must
    # pass (HOSTILE_ONLY below): the table says so.
    ("H1", "temporal", "stage_chunk: the second half rotated with the first half's cos and sin",
     [("attention/attention_temporal_mma.cuh", "hi[e] = x2 * cs[d_hi + e] + x1 * sn[d_hi + e];",
       "hi[e] = x2 * cs[d_lo + e] + x1 * sn[d_lo + e];")], []),
    ("H2", "temporal", "temporal tensor-core forward: softmax without the row-max subtraction",
     [("attention/attention_temporal_mma.cuh", "        s[nt][e] = exp2f(s[nt][e] - m);",
       "        s[nt][e] = exp2f(s[nt][e]);"),
      ("attention/attention_temporal_mma.cuh", "    row_max[half] = m;", "    row_max[half] = 0.f;")], []),
    ("H3", "spatial", "unrotate_acc (mma backward): the first half's RoPE^T reads its own half of the sine table",
     [("attention/attention_mma_bwd.cuh", "acc[dt + kHalfTiles][e] * pb.rope_sin[base + d + D / 2]",
       "acc[dt + kHalfTiles][e] * pb.rope_sin[base + d]")], []),
    ("H4", "temporal", "load_rotated (FMA kernels): the second half rotated with the first half's cos",
     [("attention/attention_kernels.cuh", "  return x * pb.rope_cos[t] + (d < kHalf ? -partner : partner) * pb.rope_sin[t];",
       "  return x * pb.rope_cos[t - (d < kHalf ? 0 : kHalf)] + (d < kHalf ? -partner : partner) * pb.rope_sin[t];")],
     []),
    ("H5", "temporal", "unrotate_grad (FMA backward): the first half's RoPE^T reads its own half of the sine table",
     [("attention/attention_kernels.cuh", "d < kHalf ? g[d + kHalf] * pb.rope_sin[base + d + kHalf]",
       "d < kHalf ? g[d + kHalf] * pb.rope_sin[base + d]")], []),
    ("H6", "spatial", "mma forward (online softmax): no running row max (scores exponentiated as they are)",
     [("attention/attention_mma.cuh", "      const float new_max = fmaxf(row_max[half], tile_max);",
       "      const float new_max = 0.f * fmaxf(row_max[half], tile_max) + 0.f;")], []),
    ("H7", "temporal", "FMA forward (online softmax): no running row max",
     [("attention/attention_kernels.cuh", "      const float new_max = fmaxf(row_max[r], warp_max(score));",
       "      const float new_max = ((void)warp_max(score), 0.f);")], []),
    ("H8", "temporal", "stage_chunk: the first half rotated with the second half's sine",
     [("attention/attention_temporal_mma.cuh", "lo[e] = x1 * cs[d_lo + e] - x2 * sn[d_lo + e];",
       "lo[e] = x1 * cs[d_lo + e] - x2 * sn[d_hi + e];")], []),
]
# Mutations the benign cases must not catch (see the H entries above).
HOSTILE_ONLY = {m[0] for m in MUTATIONS if m[0].startswith("H")}

SCOPE_FILES = {"alignment": "test_alignment_kernels", "spatial": "test_attention_spatial",
               "temporal": "test_attention_temporal"}

CHECKS = [
    ("simt[barrier]", "barrier check"), ("simt[warp]", "warp-collective check"), ("simt[deadlock]", "deadlock check"),
    ("simt[launch]", "launch rules"), ("simt[arch]", "architecture check"), ("AddressSanitizer", "AddressSanitizer"),
    ("runtime error:", "UBSan"), ("harness[value]", "value vs float64 reference"),
]


def classify(line):
    for key, name in CHECKS:
        if key in line:
            return name
    return "crash/other"


def run_mutation(mutation, jobs, orders):
    mid, family, desc, edits, extra = mutation
    tmp = tempfile.mkdtemp(prefix=f"gfcore-mut-{mid}-")
    try:
        src = os.path.join(tmp, "csrc")
        shutil.copytree(os.path.join(ROOT, "csrc"), src)  # copy2: mtimes kept, only edited files rebuild
        build = os.path.join(tmp, "build")
        shutil.copytree(BASE_BUILD, build)
        for rel, old, new in edits:
            path = os.path.join(src, rel)
            text = open(path).read()
            count = text.count(old)
            if count != 1:
                raise SystemExit(f"{mid}: the text to mutate occurs {count} times in {rel}")
            time.sleep(0.01)
            with open(path, "w") as f:
                f.write(text.replace(old, new))
        env = dict(os.environ)
        # Rebuild only the harness files that include the mutated family (make -o: treat the others
        # as current). Both attention files are rebuilt for an attention mutation: they share template
        # instantiations (e.g. the FMA backward kernels), and the linker keeps one copy of each.
        rebuilt = {"alignment"} if family == "alignment" else {"spatial", "temporal"}
        keep = [f"-o{os.path.join(build, f'{tu}.o')}" for s, tu in SCOPE_FILES.items() if s not in rebuilt]
        make = ["make", "-s", "-C", KERNELS, f"SRC_ROOT={src}", f"BUILD={build}", f"-j{jobs}", *keep,
                os.path.join(build, "kernel_tests")]
        built = subprocess.run(make, capture_output=True, text=True, env=env)
        if built.returncode != 0:
            return mid, family, desc, "compile error", built.stderr[-400:]
        env["ASAN_OPTIONS"] = "detect_leaks=0:detect_stack_use_after_return=0"
        select = ["--family", "alignment"] if family == "alignment" else ["--filter", family + "/"]
        cmd = [os.path.join(build, "kernel_tests"), "--fail-fast", *select, "--jobs", str(jobs), "--orders", orders] + extra
        ran = subprocess.run(cmd, capture_output=True, text=True, env=env)
        fails = [l for l in ran.stdout.splitlines() if l.startswith("FAIL ")]
        if ran.returncode == 0 or not fails:
            return mid, family, desc, "SURVIVED", ran.stdout.splitlines()[-1] if ran.stdout else ""
        caught = sorted({classify(l) for l in fails})
        summary = ran.stdout.strip().splitlines()[-1]
        orders_seen = sorted({re.search(r"\[([a-z-]+)\]", l).group(1) for l in fails})
        detail = f"{summary}; failing orders: {', '.join(orders_seen)}"
        if mid in HOSTILE_ONLY:  # the same cases without the hostile ones must all pass
            benign = subprocess.run(cmd + ["--exclude", "/hostile"], capture_output=True, text=True, env=env)
            if benign.returncode != 0:
                return mid, family, desc, "caught, but NOT by the hostile cases alone", detail
            detail += "; without the hostile cases: all pass"
        return mid, family, desc, ", ".join(caught), detail
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", default="")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--orders", default="forward,reverse,random,warp-serial,warp-serial-reverse,warp-serial-random")
    ap.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "kernel_mutations.md"))
    args = ap.parse_args()
    if not os.path.exists(os.path.join(BASE_BUILD, "kernel_tests")):
        subprocess.run(["make", "-s", "-C", KERNELS, f"-j{args.jobs}"], check=True)
    chosen = [m for m in MUTATIONS if not args.only or m[0] in args.only.split(",")]
    rows, survived = [], 0
    start = time.time()
    for m in chosen:
        t0 = time.time()
        mid, family, desc, caught, detail = run_mutation(m, args.jobs, args.orders)
        survived += caught in ("SURVIVED", "compile error") or caught.startswith("caught, but")
        rows.append((mid, family, desc, caught, detail))
        print(f"{mid} {desc}: {caught} ({time.time() - t0:.0f} s) {detail}", flush=True)
    lines = ["# Kernel harness mutation check", "",
             f"`python scripts/kernel_mutations.py` on this machine: {len(rows)} mutations, "
             f"{len(rows) - survived} caught, {survived} survived; {time.time() - start:.0f} s.",
             f"Schedules per case: {args.orders}.", "",
             "| id | scope | planted bug | caught by | harness summary |", "|---|---|---|---|---|"]
    lines += [f"| {r[0]} | {r[1]} | {r[2]} | {r[3]} | {r[4]} |" for r in rows]
    if args.only and os.path.exists(args.out):
        # Rerun of some mutations: replace their rows in the existing table.
        old = open(args.out).read().splitlines()
        new_rows = {r[0]: f"| {r[0]} | {r[1]} | {r[2]} | {r[3]} | {r[4]} |" for r in rows}
        lines = [new_rows.pop(l.split("|")[1].strip(), l) if l.startswith("| ") and not l.startswith("| id") else l
                 for l in old]
        lines += list(new_rows.values())  # mutations new to the table go at its end
    with open(args.out, "w") as f:
        f.write("\n".join(lines) + "\n")
    print(f"wrote {args.out}")
    print(f"mutations: {len(rows) - survived} caught, {survived} survived")
    return 1 if survived else 0


if __name__ == "__main__":
    sys.exit(main())
