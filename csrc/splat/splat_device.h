// Tensor-level launchers of the splat device kernels, shared by the real CUDA build (splat_cuda.cu) and the
// emulated build (splat_emu.cpp): checks, output allocation, dtype dispatch, grid sizes.
#pragma once

#include <torch/library.h>

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>

#include <tuple>

#include "common/device.h"
#include "splat/splat_checks.h"
#include "splat/splat_common.h"
#include "splat/splat_kernels.cuh"

namespace imtok {
namespace IMTOK_DEVICE_NS {
namespace splat {

// Channels per forward/backward block: the smallest of 4, 16, 32 that holds C (C > 32: chunks of 32).
inline int channel_block(int64_t C) { return C <= 4 ? 4 : (C <= 16 ? 16 : 32); }

template <typename F>
void dispatch_cmax(int cmax, F&& f) {
  if (cmax == 4) {
    f(std::integral_constant<int, 4>());
  } else if (cmax == 16) {
    f(std::integral_constant<int, 16>());
  } else {
    f(std::integral_constant<int, 32>());
  }
}

// out (when defined) and/or wsum (when defined, acc dtype [B, H, W]).
inline void launch_forward(const at::Tensor& g, const at::Tensor& f, const at::Tensor& len, at::Tensor* out,
                           at::Tensor* wsum, int64_t H, int64_t W, double box_sigma, bool normalize) {
  const int64_t B = g.size(0), N = g.size(1), C = out ? f.size(2) : 0;
  const int cmax = channel_block(C);
  const int64_t nchunks = out ? ceil_div(C, cmax) : 1;
  TORCH_CHECK_VALUE(B * nchunks <= 65535, "splat_render: B * ceil(C / ", cmax, ") must be <= 65535, got B=", B,
                    ", C=", C);
  TORCH_CHECK_VALUE(N < (int64_t(1) << 31), "geometry: too many tokens (", N, ")");
  const dim3 grid(static_cast<unsigned>(ceil_div(W, kTile)), static_cast<unsigned>(ceil_div(H, kTile)),
                  static_cast<unsigned>(B * nchunks));
  const dim3 block(kTile, kTile);
  auto stream = IMTOK_CURRENT_STREAM();
  AT_DISPATCH_FLOATING_TYPES_AND2(c10::kHalf, c10::kBFloat16, g.scalar_type(), "splat_render_device", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    dispatch_cmax(cmax, [&](auto cm) {
      auto kern = splat_forward_kernel<scalar_t, acc_t, decltype(cm)::value>;
      IMTOK_LAUNCH(kern, grid, block, 0, stream, g.data_ptr<scalar_t>(), f.data_ptr<scalar_t>(),
                   len.defined() ? len.data_ptr<int64_t>() : nullptr, out ? out->data_ptr<scalar_t>() : nullptr,
                   wsum ? wsum->data_ptr<acc_t>() : nullptr, static_cast<int>(N), static_cast<int>(C),
                   static_cast<int>(H), static_cast<int>(W), static_cast<acc_t>(box_sigma), normalize,
                   static_cast<int>(nchunks));
    });
  });
}

inline at::Tensor render(const at::Tensor& geometry, const at::Tensor& features, int64_t H, int64_t W,
                         double box_sigma, const c10::optional<at::Tensor>& lengths, bool normalize) {
  imtok::splat::check_render_args(geometry, features, H, W, box_sigma, lengths);
  imtok::splat::check_geometry_values(geometry, lengths);
  check_device_type(geometry, kDeviceType, "geometry");
  IMTOK_DEVICE_GUARD(geometry);
  const at::Tensor g = geometry.contiguous(), f = features.contiguous();
  const at::Tensor len = lengths.has_value() ? lengths->to(c10::kLong).contiguous() : at::Tensor();
  at::Tensor out = at::empty({g.size(0), f.size(2), H, W}, f.options());
  at::Tensor wsum;
  launch_forward(g, f, len, &out, nullptr, H, W, box_sigma, normalize);
  return out;
}

inline std::tuple<at::Tensor, at::Tensor> render_backward(const at::Tensor& grad_out, const at::Tensor& geometry,
                                                          const at::Tensor& features,
                                                          const c10::optional<at::Tensor>& out, int64_t H, int64_t W,
                                                          double box_sigma, const c10::optional<at::Tensor>& lengths,
                                                          bool normalize) {
  imtok::splat::check_render_args(geometry, features, H, W, box_sigma, lengths);
  imtok::splat::check_geometry_values(geometry, lengths);
  imtok::splat::check_backward_args(grad_out, geometry, features, out, H, W, normalize);
  check_device_type(geometry, kDeviceType, "geometry");
  IMTOK_DEVICE_GUARD(geometry);
  const at::Tensor g = geometry.contiguous(), f = features.contiguous();
  const at::Tensor len = lengths.has_value() ? lengths->to(c10::kLong).contiguous() : at::Tensor();
  const int64_t B = g.size(0), N = g.size(1), C = f.size(2);
  const auto acc = imtok::splat::acc_type(f.scalar_type());
  at::Tensor gp = grad_out.to(acc).contiguous();
  at::Tensor kmap;
  if (normalize) {
    at::Tensor wsum = at::empty({B, H, W}, f.options().dtype(acc));
    launch_forward(g, f, len, nullptr, &wsum, H, W, box_sigma, false);
    std::tie(gp, kmap) = imtok::splat::normalize_grad(gp, out->to(acc), wsum);
  }
  at::Tensor dg = at::empty({B, N, 5}, g.options());
  at::Tensor df = at::empty({B, N, C}, f.options());
  const int cmax = channel_block(C);
  const int64_t nchunks = C > 0 ? ceil_div(C, cmax) : 1;
  TORCH_CHECK_VALUE(C * static_cast<int64_t>(imtok::splat::acc_type(f.scalar_type()) == c10::kDouble ? 8 : 4) <=
                        40 * 1024,
                    "features: the device backward stages a token's C features in shared memory; C=", C,
                    " is too large (at most 5120 for float64, 10240 otherwise)");
  TORCH_CHECK_VALUE(B <= 65535, "splat_render_backward: B must be <= 65535, got ", B);
  TORCH_CHECK_VALUE(N < (int64_t(1) << 31), "geometry: too many tokens (", N, ")");
  const dim3 grid(static_cast<unsigned>(N), static_cast<unsigned>(B), static_cast<unsigned>(nchunks));
  auto stream = IMTOK_CURRENT_STREAM();
  AT_DISPATCH_FLOATING_TYPES_AND2(c10::kHalf, c10::kBFloat16, g.scalar_type(), "splat_render_backward_device", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    dispatch_cmax(cmax, [&](auto cm) {
      auto kern = splat_backward_kernel<scalar_t, acc_t, decltype(cm)::value>;
      IMTOK_LAUNCH(kern, grid, kBwdThreads, C * sizeof(acc_t), stream, g.data_ptr<scalar_t>(),
                   f.data_ptr<scalar_t>(), len.defined() ? len.data_ptr<int64_t>() : nullptr,
                   gp.data_ptr<acc_t>(), kmap.defined() ? kmap.data_ptr<acc_t>() : nullptr,
                   dg.data_ptr<scalar_t>(), df.data_ptr<scalar_t>(), static_cast<int>(N), static_cast<int>(C),
                   static_cast<int>(H), static_cast<int>(W), static_cast<acc_t>(box_sigma));
    });
  });
  return {dg, df};
}

// Registers this family's launchers on `m` (imtok_cuda for CUDA tensors, imtok_cuda_emu for the emulation).
inline void register_device_kernels(torch::Library& m) {
  m.impl("splat_render", &render);
  m.impl("splat_render_backward", &render_backward);
}

}  // namespace splat
}  // namespace IMTOK_DEVICE_NS
}  // namespace imtok
