// Temporal attention on tensor cores (sm80+) for sequences of at most 64 frames, forward and
// one-pass backward.
//
// The temporal pass attends over T (8 to 64 in practice) for every (b, p, h): millions of short
// sequences whose K and V fit in shared memory whole. So, unlike the spatial kernels, nothing
// is streamed:
//   * a CTA of kTcWarps = 4 warps owns kSeqs = 64 / T_PAD whole sequences (T_PAD = T rounded up
//     to 16, 32 or 64), T_PAD / 16 warps each: a sequence's K and V are read from HBM once, by
//     one CTA, and the CTA's sequences are neighbours in h (then p), i.e. neighbours in memory;
//   * a warp owns 16 rows (queries, or keys in the backward's second phase) and computes every
//     product with mma.m16n8k16 (16-bit operands, fp32 accumulation); T is padded to T_PAD with
//     zero rows in shared memory and masked in registers (j < T, and j <= i when causal);
//   * operands come from the caller's strided views (a packed [B, T, P, 3, H, D] qkv included)
//     with 16-byte loads along D when the views are 16-byte aligned (`vec16`), are RoPE-rotated
//     in fp32 registers on load and rounded once to 16 bits;
//   * the backward is one kernel, no atomics (deterministic): phase 1, a warp on its 16 query
//     rows: S = Q K^T, dP = dO V^T, P = exp(S - lse), dS = P (dP - delta), dQ = dS K (stored),
//     with P^T and dS^T written to shared memory as 16-bit values; phase 2, a warp on its 16
//     key rows: dV = P^T dO and dK = dS^T Q. delta = rowsum(dO * O) is computed here too.
// The fragment helpers (load_a_frag, mma_rows_by_rows, ...) are those of attention_mma.cuh; the
// harness (cpp_tests/kernels) runs both kernels from this source on the CPU.
#pragma once

#include "attention/attention_mma_bwd.cuh"

namespace gfcore {
namespace attention {

constexpr int kTcWarps = 4;
constexpr int kTcThreads = kTcWarps * kWarpSize;
constexpr int kTcMaxSeq = 16 * kTcWarps;  // the longest sequence a CTA holds: 64 frames

#if defined(GFCORE_SIMT)
struct alignas(16) Vec16 {
  uint32_t x, y, z, w;
};
#else
using Vec16 = uint4;
#endif

// Shared-memory tiles (16-bit elements) of one sequence padded to T_PAD rows, head dim D.
template <int D, int T_PAD>
struct TemporalTiles {
  static_assert(T_PAD == 16 || T_PAD == 32 || T_PAD == 64, "T_PAD is 16, 32 or 64");
  static constexpr int kWarpsPerSeq = T_PAD / 16;
  static constexpr int kSeqs = kTcWarps / kWarpsPerSeq;  // sequences per CTA
  static constexpr int kLdRow = D + kMmaPad;              // row-major tiles: [T_PAD][kLdRow]
  static constexpr int kLdT = T_PAD + kMmaPad;            // transposed: [D][kLdT]; P^T, dS^T: [T_PAD][kLdT]
  static constexpr int kRow = T_PAD * kLdRow, kTrD = D * kLdT, kTrT = T_PAD * kLdT;  // elements
  // Forward, per sequence: q and k row-major, v transposed.
  static constexpr int kFwdSeq = 2 * kRow + kTrD;
  static constexpr size_t kFwdBytes = sizeof(uint16_t) * kSeqs * kFwdSeq;
  // Backward, per sequence: q, dO, k, v row-major and k transposed (phase 1), then q^T and dO^T
  // written over k, v and k^T (phase 2); P^T and dS^T; lse (base 2) and delta as floats.
  static constexpr int kBwdSeq = 4 * kRow + kTrD + 2 * kTrT;
  static constexpr size_t kBwdBytes = kSeqs * (sizeof(uint16_t) * kBwdSeq + 2 * sizeof(float) * T_PAD);
  static_assert(2 * kTrD <= 2 * kRow + kTrD, "q^T and dO^T fit over k, v and k^T");
};

// Eight consecutive values of a row as floats: one 16-byte load when the view allows it.
template <typename scalar_t>
__device__ inline void load8(float (&x)[8], const scalar_t* p, bool vec16) {
  if (vec16) {
    const Vec16 w = *reinterpret_cast<const Vec16*>(p);
    const scalar_t* e = reinterpret_cast<const scalar_t*>(&w);
#pragma unroll
    for (int i = 0; i < 8; ++i) x[i] = to_float(e[i]);
  } else {
#pragma unroll
    for (int i = 0; i < 8; ++i) x[i] = to_float(p[i]);
  }
}

// Channels [8c, 8c + 8) and their rotate-half partners [D/2 + 8c, D/2 + 8c + 8) of row r of a
// sequence into 16-bit shared tiles: a row-major one (16-byte stores) and/or a transposed one
// (either may be null). RoPE is applied in fp32 when `rotate` and the tables are given; rows
// r >= S are zeros, so padded rows and keys contribute nothing to any product.
template <typename scalar_t, int D>
__device__ inline void stage_chunk(uint16_t* rowmajor, int ld, uint16_t* transposed, int ldt,
                                   const scalar_t* base, int64_t seq_stride, int r, int c,
                                   bool rotate, bool vec16, const Problem& pb) {
  using Mma = Mma16816<scalar_t>;
  const int d_lo = 8 * c, d_hi = D / 2 + 8 * c;
  float lo[8], hi[8];
  if (r < pb.seq_len) {
    load8(lo, base + r * seq_stride + d_lo, vec16);
    load8(hi, base + r * seq_stride + d_hi, vec16);
    if (rotate && pb.rope_cos != nullptr) {
      const float* cs = pb.rope_cos + static_cast<int64_t>(r) * D;
      const float* sn = pb.rope_sin + static_cast<int64_t>(r) * D;
#pragma unroll
      for (int e = 0; e < 8; ++e) {  // rotate_half([x1, x2]) = [-x2, x1]
        const float x1 = lo[e], x2 = hi[e];
        lo[e] = x1 * cs[d_lo + e] - x2 * sn[d_lo + e];
        hi[e] = x2 * cs[d_hi + e] + x1 * sn[d_hi + e];
      }
    }
  } else {
#pragma unroll
    for (int e = 0; e < 8; ++e) lo[e] = hi[e] = 0.f;
  }
  if (rowmajor != nullptr) {
    const Vec16 wl = {Mma::pack(lo[0], lo[1]), Mma::pack(lo[2], lo[3]), Mma::pack(lo[4], lo[5]), Mma::pack(lo[6], lo[7])};
    const Vec16 wh = {Mma::pack(hi[0], hi[1]), Mma::pack(hi[2], hi[3]), Mma::pack(hi[4], hi[5]), Mma::pack(hi[6], hi[7])};
    *reinterpret_cast<Vec16*>(rowmajor + r * ld + d_lo) = wl;
    *reinterpret_cast<Vec16*>(rowmajor + r * ld + d_hi) = wh;
  }
  if (transposed != nullptr) {
#pragma unroll
    for (int e = 0; e < 8; ++e) {
      transposed[(d_lo + e) * ldt + r] = Mma::bits(lo[e]);
      transposed[(d_hi + e) * ldt + r] = Mma::bits(hi[e]);
    }
  }
}

// Work item idx of the staging loops: sequence slot s, row r, chunk pair c. Sixteen consecutive
// threads take 16 rows of one chunk: each row's two 16-byte loads still fill whole 32-byte
// sectors (two chunks per half-warp), while the transposed tiles' 2-byte stores of one warp
// fall on 8 words of one column pair instead of 8 columns that share a bank (2-way, not 8-way,
// conflicts at ldt = T_PAD + 8).
struct StageItem {
  int s, r, c;
};

template <int D, int T_PAD>
__device__ inline StageItem stage_item(int idx) {
  constexpr int kChunks = D / 16;
  StageItem it;
  it.s = idx / (T_PAD * kChunks);
  const int within = idx % (T_PAD * kChunks);
  it.r = within % 16 + 16 * (within / (16 * kChunks));
  it.c = within / 16 % kChunks;
  return it;
}

// The CTA's sequences (first .. first + kSeqs - 1, those below `sequences`) into the shared
// table `slots`; returns how many are live. Ends with a barrier.
template <int kSeqs>
__device__ inline int claim_sequences(Sequence* slots, int64_t sequences, const Problem& pb) {
  const int64_t first = static_cast<int64_t>(blockIdx.x) * kSeqs;
  const int64_t left = sequences - first;
  const int live = left < kSeqs ? static_cast<int>(left) : kSeqs;
  if (static_cast<int>(threadIdx.x) < live) slots[threadIdx.x] = sequence_at(first + threadIdx.x, pb);
  __syncthreads();
  return live;
}

// ---- Forward: grid (ceil(sequences / kSeqs)), kTcThreads, TemporalTiles::kFwdBytes ----------
template <typename scalar_t, int D, int T_PAD>
__global__ void __launch_bounds__(kTcThreads)
temporal_fwd_tc_kernel(const scalar_t* __restrict__ q, const scalar_t* __restrict__ k,
                       const scalar_t* __restrict__ v, scalar_t* __restrict__ out,
                       float* __restrict__ lse, Layout lq, Layout lk, Layout lv, Layout lo,
                       Layout ll, Problem pb, int64_t sequences, bool vec16) {
  using Tiles = TemporalTiles<D, T_PAD>;
  constexpr int kSeqs = Tiles::kSeqs, kLdRow = Tiles::kLdRow, kLdT = Tiles::kLdT;
  constexpr int kChunks = D / 16;  // chunk pairs per row
  GFCORE_DYNAMIC_SHARED(uint16_t, smem_tfwd);
  GFCORE_SHARED(Sequence, slots, [kSeqs]);
  const int live = claim_sequences<kSeqs>(&slots[0], sequences, pb);

  // Stage q and k (rotated, row-major) and v (transposed) of every live sequence.
  for (int idx = threadIdx.x; idx < live * T_PAD * kChunks; idx += kTcThreads) {
    const StageItem it = stage_item<D, T_PAD>(idx);
    const int s = it.s, r = it.r, c = it.c;
    uint16_t* q_s = smem_tfwd + s * Tiles::kFwdSeq;
    uint16_t* k_s = q_s + Tiles::kRow;
    uint16_t* vt_s = k_s + Tiles::kRow;
    const Sequence sq = slots[s];
    stage_chunk<scalar_t, D>(q_s, kLdRow, nullptr, 0, q + sequence_offset(lq, sq), lq.seq, r, c, true, vec16, pb);
    stage_chunk<scalar_t, D>(k_s, kLdRow, nullptr, 0, k + sequence_offset(lk, sq), lk.seq, r, c, true, vec16, pb);
    stage_chunk<scalar_t, D>(nullptr, 0, vt_s, kLdT, v + sequence_offset(lv, sq), lv.seq, r, c, false, vec16, pb);
  }
  __syncthreads();

  const int warp = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize;
  const int slot = warp / Tiles::kWarpsPerSeq, g = lane / 4, t = lane % 4;
  if (slot >= live) return;  // past the last barrier: the CTA's last sequences may be absent
  const uint16_t* q_s = smem_tfwd + slot * Tiles::kFwdSeq;
  const uint16_t* k_s = q_s + Tiles::kRow;
  const uint16_t* vt_s = k_s + Tiles::kRow;
  const int S = pb.seq_len;
  const int row0 = (warp % Tiles::kWarpsPerSeq) * 16 + g;  // this thread's rows: row0, row0 + 8
  const int rows[2] = {row0, row0 + 8};

  // S = Q K^T over every key at once (no online softmax: the whole row is in registers).
  float s[T_PAD / 8][4];
#pragma unroll
  for (int nt = 0; nt < T_PAD / 8; ++nt)
#pragma unroll
    for (int e = 0; e < 4; ++e) s[nt][e] = 0.f;
  mma_rows_by_rows<scalar_t, D, T_PAD>(s, q_s, k_s, kLdRow, row0, g, t);

  // Softmax in base 2. Element e of n-tile nt is row rows[e / 2], key 8 nt + 2t + e % 2; key 0
  // is visible to every row, so each row's max is finite.
  const float scale_log2 = pb.scale * kLog2e;
  float row_max[2], row_sum[2];
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    float m = -INFINITY;
#pragma unroll
    for (int nt = 0; nt < T_PAD / 8; ++nt)
#pragma unroll
      for (int e = 2 * half; e < 2 * half + 2; ++e) {
        const int j = nt * 8 + 2 * t + (e & 1);
        const bool visible = j < S && (!pb.causal || j <= rows[half]);
        s[nt][e] = visible ? s[nt][e] * scale_log2 : -INFINITY;
        m = fmaxf(m, s[nt][e]);
      }
    m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, 1));  // the quad holds the row's other keys
    m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, 2));
    float sum = 0.f;
#pragma unroll
    for (int nt = 0; nt < T_PAD / 8; ++nt)
#pragma unroll
      for (int e = 2 * half; e < 2 * half + 2; ++e) {
        s[nt][e] = exp2f(s[nt][e] - m);
        sum += s[nt][e];
      }
    sum += __shfl_xor_sync(0xffffffffu, sum, 1);
    sum += __shfl_xor_sync(0xffffffffu, sum, 2);
    row_max[half] = m;
    row_sum[half] = sum;
  }

  // O = P V, P rounded to 16 bits as SDPA does; normalised on the way out.
  float o_acc[D / 8][4];
#pragma unroll
  for (int dt = 0; dt < D / 8; ++dt)
#pragma unroll
    for (int e = 0; e < 4; ++e) o_acc[dt][e] = 0.f;
  mma_acc_by_transposed<scalar_t, D, T_PAD>(o_acc, s, vt_s, kLdT, g, t);

  const Sequence sq = slots[slot];
  scalar_t* ob = out + sequence_offset(lo, sq);
  float* lb = lse + sequence_offset(ll, sq);
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const int i = rows[half];
    if (i >= S) continue;
    const float inv_sum = 1.f / row_sum[half];
#pragma unroll
    for (int dt = 0; dt < D / 8; ++dt) {
      const int d = dt * 8 + 2 * t;
      ob[i * lo.seq + d] = static_cast<scalar_t>(o_acc[dt][2 * half] * inv_sum);
      ob[i * lo.seq + d + 1] = static_cast<scalar_t>(o_acc[dt][2 * half + 1] * inv_sum);
    }
    // Natural-log LSE of the scaled scores, as the backward expects.
    if (t == 0) lb[i * ll.seq] = (row_max[half] + log2f(row_sum[half])) * 0.6931471805599453f;
  }
}

// ---- Backward: grid (ceil(sequences / kSeqs)), kTcThreads, TemporalTiles::kBwdBytes ---------
template <typename scalar_t, int D, int T_PAD>
__global__ void __launch_bounds__(kTcThreads)
temporal_bwd_tc_kernel(const scalar_t* __restrict__ q, const scalar_t* __restrict__ k,
                       const scalar_t* __restrict__ v, const scalar_t* __restrict__ grad_out,
                       const scalar_t* __restrict__ out, const float* __restrict__ lse,
                       scalar_t* __restrict__ grad_q, scalar_t* __restrict__ grad_k,
                       scalar_t* __restrict__ grad_v, Layout lq, Layout lk, Layout lv, Layout lg,
                       Layout l_out, Layout ll, Layout lo, Problem pb, int64_t sequences, bool vec16) {
  using Tiles = TemporalTiles<D, T_PAD>;
  using Mma = Mma16816<scalar_t>;
  constexpr int kSeqs = Tiles::kSeqs, kLdRow = Tiles::kLdRow, kLdT = Tiles::kLdT;
  constexpr int kChunks = D / 16;
  GFCORE_DYNAMIC_SHARED(uint16_t, smem_tbwd);
  GFCORE_SHARED(Sequence, slots, [kSeqs]);
  const int live = claim_sequences<kSeqs>(&slots[0], sequences, pb);
  // Tiles of sequence slot s (qt_s and dot_s take the place of k_s, v_s and kt_s in phase 2).
  auto tile = [&](int s) { return smem_tbwd + s * Tiles::kBwdSeq; };
  float* lse2_all = reinterpret_cast<float*>(smem_tbwd + kSeqs * Tiles::kBwdSeq);  // [kSeqs][T_PAD]
  float* delta_all = lse2_all + kSeqs * T_PAD;                                     // [kSeqs][T_PAD]
  const int S = pb.seq_len;

  // 1. Stage q, k (rotated; k also transposed), v and dO; delta and lse per row.
  for (int idx = threadIdx.x; idx < live * T_PAD * kChunks; idx += kTcThreads) {
    const StageItem it = stage_item<D, T_PAD>(idx);
    const int s = it.s, r = it.r, c = it.c;
    uint16_t* q_s = tile(s);
    uint16_t* do_s = q_s + Tiles::kRow;
    uint16_t* k_s = do_s + Tiles::kRow;
    uint16_t* v_s = k_s + Tiles::kRow;
    uint16_t* kt_s = v_s + Tiles::kRow;
    const Sequence sq = slots[s];
    stage_chunk<scalar_t, D>(q_s, kLdRow, nullptr, 0, q + sequence_offset(lq, sq), lq.seq, r, c, true, vec16, pb);
    stage_chunk<scalar_t, D>(do_s, kLdRow, nullptr, 0, grad_out + sequence_offset(lg, sq), lg.seq, r, c, false, vec16, pb);
    stage_chunk<scalar_t, D>(k_s, kLdRow, kt_s, kLdT, k + sequence_offset(lk, sq), lk.seq, r, c, true, vec16, pb);
    stage_chunk<scalar_t, D>(v_s, kLdRow, nullptr, 0, v + sequence_offset(lv, sq), lv.seq, r, c, false, vec16, pb);
  }
  for (int idx = threadIdx.x; idx < live * T_PAD; idx += kTcThreads) {
    const int s = idx / T_PAD, r = idx % T_PAD;
    float delta = 0.f, lse2 = 0.f;
    if (r < S) {
      const Sequence sq = slots[s];
      const scalar_t* go = grad_out + sequence_offset(lg, sq) + r * lg.seq;
      const scalar_t* o = out + sequence_offset(l_out, sq) + r * l_out.seq;
      for (int d = 0; d < D; d += 8) {
        float a[8], b[8];
        load8(a, go + d, vec16);
        load8(b, o + d, vec16);
#pragma unroll
        for (int e = 0; e < 8; ++e) delta += a[e] * b[e];
      }
      lse2 = lse[sequence_offset(ll, sq) + r * ll.seq] * kLog2e;
    }
    delta_all[idx] = delta;
    lse2_all[idx] = lse2;
  }
  __syncthreads();

  const int warp = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize;
  const int slot = warp / Tiles::kWarpsPerSeq, g = lane / 4, t = lane % 4;
  const int row0 = (warp % Tiles::kWarpsPerSeq) * 16 + g;  // rows (phase 1) or keys (phase 2)
  const int rows[2] = {row0, row0 + 8};
  const float scale_log2 = pb.scale * kLog2e;

  // 2. Phase 1, this warp's 16 query rows.
  if (slot < live) {
    const uint16_t* q_s = tile(slot);
    const uint16_t* do_s = q_s + Tiles::kRow;
    const uint16_t* k_s = do_s + Tiles::kRow;
    const uint16_t* v_s = k_s + Tiles::kRow;
    const uint16_t* kt_s = v_s + Tiles::kRow;
    uint16_t* pt_s = tile(slot) + 4 * Tiles::kRow + Tiles::kTrD;
    uint16_t* dst_s = pt_s + Tiles::kTrT;
    const float* lse2 = lse2_all + slot * T_PAD;
    const float* delta = delta_all + slot * T_PAD;

    float s[T_PAD / 8][4], dp[T_PAD / 8][4];
#pragma unroll
    for (int nt = 0; nt < T_PAD / 8; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) s[nt][e] = dp[nt][e] = 0.f;
    mma_rows_by_rows<scalar_t, D, T_PAD>(s, q_s, k_s, kLdRow, row0, g, t);    // S = Q K^T
    mma_rows_by_rows<scalar_t, D, T_PAD>(dp, do_s, v_s, kLdRow, row0, g, t);  // dP = dO V^T
    // P and dS = P (dP - delta); element e is row rows[e / 2], key 8 nt + 2t + e % 2. Every
    // (row, key) of the padded tile is written to P^T and dS^T, zeros where not visible.
#pragma unroll
    for (int nt = 0; nt < T_PAD / 8; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int i = rows[e / 2], j = nt * 8 + 2 * t + (e & 1);
        const bool visible = i < S && j < S && (!pb.causal || j <= i);
        const float p = visible ? exp2f(s[nt][e] * scale_log2 - lse2[i]) : 0.f;
        const float ds = p * (dp[nt][e] - delta[i]);
        pt_s[j * kLdT + i] = Mma::bits(p);
        dst_s[j * kLdT + i] = Mma::bits(ds);
        s[nt][e] = ds;
      }
    float dq_acc[D / 8][4];
#pragma unroll
    for (int dt = 0; dt < D / 8; ++dt)
#pragma unroll
      for (int e = 0; e < 4; ++e) dq_acc[dt][e] = 0.f;
    mma_acc_by_transposed<scalar_t, D, T_PAD>(dq_acc, s, kt_s, kLdT, g, t);  // dQ = dS K
    unrotate_acc<D>(dq_acc, rows, t, pb);
    store_acc_rows<scalar_t, D>(grad_q + sequence_offset(lo, slots[slot]), lo.seq, dq_acc, rows, t, pb.scale, S);
  }
  __syncthreads();  // P^T and dS^T complete; k_s, v_s and kt_s free

  // 3. q^T and dO^T over k_s, v_s and kt_s.
  for (int idx = threadIdx.x; idx < live * T_PAD * D; idx += kTcThreads) {
    const int s = idx / (T_PAD * D), r = idx / D % T_PAD, d = idx % D;
    const uint16_t* q_s = tile(s);
    const uint16_t* do_s = q_s + Tiles::kRow;
    uint16_t* qt_s = tile(s) + 2 * Tiles::kRow;
    uint16_t* dot_s = qt_s + Tiles::kTrD;
    qt_s[d * kLdT + r] = q_s[r * kLdRow + d];
    dot_s[d * kLdT + r] = do_s[r * kLdRow + d];
  }
  __syncthreads();

  // 4. Phase 2, this warp's 16 key rows: dV = P^T dO, then dK = dS^T Q (one accumulator live).
  if (slot < live) {
    const uint16_t* qt_s = tile(slot) + 2 * Tiles::kRow;
    const uint16_t* dot_s = qt_s + Tiles::kTrD;
    const uint16_t* pt_s = tile(slot) + 4 * Tiles::kRow + Tiles::kTrD;
    const uint16_t* dst_s = pt_s + Tiles::kTrT;
    const Sequence sq = slots[slot];
    float acc[D / 8][4];
#pragma unroll
    for (int dt = 0; dt < D / 8; ++dt)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[dt][e] = 0.f;
    mma_rows_by_rows<scalar_t, T_PAD, D>(acc, pt_s, dot_s, kLdT, row0, g, t);
    store_acc_rows<scalar_t, D>(grad_v + sequence_offset(lo, sq), lo.seq, acc, rows, t, 1.f, S);
#pragma unroll
    for (int dt = 0; dt < D / 8; ++dt)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[dt][e] = 0.f;
    mma_rows_by_rows<scalar_t, T_PAD, D>(acc, dst_s, qt_s, kLdT, row0, g, t);
    unrotate_acc<D>(acc, rows, t, pb);
    store_acc_rows<scalar_t, D>(grad_k + sequence_offset(lo, sq), lo.seq, acc, rows, t, pb.scale, S);
  }
}

}  // namespace attention
}  // namespace gfcore
