// Body of fastattr::stabilize: the LRP stabilizer, host and device. See
// csrc/README.md section 5.
#pragma once

#include <cstdint>

#include "fastattr/macros.h"

namespace fastattr {

// out[i] = z[i] + (z[i] >= 0 ? eps : -eps), in acc_t, rounded to scalar_t
// (as ATen's per-op arithmetic: half types add in float and round). z = -0.0
// counts as non-negative (+eps); NaN as negative (NaN either way).
template <typename scalar_t, typename acc_t>
struct StabilizeKernel {
  const scalar_t* z;
  scalar_t eps;  // >= 0, already rounded to scalar_t
  scalar_t* out;

  FASTATTR_HD void operator()(int64_t i) const {
    const acc_t zi = static_cast<acc_t>(z[i]);
    const acc_t e = static_cast<acc_t>(eps);
    out[i] = static_cast<scalar_t>(zi + (zi >= acc_t(0) ? e : -e));
  }
};

}  // namespace fastattr
