// Keyed random numbers: uniform and Gaussian noise as pure functions of
// (seed, stream, example, sample, element), host and device.
//
// Every step uses only correctly rounded IEEE-754 operations in a fixed order
// (no libm transcendental, no FMA), so the CPU build, the CUDA build and the
// pure-PyTorch twin produce the same bits. See csrc/README.md section 2.
#pragma once

#include <cmath>
#include <cstdint>

#include "fastattr/macros.h"
#include "fastattr/philox.h"

namespace fastattr {

// Kind of noise added to each generated row.
enum class Noise : int32_t { none = 0, gaussian = 1, uniform = 2 };

// Identity of one random draw; each id is taken mod 2^32 in the counter.
struct NoiseKey {
  uint64_t seed;    // 64-bit Philox key
  int64_t stream;   // purpose * 65536 + input index
  int64_t example;  // example index in the call or the data set
  int64_t sample;   // noise sample index
  int64_t element;  // flat element index inside one example
};

// log(u) for u in (0, 1]: frexp range reduction to m in [sqrt(1/2), sqrt(2)),
// then log(m) = 2 atanh(f) with f = (m - 1) / (m + 1), as an odd series in f.
FASTATTR_HD double fa_log(double u) {
  constexpr double kSqrtHalf = 0.70710678118654752440;
  constexpr double kLn2Hi = 0.693147180369123816490;     // 0x3fe62e42fee00000
  constexpr double kLn2Lo = 1.90821492927058770002e-10;  // 0x3dea39ef35793c76
  // C_LOG[k] = 1 / (2k + 3): the series of atanh(f) / f - 1, over f^2.
  constexpr double kLog[12] = {1.0 / 3.0,  1.0 / 5.0,  1.0 / 7.0,  1.0 / 9.0,
                               1.0 / 11.0, 1.0 / 13.0, 1.0 / 15.0, 1.0 / 17.0,
                               1.0 / 19.0, 1.0 / 21.0, 1.0 / 23.0, 1.0 / 25.0};
  int e = 0;
  double m = std::frexp(u, &e);
  if (m < kSqrtHalf) {
    m = m * 2.0;
    e = e - 1;
  }
  const double f = (m - 1.0) / (m + 1.0);
  const double f2 = f * f;
  double s = kLog[11];
  for (int k = 10; k >= 0; --k) {
    s = kLog[k] + f2 * s;
  }
  const double logm = 2.0 * f + (2.0 * f) * (f2 * s);
  const double ed = static_cast<double>(e);
  return ed * kLn2Hi + (ed * kLn2Lo + logm);
}

// cos(x) for |x| <= pi/4: Taylor series through x^18.
FASTATTR_HD double poly_cos(double x) {
  // C_COS[k] = (-1)^(k+1) / (2k+2)!, k = 0..8.
  constexpr double kCos[9] = {
      -1.0 / 2.0,          1.0 / 24.0,           -1.0 / 720.0,
      1.0 / 40320.0,       -1.0 / 3628800.0,     1.0 / 479001600.0,
      -1.0 / 87178291200.0, 1.0 / 20922789888000.0, -1.0 / 6402373705728000.0};
  const double x2 = x * x;
  double p = kCos[8];
  for (int k = 7; k >= 0; --k) {
    p = kCos[k] + x2 * p;
  }
  return 1.0 + x2 * p;
}

// sin(x) for |x| <= pi/4: Taylor series through x^17.
FASTATTR_HD double poly_sin(double x) {
  // C_SIN[k] = (-1)^(k+1) / (2k+3)!, k = 0..7.
  constexpr double kSin[8] = {
      -1.0 / 6.0,          1.0 / 120.0,          -1.0 / 5040.0,
      1.0 / 362880.0,      -1.0 / 39916800.0,    1.0 / 6227020800.0,
      -1.0 / 1307674368000.0, 1.0 / 355687428096000.0};
  const double x2 = x * x;
  double p = kSin[7];
  for (int k = 6; k >= 0; --k) {
    p = kSin[k] + x2 * p;
  }
  return x + x * (x2 * p);
}

// cos(2 pi t) for t in [0, 1): quadrant q = floor(4t) and the exact remainder
// r = 4t - q reduce it to cos or sin of (pi/2) r, or of (pi/2)(1 - r) when
// r > 1/2, so the polynomials only see arguments in [0, pi/4].
FASTATTR_HD double fa_cos_2pi(double t) {
  constexpr double kHalfPi = 1.57079632679489661923;
  const double q = std::floor(4.0 * t);
  const double r = 4.0 * t - q;
  const int quadrant = static_cast<int>(q);
  // cos(2 pi t) is +cos, -sin, -cos, +sin of (pi/2) r in quadrants 0..3;
  // only the one needed is evaluated (the README computes both, same bits).
  const bool want_cos = (quadrant % 2) == 0;
  const bool first_half = r <= 0.5;
  const double x = first_half ? r * kHalfPi : (1.0 - r) * kHalfPi;
  // Past r = 1/2, cos and sin of (pi/2) r swap roles.
  const double v = (want_cos == first_half) ? poly_cos(x) : poly_sin(x);
  return (quadrant == 1 || quadrant == 2) ? -v : v;
}

// The four Philox words of the draw identified by `key`.
FASTATTR_HD U32x4 keyed_bits(const NoiseKey& key) {
  const U32x4 counter{{static_cast<uint32_t>(key.element), static_cast<uint32_t>(key.sample),
                       static_cast<uint32_t>(key.example), static_cast<uint32_t>(key.stream)}};
  return philox4x32(counter, static_cast<uint32_t>(key.seed & 0xffffffffu),
                    static_cast<uint32_t>((key.seed >> 32) & 0xffffffffu));
}

// A uniform in [0, 1) on the 2^-53 grid from two words: hi * 2^21 + (lo >> 11)
// is an exact integer < 2^53, so both conversion and scaling are exact.
FASTATTR_HD double uniform53(uint32_t hi, uint32_t lo) {
  const uint64_t bits = (static_cast<uint64_t>(hi) << 21) | static_cast<uint64_t>(lo >> 11);
  return static_cast<double>(bits) * 0x1p-53;
}

// Uniform in [-1, 1): z = 2 ua - 1.
FASTATTR_HD double keyed_uniform(const NoiseKey& key) {
  const U32x4 x = keyed_bits(key);
  return 2.0 * uniform53(x.v[0], x.v[1]) - 1.0;
}

// Standard normal by Box-Muller (cosine branch): u1 = 1 - ua lies in (0, 1],
// so the logarithm is finite.
FASTATTR_HD double keyed_gaussian(const NoiseKey& key) {
  const U32x4 x = keyed_bits(key);
  const double u1 = 1.0 - uniform53(x.v[0], x.v[1]);
  const double ub = uniform53(x.v[2], x.v[3]);
  return std::sqrt(-2.0 * fa_log(u1)) * fa_cos_2pi(ub);
}

// Noise draw z of kind Noise::gaussian or Noise::uniform.
FASTATTR_HD double keyed_noise(Noise kind, const NoiseKey& key) {
  return kind == Noise::gaussian ? keyed_gaussian(key) : keyed_uniform(key);
}

}  // namespace fastattr
