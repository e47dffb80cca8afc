// Portability macros shared by every kernel body.
//
// Kernel bodies are written once and compiled twice: by the host compiler for
// the CPU kernels and the C++ unit tests, and by nvcc for the CUDA kernels.
#pragma once

#if defined(__CUDACC__)
#define FASTATTR_HD __host__ __device__ inline
#else
#define FASTATTR_HD inline
#endif

// A check of a value the host validates before a CPU launch but cannot read
// before a CUDA launch without synchronizing (an index held in a tensor): on
// the device a failure stops the kernel with `what` in the device log and the
// next CUDA call raises, as ATen's CUDA_KERNEL_ASSERT does (kept under NDEBUG
// too: it guards memory). On the host it compiles to nothing.
#if defined(__CUDA_ARCH__)
#define FASTATTR_DEVICE_ASSERT(cond, what)                                               \
  do {                                                                                   \
    if (!(cond)) {                                                                       \
      __assert_fail(what " (" #cond ")", __FILE__, static_cast<unsigned int>(__LINE__), \
                    __func__);                                                           \
    }                                                                                    \
  } while (0)
#else
#define FASTATTR_DEVICE_ASSERT(cond, what) \
  do {                                     \
  } while (0)
#endif
