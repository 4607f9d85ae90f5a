// Argument checks of the vq ops, shared by the CPU, CUDA and emulated entry points.
#pragma once

#include <string>

#include "common/checks.h"
#include "vq/vq_math.h"

namespace imtok {
namespace vq {

constexpr int64_t kMaxTopK = 128;

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

}  // namespace vq
}  // namespace imtok
