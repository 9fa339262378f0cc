// The temporal backward in one kernel: a block owns one whole sequence (T <= 64 frames of one
// (b, p, h)), so q, k, v, dO and O are read once and delta, dQ, dK and dV come out of the
// same pass. The three-kernel path (delta, dQ, dK/dV) reads q, k, v and dO twice and dO and O
// once more; the temporal pass is memory-bound, so the traffic is the cost.
//
// Phases, separated by __syncthreads():
//   1. stage q (rotated, times scale), k (rotated), v and dO in shared memory (fp32); then
//      delta_i = dO_i . O_i (dO from shared memory) and lse_i per row;
//   2. for every (i, j): P_ij = exp(q_i . k_j - lse_i) (causal: 0 for j > i) and
//      dS_ij = P_ij (dO_i . v_j - delta_i);
//   3. dV_j = sum_i P_ij dO_i (stored), dK_rot_j = sum_i dS_ij q_i, dQ_rot_i = scale sum_j dS_ij k_j
//      (kept in registers);
//   4. dQ_rot and dK_rot overwrite q_s and k_s, then RoPE^T on the way out.
// The harness (cpp_tests/kernels) runs it from this source on the CPU.
#pragma once

#include "attention/attention_kernels.cuh"

namespace gfcore {
namespace attention {

constexpr int kFusedBwdThreads = 256;
constexpr int kFusedBwdMaxSeq = 64;

// Shared memory of the fused temporal backward for sequence length S and head dim D (bytes).
__host__ __device__ constexpr size_t fused_bwd_smem_bytes(int S, int D) {
  return sizeof(float) * (static_cast<size_t>(S) * (2 * D + 2 * (D + 1)) +
                          2 * static_cast<size_t>(S) * (S + 1) + 2 * static_cast<size_t>(S));
}

// Grid: (sequences); block: kFusedBwdThreads; dynamic shared memory fused_bwd_smem_bytes(S, D).
template <typename scalar_t, int D>
__global__ void __launch_bounds__(kFusedBwdThreads)
attention_bwd_fused_kernel(const scalar_t* __restrict__ q, const scalar_t* __restrict__ k,
                           const scalar_t* __restrict__ v, const scalar_t* __restrict__ grad_out,
                           const scalar_t* __restrict__ out, const float* __restrict__ lse,
                           scalar_t* __restrict__ grad_q, scalar_t* __restrict__ grad_k,
                           scalar_t* __restrict__ grad_v, Layout lq, Layout lk, Layout lv,
                           Layout lg, Layout l_out, Layout ll, Layout lo, Problem pb) {
  constexpr int kPerThread = (kFusedBwdMaxSeq * D + kFusedBwdThreads - 1) / kFusedBwdThreads;
  const int S = pb.seq_len;
  GFCORE_DYNAMIC_SHARED(float, smem_fused);
  float* q_s = smem_fused;               // [S][D] rotated, times scale; later dQ_rot
  float* do_s = q_s + S * D;             // [S][D]
  float* k_s = do_s + S * D;             // [S][D + 1] rotated; later dK_rot
  float* v_s = k_s + S * (D + 1);        // [S][D + 1]
  float* p_s = v_s + S * (D + 1);        // [S][S + 1] P
  float* ds_s = p_s + S * (S + 1);       // [S][S + 1] dS
  float* lse_s = ds_s + S * (S + 1);     // [S]
  float* delta_s = lse_s + S;            // [S]

  const int tid = threadIdx.x, warp = tid / kWarpSize, lane = tid % kWarpSize;
  const Sequence seq = sequence_of_block(pb);
  // No delta tensor: delta is computed here (lse stands in for the unused pointer).
  const auto in = backward_sequence(q, k, v, grad_out, lse, lse, lq, lk, lv, lg, ll, seq);
  const scalar_t* ob = out + sequence_offset(l_out, seq);

  // 1. Stage the sequence; then one warp per row for delta.
  for (int idx = tid; idx < S * D; idx += kFusedBwdThreads) {
    const int i = idx / D, d = idx % D;
    q_s[i * D + d] = load_rotated<scalar_t, D>(in.q + i * lq.seq, d, i, pb) * pb.scale;
    do_s[i * D + d] = to_float(in.grad_out[i * lg.seq + d]);
    k_s[i * (D + 1) + d] = load_rotated<scalar_t, D>(in.k + i * lk.seq, d, i, pb);
    v_s[i * (D + 1) + d] = to_float(in.v[i * lv.seq + d]);
  }
  __syncthreads();
  // delta from the staged dO: only O is read from global memory here.
  for (int i = warp; i < S; i += kFusedBwdThreads / kWarpSize) {
    float sum = 0.f;
    for (int d = lane; d < D; d += kWarpSize) sum += do_s[i * D + d] * to_float(ob[i * l_out.seq + d]);
    sum = warp_sum(sum);
    if (lane == 0) {
      delta_s[i] = sum;
      lse_s[i] = in.lse[i * ll.seq];
    }
  }
  __syncthreads();

  // 2. P and dS for every (query i, key j); consecutive threads take consecutive keys, whose
  //    padded rows of k_s and v_s sit in different banks.
  for (int idx = tid; idx < S * S; idx += kFusedBwdThreads) {
    const int i = idx / S, j = idx % S;
    float p = 0.f, ds = 0.f;
    if (!pb.causal || j <= i) {
      float s = 0.f, dp = 0.f;
      for (int d = 0; d < D; ++d) {
        s += q_s[i * D + d] * k_s[j * (D + 1) + d];
        dp += do_s[i * D + d] * v_s[j * (D + 1) + d];
      }
      p = __expf(s - lse_s[i]);
      ds = p * (dp - delta_s[i]);
    }
    p_s[i * (S + 1) + j] = p;
    ds_s[i * (S + 1) + j] = ds;
  }
  __syncthreads();

  // 3. Element (r, d) of each gradient: dV and dK_rot sum over queries i, dQ_rot over keys j.
  scalar_t* dvb = grad_v + sequence_offset(lo, seq);
  float dk_rot[kPerThread], dq_rot[kPerThread];
#pragma unroll
  for (int e = 0; e < kPerThread; ++e) {
    const int idx = tid + e * kFusedBwdThreads;
    dk_rot[e] = dq_rot[e] = 0.f;
    if (idx >= S * D) continue;
    const int r = idx / D, d = idx % D;
    float dv = 0.f, dk = 0.f, dq = 0.f;
    for (int i = 0; i < S; ++i) {
      dv += p_s[i * (S + 1) + r] * do_s[i * D + d];
      dk += ds_s[i * (S + 1) + r] * q_s[i * D + d];
      dq += ds_s[r * (S + 1) + i] * k_s[i * (D + 1) + d];
    }
    dvb[r * lo.seq + d] = static_cast<scalar_t>(dv);
    dk_rot[e] = dk;
    dq_rot[e] = dq * pb.scale;
  }
  __syncthreads();  // every read of q_s and k_s is done

  // 4. The rotated gradients replace q_s and k_s, so RoPE^T can read the partner channel.
#pragma unroll
  for (int e = 0; e < kPerThread; ++e) {
    const int idx = tid + e * kFusedBwdThreads;
    if (idx >= S * D) continue;
    const int r = idx / D, d = idx % D;
    q_s[r * D + d] = dq_rot[e];
    k_s[r * (D + 1) + d] = dk_rot[e];
  }
  __syncthreads();
  scalar_t* dqb = grad_q + sequence_offset(lo, seq);
  scalar_t* dkb = grad_k + sequence_offset(lo, seq);
  for (int idx = tid; idx < S * D; idx += kFusedBwdThreads) {
    const int r = idx / D, d = idx % D;
    dqb[r * lo.seq + d] = static_cast<scalar_t>(unrotate_grad<D>(q_s + r * D, d, r, pb));
    dkb[r * lo.seq + d] = static_cast<scalar_t>(unrotate_grad<D>(k_s + r * (D + 1), d, r, pb));
  }
}

}  // namespace attention
}  // namespace gfcore
