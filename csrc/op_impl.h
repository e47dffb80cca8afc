// The fastattr ops, written once for every device: validate, make inputs
// contiguous, allocate the output, dispatch on dtype, and hand the kernel body
// (a functor over output elements, csrc/fastattr/*.h) to
// Launch::for_each(device, n, work_per_element, kernel), which runs kernel(i)
// for i in [0, n) (Launch::for_each_row for kernels with a per-row part).
// Only the Launch policy differs between ops.cpp (CPU) and ops_cuda.cu (CUDA).
#pragma once

#include <cstdint>
#include <optional>

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <c10/util/string_view.h>

#include "fastattr/accumulate.h"
#include "fastattr/philox.h"
#include "fastattr/relative_squares.h"
#include "fastattr/rows.h"
#include "fastattr/stabilize.h"
#include "op_checks.h"

namespace fastattr {

// Relative cost of one output element, for CPU grain sizes: about its
// nanoseconds on one core (a copy costs 1). Noisy rows make their noise with
// vectorized loops (keyed_noise_run): uniform ~2 ns and Gaussian ~3 ns with
// AVX-512, ~3.5 and ~5 ns with AVX2.
constexpr int64_t kPhiloxWork = 16;
constexpr int64_t kNoiseWork = 3;

// counters: int64 [N, 4]; key: int64 [2] -> int64 [N, 4].
template <typename Launch>
at::Tensor philox4x32_op(const at::Tensor& counters, const at::Tensor& key) {
  check_philox4x32_args(counters, key);
  const at::Tensor c = counters.contiguous();
  const at::Tensor k = key.contiguous();
  at::Tensor out = at::empty({c.size(0), 4}, c.options());
  Launch::for_each(c.device(), c.size(0), kPhiloxWork,
                   Philox4x32Kernel{c.const_data_ptr<int64_t>(), k.const_data_ptr<int64_t>(),
                                    out.mutable_data_ptr<int64_t>()});
  return out;
}

// inputs: [B, *F]; baselines: [1 or B, *F]; alphas: float64 [S] -> [row_count, *F].
template <typename Launch>
at::Tensor generate_rows_op(const at::Tensor& inputs, const std::optional<at::Tensor>& baselines,
                            const std::optional<at::Tensor>& alphas, int64_t n_samples,
                            c10::string_view noise, double scale, int64_t seed, int64_t stream,
                            int64_t row_start, int64_t row_count, int64_t example_offset) {
  const RowsParams p = check_generate_rows_args(inputs, baselines, alphas, n_samples, noise, scale,
                                                seed, stream, row_start, row_count,
                                                example_offset);
  const at::Tensor x = inputs.contiguous();
  const at::Tensor base = baselines.has_value() ? baselines->contiguous() : at::Tensor();
  const at::Tensor steps = alphas.has_value() ? alphas->contiguous() : at::Tensor();
  at::DimVector shape(x.sizes());
  shape[0] = row_count;
  at::Tensor out = at::empty(shape, x.options());
  const int64_t work = p.noise == Noise::none ? 1 : kNoiseWork;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "generate_rows", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    Launch::for_each_row(x.device(), row_count, p.numel_per_row, work,
                         GenerateRowsKernel<scalar_t, acc_t>{
                             p, x.const_data_ptr<scalar_t>(),
                             base.defined() ? base.const_data_ptr<scalar_t>() : nullptr,
                             steps.defined() ? steps.const_data_ptr<double>() : nullptr,
                             out.mutable_data_ptr<scalar_t>()});
  });
  return out;
}

// acc, acc_sq: [G, *F] (updated in place); values: [n, *F]; weights: float64 [group_size].
template <typename Launch>
void accumulate_op(const at::Tensor& acc, const std::optional<at::Tensor>& acc_sq,
                   const at::Tensor& values, const at::Tensor& weights, int64_t row_start,
                   int64_t group_size, int64_t group_offset) {
  const AccumulateParams p =
      check_accumulate_args(acc, acc_sq, values, weights, row_start, group_size, group_offset);
  if (p.row_count == 0) {
    return;
  }
  const at::Tensor v = values.contiguous();
  const at::Tensor w = weights.contiguous();
  const int64_t rows_per_group = p.group_size < p.row_count ? p.group_size : p.row_count;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, v.scalar_type(), "accumulate_", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    Launch::for_each_group_block(v.device(), touched_groups(p), p.numel_per_row, rows_per_group,
                                 AccumulateKernel<scalar_t, acc_t>{
                                     p, acc.mutable_data_ptr<acc_t>(),
                                     acc_sq.has_value() ? acc_sq->mutable_data_ptr<acc_t>() : nullptr,
                                     v.const_data_ptr<scalar_t>(), w.const_data_ptr<double>()});
  });
}

// z -> z + eps * sign(z), sign(0) = +1, laid out like z when it is dense
// (any memory format: walked over its storage), else contiguous.
template <typename Launch>
at::Tensor stabilize_op(const at::Tensor& z, double epsilon) {
  check_stabilize_args(z, epsilon);
  const at::Tensor zz = z.is_non_overlapping_and_dense() ? z : z.contiguous();
  at::Tensor out = at::empty_like(zz);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, zz.scalar_type(), "stabilize", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    Launch::for_each(zz.device(), zz.numel(), 1,
                     StabilizeKernel<scalar_t, acc_t>{zz.const_data_ptr<scalar_t>(),
                                                      static_cast<scalar_t>(epsilon),
                                                      out.mutable_data_ptr<scalar_t>()});
  });
  return out;
}

// new_rows: [g, D]; old, inverse: float64 [B, D]; examples: int64 [g] -> float64 [g]:
// sum_d ((new_rows[r, d] - old[e, d]) * inverse[e, d])^2, e = examples[r].
template <typename Launch>
at::Tensor relative_squares_op(const at::Tensor& new_rows, const at::Tensor& old,
                               const at::Tensor& inverse, const at::Tensor& examples) {
  check_relative_squares_args(new_rows, old, inverse, examples);
  const at::Tensor x = new_rows.contiguous();
  const at::Tensor o = old.contiguous();
  const at::Tensor inv = inverse.contiguous();
  const at::Tensor ids = examples.contiguous();
  at::Tensor out = at::empty({x.size(0)}, x.options().dtype(at::kDouble));
  const int64_t cols = x.size(1);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "relative_squares", [&] {
    // A row costs about its D elements (three loads, four flops each).
    Launch::for_each(x.device(), x.size(0), cols > 1 ? cols : 1,
                     RelativeSquaresKernel<scalar_t>{
                         x.const_data_ptr<scalar_t>(), o.const_data_ptr<double>(),
                         inv.const_data_ptr<double>(), ids.const_data_ptr<int64_t>(), o.size(0),
                         cols, out.mutable_data_ptr<double>()});
  });
  return out;
}

}  // namespace fastattr
