// Tensor-level launchers of the Token-Shuffle device kernels (real CUDA build and emulation).
#pragma once

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>

#include "common/checks.h"
#include "common/device.h"
#include "shuffle/shuffle_kernels.cuh"

namespace imtok {
namespace IMTOK_DEVICE_NS {
namespace shuffle_dev {

using at::Tensor;

inline void check_grid(int64_t h, int64_t w, int64_t s) {
  TORCH_CHECK_VALUE(h > 0 && w > 0, "h and w must be positive, got h=", h, ", w=", w);
  TORCH_CHECK_VALUE(s > 0, "s must be positive, got ", s);
}

inline Tensor permute(const Tensor& x_, int64_t h, int64_t w, int64_t s, bool to_coarse) {
  check_grid(h, w, s);
  check_floating(x_, "x");
  check_dim(x_, 3, "x");
  const int64_t S = s * s, Q = h * w;
  int64_t D;
  if (to_coarse) {
    TORCH_CHECK_VALUE(x_.size(1) == Q * S, "x.shape[1] must be (h s)(w s) = ", Q * S, " tokens, got shape ",
                      x_.sizes());
    D = x_.size(2);
  } else {
    TORCH_CHECK_VALUE(x_.size(1) == Q, "x.shape[1] must be h w = ", Q, " tokens, got shape ", x_.sizes());
    TORCH_CHECK_VALUE(x_.size(2) % S == 0, "x.shape[2] must be divisible by s*s = ", S, ", got shape ", x_.sizes());
    D = x_.size(2) / S;
  }
  const Tensor x = x_.contiguous();
  const int64_t B = x.size(0);
  Tensor y = to_coarse ? at::empty({B, Q, S * D}, x.options()) : at::empty({B, Q * S, D}, x.options());
  const int64_t n = x.numel();
  if (n == 0) return y;
  IMTOK_DEVICE_GUARD(x);
  auto stream = IMTOK_CURRENT_STREAM();
  AT_DISPATCH_FLOATING_TYPES_AND2(c10::kHalf, c10::kBFloat16, x.scalar_type(), "shuffle_permute_device", [&] {
    auto k = permute_kernel<scalar_t>;
    IMTOK_LAUNCH(k, dim3(unsigned(ceil_div(n, 256))), 256, 0, stream, x.const_data_ptr<scalar_t>(),
                 y.mutable_data_ptr<scalar_t>(), n, Q, w, s, D, to_coarse);
  });
  return y;
}

inline Tensor token_shuffle(const Tensor& x, int64_t h, int64_t w, int64_t s) { return permute(x, h, w, s, true); }
inline Tensor token_unshuffle(const Tensor& x, int64_t h, int64_t w, int64_t s) {
  return permute(x, h, w, s, false);
}

inline void check_linear(const Tensor& x, const Tensor& weight, const c10::optional<Tensor>& bias, int64_t kin) {
  check_floating(weight, "weight");
  check_dim(weight, 2, "weight");
  check_same_dtype(x, "x", weight, "weight");
  check_same_device(x, "x", weight, "weight");
  TORCH_CHECK_VALUE(weight.size(1) == kin, "weight.shape[1] must be the input features ", kin, ", got shape ",
                    weight.sizes());
  if (bias.has_value() && bias->defined()) {
    check_same_dtype(x, "x", *bias, "bias");
    check_dim(*bias, 1, "bias");
    TORCH_CHECK_VALUE(bias->size(0) == weight.size(0), "bias must have ", weight.size(0), " entries, got shape ",
                      bias->sizes());
  }
}

inline Tensor gemm(const Tensor& x_, int64_t h, int64_t w, int64_t s, const Tensor& weight_,
                   const c10::optional<Tensor>& bias_, int mode) {
  check_grid(h, w, s);
  check_floating(x_, "x");
  check_dim(x_, 3, "x");
  const int64_t S = s * s, Q = h * w, B = x_.size(0);
  int64_t K, N, D;
  if (mode == 0) {
    TORCH_CHECK_VALUE(x_.size(1) == Q * S, "x.shape[1] must be (h s)(w s) = ", Q * S, " tokens, got shape ",
                      x_.sizes());
    D = x_.size(2);
    K = S * D;
    check_linear(x_, weight_, bias_, K);
    N = weight_.size(0);
  } else {
    TORCH_CHECK_VALUE(x_.size(1) == Q, "x.shape[1] must be h w = ", Q, " tokens, got shape ", x_.sizes());
    K = x_.size(2);
    check_linear(x_, weight_, bias_, K);
    N = weight_.size(0);
    TORCH_CHECK_VALUE(N % S == 0, "weight.shape[0] must be divisible by s*s = ", S, ", got shape ", weight_.sizes());
    D = N / S;
  }
  const Tensor x = x_.contiguous(), wgt = weight_.contiguous();
  const bool has_bias = bias_.has_value() && bias_->defined();
  const Tensor bias = has_bias ? bias_->contiguous() : Tensor();
  Tensor y = mode == 0 ? at::empty({B, Q, N}, x.options()) : at::empty({B, Q * S, D}, x.options());
  const int64_t rows = B * Q;
  if (y.numel() == 0) return y;
  TORCH_CHECK_VALUE(K > 0, "x must have at least one input feature");
  IMTOK_DEVICE_GUARD(x);
  auto stream = IMTOK_CURRENT_STREAM();
  AT_DISPATCH_FLOATING_TYPES_AND2(c10::kHalf, c10::kBFloat16, x.scalar_type(), "shuffle_gemm_device", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    auto k = gather_gemm_kernel<scalar_t, acc_t>;
    IMTOK_LAUNCH(k, dim3(unsigned(ceil_div(N, kTile)), unsigned(ceil_div(rows, kTile))), dim3(kTile, kTile), 0,
                 stream, x.const_data_ptr<scalar_t>(), wgt.const_data_ptr<scalar_t>(),
                 has_bias ? bias.const_data_ptr<scalar_t>() : nullptr, y.mutable_data_ptr<scalar_t>(), rows, K, N,
                 Q, w, s, D, mode);
  });
  return y;
}

inline Tensor shuffle_linear(const Tensor& x, int64_t h, int64_t w, int64_t s, const Tensor& weight,
                             const c10::optional<Tensor>& bias) {
  return gemm(x, h, w, s, weight, bias, 0);
}
inline Tensor linear_unshuffle(const Tensor& x, int64_t h, int64_t w, int64_t s, const Tensor& weight,
                               const c10::optional<Tensor>& bias) {
  return gemm(x, h, w, s, weight, bias, 1);
}

}  // namespace shuffle_dev
}  // namespace IMTOK_DEVICE_NS
}  // namespace imtok

#define IMTOK_SHUFFLE_REGISTER_DEVICE(m)                                     \
  do {                                                                       \
    namespace sd = imtok::IMTOK_DEVICE_NS::shuffle_dev;                      \
    m.impl("shuffle_token_shuffle", &sd::token_shuffle);                     \
    m.impl("shuffle_token_unshuffle", &sd::token_unshuffle);                 \
    m.impl("shuffle_linear", &sd::shuffle_linear);                           \
    m.impl("shuffle_linear_unshuffle", &sd::linear_unshuffle);               \
  } while (0)
