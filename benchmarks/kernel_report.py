"""Static performance report of the CUDA kernels (no GPU needed): `python -m benchmarks.kernel_report`.

Compiles every kernel instantiation of csrc/alignment and csrc/attention with nvcc for sm_90
(and sm_80) and reads ptxas's resource usage (-Xptxas -v): registers, spill stores and loads,
stack frame, static shared memory. Then, for representative shapes (the paper's alignment
head: target 2048 / projector 2048, 8k..128k tokens; attention B=2..8, T=16..64, P=256..1024,
H=16, D=64/128), the launch that the host logic (alignment_launch.cuh, attention_launch.cuh)
makes: threads, dynamic shared memory, theoretical occupancy from the datasheet limits, and
the roofline bound: for memory-bound kernels the compulsory bytes at HBM bandwidth, for the
attention passes FLOPs, bytes, arithmetic intensity and which roof binds.

These are static figures computed from the compiler's output and datasheet numbers, not
measurements. GPU timings are pending (no GPU has run these kernels yet).

Writes benchmarks/results/kernel_report_<arch>.{md,json}.
"""
import argparse
import datetime
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

from benchmarks.bytes_model import DEVICES, alignment_bytes, attention_cost

ROOT = Path(__file__).resolve().parent.parent
CSRC = Path(os.environ.get("GFCORE_CSRC", ROOT / "csrc"))  # GFCORE_CSRC: report on another copy of csrc/
RESULTS = Path(__file__).resolve().parent / "results"

DTYPES = {"fp32": ("float", 4), "bf16": ("gfcore::bf16", 2), "fp16": ("gfcore::fp16", 2)}
DEMANGLED = {"fp32": "float", "bf16": "c10::BFloat16", "fp16": "c10::Half"}

# ---- kernel instantiations ------------------------------------------------------------------
# Mirrors what the launch logic instantiates (alignment_launch.cuh: with_pack / with_row_layout;
# attention_launch.cuh: the pass entry points). Keep in step with those files.
PPLS = (1, 2, 4, 8, 16)
ATTN_D = (32, 64, 128)


@dataclass
class Kernel:
    family: str
    name: str            # qualified template name
    dtype: str
    args: List[int]      # integral template arguments after the type
    meta: Dict = field(default_factory=dict)

    def cxx(self) -> str:
        t = DTYPES[self.dtype][0]
        return f"{self.name}<{', '.join([t] + [str(a) for a in self.args])}>"

    def demangled(self) -> str:
        return f"{self.name}<{', '.join([DEMANGLED[self.dtype]] + [str(a) for a in self.args])}>"

    def label(self) -> str:
        short = self.name.split("::")[-1]
        return f"{short}<{', '.join([self.dtype] + [str(a) for a in self.args])}>"


def alignment_kernels() -> List[Kernel]:
    out = []
    ns = "gfcore::alignment::"
    for dt, (_, size) in DTYPES.items():
        for vec in (16 // size, 1):
            for k in ("bias_silu_kernel", "bias_silu_backward_kernel", "bias_mse_kernel"):
                out.append(Kernel("alignment", ns + k, dt, [vec], dict(vec=vec)))
            for ppl in (PPLS if vec == 1 else PPLS[:3]):  # with_row_layout: 4 packs of 16 B, 16 values
                for k in ("normalize_cosine_kernel", "normalize_cosine_backward_kernel"):
                    out.append(Kernel("alignment", ns + k, dt, [vec, ppl], dict(vec=vec, ppl=ppl)))
    return out


def attention_kernels() -> List[Kernel]:
    out = []
    ns = "gfcore::attention::"
    rows = {  # (NUM_WARPS, R32, R64, R128) of each FMA launch in attention_launch.cuh
        "spatial_fwd_fma": (8, 8, 4, 2), "temporal_fwd_fma": (4, 4, 4, 4), "bwd_fma": (4, 4, 4, 2)}
    for dt in ("bf16", "fp16"):
        for D in ATTN_D:
            r = {32: 1, 64: 2, 128: 3}[D]
            for tag, kname in (("spatial_fwd_fma", "attention_fwd_kernel"), ("temporal_fwd_fma", "attention_fwd_kernel")):
                w = rows[tag]
                out.append(Kernel("attention", ns + kname, dt, [D, w[0], w[r]], dict(D=D, use=tag)))
            w = rows["bwd_fma"]
            for kname in ("attention_bwd_dq_kernel", "attention_bwd_dkdv_kernel"):
                out.append(Kernel("attention", ns + kname, dt, [D, w[0], w[r]], dict(D=D, use="bwd_fma")))
            for kname in ("attention_fwd_mma_kernel", "attention_bwd_dq_mma_kernel", "attention_bwd_dkdv_mma_kernel",
                          "attention_bwd_delta_kernel", "attention_bwd_fused_kernel"):
                out.append(Kernel("attention", ns + kname, dt, [D], dict(D=D)))
    for dt in ("fp32", "bf16", "fp16"):  # rope.cuh: RoPE on q and k of the SDPA path
        out.append(Kernel("attention", ns + "rope_qk_kernel", dt, [], dict()))
    # Dedupe (the two FMA forward shapes coincide for some D).
    seen, uniq = set(), []
    for k in out:
        if k.cxx() not in seen:
            seen.add(k.cxx())
            uniq.append(k)
    return uniq


def all_kernels() -> List[Kernel]:
    ks = alignment_kernels() + attention_kernels()
    ks.append(Kernel("alignment", "gfcore::alignment::sum_partials_kernel", "fp32", [], dict()))
    return ks


def source(kernels: List[Kernel]) -> str:
    lines = ['#include "alignment/alignment_launch.cuh"', '#include "alignment/sum_partials.cuh"',
             '#include "attention/attention_launch.cuh"',
             '#include "attention/rope.cuh"', "",
             "// Every kernel instantiation of the report: taking the address instantiates it.",
             "const void* gfcore_report_kernels[] = {"]
    for k in kernels:
        if k.name.endswith("sum_partials_kernel"):
            lines.append("    reinterpret_cast<const void*>(&gfcore::alignment::sum_partials_kernel),")
        else:
            lines.append(f"    reinterpret_cast<const void*>(&{k.cxx()}),")
    lines.append("};")
    return "\n".join(lines) + "\n"


# ---- compile and parse ptxas -v ---------------------------------------------------------------
def torch_include() -> str:
    spec = importlib.util.find_spec("torch")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("torch is needed for its c10 headers (c10/util/BFloat16.h)")
    return str(Path(list(spec.submodule_search_locations)[0]) / "include")


def nvcc_path() -> str:
    for cand in (os.environ.get("NVCC"), shutil.which("nvcc"), "/usr/local/cuda/bin/nvcc"):
        if cand and Path(cand).exists():
            return cand
    raise SystemExit("nvcc not found (set NVCC=...)")


# The extension's device flags (setup.py / build.ninja), minus -lineinfo.
NVCC_FLAGS = ["-O3", "-std=c++20", "--use_fast_math", "--expt-relaxed-constexpr", "-D__CUDA_NO_HALF_OPERATORS__",
              "-D__CUDA_NO_HALF_CONVERSIONS__", "-D__CUDA_NO_BFLOAT16_CONVERSIONS__",
              "-D__CUDA_NO_HALF2_OPERATORS__", "-DGFCORE_WITH_CUDA"]


def compile_and_parse(kernels: List[Kernel], arch: str, workdir: Path) -> (Dict[str, Dict], str):
    src = workdir / "kernel_report.cu"
    src.write_text(source(kernels))
    cmd = [nvcc_path(), "-cubin", f"-arch={arch}", "-Xptxas", "-v", *NVCC_FLAGS, f"-I{CSRC}",
           f"-I{torch_include()}", str(src), "-o", str(workdir / f"kernels_{arch}.cubin")]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr)
        raise SystemExit(f"nvcc failed ({arch})")
    version = subprocess.run([nvcc_path(), "--version"], capture_output=True, text=True).stdout.strip().splitlines()[-1]
    return parse_ptxas(proc.stderr + proc.stdout), version


def parse_ptxas(text: str) -> Dict[str, Dict]:
    """mangled name -> {registers, spill_stores, spill_loads, stack, static_smem, barriers}."""
    res: Dict[str, Dict] = {}
    current = None
    for line in text.splitlines():
        m = re.search(r"Function properties for (\S+)", line)
        if m:
            current = m.group(1)
            res.setdefault(current, {})
            continue
        m = re.search(r"Compiling entry function '(\S+)'", line)
        if m:
            current = m.group(1)
            res.setdefault(current, {})
            continue
        if current is None:
            continue
        m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m:
            res[current].update(stack=int(m.group(1)), spill_stores=int(m.group(2)), spill_loads=int(m.group(3)))
            continue
        m = re.search(r"Used (\d+) registers", line)
        if m:
            res[current]["registers"] = int(m.group(1))
            b = re.search(r"used (\d+) barriers", line)
            res[current]["barriers"] = int(b.group(1)) if b else 0
            s = re.search(r"(\d+) bytes smem", line)
            res[current]["static_smem"] = int(s.group(1)) if s else 0
    return res


def demangle(names: List[str]) -> Dict[str, str]:
    proc = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True, check=True)
    return dict(zip(names, proc.stdout.splitlines()))


def attach_usage(kernels: List[Kernel], usage: Dict[str, Dict]) -> Dict[str, Dict]:
    """kernel label -> usage (every instantiation must be found)."""
    dem = demangle(list(usage))
    by_prefix = {}
    for mangled, d in dem.items():
        m = re.match(r"(?:void )?([^(]+)\(", d)
        if m:
            by_prefix[m.group(1).replace(" >", ">")] = usage[mangled]
    out = {}
    for k in kernels:
        key = "gfcore::alignment::sum_partials_kernel" if k.name.endswith("sum_partials_kernel") else k.demangled()
        if key not in by_prefix:
            raise SystemExit(f"ptxas output has no entry for {key}")
        out[k.label()] = by_prefix[key]
    return out


# ---- occupancy --------------------------------------------------------------------------------
def occupancy(regs: int, threads: int, smem: int, dev: Dict) -> Dict:
    """Theoretical blocks and warps per SM from registers, shared memory and threads."""
    warps = (threads + 31) // 32
    per_warp = ((max(regs, 1) * 32 + 255) // 256) * 256  # allocation granularity: 256 registers per warp
    by_regs = (dev["regs_per_sm"] // per_warp) // warps
    if smem > dev["smem_per_block"]:
        by_smem = 0
    else:
        by_smem = dev["smem_per_sm"] // (smem + dev["reserved_smem_per_block"])
    by_threads = dev["threads_per_sm"] // threads
    blocks = min(by_regs, by_smem, by_threads, dev["blocks_per_sm"])
    limiter = min((by_regs, "registers"), (by_smem, "shared memory"), (by_threads, "threads"),
                  (dev["blocks_per_sm"], "blocks"))[1]
    return dict(blocks_per_sm=blocks, warps_per_sm=blocks * warps,
                occupancy_pct=100.0 * blocks * warps / (dev["threads_per_sm"] // 32), limiter=limiter)


# ---- the launches at representative shapes ------------------------------------------------------
TOKENS = (8192, 32768, 131072)
TARGET = 2048
PROJECTOR = 2048


def ceil_div(a, b):
    return (a + b - 1) // b


ROW_BLOCK_WARPS, MAX_ROW_WARPS = 8, 8  # alignment_kernels.cuh: kRowBlockWarps, kMaxRowWarps


def row_layout(cols: int, vec: int):
    """(packs per thread, warps per row) as alignment_launch.cuh's row_layout, None if refused."""
    packs = cols // vec
    max_ppl, preferred = (4, 2) if vec > 1 else (16, 4)
    if cols > MAX_ROW_WARPS * 32 * max_ppl * vec:
        return None
    row_warps = 1
    while row_warps < MAX_ROW_WARPS and row_warps * 32 * preferred < packs:
        row_warps *= 2
    needed, ppl = ceil_div(packs, row_warps * 32), 1
    while ppl < needed:
        ppl *= 2
    return ppl, row_warps


def alignment_launch(kernel: str, dtype: str, rows: int, cols: int, dev: Dict, usage: Dict) -> Optional[Dict]:
    """The launch alignment_launch.cuh makes for aligned contiguous [rows, cols] operands."""
    size = DTYPES[dtype][1]
    vec = 16 // size if cols % (16 // size) == 0 else 1
    partial_rows = 0
    if kernel == "bias_silu":
        inst, threads, smem = f"bias_silu_kernel<{dtype}, {vec}>", 256, 0
    elif kernel in ("bias_silu_backward", "bias_mse"):
        inst = f"{kernel}_kernel<{dtype}, {vec}>"
        packs = cols // vec
        threads = min(256, ceil_div(packs, 32) * 32)
        col_blocks = ceil_div(packs, threads)
        wanted = max(1, min(ceil_div(rows, 8), ceil_div(dev["sm_count"] * 8, col_blocks)))
        partial_rows = ceil_div(rows, ceil_div(rows, wanted))
        smem = 0
    else:
        layout = row_layout(cols, vec)
        if layout is None:
            return None
        ppl, row_warps = layout
        fwd = kernel == "bias_normalize_cosine"
        inst = f"{'normalize_cosine_kernel' if fwd else 'normalize_cosine_backward_kernel'}<{dtype}, {vec}, {ppl}>"
        threads = ROW_BLOCK_WARPS * 32
        slots = ROW_BLOCK_WARPS // row_warps
        smem = 0 if fwd else 4 * slots * cols
    u = usage[inst]
    occ = occupancy(u["registers"], threads, u["static_smem"] + smem, dev)
    extra = {}
    if kernel.startswith("bias_normalize_cosine"):
        extra = dict(packs_per_thread=ppl, warps_per_row=row_warps)
    if kernel == "bias_normalize_cosine_backward":
        partial_rows = max(1, min(ceil_div(rows, slots), dev["sm_count"] * max(occ["blocks_per_sm"], 1)))
    b = alignment_bytes(kernel, rows, cols, size, partial_rows)
    return dict(kernel=kernel, dtype=dtype, tokens=rows, cols=cols, instantiation=inst, threads=threads,
                dynamic_smem=smem, registers=u["registers"], spill_bytes=u["spill_stores"] + u["spill_loads"],
                **extra, **occ, MB=b["total"] / 1e6, hbm_bound_us=b["total"] / (dev["hbm_TBps"] * 1e12) * 1e6)


MMA_BLOCK_M, MMA_PAD = 64, 8


def mma_block_n(D):
    return 32 if D == 128 else 64


def fused_bwd_smem(S, D):
    return 4 * (S * (2 * D + 2 * (D + 1)) + 2 * S * (S + 1) + 2 * S)


def attention_launches(pass_: str, D: int, S: int, dtype: str, dev: Dict, arch_major: int) -> List[Dict]:
    """Kernels (instantiation, threads, dynamic smem) of one pass on the device (attention_launch.cuh)."""
    temporal = pass_.startswith("temporal")
    backward = pass_.endswith("bwd")
    r = {32: 0, 64: 1, 128: 2}[D]
    mma = arch_major >= 8
    ks = []
    if not backward:
        if not temporal and mma:
            ks.append((f"attention_fwd_mma_kernel<{dtype}, {D}>", 128, 0))
        elif not temporal:
            w = (8, (8, 4, 2)[r])
            ks.append((f"attention_fwd_kernel<{dtype}, {D}, {w[0]}, {w[1]}>", 32 * w[0], 0))
        else:
            ks.append((f"attention_fwd_kernel<{dtype}, {D}, 4, 4>", 128, 0))
        return ks
    if temporal and S <= 64 and fused_bwd_smem(S, D) <= dev["smem_per_block"]:
        return [(f"attention_bwd_fused_kernel<{dtype}, {D}>", 256, fused_bwd_smem(S, D))]
    ks.append((f"attention_bwd_delta_kernel<{dtype}, {D}>", 256, 0))
    if not temporal and mma:
        n = mma_block_n(D)
        ld_row, ld_t = D + MMA_PAD, n + MMA_PAD
        dq = 2 * (2 * MMA_BLOCK_M * ld_row + 2 * n * ld_row + D * ld_t)
        dkdv = 2 * (2 * MMA_BLOCK_M * ld_row + 2 * n * ld_row + 2 * D * ld_t) + 2 * 4 * n
        ks.append((f"attention_bwd_dq_mma_kernel<{dtype}, {D}>", 128, dq))
        ks.append((f"attention_bwd_dkdv_mma_kernel<{dtype}, {D}>", 128, dkdv))
    else:
        R = (4, 4, 2)[r]
        ks.append((f"attention_bwd_dq_kernel<{dtype}, {D}, 4, {R}>", 128, 0))
        ks.append((f"attention_bwd_dkdv_kernel<{dtype}, {D}, 4, {R}>", 128, 0))
    return ks


ATTN_SHAPES = [  # (B, T, P, H, D)
    (2, 16, 256, 16, 64), (2, 16, 1024, 16, 128), (8, 16, 1024, 16, 64), (4, 32, 1024, 16, 128),
    (2, 64, 256, 16, 128), (8, 64, 1024, 16, 128)]


def attention_rows(dev: Dict, arch_major: int, usage: Dict) -> (List[Dict], List[Dict]):
    passes, launches = [], []
    for (B, T, P, H, D) in ATTN_SHAPES:
        for pass_ in ("spatial_fwd", "spatial_bwd", "temporal_fwd", "temporal_bwd"):
            temporal, backward = pass_.startswith("temporal"), pass_.endswith("bwd")
            causal = temporal
            c = attention_cost(B, T, P, H, D, temporal, causal, backward)
            kernels = attention_launches(pass_, D, T if temporal else P, "bf16", dev, arch_major)
            tensor_cores = any("mma" in k[0] for k in kernels)
            peak = dev["bf16_dense_TFLOPs"] if tensor_cores else dev["fp32_simt_TFLOPs"]
            t_compute = c["flops"] / (peak * 1e12) * 1e6
            t_memory = c["bytes"] / (dev["hbm_TBps"] * 1e12) * 1e6
            ridge = peak * 1e12 / (dev["hbm_TBps"] * 1e12)
            passes.append(dict(pass_=pass_, B=B, T=T, P=P, H=H, D=D, causal=causal, GFLOP=c["flops"] / 1e9,
                               MB=c["bytes"] / 1e6, intensity=c["intensity"],
                               roof=("tensor-core" if tensor_cores else "fp32 FMA") + f" {peak:g} TFLOP/s",
                               ridge=ridge, binds="compute" if t_compute > t_memory else "memory",
                               bound_us=max(t_compute, t_memory), compute_us=t_compute, memory_us=t_memory))
            for inst, threads, smem in kernels:
                u = usage[inst]
                occ = occupancy(u["registers"], threads, u["static_smem"] + smem, dev)
                row = dict(pass_=pass_, D=D, S=T if temporal else P, instantiation=inst, threads=threads,
                           registers=u["registers"], spill_bytes=u["spill_stores"] + u["spill_loads"],
                           static_smem=u["static_smem"], dynamic_smem=smem, **occ)
                if row not in launches:
                    launches.append(row)
    return passes, launches


# ---- output -----------------------------------------------------------------------------------
def table(rows: List[Dict], cols: List[str]) -> str:
    def cell(v):
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
        return str(v)
    lines = ["| " + " | ".join(c.rstrip("_") for c in cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(cell(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def report(arch: str, workdir: Path) -> Dict:
    dev = DEVICES[arch]
    major = int(arch.split("_")[1]) // 10
    kernels = all_kernels()
    raw, version = compile_and_parse(kernels, arch, workdir)
    usage = attach_usage(kernels, raw)
    inst_rows = []
    for k in kernels:
        u = usage[k.label()]
        inst_rows.append(dict(family=k.family, instantiation=k.label(), dtype=k.dtype, **k.meta, **u))
    align = []
    for kernel in ("bias_silu", "bias_silu_backward", "bias_mse", "bias_normalize_cosine",
                   "bias_normalize_cosine_backward"):
        cols = PROJECTOR if kernel.startswith("bias_silu") else TARGET
        for dtype in ("bf16", "fp16", "fp32"):
            for rows in TOKENS:
                r = alignment_launch(kernel, dtype, rows, cols, dev, usage)
                if r:
                    align.append(r)
    wide = []  # normalize/cosine across widths (the register-resident row)
    for dtype in ("bf16", "fp16", "fp32"):
        for cols in (512, 1024, 1152, 2048, 4096, 8192):
            for kernel in ("bias_normalize_cosine", "bias_normalize_cosine_backward"):
                r = alignment_launch(kernel, dtype, 32768, cols, dev, usage)
                wide.append(r if r else dict(kernel=kernel, dtype=dtype, tokens=32768, cols=cols,
                                             instantiation="refused (row too wide)"))
    passes, launches = attention_rows(dev, major, usage)
    spilling = [r for r in inst_rows if r.get("spill_stores", 0) or r.get("spill_loads", 0)]
    return dict(arch=arch, device=dev, nvcc=version, generated=datetime.datetime.now().isoformat(timespec="seconds"),
                note="Static figures from ptxas and datasheet limits, not measurements; GPU timings pending.",
                instantiations=inst_rows, spilling=[r["instantiation"] for r in spilling],
                alignment_launches=align, normalize_cosine_widths=wide, attention_passes=passes,
                attention_launches=launches)


def markdown(rep: Dict) -> str:
    dev = rep["device"]
    out = [f"# Static kernel report, {rep['arch']} ({dev['name']} limits)", "",
           "**Static figures, not measurements.** Registers, spills, stack and static shared memory come from "
           "ptxas (`-Xptxas -v`, the extension's flags); occupancy is the theoretical one from the datasheet "
           f"limits ({dev['regs_per_sm']} registers/SM, {dev['smem_per_sm'] // 1024} KiB shared memory/SM, "
           f"{dev['smem_per_block'] // 1024} KiB per block, {dev['threads_per_sm']} threads/SM, "
           f"{dev['blocks_per_sm']} blocks/SM, 1 KiB reserved per block); time bounds use {dev['hbm_TBps']} TB/s HBM, "
           f"{dev['bf16_dense_TFLOPs']:g} TFLOP/s dense bf16 tensor cores and {dev['fp32_simt_TFLOPs']:g} TFLOP/s fp32 "
           "FMA. GPU timings: **pending** (no GPU has run these kernels).", "",
           f"Compiler: {rep['nvcc']}. Generated {rep['generated']} by `python -m benchmarks.kernel_report`.", ""]
    out += ["## Spilling instantiations", ""]
    out += ["None." if not rep["spilling"] else ", ".join(f"`{s}`" for s in rep["spilling"]), ""]
    out += ["## Alignment-loss kernels at the paper's shapes (target 2048, projector 2048)", "",
            "Bytes: every input read once and every output written once (benchmarks/bytes_model.py); "
            "`hbm_bound_us` is that traffic at HBM bandwidth, the kernel's roofline bound.", "",
            table(rep["alignment_launches"], ["kernel", "dtype", "tokens", "cols", "instantiation", "threads",
                                              "dynamic_smem", "registers", "spill_bytes", "blocks_per_sm",
                                              "warps_per_sm", "occupancy_pct", "limiter", "MB", "hbm_bound_us"]), "",
            "## normalize/cosine by row width (32k tokens)", "",
            table(rep["normalize_cosine_widths"], ["kernel", "dtype", "cols", "instantiation", "warps_per_row",
                                                   "threads", "dynamic_smem", "registers", "spill_bytes", "blocks_per_sm",
                                                   "occupancy_pct", "limiter", "hbm_bound_us"]), "",
            "## Attention passes: FLOPs, bytes, roofline (bf16, H=16)", "",
            "FLOPs count the matmuls (forward 4 S^2 D, backward 10 S^2 D per sequence; the temporal pass causal). "
            "Bytes are compulsory HBM traffic (operands once). The roof is the one the kernel that runs can reach: "
            "tensor cores for the spatial mma kernels, fp32 FMA for the temporal kernels.", "",
            table(rep["attention_passes"], ["pass_", "B", "T", "P", "D", "GFLOP", "MB", "intensity", "roof", "ridge",
                                            "binds", "bound_us"]), "",
            "## Attention kernels as launched (occupancy)", "",
            table(rep["attention_launches"], ["pass_", "D", "S", "instantiation", "threads", "registers",
                                              "spill_bytes", "static_smem", "dynamic_smem", "blocks_per_sm",
                                              "warps_per_sm", "occupancy_pct", "limiter"]), "",
            "## Every instantiation (ptxas)", "",
            table(rep["instantiations"], ["instantiation", "registers", "spill_stores", "spill_loads", "stack",
                                          "static_smem", "barriers"]), ""]
    return "\n".join(out)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="sm_90,sm_80", help="comma-separated: sm_90, sm_80")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="gfcore_kernel_report_") as tmp:
        for arch in args.arch.split(","):
            rep = report(arch, Path(tmp))
            (args.out / f"kernel_report_{arch.replace('_', '')}.json").write_text(json.dumps(rep, indent=1) + "\n")
            (args.out / f"kernel_report_{arch.replace('_', '')}.md").write_text(markdown(rep))
            print(f"{arch}: {len(rep['instantiations'])} instantiations, spilling: {rep['spilling'] or 'none'}")


if __name__ == "__main__":
    main()
