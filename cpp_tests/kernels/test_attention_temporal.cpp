// Harness cases of the temporal pass: the tensor-core kernels that hold whole sequences
// (T <= 64 on sm80+), the streaming tensor-core kernels for T > 64, the fp32-FMA kernels on sm70.
#include "attention_cases.h"

namespace {

using namespace attention_cases;

const bool registered = [] {
  // T = 1 and 8 (padded to 16: four sequences per CTA, the last CTA partly empty), T = 16 (a
  // full tile), T = 17 (padded to 32: two sequences per CTA), T = 33 and 64 (one sequence per
  // CTA; D = 128 at T = 33 is the largest shared memory), T = 70 (the streaming kernels).
  const Spec temporal[] = {{1, 1, 5, 2, 64},   {1, 8, 3, 3, 32},  {1, 16, 2, 2, 128}, {1, 17, 3, 2, 32},
                           {1, 33, 2, 1, 128}, {1, 64, 2, 1, 64}, {1, 70, 2, 1, 64}};
  int n = 0;
  for (Spec s : temporal) {
    s.temporal = true;
    s.packed = n % 2 == 1;
    s.strided_grad = n % 2 == 0;
    s.arch = 90;
    for (bool causal : {false, true})
      for (bool rope : {false, true}) {
        s.causal = causal;
        s.rope = rope;
        add<bf16, true>(s);
        add<fp16, true>(s);
      }
    ++n;
  }
  // Views not 16-byte aligned: the kernels fall back to 2-byte loads.
  for (bool rope : {false, true}) {
    Spec s{2, 24, 2, 2, 64, true, true, rope, false, false, 90};
    s.misaligned = true;
    add<bf16, true>(s);
    add<fp16, true>(s);
  }
  // T = 64, D = 128: the whole-sequence kernels on the A100, the FMA kernels on the V100; T = 70
  // on the A100: the streaming kernels.
  for (int arch : {80, 70}) {
    Spec s{1, 64, 1, 1, 128, true, true, true, true, false, arch};
    add<bf16, true>(s);
  }
  add<fp16, true>(Spec{1, 70, 1, 2, 128, true, false, true, false, true, 80});
  return true;
}();

}  // namespace
