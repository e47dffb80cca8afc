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
// group's rows are folded in increasing row order (step() is one row's
// update), so any chunking of rows into calls gives the same bits. The GPU
// runs operator() per element; the CPU walks a group's rows and, inside each
// row, a block of contiguous elements (for_each_group_block), calling the
// same step() in the same row order per element.
template <typename scalar_t, typename acc_t>
struct AccumulateKernel {
  AccumulateParams p;
  acc_t* acc;              // [G, D]
  acc_t* acc_sq;           // [G, D]; nullptr when not accumulated
  const scalar_t* values;  // [row_count, D]
  const double* weights;   // [group_size]

  // Rows [begin, end) of group g that this call holds.
  FASTATTR_HD int64_t rows_begin(int64_t g) const {
    const int64_t group_begin = g * p.group_size;
    return group_begin > p.row_start ? group_begin : p.row_start;
  }
  FASTATTR_HD int64_t rows_end(int64_t g) const {
    const int64_t group_end = (g + 1) * p.group_size;
    const int64_t row_end = p.row_start + p.row_count;
    return group_end < row_end ? group_end : row_end;
  }

  // Row r's update of element d of its group g, on the running sums.
  FASTATTR_HD void step(int64_t g, int64_t r, int64_t d, acc_t& sum, acc_t& sum_sq) const {
    const acc_t v = static_cast<acc_t>(values[(r - p.row_start) * p.numel_per_row + d]);
    // r - g * group_size == r % group_size, as r lies inside group g.
    const acc_t wv = static_cast<acc_t>(weights[r - g * p.group_size]) * v;
    sum = sum + wv;
    if (acc_sq != nullptr) {
      sum_sq = sum_sq + wv * v;
    }
  }

  FASTATTR_HD int64_t offset(int64_t g, int64_t d) const {
    return (g - p.group_offset) * p.numel_per_row + d;
  }

  FASTATTR_HD void operator()(int64_t i) const {
    const int64_t g = p.first_group + i / p.numel_per_row;
    const int64_t d = i % p.numel_per_row;
    const int64_t o = offset(g, d);
    acc_t sum = acc[o];
    acc_t sum_sq = acc_sq != nullptr ? acc_sq[o] : acc_t(0);
    for (int64_t r = rows_begin(g), end = rows_end(g); r < end; ++r) {
      step(g, r, d, sum, sum_sq);
    }
    acc[o] = sum;
    if (acc_sq != nullptr) {
      acc_sq[o] = sum_sq;
    }
  }
};

}  // namespace fastattr
