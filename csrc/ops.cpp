// Schemas of the fastattr ops and their CPU implementations.
#include <algorithm>
#include <cstdint>
#include <type_traits>

#include <ATen/Parallel.h>
#include <torch/library.h>

#include "op_impl.h"

namespace fastattr {
namespace {

// Work per parallel task, in units of one cheap elementwise step (ATen's
// at::internal::GRAIN_SIZE, which lives in the heavy TensorIterator.h).
constexpr int64_t kGrainWork = 32768;

// Noise values made per call of keyed_noise_run: a 2 KiB buffer, kept in L1
// between the draws and their use. Even, so runs start at even elements.
constexpr int64_t kNoiseRun = 256;

// Accumulator elements per CPU task of accumulate_: two 2 KiB running-sum
// arrays (float64), kept in L1 while the group's rows stream past.
constexpr int64_t kAccumulateBlock = 256;

// Rows [begin, end) of a row kernel (for_each_row below). A noisy row is made
// kNoiseRun elements at a time: their noise by keyed_noise_run with Draws
// (csrc/fastattr/keyed_random.h), then the elements. A row without noise is
// one loop: the AVX-512 build unrolls a loop of at most kNoiseRun elements
// fully, into code slower than the baseline build's loop.
template <typename Draws, typename Kernel>
inline void rows_task(const Kernel& kernel, int64_t cols, int64_t begin, int64_t end) {
  const Kernel k = kernel;  // a local copy: stores to out cannot alias its fields
  double z[kNoiseRun];
  for (int64_t r = begin; r < end; ++r) {
    const auto row = k.row(r);
    if (k.p.noise == Noise::none) {
      for (int64_t d = 0; d < cols; ++d) {
        k.element(row, d, 0.0);
      }
      continue;
    }
    // Runs start at even d, as keyed_noise_run needs.
    for (int64_t d0 = 0; d0 < cols; d0 += kNoiseRun) {
      const int64_t n = std::min(kNoiseRun, cols - d0);
      keyed_noise_run<Draws>(k.p.noise, k.noise_key(row), d0, n, z);
      for (int64_t i = 0; i < n; ++i) {
        k.element(row, d0 + i, z[i]);
      }
    }
  }
}

// rows_task compiled for each x86 vector width, picked at run time
// (rows_task_for_cpu): with AVX-512 or AVX2, Philox a vector of draws at a
// time (KeyedDrawsLanes) and the float and element loops vectorized for the
// same vectors (the Gaussian one needs 64-bit vector compares and blends,
// which SSE2 lacks); otherwise, baseline x86-64. flatten inlines the whole
// body into each, so that none runs another's code. AVX-512F has FMA
// instructions, but -ffp-contract=off forbids contraction: all versions do
// the same correctly rounded operations in the same order and give the same
// bits.
template <typename Kernel>
__attribute__((flatten)) void rows_task_baseline(const Kernel& kernel, int64_t cols,
                                                 int64_t begin, int64_t end) {
  rows_task<KeyedDraws>(kernel, cols, begin, end);
}

#if defined(__x86_64__)
template <typename Kernel>
__attribute__((target("avx2"), flatten)) void rows_task_avx2(const Kernel& kernel, int64_t cols,
                                                             int64_t begin, int64_t end) {
  rows_task<KeyedDrawsLanes<U64x4>>(kernel, cols, begin, end);
}

template <typename Kernel>
__attribute__((target("avx512f,prefer-vector-width=512"), flatten)) void rows_task_avx512(
    const Kernel& kernel, int64_t cols, int64_t begin, int64_t end) {
  rows_task<KeyedDrawsLanes<U64x8>>(kernel, cols, begin, end);
}

enum class VectorIsa { baseline, avx2, avx512 };

// The widest of those builds this CPU (and its OS) runs, found once.
VectorIsa cpu_vector_isa() {
  static const VectorIsa isa = __builtin_cpu_supports("avx512f") ? VectorIsa::avx512
                               : __builtin_cpu_supports("avx2")  ? VectorIsa::avx2
                                                                 : VectorIsa::baseline;
  return isa;
}
#endif

template <typename Kernel>
void rows_task_for_cpu(const Kernel& kernel, int64_t cols, int64_t begin, int64_t end) {
#if defined(__x86_64__)
  switch (cpu_vector_isa()) {
    case VectorIsa::avx512:
      return rows_task_avx512(kernel, cols, begin, end);
    case VectorIsa::avx2:
      return rows_task_avx2(kernel, cols, begin, end);
    case VectorIsa::baseline:
      break;
  }
#endif
  rows_task_baseline(kernel, cols, begin, end);
}

// Elements [begin, end) of an elementwise kernel, compiled for each x86
// vector width as rows_task is and picked the same way (elements_task_for_cpu):
// a loop GCC vectorizes, to the CPU's widest vectors (a division runs ~2x
// faster with AVX2 than with the baseline's SSE2), same bits in every build.
// A kernel with rows_together(i, end) (RelativeSquaresKernel) takes several
// elements a step, as it chooses.
template <typename Kernel>
inline void elements_task(const Kernel& kernel, int64_t begin, int64_t end) {
  const Kernel k = kernel;  // a local copy: stores through its pointers cannot alias its fields
  if constexpr (requires { k.rows_together(begin, end); }) {
    for (int64_t i = begin; i < end;) {
      i = k.rows_together(i, end);
    }
  } else {
    for (int64_t i = begin; i < end; ++i) {
      k(i);
    }
  }
}

template <typename Kernel>
__attribute__((flatten)) void elements_task_baseline(const Kernel& kernel, int64_t begin, int64_t end) {
  elements_task(kernel, begin, end);
}

#if defined(__x86_64__)
template <typename Kernel>
__attribute__((target("avx2"), flatten)) void elements_task_avx2(const Kernel& kernel, int64_t begin,
                                                                 int64_t end) {
  elements_task(kernel, begin, end);
}

template <typename Kernel>
__attribute__((target("avx512f,prefer-vector-width=512"), flatten)) void elements_task_avx512(
    const Kernel& kernel, int64_t begin, int64_t end) {
  elements_task(kernel, begin, end);
}
#endif

template <typename Kernel>
void elements_task_for_cpu(const Kernel& kernel, int64_t begin, int64_t end) {
#if defined(__x86_64__)
  switch (cpu_vector_isa()) {
    case VectorIsa::avx512:
      return elements_task_avx512(kernel, begin, end);
    case VectorIsa::avx2:
      return elements_task_avx2(kernel, begin, end);
    case VectorIsa::baseline:
      break;
  }
#endif
  elements_task_baseline(kernel, begin, end);
}

// at::parallel_for over output elements; a call whose total work is below one
// grain runs inline on the calling thread, so tiny chunks pay no thread hop.
struct CpuLaunch {
  template <typename Kernel>
  static void for_each(c10::Device /*device*/, int64_t n, int64_t work_per_element,
                       const Kernel& kernel) {
    const int64_t grain = std::max<int64_t>(1, kGrainWork / work_per_element);
    at::parallel_for(0, n, grain, [&](int64_t begin, int64_t end) {
      elements_task_for_cpu(kernel, begin, end);
    });
  }

  // groups x cols accumulators: each task takes one group and a block of
  // kAccumulateBlock contiguous elements, and walks the group's rows in order,
  // updating the block's running sums (kept in a local array) row by row:
  // contiguous, vectorizable reads of each row, and per element the same
  // serial row order as the GPU's thread-per-element fold.
  template <typename Kernel>
  static void for_each_group_block(c10::Device /*device*/, int64_t groups, int64_t cols,
                                   int64_t work_per_element, const Kernel& kernel) {
    using acc_t = std::remove_pointer_t<decltype(kernel.acc)>;
    const int64_t blocks_per_group = (cols + kAccumulateBlock - 1) / kAccumulateBlock;
    const int64_t grain = std::max<int64_t>(
        1, kGrainWork / std::max<int64_t>(1, work_per_element * kAccumulateBlock));
    at::parallel_for(0, groups * blocks_per_group, grain, [&](int64_t begin, int64_t end) {
      const Kernel k = kernel;  // a local copy: stores to acc cannot alias its fields
      acc_t sum[kAccumulateBlock];
      acc_t sum_sq[kAccumulateBlock];
      for (int64_t task = begin; task < end; ++task) {
        const int64_t g = k.p.first_group + task / blocks_per_group;
        const int64_t d0 = (task % blocks_per_group) * kAccumulateBlock;
        const int64_t n = std::min(kAccumulateBlock, cols - d0);
        for (int64_t i = 0; i < n; ++i) {
          sum[i] = k.acc[k.offset(g, d0 + i)];
          sum_sq[i] = k.acc_sq != nullptr ? k.acc_sq[k.offset(g, d0 + i)] : acc_t(0);
        }
        for (int64_t r = k.rows_begin(g), r_end = k.rows_end(g); r < r_end; ++r) {
          for (int64_t i = 0; i < n; ++i) {
            k.step(g, r, d0 + i, sum[i], sum_sq[i]);
          }
        }
        for (int64_t i = 0; i < n; ++i) {
          k.acc[k.offset(g, d0 + i)] = sum[i];
          if (k.acc_sq != nullptr) {
            k.acc_sq[k.offset(g, d0 + i)] = sum_sq[i];
          }
        }
      }
    });
  }

  // rows x cols elements, walked row by row: the kernel's per-row index
  // arithmetic (64-bit divisions, the bulk of a cheap element's cost) is
  // done once per row instead of once per element, and the row's noise is
  // made kNoiseRun elements at a time (vectorized; each Gaussian pair made
  // once), by rows_task_for_cpu. Kernel: row(r), noise_key(row), p.noise and
  // element(row, d, z), as GenerateRowsKernel (csrc/fastattr/rows.h).
  template <typename Kernel>
  static void for_each_row(c10::Device /*device*/, int64_t rows, int64_t cols,
                           int64_t work_per_element, const Kernel& kernel) {
    const int64_t grain = std::max<int64_t>(1, kGrainWork / std::max<int64_t>(1, work_per_element * cols));
    at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
      rows_task_for_cpu(kernel, cols, begin, end);
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
  m.def("stabilize(Tensor z, float epsilon) -> Tensor");
  m.def("relative_squares(Tensor new, Tensor old, Tensor inverse, Tensor examples) -> Tensor");
}

TORCH_LIBRARY_IMPL(fastattr, CPU, m) {
  using fastattr::CpuLaunch;
  m.impl("philox4x32", &fastattr::philox4x32_op<CpuLaunch>);
  m.impl("generate_rows", &fastattr::generate_rows_op<CpuLaunch>);
  m.impl("accumulate_", &fastattr::accumulate_op<CpuLaunch>);
  m.impl("stabilize", &fastattr::stabilize_op<CpuLaunch>);
  m.impl("relative_squares", &fastattr::relative_squares_op<CpuLaunch>);
}
