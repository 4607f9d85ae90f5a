// Argument checks of the Token-Shuffle ops, shared by the CPU kernels and the device launchers (and mirrored
// by the fake kernels in imtok_cuda/shuffle.py). Size arithmetic is checked int64: h = 2**62 + 1 or s = 2**32
// is an error naming the product, never a wrapped size.
#pragma once

#include <ATen/core/Tensor.h>

#include "common/checks.h"

namespace imtok {
namespace shuffle {

enum ShuffleOp { kTokenShuffle = 0, kTokenUnshuffle = 1, kShuffleLinear = 2, kLinearUnshuffle = 3 };

struct ShuffleDims {
  int64_t B = 0, Q = 0, S = 0, T = 0, D = 0;  // batch, coarse tokens h w, s s, fine tokens Q S, fine features
  int64_t K = 0, N = 0;                       // GEMM: input / output features (linear ops)
};

inline void check_linear_args(const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                              int64_t in_features) {
  check_floating(weight, "weight");
  check_dim(weight, 2, "weight");
  check_same_dtype(x, "x", weight, "weight");
  check_same_device(x, "x", weight, "weight");
  TORCH_CHECK_VALUE(weight.size(1) == in_features, "weight.shape[1] must be the input features ", in_features,
                    ", got shape ", weight.sizes());
  if (bias.has_value() && bias->defined()) {
    check_same_dtype(x, "x", *bias, "bias");
    check_same_device(x, "x", *bias, "bias");
    check_dim(*bias, 1, "bias");
    TORCH_CHECK_VALUE(bias->size(0) == weight.size(0), "bias must have ", weight.size(0), " entries, got shape ",
                      bias->sizes());
  }
}

// One check for all four ops; weight / bias only for the linear ones.
inline ShuffleDims check_shuffle_args(const at::Tensor& x, int64_t h, int64_t w, int64_t s, ShuffleOp op,
                                      const at::Tensor* weight = nullptr,
                                      const c10::optional<at::Tensor>& bias = c10::nullopt) {
  TORCH_CHECK_VALUE(h > 0 && w > 0, "h and w must be positive, got h=", h, ", w=", w);
  TORCH_CHECK_VALUE(s > 0, "s must be positive, got ", s);
  check_floating(x, "x");
  check_dim(x, 3, "x");
  ShuffleDims d;
  d.B = x.size(0);
  d.S = checked_mul(s, s, "s*s");
  d.Q = checked_mul(h, w, "h*w");
  d.T = checked_mul(d.Q, d.S, "(h s)(w s) = h*w*s*s");
  if (op == kTokenShuffle || op == kShuffleLinear) {
    TORCH_CHECK_VALUE(x.size(1) == d.T, "x.shape[1] must be (h s)(w s) = ", d.T, " tokens, got shape ", x.sizes());
    d.D = x.size(2);
    d.K = checked_mul(d.S, d.D, "s*s*x.shape[2]");
    if (op == kShuffleLinear) {
      check_linear_args(x, *weight, bias, d.K);
      d.N = weight->size(0);
    }
  } else {
    TORCH_CHECK_VALUE(x.size(1) == d.Q, "x.shape[1] must be h w = ", d.Q, " tokens, got shape ", x.sizes());
    if (op == kTokenUnshuffle) {
      TORCH_CHECK_VALUE(x.size(2) % d.S == 0, "x.shape[2] must be divisible by s*s = ", d.S, ", got shape ",
                        x.sizes());
      d.D = x.size(2) / d.S;
    } else {
      d.K = x.size(2);
      check_linear_args(x, *weight, bias, d.K);
      d.N = weight->size(0);
      TORCH_CHECK_VALUE(d.N % d.S == 0, "weight.shape[0] must be divisible by s*s = ", d.S, ", got shape ",
                        weight->sizes());
      d.D = d.N / d.S;
    }
  }
  // the linear ops' outputs hold B h w N elements (the permutations' as many as x)
  if (op == kShuffleLinear || op == kLinearUnshuffle)
    checked_mul(checked_mul(d.B, d.Q, "x.shape[0]*h*w"), d.N, "the output size x.shape[0]*h*w*weight.shape[0]");
  return d;
}

}  // namespace shuffle
}  // namespace imtok
