// Argument checks shared by the CPU, CUDA and emulated entry points of the splat ops.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>
#include <c10/util/Optional.h>

#include <cmath>

#include "common/checks.h"

namespace imtok {
namespace splat {

inline void check_render_args(const at::Tensor& geometry, const at::Tensor& features, int64_t H, int64_t W,
                              double box_sigma, const c10::optional<at::Tensor>& lengths) {
  check_dim(geometry, 3, "geometry");
  check_size(geometry, 2, 5, "geometry");
  check_dim(features, 3, "features");
  TORCH_CHECK_VALUE(features.size(0) == geometry.size(0) && features.size(1) == geometry.size(1),
                    "features must have shape [B, N, C] with B, N of geometry ", geometry.sizes(), ", got ",
                    features.sizes());
  check_floating(geometry, "geometry");
  check_floating(features, "features");
  check_same_dtype(geometry, "geometry", features, "features");
  check_same_device(geometry, "geometry", features, "features");
  TORCH_CHECK_VALUE(H >= 0 && W >= 0, "size (H, W) must be non-negative, got (", H, ", ", W, ")");
  TORCH_CHECK_VALUE(H <= (int64_t(1) << 24) && W <= (int64_t(1) << 24), "size (H, W) too large: (", H, ", ", W,
                    ")");
  TORCH_CHECK_VALUE(box_sigma > 0, "box_sigma must be positive (or inf for no cutoff), got ", box_sigma);
  if (lengths.has_value()) {
    const at::Tensor& l = *lengths;
    check_dim(l, 1, "lengths");
    check_size(l, 0, geometry.size(0), "lengths");
    TORCH_CHECK_TYPE(l.scalar_type() == c10::kLong || l.scalar_type() == c10::kInt,
                     "lengths must be int32 or int64, got ", l.scalar_type());
    check_same_device(geometry, "geometry", l, "lengths");
  }
}

// Rejects geometry outside the model's domain (sigma > 0, |rho| < 1, finite mu) and lengths outside [0, N].
template <typename T>
void check_geometry_values(const T* g, const int64_t* len, int64_t B, int64_t N) {
  for (int64_t b = 0; b < B; ++b) {
    const int64_t nb = len ? len[b] : N;
    TORCH_CHECK_VALUE(nb >= 0 && nb <= N, "lengths[", b, "] must be in [0, N=", N, "], got ", nb);
    for (int64_t n = 0; n < nb; ++n) {
      const T* t = g + (b * N + n) * 5;
      TORCH_CHECK_VALUE(t[0] > T(0) && t[1] > T(0), "geometry: sigma_x and sigma_y must be positive, got (",
                        t[0], ", ", t[1], ") at token [", b, ", ", n, "]");
      TORCH_CHECK_VALUE(t[2] > T(-1) && t[2] < T(1), "geometry: rho must be in (-1, 1), got ", t[2],
                        " at token [", b, ", ", n, "]");
      TORCH_CHECK_VALUE(std::isfinite(static_cast<double>(t[3])) && std::isfinite(static_cast<double>(t[4])),
                        "geometry: mu must be finite, got (", t[3], ", ", t[4], ") at token [", b, ", ", n, "]");
    }
  }
}

// The same value checks for the device launchers, on a host copy (on CUDA: one device-to-host copy, a sync),
// so that every device rejects what the CPU kernel rejects, before any kernel runs.
inline void check_geometry_values(const at::Tensor& geometry, const c10::optional<at::Tensor>& lengths) {
  const at::Tensor g = host_contiguous(geometry.to(c10::kDouble));
  at::Tensor len;
  if (lengths.has_value() && lengths->defined()) len = host_contiguous(lengths->to(c10::kLong));
  check_geometry_values<double>(g.const_data_ptr<double>(), len.defined() ? len.const_data_ptr<int64_t>() : nullptr,
                                g.size(0), g.size(1));
}

inline void check_backward_args(const at::Tensor& grad_out, const at::Tensor& geometry, const at::Tensor& features,
                                const c10::optional<at::Tensor>& out, int64_t H, int64_t W, bool normalize) {
  check_dim(grad_out, 4, "grad_out");
  TORCH_CHECK_VALUE(grad_out.size(0) == geometry.size(0) && grad_out.size(1) == features.size(2) &&
                        grad_out.size(2) == H && grad_out.size(3) == W,
                    "grad_out must have shape [B, C, H, W] = [", geometry.size(0), ", ", features.size(2), ", ", H,
                    ", ", W, "], got ", grad_out.sizes());
  check_floating(grad_out, "grad_out");
  check_same_device(grad_out, "grad_out", geometry, "geometry");
  if (normalize) {
    TORCH_CHECK_VALUE(out.has_value(), "out (the forward output) is required when normalize=True");
    TORCH_CHECK_VALUE(out->sizes() == grad_out.sizes(), "out must have the shape of grad_out ", grad_out.sizes(),
                      ", got ", out->sizes());
    check_same_device(*out, "out", geometry, "geometry");
  }
}

}  // namespace splat
}  // namespace imtok
