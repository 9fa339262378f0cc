// Harness cases of the spatial pass: tensor cores on sm_80/sm_90, fp32-FMA tiles on sm_70.
#include "attention/rope.cuh"
#include "attention_cases.h"

namespace {

using namespace attention_cases;

// gfcore::rope_qk (rope.cuh): q and k rotated in one launch, from packed or separate views,
// against the float64 rotation of the rounded inputs; forward and adjoint.
struct RopeSpec {
  int64_t B, T, P, H, D;
  bool temporal, packed, adjoint;
};

template <typename T>
void rope_case(const RopeSpec& r) {
  const int64_t n = r.B * r.T * r.P * r.H * r.D, S = r.temporal ? r.T : r.P, half = r.D / 2;
  // Packed: q and k are views 0 and 1 of a [B, T, P, 3, H, D] buffer; else two contiguous tensors.
  const int64_t slots = r.packed ? 3 : 1;
  const RopeStrides st{r.T * r.P * slots * r.H * r.D, r.P * slots * r.H * r.D, slots * r.H * r.D, r.D};
  std::vector<double> q_all, k_all, c, sn;
  DeviceBuffer<T> qbuf(n * slots), kbuf(r.packed ? 1 : n), qo(n), ko(n);
  DeviceBuffer<float> cos(S * r.D), sin(S * r.D);
  qbuf.upload(random_values<T>(n * slots, 31, 1.0, &q_all));
  if (!r.packed) kbuf.upload(random_values<T>(n, 32, 1.0, &k_all));
  cos.upload(random_values<float>(S * r.D, 33, 1.0, &c));
  sin.upload(random_values<float>(S * r.D, 34, 1.0, &sn));
  const T* q = qbuf.ptr;
  const T* k = r.packed ? qbuf.ptr + r.H * r.D : kbuf.ptr;
  const RopeShape shape{r.B, r.T, r.P, r.H, r.D, r.temporal};
  harness::check_launch(launch_rope_qk<T>(q, k, qo.ptr, ko.ptr, st, st, cos.ptr, sin.ptr, shape, r.adjoint, harness::device_limits(),
                                          nullptr),
                        "rope_qk");
  const double u = DType<T>::unit_roundoff;
  for (int which = 0; which < 2; ++which) {
    const std::vector<double>& src = which == 0 || r.packed ? q_all : k_all;
    const int64_t offset = which == 1 && r.packed ? r.H * r.D : 0;
    std::vector<double> want(n), tol(n);
    for (int64_t row = 0; row < n / r.D; ++row) {
      const int64_t h = row % r.H, p = (row / r.H) % r.P, t = (row / (r.H * r.P)) % r.T, b = row / (r.H * r.P * r.T);
      const int64_t in = offset + b * st.b + t * st.t + p * st.p + h * st.h, pos = (r.temporal ? t : p) * r.D;
      for (int64_t j = 0; j < half; ++j) {
        const double x1 = src[in + j], x2 = src[in + j + half];
        const double c1 = c[pos + j], c2 = c[pos + j + half], s1 = sn[pos + j], s2 = sn[pos + j + half];
        const double y1 = r.adjoint ? x1 * c1 + x2 * s2 : x1 * c1 - x2 * s1;
        const double y2 = r.adjoint ? x2 * c2 - x1 * s1 : x2 * c2 + x1 * s2;
        const double m1 = std::fabs(x1 * c1) + std::fabs(r.adjoint ? x2 * s2 : x2 * s1);
        const double m2 = std::fabs(x2 * c2) + std::fabs(r.adjoint ? x1 * s1 : x1 * s2);
        want[row * r.D + j] = y1;
        want[row * r.D + j + half] = y2;
        // fp32 products and sum (3 roundings at most, fused or not), then the output rounding.
        tol[row * r.D + j] = u * std::fabs(y1) + 3 * 0x1p-24 * m1 + DType<T>::subnormal_roundoff;
        tol[row * r.D + j + half] = u * std::fabs(y2) + 3 * 0x1p-24 * m2 + DType<T>::subnormal_roundoff;
      }
    }
    harness::expect_close(std::string("rope_qk ") + (which ? "k" : "q"), (which ? ko : qo).download(), want, tol);
  }
}

template <typename T>
void add_rope(const RopeSpec& r) {
  char buf[160];
  std::snprintf(buf, sizeof buf, "rope_qk/%s/B%ldT%ldP%ldH%ldD%ld/%s%s%s", DType<T>::name, long(r.B), long(r.T),
                long(r.P), long(r.H), long(r.D), r.temporal ? "temporal" : "spatial", r.packed ? "/packed" : "",
                r.adjoint ? "/adjoint" : "");
  harness::registry().push_back({buf, "attention", [r] { rope_case<T>(r); }});
}

const bool registered = [] {
  // Spatial: 7 x 9 grids at each head dim; several key tiles with ragged ends (64-row tiles at
  // D = 32/64, 32-row tiles at D = 128).
  const Spec spatial[] = {{2, 2, 63, 2, 32}, {1, 2, 63, 2, 64}, {1, 1, 63, 2, 128}, {2, 1, 130, 1, 64},
                          {1, 1, 70, 1, 128}};
  int n = 0;
  for (Spec s : spatial) {
    s.temporal = false;
    s.causal = false;
    s.packed = n % 2 == 0;
    s.strided_grad = n % 2 == 1;
    s.arch = 90;
    for (bool rope : {false, true}) {
      s.rope = rope;
      add<bf16, false>(s);
      add<fp16, false>(s);
    }
    ++n;
  }
  // The fp32-FMA spatial kernels (devices before sm_80) and the A100's limits.
  // Hostile data (Spec::hostile): saturated scores and RoPE tables with distinct halves.
  for (Spec s : {Spec{2, 1, 63, 2, 64}, Spec{1, 1, 70, 1, 128}, Spec{1, 1, 40, 1, 32}}) {
    s.temporal = false;
    s.causal = false;
    s.rope = true;
    s.hostile = true;
    s.arch = 90;
    add<fp16, false>(s);  // its P goes subnormal and overflows first
  }
  {  // the FMA kernels' own RoPE (load_rotated) and online softmax on the V100
    Spec s{1, 2, 40, 1, 32, false, false, true, false, false, 70};
    s.hostile = true;
    add<fp16, false>(s);
  }
  for (Spec s : {Spec{1, 1, 63, 2, 64}, Spec{1, 1, 70, 1, 128}, Spec{1, 2, 40, 1, 32}}) {
    s.temporal = false;
    s.causal = false;
    s.rope = true;
    s.packed = true;
    s.strided_grad = true;
    s.arch = 70;
    add<bf16, false>(s);
    add<fp16, false>(s);
    s.arch = 80;
    add<fp16, false>(s);
  }
  // RoPE on q and k in one launch (the SDPA path): ragged sizes, both axes, packed views.
  for (const RopeSpec& r : {RopeSpec{2, 3, 7, 2, 16, false, true, false}, RopeSpec{1, 5, 3, 3, 64, true, false, false},
                            RopeSpec{2, 3, 7, 2, 16, false, false, true}, RopeSpec{1, 4, 9, 1, 32, true, true, true}}) {
    add_rope<float>(r);
    add_rope<bf16>(r);
    add_rope<fp16>(r);
  }
  return true;
}();

}  // namespace
