// Tensor-level launchers of the merge device kernels, shared by the real CUDA build (merge_cuda.cu) and the
// emulated build (merge_emu.cpp, CPU tensors). Checks, allocation, dtype dispatch, grid sizes.
#pragma once

#include <torch/library.h>

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>

#include <tuple>

#include "common/checks.h"
#include "common/device.h"
#include "merge/merge_kernels.cuh"
#include "merge/merge_plan.h"

namespace imtok {
namespace IMTOK_DEVICE_NS {
namespace merge {

using at::Tensor;
using imtok::merge::PlanDims;
using imtok::merge::defined_or_none;

inline void check_metric(const Tensor& metric) {
  check_floating(metric, "metric");
  check_dim(metric, 3, "metric");
}

inline std::tuple<Tensor, Tensor, Tensor> bipartite_match(const Tensor& metric_, const Tensor* a_idx,
                                                          const Tensor* b_idx, int64_t Na, int64_t Nb, int64_t r,
                                                          bool class_token, bool distill_token) {
  const Tensor metric = metric_.contiguous();
  IMTOK_DEVICE_GUARD(metric);
  auto stream = IMTOK_CURRENT_STREAM();
  const int64_t B = metric.size(0), T = metric.size(1), C = metric.size(2);
  auto lopts = metric.options().dtype(c10::kLong);
  Tensor src = at::empty({B, r}, lopts), dst = at::empty({B, r}, lopts), unm = at::empty({B, Na - r}, lopts);
  if (B == 0 || Na == 0) return {src, dst, unm};
  Tensor node_idx = at::empty({B, Na}, lopts), rank = at::empty({B, Na}, lopts);
  AT_DISPATCH_FLOATING_TYPES_AND2(c10::kHalf, c10::kBFloat16, metric.scalar_type(), "merge_match_device", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    auto aopts = metric.options().dtype(c10::CppTypeToScalarType<acc_t>::value);
    Tensor norms = at::empty({B, T}, aopts), node_max = at::empty({B, Na}, aopts);
    const int threads = 128, warps = threads / 32;
    auto nk = norms_kernel<scalar_t, acc_t>;
    IMTOK_LAUNCH(nk, dim3(unsigned(ceil_div(T, warps)), unsigned(B)), threads, 0, stream,
                 metric.const_data_ptr<scalar_t>(), norms.mutable_data_ptr<acc_t>(), T, C);
    const int64_t* ap = a_idx ? a_idx->const_data_ptr<int64_t>() : nullptr;
    const int64_t* bp = b_idx ? b_idx->const_data_ptr<int64_t>() : nullptr;
    auto mk = match_kernel<scalar_t, acc_t>;
    if (Nb > 0) {
      IMTOK_LAUNCH(mk, dim3(unsigned(ceil_div(Na, warps)), unsigned(B)), threads, 0, stream,
                   metric.const_data_ptr<scalar_t>(), norms.const_data_ptr<acc_t>(), ap, bp, T, C, Na, Nb,
                   class_token, distill_token, node_max.mutable_data_ptr<acc_t>(), node_idx.mutable_data_ptr<int64_t>());
    } else {
      node_max.fill_(0);
      node_idx.fill_(0);
    }
    auto sk = select_kernel<acc_t>;
    IMTOK_LAUNCH(sk, dim3(static_cast<unsigned>(B)), 256, 0, stream, node_max.const_data_ptr<acc_t>(),
                 node_idx.const_data_ptr<int64_t>(), Na, r, class_token, rank.mutable_data_ptr<int64_t>(),
                 src.mutable_data_ptr<int64_t>(), dst.mutable_data_ptr<int64_t>(), unm.mutable_data_ptr<int64_t>());
  });
  return {src, dst, unm};
}

inline std::tuple<Tensor, Tensor, Tensor> tome_match(const Tensor& metric, int64_t r, bool class_token,
                                                     bool distill_token) {
  check_metric(metric);
  const int64_t T = metric.size(1);
  const int64_t prot = int64_t(class_token) + int64_t(distill_token);
  r = std::max<int64_t>(0, std::min<int64_t>(r, (T - prot) / 2));
  return bipartite_match(metric, nullptr, nullptr, (T + 1) / 2, T / 2, r, class_token, distill_token);
}

inline std::tuple<Tensor, Tensor, Tensor> random2d_match(const Tensor& metric, const Tensor& a_idx_,
                                                         const Tensor& b_idx_, int64_t r) {
  check_metric(metric);
  check_dtype(a_idx_, c10::kLong, "a_idx");
  check_dtype(b_idx_, c10::kLong, "b_idx");
  check_dim(a_idx_, 1, "a_idx");
  check_dim(b_idx_, 1, "b_idx");
  check_same_device(metric, "metric", a_idx_, "a_idx");
  check_same_device(metric, "metric", b_idx_, "b_idx");
  const int64_t T = metric.size(1), Na = a_idx_.size(0), Nb = b_idx_.size(0);
  TORCH_CHECK_VALUE(Na + Nb == T, "a_idx and b_idx must split the ", T, " tokens of metric, got ", Na, " + ", Nb);
  imtok::merge::check_split_values(host_contiguous(a_idx_), host_contiguous(b_idx_), T);  // before the kernel reads them
  r = std::max<int64_t>(0, std::min<int64_t>(r, Na));
  const Tensor a_idx = a_idx_.contiguous(), b_idx = b_idx_.contiguous();
  return bipartite_match(metric, &a_idx, &b_idx, Na, Nb, r, false, false);
}

// A checked plan and the CSR of each destination's sources, built by a kernel on the plan's device.
struct DevPlanHolder : imtok::merge::CheckedPlan {
  Tensor off, lst;
  DevPlan view() const { return CheckedPlan::view(off.const_data_ptr<int>(), lst.const_data_ptr<int>()); }
};

inline DevPlanHolder make_plan(const Tensor& src_idx, const Tensor& dst_idx, const Tensor& unm_idx,
                               const c10::optional<Tensor>& a_idx, const c10::optional<Tensor>& b_idx,
                               bool distill, int64_t T, int64_t merged_rows) {
  DevPlanHolder h;
  static_cast<imtok::merge::CheckedPlan&>(h) =
      imtok::merge::checked_plan(src_idx, dst_idx, unm_idx, a_idx, b_idx, distill, T, merged_rows);
  const PlanDims& d = h.d;
  IMTOK_DEVICE_GUARD(src_idx);
  auto stream = IMTOK_CURRENT_STREAM();
  auto iopts = src_idx.options().dtype(c10::kInt);
  h.off = at::empty({d.B, d.Nb + 1}, iopts);
  h.lst = at::empty({d.B, std::max<int64_t>(d.r, 1)}, iopts);
  IMTOK_LAUNCH(csr_kernel, dim3(unsigned(d.B)), 256, 0, stream, h.dst.const_data_ptr<int64_t>(), d.r, d.Nb,
               h.off.mutable_data_ptr<int>(), h.lst.mutable_data_ptr<int>());
  return h;
}

inline int threads_for(int64_t C) {
  int t = 32;
  while (t < C && t < 256) t *= 2;
  return t;
}

inline Tensor apply(const Tensor& x_, const Tensor& src_idx, const Tensor& dst_idx, const Tensor& unm_idx,
                    const c10::optional<Tensor>& a_idx, const c10::optional<Tensor>& b_idx, c10::string_view mode,
                    bool distill_token) {
  const int mc = imtok::merge::mode_code(mode);
  check_floating(x_, "x");
  check_dim(x_, 3, "x");
  check_same_device(x_, "x", src_idx, "src_idx");
  DevPlanHolder h = make_plan(src_idx, dst_idx, unm_idx, a_idx, b_idx, distill_token, x_.size(1), 0);
  TORCH_CHECK_VALUE(x_.size(0) == h.d.B, "x.shape[0] must be the plan's batch ", h.d.B, ", got shape ", x_.sizes());
  const Tensor x = x_.contiguous();
  const int64_t C = x.size(2);
  Tensor out = at::empty({h.d.B, h.d.tout(), C}, x.options());
  if (C == 0) return out;
  IMTOK_DEVICE_GUARD(x);
  auto stream = IMTOK_CURRENT_STREAM();
  const DevPlan p = h.view();
  AT_DISPATCH_FLOATING_TYPES_AND2(c10::kHalf, c10::kBFloat16, x.scalar_type(), "merge_apply_device", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    auto k = apply_kernel<scalar_t, acc_t>;
    IMTOK_LAUNCH(k, dim3(unsigned(h.d.tout()), unsigned(h.d.B)), threads_for(C), 0, stream,
                 x.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(), p, C, mc);
  });
  return out;
}

inline Tensor apply_backward(const Tensor& grad_, const Tensor& x_, const Tensor& out_, const Tensor& src_idx,
                             const Tensor& dst_idx, const Tensor& unm_idx, const c10::optional<Tensor>& a_idx,
                             const c10::optional<Tensor>& b_idx, c10::string_view mode, bool distill_token) {
  const int mc = imtok::merge::mode_code(mode);
  check_floating(x_, "x");
  check_dim(x_, 3, "x");
  DevPlanHolder h = make_plan(src_idx, dst_idx, unm_idx, a_idx, b_idx, distill_token, x_.size(1), 0);
  const int64_t C = x_.size(2);
  TORCH_CHECK_VALUE(grad_.dim() == 3 && grad_.size(0) == h.d.B && grad_.size(1) == h.d.tout() && grad_.size(2) == C,
                    "grad must have shape [", h.d.B, ", ", h.d.tout(), ", ", C, "], got ", grad_.sizes());
  check_same_dtype(grad_, "grad", x_, "x");
  if (mc == 2) TORCH_CHECK_VALUE(out_.sizes() == grad_.sizes(), "out must have the shape of grad");
  const Tensor g = grad_.contiguous(), x = x_.contiguous(), o = mc == 2 ? out_.contiguous() : grad_.contiguous();
  Tensor gx = at::zeros({h.d.B, h.d.T, C}, x.options());
  if (C == 0) return gx;
  IMTOK_DEVICE_GUARD(x);
  auto stream = IMTOK_CURRENT_STREAM();
  const DevPlan p = h.view();
  AT_DISPATCH_FLOATING_TYPES_AND2(c10::kHalf, c10::kBFloat16, x.scalar_type(), "merge_apply_backward_device", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    auto k = apply_backward_kernel<scalar_t, acc_t>;
    IMTOK_LAUNCH(k, dim3(unsigned(h.d.tout()), unsigned(h.d.B)), threads_for(C), 0, stream,
                 g.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(), o.const_data_ptr<scalar_t>(),
                 gx.mutable_data_ptr<scalar_t>(), p, C, mc);
  });
  return gx;
}

inline std::tuple<Tensor, Tensor> wavg(const Tensor& x_, const c10::optional<Tensor>& size_, const Tensor& src_idx,
                                       const Tensor& dst_idx, const Tensor& unm_idx,
                                       const c10::optional<Tensor>& a_idx, const c10::optional<Tensor>& b_idx,
                                       bool distill_token) {
  check_floating(x_, "x");
  check_dim(x_, 3, "x");
  check_same_device(x_, "x", src_idx, "src_idx");
  DevPlanHolder h = make_plan(src_idx, dst_idx, unm_idx, a_idx, b_idx, distill_token, x_.size(1), 0);
  TORCH_CHECK_VALUE(x_.size(0) == h.d.B, "x.shape[0] must be the plan's batch ", h.d.B, ", got shape ", x_.sizes());
  const auto size_opt = defined_or_none(size_);
  Tensor size;
  if (size_opt.has_value()) {
    check_same_dtype(*size_opt, "size", x_, "x");
    TORCH_CHECK_VALUE(size_opt->dim() == 3 && size_opt->size(0) == h.d.B && size_opt->size(1) == h.d.T &&
                          size_opt->size(2) == 1,
                      "size must have shape [", h.d.B, ", ", h.d.T, ", 1], got ", size_opt->sizes());
    size = size_opt->contiguous();
  }
  const Tensor x = x_.contiguous();
  const int64_t C = x.size(2);
  Tensor out = at::empty({h.d.B, h.d.tout(), C}, x.options());
  Tensor out_size = at::empty({h.d.B, h.d.tout(), 1}, x.options());
  IMTOK_DEVICE_GUARD(x);
  auto stream = IMTOK_CURRENT_STREAM();
  const DevPlan p = h.view();
  AT_DISPATCH_FLOATING_TYPES_AND2(c10::kHalf, c10::kBFloat16, x.scalar_type(), "merge_wavg_device", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    auto k = wavg_kernel<scalar_t, acc_t>;
    IMTOK_LAUNCH(k, dim3(unsigned(h.d.tout()), unsigned(h.d.B)), threads_for(C), 0, stream,
                 x.const_data_ptr<scalar_t>(), size.defined() ? size.const_data_ptr<scalar_t>() : nullptr,
                 out.mutable_data_ptr<scalar_t>(), out_size.mutable_data_ptr<scalar_t>(), p, C);
  });
  return {out, out_size};
}

inline std::tuple<Tensor, Tensor> wavg_backward(const Tensor& grad_x_, const c10::optional<Tensor>& grad_size_,
                                                const Tensor& x_, const c10::optional<Tensor>& size_,
                                                const Tensor& out_x_, const Tensor& out_size_, const Tensor& src_idx,
                                                const Tensor& dst_idx, const Tensor& unm_idx,
                                                const c10::optional<Tensor>& a_idx,
                                                const c10::optional<Tensor>& b_idx, bool distill_token) {
  check_floating(x_, "x");
  check_dim(x_, 3, "x");
  DevPlanHolder h = make_plan(src_idx, dst_idx, unm_idx, a_idx, b_idx, distill_token, x_.size(1), 0);
  const int64_t B = h.d.B, C = x_.size(2), T = h.d.T, tout = h.d.tout();
  TORCH_CHECK_VALUE(grad_x_.dim() == 3 && grad_x_.size(0) == B && grad_x_.size(1) == tout && grad_x_.size(2) == C,
                    "grad_x must have shape [", B, ", ", tout, ", ", C, "], got ", grad_x_.sizes());
  TORCH_CHECK_VALUE(out_x_.sizes() == grad_x_.sizes(), "out_x must have shape ", grad_x_.sizes());
  TORCH_CHECK_VALUE(out_size_.numel() == B * tout, "out_size must have shape [", B, ", ", tout, ", 1]");
  const auto gs_opt = defined_or_none(grad_size_);
  const auto size_opt = defined_or_none(size_);
  if (gs_opt.has_value()) TORCH_CHECK_VALUE(gs_opt->numel() == B * tout, "grad_size must have shape [", B, ", ", tout, ", 1]");
  if (size_opt.has_value()) TORCH_CHECK_VALUE(size_opt->numel() == B * T, "size must have shape [", B, ", ", T, ", 1]");
  const Tensor g = grad_x_.contiguous(), x = x_.contiguous(), y = out_x_.contiguous(), ys = out_size_.contiguous();
  const Tensor gs = gs_opt.has_value() ? gs_opt->to(x.scalar_type()).contiguous() : Tensor();
  const Tensor s = size_opt.has_value() ? size_opt->contiguous() : Tensor();
  Tensor gx = at::zeros({B, T, C}, x.options());
  Tensor gsz = at::zeros({B, T, 1}, x.options());
  IMTOK_DEVICE_GUARD(x);
  auto stream = IMTOK_CURRENT_STREAM();
  const DevPlan p = h.view();
  AT_DISPATCH_FLOATING_TYPES_AND2(c10::kHalf, c10::kBFloat16, x.scalar_type(), "merge_wavg_backward_device", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    auto k = wavg_backward_kernel<scalar_t, acc_t>;
    IMTOK_LAUNCH(k, dim3(static_cast<unsigned>(tout), static_cast<unsigned>(B)), threads_for(C), 0, stream, g.const_data_ptr<scalar_t>(),
                 gs.defined() ? gs.const_data_ptr<scalar_t>() : nullptr, x.const_data_ptr<scalar_t>(),
                 s.defined() ? s.const_data_ptr<scalar_t>() : nullptr, y.const_data_ptr<scalar_t>(),
                 ys.const_data_ptr<scalar_t>(), gx.mutable_data_ptr<scalar_t>(), gsz.mutable_data_ptr<scalar_t>(), p,
                 C);
  });
  return {gx, gsz};
}

inline Tensor unmerge(const Tensor& y_, const Tensor& src_idx, const Tensor& dst_idx, const Tensor& unm_idx,
                      const c10::optional<Tensor>& a_idx, const c10::optional<Tensor>& b_idx) {
  check_floating(y_, "y");
  check_dim(y_, 3, "y");
  check_same_device(y_, "y", src_idx, "src_idx");
  DevPlanHolder h = make_plan(src_idx, dst_idx, unm_idx, a_idx, b_idx, false, -1, y_.size(1));
  TORCH_CHECK_VALUE(y_.size(0) == h.d.B, "y.shape[0] must be the plan's batch ", h.d.B, ", got shape ", y_.sizes());
  const Tensor y = y_.contiguous();
  const int64_t C = y.size(2);
  Tensor out = at::zeros({h.d.B, h.d.T, C}, y.options());
  if (C == 0) return out;
  IMTOK_DEVICE_GUARD(y);
  auto stream = IMTOK_CURRENT_STREAM();
  const DevPlan p = h.view();
  AT_DISPATCH_FLOATING_TYPES_AND2(c10::kHalf, c10::kBFloat16, y.scalar_type(), "merge_unmerge_device", [&] {
    auto k = unmerge_kernel<scalar_t>;
    IMTOK_LAUNCH(k, dim3(unsigned(h.d.tout()), unsigned(h.d.B)), threads_for(C), 0, stream,
                 y.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(), p, C);
  });
  return out;
}

// Registers this family's launchers on `m` (imtok_cuda for CUDA tensors, imtok_cuda_emu for the emulation).
inline void register_device_kernels(torch::Library& m) {
  m.impl("merge_tome_match", &tome_match);
  m.impl("merge_random2d_match", &random2d_match);
  m.impl("merge_apply", &apply);
  m.impl("merge_apply_backward", &apply_backward);
  m.impl("merge_wavg", &wavg);
  m.impl("merge_wavg_backward", &wavg_backward);
  m.impl("merge_unmerge", &unmerge);
}

}  // namespace merge
}  // namespace IMTOK_DEVICE_NS
}  // namespace imtok
