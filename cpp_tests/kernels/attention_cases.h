// The attention harness cases' shared part: the case runner and its float64 reference.
// test_attention_spatial.cpp and test_attention_temporal.cpp register the cases (two files,
// so each pass's kernels compile in parallel and a mutation rebuilds one).
//
// Forward and backward of
// both passes through the same entry points as the torch extension (attention_launch.cuh), so
// the device decides the kernels: tensor cores for the spatial pass on sm_80/sm_90, fp32-FMA
// tiles on sm_70 and for the temporal pass, the one-kernel temporal backward for T <= 64 and
// the three-kernel path above. Shapes follow python_tests/test_attention_cuda.py (cut down:
// tails matter more than size): S not a multiple of the tile, T = 1, T > 64, D = 32/64/128,
// packed qkv views, a strided grad_out, causal, RoPE.
//
// The float64 reference rounds where the algorithm does: the tensor-core kernels stage the
// RoPE-rotated q and k as 16-bit values (rotation in fp32, as the kernel computes it), and the
// backward is checked as a function of the forward's actual out and lse (what autograd hands
// it). What remains is fp32 accumulation, the 16-bit rounding of P and dS fed to the tensor
// cores, and the output rounding; the tolerances bound exactly those (see tolerance()).
#pragma once

#include <algorithm>
#include <set>
#include <utility>

#include "attention/attention_launch.cuh"
#include "harness.h"

namespace attention_cases {

using namespace gfcore;
using namespace gfcore::attention;
using harness::DeviceBuffer;
using harness::DType;
using harness::gamma32;
using harness::random_values;

struct Spec {
  int64_t B, T, P, H, D;
  bool temporal, causal, rope, packed, strided_grad;
  int arch;
  bool misaligned = false;  // q, k, v start 2 bytes past a 16-byte boundary: no 16-byte loads
  // Data on which every term of the formula matters: q and k drawn at scale 6 (scores of standard
  // deviation 36: softmax saturates, fp16 P and dS go subnormal, and without the row-max
  // subtraction exp overflows, in fp16 staging from s > 11 and in fp32 from s > 88)
  // and RoPE tables whose two halves and positions all differ (with the usual tables,
  // cos[d] == cos[d + D/2], so reading the wrong half goes unseen).
  bool hostile = false;
};

inline std::string name_of(const Spec& s, const char* dtype) {
  char buf[200];
  std::snprintf(buf, sizeof buf, "%s/%s/B%ldT%ldP%ldH%ldD%ld%s%s%s%s/sm_%d", s.temporal ? "temporal" : "spatial",
                dtype, long(s.B), long(s.T), long(s.P), long(s.H), long(s.D), s.causal ? "/causal" : "",
                s.rope ? "/rope" : "", s.packed ? "/packed" : "", s.strided_grad ? "/strided_grad" : "", s.arch);
  if (s.misaligned) std::snprintf(buf + std::strlen(buf), sizeof buf - std::strlen(buf), "/misaligned");
  if (s.hostile) std::snprintf(buf + std::strlen(buf), sizeof buf - std::strlen(buf), "/hostile");
  return buf;
}

// A [B, T, P, H, D] operand on the host: values (as stored, in float64) and element strides.
struct HostView {
  const std::vector<double>* data;
  size_t offset;
  Strides s;
  double at(int64_t b, int64_t t, int64_t p, int64_t h, int64_t d) const {
    return (*data)[offset + b * s.b + t * s.t + p * s.p + h * s.h + d];
  }
};

template <typename T>
float to_stage(float x) {  // what stage_rows keeps of a value: 16-bit rounding
  return static_cast<float>(T(x));
}

template <typename T, bool kTemporal>
void attention_case(const Spec& c) {
  const double u = DType<T>::unit_roundoff;
  const DeviceLimits dev = harness::device_limits();
  const int64_t B = c.B, Tn = c.T, P = c.P, H = c.H, D = c.D, N = B * Tn * P * H * D;
  const int64_t S = c.temporal ? Tn : P, other_n = c.temporal ? P : Tn;
  const bool mma = has_mma_16816(dev);  // tensor cores (both passes): 16-bit staging, P and dS rounded
  const double scale = 1.0 / std::sqrt(double(D));
  const double qk_sigma = c.hostile ? 6.0 : 1.0;  // v and dO stay at 1 (packed: all three at 6)
  const std::string name = name_of(c, DType<T>::name);

  // q, k, v: three contiguous tensors, or the strided views of one packed [B, T, P, 3, H, D].
  std::vector<double> qkv_ref[3];
  std::vector<DeviceBuffer<T>*> owned;
  const T* dev_ptr[3];
  Strides strides[3];
  size_t host_offset[3] = {0, 0, 0};
  DeviceBuffer<T> packed_buf(c.packed ? 3 * N : 1);
  if (c.packed) {
    std::vector<double> all;
    packed_buf.upload(random_values<T>(3 * N, 21, qk_sigma, &all));
    for (int i = 0; i < 3; ++i) {
      qkv_ref[i] = all;
      strides[i] = {Tn * P * 3 * H * D, P * 3 * H * D, 3 * H * D, D};
      host_offset[i] = i * H * D;
      dev_ptr[i] = packed_buf.ptr + i * H * D;
    }
  } else {
    for (int i = 0; i < 3; ++i) {
      const int64_t shift = c.misaligned ? 1 : 0;
      owned.push_back(new DeviceBuffer<T>(N + shift));
      std::vector<T> values = random_values<T>(N, 22 + i, i < 2 ? qk_sigma : 1.0, &qkv_ref[i]);
      values.insert(values.begin(), shift, T(0.f));
      owned.back()->upload(values);
      strides[i] = contiguous_strides(Tn, P, H, D);
      dev_ptr[i] = owned.back()->ptr + shift;
    }
  }
  const HostView hq{&qkv_ref[0], host_offset[0], strides[0]}, hk{&qkv_ref[1], host_offset[1], strides[1]},
      hv{&qkv_ref[2], host_offset[2], strides[2]};

  // RoPE tables over the attended axis: rotate-half, frequencies 10000^(-2i/D); hostile: every
  // column its own frequency and phase, so the halves differ (the kernels take any tables).
  std::vector<float> cos_t(S * D), sin_t(S * D);
  for (int64_t pos = 0; pos < S; ++pos)
    for (int64_t d = 0; d < D; ++d) {
      const double freq = std::pow(10000.0, -2.0 * double(c.hostile ? d : d % (D / 2)) / double(D));
      const double angle = pos * freq + (c.hostile ? 0.37 * double(d) + 0.11 : 0.0);
      cos_t[pos * D + d] = static_cast<float>(std::cos(angle));
      sin_t[pos * D + d] = static_cast<float>(std::sin(angle));
    }
  DeviceBuffer<float> rope_cos(S * D), rope_sin(S * D);
  rope_cos.upload(cos_t);
  rope_sin.upload(sin_t);

  const Attention a{B, Tn, P, H, D, c.temporal, c.causal, static_cast<float>(scale),
                    c.rope ? rope_cos.ptr : nullptr, c.rope ? rope_sin.ptr : nullptr};
  DeviceBuffer<T> out(N);
  DeviceBuffer<float> lse(B * Tn * P * H);
  const ForwardArgs<T> f{dev_ptr[0], dev_ptr[1], dev_ptr[2], strides[0], strides[1], strides[2], out.ptr, lse.ptr};
  cudaError_t err;
  if constexpr (kTemporal) err = temporal_forward(a, f, dev, nullptr);
  else err = spatial_forward(a, f, dev, nullptr);
  harness::check_launch(err, "forward");
  const std::vector<T> out_k = out.download();
  const std::vector<float> lse_k = lse.download();

  // dO: random; "strided" stores it as [B, P, T, H, D] and views it as [B, T, P, H, D].
  std::vector<double> go_ref;
  DeviceBuffer<T> grad_out(N);
  grad_out.upload(random_values<T>(N, 31, 1.0, &go_ref));
  const Strides sg = c.strided_grad ? Strides{P * Tn * H * D, H * D, Tn * H * D, D} : contiguous_strides(Tn, P, H, D);
  const HostView hg{&go_ref, 0, sg};
  DeviceBuffer<T> gq(N), gk(N), gv(N);
  DeviceBuffer<float> delta(B * Tn * P * H);
  const BackwardArgs<T> bw{grad_out.ptr, dev_ptr[0], dev_ptr[1], dev_ptr[2], sg, strides[0], strides[1], strides[2],
                           out.ptr, lse.ptr, gq.ptr, gk.ptr, gv.ptr, delta.ptr};
  if constexpr (kTemporal) err = temporal_backward(a, bw, dev, nullptr);
  else err = spatial_backward(a, bw, dev, nullptr);
  harness::check_launch(err, "backward");

  // ---- float64 reference, sequence by sequence ----
  const Strides so = contiguous_strides(Tn, P, H, D);
  std::vector<double> o_ref(N), o_tol(N), l_ref(B * Tn * P * H), l_tol(B * Tn * P * H), dq_ref(N), dq_tol(N),
      dk_ref(N), dk_tol(N), dv_ref(N), dv_tol(N);
  const double g_acc = 8 * gamma32(double(D + S + 8));
  const double u_p = mma ? u : 0.0;  // P and dS rounded to 16 bits before their products
  // ... where values below the dtype's smallest normal round absolutely (fp16: 2^-25 below
  // 6.1e-5, which saturated scores reach), not relatively.
  const double sub_p = mma ? DType<T>::subnormal_roundoff : 0.0;
  std::vector<double> qr(S * D), kr(S * D), vv(S * D), go(S * D), ok(S * D), pm(S * S), sm(S * S), ds(S * S),
      mds(S * S), lse_row(S), amax(S), gq_rot(S * D), gq_tol(S * D), gk_rot(S * D), gk_tol(S * D);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t o = 0; o < other_n; ++o)
      for (int64_t h = 0; h < H; ++h) {
        auto tp = [&](int64_t i) { return c.temporal ? std::pair<int64_t, int64_t>{i, o} : std::pair<int64_t, int64_t>{o, i}; };
        auto lin = [&](const Strides& st, int64_t i, int64_t d) {
          const auto [t, p] = tp(i);
          return b * st.b + t * st.t + p * st.p + h * st.h + d;
        };
        // Rotate in fp32 as load_rotated does; stage to 16 bits where the kernel does.
        auto rotated = [&](const HostView& x, int64_t i, int64_t d) {
          const auto [t, p] = tp(i);
          const float xv = static_cast<float>(x.at(b, t, p, h, d));
          if (!c.rope) return mma ? double(to_stage<T>(xv)) : double(xv);
          const int64_t half = D / 2;
          const float partner = static_cast<float>(x.at(b, t, p, h, d < half ? d + half : d - half));
          const float r = xv * cos_t[i * D + d] + (d < half ? -partner : partner) * sin_t[i * D + d];
          return mma ? double(to_stage<T>(r)) : double(r);
        };
        for (int64_t i = 0; i < S; ++i)
          for (int64_t d = 0; d < D; ++d) {
            const auto [t, p] = tp(i);
            qr[i * D + d] = rotated(hq, i, d);
            kr[i * D + d] = rotated(hk, i, d);
            vv[i * D + d] = hv.at(b, t, p, h, d);
            go[i * D + d] = hg.at(b, t, p, h, d);
            ok[i * D + d] = static_cast<float>(out_k[lin(so, i, d)]);
          }
        // Forward.
        for (int64_t i = 0; i < S; ++i) {
          double mx = -INFINITY, a_max = 0;
          for (int64_t j = 0; j < S; ++j) {
            double s = 0, s_mag = 0;
            for (int64_t d = 0; d < D; ++d) {
              s += qr[i * D + d] * kr[j * D + d];
              s_mag += std::fabs(qr[i * D + d] * kr[j * D + d]);
            }
            sm[i * S + j] = s * scale;
            a_max = std::max(a_max, s_mag * scale);
            if (!c.causal || j <= i) mx = std::max(mx, sm[i * S + j]);
          }
          amax[i] = a_max;
          double sum = 0;
          for (int64_t j = 0; j < S; ++j) sum += (!c.causal || j <= i) ? std::exp(sm[i * S + j] - mx) : 0.0;
          lse_row[i] = mx + std::log(sum);
          for (int64_t j = 0; j < S; ++j)
            pm[i * S + j] = (!c.causal || j <= i) ? std::exp(sm[i * S + j] - lse_row[i]) : 0.0;
          const size_t li = lin(contiguous_strides(Tn, P, H, 1), i, 0);
          l_ref[li] = lse_row[i];
          l_tol[li] = g_acc * (1 + a_max) + 4 * 0x1p-24 * std::fabs(lse_row[i]);
          for (int64_t d = 0; d < D; ++d) {
            double acc = 0, mag = 0, v_sum = 0;
            for (int64_t j = 0; j < S; ++j) {
              acc += pm[i * S + j] * vv[j * D + d];
              mag += pm[i * S + j] * std::fabs(vv[j * D + d]);
              if (!c.causal || j <= i) v_sum += std::fabs(vv[j * D + d]);
            }
            o_ref[lin(so, i, d)] = acc;
            o_tol[lin(so, i, d)] = u * std::fabs(acc) + (2 * u_p + g_acc * (1 + a_max)) * mag + sub_p * v_sum +
                                   DType<T>::subnormal_roundoff;
          }
        }
        // Backward from the kernel's out and lse: P = exp(s - lse_kernel), delta = dO . O_kernel.
        for (int64_t i = 0; i < S; ++i) {
          const double lk = lse_k[lin(contiguous_strides(Tn, P, H, 1), i, 0)];
          double delta_i = 0, delta_mag = 0;
          for (int64_t d = 0; d < D; ++d) {
            delta_i += go[i * D + d] * ok[i * D + d];
            delta_mag += std::fabs(go[i * D + d] * ok[i * D + d]);
          }
          for (int64_t j = 0; j < S; ++j) {
            const bool vis = !c.causal || j <= i;
            const double p = vis ? std::exp(sm[i * S + j] - lk) : 0.0;
            double dp = 0, dp_mag = 0;
            for (int64_t d = 0; d < D; ++d) {
              dp += go[i * D + d] * vv[j * D + d];
              dp_mag += std::fabs(go[i * D + d] * vv[j * D + d]);
            }
            pm[i * S + j] = p;
            ds[i * S + j] = p * (dp - delta_i);
            // What an fp32 error in s, dP or delta can move dS by (in units of g_acc).
            mds[i * S + j] = p * (dp_mag + delta_mag + std::fabs(dp - delta_i) * (1 + amax[i]));
          }
        }
        for (int64_t r = 0; r < S; ++r)
          for (int64_t d = 0; d < D; ++d) {
            double dq = 0, dq_m = 0, dk = 0, dk_m = 0, dv = 0, dv_m = 0;
            for (int64_t n = 0; n < S; ++n) {
              // subnormal rounding of the 16-bit P[n, r] and dS entries that are not masked
              const double sub_rn = (!c.causal || n <= r) ? sub_p : 0.0, sub_nr = (!c.causal || r <= n) ? sub_p : 0.0;
              dq += ds[r * S + n] * kr[n * D + d];
              dq_m += (u_p * 2 * std::fabs(ds[r * S + n]) + g_acc * mds[r * S + n] + sub_rn) * std::fabs(kr[n * D + d]);
              dk += ds[n * S + r] * qr[n * D + d];
              dk_m += (u_p * 2 * std::fabs(ds[n * S + r]) + g_acc * mds[n * S + r] + sub_nr) * std::fabs(qr[n * D + d]);
              dv += pm[n * S + r] * go[n * D + d];
              dv_m += ((2 * u_p + g_acc * (1 + amax[n])) * pm[n * S + r] + sub_nr) * std::fabs(go[n * D + d]);
            }
            gq_rot[r * D + d] = dq * scale;
            gq_tol[r * D + d] = dq_m * scale;
            gk_rot[r * D + d] = dk * scale;
            gk_tol[r * D + d] = dk_m * scale;
            dv_ref[lin(so, r, d)] = dv;
            dv_tol[lin(so, r, d)] = u * std::fabs(dv) + dv_m + DType<T>::subnormal_roundoff;
          }
        // RoPE^T: grad_x_d = cos_d g_d + (d < D/2 ? sin_{d+D/2} g_{d+D/2} : -sin_{d-D/2} g_{d-D/2}).
        for (int64_t r = 0; r < S; ++r)
          for (int64_t d = 0; d < D; ++d) {
            double vq = gq_rot[r * D + d], tq = gq_tol[r * D + d], vk = gk_rot[r * D + d], tk = gk_tol[r * D + d];
            if (c.rope) {
              const int64_t half = D / 2, pd = d < half ? d + half : d - half;
              const double cs = cos_t[r * D + d], sn = (d < half ? 1.0 : -1.0) * sin_t[r * D + pd];
              vq = cs * gq_rot[r * D + d] + sn * gq_rot[r * D + pd];
              tq = std::fabs(cs) * gq_tol[r * D + d] + std::fabs(sn) * gq_tol[r * D + pd];
              vk = cs * gk_rot[r * D + d] + sn * gk_rot[r * D + pd];
              tk = std::fabs(cs) * gk_tol[r * D + d] + std::fabs(sn) * gk_tol[r * D + pd];
            }
            dq_ref[lin(so, r, d)] = vq;
            dq_tol[lin(so, r, d)] = u * std::fabs(vq) + tq + DType<T>::subnormal_roundoff;
            dk_ref[lin(so, r, d)] = vk;
            dk_tol[lin(so, r, d)] = u * std::fabs(vk) + tk + DType<T>::subnormal_roundoff;
          }
      }
  harness::expect_close(name + " out", out_k, o_ref, o_tol);
  harness::expect_close(name + " lse", lse_k, l_ref, l_tol);
  harness::expect_close(name + " grad_v", gv.download(), dv_ref, dv_tol);
  harness::expect_close(name + " grad_q", gq.download(), dq_ref, dq_tol);
  harness::expect_close(name + " grad_k", gk.download(), dk_ref, dk_tol);
  for (auto* p : owned) delete p;
}

// Every registered attention case's dtype and spec (for check_plan_coverage).
inline std::vector<std::pair<std::string, Spec>>& registered_specs() {
  static std::vector<std::pair<std::string, Spec>> specs;
  return specs;
}

// Registers a case of one pass (a template argument, so a file instantiates one pass only).
template <typename T, bool kTemporal>
void add(Spec s) {
  s.temporal = kTemporal;
  registered_specs().push_back({DType<T>::name, s});
  harness::registry().push_back(
      {name_of(s, DType<T>::name), "attention", [s] { attention_case<T, kTemporal>(s); }, s.arch});
}

// The kernel instantiation the launch plan (attention_launch.cuh) picks for a case: the temporal
// tensor-core kernels per (dtype, D, padded T) for T <= 64, the streaming tensor-core kernels per
// (dtype, D) for the spatial pass and T > 64, the fp32-FMA kernels per (pass, dtype, D) on sm_70
// (the two passes' FMA forwards are different instantiations).
inline std::string plan_of(const std::string& dtype, const Spec& s) {
  const std::string d = "/D" + std::to_string(s.D);
  if (s.arch < 80) return std::string(s.temporal ? "fma_temporal/" : "fma_spatial/") + dtype + d;
  if (s.temporal && s.T <= kTcMaxSeq) return "temporal_tc/" + dtype + d + "/T" + std::to_string(temporal_tc_pad(s.T));
  return "mma/" + dtype + d;
}

// Fails unless every instantiation a plan can pick is run by at least one registered case.
inline void check_plan_coverage() {
  std::set<std::string> run, missing;
  for (const auto& [dtype, s] : registered_specs()) run.insert(plan_of(dtype, s));
  for (const char* dtype : {"bf16", "fp16"})
    for (int64_t D : {32, 64, 128}) {
      Spec s{1, 1, 1, 1, D, false, false, false, false, false, 70};
      for (bool temporal : {false, true})
        for (int arch : {70, 90}) {
          s.temporal = temporal;
          s.arch = arch;
          if (!run.count(plan_of(dtype, s))) missing.insert(plan_of(dtype, s));
        }
      s.temporal = true;
      s.arch = 90;
      for (int64_t T : {16, 32, 64}) {
        s.T = T;
        if (!run.count(plan_of(dtype, s))) missing.insert(plan_of(dtype, s));
      }
    }
  if (!missing.empty()) {
    std::string list;
    for (const auto& m : missing) list += " " + m;
    harness::fail_value("kernel instantiations no case runs:" + list);
  }
}

}  // namespace attention_cases
