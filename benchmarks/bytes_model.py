"""Bytes each memory-bound kernel must move, and FLOPs of the attention passes.

One model shared by the static report (benchmarks/kernel_report.py) and the timed benchmarks
(bench_alignment_loss.py, bench_attention.py): the bytes a kernel cannot avoid moving between
HBM and the SM (every input read once, every output written once), so that achieved GB/s and
the roofline bound are computed from the same figure. The per-block partial rows of the
column-sum reductions (written by the kernel, read back by sum_partials) are counted when the
caller knows the launch plan (partial_rows, as the static report does); they are a few MiB at
most and change the totals by under 1% at the paper's shapes, so the timed benchmarks, which
do not see the plan, leave them out (partial_rows=0).
"""
from typing import Dict

# H100 SXM5 (sm_90) and A100 SXM4 80GB (sm_80): datasheet figures used for the static roofline.
DEVICES = {
    "sm_90": dict(name="H100 SXM5", hbm_TBps=3.35, bf16_dense_TFLOPs=989.0, fp32_simt_TFLOPs=67.0, sm_count=132,
                  regs_per_sm=65536, smem_per_sm=228 * 1024, smem_per_block=227 * 1024, threads_per_sm=2048,
                  blocks_per_sm=32, reserved_smem_per_block=1024, max_regs_per_thread=255),
    "sm_80": dict(name="A100 SXM4 80GB", hbm_TBps=2.039, bf16_dense_TFLOPs=312.0, fp32_simt_TFLOPs=19.5,
                  sm_count=108, regs_per_sm=65536, smem_per_sm=164 * 1024, smem_per_block=163 * 1024,
                  threads_per_sm=2048, blocks_per_sm=32, reserved_smem_per_block=1024, max_regs_per_thread=255),
}

# The devices of the static roofline (benchmarks/kernel_report.py): each with the architecture its
# kernels are compiled for. H200: the H100's SM (sm_90, same peaks) with 4.8 TB/s of HBM3e.
ROOFLINE_DEVICES = {
    "A100": dict(DEVICES["sm_80"], arch="sm_80"),
    "H100": dict(DEVICES["sm_90"], arch="sm_90"),
    "H200": dict(DEVICES["sm_90"], arch="sm_90", name="H200 SXM", hbm_TBps=4.8),
}


def alignment_bytes(kernel: str, rows: int, cols: int, elem: int, partial_rows: int = 0) -> Dict[str, int]:
    """Bytes read and written by one alignment-loss kernel on a [rows, cols] operand.

    partial_rows: the number of float32 partial rows of column sums the kernel writes (its
    launch plan's groups or blocks); they are read once more by sum_partials, which writes
    cols floats.
    """
    n = rows * cols * elem
    bias = cols * elem
    partials = partial_rows * cols * 4
    if kernel == "bias_silu":
        read, write = n + bias, n
    elif kernel == "bias_silu_backward":  # grad, x, bias -> grad_x, partial column sums
        read, write = 2 * n + bias + partials, n + partials + cols * 4
    elif kernel == "bias_mse":  # x, bias, y -> diff, partial column sums and squares
        read, write = 2 * n + bias + partials, n + partials + cols * 4
    elif kernel == "bias_normalize_cosine":  # x, bias, y -> zhat, cos, norms (12 B per row)
        read, write = 2 * n + bias, n + 12 * rows
    elif kernel == "bias_normalize_cosine_backward":  # grad_zhat, zhat, y, grad_cos, cos, norms
        read, write = 3 * n + 16 * rows + partials, n + partials + cols * 4
    else:
        raise ValueError(kernel)
    return dict(read=read, write=write, total=read + write)


def attention_cost(B: int, T: int, P: int, H: int, D: int, temporal: bool, causal: bool, backward: bool,
                   elem: int = 2) -> Dict[str, float]:
    """FLOPs (matmuls only, 2 per multiply-add) and compulsory HBM bytes of one attention pass.

    Forward: S = Q K^T and O = P V, 4 S^2 D per sequence; backward: S again, dP = dO V^T,
    dV = P^T dO, dK = dS^T Q, dQ = dS K, 10 S^2 D. Causal halves the score work (S(S+1)/2
    pairs). Bytes: forward reads q, k, v and writes out and lse (fp32); backward reads q, k, v,
    dO, out and lse and writes dq, dk, dv.
    """
    S = T if temporal else P
    sequences = B * H * (P if temporal else T)
    pairs = S * (S + 1) / 2 if causal else S * S
    flops = sequences * pairs * D * (10 if backward else 4)
    rows = B * T * P * H
    tensor = rows * D * elem
    if backward:
        nbytes = 5 * tensor + rows * 4 + 3 * tensor
    else:
        nbytes = 3 * tensor + tensor + rows * 4
    return dict(flops=flops, bytes=nbytes, intensity=flops / nbytes)


# Datasheet HBM bandwidth (TB/s) by device name, for "% of HBM" in the timed benchmarks. Checked
# in order, so the specific names (PCIe, NVL) come before the family's SXM figure.
DATASHEET_HBM_TBPS = (
    ("H200", 4.8),
    ("H100 PCIe", 2.0),
    ("H100 NVL", 3.9),
    ("H100", 3.35),  # SXM5 / "H100 80GB HBM3"
    ("A100-SXM4-40GB", 1.555),
    ("A100-PCIE-40GB", 1.555),
    ("A100", 2.039),  # 80 GB SXM4
)


def datasheet_hbm_tbps(device_name: str):
    """The datasheet HBM bandwidth of a GPU named like torch.cuda.get_device_name(), or None."""
    for key, tbps in DATASHEET_HBM_TBPS:
        if key.lower() in device_name.lower():
            return tbps
    return None
