// Unit tests of the header-only kernel bodies, built with the bare host
// compiler (no torch). Usage: test_kernels <case>; one CTest test per case.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <vector>

#include "fastattr/accumulate.h"
#include "fastattr/keyed_random.h"
#include "fastattr/philox.h"
#include "fastattr/relative_squares.h"
#include "fastattr/rows.h"
#include "fastattr/stabilize.h"

namespace {

using namespace fastattr;

int g_failures = 0;

void expect(bool ok, const char* what) {
  if (!ok) {
    std::printf("FAILED: %s\n", what);
    ++g_failures;
  }
}

void expect_near(double got, double want, double tol, const char* what) {
  if (!(std::fabs(got - want) <= tol)) {
    std::printf("FAILED: %s: got %.17g, want %.17g (tol %g)\n", what, got, want, tol);
    ++g_failures;
  }
}

// Random123 kat_vectors for philox4x32 with 10 rounds.
void test_philox_kat() {
  struct Kat {
    U32x4 counter;
    uint32_t key0, key1;
    U32x4 want;
  };
  const Kat kats[] = {
      {{{0, 0, 0, 0}}, 0, 0, {{0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8}}},
      {{{0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff}}, 0xffffffff, 0xffffffff,
       {{0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd}}},
      {{{0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344}}, 0xa4093822, 0x299f31d0,
       {{0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1}}},
  };
  for (const Kat& k : kats) {
    const U32x4 got = philox4x32(k.counter, k.key0, k.key1);
    expect(std::memcmp(got.v, k.want.v, sizeof got.v) == 0, "philox4x32 known answer");
  }
  // The op body reads int64 words and agrees with the core function.
  const int64_t counters[4] = {0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344};
  const int64_t key[2] = {0xa4093822, 0x299f31d0};
  int64_t out[4];
  Philox4x32Kernel{counters, key, out}(0);
  expect(out[0] == 0xd16cfe09 && out[3] == 0x24126ea1, "Philox4x32Kernel row");
}

// fa_log against std::log over [2^-53, 1]: dense near 1, log-spaced to 2^-53.
// The README's bound: relative error < 1.4e-12 (the series through f^13).
void test_fa_log() {
  double max_rel = 0.0;
  const int n = 200000;
  for (int i = 1; i <= n; ++i) {
    const double linear = static_cast<double>(i) / n;               // (0, 1]
    const double tiny = std::ldexp(1.0, -53 * i / n) * (1.0 - 0.3 * linear);  // down to ~2^-53
    for (double u : {linear, tiny, 1.0 - std::ldexp(static_cast<double>(i), -53)}) {
      const double want = std::log(u);
      const double err = std::fabs(fa_log(u) - want);
      const double rel = want == 0.0 ? err : err / std::fabs(want);
      if (rel > max_rel) max_rel = rel;
    }
  }
  std::printf("fa_log: max relative error %.3g\n", max_rel);
  expect(max_rel <= 1.4e-12, "fa_log relative error <= 1.4e-12");
  expect(fa_log(1.0) == 0.0, "fa_log(1) == 0");
  expect(fa_log(0x1p-53) == -53.0 * 0.693147180369123816490 + -53.0 * 1.90821492927058770002e-10,
         "fa_log(2^-53) is e * LN2 exactly (m = 1)");
}

// fa_cossin_2pi against long double cos and sin over [0, 1), every quadrant
// edge and r = 1/2 switch included; the README's bound is 4e-13 absolute.
void test_fa_cossin_2pi() {
  const long double two_pi = 6.283185307179586476925286766559L;
  double max_abs = 0.0;
  const uint64_t n_points = 400000;
  const uint64_t step = (uint64_t{1} << 53) / n_points;
  for (uint64_t i = 0; i < n_points; ++i) {
    for (uint64_t n : {i * step, i * step + (uint64_t{1} << 50) % step, (i + 1) * step - 1}) {
      const long double angle = two_pi * static_cast<long double>(n) * 0x1p-53L;
      const CosSin got = fa_cossin_2pi(n);
      max_abs = std::fmax(max_abs, std::fabs(got.cos - static_cast<double>(std::cos(angle))));
      max_abs = std::fmax(max_abs, std::fabs(got.sin - static_cast<double>(std::sin(angle))));
    }
  }
  std::printf("fa_cossin_2pi: max absolute error %.3g\n", max_abs);
  expect(max_abs <= 4e-13, "fa_cossin_2pi absolute error <= 4e-13");
  // Quarter turns are exact, zeros signed by the README's negations.
  const uint64_t quarter = uint64_t{1} << 51;
  const double want[4][2] = {{1.0, 0.0}, {-0.0, 1.0}, {-1.0, -0.0}, {0.0, -1.0}};
  for (uint64_t q = 0; q < 4; ++q) {
    const CosSin got = fa_cossin_2pi(q * quarter);
    expect(std::memcmp(&got.cos, &want[q][0], sizeof(double)) == 0 &&
               std::memcmp(&got.sin, &want[q][1], sizeof(double)) == 0,
           "fa_cossin_2pi exact (signed zeros too) at quarter turns");
  }
  // poly_sin / poly_cos directly, on their whole domain [0, pi/4].
  double cos_err = 0.0, sin_err = 0.0;
  for (int i = 0; i <= 2000; ++i) {
    const double x = 0.78539816339744830962 * i / 2000.0;
    cos_err = std::fmax(cos_err, std::fabs(poly_cos(x) - std::cos(x)));
    sin_err = std::fmax(sin_err, std::fabs(poly_sin(x) - std::sin(x)));
  }
  expect(cos_err <= 4e-13, "poly_cos absolute error <= 4e-13");
  expect(sin_err <= 3e-14, "poly_sin absolute error <= 3e-14");
  // exact_double is exact up to 2^52 - 1.
  expect(exact_double(0) == 0.0 && exact_double((uint64_t{1} << 52) - 1) == 0x1p52 - 1.0,
         "exact_double at its ends");
}

// Moments of the keyed draws over 200k keys: within 5 standard errors.
void test_noise_moments() {
  const int n = 200000;
  double gs = 0, gs2 = 0, us = 0, us2 = 0, pair_prod = 0;
  bool in_range = true;
  for (int i = 0; i < n; ++i) {
    const NoiseKey key{12345, 7, i / 1000, i % 10};
    const double g = keyed_gaussian(key, i);
    const double u = keyed_uniform(key, i);
    gs += g;
    gs2 += g * g;
    us += u;
    us2 += u * u;
    pair_prod += keyed_gaussian(key, i ^ 1) * g;  // with the other half of its pair
    in_range = in_range && u >= -1.0 && u < 1.0 && std::isfinite(g);
  }
  const double g_mean = gs / n, g_var = gs2 / n - g_mean * g_mean;
  const double u_mean = us / n, u_var = us2 / n - u_mean * u_mean;
  std::printf("gaussian mean %.4f var %.4f; uniform mean %.4f var %.4f\n", g_mean, g_var, u_mean,
              u_var);
  expect(in_range, "uniform in [-1, 1), gaussian finite");
  expect_near(g_mean, 0.0, 5.0 / std::sqrt(n), "gaussian mean");
  expect_near(g_var, 1.0, 5.0 * std::sqrt(2.0 / n), "gaussian variance");
  expect_near(pair_prod / n, 0.0, 5.0 / std::sqrt(n / 2), "halves of a pair uncorrelated");
  expect_near(u_mean, 0.0, 5.0 * std::sqrt(1.0 / 3.0 / n), "uniform mean");
  expect_near(u_var, 1.0 / 3.0, 5.0 * std::sqrt(4.0 / 45.0 / n), "uniform variance");
  // Keys differing in one id give different draws.
  expect(keyed_gaussian({1, 0, 0, 0}, 0) != keyed_gaussian({1, 0, 0, 1}, 0), "sample id matters");
  expect(keyed_gaussian({1, 0, 0, 0}, 0) != keyed_gaussian({1ull << 32, 0, 0, 0}, 0),
         "high seed word matters");
  expect(keyed_gaussian({1, 0, 0, 0}, 0) != keyed_gaussian({1, 0, 0, 0}, 2), "pair matters");
}

// The known answers of csrc/README.md section 2 (also in tests/test_ops.py,
// which checks them and the checksums below on the extension, i.e. on the
// version of the CPU noise loop this CPU picks). This binary is built for
// baseline x86-64: here they check the baseline build of the same loop,
// keyed_noise_run, its AVX2 and AVX-512 builds (compiled for those by target
// attributes, checked where the CPU has them), and the per-element form the
// GPU runs.
const NoiseKey kKatKey{0x0123456789abcdefull, 3, 5, 2};
struct NoiseKat {
  int64_t element;
  uint64_t gaussian, uniform;
};
const NoiseKat kNoiseKats[] = {
    {0, 0xbfefae3130780e60, 0xbfc851d33e6c07b8},     {1, 0x3fcee59f0f2fad0e, 0xbfe37743be2854ba},
    {2, 0xbfc57d859f63d333, 0xbfea5cdc8f925a1e},     {3, 0x3fe46ef673276d44, 0xbfd6d6103f674178},
    {12344, 0xbfe5c9c2647f2766, 0x3feedd52cd3ce44a}, {12345, 0x3fea507a5b535995, 0xbfe7269faaa40786},
};
// sum over d < 100001 of bits(z_d) * (2d + 1) mod 2^64, for kKatKey.
constexpr int64_t kChecksumD = 100001;
constexpr uint64_t kGaussianChecksum = 0x224e4044a1d4d8edull;
constexpr uint64_t kUniformChecksum = 0xb40f96bf4dda6d52ull;

uint64_t bits_of(double x) {
  uint64_t b;
  std::memcpy(&b, &x, sizeof b);
  return b;
}

using NoiseRun = void (*)(Noise, const NoiseKey&, int64_t, int64_t, double*);

void noise_run_baseline(Noise kind, const NoiseKey& key, int64_t first, int64_t count,
                        double* z) {
  keyed_noise_run<KeyedDraws>(kind, key, first, count, z);
}

#if defined(__x86_64__)
// As csrc/ops.cpp compiles them.
__attribute__((target("avx2"), flatten)) void noise_run_avx2(Noise kind, const NoiseKey& key,
                                                             int64_t first, int64_t count,
                                                             double* z) {
  keyed_noise_run<KeyedDrawsLanes<U64x4>>(kind, key, first, count, z);
}

__attribute__((target("avx512f,prefer-vector-width=512"), flatten)) void noise_run_avx512(
    Noise kind, const NoiseKey& key, int64_t first, int64_t count, double* z) {
  keyed_noise_run<KeyedDrawsLanes<U64x8>>(kind, key, first, count, z);
}
#endif

// A build of keyed_noise_run, the CPU's loop, equals the per-element draws
// (pairs whole or, at the end of an odd run, a lone even element) and the
// known answers.
void check_noise_run(NoiseRun run, const char* build) {
  std::printf("keyed_noise_run, %s build\n", build);
  for (Noise kind : {Noise::gaussian, Noise::uniform}) {
    const bool gaussian = kind == Noise::gaussian;
    for (const NoiseKat& k : kNoiseKats) {
      const uint64_t want = gaussian ? k.gaussian : k.uniform;
      expect(bits_of(keyed_noise(kind, kKatKey, k.element)) == want, "known answer, per element");
      double z[2];
      run(kind, kKatKey, k.element & ~int64_t{1}, 2, z);
      expect(bits_of(z[k.element & 1]) == want, "known answer, run of a pair");
      if ((k.element & 1) == 0) {
        run(kind, kKatKey, k.element, 1, z);  // a lone even element
        expect(bits_of(z[0]) == want, "known answer, lone even element");
      }
    }
    // Runs of every length up to 67 from several even starts (the last two
    // wrap word 0 past 2^32, the last one for Gaussian draws too), against the
    // per-element form.
    std::vector<double> z(kChecksumD);
    bool same = true;
    for (int64_t first : {int64_t{0}, int64_t{2}, int64_t{1000}, int64_t{4294967294},
                          int64_t{8589934588}}) {
      for (int64_t count = 0; count <= 67; ++count) {
        run(kind, kKatKey, first, count, z.data());
        for (int64_t i = 0; i < count; ++i) {
          same = same && bits_of(z[i]) == bits_of(keyed_noise(kind, kKatKey, first + i));
        }
      }
    }
    expect(same, "keyed_noise_run == keyed_noise per element");
    run(kind, kKatKey, 0, kChecksumD, z.data());
    uint64_t sum = 0;
    for (int64_t d = 0; d < kChecksumD; ++d) {
      sum += bits_of(z[d]) * static_cast<uint64_t>(2 * d + 1);
    }
    std::printf("%s checksum %016llx\n", gaussian ? "gaussian" : "uniform",
                static_cast<unsigned long long>(sum));
    expect(sum == (gaussian ? kGaussianChecksum : kUniformChecksum), "noise checksum");
  }
}

void test_noise_run() {
  check_noise_run(noise_run_baseline, "baseline");
#if defined(__x86_64__)
  if (__builtin_cpu_supports("avx2")) {
    check_noise_run(noise_run_avx2, "AVX2");
  } else {
    std::printf("no AVX2 here: its build is not checked\n");
  }
  if (__builtin_cpu_supports("avx512f")) {
    check_noise_run(noise_run_avx512, "AVX-512");
  } else {
    std::printf("no AVX-512 here: its build is not checked\n");
  }
#endif
}

// One element of generate_rows: B = 2, D = 3, N = 2 samples, S = 4 steps.
void test_generate_rows_element() {
  const double inputs[6] = {1.0, 2.0, 3.0, -1.0, -2.0, -3.0};  // [2, 3]
  const double baselines[3] = {0.5, 0.25, 0.0};                // [1, 3]
  const double alphas[4] = {0.0, 0.25, 0.5, 1.0};              // [4]
  double out[3];
  RowsParams p{};
  p.numel_per_row = 3;
  p.n_steps = 4;
  p.n_samples = 2;
  p.baseline_stride = 0;
  p.noise = Noise::gaussian;
  p.scale = 0.1;
  p.seed = 42;
  p.stream = 3;
  p.example_offset = 100;
  // Row 14 = example 1, sample 1, step 2; element 2 is out[2] of a 1-row call.
  p.row_start = 14;
  const GenerateRowsKernel<double, double> kernel{p, inputs, baselines, alphas, out};
  kernel(2);
  const double z = keyed_gaussian({42, 3, 101, 1}, 2);
  const double x_n = -3.0 + 0.1 * z;
  expect(out[2] == 0.0 + 0.5 * (x_n - 0.0), "noisy path point (float64)");
  // The CPU's form: the row, then the element given its draw.
  out[2] = 0.0;
  kernel.element(kernel.row(0), 2, z);
  expect(out[2] == 0.0 + 0.5 * (x_n - 0.0), "noisy path point, row-wise");

  // Antithetic noise: samples 0 and 1 of example 1 are pair 0's draw, +z and
  // -z, per element (GPU) and row-wise (CPU) alike.
  p.antithetic = true;
  const double z_pair = keyed_gaussian({42, 3, 101, 0}, 2);
  for (int64_t sample = 0; sample < 2; ++sample) {
    p.row_start = 8 + 4 * sample + 2;  // example 1, this sample, step 2
    const GenerateRowsKernel<double, double> pair_kernel{p, inputs, baselines, alphas, out};
    const double x_pair = -3.0 + 0.1 * (sample == 0 ? z_pair : -z_pair);
    out[2] = 1.0;
    pair_kernel(2);
    expect(out[2] == 0.0 + 0.5 * (x_pair - 0.0), "antithetic path point");
    out[2] = 1.0;
    const auto row = pair_kernel.row(0);
    expect(pair_kernel.noise_key(row).sample == 0, "antithetic pair key");
    pair_kernel.element(row, 2, z_pair);
    expect(out[2] == 0.0 + 0.5 * (x_pair - 0.0), "antithetic path point, row-wise");
  }
  p.antithetic = false;

  // Without noise and path the row is the input, rounded once to float.
  const float inputs_f[6] = {1.5f, 2.5f, 3.5f, 4.5f, 5.5f, 6.5f};
  float out_f[3];
  p.noise = Noise::none;
  p.n_steps = 1;
  p.row_start = 3;  // example 1, sample 1
  GenerateRowsKernel<float, float>{p, inputs_f, nullptr, nullptr, out_f}(1);
  expect(out_f[1] == 5.5f, "plain copy of example 1");
}

// One accumulation step: rows 5 and 6, in groups of 4 with weights 1..4, fold
// into group 1 (acc[1], group_offset 0) and leave group 0 alone.
void test_accumulate_step() {
  const float values[4] = {1.0f, 2.0f, 3.0f, 4.0f};  // [2 rows, D = 2]
  const double weights[4] = {1.0, 2.0, 3.0, 4.0};     // [4]
  float acc[4] = {0.0f, 0.0f, 10.0f, 20.0f};          // [G = 2, D = 2]
  float acc_sq[4] = {0.0f, 0.0f, 1.0f, 1.0f};
  AccumulateParams p{5, 2, 4, 1, 0, 2};
  const AccumulateKernel<float, float> kernel{p, acc, acc_sq, values, weights};
  kernel(0);
  kernel(1);
  // Row 5 has weight 2, row 6 weight 3.
  expect(acc[2] == 10.0f + 2.0f * 1.0f + 3.0f * 3.0f, "acc[1, 0]");
  expect(acc[3] == 20.0f + 2.0f * 2.0f + 3.0f * 4.0f, "acc[1, 1]");
  expect(acc_sq[2] == 1.0f + 2.0f * 1.0f + 3.0f * 9.0f, "acc_sq[1, 0]");
  expect(acc_sq[3] == 1.0f + 2.0f * 4.0f + 3.0f * 16.0f, "acc_sq[1, 1]");
  expect(acc[0] == 0.0f && acc[1] == 0.0f, "group 0 untouched");
  // Without acc_sq only acc moves.
  const AccumulateKernel<float, float> no_sq{p, acc, nullptr, values, weights};
  no_sq(0);
  expect(acc[2] == 32.0f && acc_sq[2] == 30.0f, "acc without acc_sq");
}

// The LRP stabilizer: +eps for z >= 0 (-0.0 included), -eps below, NaN kept.
void test_stabilize_element() {
  const float z[7] = {0.0f, -0.0f, 2.0f, -2.0f, 1e-12f, -1e-12f, std::nanf("")};
  float out[7];
  const StabilizeKernel<float, float> kernel{z, 0.5f, out};
  for (int64_t i = 0; i < 7; ++i) {
    kernel(i);
  }
  expect(out[0] == 0.5f && !std::signbit(out[0]), "stabilize(+0) = +eps");
  expect(out[1] == 0.5f && !std::signbit(out[1]), "stabilize(-0) = +eps");
  expect(out[2] == 2.5f && out[3] == -2.5f, "stabilize(+-2) = +-2.5");
  expect(out[4] == 0.5f + 1e-12f && out[5] == -(0.5f + 1e-12f), "one rounding of z + eps");
  expect(std::isnan(out[6]), "stabilize(NaN) = NaN");
  const double zd[2] = {1e-300, -1e-300};
  double outd[2];
  const StabilizeKernel<double, double> kd{zd, 1e-9, outd};
  kd(0);
  kd(1);
  expect(outd[0] == 1e-9 + 1e-300 && outd[1] == -1e-9 - 1e-300, "float64");
}

// The squared relative change: a known answer, then the summation order.
// Squares of 2^-27 are 2^-54, a quarter of the gap above 1 (2^-52): added to
// 1 one at a time each is lost (two together tie to even and are lost too),
// four summed first move 1 up by one gap. So the results show which sums
// happen first.
void test_relative_squares_order() {
  const double old[3] = {0.5, -2.0, 0.0};
  const double inverse[3] = {0.25, 0.5, 4.0};
  const float x[3] = {1.5f, 2.0f, 0.0f};
  double out = -1.0;
  relative_squares_rows<1>(x, old, inverse, 3, &out);
  // ((1.5 - 0.5) * 0.25)^2 + ((2 + 2) * 0.5)^2 + 0 = 0.0625 + 4.
  expect(out == 4.0625, "relative_squares known answer");

  constexpr int64_t D = 33;  // four full blocks of 8 and a tail of one element
  const double tiny = std::ldexp(1.0, -27);
  std::vector<float> rows(2 * D, 0.0f);
  std::vector<double> zeros(D, 0.0), ones(D, 1.0);
  // Row 0, lane 0 only: elements 0, 8, 16, 24 and the tail's 32 hold 1 and
  // four tiny ones. In order, each tiny square is lost against 1.
  rows[0] = 1.0f;
  for (int64_t d : {8, 16, 24, 32}) {
    rows[d] = static_cast<float>(tiny);
  }
  // Row 1: lane 0 holds 1, lanes 2 .. 7 one tiny square each. Combined as
  // ((l0 + l1) + (l2 + l3)) + ((l4 + l5) + (l6 + l7)): 1 + 2^-53 ties to 1,
  // then 1 + 2^-52 is exact. Lane by lane in order it would stay 1.
  rows[D] = 1.0f;
  for (int64_t d = 2; d < 8; ++d) {
    rows[D + d] = static_cast<float>(tiny);
  }
  const int64_t examples[2] = {0, 0};
  double got[2] = {-1.0, -1.0};
  const RelativeSquaresKernel<float> kernel{rows.data(), zeros.data(), ones.data(), examples,
                                            1,           D,            got};
  kernel(0);
  kernel(1);
  expect(got[0] == 1.0, "relative_squares: a lane sums its elements in increasing d (tail in lane 0)");
  expect(got[1] == 1.0 + std::ldexp(1.0, -52), "relative_squares: lanes combined pairwise");

  // rows_together: four rows of one example at once give each row's bits;
  // rows of several examples, or fewer than four left, go one by one. Row 4
  // (ids_a) or row 0 (ids_b) goes alone: two steps either way.
  std::vector<double> old5(2 * 11), inv5(2 * 11);
  std::vector<float> x5(5 * 11);
  for (int i = 0; i < 5 * 11; ++i) {
    x5[i] = static_cast<float>(std::sin(0.7 * i));
  }
  for (int i = 0; i < 2 * 11; ++i) {
    old5[i] = std::cos(1.3 * i);
    inv5[i] = 1.0 / (old5[i] + 3.0);
  }
  const int64_t ids_a[5] = {1, 1, 1, 1, 0};
  const int64_t ids_b[5] = {0, 1, 1, 1, 1};
  for (const int64_t* ids : {ids_a, ids_b}) {
    double one[5], together[5];
    const RelativeSquaresKernel<float> k{x5.data(), old5.data(), inv5.data(), ids, 2, 11, one};
    for (int64_t r = 0; r < 5; ++r) {
      k(r);
    }
    RelativeSquaresKernel<float> kt = k;
    kt.out = together;
    int64_t steps = 0;
    for (int64_t r = 0; r < 5; ++steps) {
      r = kt.rows_together(r, 5);
    }
    expect(std::memcmp(one, together, sizeof one) == 0, "rows_together: the bits of one row at a time");
    expect(steps == 2, "rows_together: four rows of one example in one step");
  }
}

struct Case {
  const char* name;
  void (*run)();
};

const Case kCases[] = {
    {"philox_kat", test_philox_kat},
    {"fa_log", test_fa_log},
    {"fa_cossin_2pi", test_fa_cossin_2pi},
    {"noise_moments", test_noise_moments},
    {"noise_run", test_noise_run},
    {"generate_rows_element", test_generate_rows_element},
    {"accumulate_step", test_accumulate_step},
    {"stabilize_element", test_stabilize_element},
    {"relative_squares_order", test_relative_squares_order},
};

}  // namespace

int main(int argc, char** argv) {
  int ran = 0;
  for (const Case& c : kCases) {
    if (argc < 2 || std::strcmp(argv[1], c.name) == 0) {
      c.run();
      ++ran;
    }
  }
  if (ran == 0) {
    std::printf("unknown test case '%s'\n", argv[1]);
    return 2;
  }
  return g_failures == 0 ? 0 : 1;
}
