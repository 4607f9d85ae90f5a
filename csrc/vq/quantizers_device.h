// Tensor-level launchers of the vq quantizer device kernels, shared by the real CUDA build
// (quantizers_cuda.cu) and the emulated build (quantizers_emu.cpp): checks, allocation, dispatch, grids.
#pragma once

#include <torch/library.h>

#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>

#include <vector>

#include "common/device.h"
#include "vq/quantizers_common.h"
#include "vq/quantizers_kernels.cuh"

namespace imtok {
namespace IMTOK_DEVICE_NS {
namespace quantizers {

using vqq::FsqParams;

constexpr int kThreads = 128;
#if defined(__CUDACC__)
constexpr int kEmaChunk = 1024;
#else
constexpr int kEmaChunk = 64;  // emulation: few OS threads per block
#endif

inline std::vector<int64_t> batch_shape(const at::Tensor& t) {
  auto s = t.sizes().vec();
  s.pop_back();
  return s;
}

inline void raise_if_bad(const at::Tensor& bad, const char* msg, int64_t k) {
  TORCH_CHECK_VALUE(bad.item<int>() == 0, msg, k, ")");
}

inline std::tuple<at::Tensor, at::Tensor> fsq(const at::Tensor& z_in, c10::IntArrayRef levels) {
  const FsqParams p = vqq::make_fsq_params(levels);
  vqq::check_fsq_input(z_in, p, "z");
  IMTOK_DEVICE_GUARD(z_in);
  auto stream = IMTOK_CURRENT_STREAM();
  const at::Tensor z = z_in.contiguous();
  const int64_t n = z.numel() / p.d;
  const auto acc_dtype = z.scalar_type() == c10::kDouble ? c10::kDouble : c10::kFloat;
  at::Tensor codes = at::empty(z.sizes(), z.options().dtype(acc_dtype));
  at::Tensor indices = at::empty(batch_shape(z), z.options().dtype(c10::kInt));
  AT_DISPATCH_FLOATING_TYPES_AND2(c10::kHalf, c10::kBFloat16, z.scalar_type(), "vq_fsq_device", [&] {
    using acc_t = vqq::acc_type_t<scalar_t>;
    auto kern = fsq_forward_kernel<scalar_t, acc_t>;
    IMTOK_LAUNCH(kern, dim3(static_cast<unsigned>(ceil_div(n, kThreads))), dim3(kThreads), 0, stream, z.data_ptr<scalar_t>(),
                 codes.data_ptr<acc_t>(), indices.data_ptr<int32_t>(), n, p);
  });
  return {codes, indices};
}

inline at::Tensor fsq_backward(const at::Tensor& grad_in, const at::Tensor& z_in, c10::IntArrayRef levels) {
  const FsqParams p = vqq::make_fsq_params(levels);
  vqq::check_fsq_input(z_in, p, "z");
  check_floating(grad_in, "grad_codes");
  TORCH_CHECK_VALUE(grad_in.sizes() == z_in.sizes(), "grad_codes must have the shape of z ", z_in.sizes(),
                    ", got ", grad_in.sizes());
  check_same_device(grad_in, "grad_codes", z_in, "z");
  IMTOK_DEVICE_GUARD(z_in);
  auto stream = IMTOK_CURRENT_STREAM();
  const at::Tensor z = z_in.contiguous();
  const auto acc_dtype = z.scalar_type() == c10::kDouble ? c10::kDouble : c10::kFloat;
  const at::Tensor grad = grad_in.to(acc_dtype).contiguous();
  at::Tensor gz = at::empty(z.sizes(), z.options());
  const int64_t n = z.numel() / p.d;
  AT_DISPATCH_FLOATING_TYPES_AND2(c10::kHalf, c10::kBFloat16, z.scalar_type(), "vq_fsq_backward_device", [&] {
    using acc_t = vqq::acc_type_t<scalar_t>;
    auto kern = fsq_backward_kernel<scalar_t, acc_t>;
    IMTOK_LAUNCH(kern, dim3(static_cast<unsigned>(ceil_div(n * p.d, kThreads))), dim3(kThreads), 0, stream,
                 grad.data_ptr<acc_t>(), z.data_ptr<scalar_t>(), gz.data_ptr<scalar_t>(), n, p);
  });
  return gz;
}

inline at::Tensor fsq_indices_to_codes(const at::Tensor& indices_in, c10::IntArrayRef levels) {
  const FsqParams p = vqq::make_fsq_params(levels);
  vqq::check_index_tensor(indices_in, "indices");
  IMTOK_DEVICE_GUARD(indices_in);
  auto stream = IMTOK_CURRENT_STREAM();
  const at::Tensor indices = indices_in.contiguous();
  int64_t size = 1;
  for (int j = 0; j < p.d; ++j) size *= p.levels[j];
  const int64_t n = indices.numel();
  if (n > 0) {  // range check on the device's own copy (one sync), as torch's index ops do
    const int64_t lo = indices.min().item<int64_t>(), hi = indices.max().item<int64_t>();
    TORCH_CHECK_VALUE(lo >= 0 && hi < size, "indices must be in [0, prod(levels) = ", size, "), got values in [",
                      lo, ", ", hi, "]");
  }
  auto shape = indices.sizes().vec();
  shape.push_back(p.d);
  at::Tensor codes = at::empty(shape, indices.options().dtype(c10::kFloat));
  AT_DISPATCH_INDEX_TYPES(indices.scalar_type(), "vq_fsq_indices_to_codes_device", [&] {
    auto kern = fsq_indices_to_codes_kernel<index_t>;
    IMTOK_LAUNCH(kern, dim3(static_cast<unsigned>(ceil_div(n, kThreads))), dim3(kThreads), 0, stream,
                 indices.data_ptr<index_t>(), codes.data_ptr<float>(), n, p);
  });
  return codes;
}

inline std::tuple<at::Tensor, at::Tensor> lfq(const at::Tensor& x_in, double value) {
  vqq::check_lfq(x_in, "x", value);
  IMTOK_DEVICE_GUARD(x_in);
  auto stream = IMTOK_CURRENT_STREAM();
  const at::Tensor x = x_in.contiguous();
  const int d = static_cast<int>(x.size(-1));
  const int64_t n = x.numel() / d;
  at::Tensor q = at::empty(x.sizes(), x.options().dtype(c10::kFloat));
  at::Tensor indices = at::empty(batch_shape(x), x.options().dtype(c10::kLong));
  AT_DISPATCH_FLOATING_TYPES_AND2(c10::kHalf, c10::kBFloat16, x.scalar_type(), "vq_lfq_device", [&] {
    auto kern = lfq_forward_kernel<scalar_t>;
    IMTOK_LAUNCH(kern, dim3(static_cast<unsigned>(ceil_div(n, kThreads))), dim3(kThreads), 0, stream, x.data_ptr<scalar_t>(),
                 q.data_ptr<float>(), indices.data_ptr<int64_t>(), n, d, static_cast<float>(value));
  });
  return {q, indices};
}

inline at::Tensor code_counts(const at::Tensor& indices_in, int64_t k) {
  vqq::check_index_tensor(indices_in, "indices");
  vqq::check_codebook_size(k, "K");
  IMTOK_DEVICE_GUARD(indices_in);
  auto stream = IMTOK_CURRENT_STREAM();
  const at::Tensor indices = indices_in.contiguous();
  const int64_t n = indices.numel();
  at::Tensor counts = at::zeros({k}, indices.options().dtype(c10::kLong));
  at::Tensor bad = at::zeros({1}, indices.options().dtype(c10::kInt));
  AT_DISPATCH_INDEX_TYPES(indices.scalar_type(), "vq_code_counts_device", [&] {
    auto kern = code_counts_kernel<index_t>;
    IMTOK_LAUNCH(kern, dim3(static_cast<unsigned>(ceil_div(n, kThreads))), dim3(kThreads), 0, stream,
                 indices.data_ptr<index_t>(), n, k,
                 reinterpret_cast<unsigned long long*>(counts.data_ptr<int64_t>()), bad.data_ptr<int>());
  });
  raise_if_bad(bad, "indices must be in [0, K = ", k);
  return counts;
}

inline std::tuple<at::Tensor, at::Tensor> ema_stats(const at::Tensor& x_in, const at::Tensor& indices_in, int64_t k) {
  vqq::check_ema_inputs(x_in, indices_in, k);
  IMTOK_DEVICE_GUARD(x_in);
  auto stream = IMTOK_CURRENT_STREAM();
  const at::Tensor x = x_in.contiguous();
  const at::Tensor indices = indices_in.contiguous();
  const int64_t n = x.size(0), d = x.size(1);
  const auto acc_dtype = x.scalar_type() == c10::kDouble ? c10::kDouble : c10::kFloat;
  const int64_t nchunks = ceil_div(n, kEmaChunk);
  at::Tensor hist = at::zeros({nchunks, k}, indices.options().dtype(c10::kInt));
  at::Tensor counts = at::empty({k}, x.options().dtype(c10::kLong));
  at::Tensor offsets = at::empty({k}, x.options().dtype(c10::kLong));
  at::Tensor perm = at::empty({n}, x.options().dtype(c10::kLong));
  at::Tensor sums = at::empty({k, d}, x.options().dtype(acc_dtype));
  at::Tensor bad = at::zeros({1}, indices.options().dtype(c10::kInt));
  AT_DISPATCH_INDEX_TYPES(indices.scalar_type(), "vq_ema_stats_device", [&] {
    auto hist_kern = ema_chunk_hist_kernel<index_t>;
    IMTOK_LAUNCH(hist_kern, dim3(static_cast<unsigned>(ceil_div(n, kThreads))), dim3(kThreads), 0, stream,
                 indices.data_ptr<index_t>(), n, k, kEmaChunk, hist.data_ptr<int>(), bad.data_ptr<int>());
  });
  raise_if_bad(bad, "indices must be in [0, K = ", k);
  IMTOK_LAUNCH(ema_chunk_scan_kernel, dim3(static_cast<unsigned>(ceil_div(k, kThreads))), dim3(kThreads), 0, stream,
               hist.data_ptr<int>(), nchunks, k, counts.data_ptr<int64_t>());
  IMTOK_LAUNCH(ema_offsets_kernel, dim3(1), dim3(kScanThreads), 0, stream, counts.data_ptr<int64_t>(), k,
               offsets.data_ptr<int64_t>());
  AT_DISPATCH_INDEX_TYPES(indices.scalar_type(), "vq_ema_stats_device_place", [&] {
    auto place_kern = ema_place_kernel<index_t>;
    IMTOK_LAUNCH(place_kern, dim3(static_cast<unsigned>(nchunks)), dim3(kEmaChunk), kEmaChunk * sizeof(int64_t), stream,
                 indices.data_ptr<index_t>(), n, k, hist.data_ptr<int>(), offsets.data_ptr<int64_t>(),
                 perm.data_ptr<int64_t>());
  });
  AT_DISPATCH_FLOATING_TYPES_AND2(c10::kHalf, c10::kBFloat16, x.scalar_type(), "vq_ema_stats_device_sums", [&] {
    using acc_t = vqq::acc_type_t<scalar_t>;
    auto sum_kern = ema_segment_sum_kernel<scalar_t, acc_t>;
    IMTOK_LAUNCH(sum_kern, dim3(static_cast<unsigned>(ceil_div(k * d, kThreads))), dim3(kThreads), 0, stream,
                 x.data_ptr<scalar_t>(), d, perm.data_ptr<int64_t>(), offsets.data_ptr<int64_t>(),
                 counts.data_ptr<int64_t>(), k, sums.data_ptr<acc_t>());
  });
  return {counts, sums};
}

// Registers this family's launchers on `m` (imtok_cuda for CUDA tensors, imtok_cuda_emu for the emulation).
inline void register_device_kernels(torch::Library& m) {
  m.impl("vq_fsq", &fsq);
  m.impl("vq_fsq_backward", &fsq_backward);
  m.impl("vq_fsq_indices_to_codes", &fsq_indices_to_codes);
  m.impl("vq_lfq", &lfq);
  m.impl("vq_code_counts", &code_counts);
  m.impl("vq_ema_stats", &ema_stats);
}

}  // namespace quantizers
}  // namespace IMTOK_DEVICE_NS
}  // namespace imtok
