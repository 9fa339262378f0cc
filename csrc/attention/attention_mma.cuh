// Tensor-core forward of the factorized attention (sm80+: mma.sync.m16n8k16, fp32 accumulate).
//
// Flash-attention-2 style: a block of kMmaWarps warps owns kMmaBlockM = 16 * kMmaWarps query
// rows of one sequence, each warp 16 of them; key/value tiles of BLOCK_N rows are staged in
// shared memory as 16-bit values. Per tile a warp computes S = Q K^T (16 x BLOCK_N) with the
// Q fragments held in registers, folds S into the running max / sum of the online softmax, and
// feeds the probabilities straight from the S accumulators into O += P V (the accumulator
// layout of m16n8 is the A-operand layout of m16n8k16, so P never touches shared memory).
//
// Fragment layouts (PTX ISA, mma.m16n8k16 with 16-bit A/B and f32 C), with g = lane / 4 and
// t = lane % 4; each 32-bit register holds two consecutive 16-bit elements, lower index low:
//   A (16 x 16, row-major): reg0 = A[g][2t, 2t+1], reg1 = A[g+8][2t, 2t+1],
//                           reg2 = A[g][2t+8, 2t+9], reg3 = A[g+8][2t+8, 2t+9]
//   B (16 x 8, "col"):      reg0 = B[2t, 2t+1][g],  reg1 = B[2t+8, 2t+9][g]
//   C (16 x 8, f32):        c0, c1 = C[g][2t, 2t+1], c2, c3 = C[g+8][2t, 2t+1]
// For S = Q K^T, B[d][n] = K[n][d]: a pair along d of one key row. For O = P V, B[n][d] =
// V[n][d]: a pair along the key axis, so V is stored transposed in shared memory.
//
// The harness (cpp_tests/kernels) runs this kernel with the mma twin of cpp_tests/simt.
#pragma once

#include <cstdint>

#include "attention/attention_kernels.cuh"
#include "common/ptx.cuh"
#if !defined(GFCORE_SIMT)
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#endif

namespace gfcore {
namespace attention {

constexpr int kMmaWarps = 4;
constexpr int kMmaBlockM = 16 * kMmaWarps;
constexpr int kMmaPad = 8;  // 16 bytes per row: the 8 row groups of a fragment hit distinct banks

// Key/value tile rows per step: 32 for D = 128 keeps the three tiles under 48 KiB of static
// shared memory; 64 otherwise.
template <int D>
constexpr int mma_block_n() {
  return D == 128 ? 32 : 64;
}

// Bits of a 16-bit value rounded from float (round to nearest even), and the mma for the type.
template <typename scalar_t>
struct Mma16816;

template <>
struct Mma16816<bf16> {
  __device__ static uint16_t bits(float x) {
#if defined(GFCORE_SIMT)
    return bf16(x).x;
#else
    return __bfloat16_as_ushort(__float2bfloat16_rn(x));
#endif
  }
  __device__ static uint32_t pack(float lo, float hi) {
    return static_cast<uint32_t>(bits(lo)) | (static_cast<uint32_t>(bits(hi)) << 16);
  }
  __device__ static void run(float (&c)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
    ptx::mma_m16n8k16_bf16(c, a, b);
  }
};

template <>
struct Mma16816<fp16> {
  __device__ static uint16_t bits(float x) {
#if defined(GFCORE_SIMT)
    return fp16(x).x;
#else
    return __half_as_ushort(__float2half_rn(x));
#endif
  }
  __device__ static uint32_t pack(float lo, float hi) {
    return static_cast<uint32_t>(bits(lo)) | (static_cast<uint32_t>(bits(hi)) << 16);
  }
  __device__ static void run(float (&c)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
    ptx::mma_m16n8k16_f16(c, a, b);
  }
};

// Two consecutive 16-bit elements of a shared-memory row (column even: 4-byte aligned).
__device__ inline uint32_t pair_at(const uint16_t* row, int col) {
  return *reinterpret_cast<const uint32_t*>(row + col);
}

// A fragment of a row-major tile (leading dimension ld): rows row0 and row0 + 8 (row0 = 16 w +
// g for warp w), columns k0 .. k0 + 15.
__device__ inline void load_a_frag(uint32_t (&a)[4], const uint16_t* tile, int ld, int row0, int k0,
                                   int t) {
  a[0] = pair_at(tile + row0 * ld, k0 + 2 * t);
  a[1] = pair_at(tile + (row0 + 8) * ld, k0 + 2 * t);
  a[2] = pair_at(tile + row0 * ld, k0 + 8 + 2 * t);
  a[3] = pair_at(tile + (row0 + 8) * ld, k0 + 8 + 2 * t);
}

// B fragment whose column n is row n of a row-major tile: B[k][n] = tile[n][k0 + k].
__device__ inline void load_b_frag(uint32_t (&b)[2], const uint16_t* tile, int ld, int n, int k0,
                                   int t) {
  b[0] = pair_at(tile + n * ld, k0 + 2 * t);
  b[1] = pair_at(tile + n * ld, k0 + 8 + 2 * t);
}

// A fragment (16 x 16) from the accumulators of two adjacent n-tiles (16 x 8 each), rounded to
// 16 bits: the C layout of m16n8 lines up with the A layout of m16n8k16.
template <typename scalar_t>
__device__ inline void acc_to_a_frag(uint32_t (&a)[4], const float (&lo)[4], const float (&hi)[4]) {
  using Mma = Mma16816<scalar_t>;
  a[0] = Mma::pack(lo[0], lo[1]);
  a[1] = Mma::pack(lo[2], lo[3]);
  a[2] = Mma::pack(hi[0], hi[1]);
  a[3] = Mma::pack(hi[2], hi[3]);
}

// acc[nt] += A B over a reduction of length K (a multiple of 16), for the N / 8 n-tiles of
// acc: A is rows row0 and row0 + 8 of the row-major tile a, and column n of B is row n of the
// row-major tile b (both with leading dimension ld). S = Q K^T is this with a = Q, b = K.
template <typename scalar_t, int K, int N>
__device__ inline void mma_rows_by_rows(float (&acc)[N / 8][4], const uint16_t* a, const uint16_t* b,
                                        int ld, int row0, int g, int t) {
#pragma unroll
  for (int kk = 0; kk < K / 16; ++kk) {
    uint32_t a_frag[4];
    load_a_frag(a_frag, a, ld, row0, kk * 16, t);
#pragma unroll
    for (int nt = 0; nt < N / 8; ++nt) {
      uint32_t b_frag[2];
      load_b_frag(b_frag, b, ld, nt * 8 + g, kk * 16, t);
      Mma16816<scalar_t>::run(acc[nt], a_frag, b_frag);
    }
  }
}

// out[dt] += P B for the D / 8 tiles of out: P (16 x N) is held in accumulator tiles and
// rounded to 16 bits; column d of B is row d of the transposed tile bt (D x N, leading
// dimension ldt). O = P V is this with bt = V^T.
template <typename scalar_t, int D, int N>
__device__ inline void mma_acc_by_transposed(float (&out)[D / 8][4], const float (&p)[N / 8][4],
                                             const uint16_t* bt, int ldt, int g, int t) {
#pragma unroll
  for (int kk = 0; kk < N / 16; ++kk) {
    uint32_t p_frag[4];
    acc_to_a_frag<scalar_t>(p_frag, p[2 * kk], p[2 * kk + 1]);
#pragma unroll
    for (int dt = 0; dt < D / 8; ++dt) {
      uint32_t b_frag[2];
      load_b_frag(b_frag, bt, ldt, dt * 8 + g, kk * 16, t);
      Mma16816<scalar_t>::run(out[dt], p_frag, b_frag);
    }
  }
}

// Rows [r0, r0 + ROWS) of one sequence into a 16-bit row-major tile and/or a transposed one
// (either may be null), RoPE applied when `rotate` and tables are given, zeros past the end.
template <typename scalar_t, int D, int ROWS>
__device__ inline void stage_rows(uint16_t* rowmajor, int ld_rows, uint16_t* transposed, int ld_t,
                                  const scalar_t* base, int64_t seq_stride, int r0, bool rotate,
                                  const Problem& pb) {
  using Mma = Mma16816<scalar_t>;
  for (int idx = threadIdx.x; idx < ROWS * D; idx += blockDim.x) {
    const int r = idx / D, d = idx % D, i = r0 + r;
    float x = 0.f;
    if (i < pb.seq_len)
      x = rotate ? load_rotated<scalar_t, D>(base + i * seq_stride, d, i, pb)
                 : to_float(base[i * seq_stride + d]);
    const uint16_t bits = Mma::bits(x);
    if (rowmajor != nullptr) rowmajor[r * ld_rows + d] = bits;
    if (transposed != nullptr) transposed[d * ld_t + r] = bits;
  }
}

// Grid: (sequences, ceil(S / kMmaBlockM)); block: kMmaWarps warps.
template <typename scalar_t, int D>
__global__ void __launch_bounds__(kMmaWarps * kWarpSize)
attention_fwd_mma_kernel(const scalar_t* __restrict__ q, const scalar_t* __restrict__ k,
                         const scalar_t* __restrict__ v, scalar_t* __restrict__ out,
                         float* __restrict__ lse, Layout lq, Layout lk, Layout lv, Layout lo,
                         Layout ll, Problem pb) {
  using Mma = Mma16816<scalar_t>;
  constexpr int kBlockN = mma_block_n<D>();
  static_assert(D % 16 == 0 && kBlockN % 16 == 0, "tiles are whole mma steps");
  static_assert(2 * (kMmaBlockM * (D + kMmaPad) + kBlockN * (D + kMmaPad) +
                     D * (kBlockN + kMmaPad)) <= kStaticSmemLimit,
                "mma forward tiles do not fit in static shared memory");
  GFCORE_SHARED(uint16_t, q_s, [kMmaBlockM][D + kMmaPad]);  // rotated query rows
  GFCORE_SHARED(uint16_t, k_s, [kBlockN][D + kMmaPad]);     // rotated key rows
  GFCORE_SHARED(uint16_t, vt_s, [D][kBlockN + kMmaPad]);    // value tile, transposed

  const int tid = threadIdx.x, warp = tid / kWarpSize, lane = tid % kWarpSize;
  const int g = lane / 4, t = lane % 4;
  const int S = pb.seq_len;
  const int m0 = blockIdx.y * kMmaBlockM;
  const Sequence seq = sequence_of_block(pb);
  const scalar_t* qb = q + sequence_offset(lq, seq);
  const scalar_t* kb = k + sequence_offset(lk, seq);
  const scalar_t* vb = v + sequence_offset(lv, seq);

  // Queries are rotated in fp32 and rounded once to 16 bits; the softmax scale is applied to
  // the fp32 scores instead, so it costs no rounding.
  stage_rows<scalar_t, D, kMmaBlockM>(&q_s[0][0], D + kMmaPad, nullptr, 0, qb, lq.seq, m0, true, pb);
  __syncthreads();

  const int row0 = warp * 16 + g;  // this thread's rows in the block: row0 and row0 + 8
  // The Q fragments stay in registers for the whole key loop (mma_rows_by_rows would reload
  // them from shared memory per tile; the backward kernels do, their registers hold two
  // accumulators).
  uint32_t q_frag[D / 16][4];
#pragma unroll
  for (int kk = 0; kk < D / 16; ++kk) load_a_frag(q_frag[kk], &q_s[0][0], D + kMmaPad, row0, kk * 16, t);

  // Online softmax in base 2: scores are scaled by scale * log2(e) so exp2 does the work.
  const float scale_log2 = pb.scale * 1.4426950408889634f;
  const int rows[2] = {m0 + row0, m0 + row0 + 8};
  float row_max[2] = {-INFINITY, -INFINITY};
  float row_sum[2] = {0.f, 0.f};  // this thread's share; the quad's four are added at the end
  float o_acc[D / 8][4];
#pragma unroll
  for (int dt = 0; dt < D / 8; ++dt)
#pragma unroll
    for (int e = 0; e < 4; ++e) o_acc[dt][e] = 0.f;

  const int n_end = pb.causal ? min(S, m0 + kMmaBlockM) : S;
  for (int n0 = 0; n0 < n_end; n0 += kBlockN) {
    __syncthreads();  // every warp is done with the previous tile
    stage_rows<scalar_t, D, kBlockN>(&k_s[0][0], D + kMmaPad, nullptr, 0, kb, lk.seq, n0, true, pb);
    stage_rows<scalar_t, D, kBlockN>(nullptr, 0, &vt_s[0][0], kBlockN + kMmaPad, vb, lv.seq, n0, false, pb);
    __syncthreads();

    // S = Q K^T: n-tile nt covers keys n0 + 8 nt .. n0 + 8 nt + 7.
    float s[kBlockN / 8][4];
#pragma unroll
    for (int nt = 0; nt < kBlockN / 8; ++nt) {
#pragma unroll
      for (int e = 0; e < 4; ++e) s[nt][e] = 0.f;
#pragma unroll
      for (int kk = 0; kk < D / 16; ++kk) {
        uint32_t k_frag[2];
        load_b_frag(k_frag, &k_s[0][0], D + kMmaPad, nt * 8 + g, kk * 16, t);
        Mma::run(s[nt], q_frag[kk], k_frag);
      }
    }

    // Mask, scale, and fold into the running max / sum. Element e of an n-tile is row
    // rows[e / 2], key n0 + 8 nt + 2t + e % 2. Key n0 is visible to every row of the first
    // tile, so row_max is finite from then on and a fully masked row of a later tile adds
    // exp2(-inf) = 0.
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      float tile_max = -INFINITY;
#pragma unroll
      for (int nt = 0; nt < kBlockN / 8; ++nt)
#pragma unroll
        for (int e = 2 * half; e < 2 * half + 2; ++e) {
          const int j = n0 + nt * 8 + 2 * t + (e & 1);
          const bool visible = j < S && (!pb.causal || j <= rows[half]);
          s[nt][e] = visible ? s[nt][e] * scale_log2 : -INFINITY;
          tile_max = fmaxf(tile_max, s[nt][e]);
        }
      // The quad (4 lanes with the same g) holds the row's other columns.
      tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, 1));
      tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, 2));
      const float new_max = fmaxf(row_max[half], tile_max);
      const float rescale = exp2f(row_max[half] - new_max);  // 0 on the first tile
      float sum = 0.f;
#pragma unroll
      for (int nt = 0; nt < kBlockN / 8; ++nt)
#pragma unroll
        for (int e = 2 * half; e < 2 * half + 2; ++e) {
          s[nt][e] = exp2f(s[nt][e] - new_max);
          sum += s[nt][e];
        }
      row_sum[half] = row_sum[half] * rescale + sum;
      row_max[half] = new_max;
#pragma unroll
      for (int dt = 0; dt < D / 8; ++dt) {
        o_acc[dt][2 * half] *= rescale;
        o_acc[dt][2 * half + 1] *= rescale;
      }
    }

    // O += P V over the tile's keys; P is rounded to 16 bits as SDPA does.
    mma_acc_by_transposed<scalar_t, D, kBlockN>(o_acc, s, &vt_s[0][0], kBlockN + kMmaPad, g, t);
  }

  scalar_t* ob = out + sequence_offset(lo, seq);
  float* lb = lse + sequence_offset(ll, seq);
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    float total = row_sum[half];
    total += __shfl_xor_sync(0xffffffffu, total, 1);
    total += __shfl_xor_sync(0xffffffffu, total, 2);
    const int i = rows[half];
    if (i >= S) continue;
    const float inv_sum = 1.f / total;
#pragma unroll
    for (int dt = 0; dt < D / 8; ++dt) {
      const int d = dt * 8 + 2 * t;
      ob[i * lo.seq + d] = static_cast<scalar_t>(o_acc[dt][2 * half] * inv_sum);
      ob[i * lo.seq + d + 1] = static_cast<scalar_t>(o_acc[dt][2 * half + 1] * inv_sum);
    }
    // Natural-log LSE of the scaled scores, as the backward kernels expect.
    if (t == 0) lb[i * ll.seq] = (row_max[half] + log2f(total)) * 0.6931471805599453f;
  }
}

}  // namespace attention
}  // namespace gfcore
