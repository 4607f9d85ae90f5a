// Tensor-level launchers of the Token-Shuffle device kernels (real CUDA build and emulation).
#pragma once

#include <torch/library.h>

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>

#include "common/checks.h"
#include "common/device.h"
#include "shuffle/shuffle_checks.h"
#include "shuffle/shuffle_kernels.cuh"

namespace imtok {
namespace IMTOK_DEVICE_NS {
namespace shuffle {

using at::Tensor;

inline Tensor permute(const Tensor& x_, int64_t h, int64_t w, int64_t s, bool to_coarse) {
  const imtok::shuffle::ShuffleDims d =
      imtok::shuffle::check_shuffle_args(x_, h, w, s, to_coarse ? imtok::shuffle::kTokenShuffle : imtok::shuffle::kTokenUnshuffle);
  const int64_t S = d.S, Q = d.Q, D = d.D;
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

inline Tensor gemm(const Tensor& x_, int64_t h, int64_t w, int64_t s, const Tensor& weight_,
                   const c10::optional<Tensor>& bias_, int mode) {
  const imtok::shuffle::ShuffleDims d = imtok::shuffle::check_shuffle_args(
      x_, h, w, s, mode == 0 ? imtok::shuffle::kShuffleLinear : imtok::shuffle::kLinearUnshuffle, &weight_, bias_);
  const int64_t S = d.S, Q = d.Q, B = d.B, K = d.K, N = d.N, D = d.D;
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

// Registers this family's launchers on `m` (imtok_cuda for CUDA tensors, imtok_cuda_emu for the emulation).
inline void register_device_kernels(torch::Library& m) {
  m.impl("shuffle_token_shuffle", &token_shuffle);
  m.impl("shuffle_token_unshuffle", &token_unshuffle);
  m.impl("shuffle_linear", &shuffle_linear);
  m.impl("shuffle_linear_unshuffle", &linear_unshuffle);
}

}  // namespace shuffle
}  // namespace IMTOK_DEVICE_NS
}  // namespace imtok
