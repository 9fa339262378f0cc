// Harness cases of the temporal pass: the tensor-core kernels that hold whole sequences
// (T <= 64 on sm80+), the streaming tensor-core kernels for T > 64, the fp32-FMA kernels on sm70.
#include "attention_cases.h"

namespace {

using namespace attention_cases;

// 17 clips x 16 frames x 4096 patches x 16 heads x D 128: 1,114,112 sequences, 2.28e9 elements.
void check_any_batch_plan() {
  const Attention a{17, 16, 4096, 16, 128, true, true, 0.1f, nullptr, nullptr};
  const Problem pb = make_problem(a);
  const int64_t sequences = a.B * a.P * a.H;
  const dim3 streaming = make_grid(pb, kMmaBlockM), tc = temporal_tc_grid(pb, TemporalTiles<128, 16>::kSeqs);
  if (int64_t(streaming.x) != sequences || streaming.y != 1 ||
      int64_t(tc.x) != (sequences + TemporalTiles<128, 16>::kSeqs - 1) / TemporalTiles<128, 16>::kSeqs)
    harness::fail_value("any_batch: grid " + std::to_string(streaming.x) + " / " + std::to_string(tc.x));
#if defined(GFCORE_SIMT)  // sequence_at / sequence_offset are device functions under nvcc
  // The last sequence (b 16, patch 4095, head 15) starts past 2^31 elements.
  const Sequence last = sequence_at(sequences - 1, pb);
  const int64_t offset = sequence_offset(layout_of(contiguous_strides(a.T, a.P, a.H, a.D), true), last);
  const int64_t want = int64_t(16) * (16 * 4096 * 16 * 128) + 4095 * (16 * 128) + 15 * 128;
  if (last.b != 16 || last.other != 4095 || last.h != 15 || offset != want || offset < (int64_t(1) << 31))
    harness::fail_value("any_batch: last sequence offset " + std::to_string(offset) + ", want " + std::to_string(want));
#endif
  // More sequences than a grid's x dimension holds: refused with a message, not wrapped.
  const Attention huge{1 << 20, 2, 4096, 1, 64, true, false, 0.1f, nullptr, nullptr};
  try {
    make_grid(make_problem(huge), kMmaBlockM);
    harness::fail_value("any_batch: 2^32 sequences were not refused");
  } catch (const std::invalid_argument& e) {
    if (std::string(e.what()).find("too many sequences") == std::string::npos)
      harness::fail_value(std::string("any_batch: unexpected refusal: ") + e.what());
  }
}

const bool registered = [] {
  // T = 1 and 8 (padded to 16: four sequences per CTA, the last CTA partly empty), T = 16 (a
  // full tile), T = 17 (padded to 32: two sequences per CTA), T = 33 and 64 (one sequence per
  // CTA; D = 128 at T = 33 is the largest shared memory), T = 70 (the streaming kernels). With
  // T = 32 at D = 128 and T = 48 at D = 32, every (D, padded T) instantiation runs.
  const Spec temporal[] = {{1, 1, 5, 2, 64},   {1, 8, 3, 3, 32},  {1, 16, 2, 2, 128}, {1, 17, 3, 2, 32},
                           {1, 32, 2, 1, 128}, {1, 33, 2, 1, 128}, {2, 48, 2, 1, 32}, {1, 64, 2, 1, 64},
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
  // Hostile data (Spec::hostile) through the padded-16, -32 and -64 kernels and the streaming ones.
  for (Spec s : {Spec{1, 8, 3, 3, 32}, Spec{2, 17, 3, 2, 64}, Spec{1, 32, 2, 1, 128}, Spec{1, 64, 2, 1, 64},
                 Spec{1, 70, 2, 1, 64}}) {
    s.temporal = true;
    s.rope = true;
    s.arch = 90;
    s.hostile = true;
    for (bool causal : {false, true}) {  // fp16: its P and dS go subnormal and overflow first
      s.causal = causal;
      add<fp16, true>(s);
    }
  }
  // The temporal FMA forward (its own instantiation) at every dtype and head dim.
  for (int64_t D : {32, 64, 128}) {
    const Spec s{1, 20, 2, 1, D, true, true, true, false, true, 70};
    add<bf16, true>(s);
    add<fp16, true>(s);
  }
  // ... and through the fp32-FMA kernels of the V100 (their own RoPE and online softmax).
  for (bool causal : {false, true}) {
    Spec s{1, 40, 2, 1, 64, true, causal, true, false, false, 70};
    s.hostile = true;
    add<fp16, true>(s);
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

  // The launch plans themselves: every instantiation has a case (above and in the spatial file);
  // and at any batch, without running: B x P x H >= 2^20 sequences on the grid, and offsets past
  // 2^31 elements computed in 64 bits.
  harness::registry().push_back({"temporal/plan/every_instantiation_runs", "attention", check_plan_coverage, 90});
  harness::registry().push_back({"temporal/plan/any_batch", "attention", check_any_batch_plan, 90});
  return true;
}();

}  // namespace
