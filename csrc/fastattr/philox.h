// Philox4x32-10 counter-based random number generator (Random123), host and
// device. See csrc/README.md section 1.
#pragma once

#include <cstdint>

#include "fastattr/macros.h"

#if defined(__x86_64__) && !defined(__CUDACC__)
#include <immintrin.h>
#endif

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

#if defined(__x86_64__) && !defined(__CUDACC__)
// ---- CPU only: Philox on a vector of counters (x86) ------------------------
//
// GCC vectorizes philox4x32 over counters only by packing the 64-bit products
// of vpmuludq back into 32-bit lanes, a dozen shuffles a round. Here each word
// of a counter lives in a 64-bit lane instead: the word is the low half and
// the high half is junk, which no step lets into a low half (vpmuludq reads
// only the low halves; hi_to_lo moves a high half down only from a product,
// whose high half is clean). A round is then 2 multiplies, 2 shuffles and
// 4 xors (2 ternary xors with AVX-512) per vector of counters.
//
// The lanes are GCC vector types, whose operators compile to the vector
// instructions of the function they are inlined into: PhiloxLanes is meant to
// be inlined (flatten) into one compiled for its vector's ISA, where the
// vector arguments and results of these functions cost nothing; the ABI
// warnings about them (-Wpsabi) do not apply, so they are silenced.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wpsabi"

using U64x4 = uint64_t __attribute__((vector_size(32)));  // AVX2
using U64x8 = uint64_t __attribute__((vector_size(64)));  // AVX-512

// 64-bit products of the low halves of the lanes (vpmuludq), which GCC does
// not emit for a product of 64-bit lanes even when it could. (The AVX-512
// intrinsics here are the maskz forms: the plain ones trip GCC 12's
// -Wmaybe-uninitialized.)
__attribute__((target("avx2"))) inline U64x4 mul_lo32(U64x4 a, U64x4 b) {
  return reinterpret_cast<U64x4>(
      _mm256_mul_epu32(reinterpret_cast<__m256i>(a), reinterpret_cast<__m256i>(b)));
}

__attribute__((target("avx512f"))) inline U64x8 mul_lo32(U64x8 a, U64x8 b) {
  return reinterpret_cast<U64x8>(_mm512_maskz_mul_epu32(
      static_cast<__mmask8>(0xff), reinterpret_cast<__m512i>(a), reinterpret_cast<__m512i>(b)));
}

// The high half of each lane in its low half (vpshufd, swapping the halves,
// which a shift would do too but on the port that multiplies).
__attribute__((target("avx2"))) inline U64x4 hi_to_lo(U64x4 a) {
  return reinterpret_cast<U64x4>(_mm256_shuffle_epi32(reinterpret_cast<__m256i>(a), 0xb1));
}

__attribute__((target("avx512f"))) inline U64x8 hi_to_lo(U64x8 a) {
  return reinterpret_cast<U64x8>(_mm512_maskz_shuffle_epi32(
      static_cast<__mmask16>(0xffff), reinterpret_cast<__m512i>(a), _MM_PERM_CDAB));
}

// philox4x32 of counters (w, c1, c2, c3) that differ only in w, a vector of
// w at a time: lane j of each output word holds the word of lane j's w. Made
// once per (c1, c2, c3, key), it keeps what the counters share: the key, and
// in rounds 1 to 3 the words that are still the same in every lane (one of
// the two products of rounds 1 and 2 is made once, as a scalar). It holds
// scalars, which a loop over vectors of w broadcasts once, before it.
template <typename V>
class PhiloxLanes {
 public:
  PhiloxLanes(uint32_t c1, uint32_t c2, uint32_t c3, uint32_t key0, uint32_t key1)
      : key0_(key0), key1_(key1) {
    using namespace philox_detail;
    const uint64_t q1 = static_cast<uint64_t>(kM1) * c2;  // round 1's product of c2
    const uint32_t c0_1 = static_cast<uint32_t>(q1 >> 32) ^ c1 ^ key0;
    const uint64_t q0 = static_cast<uint64_t>(kM0) * c0_1;  // round 2's product of c0
    c3_k1_1_ = c3 ^ key1;
    c1_k0_2_ = static_cast<uint32_t>(q1) ^ (key0 + kW0);
    q0_k1_2_ = static_cast<uint32_t>(q0 >> 32) ^ (key1 + kW1);
    c3_k1_3_ = static_cast<uint32_t>(q0) ^ (key1 + 2 * kW1);
  }

  // x[k]: word k of the outputs of counters (w, c1, c2, c3).
  void operator()(const V& w, V (&x)[4]) const {
    using namespace philox_detail;
    // Rounds 1 and 2: of words 0 and 2, only one differs between lanes.
    const V p0 = mul_lo32(w, V{} + kM0);
    const V p1 = mul_lo32(hi_to_lo(p0) ^ c3_k1_1_, V{} + kM1);
    // Round 3: word 3 (round 2's low half of its product of c0) is shared.
    const V p0_3 = mul_lo32(hi_to_lo(p1) ^ c1_k0_2_, V{} + kM0);
    const V p1_3 = mul_lo32(p0 ^ q0_k1_2_, V{} + kM1);
    x[0] = hi_to_lo(p1_3) ^ p1 ^ (key0_ + 2 * kW0);
    x[1] = p1_3;
    x[2] = hi_to_lo(p0_3) ^ c3_k1_3_;
    x[3] = p0_3;
    for (uint32_t i = 3; i < 10; ++i) {
      round(x, key0_ + i * kW0, key1_ + i * kW1);
    }
  }

 private:
  static void round(V (&c)[4], uint32_t k0, uint32_t k1) {
    const V p0 = mul_lo32(c[0], V{} + philox_detail::kM0);
    const V p1 = mul_lo32(c[2], V{} + philox_detail::kM1);
    c[0] = hi_to_lo(p1) ^ c[1] ^ k0;
    c[1] = p1;
    c[2] = hi_to_lo(p0) ^ c[3] ^ k1;
    c[3] = p0;
  }

  uint32_t key0_;
  uint32_t key1_;
  uint32_t c3_k1_1_;  // round 1: c3 ^ its key 1
  uint32_t c1_k0_2_;  // round 2: its c1 ^ its key 0
  uint32_t q0_k1_2_;  // round 2: high half of its product of c0 ^ its key 1
  uint32_t c3_k1_3_;  // round 3: its c3 (round 2's low half of that product) ^ its key 1
};

#pragma GCC diagnostic pop
#endif  // defined(__x86_64__) && !defined(__CUDACC__)

}  // namespace fastattr
