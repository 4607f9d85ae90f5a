// Host-side argument checks and problem description shared by the CPU kernels (attention_cpu.cpp) and the
// device launchers (attention_device.h, compiled by nvcc and by g++ for the emulated build).
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/full.h>
#include <ATen/ops/zeros.h>
#include <c10/util/Exception.h>
#include <c10/util/Optional.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "common/checks.h"
#include "attention/attention_mask.h"
#include "common/limits.h"

namespace imtok {
namespace attention {

// One independent attention problem: batch b, queries [qo, qo + nq), keys [ko, ko + nk) of that batch.
// Dense inputs have one segment per batch; packed inputs (cu_seqlens) one per sequence, all with b = 0.
struct Segment {
  int64_t b, qo, nq, ko, nk;
};

struct Problem {
  int64_t B = 0, H = 0, Nq = 0, Nk = 0, d = 0;
  double scale = 1.0;
  CausalMask causal;
  bool packed = false;
  std::vector<Segment> segs;
  int64_t max_nq = 0, max_nk = 0;
  at::ScalarType acc_dtype = at::kFloat;  // float64 for float64 inputs, float32 otherwise
};

inline Problem check_problem(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                             const c10::optional<at::Tensor>& key_bias, const c10::optional<at::Tensor>& key_mask,
                             bool causal, int64_t causal_prefix, c10::optional<double> scale,
                             const c10::optional<at::Tensor>& cu_seqlens) {
  check_dim(q, 4, "q");
  check_dim(k, 4, "k");
  check_dim(v, 4, "v");
  check_floating(q, "q");
  check_same_dtype(q, "q", k, "k");
  check_same_dtype(q, "q", v, "v");
  check_same_device(q, "q", k, "k");
  check_same_device(q, "q", v, "v");
  Problem p;
  p.B = q.size(0);
  p.H = q.size(1);
  p.Nq = q.size(2);
  p.d = q.size(3);
  p.Nk = k.size(2);
  check_size(k, 0, p.B, "k");
  check_size(k, 1, p.H, "k");
  check_size(k, 3, p.d, "k");
  check_size(v, 0, p.B, "v");
  check_size(v, 1, p.H, "v");
  check_size(v, 2, p.Nk, "v");
  check_size(v, 3, p.d, "v");
  TORCH_CHECK_VALUE(p.d >= 1 && p.d <= kMaxHeadDim, "q.shape[3] (head dim d) must be in [1, ", kMaxHeadDim,
                    "], got ", p.d);
  if (key_bias.has_value()) {
    const at::Tensor& b = *key_bias;
    check_dim(b, 2, "key_bias");
    check_floating(b, "key_bias");
    check_same_device(q, "q", b, "key_bias");
    check_size(b, 0, p.B, "key_bias");
    check_size(b, 1, p.Nk, "key_bias");
  }
  if (key_mask.has_value()) {
    const at::Tensor& m = *key_mask;
    check_dim(m, 2, "key_mask");
    check_dtype(m, at::kBool, "key_mask");
    check_same_device(q, "q", m, "key_mask");
    check_size(m, 0, p.B, "key_mask");
    check_size(m, 1, p.Nk, "key_mask");
  }
  if (scale.has_value()) {
    TORCH_CHECK_VALUE(std::isfinite(*scale), "scale must be finite, got ", *scale);
    p.scale = *scale;
  } else {
    p.scale = 1.0 / std::sqrt(static_cast<double>(p.d));
  }
  TORCH_CHECK_VALUE(causal_prefix >= 0, "causal_prefix must be >= 0, got ", causal_prefix);
  TORCH_CHECK_VALUE(causal || causal_prefix == 0, "causal_prefix needs causal=True (it widens the causal mask), got "
                    "causal_prefix ", causal_prefix, " with causal=False");
  p.causal = CausalMask{causal, causal_prefix};
  p.acc_dtype = q.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  if (cu_seqlens.has_value()) {
    const at::Tensor& cu = *cu_seqlens;
    check_dim(cu, 1, "cu_seqlens");
    check_dtype(cu, at::kInt, "cu_seqlens");
    check_same_device(q, "q", cu, "cu_seqlens");
    TORCH_CHECK_VALUE(cu.size(0) >= 2, "cu_seqlens must have at least 2 entries, got shape ", cu.sizes());
    TORCH_CHECK_VALUE(p.B == 1, "with cu_seqlens, q, k and v must be packed as [1, H, total, d], got q shape ",
                      q.sizes());
    TORCH_CHECK_VALUE(p.Nq == p.Nk, "with cu_seqlens, q and k must have the same number of tokens, got ", p.Nq,
                      " and ", p.Nk);
    const at::Tensor cuh = cu.to(at::kCPU).contiguous();
    const int32_t* c = cuh.data_ptr<int32_t>();
    const int64_t ns = cu.size(0) - 1;
    TORCH_CHECK_VALUE(c[0] == 0, "cu_seqlens[0] must be 0, got ", c[0]);
    for (int64_t s = 0; s < ns; ++s)
      TORCH_CHECK_VALUE(c[s + 1] >= c[s], "cu_seqlens must be non-decreasing, got cu_seqlens[", s, "] = ", c[s],
                        " > cu_seqlens[", s + 1, "] = ", c[s + 1]);
    TORCH_CHECK_VALUE(c[ns] == p.Nq, "cu_seqlens[-1] must equal the number of packed tokens ", p.Nq, ", got ",
                      c[ns]);
    p.packed = true;
    for (int64_t s = 0; s < ns; ++s) {
      const int64_t n = c[s + 1] - c[s];
      if (n > 0) p.segs.push_back({0, c[s], n, c[s], n});
    }
  } else {
    for (int64_t b = 0; b < p.B; ++b) p.segs.push_back({b, 0, p.Nq, 0, p.Nk});
  }
  for (const auto& s : p.segs) {
    p.max_nq = std::max(p.max_nq, s.nq);
    p.max_nk = std::max(p.max_nk, s.nk);
  }
  return p;
}

// Per-key additive term in the accumulation dtype: key_bias (0 without) and -inf where key_mask is False.
// Undefined tensor when there is neither bias nor mask. [B, Nk], contiguous.
inline at::Tensor key_additive(const Problem& p, const c10::optional<at::Tensor>& key_bias,
                               const c10::optional<at::Tensor>& key_mask, const at::TensorOptions& opts) {
  if (!key_bias.has_value() && !key_mask.has_value()) return at::Tensor();
  at::Tensor add = key_bias.has_value() ? key_bias->to(p.acc_dtype).contiguous()
                                        : at::zeros({p.B, p.Nk}, opts.dtype(p.acc_dtype));
  if (key_mask.has_value())
    add = add.masked_fill(key_mask->logical_not(), -std::numeric_limits<double>::infinity()).contiguous();
  return add;
}

inline void check_col_range(int64_t start, int64_t end) {
  TORCH_CHECK_VALUE(start >= 0, "col_sum_start must be >= 0, got ", start);
  TORCH_CHECK_VALUE(end >= -1, "col_sum_end must be >= 0 (or -1 for all queries), got ", end);
}

// The query range [lo, hi) of a segment with nq queries that enters the column sums.
inline void col_range(int64_t start, int64_t end, int64_t nq, int64_t* lo, int64_t* hi) {
  *hi = end < 0 ? nq : std::min(end, nq);
  *lo = std::min(start, *hi);
}

inline void check_backward_inputs(const Problem& p, const at::Tensor& q, const at::Tensor& grad_out,
                                  const c10::optional<at::Tensor>& grad_lse, const at::Tensor& out,
                                  const at::Tensor& lse) {
  check_dim(grad_out, 4, "grad_out");
  check_same_device(q, "q", grad_out, "grad_out");
  check_same_dtype(q, "q", grad_out, "grad_out");
  check_dim(out, 4, "out");
  check_same_device(q, "q", out, "out");
  check_same_dtype(q, "q", out, "out");
  for (int i = 0; i < 4; ++i) {
    check_size(grad_out, i, q.size(i), "grad_out");
    check_size(out, i, q.size(i), "out");
  }
  check_dim(lse, 3, "lse");
  check_same_device(q, "q", lse, "lse");
  check_floating(lse, "lse");
  for (int i = 0; i < 3; ++i) check_size(lse, i, q.size(i), "lse");
  if (grad_lse.has_value()) {
    check_dim(*grad_lse, 3, "grad_lse");
    check_same_device(q, "q", *grad_lse, "grad_lse");
    check_floating(*grad_lse, "grad_lse");
    for (int i = 0; i < 3; ++i) check_size(*grad_lse, i, q.size(i), "grad_lse");
  }
  (void)p;
}

}  // namespace attention
}  // namespace imtok
