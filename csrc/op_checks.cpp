#include "op_checks.h"

#include <cmath>

#include <ATen/OpMathType.h>
#include <c10/util/accumulate.h>
#include <c10/util/safe_numerics.h>

namespace fastattr {
namespace {

constexpr const char* kPhilox = "fastattr::philox4x32";
constexpr const char* kRows = "fastattr::generate_rows";
constexpr const char* kAccumulate = "fastattr::accumulate_";
constexpr const char* kStabilize = "fastattr::stabilize";
constexpr const char* kRelativeSquares = "fastattr::relative_squares";

// The dtype as Python users write it (torch.float32 is "Float" in c10).
const char* dtype_name(at::ScalarType t) {
  switch (t) {
    case at::kHalf:
      return "float16";
    case at::kBFloat16:
      return "bfloat16";
    case at::kFloat:
      return "float32";
    case at::kDouble:
      return "float64";
    case at::kLong:
      return "int64";
    case at::kInt:
      return "int32";
    default:
      return c10::toString(t);
  }
}

bool is_kernel_float(at::ScalarType t) {
  return t == at::kHalf || t == at::kBFloat16 || t == at::kFloat || t == at::kDouble;
}

// A batch of examples [B, *F] in one of the four supported float dtypes.
void check_float_batch(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK(is_kernel_float(t.scalar_type()), op, ": ", name,
              " must be float16, bfloat16, float32 or float64, got ", dtype_name(t.scalar_type()));
  TORCH_CHECK(t.dim() >= 1, op, ": ", name, " must have a batch dimension [B, *F], got a 0-d tensor");
}

void check_dtype(const at::Tensor& t, at::ScalarType want, const char* op, const char* name) {
  TORCH_CHECK(t.scalar_type() == want, op, ": ", name, " must have dtype ", dtype_name(want),
              ", got ", dtype_name(t.scalar_type()));
}

void check_vector(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK(t.dim() == 1, op, ": ", name, " must be 1-D, got shape ", t.sizes());
}

void check_same_device(const at::Tensor& t, const at::Tensor& ref, const char* op,
                       const char* name, const char* ref_name) {
  TORCH_CHECK(t.device() == ref.device(), op, ": ", name, " must be on the device of ", ref_name,
              " (", ref.device(), "), got ", t.device());
}

// t is [*, *F] with the per-example shape F of ref.
void check_example_shape(const at::Tensor& t, const at::Tensor& ref, const char* op,
                         const char* name, const char* ref_name) {
  TORCH_CHECK(t.dim() == ref.dim() && t.sizes().slice(1) == ref.sizes().slice(1), op, ": ", name,
              " must have the per-example shape of ", ref_name, " (", ref.sizes().slice(1),
              "), got shape ", t.sizes());
}

void check_nonnegative(int64_t v, const char* op, const char* name) {
  TORCH_CHECK(v >= 0, op, ": ", name, " must be >= 0, got ", v);
}

// noise: "none", "gaussian", "uniform", or "gaussian_antithetic" /
// "uniform_antithetic" (sets *antithetic).
Noise parse_noise(c10::string_view noise, bool* antithetic) {
  *antithetic = false;
  if (noise == "none") return Noise::none;
  if (noise == "gaussian") return Noise::gaussian;
  if (noise == "uniform") return Noise::uniform;
  *antithetic = true;
  if (noise == "gaussian_antithetic") return Noise::gaussian;
  TORCH_CHECK(noise == "uniform_antithetic", kRows,
              ": noise must be \"none\", \"gaussian\", \"uniform\", \"gaussian_antithetic\" or "
              "\"uniform_antithetic\", got \"", noise, "\"");
  return Noise::uniform;
}

}  // namespace

void check_philox4x32_args(const at::Tensor& counters, const at::Tensor& key) {
  check_dtype(counters, at::kLong, kPhilox, "counters");
  TORCH_CHECK(counters.dim() == 2 && counters.size(1) == 4, kPhilox,
              ": counters must have shape [N, 4], got ", counters.sizes());
  check_dtype(key, at::kLong, kPhilox, "key");
  TORCH_CHECK(key.dim() == 1 && key.size(0) == 2, kPhilox, ": key must have shape [2], got ",
              key.sizes());
  check_same_device(key, counters, kPhilox, "key", "counters");
}

RowsParams check_generate_rows_args(const at::Tensor& inputs,
                                    const std::optional<at::Tensor>& baselines,
                                    const std::optional<at::Tensor>& alphas, int64_t n_samples,
                                    c10::string_view noise, double scale, int64_t seed,
                                    int64_t stream, int64_t row_start, int64_t row_count,
                                    int64_t example_offset) {
  check_float_batch(inputs, kRows, "inputs");
  const int64_t batch = inputs.size(0);
  // A path needs both ends; a baseline without alphas would be silently unused.
  TORCH_CHECK(baselines.has_value() == alphas.has_value(), kRows,
              ": baselines and alphas must be given together (a path) or both be None, got ",
              baselines.has_value() ? "baselines without alphas" : "alphas without baselines");
  int64_t baseline_stride = 0;
  int64_t n_steps = 1;
  if (alphas.has_value()) {
    const at::Tensor& base = *baselines;
    check_dtype(base, inputs.scalar_type(), kRows, "baselines");
    check_same_device(base, inputs, kRows, "baselines", "inputs");
    check_example_shape(base, inputs, kRows, "baselines", "inputs");
    TORCH_CHECK(base.size(0) == 1 || base.size(0) == batch, kRows,
                ": baselines must have batch size 1 or B = ", batch, ", got shape ", base.sizes());
    baseline_stride = base.size(0) == 1 ? 0 : c10::multiply_integers(inputs.sizes().slice(1));
    check_dtype(*alphas, at::kDouble, kRows, "alphas");
    check_vector(*alphas, kRows, "alphas");
    check_same_device(*alphas, inputs, kRows, "alphas", "inputs");
    n_steps = alphas->size(0);
    TORCH_CHECK(n_steps >= 1, kRows, ": alphas must have at least one path point, got shape ",
                alphas->sizes());
  }
  TORCH_CHECK(n_samples >= 1, kRows, ": n_samples must be >= 1, got ", n_samples);
  bool antithetic = false;
  const Noise kind = parse_noise(noise, &antithetic);
  TORCH_CHECK(std::isfinite(scale) && scale >= 0.0, kRows,
              ": scale must be finite and >= 0, got ", scale);
  check_nonnegative(seed, kRows, "seed");
  check_nonnegative(stream, kRows, "stream");
  check_nonnegative(example_offset, kRows, "example_offset");
  check_nonnegative(row_start, kRows, "row_start");
  check_nonnegative(row_count, kRows, "row_count");
  int64_t points = 0;
  int64_t total_rows = 0;
  TORCH_CHECK(!c10::mul_overflows(n_samples, n_steps, &points) &&
                  !c10::mul_overflows(batch, points, &total_rows),
              kRows, ": B * n_samples * S overflows int64 (B = ", batch,
              ", n_samples = ", n_samples, ", S = ", n_steps, ")");
  TORCH_CHECK(row_start <= total_rows && row_count <= total_rows - row_start, kRows,
              ": rows [row_start, row_start + row_count) must lie within the B * n_samples * S = ",
              total_rows, " rows, got row_start = ", row_start, ", row_count = ", row_count);

  RowsParams p{};
  p.row_start = row_start;
  p.numel_per_row = c10::multiply_integers(inputs.sizes().slice(1));
  p.n_steps = n_steps;
  p.n_samples = n_samples;
  p.baseline_stride = baseline_stride;
  p.noise = kind;
  p.antithetic = antithetic;
  p.scale = scale;
  p.seed = static_cast<uint64_t>(seed);
  p.stream = stream;
  p.example_offset = example_offset;
  return p;
}

AccumulateParams check_accumulate_args(const at::Tensor& acc,
                                       const std::optional<at::Tensor>& acc_sq,
                                       const at::Tensor& values, const at::Tensor& weights,
                                       int64_t row_start, int64_t group_size,
                                       int64_t group_offset) {
  check_float_batch(values, kAccumulate, "values");
  // Half types accumulate in float32; float32 and float64 in themselves.
  const at::ScalarType acc_type = at::toOpMathType(values.scalar_type());
  const auto check_accumulator = [&](const at::Tensor& t, const char* name) {
    TORCH_CHECK(t.scalar_type() == acc_type, kAccumulate, ": ", name, " must have dtype ",
                dtype_name(acc_type), " for values of dtype ", dtype_name(values.scalar_type()),
                ", got ", dtype_name(t.scalar_type()));
    check_same_device(t, values, kAccumulate, name, "values");
    check_example_shape(t, values, kAccumulate, name, "values");
    TORCH_CHECK(t.is_contiguous(), kAccumulate, ": ", name, " must be contiguous");
  };
  check_accumulator(acc, "acc");
  if (acc_sq.has_value()) {
    check_accumulator(*acc_sq, "acc_sq");
    TORCH_CHECK(acc_sq->size(0) == acc.size(0), kAccumulate,
                ": acc_sq must have the shape of acc (", acc.sizes(), "), got ", acc_sq->sizes());
    TORCH_CHECK(acc.numel() == 0 || acc_sq->data_ptr() != acc.data_ptr(), kAccumulate,
                ": acc_sq must not share memory with acc");
  }
  check_dtype(weights, at::kDouble, kAccumulate, "weights");
  check_vector(weights, kAccumulate, "weights");
  check_same_device(weights, values, kAccumulate, "weights", "values");
  TORCH_CHECK(group_size >= 1, kAccumulate, ": group_size must be >= 1, got ", group_size);
  TORCH_CHECK(weights.size(0) == group_size, kAccumulate,
              ": weights must have group_size = ", group_size, " elements, got ",
              weights.size(0));
  check_nonnegative(row_start, kAccumulate, "row_start");

  const int64_t row_count = values.size(0);
  int64_t row_end = 0;
  TORCH_CHECK(!c10::add_overflows(row_start, row_count, &row_end), kAccumulate,
              ": row_start + len(values) overflows int64 (row_start = ", row_start, ")");
  const AccumulateParams p{row_start,  row_count,   group_size, row_start / group_size,
                           group_offset, c10::multiply_integers(values.sizes().slice(1))};
  const int64_t n_groups = touched_groups(p);
  if (n_groups > 0) {
    const int64_t first = p.first_group - group_offset;
    const int64_t last = first + n_groups - 1;
    TORCH_CHECK(first >= 0 && last < acc.size(0), kAccumulate, ": rows [", row_start, ", ",
                row_end, ") fall in groups [", p.first_group, ", ", p.first_group + n_groups - 1,
                "], stored at acc[", first, " .. ", last, "] with group_offset = ", group_offset,
                ", outside acc's ", acc.size(0), " groups");
  }
  return p;
}

void check_stabilize_args(const at::Tensor& z, double epsilon) {
  TORCH_CHECK(is_kernel_float(z.scalar_type()), kStabilize,
              ": z must be float16, bfloat16, float32 or float64, got ", dtype_name(z.scalar_type()));
  TORCH_CHECK(std::isfinite(epsilon) && epsilon >= 0, kStabilize,
              ": epsilon must be finite and >= 0, got ", epsilon);
}

void check_relative_squares_args(const at::Tensor& new_rows, const at::Tensor& old,
                                 const at::Tensor& inverse, const at::Tensor& examples) {
  const char* op = kRelativeSquares;
  TORCH_CHECK(is_kernel_float(new_rows.scalar_type()), op,
              ": new must be float16, bfloat16, float32 or float64, got ",
              dtype_name(new_rows.scalar_type()));
  TORCH_CHECK(new_rows.dim() == 2, op, ": new must be 2-D [g, D], got shape ", new_rows.sizes());
  check_dtype(old, at::kDouble, op, "old");
  TORCH_CHECK(old.dim() == 2 && old.size(1) == new_rows.size(1), op,
              ": old must be 2-D [B, D] with the D = ", new_rows.size(1), " of new, got shape ",
              old.sizes());
  check_same_device(old, new_rows, op, "old", "new");
  check_dtype(inverse, at::kDouble, op, "inverse");
  TORCH_CHECK(inverse.sizes() == old.sizes(), op, ": inverse must have the shape of old (",
              old.sizes(), "), got ", inverse.sizes());
  check_same_device(inverse, new_rows, op, "inverse", "new");
  check_dtype(examples, at::kLong, op, "examples");
  TORCH_CHECK(examples.dim() == 1 && examples.size(0) == new_rows.size(0), op,
              ": examples must have shape [g] = [", new_rows.size(0), "], got ", examples.sizes());
  check_same_device(examples, new_rows, op, "examples", "new");
  // On a GPU the kernel checks each id as it reads it (FASTATTR_DEVICE_ASSERT):
  // reading them here would synchronize with the device.
  if (examples.device().is_cpu() && examples.numel() > 0) {
    const at::Tensor ids = examples.contiguous();
    const int64_t* e = ids.const_data_ptr<int64_t>();
    const int64_t batch = old.size(0);
    for (int64_t r = 0; r < ids.numel(); ++r) {
      TORCH_CHECK(e[r] >= 0 && e[r] < batch, op, ": examples must lie in [0, B) = [0, ", batch,
                  "), got examples[", r, "] = ", e[r]);
    }
  }
}

}  // namespace fastattr
