// Body of fastattr::accumulate_: one (group, element) accumulator fed by the
// rows of its group, host and device. See csrc/README.md section 4.
#pragma once

#include <cstdint>

#include "fastattr/macros.h"

namespace fastattr {

// Scalar arguments of accumulate_, after validation.
struct AccumulateParams {
  int64_t row_start;      // row id of values[0]
  int64_t row_count;      // n = len(values)
  int64_t group_size;     // rows per group
  int64_t first_group;    // row_start / group_size: the first group touched
  int64_t group_offset;   // group g is stored at acc[g - group_offset]
  int64_t numel_per_row;  // D = prod(F)
};

// Number of groups the rows touch (0 without rows); output elements are
// [0, touched_groups * D).
FASTATTR_HD int64_t touched_groups(const AccumulateParams& p) {
  return p.row_count == 0 ? 0
                          : (p.row_start + p.row_count - 1) / p.group_size - p.first_group + 1;
}

// Output element i is element d = i % D of group first_group + i / D. The
// group's rows are folded in increasing row order with the running sums kept
// in registers: the same serial sums as one update per row, so any chunking
// of rows into calls gives the same bits.
template <typename scalar_t, typename acc_t>
struct AccumulateKernel {
  AccumulateParams p;
  acc_t* acc;              // [G, D]
  acc_t* acc_sq;           // [G, D]; nullptr when not accumulated
  const scalar_t* values;  // [row_count, D]
  const double* weights;   // [group_size]

  FASTATTR_HD void operator()(int64_t i) const {
    const int64_t g = p.first_group + i / p.numel_per_row;
    const int64_t d = i % p.numel_per_row;
    const int64_t group_begin = g * p.group_size;
    const int64_t group_end = group_begin + p.group_size;
    const int64_t row_end = p.row_start + p.row_count;
    const int64_t r_begin = group_begin > p.row_start ? group_begin : p.row_start;
    const int64_t r_end = group_end < row_end ? group_end : row_end;
    const int64_t o = (g - p.group_offset) * p.numel_per_row + d;

    acc_t sum = acc[o];
    acc_t sum_sq = acc_sq != nullptr ? acc_sq[o] : acc_t(0);
    for (int64_t r = r_begin; r < r_end; ++r) {
      const acc_t v = static_cast<acc_t>(values[(r - p.row_start) * p.numel_per_row + d]);
      // r - group_begin == r % group_size, as r lies inside group g.
      const acc_t wv = static_cast<acc_t>(weights[r - group_begin]) * v;
      sum = sum + wv;
      if (acc_sq != nullptr) {
        sum_sq = sum_sq + wv * v;
      }
    }
    acc[o] = sum;
    if (acc_sq != nullptr) {
      acc_sq[o] = sum_sq;
    }
  }
};

}  // namespace fastattr
