// Argument validation of the fastattr ops, shared by the CPU and CUDA
// implementations: each function checks every argument (throwing
// c10::Error, i.e. RuntimeError, with a message naming it) and returns the
// scalar parameters of the kernel body.
#pragma once

#include <cstdint>
#include <optional>

#include <ATen/core/Tensor.h>
#include <c10/util/string_view.h>

#include "fastattr/accumulate.h"
#include "fastattr/rows.h"

namespace fastattr {

// counters: int64 [N, 4]; key: int64 [2].
void check_philox4x32_args(const at::Tensor& counters, const at::Tensor& key);

// inputs: [B, *F]; baselines: [1 or B, *F] or none; alphas: float64 [S] or none.
RowsParams check_generate_rows_args(const at::Tensor& inputs,
                                    const std::optional<at::Tensor>& baselines,
                                    const std::optional<at::Tensor>& alphas, int64_t n_samples,
                                    c10::string_view noise, double scale, int64_t seed,
                                    int64_t stream, int64_t row_start, int64_t row_count,
                                    int64_t example_offset);

// acc, acc_sq: [G, *F]; values: [n, *F]; weights: float64 [group_size].
AccumulateParams check_accumulate_args(const at::Tensor& acc,
                                       const std::optional<at::Tensor>& acc_sq,
                                       const at::Tensor& values, const at::Tensor& weights,
                                       int64_t row_start, int64_t group_size,
                                       int64_t group_offset);

// z: a float tensor; epsilon finite, >= 0.
void check_stabilize_args(const at::Tensor& z, double epsilon);

// new_rows: [g, D] float; old, inverse: float64 [B, D]; examples: int64 [g],
// values in [0, B) (read and checked here only for CPU tensors).
void check_relative_squares_args(const at::Tensor& new_rows, const at::Tensor& old,
                                 const at::Tensor& inverse, const at::Tensor& examples);

}  // namespace fastattr
