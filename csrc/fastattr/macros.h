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
