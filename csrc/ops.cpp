// Schemas of the fastattr ops and their CPU implementations.
#include <algorithm>
#include <cstdint>

#include <ATen/Parallel.h>
#include <torch/library.h>

#include "op_impl.h"

namespace fastattr {
namespace {

// Work per parallel task, in units of one cheap elementwise step (ATen's
// at::internal::GRAIN_SIZE, which lives in the heavy TensorIterator.h).
constexpr int64_t kGrainWork = 32768;

// at::parallel_for over output elements; a call whose total work is below one
// grain runs inline on the calling thread, so tiny chunks pay no thread hop.
struct CpuLaunch {
  template <typename Kernel>
  static void for_each(c10::Device /*device*/, int64_t n, int64_t work_per_element,
                       const Kernel& kernel) {
    const int64_t grain = std::max<int64_t>(1, kGrainWork / work_per_element);
    at::parallel_for(0, n, grain, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        kernel(i);
      }
    });
  }

  // rows x cols elements, walked row by row: the kernel's per-row index
  // arithmetic (64-bit divisions, the bulk of a cheap element's cost) is
  // done once per row instead of once per element.
  template <typename Kernel>
  static void for_each_row(c10::Device /*device*/, int64_t rows, int64_t cols,
                           int64_t work_per_element, const Kernel& kernel) {
    const int64_t grain = std::max<int64_t>(1, kGrainWork / std::max<int64_t>(1, work_per_element * cols));
    at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const auto row = kernel.row(r);
        for (int64_t d = 0; d < cols; ++d) {
          kernel.element(row, d);
        }
      }
    });
  }
};

}  // namespace
}  // namespace fastattr

// The arithmetic of each op is specified in csrc/README.md.
TORCH_LIBRARY(fastattr, m) {
  m.def("philox4x32(Tensor counters, Tensor key) -> Tensor");
  m.def(
      "generate_rows(Tensor inputs, Tensor? baselines, Tensor? alphas, int n_samples, str noise, "
      "float scale, int seed, int stream, int row_start, int row_count, int example_offset) "
      "-> Tensor");
  m.def(
      "accumulate_(Tensor(a!) acc, Tensor(b!)? acc_sq, Tensor values, Tensor weights, "
      "int row_start, int group_size, int group_offset) -> ()");
}

TORCH_LIBRARY_IMPL(fastattr, CPU, m) {
  using fastattr::CpuLaunch;
  m.impl("philox4x32", &fastattr::philox4x32_op<CpuLaunch>);
  m.impl("generate_rows", &fastattr::generate_rows_op<CpuLaunch>);
  m.impl("accumulate_", &fastattr::accumulate_op<CpuLaunch>);
}
