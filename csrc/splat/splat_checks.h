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
