// Argument checks of the vq ops, shared by the CPU, CUDA and emulated entry points.
#pragma once

#include <ATen/ops/empty.h>

#include <string>

#include "common/checks.h"
#include "common/limits.h"
#include "vq/vq_math.h"

namespace imtok {
namespace vq {

inline int parse_metric(c10::string_view metric) {
  if (metric == "l2") return kL2;
  if (metric == "cosine") return kCosine;
  TORCH_CHECK_VALUE(false, "metric must be \"l2\" or \"cosine\", got \"", std::string(metric), "\"");
  return kL2;
}

inline void check_nearest_inputs(const at::Tensor& x, const at::Tensor& codebook) {
  check_floating(x, "x");
  check_floating(codebook, "codebook");
  check_same_dtype(x, "x", codebook, "codebook");
  check_same_device(x, "x", codebook, "codebook");
  check_dim(codebook, 2, "codebook");
  check_min_dim(x, 1, "x");
  TORCH_CHECK_VALUE(codebook.size(0) >= 1, "codebook must hold at least one code, got shape ", codebook.sizes());
  TORCH_CHECK_VALUE(x.size(-1) == codebook.size(1), "x.shape[-1] (", x.size(-1), ") must equal codebook.shape[1] (",
                    codebook.size(1), ")");
}

inline void check_topk_k(int64_t k, int64_t K) {
  TORCH_CHECK_VALUE(k >= 1 && k <= kMaxTopK, "k must be in [1, ", kMaxTopK, "], got ", k);
  TORCH_CHECK_VALUE(k <= K, "k (", k, ") must not exceed the number of codes in codebook (", K, ")");
}

// A vq_nearest / vq_nearest_topk call after the checks (CPU and device): the metric id, contiguous inputs and the
// outputs, distances float32 (float64 for float64 x) and indices int64, [...] or [..., k] for top-k.
struct NearestCall {
  int metric;
  at::Tensor x, codebook, distances, indices;
  int64_t rows;  // rows of x searched
};

inline NearestCall prepare_nearest(const at::Tensor& x_in, const at::Tensor& codebook_in, int64_t k, bool topk,
                                   c10::string_view metric_name) {
  NearestCall c;
  c.metric = parse_metric(metric_name);
  check_nearest_inputs(x_in, codebook_in);
  if (topk) check_topk_k(k, codebook_in.size(0));
  c.x = x_in.contiguous();
  c.codebook = codebook_in.contiguous();
  auto out_shape = c.x.sizes().vec();
  if (topk)
    out_shape.back() = k;
  else
    out_shape.pop_back();
  const auto dist_dtype = c.x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  c.indices = at::empty(out_shape, c.x.options().dtype(at::kLong));
  c.distances = at::empty(out_shape, c.x.options().dtype(dist_dtype));
  c.rows = topk ? c.indices.numel() / k : c.indices.numel();
  return c;
}

}  // namespace vq
}  // namespace imtok
