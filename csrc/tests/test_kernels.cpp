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
#include "fastattr/rows.h"

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

// fa_log against std::log over (0, 1]: dense near 1, log-spaced to 2^-53.
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
  expect(max_rel <= 1e-15, "fa_log relative error <= 1e-15");
  expect(fa_log(1.0) == 0.0, "fa_log(1) == 0");
}

// fa_cos_2pi against a long double cos over [0, 1), every quadrant edge included.
void test_fa_cos_2pi() {
  const long double two_pi = 6.283185307179586476925286766559L;
  double max_abs = 0.0;
  const int n = 400000;
  for (int i = 0; i < n; ++i) {
    const double t = static_cast<double>(i) / n;
    const double want = static_cast<double>(std::cos(two_pi * static_cast<long double>(t)));
    const double err = std::fabs(fa_cos_2pi(t) - want);
    if (err > max_abs) max_abs = err;
  }
  std::printf("fa_cos_2pi: max absolute error %.3g\n", max_abs);
  expect(max_abs <= 1e-15, "fa_cos_2pi absolute error <= 1e-15");
  expect(fa_cos_2pi(0.0) == 1.0 && fa_cos_2pi(0.5) == -1.0, "fa_cos_2pi exact at 0 and 1/2");
  // poly_sin / poly_cos directly, on their whole domain [-pi/4, pi/4].
  double poly_err = 0.0;
  for (int i = -1000; i <= 1000; ++i) {
    const double x = 0.78539816339744830962 * i / 1000.0;
    poly_err = std::fmax(poly_err, std::fabs(poly_sin(x) - std::sin(x)));
    poly_err = std::fmax(poly_err, std::fabs(poly_cos(x) - std::cos(x)));
  }
  expect(poly_err <= 1e-15, "poly_sin / poly_cos absolute error <= 1e-15");
}

// Moments of the keyed draws over 200k keys: within 5 standard errors.
void test_noise_moments() {
  const int n = 200000;
  double gs = 0, gs2 = 0, us = 0, us2 = 0;
  bool in_range = true;
  for (int i = 0; i < n; ++i) {
    const NoiseKey key{12345, 7, i / 1000, i % 10, i};
    const double g = keyed_gaussian(key);
    const double u = keyed_uniform(key);
    gs += g;
    gs2 += g * g;
    us += u;
    us2 += u * u;
    in_range = in_range && u >= -1.0 && u < 1.0 && std::isfinite(g);
  }
  const double g_mean = gs / n, g_var = gs2 / n - g_mean * g_mean;
  const double u_mean = us / n, u_var = us2 / n - u_mean * u_mean;
  std::printf("gaussian mean %.4f var %.4f; uniform mean %.4f var %.4f\n", g_mean, g_var, u_mean,
              u_var);
  expect(in_range, "uniform in [-1, 1), gaussian finite");
  expect_near(g_mean, 0.0, 5.0 / std::sqrt(n), "gaussian mean");
  expect_near(g_var, 1.0, 5.0 * std::sqrt(2.0 / n), "gaussian variance");
  expect_near(u_mean, 0.0, 5.0 * std::sqrt(1.0 / 3.0 / n), "uniform mean");
  expect_near(u_var, 1.0 / 3.0, 5.0 * std::sqrt(4.0 / 45.0 / n), "uniform variance");
  // Keys differing in one id give different draws.
  expect(keyed_gaussian({1, 0, 0, 0, 0}) != keyed_gaussian({1, 0, 0, 1, 0}), "sample id matters");
  expect(keyed_gaussian({1, 0, 0, 0, 0}) != keyed_gaussian({1ull << 32, 0, 0, 0, 0}),
         "high seed word matters");
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
  GenerateRowsKernel<double, double>{p, inputs, baselines, alphas, out}(2);
  const double z = keyed_gaussian({42, 3, 101, 1, 2});
  const double x_n = -3.0 + 0.1 * z;
  expect(out[2] == 0.0 + 0.5 * (x_n - 0.0), "noisy path point (float64)");

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

struct Case {
  const char* name;
  void (*run)();
};

const Case kCases[] = {
    {"philox_kat", test_philox_kat},
    {"fa_log", test_fa_log},
    {"fa_cos_2pi", test_fa_cos_2pi},
    {"noise_moments", test_noise_moments},
    {"generate_rows_element", test_generate_rows_element},
    {"accumulate_step", test_accumulate_step},
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
