// Tensor-level launchers of the vq device kernels, compiled twice: by nvcc for CUDA tensors and by g++ with
// the execution shim for the emulated test ops (CPU tensors).
#pragma once

#include <torch/library.h>

#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>

#include <tuple>

#include "vq/vq_checks.h"
#include "vq/vq_kernels.cuh"

namespace imtok {
namespace IMTOK_DEVICE_NS {
namespace vq {

inline std::tuple<at::Tensor, at::Tensor> nearest_common(const at::Tensor& x_in, const at::Tensor& codebook_in,
                                                         int64_t k, bool topk, c10::string_view metric_name) {
  const imtok::vq::NearestCall c = imtok::vq::prepare_nearest(x_in, codebook_in, k, topk, metric_name);
  const at::Tensor &x = c.x, &codebook = c.codebook, &indices = c.indices, &distances = c.distances;
  const int metric = c.metric;
  const int64_t rows = c.rows, K = codebook.size(0), D = codebook.size(1);
  if (rows == 0) return {distances, indices};
  IMTOK_DEVICE_GUARD(x);
  const auto acc_dtype = distances.scalar_type();
  at::Tensor cb_acc = at::empty({K, D}, x.options().dtype(acc_dtype));
  at::Tensor en = at::empty({K}, x.options().dtype(acc_dtype));
  auto stream = IMTOK_CURRENT_STREAM();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "vq_nearest_device", [&] {
    using acc_t = std::conditional_t<std::is_same<scalar_t, double>::value, double, float>;
    auto prep = prep_codebook_kernel<scalar_t, acc_t>;
    IMTOK_LAUNCH(prep, dim3(ceil_div(K, 128)), dim3(128), 0, stream, codebook.data_ptr<scalar_t>(), K, D, metric,
                 cb_acc.data_ptr<acc_t>(), en.data_ptr<acc_t>());
    const int64_t threads = topk ? 64 : 128;
    const int64_t tile = imtok_max<int64_t>(1, imtok_min<int64_t>(K, 16384 / static_cast<int64_t>((D + 1) * sizeof(acc_t))));
    const bool stage_x = D * threads * static_cast<int64_t>(sizeof(acc_t)) <= 24 * 1024;
    const size_t smem = ((stage_x ? D * threads : 0) + tile * D + tile) * sizeof(acc_t);
    auto kern = topk ? nearest_kernel<scalar_t, acc_t, true> : nearest_kernel<scalar_t, acc_t, false>;
    IMTOK_LAUNCH(kern, dim3(ceil_div(rows, threads)), dim3(threads), smem, stream, x.data_ptr<scalar_t>(), rows, D,
                 cb_acc.data_ptr<acc_t>(), en.data_ptr<acc_t>(), K, k, metric, tile, stage_x,
                 indices.data_ptr<int64_t>(), distances.data_ptr<acc_t>());
  });
  return {distances, indices};
}

inline std::tuple<at::Tensor, at::Tensor> nearest(const at::Tensor& x, const at::Tensor& codebook,
                                                  c10::string_view metric) {
  return nearest_common(x, codebook, 1, false, metric);
}

inline std::tuple<at::Tensor, at::Tensor> nearest_topk(const at::Tensor& x, const at::Tensor& codebook, int64_t k,
                                                       c10::string_view metric) {
  return nearest_common(x, codebook, k, true, metric);
}

// Registers this family's launchers on `m` (imtok_cuda for CUDA tensors, imtok_cuda_emu for the emulation).
inline void register_device_kernels(torch::Library& m) {
  m.impl("vq_nearest", &nearest);
  m.impl("vq_nearest_topk", &nearest_topk);
}

}  // namespace vq
}  // namespace IMTOK_DEVICE_NS
}  // namespace imtok
