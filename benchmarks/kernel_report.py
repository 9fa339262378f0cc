"""Static performance report of the CUDA kernels (no GPU needed): `python -m benchmarks.kernel_report`.

Compiles the host entry points of csrc/alignment and csrc/attention (the functions the torch
launchers and the harness call) with nvcc for sm_80 and sm_90, so every kernel the dispatch can
reach is instantiated, and finds the kernels by their mangled names in the compiler's output:
a kernel added behind an existing entry point is reported without touching this file. Per
kernel instantiation and architecture:
  * ptxas resource usage (-Xptxas -v): registers, spill stores and loads, stack frame, static
    shared memory, barriers;
  * the SASS instruction mix (cuobjdump -sass): HMMA, FFMA, shared-memory loads and stores
    (LDS/STS, LDSM) and global loads and stores (LDG/STG, LDGSTS) by access width, local
    memory (LDL/STL). These are static counts of instructions in the binary, not executed ones.
Then, for representative shapes (the paper's alignment head: target 2048 / projector 2048,
8k..128k tokens; attention B=2..8, T=16..64, P=256..1024, H=16, D=64/128), the launch that the
host logic (alignment_launch.cuh, attention_launch.cuh) makes: threads, dynamic shared memory,
theoretical occupancy from the datasheet limits, and the roofline: compulsory bytes and FLOPs
per call and the time bound on A100, H100 (3.35 TB/s, 989 TFLOP/s) and H200 (4.8 TB/s).

These are static figures computed from the compiler's output and datasheet numbers, not
measurements. GPU timings are pending (no GPU has run these kernels yet).

Writes benchmarks/results/kernels_static.{md,json} (both architectures in one file).
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
from collections import Counter
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from benchmarks.bytes_model import DEVICES, ROOFLINE_DEVICES, alignment_bytes, attention_cost

ROOT = Path(__file__).resolve().parent.parent
CSRC = Path(os.environ.get("GFCORE_CSRC", ROOT / "csrc"))  # GFCORE_CSRC: report on another copy of csrc/
RESULTS = Path(__file__).resolve().parent / "results"

DTYPES = {"fp32": ("float", 4), "bf16": ("gfcore::bf16", 2), "fp16": ("gfcore::fp16", 2)}
SHORT_TYPES = {"float": "fp32", "c10::BFloat16": "bf16", "c10::Half": "fp16"}  # demangled -> label

# ---- the entry points -------------------------------------------------------------------------
# The host functions of *_launch.cuh / rope.cuh / sum_partials.cuh that the torch launchers call
# (one per op and pass). Taking their addresses instantiates every kernel they can launch on any
# device; the kernels themselves are discovered from ptxas's output. A new op needs a line here.
ALIGNMENT_ENTRIES = ("launch_bias_silu", "launch_bias_silu_backward", "launch_bias_mse",
                     "launch_bias_normalize_cosine", "launch_bias_normalize_cosine_backward")
ATTENTION_ENTRIES = ("spatial_forward", "spatial_backward", "temporal_forward", "temporal_backward")


def source() -> str:
    lines = ['#include "alignment/alignment_launch.cuh"', '#include "alignment/sum_partials.cuh"',
             '#include "attention/attention_launch.cuh"', '#include "attention/rope.cuh"', "",
             "// Every entry point: taking the address instantiates the kernels it launches.",
             "const void* gfcore_report_entries[] = {",
             "    reinterpret_cast<const void*>(&gfcore::alignment::launch_sum_partials),"]
    for dt in ("fp32", "bf16", "fp16"):
        t = DTYPES[dt][0]
        lines += [f"    reinterpret_cast<const void*>(&gfcore::alignment::{e}<{t}>)," for e in ALIGNMENT_ENTRIES]
        lines.append(f"    reinterpret_cast<const void*>(&gfcore::attention::launch_rope_qk<{t}>),")
        if dt != "fp32":  # the attention kernels take bf16 and fp16
            lines += [f"    reinterpret_cast<const void*>(&gfcore::attention::{e}<{t}>)," for e in ATTENTION_ENTRIES]
    lines.append("};")
    return "\n".join(lines) + "\n"


def declared_kernels() -> List[str]:
    """Names of the __global__ functions declared under csrc/ (to flag any no entry point reaches)."""
    pattern = re.compile(r"__global__\s+void\s+(?:__launch_bounds__\((?:[^()]|\([^()]*\))*\)\s*)?(\w+)\s*\(")
    names = set()
    for f in sorted(CSRC.rglob("*.cu*")):
        names.update(pattern.findall(f.read_text()))
    return sorted(names)


# ---- tools ----------------------------------------------------------------------------------------
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


def cuobjdump_path() -> Optional[str]:
    """cuobjdump from $CUOBJDUMP, the PATH, next to nvcc, or the copy in triton's wheel (torch's
    CUDA builds install triton; some toolkits ship nvcc without cuobjdump)."""
    cands = [os.environ.get("CUOBJDUMP"), shutil.which("cuobjdump"), str(Path(nvcc_path()).parent / "cuobjdump")]
    spec = importlib.util.find_spec("triton")
    if spec is not None and spec.submodule_search_locations:
        cands.append(str(Path(list(spec.submodule_search_locations)[0]) / "backends/nvidia/bin/cuobjdump"))
    return next((c for c in cands if c and Path(c).exists()), None)


# The extension's device flags (setup.py / build.ninja), minus -lineinfo.
NVCC_FLAGS = ["-O3", "-std=c++20", "--use_fast_math", "--expt-relaxed-constexpr", "-D__CUDA_NO_HALF_OPERATORS__",
              "-D__CUDA_NO_HALF_CONVERSIONS__", "-D__CUDA_NO_BFLOAT16_CONVERSIONS__",
              "-D__CUDA_NO_HALF2_OPERATORS__", "-DGFCORE_WITH_CUDA"]


# ---- compile, ptxas -v, SASS ----------------------------------------------------------------------
def compile_cubin(arch: str, workdir: Path) -> Tuple[Path, str, str]:
    """(cubin, ptxas -v text, nvcc version) of the entry-point translation unit."""
    src = workdir / "kernel_report.cu"
    src.write_text(source())
    cubin = workdir / f"kernels_{arch}.cubin"
    cmd = [nvcc_path(), "-cubin", f"-arch={arch}", "-Xptxas", "-v", *NVCC_FLAGS, f"-I{CSRC}",
           f"-I{torch_include()}", str(src), "-o", str(cubin)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr)
        raise SystemExit(f"nvcc failed ({arch})")
    version = subprocess.run([nvcc_path(), "--version"], capture_output=True, text=True).stdout.strip().splitlines()[-1]
    return cubin, proc.stderr + proc.stdout, version


def parse_ptxas(text: str) -> Dict[str, Dict]:
    """mangled name -> {registers, spill_stores, spill_loads, stack, static_smem, barriers}."""
    res: Dict[str, Dict] = {}
    current = None
    for line in text.splitlines():
        m = re.search(r"Compiling entry function '(\S+)'", line)
        if m:
            current = m.group(1)
            res.setdefault(current, {})
            continue
        m = re.search(r"Function properties for (\S+)", line)
        if m:
            current = m.group(1) if m.group(1) in res else None  # None: a device function's, not a kernel's
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


# Opcodes counted in the mix; memory ones split by access width (bits; the default is 32).
MIX_OPS = ("HMMA", "FFMA", "FMUL", "FADD", "MUFU", "LDS", "STS", "LDSM", "LDG", "STG", "LDGSTS", "LDL", "STL",
           "SHFL", "BAR", "ATOM", "RED")
WIDTH_OPS = ("LDS", "STS", "LDG", "STG", "LDGSTS", "LDL", "STL")
WIDTHS = {"U8": 8, "S8": 8, "U16": 16, "S16": 16, "64": 64, "128": 128}
SASS_LINE = re.compile(r"/\*[0-9a-f]+\*/\s+(?:@!?U?P[T0-9]+\s+)?([A-Z][A-Z0-9_]*(?:\.[A-Z0-9_]+)*)")


def op_key(opcode: str) -> Optional[str]:
    """'LDG.E.128.CONSTANT' -> 'LDG.128', 'HMMA.16816.F32.BF16' -> 'HMMA', uncounted -> None."""
    parts = opcode.split(".")
    base = "ATOM" if parts[0] in ("ATOM", "ATOMG", "ATOMS") else parts[0]
    if base not in MIX_OPS:
        return None
    if base in WIDTH_OPS:
        width = next((WIDTHS[p] for p in parts[1:] if p in WIDTHS), 32)
        return f"{base}.{width}"
    return base


def parse_sass(text: str) -> Dict[str, Dict[str, int]]:
    """mangled name -> Counter of op_key, plus 'instructions' (all SASS instructions but NOPs)."""
    res: Dict[str, Counter] = {}
    current = None
    for line in text.splitlines():
        m = re.match(r"\s*Function : (\S+)", line)
        if m:
            current = res.setdefault(m.group(1), Counter())
            continue
        m = SASS_LINE.search(line) if current is not None else None
        if not m or m.group(1) == "NOP":
            continue
        current["instructions"] += 1
        key = op_key(m.group(1))
        if key:
            current[key] += 1
    return {k: dict(v) for k, v in res.items()}


def sass_mix(cubin: Path) -> Optional[Dict[str, Dict[str, int]]]:
    tool = cuobjdump_path()
    if tool is None:
        return None
    proc = subprocess.run([tool, "-sass", str(cubin)], capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr)
        raise SystemExit("cuobjdump -sass failed")
    return parse_sass(proc.stdout)


def demangle(names: List[str]) -> Dict[str, str]:
    proc = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True, check=True)
    return dict(zip(names, proc.stdout.splitlines()))


def split_template(demangled: str) -> Tuple[str, List[str]]:
    """'void gfcore::attention::k<c10::Half, 64, 4, 2>(...)' -> ('gfcore::attention::k', ['c10::Half', ...])."""
    name = re.sub(r"^void ", "", demangled)
    depth, cut = 0, len(name)
    for i, ch in enumerate(name):  # the argument list starts at the first '(' outside <>
        depth += {"<": 1, ">": -1}.get(ch, 0)
        if ch == "(" and depth == 0:
            cut = i
            break
    name = name[:cut]
    if "<" not in name:
        return name, []
    base, args = name.split("<", 1)
    return base, [a.strip() for a in args.rstrip(">").strip().split(",")]


def label_of(demangled: str) -> Tuple[str, str, str, List[str]]:
    """(label, family, short name, template args as labels): 'attention_bwd_dq_kernel<bf16, 64, 4, 2>'."""
    qualified, args = split_template(demangled)
    parts = qualified.split("::")
    family = parts[1] if len(parts) > 2 and parts[0] == "gfcore" else parts[0]
    short = parts[-1]
    args = [SHORT_TYPES.get(a, a) for a in args]
    return (f"{short}<{', '.join(args)}>" if args else short), family, short, args


def kernels_of(arch: str, workdir: Path) -> Tuple[List[Dict], str, List[str]]:
    """Every kernel instantiation in the compiled entry points (label, family, ptxas usage, SASS mix),
    the nvcc version and ptxas's warnings (the CI build makes them errors, GFCORE_FAIL_ON_SPILLS)."""
    cubin, ptxas_text, version = compile_cubin(arch, workdir)
    warnings = [line.strip() for line in ptxas_text.splitlines() if "ptxas warning" in line]
    usage = parse_ptxas(ptxas_text)
    if not usage:
        raise SystemExit(f"no kernels in ptxas's output ({arch})")
    mix = sass_mix(cubin)
    rows = []
    for mangled, dem in demangle(sorted(usage)).items():
        label, family, short, args = label_of(dem)
        row = dict(instantiation=label, family=family, kernel=short, template_args=args, mangled=mangled,
                   **usage[mangled])
        if mix is not None:
            if mangled not in mix:
                raise SystemExit(f"cuobjdump has no SASS for {mangled}")
            row["sass"] = mix[mangled]
        rows.append(row)
    rows.sort(key=lambda r: (r["family"], r["kernel"], r["instantiation"]))
    return rows, version, warnings


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
# A model of the host logic's choices (alignment_launch.cuh, attention_launch.cuh): keep in step.
def compiled(usage: Dict[str, Dict], inst: str) -> Dict:
    """ptxas usage of a modelled launch's kernel; a missing one means the model is out of step."""
    if inst not in usage:
        raise SystemExit(f"the launch model names {inst}, which the entry points do not instantiate: "
                         "update attention_launches/alignment_launch in benchmarks/kernel_report.py")
    return usage[inst]


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
    u = compiled(usage, inst)
    occ = occupancy(u["registers"], threads, u["static_smem"] + smem, dev)
    extra = {}
    if kernel.startswith("bias_normalize_cosine"):
        extra = dict(packs_per_thread=ppl, warps_per_row=row_warps)
    if kernel == "bias_normalize_cosine_backward":
        partial_rows = max(1, min(ceil_div(rows, slots), dev["sm_count"] * max(occ["blocks_per_sm"], 1)))
    b = alignment_bytes(kernel, rows, cols, size, partial_rows)
    return dict(kernel=kernel, dtype=dtype, tokens=rows, cols=cols, instantiation=inst, threads=threads,
                dynamic_smem=smem, registers=u["registers"], spill_bytes=u["spill_stores"] + u["spill_loads"],
                **extra, **occ, MB=b["total"] / 1e6)


MMA_BLOCK_M, MMA_PAD = 64, 8


def mma_block_n(D):
    return 32 if D == 128 else 64


def temporal_tc_smem(S, D, backward):
    """Dynamic shared memory of the whole-sequence temporal kernels (TemporalTiles in
    attention_temporal_mma.cuh): 64 / T_PAD sequences per CTA, 16-bit tiles padded by 8."""
    t_pad = 16 if S <= 16 else (32 if S <= 32 else 64)
    seqs = 4 // (t_pad // 16)
    ld_row, ld_t = D + MMA_PAD, t_pad + MMA_PAD
    row, tr_d, tr_t = t_pad * ld_row, D * ld_t, t_pad * ld_t
    if not backward:
        return t_pad, 2 * seqs * (2 * row + tr_d)
    return t_pad, seqs * (2 * (4 * row + tr_d + 2 * tr_t) + 2 * 4 * t_pad)


def attention_launches(pass_: str, D: int, S: int, dtype: str, dev: Dict, arch_major: int) -> List[Dict]:
    """Kernels (instantiation, threads, dynamic smem) of one pass on the device (attention_launch.cuh)."""
    temporal = pass_.startswith("temporal")
    backward = pass_.endswith("bwd")
    r = {32: 0, 64: 1, 128: 2}[D]
    mma = arch_major >= 8
    if temporal and mma and S <= 64:  # temporal_tc_serves: whole sequences per CTA
        t_pad, smem = temporal_tc_smem(S, D, backward)
        if smem <= dev["smem_per_block"]:
            kname = "temporal_bwd_tc_kernel" if backward else "temporal_fwd_tc_kernel"
            return [(f"{kname}<{dtype}, {D}, {t_pad}>", 128, smem)]
    ks = []
    if not backward:
        if mma:
            ks.append((f"attention_fwd_mma_kernel<{dtype}, {D}>", 128, 0))
        elif not temporal:
            w = (8, (4, 2, 2)[r])  # launch_forward_fma<scalar_t, 8, 4, 2, 2>
            ks.append((f"attention_fwd_kernel<{dtype}, {D}, {w[0]}, {w[1]}>", 32 * w[0], 0))
        else:
            ks.append((f"attention_fwd_kernel<{dtype}, {D}, 4, 4>", 128, 0))
        return ks
    ks.append((f"attention_bwd_delta_kernel<{dtype}, {D}>", 256, 0))
    if mma:
        n = mma_block_n(D)
        ld_row, ld_t = D + MMA_PAD, n + MMA_PAD
        dq = 2 * (2 * MMA_BLOCK_M * ld_row + 2 * n * ld_row + D * ld_t)
        dkdv = 2 * (2 * MMA_BLOCK_M * ld_row + 2 * n * ld_row + 2 * D * ld_t) + 2 * 4 * n
        ks.append((f"attention_bwd_dq_mma_kernel<{dtype}, {D}>", 128, dq))
        ks.append((f"attention_bwd_dkdv_mma_kernel<{dtype}, {D}>", 128, dkdv))
    else:
        R = (4, 2, 2)[r]  # launch_backward_fma<scalar_t, 4, 4, 2, 2>
        ks.append((f"attention_bwd_dq_kernel<{dtype}, {D}, 4, {R}>", 128, 0))
        ks.append((f"attention_bwd_dkdv_kernel<{dtype}, {D}, 4, {R}>", 128, 0))
    return ks


ATTN_SHAPES = [  # (B, T, P, H, D)
    (8, 8, 1024, 16, 64), (2, 16, 256, 16, 64), (2, 16, 1024, 16, 128), (8, 16, 1024, 16, 64), (4, 32, 1024, 16, 128),
    (2, 64, 256, 16, 128), (8, 64, 1024, 16, 128)]


def attention_launch_rows(dev: Dict, arch_major: int, usage: Dict) -> List[Dict]:
    """Each attention kernel as launched at the benchmark shapes (bf16), with its occupancy."""
    launches = []
    for (B, T, P, H, D) in ATTN_SHAPES:
        for pass_ in PASSES:
            temporal = pass_.startswith("temporal")
            for inst, threads, smem in attention_launches(pass_, D, T if temporal else P, "bf16", dev, arch_major):
                u = compiled(usage, inst)
                occ = occupancy(u["registers"], threads, u["static_smem"] + smem, dev)
                row = dict(pass_=pass_, D=D, S=T if temporal else P, instantiation=inst, threads=threads,
                           registers=u["registers"], spill_bytes=u["spill_stores"] + u["spill_loads"],
                           static_smem=u["static_smem"], dynamic_smem=smem, **occ)
                if row not in launches:
                    launches.append(row)
    return launches


PASSES = ("spatial_fwd", "spatial_bwd", "temporal_fwd", "temporal_bwd")


def bound_us(flops: float, nbytes: float, peak_tflops: float, dev: Dict) -> float:
    """Roofline time: the slower of the compute and the memory bound."""
    return max(flops / (peak_tflops * 1e12), nbytes / (dev["hbm_TBps"] * 1e12)) * 1e6


def attention_roofline() -> List[Dict]:
    """FLOPs and bytes per call of each pass at the benchmark shapes (bf16), and the time bound on
    each device under the roof of the kernels that run there (tensor cores or fp32 FMA)."""
    rows = []
    for (B, T, P, H, D) in ATTN_SHAPES:
        for pass_ in PASSES:
            temporal, backward = pass_.startswith("temporal"), pass_.endswith("bwd")
            c = attention_cost(B, T, P, H, D, temporal, temporal, backward)  # the temporal pass is causal
            row = dict(pass_=pass_, B=B, T=T, P=P, H=H, D=D, GFLOP=c["flops"] / 1e9, MB=c["bytes"] / 1e6,
                       intensity=c["intensity"])
            for name, dev in ROOFLINE_DEVICES.items():
                major = int(dev["arch"].split("_")[1]) // 10
                kernels = attention_launches(pass_, D, T if temporal else P, "bf16", dev, major)
                tensor_cores = any("mma" in k[0] or "_tc_kernel" in k[0] for k in kernels)
                peak = dev["bf16_dense_TFLOPs"] if tensor_cores else dev["fp32_simt_TFLOPs"]
                memory_bound = c["bytes"] / (dev["hbm_TBps"] * 1e12) > c["flops"] / (peak * 1e12)
                row[f"{name}_roof"] = ("TC" if tensor_cores else "FMA") + ("/mem" if memory_bound else "/compute")
                row[f"{name}_us"] = bound_us(c["flops"], c["bytes"], peak, dev)
            rows.append(row)
    return rows


ALIGNMENT_KERNELS = ("bias_silu", "bias_silu_backward", "bias_mse", "bias_normalize_cosine",
                     "bias_normalize_cosine_backward")


def alignment_roofline() -> List[Dict]:
    """Bytes per call of each memory-bound alignment kernel (partial rows left out, <1 %) and the
    time to move them at each device's HBM bandwidth."""
    rows = []
    for kernel in ALIGNMENT_KERNELS:
        cols = PROJECTOR if kernel.startswith("bias_silu") else TARGET
        for dtype in ("bf16", "fp32"):
            for tokens in TOKENS:
                b = alignment_bytes(kernel, tokens, cols, DTYPES[dtype][1])
                row = dict(kernel=kernel, dtype=dtype, tokens=tokens, cols=cols, MB=b["total"] / 1e6)
                for name, dev in ROOFLINE_DEVICES.items():
                    row[f"{name}_us"] = b["total"] / (dev["hbm_TBps"] * 1e12) * 1e6
                rows.append(row)
    return rows


# ---- output -----------------------------------------------------------------------------------
def table(rows: List[Dict], cols: List[str]) -> str:
    def cell(v):
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
        return str(v)
    lines = ["| " + " | ".join(c.rstrip("_") for c in cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(cell(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def arch_report(arch: str, workdir: Path) -> Dict:
    """Every kernel of one architecture, and the modelled launches with their occupancy."""
    dev = DEVICES[arch]
    major = int(arch.split("_")[1]) // 10
    kernels, version, warnings = kernels_of(arch, workdir)
    usage = {k["instantiation"]: k for k in kernels}
    align = [r for kernel in ALIGNMENT_KERNELS for dtype in ("bf16", "fp16", "fp32") for rows in TOKENS
             if (r := alignment_launch(kernel, dtype, rows, PROJECTOR if kernel.startswith("bias_silu") else TARGET,
                                       dev, usage))]
    wide = []  # normalize/cosine across widths (the register-resident row)
    for dtype in ("bf16", "fp16", "fp32"):
        for cols in (512, 1024, 1152, 2048, 4096, 8192):
            for kernel in ALIGNMENT_KERNELS[3:]:
                r = alignment_launch(kernel, dtype, 32768, cols, dev, usage)
                wide.append(r if r else dict(kernel=kernel, dtype=dtype, tokens=32768, cols=cols,
                                             instantiation="refused (row too wide)"))
    spilling = [k["instantiation"] for k in kernels if k.get("spill_stores", 0) or k.get("spill_loads", 0)]
    return dict(arch=arch, device=dev, nvcc=version, kernels=kernels, spilling=spilling, ptxas_warnings=warnings,
                sass="cuobjdump -sass" if kernels and "sass" in kernels[0] else "unavailable (no cuobjdump)",
                alignment_launches=align, normalize_cosine_widths=wide,
                attention_launches=attention_launch_rows(dev, major, usage))


def report(archs: List[str], workdir: Path) -> Dict:
    per_arch = {arch: arch_report(arch, workdir) for arch in archs}
    reached = {k["kernel"] for rep in per_arch.values() for k in rep["kernels"]}
    return dict(generated=datetime.datetime.now().isoformat(timespec="seconds"),
                note="Static figures from ptxas, cuobjdump and datasheet limits, not measurements; "
                     "GPU timings pending.",
                entry_points=list(ALIGNMENT_ENTRIES) + ["launch_sum_partials", "launch_rope_qk"] + list(ATTENTION_ENTRIES),
                unreached_kernels=[k for k in declared_kernels() if k not in reached],
                archs=per_arch, roofline_devices=ROOFLINE_DEVICES,
                attention_roofline=attention_roofline(), alignment_roofline=alignment_roofline())


# ---- markdown -------------------------------------------------------------------------------------
MIX_COLUMNS = ("HMMA", "FFMA", "LDS", "STS", "LDSM", "LDG", "STG", "LDGSTS", "SHFL", "MUFU", "LDL/STL")


def width_cell(mix: Dict[str, int], op: str) -> str:
    """'LDG' -> '4x128 20x32' (count x access width in bits), '' when absent."""
    items = sorted(((int(k.split(".")[1]), n) for k, n in mix.items() if k.split(".")[0] == op), reverse=True)
    return " ".join(f"{n}x{w}" for w, n in items)


def mix_row(kernel: Dict) -> Dict:
    mix = kernel.get("sass", {})
    row = dict(instantiation=kernel["instantiation"], instructions=mix.get("instructions", ""))
    for col in MIX_COLUMNS:
        if col == "LDL/STL":
            n = sum(v for k, v in mix.items() if k.split(".")[0] in ("LDL", "STL"))
            row[col] = n or ""
        elif col in ("LDS", "STS", "LDG", "STG", "LDGSTS"):
            row[col] = width_cell(mix, col)
        else:
            row[col] = mix.get(col, "")
    return row


def resources_table(per_arch: Dict[str, Dict]) -> str:
    """One row per instantiation, ptxas figures of every architecture side by side."""
    archs = list(per_arch)
    by_arch = {a: {k["instantiation"]: k for k in per_arch[a]["kernels"]} for a in archs}
    names = list(dict.fromkeys(k["instantiation"] for a in archs for k in per_arch[a]["kernels"]))
    rows = []
    for name in names:
        row = dict(instantiation=name)
        for a in archs:
            k = by_arch[a].get(name)
            if k:
                row[f"{a} regs"] = k["registers"]
                row[f"{a} spill st/ld"] = f"{k['spill_stores']}/{k['spill_loads']}"
                row[f"{a} stack"] = k["stack"]
        row["static_smem"] = next(by_arch[a][name]["static_smem"] for a in archs if name in by_arch[a])
        rows.append(row)
    cols = ["instantiation"] + [f"{a} {c}" for a in archs for c in ("regs", "spill st/ld", "stack")] + ["static_smem"]
    return table(rows, cols)


def markdown(rep: Dict) -> str:
    archs = rep["archs"]
    first = next(iter(archs.values()))
    out = ["# Static kernel report", "",
           "**Static figures, not measurements; GPU timings: pending** (no GPU has run these kernels). "
           "Registers, spills, stack and static shared memory come from ptxas (`-Xptxas -v`, the extension's "
           "flags); the instruction mix from `cuobjdump -sass` (static counts in the binary, not executed ones); "
           "occupancy is the theoretical one from the datasheet limits (benchmarks/bytes_model.py), 1 KiB of "
           "shared memory reserved per block. Kernels are discovered from the compiled host entry points ("
           + ", ".join(f"`{e}`" for e in rep["entry_points"]) + ").", "",
           f"Compiler: {first['nvcc']}. Generated {rep['generated']} by `python -m benchmarks.kernel_report`.", ""]
    out += ["## Spills", ""]
    for a, r in archs.items():
        spills = ", ".join(f"`{s}`" for s in r["spilling"]) or "none"
        out.append(f"- {a} ({r['device']['name']}): {len(r['kernels'])} kernel instantiations, spilling: {spills}; "
                   f"ptxas warnings: {len(r['ptxas_warnings'])}.")
    if rep["unreached_kernels"]:
        out.append("- Declared under csrc/ but reached from no entry point (not reported): "
                   + ", ".join(f"`{k}`" for k in rep["unreached_kernels"]) + ".")
    out.append("")
    out += ["## Roofline per call at the benchmark shapes", "",
            "Time bound = max(FLOPs / peak, bytes / HBM bandwidth) on "
            + "; ".join(f"{n}: {d['hbm_TBps']} TB/s, {d['bf16_dense_TFLOPs']:g} TFLOP/s bf16 tensor cores, "
                        f"{d['fp32_simt_TFLOPs']:g} TFLOP/s fp32 FMA" for n, d in rep["roofline_devices"].items())
            + ". The roof is the one the kernels that run there can reach (TC: tensor cores, FMA: fp32 CUDA "
            "cores) and which bound binds (mem / compute).", "",
            "### Attention passes (bf16, H=16; the temporal pass causal)", "",
            "FLOPs count the matmuls (forward 4 S^2 D, backward 10 S^2 D per sequence); bytes are the "
            "compulsory HBM traffic (forward: q, k, v, O, LSE; backward: q, k, v, O, dO, LSE, dq, dk, dv).", "",
            table(rep["attention_roofline"], ["pass_", "B", "T", "P", "D", "GFLOP", "MB", "intensity"]
                  + [f"{n}_{c}" for n in rep["roofline_devices"] for c in ("roof", "us")]), "",
            "### Alignment-loss kernels (memory-bound; target 2048, projector 2048)", "",
            "Bytes: every input read once and every output written once (benchmarks/bytes_model.py).", "",
            table(rep["alignment_roofline"], ["kernel", "dtype", "tokens", "cols", "MB"]
                  + [f"{n}_us" for n in rep["roofline_devices"]]), ""]
    out += ["## Every kernel instantiation: registers, spills, stack (ptxas)", "", resources_table(archs), ""]
    for a, r in archs.items():
        out += [f"## SASS instruction mix, {a}", "",
                "Counts of static instructions; LDS/STS/LDG/STG/LDGSTS as count x access width in bits "
                "(LDG.E.128 is `1x128`); LDL/STL are local-memory accesses (spills or local arrays).", ""]
        out += [table([mix_row(k) for k in r["kernels"]], ["instantiation", "instructions", *MIX_COLUMNS])
                if r["sass"] == "cuobjdump -sass" else f"No SASS: {r['sass']}.", ""]
    for a, r in archs.items():
        dev = r["device"]
        out += [f"## Launches at the benchmark shapes, {a} ({dev['name']} limits)", "",
                f"Limits: {dev['regs_per_sm']} registers/SM, {dev['smem_per_sm'] // 1024} KiB shared memory/SM, "
                f"{dev['smem_per_block'] // 1024} KiB per block, {dev['threads_per_sm']} threads/SM, "
                f"{dev['blocks_per_sm']} blocks/SM.", "",
                "### Attention kernels (bf16)", "",
                table(r["attention_launches"], ["pass_", "D", "S", "instantiation", "threads", "registers",
                                                "spill_bytes", "static_smem", "dynamic_smem", "blocks_per_sm",
                                                "warps_per_sm", "occupancy_pct", "limiter"]), "",
                "### Alignment-loss kernels", "",
                table(r["alignment_launches"], ["kernel", "dtype", "tokens", "cols", "instantiation", "threads",
                                                "dynamic_smem", "registers", "spill_bytes", "blocks_per_sm",
                                                "warps_per_sm", "occupancy_pct", "limiter", "MB"]), "",
                "### normalize/cosine by row width (32k tokens)", "",
                table(r["normalize_cosine_widths"], ["kernel", "dtype", "cols", "instantiation", "warps_per_row",
                                                     "threads", "dynamic_smem", "registers", "spill_bytes",
                                                     "blocks_per_sm", "occupancy_pct", "limiter"]), ""]
    return "\n".join(out)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="sm_80,sm_90", help="comma-separated: sm_80, sm_90")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="gfcore_kernel_report_") as tmp:
        rep = report(args.arch.split(","), Path(tmp))
    (args.out / "kernels_static.json").write_text(json.dumps(rep, indent=1) + "\n")
    (args.out / "kernels_static.md").write_text(markdown(rep))
    for arch, r in rep["archs"].items():
        print(f"{arch}: {len(r['kernels'])} kernel instantiations, spilling: {r['spilling'] or 'none'}, "
              f"ptxas warnings: {r['ptxas_warnings'] or 'none'}")
    if rep["unreached_kernels"]:
        print(f"declared but reached from no entry point: {rep['unreached_kernels']}")


if __name__ == "__main__":
    main()
