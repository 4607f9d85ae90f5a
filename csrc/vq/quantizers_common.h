// Host-side helpers shared by the CPU, CUDA and emulated entry points of the vq quantizer ops:
// argument checks (messages name the argument) and the FSQ constants.
#pragma once

#include <cmath>
#include <cstdint>
#include <type_traits>

#include <ATen/core/Tensor.h>
#include <c10/util/ArrayRef.h>

#include "common/checks.h"
#include "vq/quantizers_math.h"

namespace imtok {
namespace vqq {

template <typename scalar_t>
using acc_type_t = typename std::conditional<std::is_same<scalar_t, double>::value, double, float>::type;

inline FsqParams make_fsq_params(c10::IntArrayRef levels) {
  TORCH_CHECK_VALUE(!levels.empty(), "levels must not be empty");
  TORCH_CHECK_VALUE(int64_t(levels.size()) <= kFsqMaxDims, "levels may have at most ", kFsqMaxDims,
                    " entries, got ", levels.size());
  FsqParams p{};
  p.d = static_cast<int>(levels.size());
  int64_t basis = 1;
  for (int j = 0; j < p.d; ++j) {
    const int64_t L = levels[j];
    TORCH_CHECK_VALUE(L >= 2 && L <= 65536, "levels[", j, "] must be in [2, 65536], got ", L);
    p.levels[j] = static_cast<int>(L);
    p.half_width[j] = static_cast<int>(L / 2);
    p.basis[j] = static_cast<int>(basis);
    // fp32, as the anchor computes it from an int32 buffer: (L - 1) * (1 + 1e-3) / 2
    const float hl = (static_cast<float>(L - 1) * static_cast<float>(1.0 + 1e-3)) / 2.0f;
    p.half_l[j] = hl;
    p.offset[j] = (L % 2 == 0) ? 0.5f : 0.0f;
    p.shift[j] = std::atanh(p.offset[j] / hl);
    basis *= L;
    TORCH_CHECK_VALUE(basis <= INT32_MAX, "prod(levels) must fit in int32 (indices are int32), got more than ",
                      INT32_MAX, " at levels[", j, "]");
  }
  return p;
}

inline void check_fsq_input(const at::Tensor& z, const FsqParams& p, const char* name) {
  check_floating(z, name);
  check_min_dim(z, 1, name);
  TORCH_CHECK_VALUE(z.size(-1) == p.d, name, ".shape[-1] must equal len(levels) = ", p.d, ", got shape ",
                    z.sizes());
}

inline void check_index_tensor(const at::Tensor& t, const char* name) {
  TORCH_CHECK_TYPE(t.scalar_type() == c10::kLong || t.scalar_type() == c10::kInt, name,
                   " must be int64 or int32, got ", t.scalar_type());
}

inline void check_codebook_size(int64_t k, const char* name) {
  TORCH_CHECK_VALUE(k >= 1, name, " must be >= 1, got ", k);
  TORCH_CHECK_VALUE(k <= INT32_MAX, name, " must be < 2^31, got ", k);
}

inline void check_lfq(const at::Tensor& x, const char* name, double value) {
  check_finite_param(value, "value");
  check_floating(x, name);
  check_min_dim(x, 1, name);
  TORCH_CHECK_VALUE(x.size(-1) >= 1 && x.size(-1) <= 62, name, ".shape[-1] (bits per code) must be in [1, 62], got ",
                    x.size(-1));
}

inline void check_ema_inputs(const at::Tensor& x, const at::Tensor& indices, int64_t k) {
  check_floating(x, "x");
  check_dim(x, 2, "x");
  check_index_tensor(indices, "indices");
  check_dim(indices, 1, "indices");
  TORCH_CHECK_VALUE(indices.size(0) == x.size(0), "indices.shape[0] must equal x.shape[0] = ", x.size(0),
                    ", got shape ", indices.sizes());
  check_same_device(x, "x", indices, "indices");
  check_codebook_size(k, "K");
}

}  // namespace vqq
}  // namespace imtok
