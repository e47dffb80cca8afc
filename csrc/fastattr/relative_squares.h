// Body of fastattr::relative_squares: the squared relative change of one row
// against its example's clean row, host and device. See csrc/README.md section 6.
#pragma once

#include <cstdint>

#include "fastattr/macros.h"

namespace fastattr {

// Partial sums of a row: element d goes to lane d % kRelativeSquaresLanes.
// Eight doubles are one AVX-512 vector (two AVX2, four SSE2), so the CPU
// keeps the lanes in registers and adds a vector of elements at a time.
constexpr int kRelativeSquaresLanes = 8;

// Rows scored together by the CPU when they share an example (see
// RelativeSquaresKernel::rows_together).
constexpr int kRelativeSquaresRowsTogether = 4;

// For each of the K rows x + k * cols (k < K), against one example's rows old
// and inverse: out[k] = sum_d ((x[d] - old[d]) * inverse[d])^2 over d in
// [0, cols), in float64. Each lane sums its elements in increasing d, then
// the lanes are combined as ((l0 + l1) + (l2 + l3)) + ((l4 + l5) + (l6 + l7)).
// x is converted to double exactly; no contraction into fused multiply-adds
// (the build forbids it). The K rows are interleaved element by element,
// which changes no row's operations or their order: K > 1 gives each row the
// bits of K = 1.
template <int K, typename scalar_t>
FASTATTR_HD void relative_squares_rows(const scalar_t* x, const double* old,
                                       const double* inverse, int64_t cols, double* out) {
  constexpr int kLanes = kRelativeSquaresLanes;
  double lane[K][kLanes] = {};
  const int64_t full = cols - cols % kLanes;
  for (int64_t d = 0; d < full; d += kLanes) {
    for (int k = 0; k < K; ++k) {
      for (int l = 0; l < kLanes; ++l) {
        const double v = (static_cast<double>(x[k * cols + d + l]) - old[d + l]) * inverse[d + l];
        lane[k][l] = lane[k][l] + v * v;
      }
    }
  }
  // The tail, elements full .. cols - 1: lanes 0 .. cols % 8 - 1.
  for (int k = 0; k < K; ++k) {
    for (int l = 0; l < cols - full; ++l) {
      const double v =
          (static_cast<double>(x[k * cols + full + l]) - old[full + l]) * inverse[full + l];
      lane[k][l] = lane[k][l] + v * v;
    }
  }
  for (int k = 0; k < K; ++k) {
    const double* s = lane[k];
    out[k] = ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
  }
}

// Output element r: row r of rows against row examples[r] of old and inverse.
// The host checks examples' range before launching; the device, which would
// have to synchronize to read them first, checks each as it uses it (a
// failure stops the kernel and the next CUDA call raises, as ATen's indexing).
template <typename scalar_t>
struct RelativeSquaresKernel {
  const scalar_t* rows;     // new [g, D]
  const double* old;        // [B, D]
  const double* inverse;    // [B, D]
  const int64_t* examples;  // [g], values in [0, B)
  int64_t n_examples;       // B
  int64_t cols;             // D
  double* out;              // [g]

  FASTATTR_HD void operator()(int64_t r) const {
    const int64_t e = examples[r];
    FASTATTR_DEVICE_ASSERT(e >= 0 && e < n_examples, "relative_squares: examples[r] outside [0, B)");
    relative_squares_rows<1>(rows + r * cols, old + e * cols, inverse + e * cols, cols, out + r);
  }

  // The CPU's step from row r (< end): the kRelativeSquaresRowsTogether rows
  // from r when they lie before end and share one example, else row r alone;
  // returns the next row. Each row gets the bits of operator()(row). Rows
  // streamed from memory together, against one read of their example's rows,
  // go 2.2x as fast (1,600 rows of 16,384 float32 values, one core, AVX2 or
  // AVX-512): a single row's loop waits on memory.
  int64_t rows_together(int64_t r, int64_t end) const {
    constexpr int K = kRelativeSquaresRowsTogether;
    const int64_t e = examples[r];
    bool shared = r + K <= end;
    for (int k = 1; shared && k < K; ++k) {
      shared = examples[r + k] == e;
    }
    if (!shared) {
      (*this)(r);
      return r + 1;
    }
    relative_squares_rows<K>(rows + r * cols, old + e * cols, inverse + e * cols, cols, out + r);
    return r + K;
  }
};

}  // namespace fastattr
