// Philox4x32-10 counter-based random number generator (Random123), host and
// device. See csrc/README.md section 1.
#pragma once

#include <cstdint>

#include "fastattr/macros.h"

namespace fastattr {

// Four 32-bit words: a Philox counter or its output.
struct U32x4 {
  uint32_t v[4];
};

namespace philox_detail {

constexpr uint32_t kM0 = 0xD2511F53u;
constexpr uint32_t kM1 = 0xCD9E8D57u;
constexpr uint32_t kW0 = 0x9E3779B9u;
constexpr uint32_t kW1 = 0xBB67AE85u;

FASTATTR_HD U32x4 round(const U32x4& c, uint32_t k0, uint32_t k1) {
  const uint64_t p0 = static_cast<uint64_t>(kM0) * c.v[0];
  const uint64_t p1 = static_cast<uint64_t>(kM1) * c.v[2];
  const uint32_t hi0 = static_cast<uint32_t>(p0 >> 32), lo0 = static_cast<uint32_t>(p0);
  const uint32_t hi1 = static_cast<uint32_t>(p1 >> 32), lo1 = static_cast<uint32_t>(p1);
  return U32x4{{hi1 ^ c.v[1] ^ k0, lo1, hi0 ^ c.v[3] ^ k1, lo0}};
}

}  // namespace philox_detail

// Philox4x32 with 10 rounds; the key is bumped between rounds (9 times).
FASTATTR_HD U32x4 philox4x32(U32x4 counter, uint32_t key0, uint32_t key1) {
  counter = philox_detail::round(counter, key0, key1);
  for (int i = 1; i < 10; ++i) {
    key0 += philox_detail::kW0;
    key1 += philox_detail::kW1;
    counter = philox_detail::round(counter, key0, key1);
  }
  return counter;
}

// Body of the fastattr::philox4x32 op for counter row i. Words are int64
// holding 32-bit values; they are taken mod 2^32.
struct Philox4x32Kernel {
  const int64_t* counters;  // [N, 4]
  const int64_t* key;       // [2]
  int64_t* out;             // [N, 4]

  FASTATTR_HD void operator()(int64_t i) const {
    const int64_t* c = counters + 4 * i;
    const U32x4 r = philox4x32(
        U32x4{{static_cast<uint32_t>(c[0]), static_cast<uint32_t>(c[1]),
               static_cast<uint32_t>(c[2]), static_cast<uint32_t>(c[3])}},
        static_cast<uint32_t>(key[0]), static_cast<uint32_t>(key[1]));
    for (int j = 0; j < 4; ++j) {
      out[4 * i + j] = static_cast<int64_t>(r.v[j]);
    }
  }
};

}  // namespace fastattr
