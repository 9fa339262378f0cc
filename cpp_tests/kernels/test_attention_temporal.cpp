// Harness cases of the temporal pass: fp32-FMA forward, the one-kernel backward (T <= 64) and the three-kernel fallback.
#include "attention_cases.h"

namespace {

using namespace attention_cases;

const bool registered = [] {
  // Temporal: T = 1, T = 17 and 33 (one and two 32-row tiles), T = 64 (the largest one-kernel
  // backward; at D = 128 its 161 KiB must fit the A100), T = 70 (the three-kernel fallback).
  const Spec temporal[] = {{1, 1, 5, 2, 64}, {1, 17, 3, 2, 32}, {1, 33, 2, 1, 128}, {1, 64, 2, 1, 64},
                           {1, 70, 2, 1, 64}};
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
  for (int arch : {80, 70}) {  // T = 64, D = 128: one kernel on the A100, three on the V100
    Spec s{1, 64, 1, 1, 128, true, true, true, true, false, arch};
    add<bf16, true>(s);
  }
  return true;
}();

}  // namespace
