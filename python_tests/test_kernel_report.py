"""The static kernel report's parsers (benchmarks/kernel_report.py) on canned compiler output:
no nvcc needed. The report itself runs where nvcc is (`python -m benchmarks.kernel_report`)."""
import sys
from pathlib import Path

# Appended, not prepended: `gfcore` must stay the installed package (with its extension).
sys.path.append(str(Path(__file__).resolve().parent.parent))

from benchmarks import kernel_report as kr  # noqa: E402

DQ = "_ZN6gfcore9attention23attention_bwd_dq_kernelIN3c108BFloat16ELi64ELi4ELi2EEEvPKT_S6_"
PTXAS = f"""ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function '{DQ}' for 'sm_90'
ptxas info    : Function properties for {DQ}
    8 bytes stack frame, 4 bytes spill stores, 8 bytes spill loads
ptxas info    : Used 80 registers, used 1 barriers, 8 bytes cumulative stack size, 29184 bytes smem
ptxas info    : Function properties for _Z6helperv
    16 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
"""
SASS = f"""
\tcode for sm_90
\t\tFunction : {DQ}
        /*0000*/                   LDC R1, c[0x0][0x28] ;
        /*0010*/              @!P0 LDG.E.128.CONSTANT R4, desc[UR4][R2.64] ;
        /*0020*/                   LDG.E.U16 R8, desc[UR4][R2.64] ;
        /*0030*/                   HMMA.16816.F32.BF16 R12, R4, R8, R12 ;
        /*0040*/                   FFMA R0, R1, R2, R0 ;
        /*0050*/                   STL [R1], R0 ;
        /*0060*/                   LDS.64 R2, [R3] ;
        /*0070*/                   NOP ;
"""


def test_parse_ptxas_attributes_device_function_stack_to_no_kernel():
    usage = kr.parse_ptxas(PTXAS)
    assert list(usage) == [DQ]
    assert usage[DQ] == dict(stack=8, spill_stores=4, spill_loads=8, registers=80, barriers=1, static_smem=29184)


def test_parse_sass_counts_opcodes_by_width():
    mix = kr.parse_sass(SASS)[DQ]
    assert mix == {"instructions": 7, "LDG.128": 1, "LDG.16": 1, "HMMA": 1, "FFMA": 1, "STL.32": 1, "LDS.64": 1}
    row = kr.mix_row(dict(instantiation="k", sass=mix))
    assert (row["LDG"], row["LDS"], row["HMMA"], row["LDL/STL"]) == ("1x128 1x16", "1x64", 1, 1)


def test_label_of_demangled_kernel():
    label, family, short, args = kr.label_of(
        "void gfcore::attention::attention_bwd_dq_kernel<c10::BFloat16, 64, 4, 2>(c10::BFloat16 const*, int)")
    assert (label, family, short, args) == ("attention_bwd_dq_kernel<bf16, 64, 4, 2>", "attention",
                                            "attention_bwd_dq_kernel", ["bf16", "64", "4", "2"])
    assert kr.label_of("gfcore::alignment::sum_partials_kernel(float const*, float*, long, long)")[0] == \
        "sum_partials_kernel"


def test_every_declared_kernel_is_found():
    names = kr.declared_kernels()
    assert {"attention_bwd_dq_kernel", "normalize_cosine_kernel", "sum_partials_kernel", "rope_qk_kernel"} <= set(names)
