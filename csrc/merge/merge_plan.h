// Merge plans shared by the CPU kernels and the device launchers: argument checks and shape inference.
//
// A plan (from merge_tome_match / merge_random2d_match) is three int64 tensors in the upstream index spaces:
//   src_idx [B, r]  rows of the source set "a" that merge (descending similarity), dst_idx [B, r] the row of
//   the destination set "b" each merges into, unm_idx [B, Na - r] rows of "a" that stay.
// Positions of a and b among the T tokens: ToMe (a_idx/b_idx absent) a = 0, 2, 4, ..., b = 1, 3, 5, ...;
// tomesd: a_idx [Na], b_idx [Nb] (token positions shared by the batch).
// Output rows of a merge: [unm..., dst...] (Tout = U + Nb); with distill_token [unm0, dst0, unm1.., dst1..].
#pragma once

#include <ATen/core/Tensor.h>

#include <string>
#include <vector>

#include "common/checks.h"
#include "merge/merge_math.h"

namespace imtok {
namespace merge {

struct PlanDims {
  int64_t B = 0, T = 0, Na = 0, Nb = 0, r = 0, U = 0;
  std::string tokens_from;  // ToMe: which tensor's token / row count set T (named when an index does not fit)
  int64_t tout() const { return U + Nb; }
};

inline c10::optional<at::Tensor> defined_or_none(const c10::optional<at::Tensor>& t) {
  if (t.has_value() && t->defined()) return t;
  return c10::nullopt;
}

// Checks the plan tensors against each other and returns the dimensions; T is the token count of the
// unmerged layout (derived from the plan).
inline PlanDims check_plan(const at::Tensor& src_idx, const at::Tensor& dst_idx, const at::Tensor& unm_idx,
                           const c10::optional<at::Tensor>& a_idx, const c10::optional<at::Tensor>& b_idx) {
  check_dtype(src_idx, c10::kLong, "src_idx");
  check_dtype(dst_idx, c10::kLong, "dst_idx");
  check_dtype(unm_idx, c10::kLong, "unm_idx");
  check_dim(src_idx, 2, "src_idx");
  check_dim(dst_idx, 2, "dst_idx");
  check_dim(unm_idx, 2, "unm_idx");
  check_same_device(src_idx, "src_idx", dst_idx, "dst_idx");
  check_same_device(src_idx, "src_idx", unm_idx, "unm_idx");
  PlanDims d;
  d.B = src_idx.size(0);
  d.r = src_idx.size(1);
  TORCH_CHECK_VALUE(dst_idx.sizes() == src_idx.sizes(), "dst_idx must have the shape of src_idx ", src_idx.sizes(),
                    ", got ", dst_idx.sizes());
  check_size(unm_idx, 0, d.B, "unm_idx");
  d.U = unm_idx.size(1);
  d.Na = d.U + d.r;
  TORCH_CHECK_VALUE(a_idx.has_value() == b_idx.has_value(), "a_idx and b_idx must be given together (tomesd) or ",
                    "both be None (ToMe)");
  if (a_idx.has_value()) {
    check_dtype(*a_idx, c10::kLong, "a_idx");
    check_dtype(*b_idx, c10::kLong, "b_idx");
    check_dim(*a_idx, 1, "a_idx");
    check_dim(*b_idx, 1, "b_idx");
    check_same_device(src_idx, "src_idx", *a_idx, "a_idx");
    check_same_device(src_idx, "src_idx", *b_idx, "b_idx");
    TORCH_CHECK_VALUE(a_idx->size(0) == d.Na, "a_idx must have ", d.Na, " entries (src_idx + unm_idx), got ",
                      a_idx->size(0));
    d.Nb = b_idx->size(0);
    d.T = d.Na + d.Nb;
  } else {
    // ToMe: Na = ceil(T / 2), Nb = floor(T / 2); Nb is Na or Na - 1. Resolved by the caller from T.
    d.Nb = -1;
    d.T = -1;
  }
  return d;
}

// Resolve the ToMe layout from the token count of x.
inline void resolve_tokens(PlanDims& d, int64_t T, const char* xname) {
  if (d.T < 0) {
    TORCH_CHECK_VALUE((T + 1) / 2 == d.Na, xname, " has ", T, " tokens but the plan has ", d.Na,
                      " source-set rows (src_idx + unm_idx); expected ceil(T / 2)");
    d.T = T;
    d.Nb = T / 2;
    d.tokens_from = std::string(" (the layout comes from ") + xname + ", which has " + std::to_string(T) +
                    " tokens: does " + xname + " match the plan?)";
  } else {
    TORCH_CHECK_VALUE(T == d.T, xname, " has ", T, " tokens but the plan covers ", d.T);
  }
}

// Resolve the ToMe layout from the row count of a merged tensor (U + Nb rows): Nb is Na or Na - 1.
inline void resolve_merged_rows(PlanDims& d, int64_t rows, const char* yname) {
  if (d.T < 0) {
    const int64_t nb = rows - d.U;
    TORCH_CHECK_VALUE(nb == d.Na || nb == d.Na - 1, yname, " has ", rows, " rows, which does not fit a plan with ",
                      d.U, " unmerged and ", d.Na, " source-set rows");
    d.Nb = nb;
    d.T = d.Na + nb;
    d.tokens_from = std::string(" (the layout comes from ") + yname + ", which has " + std::to_string(rows) +
                    " rows: does " + yname + " match the plan?)";
  } else {
    TORCH_CHECK_VALUE(rows == d.tout(), yname, " has ", rows, " rows but the plan merges to ", d.tout());
  }
}

// tomesd's split (host tensors): every position in [0, T), and a_idx, b_idx together hold every token once.
// (Na + Nb == T is checked by the callers.) Overlapping sets would leave output rows unwritten.
inline void check_split_values(const at::Tensor& a_idx, const at::Tensor& b_idx, int64_t T) {
  std::vector<char> seen(static_cast<size_t>(std::max<int64_t>(T, 0)), 0);
  auto one = [&](const at::Tensor& t, const char* name) {
    const int64_t* p = t.const_data_ptr<int64_t>();
    for (int64_t i = 0, n = t.numel(); i < n; ++i) {
      TORCH_CHECK_VALUE(p[i] >= 0 && p[i] < T, name, "[", i, "] = ", p[i], " is out of range [0, ", T, ")");
      TORCH_CHECK_VALUE(!seen[p[i]], name, "[", i, "] = ", p[i], " repeats a token already in a_idx / b_idx: ",
                        "a_idx and b_idx must split the ", T, " tokens (disjoint, each token once)");
      seen[p[i]] = 1;
    }
  };
  one(a_idx, "a_idx");
  one(b_idx, "b_idx");
}

// The plan's values (host tensors, contiguous): indices in range, src_idx and unm_idx a partition of the source
// rows in every batch. What every kernel (CPU and device) assumes; checked before any of them runs.
inline void check_plan_values(const PlanDims& d, const at::Tensor& src, const at::Tensor& dst,
                              const at::Tensor& unm) {
  const int64_t *sp = src.const_data_ptr<int64_t>(), *dp = dst.const_data_ptr<int64_t>(),
                *up = unm.const_data_ptr<int64_t>();
  const int64_t B = d.B, r = d.r, U = d.U, Na = d.Na, Nb = d.Nb;
  for (int64_t i = 0; i < B * r; ++i) {
    TORCH_CHECK_VALUE(sp[i] >= 0 && sp[i] < Na, "src_idx holds ", sp[i], ", out of range [0, ", Na, ")");
    TORCH_CHECK_VALUE(dp[i] >= 0 && dp[i] < Nb, "dst_idx holds ", dp[i], ", out of range [0, ", Nb, ")",
                      d.tokens_from);
  }
  for (int64_t i = 0; i < B * U; ++i)
    TORCH_CHECK_VALUE(up[i] >= 0 && up[i] < Na, "unm_idx holds ", up[i], ", out of range [0, ", Na, ")");
  std::vector<char> seen(static_cast<size_t>(Na));
  for (int64_t b = 0; b < B; ++b) {
    std::fill(seen.begin(), seen.end(), 0);
    for (int64_t k = 0; k < r; ++k) seen[sp[b * r + k]]++;
    for (int64_t k = 0; k < U; ++k) seen[up[b * U + k]]++;
    for (int64_t i = 0; i < Na; ++i)
      TORCH_CHECK_VALUE(seen[i] == 1, "src_idx and unm_idx must together hold every source row once; row ", i,
                        " of batch ", b, " appears ", int(seen[i]), " times");
  }
}

// A plan after every check (shapes, then index values on the host: a device-to-host copy for device plans), its
// tensors contiguous. T >= 0: the plan applies to x with T tokens; otherwise merged_rows (the rows of a merged
// y) resolves the ToMe layout. Shared by the CPU and device launchers.
struct CheckedPlan {
  PlanDims d;
  bool distill = false;
  at::Tensor src, dst, unm, apos, bpos;  // apos / bpos undefined for ToMe

  // A kernel's view, given the CSR (off, lst) of each destination's sources built on the plan's device.
  template <typename Off>
  PlanView<Off> view(const Off* off, const Off* lst) const {
    return PlanView<Off>{src.const_data_ptr<int64_t>(),
                         dst.const_data_ptr<int64_t>(),
                         unm.const_data_ptr<int64_t>(),
                         apos.defined() ? apos.const_data_ptr<int64_t>() : nullptr,
                         bpos.defined() ? bpos.const_data_ptr<int64_t>() : nullptr,
                         off, lst, d.B, d.T, d.Na, d.Nb, d.r, d.U, distill};
  }
};

inline CheckedPlan checked_plan(const at::Tensor& src_idx, const at::Tensor& dst_idx, const at::Tensor& unm_idx,
                                const c10::optional<at::Tensor>& a_idx_, const c10::optional<at::Tensor>& b_idx_,
                                bool distill, int64_t T, int64_t merged_rows) {
  CheckedPlan p;
  auto a_idx = defined_or_none(a_idx_), b_idx = defined_or_none(b_idx_);
  p.d = check_plan(src_idx, dst_idx, unm_idx, a_idx, b_idx);
  if (T >= 0) resolve_tokens(p.d, T, "x");
  else resolve_merged_rows(p.d, merged_rows, "y");
  TORCH_CHECK_VALUE(!distill || p.d.U >= 1, "distill_token needs at least one unmerged row in unm_idx");
  TORCH_CHECK_VALUE(p.d.Nb >= 1 || p.d.r == 0, "a plan with merges needs at least one destination");
  p.distill = distill;
  p.src = src_idx.contiguous();
  p.dst = dst_idx.contiguous();
  p.unm = unm_idx.contiguous();
  if (a_idx.has_value()) {
    p.apos = a_idx->contiguous();
    p.bpos = b_idx->contiguous();
    check_split_values(host_contiguous(p.apos), host_contiguous(p.bpos), p.d.T);
  }
  check_plan_values(p.d, host_contiguous(p.src), host_contiguous(p.dst), host_contiguous(p.unm));
  return p;
}

// tomesd's random2d_split: sizes in checked int64 (h * w = 2**64 once wrapped to 0 and crashed).
struct SplitDims {
  int64_t hsy = 0, wsx = 0, n = 0, nd = 0;
};
inline SplitDims check_random2d_split_args(const at::Tensor& rand_idx, int64_t h, int64_t w, int64_t sx,
                                           int64_t sy) {
  TORCH_CHECK_VALUE(h > 0 && w > 0, "h and w must be positive, got h=", h, ", w=", w);
  TORCH_CHECK_VALUE(sx > 0 && sy > 0, "sx and sy must be positive, got sx=", sx, ", sy=", sy);
  check_dtype(rand_idx, c10::kLong, "rand_idx");
  SplitDims s;
  s.hsy = h / sy;
  s.wsx = w / sx;
  s.n = checked_mul(h, w, "h*w");
  s.nd = checked_mul(s.hsy, s.wsx, "(h // sy)*(w // sx)");
  checked_mul(sx, sy, "sx*sy");
  TORCH_CHECK_VALUE(rand_idx.numel() == s.nd && rand_idx.dim() >= 2 && rand_idx.size(0) == s.hsy &&
                        rand_idx.size(1) == s.wsx,
                    "rand_idx must have shape [h // sy, w // sx(, 1)] = [", s.hsy, ", ", s.wsx, "], got ",
                    rand_idx.sizes());
  // the kernel sorts h*w keys on the host: refuse what cannot be a token grid rather than fail to allocate
  TORCH_CHECK_VALUE(s.n <= (int64_t(1) << 40), "h*w = ", s.n, " tokens is too large");
  return s;
}

inline void check_x(const at::Tensor& x, const char* name, const PlanDims& d, const at::Tensor& plan_ref) {
  check_floating(x, name);
  check_dim(x, 3, name);
  check_same_device(x, name, plan_ref, "src_idx");
  TORCH_CHECK_VALUE(x.size(0) == d.B, name, ".shape[0] must be the plan's batch ", d.B, ", got shape ", x.sizes());
}

inline int mode_code(c10::string_view mode) {
  if (mode == "sum") return 0;
  if (mode == "mean") return 1;
  if (mode == "amax") return 2;
  TORCH_CHECK_VALUE(false, "mode must be 'sum', 'mean' or 'amax', got '", std::string(mode), "'");
  return -1;
}

}  // namespace merge
}  // namespace imtok
