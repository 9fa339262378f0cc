"""CPU emulation of the CUDA attention kernels' index math and tile loops (csrc/attention).

No GPU is needed: this replays, in numpy (float64), what attention_kernels.cuh does block by
block, warp by warp and tile by tile -- sequence_of_block, the Layout strides read from the
caller's (possibly packed, non-contiguous) views, the causal n_end / i_begin tile bounds, the
n_live cut, the online-softmax rescale, the -inf masking, RoPE on load and RoPE^T on the way
out, the delta kernel's row decomposition -- with raw flat-storage addressing, and compares
the results with gfcore.ops.attention_math (the tested CPU path).

It checks the kernels' *logic*, not the CUDA compiler or hardware (warp shuffles, __expf,
shared-memory races are not modelled). The tensor-core forward (attention_mma.cuh) is replayed
lane by lane, with mma.sync.m16n8k16 assembled from the PTX ISA fragment layouts. Run: PYTHONPATH=. python scripts/emulate_attention_kernels.py
"""
import itertools

import numpy as np
import torch

from gfcore.ops import attention_math

TILE = 32
# (NUM_WARPS, {D: ROWS}) of the four launches (csrc/attention/*.cu).
SPATIAL_FWD = (8, {32: 8, 64: 4, 128: 2})
TEMPORAL_FWD = (4, {32: 4, 64: 4, 128: 4})
BWD = (4, {32: 4, 64: 4, 128: 2})


class Flat:
    """A tensor seen as the kernels see it: a flat storage, an offset and element strides."""

    def __init__(self, t: torch.Tensor):
        self.storage = t.untyped_storage()
        base = torch.tensor([], dtype=t.dtype, device=t.device).set_(self.storage)
        self.flat = base.double().numpy()
        self.offset = t.storage_offset()
        self.stride = t.stride()

    def layout(self, temporal):
        s = self.stride
        return (s[0], s[2], s[1], s[3]) if temporal else (s[0], s[1], s[2], s[3])


def sequence_of_block(x, heads, n_other):
    h = x % heads
    x //= heads
    return x // n_other, x % n_other, h  # b, other, h


def seq_offset(layout, b, other, h):
    return b * layout[0] + other * layout[1] + h * layout[3]


def rot_row(row, pos, cos, sin):
    if cos is None:
        return row
    half = row.shape[0] // 2
    d = np.arange(row.shape[0])
    partner = row[np.where(d < half, d + half, d - half)]
    return row * cos[pos] + np.where(d < half, -partner, partner) * sin[pos]


def unrotate(g, pos, cos, sin):
    if cos is None:
        return g
    half = g.shape[0] // 2
    d = np.arange(g.shape[0])
    transposed = np.where(d < half, np.roll(g * sin[pos], -half), -np.roll(g * sin[pos], half))
    return g * cos[pos] + transposed


def load_row(f: Flat, base, i, lseq, D):
    start = f.offset + base + i * lseq
    return f.flat[start:start + D]


def stage(f, base, lseq, r0, rows, D, S, rot):
    """stage_rows: rows r0 .. r0 + rows - 1, rotated if rot is a (cos, sin) pair, zeros past S."""
    tile = np.zeros((rows, D))
    for r in range(rows):
        if r0 + r < S:
            row = load_row(f, base, r0 + r, lseq, D)
            tile[r] = rot_row(row, r0 + r, *rot) if rot else row
    return tile


def forward(q, k, v, cos, sin, scale, causal, temporal, cfg):
    NW, rows = cfg
    B, T, P, H, D = q.shape
    R = rows[D]
    BM = NW * R
    S = T if temporal else P
    n_other = P if temporal else T
    fq, fk, fv = Flat(q), Flat(k), Flat(v)
    out = torch.full(q.shape, float("nan"), dtype=torch.float64)
    lse = torch.full(q.shape[:4], float("nan"), dtype=torch.float64)
    fo, fl = Flat(out), Flat(lse)
    lq, lk, lv, lo, ll = (f.layout(temporal) for f in (fq, fk, fv, fo, fl))
    on, ln = fo.flat, fl.flat  # views of out / lse storage (written in place)
    grid_y = (S + BM - 1) // BM
    for bx in range(B * n_other * H):
        b, other, h = sequence_of_block(bx, H, n_other)
        qb, kb, vb = seq_offset(lq, b, other, h), seq_offset(lk, b, other, h), seq_offset(lv, b, other, h)
        for by in range(grid_y):
            m0 = by * BM
            q_s = stage(fq, qb, lq[2], m0, BM, D, S, (cos, sin)) * scale
            n_end = min(S, m0 + BM) if causal else S
            row_max = np.full((NW, R), -np.inf)
            row_sum = np.zeros((NW, R))
            acc = np.zeros((NW, R, D))
            for n0 in range(0, n_end, TILE):
                k_s = stage(fk, kb, lk[2], n0, TILE, D, S, (cos, sin))
                v_s = stage(fv, vb, lv[2], n0, TILE, D, S, None)
                j = n0 + np.arange(TILE)  # lane l scores key n0 + l
                for w in range(NW):
                    s = q_s[w * R:(w + 1) * R] @ k_s.T
                    p_s = np.zeros((R, TILE))
                    for r in range(R):
                        i = m0 + w * R + r
                        visible = (j < S) & ((not causal) | (j <= i))
                        score = np.where(visible, s[r], -np.inf)
                        new_max = max(row_max[w, r], score.max())
                        with np.errstate(invalid="ignore"):
                            p = np.where(visible, np.exp(score - new_max), 0.0)
                        rescale = 0.0 if row_max[w, r] == -np.inf else np.exp(row_max[w, r] - new_max)
                        row_sum[w, r] = row_sum[w, r] * rescale + p.sum()
                        row_max[w, r] = new_max
                        p_s[r] = p
                        acc[w, r] *= rescale
                    n_live = min(TILE, n_end - n0)
                    acc[w] += p_s[:, :n_live] @ v_s[:n_live]
            ob, lb = seq_offset(lo, b, other, h), seq_offset(ll, b, other, h)
            for w in range(NW):
                for r in range(R):
                    i = m0 + w * R + r
                    if i >= S:
                        continue
                    start = ob + i * lo[2]
                    on[start:start + D] = acc[w, r] / row_sum[w, r]
                    ln[lb + i * ll[2]] = row_max[w, r] + np.log(row_sum[w, r])
    return torch.from_numpy(on.reshape(out.shape)), torch.from_numpy(ln.reshape(lse.shape))


# ---- The tensor-core forward (attention_mma.cuh), lane by lane -------------------------------
# Registers are numpy arrays over the 32 lanes; a 32-bit register of two 16-bit elements is a
# trailing axis of 2 (values kept in float64: this checks the index math, not the rounding).
MMA_WARPS = 4
LANES = np.arange(32)
GROUP, QUAD = LANES // 4, LANES % 4  # g and t of the fragment layouts


def mma_16816(c, a, b):
    """What mma.sync.m16n8k16.row.col does: c (32, 4) += A (from a: 32 x 4 x 2) B (b: 32 x 2 x 2),
    with A and B assembled from the lanes' registers by the PTX ISA fragment layouts."""
    g, t = GROUP, QUAD
    A = np.zeros((16, 16))
    B = np.zeros((16, 8))
    for reg, (row, col) in enumerate([(g, 2 * t), (g + 8, 2 * t), (g, 2 * t + 8), (g + 8, 2 * t + 8)]):
        A[row, col], A[row, col + 1] = a[:, reg, 0], a[:, reg, 1]
    for reg, row in enumerate([2 * t, 2 * t + 8]):
        B[row, g], B[row + 1, g] = b[:, reg, 0], b[:, reg, 1]
    C = A @ B
    c[:, 0] += C[g, 2 * t]
    c[:, 1] += C[g, 2 * t + 1]
    c[:, 2] += C[g + 8, 2 * t]
    c[:, 3] += C[g + 8, 2 * t + 1]


def pair_at(tile, rows, col):
    """pair_at(row, col) of every lane: (tile[rows, col], tile[rows, col + 1]) -> (32, 2)."""
    return np.stack([tile[rows, col], tile[rows, col + 1]], axis=-1)


def quad_reduce(x, op):
    """Two __shfl_xor_sync steps (1, 2): every lane gets op over its quad."""
    x = op(x, x[LANES ^ 1])
    return op(x, x[LANES ^ 2])


def a_frag(tile, row0, k0):
    """load_a_frag: rows row0 and row0 + 8 (per lane), columns k0 .. k0 + 15 -> (32, 4, 2)."""
    t = QUAD
    return np.stack([pair_at(tile, row0, k0 + 2 * t), pair_at(tile, row0 + 8, k0 + 2 * t),
                     pair_at(tile, row0, k0 + 8 + 2 * t), pair_at(tile, row0 + 8, k0 + 8 + 2 * t)], axis=1)


def b_frag(tile, n, k0):
    """load_b_frag: B[k][n] = tile[n][k0 + k] -> (32, 2, 2)."""
    t = QUAD
    return np.stack([pair_at(tile, n, k0 + 2 * t), pair_at(tile, n, k0 + 8 + 2 * t)], axis=1)


def acc_frag(lo, hi):
    """acc_to_a_frag: two adjacent accumulator n-tiles (32, 4) -> A fragment (32, 4, 2)."""
    return np.stack([lo[:, 0:2], lo[:, 2:4], hi[:, 0:2], hi[:, 2:4]], axis=1)


def mma_rows_by_rows(acc, a, b, row0):
    """mma_rows_by_rows: acc[nt] += A B, A rows row0 / row0 + 8 of a, B column n = row n of b."""
    for kk in range(a.shape[1] // 16):
        fa = a_frag(a, row0, kk * 16)
        for nt in range(acc.shape[0]):
            mma_16816(acc[nt], fa, b_frag(b, nt * 8 + GROUP, kk * 16))


def mma_acc_by_transposed(out, p, bt):
    """mma_acc_by_transposed: out[dt] += P B, P in accumulator tiles, B column d = row d of bt."""
    for kk in range(p.shape[0] // 2):
        fp = acc_frag(p[2 * kk], p[2 * kk + 1])
        for dt in range(out.shape[0]):
            mma_16816(out[dt], fp, b_frag(bt, dt * 8 + GROUP, kk * 16))


def forward_mma(q, k, v, cos, sin, scale, causal, temporal):
    B, T, P, H, D = q.shape
    BM, BN = 16 * MMA_WARPS, (32 if D == 128 else 64)
    S = T if temporal else P
    n_other = P if temporal else T
    fq, fk, fv = Flat(q), Flat(k), Flat(v)
    out = torch.full(q.shape, float("nan"), dtype=torch.float64)
    lse = torch.full(q.shape[:4], float("nan"), dtype=torch.float64)
    fo, fl = Flat(out), Flat(lse)
    lq, lk, lv, lo, ll = (f.layout(temporal) for f in (fq, fk, fv, fo, fl))
    on, ln = fo.flat, fl.flat
    g, t = GROUP, QUAD
    scale_log2 = scale / np.log(2.0)
    for bx in range(B * n_other * H):
        b, other, h = sequence_of_block(bx, H, n_other)
        qb, kb, vb = seq_offset(lq, b, other, h), seq_offset(lk, b, other, h), seq_offset(lv, b, other, h)
        ob, lb = seq_offset(lo, b, other, h), seq_offset(ll, b, other, h)
        for m0 in range(0, S, BM):
            q_s = stage(fq, qb, lq[2], m0, BM, D, S, (cos, sin))
            n_end = min(S, m0 + BM) if causal else S
            for warp in range(MMA_WARPS):
                row0 = warp * 16 + g
                rows = [m0 + row0, m0 + row0 + 8]
                q_frag = [a_frag(q_s, row0, kk * 16) for kk in range(D // 16)]
                row_max = [np.full(32, -np.inf), np.full(32, -np.inf)]
                row_sum = [np.zeros(32), np.zeros(32)]
                o_acc = np.zeros((D // 8, 32, 4))
                for n0 in range(0, n_end, BN):
                    k_s = stage(fk, kb, lk[2], n0, BN, D, S, (cos, sin))
                    vt_s = stage(fv, vb, lv[2], n0, BN, D, S, None).T
                    s = np.zeros((BN // 8, 32, 4))
                    for nt in range(BN // 8):
                        for kk in range(D // 16):
                            mma_16816(s[nt], q_frag[kk], b_frag(k_s, nt * 8 + g, kk * 16))
                    for half in range(2):
                        tile_max = np.full(32, -np.inf)
                        for nt in range(BN // 8):
                            for e in (2 * half, 2 * half + 1):
                                j = n0 + nt * 8 + 2 * t + (e & 1)
                                visible = (j < S) & ((not causal) | (j <= rows[half]))
                                s[nt][:, e] = np.where(visible, s[nt][:, e] * scale_log2, -np.inf)
                                tile_max = np.maximum(tile_max, s[nt][:, e])
                        tile_max = quad_reduce(tile_max, np.maximum)
                        new_max = np.maximum(row_max[half], tile_max)
                        rescale = np.exp2(row_max[half] - new_max)
                        total = np.zeros(32)
                        for nt in range(BN // 8):
                            for e in (2 * half, 2 * half + 1):
                                s[nt][:, e] = np.exp2(s[nt][:, e] - new_max)
                                total += s[nt][:, e]
                        row_sum[half] = row_sum[half] * rescale + total
                        row_max[half] = new_max
                        o_acc[:, :, 2 * half:2 * half + 2] *= rescale[None, :, None]
                    mma_acc_by_transposed(o_acc, s, vt_s)
                for half in range(2):
                    total = quad_reduce(row_sum[half], np.add)
                    for lane in range(32):
                        i = rows[half][lane]
                        if i >= S:
                            continue
                        for dt in range(D // 8):
                            d = dt * 8 + 2 * t[lane]
                            on[ob + i * lo[2] + d] = o_acc[dt][lane, 2 * half] / total[lane]
                            on[ob + i * lo[2] + d + 1] = o_acc[dt][lane, 2 * half + 1] / total[lane]
                        if t[lane] == 0:
                            ln[lb + i * ll[2]] = (row_max[half][lane] + np.log2(total[lane])) * np.log(2.0)
    return torch.from_numpy(on.reshape(out.shape)), torch.from_numpy(ln.reshape(lse.shape))


def unrotate_acc(acc, pos, cos, sin, S):
    """unrotate_acc: RoPE^T on accumulator tiles (D/8, 32, 4), partner tile dt +- D/16."""
    if cos is None:
        return acc
    n_tiles = acc.shape[0]
    half_tiles, D = n_tiles // 2, n_tiles * 8
    out = acc.copy()
    for dt in range(n_tiles):
        for e in range(4):
            p = pos[e // 2]
            live = p < S
            pc = np.where(live, p, 0)
            d = dt * 8 + 2 * QUAD + (e & 1)
            if dt < half_tiles:
                val = acc[dt][:, e] * cos[pc, d] + acc[dt + half_tiles][:, e] * sin[pc, d + D // 2]
            else:
                val = acc[dt][:, e] * cos[pc, d] - acc[dt - half_tiles][:, e] * sin[pc, d - D // 2]
            out[dt][:, e] = np.where(live, val, acc[dt][:, e])
    return out


def store_acc(flat, base, lseq, acc, pos, scale, S):
    for half in range(2):
        for lane in range(32):
            i = pos[half][lane]
            if i >= S:
                continue
            for dt in range(acc.shape[0]):
                d = dt * 8 + 2 * QUAD[lane]
                flat[base + i * lseq + d] = acc[dt][lane, 2 * half] * scale
                flat[base + i * lseq + d + 1] = acc[dt][lane, 2 * half + 1] * scale


def backward_mma(grad_out, q, k, v, out, lse, cos, sin, scale, causal, temporal):
    """attention_bwd_dq_mma_kernel and attention_bwd_dkdv_mma_kernel, lane by lane."""
    B, T, P, H, D = q.shape
    OWN, STREAM = 16 * MMA_WARPS, (32 if D == 128 else 64)
    S = T if temporal else P
    n_other = P if temporal else T
    lse = lse.contiguous()  # as the host checks; delta shares its layout
    fq, fk, fv, fg = Flat(q), Flat(k), Flat(v), Flat(grad_out)
    delta_t = (grad_out * out).sum(-1)  # the delta kernel (checked by backward() above)
    fl, fd = Flat(lse), Flat(delta_t)
    grads = [torch.full(q.shape, float("nan"), dtype=torch.float64) for _ in range(3)]
    fdq, fdk, fdv = (Flat(x) for x in grads)
    lq, lk, lv, lg, ll, lo = (f.layout(temporal) for f in (fq, fk, fv, fg, fl, fdq))
    g, t = GROUP, QUAD
    log2e = 1.0 / np.log(2.0)
    scale_log2 = scale * log2e

    def lse_delta(base, i):
        live = i < S
        idx = fl.offset + base + np.where(live, i, 0) * ll[2]
        return np.where(live, fl.flat[idx] * log2e, 0.0), np.where(live, fd.flat[fd.offset + base + np.where(live, i, 0) * ll[2]], 0.0)

    for bx in range(B * n_other * H):
        b, other, h = sequence_of_block(bx, H, n_other)
        qb, kb, vb, gb = (seq_offset(l, b, other, h) for l in (lq, lk, lv, lg))
        lb, ob = seq_offset(ll, b, other, h), seq_offset(lo, b, other, h)
        for m0 in range(0, S, OWN):  # dQ kernel, block y = m0 / 64
            q_s = stage(fq, qb, lq[2], m0, OWN, D, S, (cos, sin))
            do_s = stage(fg, gb, lg[2], m0, OWN, D, S, None)
            n_end = min(S, m0 + OWN) if causal else S
            for warp in range(MMA_WARPS):
                row0 = warp * 16 + g
                rows = [m0 + row0, m0 + row0 + 8]
                lse2, dlt = zip(*(lse_delta(lb, r) for r in rows))
                dq_acc = np.zeros((D // 8, 32, 4))
                for n0 in range(0, n_end, STREAM):
                    k_s = stage(fk, kb, lk[2], n0, STREAM, D, S, (cos, sin))
                    kt_s = k_s.T
                    v_s = stage(fv, vb, lv[2], n0, STREAM, D, S, None)
                    s = np.zeros((STREAM // 8, 32, 4))
                    dp = np.zeros((STREAM // 8, 32, 4))
                    mma_rows_by_rows(s, q_s, k_s, row0)
                    mma_rows_by_rows(dp, do_s, v_s, row0)
                    for nt in range(STREAM // 8):
                        for e in range(4):
                            i, j = rows[e // 2], n0 + nt * 8 + 2 * t + (e & 1)
                            visible = (i < S) & (j < S) & ((not causal) | (j <= i))
                            p = np.where(visible, np.exp2(s[nt][:, e] * scale_log2 - lse2[e // 2]), 0.0)
                            s[nt][:, e] = p * (dp[nt][:, e] - dlt[e // 2])
                    mma_acc_by_transposed(dq_acc, s, kt_s)
                dq_acc = unrotate_acc(dq_acc, rows, cos, sin, S)
                store_acc(fdq.flat, fdq.offset + ob, lo[2], dq_acc, rows, scale, S)
        for n0 in range(0, S, OWN):  # dK/dV kernel
            k_s = stage(fk, kb, lk[2], n0, OWN, D, S, (cos, sin))
            v_s = stage(fv, vb, lv[2], n0, OWN, D, S, None)
            i_begin = (n0 // STREAM) * STREAM if causal else 0
            for warp in range(MMA_WARPS):
                row0 = warp * 16 + g
                keys = [n0 + row0, n0 + row0 + 8]
                dk_acc = np.zeros((D // 8, 32, 4))
                dv_acc = np.zeros((D // 8, 32, 4))
                for m0 in range(i_begin, S, STREAM):
                    q_s = stage(fq, qb, lq[2], m0, STREAM, D, S, (cos, sin))
                    do_s = stage(fg, gb, lg[2], m0, STREAM, D, S, None)
                    qt_s, dot_s = q_s.T, do_s.T
                    lse_s, delta_s = lse_delta(lb, m0 + np.arange(STREAM))
                    st = np.zeros((STREAM // 8, 32, 4))
                    dpt = np.zeros((STREAM // 8, 32, 4))
                    mma_rows_by_rows(st, k_s, q_s, row0)
                    mma_rows_by_rows(dpt, v_s, do_s, row0)
                    for mt in range(STREAM // 8):
                        for e in range(4):
                            r = mt * 8 + 2 * t + (e & 1)
                            i, j = m0 + r, keys[e // 2]
                            visible = (i < S) & (j < S) & ((not causal) | (j <= i))
                            p = np.where(visible, np.exp2(st[mt][:, e] * scale_log2 - lse_s[r]), 0.0)
                            st[mt][:, e] = p
                            dpt[mt][:, e] = p * (dpt[mt][:, e] - delta_s[r])
                    mma_acc_by_transposed(dv_acc, st, dot_s)
                    mma_acc_by_transposed(dk_acc, dpt, qt_s)
                store_acc(fdv.flat, fdv.offset + ob, lo[2], dv_acc, keys, 1.0, S)
                dk_acc = unrotate_acc(dk_acc, keys, cos, sin, S)
                store_acc(fdk.flat, fdk.offset + ob, lo[2], dk_acc, keys, scale, S)
    return [torch.from_numpy(f.flat.reshape(q.shape)) for f in (fdq, fdk, fdv)]


FUSED_BWD_MAX_SEQ = 64


def backward_temporal_fused(grad_out, q, k, v, out, lse, cos, sin, scale, causal):
    """attention_bwd_fused_kernel (attention_temporal_bwd.cuh): one block per whole sequence."""
    B, T, P, H, D = q.shape
    S, temporal = T, True
    lse = lse.contiguous()
    fq, fk, fv, fg, fout, fl = Flat(q), Flat(k), Flat(v), Flat(grad_out), Flat(out), Flat(lse)
    grads = [torch.full(q.shape, float("nan"), dtype=torch.float64) for _ in range(3)]
    fdq, fdk, fdv = (Flat(x) for x in grads)
    lq, lk, lv, lg, l_out, ll, lo = (f.layout(temporal) for f in (fq, fk, fv, fg, fout, fl, fdq))
    rows = np.arange(S)
    for bx in range(B * P * H):  # grid: one block per sequence
        b, other, h = sequence_of_block(bx, H, P)
        qb, kb, vb, gb = (seq_offset(l, b, other, h) for l in (lq, lk, lv, lg))
        outb, lb, ob = seq_offset(l_out, b, other, h), seq_offset(ll, b, other, h), seq_offset(lo, b, other, h)
        # 1. stage
        q_s = stage(fq, qb, lq[2], 0, S, D, S, (cos, sin)) * scale
        k_s = stage(fk, kb, lk[2], 0, S, D, S, (cos, sin))
        v_s = stage(fv, vb, lv[2], 0, S, D, S, None)
        do_s = stage(fg, gb, lg[2], 0, S, D, S, None)
        delta_s = np.array([do_s[i] @ load_row(fout, outb, i, l_out[2], D) for i in rows])
        lse_s = fl.flat[fl.offset + lb + rows * ll[2]]
        # 2. P and dS for every (i, j)
        p_s = np.zeros((S, S))
        ds_s = np.zeros((S, S))
        for i in rows:
            for j in rows:
                if not causal or j <= i:
                    p = np.exp(q_s[i] @ k_s[j] - lse_s[i])
                    p_s[i, j] = p
                    ds_s[i, j] = p * (do_s[i] @ v_s[j] - delta_s[i])
        # 3. element (r, d) of each gradient
        dv = np.zeros((S, D))
        dk_rot = np.zeros((S, D))
        dq_rot = np.zeros((S, D))
        for r in rows:
            for d in range(D):
                dv[r, d] = sum(p_s[i, r] * do_s[i, d] for i in rows)
                dk_rot[r, d] = sum(ds_s[i, r] * q_s[i, d] for i in rows)
                dq_rot[r, d] = sum(ds_s[r, i] * k_s[i, d] for i in rows) * scale
        # 4. RoPE^T on the way out
        for r in rows:
            start = ob + r * lo[2]
            fdv.flat[fdv.offset + start:fdv.offset + start + D] = dv[r]
            fdq.flat[fdq.offset + start:fdq.offset + start + D] = unrotate(dq_rot[r], r, cos, sin)
            fdk.flat[fdk.offset + start:fdk.offset + start + D] = unrotate(dk_rot[r], r, cos, sin)
    return [torch.from_numpy(f.flat.reshape(q.shape)) for f in (fdq, fdk, fdv)]


def backward(grad_out, q, k, v, out, lse, cos, sin, scale, causal, temporal, cfg):
    NW, rows = cfg
    B, T, P, H, D = q.shape
    R = rows[D]
    BM = NW * R
    S = T if temporal else P
    n_other = P if temporal else T
    fq, fk, fv, fg = Flat(q), Flat(k), Flat(v), Flat(grad_out)
    out_c = out.contiguous().double().numpy().reshape(-1)
    # delta kernel: rows enumerate [B, T, P, H]; out contiguous, grad_out any strides.
    rows_n = B * T * P * H
    delta = np.zeros(rows_n)
    gs = grad_out.stride()
    for row in range(rows_n):
        hh = row % H
        pp = (row // H) % P
        tt = (row // (H * P)) % T
        bb = row // (H * P * T)
        start = fg.offset + bb * gs[0] + tt * gs[1] + pp * gs[2] + hh * gs[3]
        delta[row] = (fg.flat[start:start + D] * out_c[row * D:(row + 1) * D]).sum()
    lse_flat = lse.contiguous().double().numpy().reshape(-1)
    lse_t = torch.zeros(q.shape[:4], dtype=torch.float64)
    ll = Flat(lse_t).layout(temporal)  # lse / delta: contiguous [B, T, P, H]
    grads = [torch.full(q.shape, float("nan"), dtype=torch.float64) for _ in range(3)]
    fdq, fdk, fdv = (Flat(g) for g in grads)
    lo = fdq.layout(temporal)
    lq, lk, lv, lg = (f.layout(temporal) for f in (fq, fk, fv, fg))
    grid_y = (S + BM - 1) // BM
    for bx in range(B * n_other * H):
        b, other, h = sequence_of_block(bx, H, n_other)
        qb, kb, vb, gb = (seq_offset(l, b, other, h) for l in (lq, lk, lv, lg))
        lb = seq_offset(ll, b, other, h)
        ob = seq_offset(lo, b, other, h)
        for by in range(grid_y):
            # ---- dQ: this block's query rows, keys streamed
            m0 = by * BM
            q_s = stage(fq, qb, lq[2], m0, BM, D, S, (cos, sin)) * scale
            do_s = stage(fg, gb, lg[2], m0, BM, D, S, None)
            row_lse = np.zeros(BM)
            row_delta = np.zeros(BM)
            for r in range(BM):
                i = m0 + r
                if i < S:
                    row_lse[r] = lse_flat[lb + i * ll[2]]
                    row_delta[r] = delta[lb + i * ll[2]]
            dq = np.zeros((BM, D))
            n_end = min(S, m0 + BM) if causal else S
            for n0 in range(0, n_end, TILE):
                k_s = stage(fk, kb, lk[2], n0, TILE, D, S, (cos, sin))
                v_s = stage(fv, vb, lv[2], n0, TILE, D, S, None)
                j = n0 + np.arange(TILE)
                s = q_s @ k_s.T
                dp = do_s @ v_s.T
                i = (m0 + np.arange(BM))[:, None]
                visible = (i < S) & (j[None] < S) & ((not causal) | (j[None] <= i))
                p = np.where(visible, np.exp(np.where(visible, s - row_lse[:, None], 0.0)), 0.0)
                ds = p * (dp - row_delta[:, None])
                n_live = min(TILE, n_end - n0)
                dq += ds[:, :n_live] @ k_s[:n_live]
            for r in range(BM):
                i = m0 + r
                if i < S:
                    start = fdq.offset + ob + i * lo[2]
                    fdq.flat[start:start + D] = unrotate(dq[r] * scale, i, cos, sin)
            # ---- dK, dV: this block's key rows, queries streamed
            n0 = by * BM
            k_s = stage(fk, kb, lk[2], n0, BM, D, S, (cos, sin))
            v_s = stage(fv, vb, lv[2], n0, BM, D, S, None)
            dk = np.zeros((BM, D))
            dv = np.zeros((BM, D))
            i_begin = (n0 // TILE) * TILE if causal else 0
            for i0 in range(i_begin, S, TILE):
                q_t = stage(fq, qb, lq[2], i0, TILE, D, S, (cos, sin)) * scale
                do_t = stage(fg, gb, lg[2], i0, TILE, D, S, None)
                lse_tile = np.zeros(TILE)
                delta_tile = np.zeros(TILE)
                for n in range(TILE):
                    i = i0 + n
                    if i < S:
                        lse_tile[n] = lse_flat[lb + i * ll[2]]
                        delta_tile[n] = delta[lb + i * ll[2]]
                i = i0 + np.arange(TILE)
                j = (n0 + np.arange(BM))[:, None]
                s = k_s @ q_t.T
                dp = v_s @ do_t.T
                visible = (i[None] < S) & (j < S) & ((not causal) | (j <= i[None]))
                p = np.where(visible, np.exp(np.where(visible, s - lse_tile[None], 0.0)), 0.0)
                ds = p * (dp - delta_tile[None])
                n_live = min(TILE, S - i0)
                dv += p[:, :n_live] @ do_t[:n_live]
                dk += ds[:, :n_live] @ q_t[:n_live]
            for r in range(BM):
                j = n0 + r
                if j < S:
                    start = fdk.offset + ob + j * lo[2]
                    fdk.flat[start:start + D] = unrotate(dk[r], j, cos, sin)
                    fdv.flat[start:start + D] = dv[r]
    return [torch.from_numpy(f.flat.reshape(q.shape)) for f in (fdq, fdk, fdv)]


def rope_tables(S, D, gen):
    pos = torch.arange(S, dtype=torch.float64)[:, None]
    freq = torch.rand(D // 2, generator=gen, dtype=torch.float64) * 0.7
    ang = torch.cat([pos * freq, pos * freq], dim=1)
    return ang.cos(), ang.sin()


def check(shape, mode, causal, use_rope, packed, gen):
    B, T, P, H, D = shape
    temporal = mode == "temporal"
    S = T if temporal else P
    if packed:  # three views of [B, T, P, 3, H, D] (non-contiguous, offset views)
        qkv = torch.randn(B, T, P, 3, H, D, generator=gen, dtype=torch.float64)
        q, k, v = qkv.unbind(3)
    else:
        q, k, v = (torch.randn(shape, generator=gen, dtype=torch.float64) for _ in range(3))
    grad_packed = torch.randn(B, T, P, 2, H, D, generator=gen, dtype=torch.float64)
    grad_out = grad_packed[:, :, :, 1]  # strided grad_out with a storage offset
    cos, sin = rope_tables(S, D, gen) if use_rope else (None, None)
    scale = 0.37
    ref_out, ref_lse = attention_math.attention_forward(q, k, v, cos, sin, scale, causal, mode)
    ref_grads = attention_math.attention_backward(grad_out, q, k, v, ref_out, ref_lse, cos, sin,
                                                  scale, causal, mode)
    cfg = TEMPORAL_FWD if temporal else SPATIAL_FWD
    np_cos = None if cos is None else cos.numpy()
    np_sin = None if sin is None else sin.numpy()
    out, lse = forward(q, k, v, np_cos, np_sin, scale, causal, temporal, cfg)
    grads = backward(grad_out, q, k, v, out, lse, np_cos, np_sin, scale, causal, temporal, BWD)
    errs = [(out - ref_out).abs().max().item(), (lse - ref_lse).abs().max().item()]
    errs += [(g - r).abs().max().item() for g, r in zip(grads, ref_grads)]
    # The tensor-core kernels serve the spatial pass on sm80+; they take a causal flag too, so
    # every case replays them.
    mma_out, mma_lse = forward_mma(q, k, v, np_cos, np_sin, scale, causal, temporal)
    errs += [(mma_out - ref_out).abs().max().item(), (mma_lse - ref_lse).abs().max().item()]
    mma_grads = backward_mma(grad_out, q, k, v, ref_out, ref_lse, np_cos, np_sin, scale, causal, temporal)
    errs += [(g - r).abs().max().item() for g, r in zip(mma_grads, ref_grads)]
    if temporal and S <= FUSED_BWD_MAX_SEQ:  # the one-kernel temporal backward
        fused_grads = backward_temporal_fused(grad_out, q, k, v, ref_out, ref_lse, np_cos, np_sin, scale, causal)
        errs += [(g - r).abs().max().item() for g, r in zip(fused_grads, ref_grads)]
    ok = all(e < 1e-9 for e in errs)  # NaN (an unwritten element) fails too
    print(f"{'ok  ' if ok else 'FAIL'} {mode:8s} causal={causal!s:5s} rope={use_rope!s:5s} "
          f"packed={packed!s:5s} shape={shape} max|err| out/lse/dq/dk/dv, mma out/lse/dq/dk/dv[, fused temporal dq/dk/dv] = "
          + " ".join(f"{e:.1e}" for e in errs))
    return ok


def main():
    gen = torch.Generator().manual_seed(0)
    cases = []
    # seq lengths around tile and block edges: 1, < 32, 32, 33, block multiples +- 1
    for D, S in [(32, 1), (32, 7), (32, 33), (32, 65), (64, 31), (64, 32), (64, 47), (128, 9),
                 (128, 40), (128, 70)]:
        for mode, causal in [("spatial", False), ("temporal", False), ("temporal", True)]:
            shape = (2, S, 3, 2, D) if mode == "temporal" else (2, 3, S, 2, D)
            cases.append((shape, mode, causal))
    ok = True
    for (shape, mode, causal), (use_rope, packed) in zip(
            cases, itertools.cycle([(True, True), (False, False), (True, False), (False, True)])):
        ok &= check(shape, mode, causal, use_rope, packed, gen)
    print("ALL OK" if ok else "MISMATCHES FOUND")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
