// Device code shared by the factorized attention kernels (spatial and temporal passes).
//
// Both passes are the same computation on different axes of a [B, T, P, H, D] tensor: the
// spatial pass attends over P (one sequence per (b, t, h)), the temporal pass over T (one
// sequence per (b, p, h)). A `Layout` regroups the strides as [B, other, seq, H] so one set of
// kernels serves both, reading the caller's strided views directly (D has unit stride).
//
// The kernels are flash-attention style (online softmax, probabilities recomputed in the
// backward from the saved log-sum-exp) with fp32 CUDA-core FMAs. They serve the temporal pass
// (T <= 64: memory-bound) and GPUs older than sm80; on sm80+ the spatial pass runs on tensor
// cores (attention_mma.cuh, attention_mma_bwd.cuh). Here:
//   * one warp owns ROWS query rows (forward, dQ) or ROWS key rows (dK/dV);
//   * the other side of the product is staged 32 rows at a time in shared memory, lane l
//     computing the dot products of row l of that tile (rows padded to D + 1 floats so the
//     lanes hit different banks);
//   * inputs are converted to fp32 on load, RoPE (rotate-half) is applied on load and its
//     transpose on the way out of the backward, all accumulation is fp32.
#pragma once

#include <cmath>
#include <cstdint>

#include "common/cuda_compat.cuh"

namespace gfcore {
namespace attention {

constexpr int kWarpSize = 32;
constexpr int kTile = 32;  // rows of the streamed operand per step: one per lane
constexpr int kStaticSmemLimit = 48 * 1024;

// Element strides of a [B, T, P, H, D] operand regrouped as [B, other, seq, H]; D is unit-stride.
struct Layout {
  int64_t b, other, seq, h;
};

struct Problem {
  int64_t batch, n_other, heads;
  int seq_len;
  float scale;
  bool causal;              // key j is visible to query i only when j <= i
  const float* rope_cos;    // [seq_len, D] float32 contiguous, or nullptr for no RoPE
  const float* rope_sin;
};

// blockIdx.x enumerates the sequences (b, other, h), h fastest.
struct Sequence {
  int64_t b, other, h;
};

// The sequence of flat index idx (h fastest).
__device__ inline Sequence sequence_at(int64_t idx, const Problem& pb) {
  Sequence s;
  s.h = idx % pb.heads;
  idx /= pb.heads;
  s.other = idx % pb.n_other;
  s.b = idx / pb.n_other;
  return s;
}

__device__ inline Sequence sequence_of_block(const Problem& pb) { return sequence_at(blockIdx.x, pb); }

__device__ inline int64_t sequence_offset(const Layout& l, const Sequence& s) {
  return s.b * l.b + s.other * l.other + s.h * l.h;
}

// The backward inputs moved to the block's sequence (lse and delta share the layout ll).
template <typename scalar_t>
struct BackwardSequence {
  const scalar_t *q, *k, *v, *grad_out;
  const float *lse, *delta;
};

template <typename scalar_t>
__device__ inline BackwardSequence<scalar_t> backward_sequence(
    const scalar_t* q, const scalar_t* k, const scalar_t* v, const scalar_t* grad_out,
    const float* lse, const float* delta, const Layout& lq, const Layout& lk, const Layout& lv,
    const Layout& lg, const Layout& ll, const Sequence& seq) {
  return {q + sequence_offset(lq, seq),        k + sequence_offset(lk, seq),
          v + sequence_offset(lv, seq),        grad_out + sequence_offset(lg, seq),
          lse + sequence_offset(ll, seq),      delta + sequence_offset(ll, seq)};
}

template <typename T>
__device__ inline float to_float(T x) {
  return static_cast<float>(x);
}

__device__ inline float warp_max(float x) {
#pragma unroll
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2)
    x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, offset));
  return x;
}

__device__ inline float warp_sum(float x) {
#pragma unroll
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2)
    x += __shfl_xor_sync(0xffffffffu, x, offset);
  return x;
}

// Channel d of the row at `row` (position `pos` on the attended axis), RoPE-rotated when the
// tables are given: x * cos + rotate_half(x) * sin with rotate_half([x1, x2]) = [-x2, x1].
template <typename scalar_t, int D>
__device__ inline float load_rotated(const scalar_t* row, int d, int pos, const Problem& pb) {
  const float x = to_float(row[d]);
  if (pb.rope_cos == nullptr) return x;
  constexpr int kHalf = D / 2;
  const float partner = to_float(row[d < kHalf ? d + kHalf : d - kHalf]);
  const int64_t t = static_cast<int64_t>(pos) * D + d;
  return x * pb.rope_cos[t] + (d < kHalf ? -partner : partner) * pb.rope_sin[t];
}

// Channel d of the gradient w.r.t. the un-rotated input, given g = gradient w.r.t. the rotated
// one (a row of D floats): cos * g + rotate_half^T(sin * g), rotate_half^T([y1, y2]) = [y2, -y1].
template <int D>
__device__ inline float unrotate_grad(const float* g, int d, int pos, const Problem& pb) {
  if (pb.rope_cos == nullptr) return g[d];
  constexpr int kHalf = D / 2;
  const int64_t base = static_cast<int64_t>(pos) * D;
  const float transposed = d < kHalf ? g[d + kHalf] * pb.rope_sin[base + d + kHalf]
                                     : -g[d - kHalf] * pb.rope_sin[base + d - kHalf];
  return g[d] * pb.rope_cos[base + d] + transposed;
}

// ---- Forward: out = softmax(scale * q k^T) v, lse = log-sum-exp of each score row ----------
// Grid: (sequences, ceil(S / (NUM_WARPS * ROWS))); block: NUM_WARPS warps.
template <typename scalar_t, int D, int NUM_WARPS, int ROWS>
__global__ void __launch_bounds__(NUM_WARPS * kWarpSize)
attention_fwd_kernel(const scalar_t* __restrict__ q, const scalar_t* __restrict__ k,
                     const scalar_t* __restrict__ v, scalar_t* __restrict__ out,
                     float* __restrict__ lse, Layout lq, Layout lk, Layout lv, Layout lo,
                     Layout ll, Problem pb) {
  constexpr int kBlockM = NUM_WARPS * ROWS;
  constexpr int kPerLane = D / kWarpSize;
  static_assert(D % kWarpSize == 0, "head dim must be a multiple of 32");
  static_assert(sizeof(float) * (kBlockM * D + kTile * (D + 1) + kTile * D + kBlockM * kTile) <=
                    kStaticSmemLimit, "forward tile does not fit in static shared memory");
  GFCORE_SHARED(float, q_s, [kBlockM][D]);        // rotated and pre-scaled query rows
  GFCORE_SHARED(float, k_s, [kTile][D + 1]);      // rotated key tile, padded against bank conflicts
  GFCORE_SHARED(float, v_s, [kTile][D]);
  GFCORE_SHARED(float, p_s, [NUM_WARPS][ROWS][kTile]);

  const int tid = threadIdx.x, warp = tid / kWarpSize, lane = tid % kWarpSize;
  const int S = pb.seq_len;
  const int m0 = blockIdx.y * kBlockM;
  const Sequence seq = sequence_of_block(pb);
  const scalar_t* qb = q + sequence_offset(lq, seq);
  const scalar_t* kb = k + sequence_offset(lk, seq);
  const scalar_t* vb = v + sequence_offset(lv, seq);

  for (int idx = tid; idx < kBlockM * D; idx += NUM_WARPS * kWarpSize) {
    const int r = idx / D, d = idx % D, i = m0 + r;
    q_s[r][d] = i < S ? load_rotated<scalar_t, D>(qb + i * lq.seq, d, i, pb) * pb.scale : 0.f;
  }

  float row_max[ROWS], row_sum[ROWS], acc[ROWS][kPerLane];
#pragma unroll
  for (int r = 0; r < ROWS; ++r) {
    row_max[r] = -INFINITY;
    row_sum[r] = 0.f;
#pragma unroll
    for (int c = 0; c < kPerLane; ++c) acc[r][c] = 0.f;
  }

  // With causal masking no row of this block sees keys past its last row.
  const int n_end = pb.causal ? min(S, m0 + kBlockM) : S;
  for (int n0 = 0; n0 < n_end; n0 += kTile) {
    __syncthreads();  // the previous tile is consumed (and q_s is written, the first time)
    for (int idx = tid; idx < kTile * D; idx += NUM_WARPS * kWarpSize) {
      const int n = idx / D, d = idx % D, j = n0 + n;
      k_s[n][d] = j < S ? load_rotated<scalar_t, D>(kb + j * lk.seq, d, j, pb) : 0.f;
      v_s[n][d] = j < S ? to_float(vb[j * lv.seq + d]) : 0.f;
    }
    __syncthreads();

    // Lane l scores key n0 + l against each of the warp's rows.
    float s[ROWS];
#pragma unroll
    for (int r = 0; r < ROWS; ++r) s[r] = 0.f;
    for (int d = 0; d < D; ++d) {
      const float kd = k_s[lane][d];
#pragma unroll
      for (int r = 0; r < ROWS; ++r) s[r] += q_s[warp * ROWS + r][d] * kd;
    }
    const int j = n0 + lane;
#pragma unroll
    for (int r = 0; r < ROWS; ++r) {
      const int i = m0 + warp * ROWS + r;
      // Key 0 is visible to every row, so row_max is finite after the first tile and an
      // all-masked later tile leaves it unchanged (its probabilities are exactly 0).
      const bool visible = j < S && (!pb.causal || j <= i);
      const float score = visible ? s[r] : -INFINITY;
      const float new_max = fmaxf(row_max[r], warp_max(score));
      const float p = visible ? __expf(score - new_max) : 0.f;
      const float rescale = row_max[r] == -INFINITY ? 0.f : __expf(row_max[r] - new_max);
      row_sum[r] = row_sum[r] * rescale + warp_sum(p);
      row_max[r] = new_max;
      p_s[warp][r][lane] = p;
#pragma unroll
      for (int c = 0; c < kPerLane; ++c) acc[r][c] *= rescale;
    }
    __syncwarp();
    // Keys at or past n_end have p = 0 for every row: skip them (T < 32 in the temporal pass).
    const int n_live = min(kTile, n_end - n0);
#pragma unroll
    for (int c = 0; c < kPerLane; ++c) {
      const int d = lane + c * kWarpSize;
      for (int n = 0; n < n_live; ++n) {
        const float vd = v_s[n][d];
#pragma unroll
        for (int r = 0; r < ROWS; ++r) acc[r][c] += p_s[warp][r][n] * vd;
      }
    }
    __syncwarp();  // p_s is rewritten by the next tile
  }

  scalar_t* ob = out + sequence_offset(lo, seq);
  float* lb = lse + sequence_offset(ll, seq);
#pragma unroll
  for (int r = 0; r < ROWS; ++r) {
    const int i = m0 + warp * ROWS + r;
    if (i >= S) continue;
    const float inv_sum = 1.f / row_sum[r];
#pragma unroll
    for (int c = 0; c < kPerLane; ++c)
      ob[i * lo.seq + lane + c * kWarpSize] = static_cast<scalar_t>(acc[r][c] * inv_sum);
    if (lane == 0) lb[i * ll.seq] = row_max[r] + logf(row_sum[r]);
  }
}

// ---- Backward, step 1: delta_i = sum_d dO_i,d * O_i,d (fp32), one warp per row ------------
// Rows enumerate [B, T, P, H] in order; out and delta are contiguous, grad_out any strides.
template <typename scalar_t, int D>
__global__ void attention_bwd_delta_kernel(const scalar_t* __restrict__ grad_out,
                                           const scalar_t* __restrict__ out,
                                           float* __restrict__ delta, int64_t rows, int64_t T,
                                           int64_t P, int64_t H, int64_t g_sb, int64_t g_st,
                                           int64_t g_sp, int64_t g_sh) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * (blockDim.x / kWarpSize) +
                      threadIdx.x / kWarpSize;
  const int lane = threadIdx.x % kWarpSize;
  if (row >= rows) return;
  const int64_t h = row % H, p = (row / H) % P, t = (row / (H * P)) % T, b = row / (H * P * T);
  const scalar_t* g = grad_out + b * g_sb + t * g_st + p * g_sp + h * g_sh;
  const scalar_t* o = out + row * D;
  float sum = 0.f;
#pragma unroll
  for (int d = lane; d < D; d += kWarpSize) sum += to_float(g[d]) * to_float(o[d]);
  sum = warp_sum(sum);
  if (lane == 0) delta[row] = sum;
}

// ---- Backward, step 2: dQ. Each warp owns ROWS query rows and streams the keys. -------------
//   p = exp(s - lse), ds = p * (dO v^T - delta), dq_rot = scale * ds k_rot, then RoPE^T.
template <typename scalar_t, int D, int NUM_WARPS, int ROWS>
__global__ void __launch_bounds__(NUM_WARPS * kWarpSize)
attention_bwd_dq_kernel(const scalar_t* __restrict__ q, const scalar_t* __restrict__ k,
                        const scalar_t* __restrict__ v, const scalar_t* __restrict__ grad_out,
                        const float* __restrict__ lse, const float* __restrict__ delta,
                        scalar_t* __restrict__ grad_q, Layout lq, Layout lk, Layout lv,
                        Layout lg, Layout ll, Layout lo, Problem pb) {
  constexpr int kBlockM = NUM_WARPS * ROWS;
  constexpr int kPerLane = D / kWarpSize;
  static_assert(D % kWarpSize == 0, "head dim must be a multiple of 32");
  static_assert(sizeof(float) * (2 * kBlockM * D + 2 * kTile * (D + 1) + kBlockM * kTile) <=
                    kStaticSmemLimit, "dQ tile does not fit in static shared memory");
  GFCORE_SHARED(float, q_s, [kBlockM][D]);    // rotated, pre-scaled; reused for dq_rot at the end
  GFCORE_SHARED(float, do_s, [kBlockM][D]);
  GFCORE_SHARED(float, k_s, [kTile][D + 1]);
  GFCORE_SHARED(float, v_s, [kTile][D + 1]);
  GFCORE_SHARED(float, ds_s, [NUM_WARPS][ROWS][kTile]);

  const int tid = threadIdx.x, warp = tid / kWarpSize, lane = tid % kWarpSize;
  const int S = pb.seq_len;
  const int m0 = blockIdx.y * kBlockM;
  const Sequence seq = sequence_of_block(pb);
  const auto in = backward_sequence(q, k, v, grad_out, lse, delta, lq, lk, lv, lg, ll, seq);

  for (int idx = tid; idx < kBlockM * D; idx += NUM_WARPS * kWarpSize) {
    const int r = idx / D, d = idx % D, i = m0 + r;
    q_s[r][d] = i < S ? load_rotated<scalar_t, D>(in.q + i * lq.seq, d, i, pb) * pb.scale : 0.f;
    do_s[r][d] = i < S ? to_float(in.grad_out[i * lg.seq + d]) : 0.f;
  }
  float row_lse[ROWS], row_delta[ROWS], dq[ROWS][kPerLane];
#pragma unroll
  for (int r = 0; r < ROWS; ++r) {
    const int i = m0 + warp * ROWS + r;
    row_lse[r] = i < S ? in.lse[i * ll.seq] : 0.f;
    row_delta[r] = i < S ? in.delta[i * ll.seq] : 0.f;
#pragma unroll
    for (int c = 0; c < kPerLane; ++c) dq[r][c] = 0.f;
  }

  const int n_end = pb.causal ? min(S, m0 + kBlockM) : S;
  for (int n0 = 0; n0 < n_end; n0 += kTile) {
    __syncthreads();
    for (int idx = tid; idx < kTile * D; idx += NUM_WARPS * kWarpSize) {
      const int n = idx / D, d = idx % D, j = n0 + n;
      k_s[n][d] = j < S ? load_rotated<scalar_t, D>(in.k + j * lk.seq, d, j, pb) : 0.f;
      v_s[n][d] = j < S ? to_float(in.v[j * lv.seq + d]) : 0.f;
    }
    __syncthreads();

    float s[ROWS], dp[ROWS];
#pragma unroll
    for (int r = 0; r < ROWS; ++r) s[r] = dp[r] = 0.f;
    for (int d = 0; d < D; ++d) {
      const float kd = k_s[lane][d], vd = v_s[lane][d];
#pragma unroll
      for (int r = 0; r < ROWS; ++r) {
        s[r] += q_s[warp * ROWS + r][d] * kd;
        dp[r] += do_s[warp * ROWS + r][d] * vd;
      }
    }
    const int j = n0 + lane;
#pragma unroll
    for (int r = 0; r < ROWS; ++r) {
      const int i = m0 + warp * ROWS + r;
      const bool visible = i < S && j < S && (!pb.causal || j <= i);
      const float p = visible ? __expf(s[r] - row_lse[r]) : 0.f;
      ds_s[warp][r][lane] = p * (dp[r] - row_delta[r]);
    }
    __syncwarp();
    const int n_live = min(kTile, n_end - n0);  // keys past n_end have ds = 0 for every row
#pragma unroll
    for (int c = 0; c < kPerLane; ++c) {
      const int d = lane + c * kWarpSize;
      for (int n = 0; n < n_live; ++n) {
        const float kd = k_s[n][d];
#pragma unroll
        for (int r = 0; r < ROWS; ++r) dq[r][c] += ds_s[warp][r][n] * kd;
      }
    }
    __syncwarp();
  }

  // The warp's own q_s rows hold dq_rot so that RoPE^T can read the partner channel.
#pragma unroll
  for (int r = 0; r < ROWS; ++r)
#pragma unroll
    for (int c = 0; c < kPerLane; ++c)
      q_s[warp * ROWS + r][lane + c * kWarpSize] = dq[r][c] * pb.scale;
  __syncwarp();
  scalar_t* dqb = grad_q + sequence_offset(lo, seq);
#pragma unroll
  for (int r = 0; r < ROWS; ++r) {
    const int i = m0 + warp * ROWS + r;
    if (i >= S) continue;
#pragma unroll
    for (int c = 0; c < kPerLane; ++c) {
      const int d = lane + c * kWarpSize;
      dqb[i * lo.seq + d] = static_cast<scalar_t>(unrotate_grad<D>(q_s[warp * ROWS + r], d, i, pb));
    }
  }
}

// ---- Backward, step 3: dK and dV. Each warp owns ROWS key rows and streams the queries. -----
//   dv_j = sum_i p_ij dO_i;  dk_rot_j = sum_i ds_ij (scale q_rot_i);  then RoPE^T on dk.
template <typename scalar_t, int D, int NUM_WARPS, int ROWS>
__global__ void __launch_bounds__(NUM_WARPS * kWarpSize)
attention_bwd_dkdv_kernel(const scalar_t* __restrict__ q, const scalar_t* __restrict__ k,
                          const scalar_t* __restrict__ v, const scalar_t* __restrict__ grad_out,
                          const float* __restrict__ lse, const float* __restrict__ delta,
                          scalar_t* __restrict__ grad_k, scalar_t* __restrict__ grad_v,
                          Layout lq, Layout lk, Layout lv, Layout lg, Layout ll, Layout lo,
                          Problem pb) {
  constexpr int kBlockN = NUM_WARPS * ROWS;
  constexpr int kPerLane = D / kWarpSize;
  static_assert(D % kWarpSize == 0, "head dim must be a multiple of 32");
  static_assert(sizeof(float) * (2 * kBlockN * D + 2 * kTile * (D + 1) + 2 * kTile +
                                 2 * kBlockN * kTile) <= kStaticSmemLimit,
                "dK/dV tile does not fit in static shared memory");
  GFCORE_SHARED(float, k_s, [kBlockN][D]);     // rotated keys; reused for dk_rot at the end
  GFCORE_SHARED(float, v_s, [kBlockN][D]);
  GFCORE_SHARED(float, q_t, [kTile][D + 1]);   // rotated, pre-scaled query tile
  GFCORE_SHARED(float, do_t, [kTile][D + 1]);
  GFCORE_SHARED(float, lse_t, [kTile]);
  GFCORE_SHARED(float, delta_t, [kTile]);
  GFCORE_SHARED(float, p_s, [NUM_WARPS][ROWS][kTile]);
  GFCORE_SHARED(float, ds_s, [NUM_WARPS][ROWS][kTile]);

  const int tid = threadIdx.x, warp = tid / kWarpSize, lane = tid % kWarpSize;
  const int S = pb.seq_len;
  const int n0 = blockIdx.y * kBlockN;
  const Sequence seq = sequence_of_block(pb);
  const auto in = backward_sequence(q, k, v, grad_out, lse, delta, lq, lk, lv, lg, ll, seq);

  for (int idx = tid; idx < kBlockN * D; idx += NUM_WARPS * kWarpSize) {
    const int r = idx / D, d = idx % D, j = n0 + r;
    k_s[r][d] = j < S ? load_rotated<scalar_t, D>(in.k + j * lk.seq, d, j, pb) : 0.f;
    v_s[r][d] = j < S ? to_float(in.v[j * lv.seq + d]) : 0.f;
  }
  float dk[ROWS][kPerLane], dv[ROWS][kPerLane];
#pragma unroll
  for (int r = 0; r < ROWS; ++r)
#pragma unroll
    for (int c = 0; c < kPerLane; ++c) dk[r][c] = dv[r][c] = 0.f;

  // With causal masking queries before this block's first key see none of its keys.
  const int i_begin = pb.causal ? (n0 / kTile) * kTile : 0;
  for (int i0 = i_begin; i0 < S; i0 += kTile) {
    __syncthreads();  // the previous tile is consumed (and k_s, v_s are written, the first time)
    for (int idx = tid; idx < kTile * D; idx += NUM_WARPS * kWarpSize) {
      const int n = idx / D, d = idx % D, i = i0 + n;
      q_t[n][d] = i < S ? load_rotated<scalar_t, D>(in.q + i * lq.seq, d, i, pb) * pb.scale : 0.f;
      do_t[n][d] = i < S ? to_float(in.grad_out[i * lg.seq + d]) : 0.f;
    }
    if (tid < kTile) {
      const int i = i0 + tid;
      lse_t[tid] = i < S ? in.lse[i * ll.seq] : 0.f;
      delta_t[tid] = i < S ? in.delta[i * ll.seq] : 0.f;
    }
    __syncthreads();

    // Lane l scores query i0 + l against each of the warp's key rows.
    float s[ROWS], dp[ROWS];
#pragma unroll
    for (int r = 0; r < ROWS; ++r) s[r] = dp[r] = 0.f;
    for (int d = 0; d < D; ++d) {
      const float qd = q_t[lane][d], dod = do_t[lane][d];
#pragma unroll
      for (int r = 0; r < ROWS; ++r) {
        s[r] += qd * k_s[warp * ROWS + r][d];
        dp[r] += dod * v_s[warp * ROWS + r][d];
      }
    }
    const int i = i0 + lane;
#pragma unroll
    for (int r = 0; r < ROWS; ++r) {
      const int j = n0 + warp * ROWS + r;
      const bool visible = i < S && j < S && (!pb.causal || j <= i);
      const float p = visible ? __expf(s[r] - lse_t[lane]) : 0.f;
      p_s[warp][r][lane] = p;
      ds_s[warp][r][lane] = p * (dp[r] - delta_t[lane]);
    }
    __syncwarp();
    const int n_live = min(kTile, S - i0);  // queries past the end have p = ds = 0
#pragma unroll
    for (int c = 0; c < kPerLane; ++c) {
      const int d = lane + c * kWarpSize;
      for (int n = 0; n < n_live; ++n) {
        const float dod = do_t[n][d], qd = q_t[n][d];
#pragma unroll
        for (int r = 0; r < ROWS; ++r) {
          dv[r][c] += p_s[warp][r][n] * dod;
          dk[r][c] += ds_s[warp][r][n] * qd;
        }
      }
    }
    __syncwarp();
  }

  // k_s rows of this warp are only read by this warp: reuse them for dk_rot (RoPE^T needs the
  // partner channel).
#pragma unroll
  for (int r = 0; r < ROWS; ++r)
#pragma unroll
    for (int c = 0; c < kPerLane; ++c) k_s[warp * ROWS + r][lane + c * kWarpSize] = dk[r][c];
  __syncwarp();
  scalar_t* dkb = grad_k + sequence_offset(lo, seq);
  scalar_t* dvb = grad_v + sequence_offset(lo, seq);
#pragma unroll
  for (int r = 0; r < ROWS; ++r) {
    const int j = n0 + warp * ROWS + r;
    if (j >= S) continue;
#pragma unroll
    for (int c = 0; c < kPerLane; ++c) {
      const int d = lane + c * kWarpSize;
      dkb[j * lo.seq + d] = static_cast<scalar_t>(unrotate_grad<D>(k_s[warp * ROWS + r], d, j, pb));
      dvb[j * lo.seq + d] = static_cast<scalar_t>(dv[r][c]);
    }
  }
}

}  // namespace attention
}  // namespace gfcore
