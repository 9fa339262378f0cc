// Tensor-core backward of the factorized attention (sm80+), two kernels that recompute the
// probabilities from the forward's log-sum-exp (P = exp(scale q k^T - lse)) and the
// delta = rowsum(dO * O) of attention_bwd_delta_kernel:
//   dQ kernel:    a block owns 64 query rows and streams the keys:
//                 S = Q K^T, dP = dO V^T, dS = P (dP - delta), dQ += dS K;
//   dK/dV kernel: a block owns 64 key rows and streams the queries:
//                 S^T = K Q^T, dP^T = V dO^T, dV += P^T dO, dK += dS^T Q.
// Two kernels instead of one with atomics: no fp32 scratch for dQ, and deterministic sums.
// Each product uses the fragment helpers of attention_mma.cuh; an operand read along its
// rows is staged row-major, one read along the streamed axis is staged transposed.
// The harness (cpp_tests/kernels) runs both kernels from this source on the CPU.
#pragma once

#include "attention/attention_mma.cuh"

namespace gfcore {
namespace attention {

constexpr float kLog2e = 1.4426950408889634f;

// Rows and leading dimensions of the 16-bit tiles each backward kernel stages.
template <int D>
struct MmaBwdTiles {
  static constexpr int kOwn = kMmaBlockM;           // rows a block owns (queries or keys)
  static constexpr int kStream = mma_block_n<D>();  // rows streamed per step
  static constexpr int kLdRow = D + kMmaPad;        // row-major tiles: [rows][kLdRow]
  static constexpr int kLdT = kStream + kMmaPad;    // transposed tiles: [D][kLdT]
  // dQ: q_s, do_s (own rows), k_s, v_s (streamed), kt_s (streamed keys, transposed).
  static constexpr size_t kDqBytes =
      2 * (2 * kOwn * kLdRow + 2 * kStream * kLdRow + D * kLdT);
  // dK/dV: k_s, v_s (own rows), q_s, do_s (streamed), qt_s, dot_s (transposed), lse, delta.
  static constexpr size_t kDkdvBytes =
      2 * (2 * kOwn * kLdRow + 2 * kStream * kLdRow + 2 * D * kLdT) + 2 * sizeof(float) * kStream;
};

// RoPE^T in registers on accumulator tiles of head dim D: channel d = 8 dt + 2t + e % 2 of row
// pos[e / 2]; its rotate-half partner d +- D/2 is tile dt +- D/16 of the same thread. Rows past
// the sequence end are left as they are (they are not written).
template <int D>
__device__ inline void unrotate_acc(float (&acc)[D / 8][4], const int (&pos)[2], int t,
                                    const Problem& pb) {
  if (pb.rope_cos == nullptr) return;
  constexpr int kHalfTiles = D / 16;
  float rotated[D / 8][4];
#pragma unroll
  for (int dt = 0; dt < D / 8; ++dt)
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int p = pos[e / 2];
      if (p >= pb.seq_len) {
        rotated[dt][e] = acc[dt][e];
        continue;
      }
      const int d = dt * 8 + 2 * t + (e & 1);
      const int64_t base = static_cast<int64_t>(p) * D;
      rotated[dt][e] = dt < kHalfTiles
                           ? acc[dt][e] * pb.rope_cos[base + d] +
                                 acc[dt + kHalfTiles][e] * pb.rope_sin[base + d + D / 2]
                           : acc[dt][e] * pb.rope_cos[base + d] -
                                 acc[dt - kHalfTiles][e] * pb.rope_sin[base + d - D / 2];
    }
#pragma unroll
  for (int dt = 0; dt < D / 8; ++dt)
#pragma unroll
    for (int e = 0; e < 4; ++e) acc[dt][e] = rotated[dt][e];
}

// Rows pos[0], pos[1] of accumulator tiles (times `scale`) into a [S, D] slice with row stride
// seq_stride; rows past the sequence end are skipped.
template <typename scalar_t, int D>
__device__ inline void store_acc_rows(scalar_t* base, int64_t seq_stride, const float (&acc)[D / 8][4],
                                      const int (&pos)[2], int t, float scale, int S) {
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const int i = pos[half];
    if (i >= S) continue;
#pragma unroll
    for (int dt = 0; dt < D / 8; ++dt) {
      const int d = dt * 8 + 2 * t;
      base[i * seq_stride + d] = static_cast<scalar_t>(acc[dt][2 * half] * scale);
      base[i * seq_stride + d + 1] = static_cast<scalar_t>(acc[dt][2 * half + 1] * scale);
    }
  }
}

// ---- dQ: grid (sequences, ceil(S / 64)), kMmaWarps warps, MmaBwdTiles<D>::kDqBytes smem ----
template <typename scalar_t, int D>
__global__ void __launch_bounds__(kMmaWarps * kWarpSize)
attention_bwd_dq_mma_kernel(const scalar_t* __restrict__ q, const scalar_t* __restrict__ k,
                            const scalar_t* __restrict__ v, const scalar_t* __restrict__ grad_out,
                            const float* __restrict__ lse, const float* __restrict__ delta,
                            scalar_t* __restrict__ grad_q, Layout lq, Layout lk, Layout lv,
                            Layout lg, Layout ll, Layout lo, Problem pb) {
  using Tiles = MmaBwdTiles<D>;
  constexpr int kOwn = Tiles::kOwn, kStream = Tiles::kStream;
  constexpr int kLdRow = Tiles::kLdRow, kLdT = Tiles::kLdT;
  GFCORE_DYNAMIC_SHARED(uint16_t, smem_dq);
  uint16_t* q_s = smem_dq;                    // [kOwn][kLdRow] rotated queries
  uint16_t* do_s = q_s + kOwn * kLdRow;       // [kOwn][kLdRow]
  uint16_t* k_s = do_s + kOwn * kLdRow;       // [kStream][kLdRow] rotated keys
  uint16_t* v_s = k_s + kStream * kLdRow;     // [kStream][kLdRow]
  uint16_t* kt_s = v_s + kStream * kLdRow;    // [D][kLdT] the rotated keys, transposed

  const int warp = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize;
  const int g = lane / 4, t = lane % 4;
  const int S = pb.seq_len;
  const int m0 = blockIdx.y * kOwn;
  const Sequence seq = sequence_of_block(pb);
  const auto in = backward_sequence(q, k, v, grad_out, lse, delta, lq, lk, lv, lg, ll, seq);

  stage_rows<scalar_t, D, kOwn>(q_s, kLdRow, nullptr, 0, in.q, lq.seq, m0, true, pb);
  stage_rows<scalar_t, D, kOwn>(do_s, kLdRow, nullptr, 0, in.grad_out, lg.seq, m0, false, pb);

  const int row0 = warp * 16 + g;
  const int rows[2] = {m0 + row0, m0 + row0 + 8};
  float row_lse2[2], row_delta[2];  // lse in base 2, to go with exp2
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const bool live = rows[half] < S;
    row_lse2[half] = live ? in.lse[rows[half] * ll.seq] * kLog2e : 0.f;
    row_delta[half] = live ? in.delta[rows[half] * ll.seq] : 0.f;
  }
  const float scale_log2 = pb.scale * kLog2e;
  float dq_acc[D / 8][4];
#pragma unroll
  for (int dt = 0; dt < D / 8; ++dt)
#pragma unroll
    for (int e = 0; e < 4; ++e) dq_acc[dt][e] = 0.f;

  const int n_end = pb.causal ? min(S, m0 + kOwn) : S;
  for (int n0 = 0; n0 < n_end; n0 += kStream) {
    __syncthreads();  // the previous key tile is consumed (q_s, do_s written, the first time)
    stage_rows<scalar_t, D, kStream>(k_s, kLdRow, kt_s, kLdT, in.k, lk.seq, n0, true, pb);
    stage_rows<scalar_t, D, kStream>(v_s, kLdRow, nullptr, 0, in.v, lv.seq, n0, false, pb);
    __syncthreads();

    float s[kStream / 8][4], dp[kStream / 8][4];
#pragma unroll
    for (int nt = 0; nt < kStream / 8; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) s[nt][e] = dp[nt][e] = 0.f;
    mma_rows_by_rows<scalar_t, D, kStream>(s, q_s, k_s, kLdRow, row0, g, t);    // S = Q K^T
    mma_rows_by_rows<scalar_t, D, kStream>(dp, do_s, v_s, kLdRow, row0, g, t);  // dP = dO V^T
    // dS = P (dP - delta), kept in s; element e is row rows[e / 2], key n0 + 8 nt + 2t + e % 2.
#pragma unroll
    for (int nt = 0; nt < kStream / 8; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int i = rows[e / 2], j = n0 + nt * 8 + 2 * t + (e & 1);
        const bool visible = i < S && j < S && (!pb.causal || j <= i);
        const float p = visible ? exp2f(s[nt][e] * scale_log2 - row_lse2[e / 2]) : 0.f;
        s[nt][e] = p * (dp[nt][e] - row_delta[e / 2]);
      }
    mma_acc_by_transposed<scalar_t, D, kStream>(dq_acc, s, kt_s, kLdT, g, t);  // dQ += dS K
  }

  unrotate_acc<D>(dq_acc, rows, t, pb);
  store_acc_rows<scalar_t, D>(grad_q + sequence_offset(lo, seq), lo.seq, dq_acc, rows, t, pb.scale, S);
}

// ---- dK/dV: grid (sequences, ceil(S / 64)), kMmaWarps warps, kDkdvBytes smem ---------------
template <typename scalar_t, int D>
__global__ void __launch_bounds__(kMmaWarps * kWarpSize)
attention_bwd_dkdv_mma_kernel(const scalar_t* __restrict__ q, const scalar_t* __restrict__ k,
                              const scalar_t* __restrict__ v, const scalar_t* __restrict__ grad_out,
                              const float* __restrict__ lse, const float* __restrict__ delta,
                              scalar_t* __restrict__ grad_k, scalar_t* __restrict__ grad_v,
                              Layout lq, Layout lk, Layout lv, Layout lg, Layout ll, Layout lo,
                              Problem pb) {
  using Tiles = MmaBwdTiles<D>;
  constexpr int kOwn = Tiles::kOwn, kStream = Tiles::kStream;
  constexpr int kLdRow = Tiles::kLdRow, kLdT = Tiles::kLdT;
  GFCORE_DYNAMIC_SHARED(uint16_t, smem_dkdv);
  uint16_t* k_s = smem_dkdv;                  // [kOwn][kLdRow] rotated keys
  uint16_t* v_s = k_s + kOwn * kLdRow;        // [kOwn][kLdRow]
  uint16_t* q_s = v_s + kOwn * kLdRow;        // [kStream][kLdRow] rotated queries
  uint16_t* do_s = q_s + kStream * kLdRow;    // [kStream][kLdRow]
  uint16_t* qt_s = do_s + kStream * kLdRow;   // [D][kLdT] the rotated queries, transposed
  uint16_t* dot_s = qt_s + D * kLdT;          // [D][kLdT] dO, transposed
  float* lse_s = reinterpret_cast<float*>(dot_s + D * kLdT);  // [kStream], base 2
  float* delta_s = lse_s + kStream;                            // [kStream]

  const int warp = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize;
  const int g = lane / 4, t = lane % 4;
  const int S = pb.seq_len;
  const int n0 = blockIdx.y * kOwn;
  const Sequence seq = sequence_of_block(pb);
  const auto in = backward_sequence(q, k, v, grad_out, lse, delta, lq, lk, lv, lg, ll, seq);

  stage_rows<scalar_t, D, kOwn>(k_s, kLdRow, nullptr, 0, in.k, lk.seq, n0, true, pb);
  stage_rows<scalar_t, D, kOwn>(v_s, kLdRow, nullptr, 0, in.v, lv.seq, n0, false, pb);

  const int row0 = warp * 16 + g;
  const int keys[2] = {n0 + row0, n0 + row0 + 8};
  const float scale_log2 = pb.scale * kLog2e;
  float dk_acc[D / 8][4], dv_acc[D / 8][4];
#pragma unroll
  for (int dt = 0; dt < D / 8; ++dt)
#pragma unroll
    for (int e = 0; e < 4; ++e) dk_acc[dt][e] = dv_acc[dt][e] = 0.f;

  // With causal masking, queries before this block's first key see none of its keys.
  const int i_begin = pb.causal ? (n0 / kStream) * kStream : 0;
  for (int m0 = i_begin; m0 < S; m0 += kStream) {
    __syncthreads();  // the previous query tile is consumed (k_s, v_s written, the first time)
    stage_rows<scalar_t, D, kStream>(q_s, kLdRow, qt_s, kLdT, in.q, lq.seq, m0, true, pb);
    stage_rows<scalar_t, D, kStream>(do_s, kLdRow, dot_s, kLdT, in.grad_out, lg.seq, m0, false, pb);
    for (int r = threadIdx.x; r < kStream; r += blockDim.x) {
      const int i = m0 + r;
      lse_s[r] = i < S ? in.lse[i * ll.seq] * kLog2e : 0.f;
      delta_s[r] = i < S ? in.delta[i * ll.seq] : 0.f;
    }
    __syncthreads();

    // S^T and dP^T: rows are this warp's keys, n-tile mt covers queries m0 + 8 mt .. + 7.
    float st[kStream / 8][4], dpt[kStream / 8][4];
#pragma unroll
    for (int mt = 0; mt < kStream / 8; ++mt)
#pragma unroll
      for (int e = 0; e < 4; ++e) st[mt][e] = dpt[mt][e] = 0.f;
    mma_rows_by_rows<scalar_t, D, kStream>(st, k_s, q_s, kLdRow, row0, g, t);    // S^T = K Q^T
    mma_rows_by_rows<scalar_t, D, kStream>(dpt, v_s, do_s, kLdRow, row0, g, t);  // dP^T = V dO^T
    // P^T into st, dS^T into dpt; element e is key keys[e / 2], query m0 + 8 mt + 2t + e % 2.
#pragma unroll
    for (int mt = 0; mt < kStream / 8; ++mt)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int r = mt * 8 + 2 * t + (e & 1);
        const int i = m0 + r, j = keys[e / 2];
        const bool visible = i < S && j < S && (!pb.causal || j <= i);
        const float p = visible ? exp2f(st[mt][e] * scale_log2 - lse_s[r]) : 0.f;
        st[mt][e] = p;
        dpt[mt][e] = p * (dpt[mt][e] - delta_s[r]);
      }
    mma_acc_by_transposed<scalar_t, D, kStream>(dv_acc, st, dot_s, kLdT, g, t);   // dV += P^T dO
    mma_acc_by_transposed<scalar_t, D, kStream>(dk_acc, dpt, qt_s, kLdT, g, t);  // dK += dS^T Q
  }

  store_acc_rows<scalar_t, D>(grad_v + sequence_offset(lo, seq), lo.seq, dv_acc, keys, t, 1.f, S);
  unrotate_acc<D>(dk_acc, keys, t, pb);
  store_acc_rows<scalar_t, D>(grad_k + sequence_offset(lo, seq), lo.seq, dk_acc, keys, t, pb.scale, S);
}

}  // namespace attention
}  // namespace gfcore
