// CUDA implementations of the fastattr ops: the shared op bodies (op_impl.h)
// launched as grid-stride loops on the current stream.
#include <algorithm>
#include <cstdint>

#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "op_impl.h"

namespace fastattr {
namespace {

template <typename Kernel>
__global__ void grid_stride_kernel(int64_t n, Kernel kernel) {
  const int64_t stride = static_cast<int64_t>(blockDim.x) * gridDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += stride) {
    kernel(i);
  }
}

// One thread per output element; elements beyond the grid are strided over.
struct CudaLaunch {
  static constexpr int kThreads = 256;
  // 1M threads: several waves on any current GPU, so capping costs nothing.
  static constexpr int64_t kMaxBlocks = 4096;

  template <typename Kernel>
  static void for_each(c10::Device device, int64_t n, int64_t /*work_per_element*/,
                       const Kernel& kernel) {
    if (n == 0) {
      return;
    }
    const c10::cuda::CUDAGuard guard(device);
    const int64_t blocks = std::min((n + kThreads - 1) / kThreads, kMaxBlocks);
    grid_stride_kernel<<<static_cast<unsigned int>(blocks), kThreads, 0,
                         c10::cuda::getCurrentCUDAStream()>>>(n, kernel);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }

  // One thread per (group, element) on the GPU, each folding its group's rows.
  template <typename Kernel>
  static void for_each_group_block(c10::Device device, int64_t groups, int64_t cols,
                                   int64_t work_per_element, const Kernel& kernel) {
    for_each(device, groups * cols, work_per_element, kernel);
  }

  // Still one thread per element on the GPU (kernel(i) does the row's index
  // arithmetic itself): the CPU's row-wise walk buys nothing here.
  template <typename Kernel>
  static void for_each_row(c10::Device device, int64_t rows, int64_t cols,
                           int64_t work_per_element, const Kernel& kernel) {
    for_each(device, rows * cols, work_per_element, kernel);
  }
};

}  // namespace
}  // namespace fastattr

TORCH_LIBRARY_IMPL(fastattr, CUDA, m) {
  using fastattr::CudaLaunch;
  m.impl("philox4x32", &fastattr::philox4x32_op<CudaLaunch>);
  m.impl("generate_rows", &fastattr::generate_rows_op<CudaLaunch>);
  m.impl("accumulate_", &fastattr::accumulate_op<CudaLaunch>);
  m.impl("stabilize", &fastattr::stabilize_op<CudaLaunch>);
  m.impl("relative_squares", &fastattr::relative_squares_op<CudaLaunch>);
}
