// The tensor form of the column-sum second stage (sum_partials.cuh).
#include "alignment/cuda_common.cuh"
#include "alignment/sum_partials.cuh"

namespace gfcore {
namespace alignment {

at::Tensor sum_partials(const at::Tensor& partial) {
  const int64_t groups = partial.size(0), cols = partial.size(1);
  auto out = at::empty({cols}, partial.options());
  C10_CUDA_CHECK(launch_sum_partials(partial.const_data_ptr<float>(), out.mutable_data_ptr<float>(), groups, cols,
                                     at::cuda::getCurrentCUDAStream()));
  return out;
}

}  // namespace alignment
}  // namespace gfcore
