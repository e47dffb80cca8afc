// Body of fastattr::generate_rows: one element of one generated row (a path
// point and/or a noisy copy of an input), host and device.
// See csrc/README.md section 3.
#pragma once

#include <cstdint>

#include "fastattr/keyed_random.h"
#include "fastattr/macros.h"

namespace fastattr {

// Scalar arguments of generate_rows, after validation.
struct RowsParams {
  int64_t row_start;        // first row made by this call
  int64_t numel_per_row;    // D = prod(F)
  int64_t n_steps;          // S = len(alphas), 1 without a path
  int64_t n_samples;        // noise samples per example
  int64_t baseline_stride;  // D for baselines [B, *F], 0 for [1, *F]
  Noise noise;
  bool antithetic;          // sample n draws pair n / 2's noise, negated when n is odd
  double scale;             // noise stdev or L-infinity radius
  uint64_t seed;
  int64_t stream;
  int64_t example_offset;   // example id of inputs[0]
};

// Row r is example b = r / P, sample n = (r / S) % N, path step s = r % S
// (P = N * S); output element i is element d = i % D of row row_start + i / D.
// Antithetic noise keys sample n's draws as sample n / 2 and negates them
// for odd n, so samples 2k and 2k + 1 are the pair (z, -z).
// Arithmetic is in acc_t (float for half types, else scalar_t), rounded to
// scalar_t once at the end. row() does the per-row index arithmetic and
// noise_key() names the row's draws, so that a CPU loop does both once per
// row and makes the row's noise in runs (keyed_noise_run); operator() is the
// per-element GPU form, which draws each element's noise itself.
template <typename scalar_t, typename acc_t>
struct GenerateRowsKernel {
  RowsParams p;
  const scalar_t* inputs;     // [B, D]
  const scalar_t* baselines;  // [1 or B, D]; nullptr without a path
  const double* alphas;       // [S]; nullptr without a path
  scalar_t* out;              // [row_count, D]

  struct Row {
    int64_t local;  // index of the row in out
    int64_t b;      // example
    int64_t n;      // noise sample
    int64_t s;      // path step
    double sign;    // the noise's sign: -1 for the odd sample of an antithetic pair, else +1
  };

  FASTATTR_HD Row row(int64_t local) const {
    const int64_t r = p.row_start + local;
    const int64_t n = (r / p.n_steps) % p.n_samples;
    return Row{local, r / (p.n_samples * p.n_steps), n, r % p.n_steps,
               p.antithetic && (n & 1) != 0 ? -1.0 : 1.0};
  }

  FASTATTR_HD NoiseKey noise_key(const Row& w) const {
    return NoiseKey{p.seed, p.stream, p.example_offset + w.b, p.antithetic ? w.n >> 1 : w.n};
  }

  // Element d of row w, given its noise draw z (unused with Noise::none).
  // w.sign * z is exact (a multiply by +-1), so +1 leaves z's bits as they are.
  FASTATTR_HD void element(const Row& w, int64_t d, double z) const {
    acc_t x = static_cast<acc_t>(inputs[w.b * p.numel_per_row + d]);
    if (p.noise != Noise::none) {
      x = x + static_cast<acc_t>(p.scale) * static_cast<acc_t>(w.sign * z);
    }
    if (alphas != nullptr) {
      const acc_t base = static_cast<acc_t>(baselines[w.b * p.baseline_stride + d]);
      x = base + static_cast<acc_t>(alphas[w.s]) * (x - base);
    }
    out[w.local * p.numel_per_row + d] = static_cast<scalar_t>(x);
  }

  FASTATTR_HD void operator()(int64_t i) const {
    const Row w = row(i / p.numel_per_row);
    const int64_t d = i % p.numel_per_row;
    element(w, d, p.noise == Noise::none ? 0.0 : keyed_noise(p.noise, noise_key(w), d));
  }
};

}  // namespace fastattr
