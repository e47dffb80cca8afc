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
// conversions only of integers below 2^52, by offset_scaled. Each of these
// gives the same values as the README's plain formulation.
#pragma once

#include <algorithm>
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

// 2^(52 - k) + x 2^-k, exactly, for an integer x < 2^52: the double with
// exponent 52 - k and mantissa field x. Subtracting 2^(52 - k) leaves
// x 2^-k, exactly: the integer converted and scaled by one vector op (x86 has
// no vector conversion from 64-bit integers before AVX-512), and other exact
// terms can be folded into that subtraction.
FASTATTR_HD double offset_scaled(uint64_t x, int k) {
  return from_bits(x | (static_cast<uint64_t>(1075 - k) << 52));
}

// x as a double, exactly, for an integer x < 2^52.
FASTATTR_HD double exact_double(uint64_t x) {
  return offset_scaled(x, 0) - 0x1p52;
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
  // e = (e0 - below) - 1022, made a double in one exact subtraction.
  const double e = offset_scaled((bits >> 52) - below, 0) - (0x1p52 + 1022.0);
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

// A uniform in [0, 1) on the 2^-53 grid from two words: (hi * 2^21 +
// (lo >> 11)) * 2^-53 = hi * 2^-32 + (lo >> 11) * 2^-53, both terms and
// their sum exact.
FASTATTR_HD double uniform53(uint32_t hi, uint32_t lo) {
  return (offset_scaled(hi, 32) - 0x1p20) +
         (offset_scaled(static_cast<uint64_t>(lo) >> 11, 53) - 0x1p-1);
}

// Uniform in [-1, 1) from the first two words of a draw: z = 2 ua - 1.
FASTATTR_HD double uniform_noise(uint32_t x0, uint32_t x1) {
  return 2.0 * uniform53(x0, x1) - 1.0;
}

// Uniform in [-1, 1) for `element`, one draw per element.
FASTATTR_HD double keyed_uniform(const NoiseKey& key, int64_t element) {
  const U32x4 x = keyed_bits(key, element);
  return uniform_noise(x.v[0], x.v[1]);
}

// Standard normals of elements 2 * pair (even) and 2 * pair + 1 (odd).
struct GaussianPair {
  double even;
  double odd;
};

// Box-Muller, both branches, from the four words of a pair's draw: the radius
// from u1 = 1 - ua in (0, 1] (so the logarithm is finite), the angle from the
// 53-bit integer of words 2 and 3.
FASTATTR_HD GaussianPair gaussian_pair(const U32x4& x) {
  const double u1 = 1.0 - uniform53(x.v[0], x.v[1]);
  const double radius = std::sqrt(-2.0 * fa_log(u1));
  const CosSin angle =
      fa_cossin_2pi((static_cast<uint64_t>(x.v[2]) << 21) | (static_cast<uint64_t>(x.v[3]) >> 11));
  return GaussianPair{radius * angle.cos, radius * angle.sin};
}

FASTATTR_HD GaussianPair keyed_gaussian_pair(const NoiseKey& key, int64_t pair) {
  return gaussian_pair(keyed_bits(key, pair));
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

// ---- CPU: a row's noise in runs --------------------------------------------
//
// Philox and the float steps are separate loops over a block of draws: the
// words go through a buffer, so each loop has the vector shape it needs
// (Philox, 64-bit lanes holding 32-bit words; the float steps, doubles).

// Draws per block: the words buffer is 8 KiB, in L1 with the z it feeds.
constexpr int64_t kDrawBlock = 256;

// Words of the draws first_word + j of one row, j < kDrawBlock: word k of
// draw j is the low half of x[k][j] (the high half is junk).
struct DrawBlock {
  uint64_t x[4][kDrawBlock];

  U32x4 words(int64_t j) const {
    return U32x4{{static_cast<uint32_t>(x[0][j]), static_cast<uint32_t>(x[1][j]),
                  static_cast<uint32_t>(x[2][j]), static_cast<uint32_t>(x[3][j])}};
  }
};

// Fills words 0 .. kWords - 1 of `count` draws of a DrawBlock, a draw at a
// time (the baseline; KeyedDrawsLanes is the fast one).
struct KeyedDraws {
  template <int kWords>
  static void fill(const NoiseKey& key, int64_t first_word, int64_t count, DrawBlock& block) {
    for (int64_t j = 0; j < count; ++j) {
      const U32x4 x = keyed_bits(key, first_word + j);
      for (int k = 0; k < kWords; ++k) {
        block.x[k][j] = x.v[k];
      }
    }
  }
};

#if defined(__x86_64__) && !defined(__CUDACC__)
// KeyedDraws with PhiloxLanes<V>, a vector of draws at a time (so it fills up
// to a vector less one of draws past `count`, which the block has room for).
// With kWords = 2 (uniform noise) the last round's other product is dead code.
template <typename V>
struct KeyedDrawsLanes {
  static constexpr int64_t kLanes = sizeof(V) / sizeof(uint64_t);
  static_assert(kDrawBlock % kLanes == 0, "whole vectors of draws fit a block");

  template <int kWords>
  static void fill(const NoiseKey& key, int64_t first_word, int64_t count, DrawBlock& block) {
    const PhiloxLanes<V> philox(
        static_cast<uint32_t>(key.sample), static_cast<uint32_t>(key.example),
        static_cast<uint32_t>(key.stream), static_cast<uint32_t>(key.seed & 0xffffffffu),
        static_cast<uint32_t>((key.seed >> 32) & 0xffffffffu));
    V w;
    for (int64_t j = 0; j < kLanes; ++j) {
      w[j] = static_cast<uint64_t>(first_word + j);
    }
    for (int64_t j = 0; j < count; j += kLanes) {
      V x[4];
      philox(w, x);
      for (int k = 0; k < kWords; ++k) {
        std::memcpy(&block.x[k][j], &x[k], sizeof(V));
      }
      w += kLanes;
    }
  }
};
#endif

// z[i] = keyed_uniform(key, first + i) for i < count.
template <typename Draws>
inline void uniform_run(const NoiseKey& key, int64_t first, int64_t count, double* z) {
  DrawBlock block;
  for (int64_t i0 = 0; i0 < count; i0 += kDrawBlock) {
    const int64_t n = std::min(kDrawBlock, count - i0);
    Draws::template fill<2>(key, first + i0, n, block);
    for (int64_t j = 0; j < n; ++j) {
      z[i0 + j] = uniform_noise(static_cast<uint32_t>(block.x[0][j]),
                                static_cast<uint32_t>(block.x[1][j]));
    }
  }
}

// z[i] = keyed_gaussian(key, first + i) for i < count, first even: each pair
// made once for both of its elements, but the last element of a run of odd
// length (the end of an odd row), an even element alone.
template <typename Draws>
inline void gaussian_run(const NoiseKey& key, int64_t first, int64_t count, double* z) {
  DrawBlock block;
  const int64_t pairs = (count + 1) / 2;
  for (int64_t p0 = 0; p0 < pairs; p0 += kDrawBlock) {
    const int64_t n = std::min(kDrawBlock, pairs - p0);
    Draws::template fill<4>(key, first / 2 + p0, n, block);
    double* out = z + 2 * p0;
    const int64_t whole = std::min(n, (count - 2 * p0) / 2);  // pairs with both elements here
    for (int64_t j = 0; j < whole; ++j) {
      const GaussianPair g = gaussian_pair(block.words(j));
      out[2 * j] = g.even;
      out[2 * j + 1] = g.odd;
    }
    if (whole < n) {
      out[2 * whole] = gaussian_pair(block.words(whole)).even;
    }
  }
}

// CPU: z[i] = keyed_noise(kind, key, first + i) for i < count, with `first`
// even, so that Gaussian pairs lie whole in the run. Draws makes the words
// (KeyedDraws or KeyedDrawsLanes); the float loops vectorize.
template <typename Draws = KeyedDraws>
inline void keyed_noise_run(Noise kind, const NoiseKey& key, int64_t first, int64_t count,
                            double* z) {
  if (kind == Noise::uniform) {
    uniform_run<Draws>(key, first, count, z);
  } else {
    gaussian_run<Draws>(key, first, count, z);
  }
}

}  // namespace fastattr
