// Input checks for every op entry point: each message names the argument, so a user sees what to fix.
// Shape/range problems raise ValueError, dtype problems TypeError (TORCH_CHECK_VALUE / TORCH_CHECK_TYPE).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>
#include <c10/util/safe_numerics.h>

#include <cmath>
#include <cstdint>
#include <limits>

namespace imtok {

inline bool is_float_type(c10::ScalarType t) {
  return t == c10::kFloat || t == c10::kDouble || t == c10::kHalf || t == c10::kBFloat16;
}

inline void check_floating(const at::Tensor& t, const char* name) {
  TORCH_CHECK_TYPE(is_float_type(t.scalar_type()), name,
                   " must be float16, bfloat16, float32 or float64, got ", t.scalar_type());
}

inline void check_dtype(const at::Tensor& t, c10::ScalarType want, const char* name) {
  TORCH_CHECK_TYPE(t.scalar_type() == want, name, " must be ", want, ", got ", t.scalar_type());
}

inline void check_dim(const at::Tensor& t, int64_t dim, const char* name) {
  TORCH_CHECK_VALUE(t.dim() == dim, name, " must have ", dim, " dimensions, got shape ", t.sizes());
}

inline void check_min_dim(const at::Tensor& t, int64_t dim, const char* name) {
  TORCH_CHECK_VALUE(t.dim() >= dim, name, " must have at least ", dim, " dimension(s), got shape ", t.sizes());
}

inline void check_same_device(const at::Tensor& a, const char* na, const at::Tensor& b, const char* nb) {
  TORCH_CHECK_VALUE(a.device() == b.device(), na, " and ", nb, " must be on the same device, got ", a.device(),
                    " and ", b.device());
}

inline void check_same_dtype(const at::Tensor& a, const char* na, const at::Tensor& b, const char* nb) {
  TORCH_CHECK_TYPE(a.scalar_type() == b.scalar_type(), na, " and ", nb, " must have the same dtype, got ",
                   a.scalar_type(), " and ", b.scalar_type());
}

inline void check_size(const at::Tensor& t, int64_t dim, int64_t want, const char* name) {
  TORCH_CHECK_VALUE(t.size(dim) == want, name, ".shape[", dim, "] must be ", want, ", got shape ", t.sizes());
}

inline void check_device_type(const at::Tensor& t, c10::DeviceType want, const char* name) {
  TORCH_CHECK_VALUE(t.device().type() == want, name, " must be a ", c10::DeviceTypeName(want, true),
                    " tensor, got ", t.device());
}

// Size arithmetic on user-given sizes in checked int64: an overflow raises ValueError naming what was computed
// ("s*s", "h*w*s*s"), never wraps to a bogus size (a wrapped size once reached the kernels as h*w = 4).
inline int64_t checked_mul(int64_t a, int64_t b, const char* what) {
  int64_t r = 0;
  TORCH_CHECK_VALUE(!c10::mul_overflows<int64_t>(a, b, &r), what, " overflows int64 (", a, " * ", b, ")");
  return r;
}

inline int64_t checked_add(int64_t a, int64_t b, const char* what) {
  int64_t r = 0;
  TORCH_CHECK_VALUE(!c10::add_overflows<int64_t>(a, b, &r), what, " overflows int64 (", a, " + ", b, ")");
  return r;
}

// A float parameter that must be finite (scale, alpha, eps, temperature ...): NaN / inf is an error, not a
// silently non-finite result.
inline void check_finite_param(double v, const char* name) {
  TORCH_CHECK_VALUE(std::isfinite(v), name, " must be finite, got ", v);
}

// Host copy of a (small) index tensor for value checks. On CUDA this is a device-to-host copy, i.e. a
// synchronisation: the price of validating plans before any kernel runs, on every device.
inline at::Tensor host_contiguous(const at::Tensor& t) {
  return t.device().is_cpu() ? t.contiguous() : t.to(c10::Device(c10::kCPU)).contiguous();
}

}  // namespace imtok
