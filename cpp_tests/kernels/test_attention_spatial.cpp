// Harness cases of the spatial pass: tensor cores on sm_80/sm_90, fp32-FMA tiles on sm_70.
#include "attention_cases.h"

namespace {

using namespace attention_cases;

const bool registered = [] {
  // Spatial: 7 x 9 grids at each head dim; several key tiles with ragged ends (64-row tiles at
  // D = 32/64, 32-row tiles at D = 128).
  const Spec spatial[] = {{1, 2, 63, 2, 32}, {1, 2, 63, 2, 64}, {1, 1, 63, 2, 128}, {1, 1, 130, 1, 64},
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
  for (Spec s : {Spec{1, 1, 63, 2, 64}, Spec{1, 1, 70, 1, 128}, Spec{1, 2, 40, 1, 32}}) {
    s.temporal = false;
    s.causal = false;
    s.rope = true;
    s.packed = true;
    s.strided_grad = true;
    s.arch = 70;
    add<bf16, false>(s);
    s.arch = 80;
    add<fp16, false>(s);
  }
  return true;
}();

}  // namespace
