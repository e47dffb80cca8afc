// Keyed random numbers: uniform and Gaussian noise as pure functions of
// (seed, stream, example, sample, element), host and device.
//
// Every step uses only correctly rounded IEEE-754 operations in a fixed order
// (no libm transcendental, no FMA), so the CPU build, the CUDA build and the
// pure-PyTorch twin produce the same bits. See csrc/README.md section 2.
//
// The bodies are also written so that GCC vectorizes a loop over elements
// (keyed_noise_run, the CPU's row loop): no branches (selects instead), no
// libm calls (frexp and floor are done on the bits), and integer -> double
// conversions only of integers below 2^52, by exact_double. Each of these
// gives the same values as the README's plain formulation.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "fastattr/macros.h"
#include "fastattr/philox.h"

namespace fastattr {

// Kind of noise added to each generated row.
enum class Noise : int32_t { none = 0, gaussian = 1, uniform = 2 };

// Identity of the draws of one row; each id is taken mod 2^32 in the counter.
struct NoiseKey {
  uint64_t seed;    // 64-bit Philox key
  int64_t stream;   // purpose * 65536 + input index
  int64_t example;  // example index in the call or the data set
  int64_t sample;   // noise sample index
};

FASTATTR_HD uint64_t as_bits(double x) {
  uint64_t bits;
  std::memcpy(&bits, &x, sizeof bits);
  return bits;
}

FASTATTR_HD double from_bits(uint64_t bits) {
  double x;
  std::memcpy(&x, &bits, sizeof x);
  return x;
}

// x as a double, exactly, for an integer x < 2^52: the double 2^52 + x has x
// as its mantissa field, and subtracting 2^52 is exact. (x86 has no vector
// conversion from 64-bit integers before AVX-512; this is two vector ops.)
FASTATTR_HD double exact_double(uint64_t x) {
  return from_bits(x | 0x4330000000000000ull) - 0x1p52;
}

// c[0] + y (c[1] + y (... + y c[N-1])), evaluated from the inside out
// (Horner), as the README writes each series.
template <int N>
FASTATTR_HD double horner(const double (&c)[N], double y) {
  double acc = c[N - 1];
  for (int k = N - 2; k >= 0; --k) {
    acc = c[k] + y * acc;
  }
  return acc;
}

// log(u) for u in [2^-53, 1]: u = m * 2^e with m in [SQRT_HALF, 2 SQRT_HALF),
// then log(m) = 2 atanh(f) with f = (m - 1) / (m + 1), |f| <= 0.1716, as an
// odd series in f through f^13 (relative error < 1.4e-12, csrc/README.md).
FASTATTR_HD double fa_log(double u) {
  constexpr double kLn2Hi = 0.693147180369123816490;     // 0x3fe62e42fee00000
  constexpr double kLn2Lo = 1.90821492927058770002e-10;  // 0x3dea39ef35793c76
  // C_LOG[k] = 1 / (2k + 3): the series of atanh(f) / f - 1, over f^2.
  constexpr double kLog[6] = {1.0 / 3.0, 1.0 / 5.0, 1.0 / 7.0, 1.0 / 9.0, 1.0 / 11.0, 1.0 / 13.0};
  constexpr uint64_t kMantissa = (uint64_t{1} << 52) - 1;
  // Mantissa field of SQRT_HALF = 0.70710678118654752440 (0x3fe6a09e667f3bcd).
  constexpr int64_t kSqrtHalfMantissa = 0x6a09e667f3bcd;
  // The README's frexp step on the bits: u is normal, so frexp's m0 in
  // [0.5, 1) has u's mantissa field and e0 = (exponent field) - 1022; m0 and
  // SQRT_HALF share a binade, so m0 < SQRT_HALF compares mantissa fields
  // (as int64: AVX2 compares signed 64-bit lanes only). Then m = 2 m0 sets
  // the exponent field to 1023 instead of 1022, and e = e0 - 1.
  const uint64_t bits = as_bits(u);
  const uint64_t below = static_cast<int64_t>(bits & kMantissa) < kSqrtHalfMantissa ? 1 : 0;
  const double m = from_bits((bits & kMantissa) | ((uint64_t{1022} + below) << 52));
  const double e = exact_double((bits >> 52) - below) - 1022.0;
  const double f = (m - 1.0) / (m + 1.0);
  const double f2 = f * f;
  const double s = horner(kLog, f2);
  const double logm = 2.0 * f + (2.0 * f) * (f2 * s);
  return e * kLn2Hi + (e * kLn2Lo + logm);
}

// cos(x) for 0 <= x <= pi/4: Taylor series through x^12 (error < 4e-13).
FASTATTR_HD double poly_cos(double x) {
  // C_COS[k] = (-1)^(k+1) / (2k+2)!, k = 0..5.
  constexpr double kCos[6] = {-1.0 / 2.0,     1.0 / 24.0,       -1.0 / 720.0,
                              1.0 / 40320.0, -1.0 / 3628800.0, 1.0 / 479001600.0};
  const double x2 = x * x;
  const double p = horner(kCos, x2);
  return 1.0 + x2 * p;
}

// sin(x) for 0 <= x <= pi/4: Taylor series through x^13 (error < 3e-14).
FASTATTR_HD double poly_sin(double x) {
  // C_SIN[k] = (-1)^(k+1) / (2k+3)!, k = 0..5.
  constexpr double kSin[6] = {-1.0 / 6.0,      1.0 / 120.0,        -1.0 / 5040.0,
                              1.0 / 362880.0, -1.0 / 39916800.0, 1.0 / 6227020800.0};
  const double x2 = x * x;
  const double p = horner(kSin, x2);
  return x + x * (x2 * p);
}

struct CosSin {
  double cos;
  double sin;
};

// cos and sin of 2 pi t for t = n * 2^-53, n < 2^53. The top two bits of n
// are the quadrant q = floor(4t), the other 51 the remainder 4t - q =
// k * 2^-51; past k = 2^50 (r > 1/2) the polynomials take 1 - r and swap
// roles, so they only see arguments in [0, pi/4].
FASTATTR_HD CosSin fa_cossin_2pi(uint64_t n) {
  // HALF_PI * 2^-51, exact: x = a * kHalfPiScaled is (a * 2^-51) * HALF_PI.
  constexpr double kHalfPiScaled = 1.57079632679489661923 * 0x1p-51;
  constexpr uint64_t kHalf = uint64_t{1} << 50;  // r = 1/2
  const uint64_t q = n >> 51;
  const uint64_t k = n & (2 * kHalf - 1);
  const bool first_half = k <= kHalf;
  const double x = exact_double(first_half ? k : 2 * kHalf - k) * kHalfPiScaled;
  const double pc = poly_cos(x);
  const double ps = poly_sin(x);
  // cos and sin of (pi/2) r.
  const double c = first_half ? pc : ps;
  const double s = first_half ? ps : pc;
  // Turned by q quarter turns: cos(2 pi t) = c, -s, -c, s and sin(2 pi t) =
  // s, c, -s, -c for q = 0..3. The signs are flipped on the bits (exactly
  // what negation does) to keep the loop free of branches.
  const bool odd = (q & 1) != 0;
  const uint64_t cos_sign = ((q ^ (q >> 1)) & 1) << 63;
  const uint64_t sin_sign = (q >> 1) << 63;
  return CosSin{from_bits(as_bits(odd ? s : c) ^ cos_sign),
                from_bits(as_bits(odd ? c : s) ^ sin_sign)};
}

// The four Philox words of draw `word` of the row `key`: the counter is
// (word, sample, example, stream).
FASTATTR_HD U32x4 keyed_bits(const NoiseKey& key, int64_t word) {
  const U32x4 counter{{static_cast<uint32_t>(word), static_cast<uint32_t>(key.sample),
                       static_cast<uint32_t>(key.example), static_cast<uint32_t>(key.stream)}};
  return philox4x32(counter, static_cast<uint32_t>(key.seed & 0xffffffffu),
                    static_cast<uint32_t>((key.seed >> 32) & 0xffffffffu));
}

// A uniform in [0, 1) on the 2^-53 grid from two words: hi * 2^21 + (lo >> 11)
// is an integer < 2^53, made exactly from its two parts (each < 2^52) and
// scaled exactly.
FASTATTR_HD double uniform53(uint32_t hi, uint32_t lo) {
  return (exact_double(hi) * 0x1p21 + exact_double(lo >> 11)) * 0x1p-53;
}

// Uniform in [-1, 1) for `element`: z = 2 ua - 1, one draw per element.
FASTATTR_HD double keyed_uniform(const NoiseKey& key, int64_t element) {
  const U32x4 x = keyed_bits(key, element);
  return 2.0 * uniform53(x.v[0], x.v[1]) - 1.0;
}

// Standard normals of elements 2 * pair (even) and 2 * pair + 1 (odd).
struct GaussianPair {
  double even;
  double odd;
};

// Box-Muller, both branches, from the one draw of the pair: the radius from
// u1 = 1 - ua in (0, 1] (so the logarithm is finite), the angle from the
// 53-bit integer of words 2 and 3.
FASTATTR_HD GaussianPair keyed_gaussian_pair(const NoiseKey& key, int64_t pair) {
  const U32x4 x = keyed_bits(key, pair);
  const double u1 = 1.0 - uniform53(x.v[0], x.v[1]);
  const double radius = std::sqrt(-2.0 * fa_log(u1));
  const CosSin angle = fa_cossin_2pi((static_cast<uint64_t>(x.v[2]) << 21) | (x.v[3] >> 11));
  return GaussianPair{radius * angle.cos, radius * angle.sin};
}

// Standard normal for one element: its pair is made and half of it kept (the
// GPU's thread per element; the CPU makes each pair once, keyed_noise_run).
FASTATTR_HD double keyed_gaussian(const NoiseKey& key, int64_t element) {
  const GaussianPair z = keyed_gaussian_pair(key, element >> 1);
  return (element & 1) != 0 ? z.odd : z.even;
}

// Noise draw z of kind Noise::gaussian or Noise::uniform for `element`.
FASTATTR_HD double keyed_noise(Noise kind, const NoiseKey& key, int64_t element) {
  return kind == Noise::gaussian ? keyed_gaussian(key, element) : keyed_uniform(key, element);
}

// CPU: z[i] = keyed_noise(kind, key, first + i) for i < count, with `first`
// even, so that Gaussian pairs lie whole in the run (but the last element of
// a run of odd length, the end of an odd row, which is an even element
// alone): each pair is made once for both of its elements. Both loops
// vectorize.
inline void keyed_noise_run(Noise kind, const NoiseKey& key, int64_t first, int64_t count,
                            double* z) {
  if (kind == Noise::uniform) {
    for (int64_t i = 0; i < count; ++i) {
      z[i] = keyed_uniform(key, first + i);
    }
    return;
  }
  const int64_t pairs = count / 2;
  for (int64_t i = 0; i < pairs; ++i) {
    const GaussianPair g = keyed_gaussian_pair(key, first / 2 + i);
    z[2 * i] = g.even;
    z[2 * i + 1] = g.odd;
  }
  if (count % 2 != 0) {
    z[count - 1] = keyed_gaussian_pair(key, first / 2 + pairs).even;
  }
}

}  // namespace fastattr
