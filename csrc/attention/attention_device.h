// Tensor-level launchers of the attention device kernels, compiled twice: by nvcc for CUDA tensors and by g++
// with the execution shim for the emulated test ops (CPU tensors).
#pragma once

#include <torch/library.h>

#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/full.h>
#include <ATen/ops/zeros.h>

#include <limits>
#include <tuple>
#include <type_traits>

#include "attention/attention_common.h"
#include "attention/attention_kernels.cuh"
#include "attention/attention_tc_kernels.cuh"

namespace imtok {
namespace IMTOK_DEVICE_NS {
namespace attention {

using imtok::attention::Problem;

// int64 [nseg, 5] = (b, qo, nq, ko, nk) per segment, on the device of `like`.
inline at::Tensor segment_table(const Problem& p, const at::Tensor& like) {
  const int64_t ns = static_cast<int64_t>(p.segs.size());
  at::Tensor t = at::empty({ns, 5}, at::TensorOptions().dtype(at::kLong));
  int64_t* w = t.data_ptr<int64_t>();
  for (int64_t s = 0; s < ns; ++s) {
    const auto& sg = p.segs[s];
    w[s * 5 + 0] = sg.b;
    w[s * 5 + 1] = sg.qo;
    w[s * 5 + 2] = sg.nq;
    w[s * 5 + 3] = sg.ko;
    w[s * 5 + 4] = sg.nk;
  }
  return t.to(like.device());
}

inline void check_grid(const Problem& p) {
  TORCH_CHECK_VALUE(ceil_div(p.max_nq, kBM) <= 65535 && ceil_div(p.max_nk, kThreads) <= 65535,
                    "attention on the GPU supports up to ", 65535 * kBM, " queries and ", 65535 * kThreads,
                    " keys per sequence, got ", p.max_nq, " and ", p.max_nk);
  TORCH_CHECK_VALUE(static_cast<int64_t>(p.segs.size()) * p.H <= 2147483647, "too many (batch, head) pairs");
}

// Kernels whose tiles need more than the default 48 KiB of dynamic shared memory opt in (d up to 128, fp64).
template <typename Kernel>
inline void allow_smem(Kernel kern, size_t bytes) {
#if defined(__CUDACC__)
  if (bytes > 48 * 1024)
    C10_CUDA_CHECK(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)));
#else
  (void)kern;
  (void)bytes;
#endif
}

template <typename acc_t>
inline const acc_t* opt_ptr(const at::Tensor& t) {
  return t.defined() ? t.data_ptr<acc_t>() : static_cast<const acc_t*>(nullptr);
}

// fp16 / bf16 forward tiles go to the tensor cores where the device has bf16 wmma (sm_80+; always under the
// shim, which emulates wmma)
inline bool tensor_cores_available(const at::Tensor& like) {
#if defined(__CUDACC__)
  int major = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, like.get_device()));
  return major >= 8;
#else
  (void)like;
  return true;
#endif
}

// the most dynamic shared memory one block may opt in to (227 KiB on an H100/H200, 163 KiB on an A100; the
// shim's limit under emulation)
inline size_t max_smem_per_block(const at::Tensor& like) {
#if defined(__CUDACC__)
  int bytes = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&bytes, cudaDevAttrMaxSharedMemoryPerBlockOptin, like.get_device()));
  return static_cast<size_t>(bytes);
#else
  (void)like;
  return 227 * 1024;
#endif
}

// A tensor-core kernel runs only if the device has bf16 wmma and this build holds code for sm_80 or newer for
// it (a build with only older PTX would JIT a trapping stub) and its shared memory fits the device.
template <typename Kernel>
inline bool tc_kernel_usable(Kernel kern, size_t smem, const at::Tensor& like) {
#if defined(__CUDACC__)
  cudaFuncAttributes attr;
  C10_CUDA_CHECK(cudaFuncGetAttributes(&attr, kern));
  if (attr.ptxVersion < 80) return false;
#else
  (void)kern;
#endif
  return tensor_cores_available(like) && smem <= max_smem_per_block(like);
}

// The tensor-core forward for fp16 / bf16 (out, lse); false, launching nothing, for other types or devices.
template <typename scalar_t, typename acc_t, typename Stream>
bool launch_forward_tc(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const acc_t* addp,
                       const int64_t* sp, int64_t ns, const Problem& p, int d, acc_t sc, at::Tensor& out,
                       at::Tensor& lse, Stream stream) {
  if constexpr (std::is_same<scalar_t, at::Half>::value || std::is_same<scalar_t, at::BFloat16>::value) {
    const size_t smem = tc_layout(d).bytes;
    auto kern = attn_fwd_tc_kernel<scalar_t>;
    if (!tc_kernel_usable(kern, smem, q)) return false;
    allow_smem(kern, smem);
    IMTOK_LAUNCH(kern, dim3(ns * p.H, ceil_div(p.max_nq, kTcBM)), dim3(kTcThreads), smem, stream,
                 q.data_ptr<scalar_t>(), k.data_ptr<scalar_t>(), v.data_ptr<scalar_t>(), addp, sp, p.H, p.Nq, p.Nk,
                 d, sc, p.causal, out.data_ptr<scalar_t>(), lse.data_ptr<acc_t>());
    return true;
  } else {
    return false;
  }
}

// The tensor-core column sums for fp16 / bf16 (after a tensor-core forward); false, launching nothing, for
// other types or devices.
template <typename scalar_t, typename acc_t, typename Stream>
bool launch_colsum_tc(const at::Tensor& q, const at::Tensor& k, const acc_t* addp, const int64_t* sp, int64_t ns,
                      const Problem& p, int d, acc_t sc, const at::Tensor& lse, int64_t start, int64_t end,
                      at::Tensor& col, Stream stream) {
  if constexpr (std::is_same<scalar_t, at::Half>::value || std::is_same<scalar_t, at::BFloat16>::value) {
    const size_t smem = colsum_tc_smem(d);
    auto kern = attn_colsum_tc_kernel<scalar_t>;
    if (!tc_kernel_usable(kern, smem, q)) return false;
    allow_smem(kern, smem);
    IMTOK_LAUNCH(kern, dim3(ns * p.H, ceil_div(p.max_nk, kTcBN)), dim3(kTcThreads), smem, stream,
                 q.data_ptr<scalar_t>(), k.data_ptr<scalar_t>(), addp, sp, p.H, p.Nq, p.Nk, d, sc, p.causal,
                 lse.data_ptr<acc_t>(), start, end, col.data_ptr<acc_t>());
    return true;
  } else {
    return false;
  }
}

// tensor_cores = false keeps fp16 / bf16 on the SIMT kernel (its twin, for tests: attention_forward_simt).
inline std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> forward_impl(
    const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& v_in, const c10::optional<at::Tensor>& key_bias,
    const c10::optional<at::Tensor>& key_mask, bool causal, c10::optional<double> scale, bool return_cls_attn,
    bool return_col_sum, int64_t col_sum_start, int64_t col_sum_end, const c10::optional<at::Tensor>& cu_seqlens,
    int64_t causal_prefix, bool tensor_cores) {
  const Problem p = imtok::attention::check_problem(q_in, k_in, v_in, key_bias, key_mask, causal, causal_prefix, scale,
                                                    cu_seqlens);
  imtok::attention::check_col_range(col_sum_start, col_sum_end);
  check_grid(p);
  IMTOK_DEVICE_GUARD(q_in);
  const at::Tensor q = q_in.contiguous(), k = k_in.contiguous(), v = v_in.contiguous();
  const auto opts = q.options().dtype(p.acc_dtype);
  const at::Tensor add = imtok::attention::key_additive(p, key_bias, key_mask, opts);
  at::Tensor out = at::empty({p.B, p.H, p.Nq, p.d}, q.options());
  at::Tensor lse = at::full({p.B, p.H, p.Nq}, -std::numeric_limits<double>::infinity(), opts);
  at::Tensor cls = return_cls_attn ? at::zeros({p.B, p.H, p.Nk}, opts) : at::empty({0}, opts);
  at::Tensor col = return_col_sum ? at::zeros({p.B, p.H, p.Nk}, opts) : at::empty({0}, opts);
  const at::Tensor segs = segment_table(p, q);
  const int64_t ns = static_cast<int64_t>(p.segs.size());
  const int d = static_cast<int>(p.d), ld = d + 1;
  auto stream = IMTOK_CURRENT_STREAM();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(), "attention_forward_device", [&] {
    using acc_t = std::conditional_t<std::is_same<scalar_t, double>::value, double, float>;
    const acc_t sc = static_cast<acc_t>(p.scale);
    const acc_t* addp = opt_ptr<acc_t>(add);
    const int64_t* sp = segs.data_ptr<int64_t>();
    const bool on_tc = tensor_cores && launch_forward_tc<scalar_t>(q, k, v, addp, sp, ns, p, d, sc, out, lse, stream);
    if (!on_tc) {
      const size_t smem = ((kBM + 2 * kBN) * ld + kBM * kBN + 3 * kBM) * sizeof(acc_t);
      auto kern = attn_fwd_kernel<scalar_t, acc_t>;
      allow_smem(kern, smem);
      IMTOK_LAUNCH(kern, dim3(ns * p.H, ceil_div(p.max_nq, kBM)), dim3(kThreads), smem, stream,
                   q.data_ptr<scalar_t>(), k.data_ptr<scalar_t>(), v.data_ptr<scalar_t>(), addp, sp, p.H, p.Nq,
                   p.Nk, d, sc, p.causal, out.data_ptr<scalar_t>(), lse.data_ptr<acc_t>());
    }
    if (return_cls_attn) {
      auto kern = attn_cls_kernel<scalar_t, acc_t>;
      IMTOK_LAUNCH(kern, dim3(ns * p.H, ceil_div(p.max_nk, kThreads)), dim3(kThreads), 0, stream,
                   q.data_ptr<scalar_t>(), k.data_ptr<scalar_t>(), addp, sp, p.H, p.Nq, p.Nk, d, sc, p.causal,
                   lse.data_ptr<acc_t>(), cls.data_ptr<acc_t>());
    }
    if (return_col_sum && !(on_tc && launch_colsum_tc<scalar_t>(q, k, addp, sp, ns, p, d, sc, lse,
                                                                  col_sum_start, col_sum_end, col, stream))) {
      const size_t smem = ((kBN + kBM) * ld + kBM * kBN + kBM) * sizeof(acc_t);
      auto kern = attn_colsum_kernel<scalar_t, acc_t>;
      allow_smem(kern, smem);
      IMTOK_LAUNCH(kern, dim3(ns * p.H, ceil_div(p.max_nk, kBN)), dim3(kThreads), smem, stream,
                   q.data_ptr<scalar_t>(), k.data_ptr<scalar_t>(), addp, sp, p.H, p.Nq, p.Nk, d, sc, p.causal,
                   lse.data_ptr<acc_t>(), col_sum_start, col_sum_end, col.data_ptr<acc_t>());
    }
  });
  return {out, lse, cls, col};
}

inline std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> forward(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const c10::optional<at::Tensor>& key_bias,
    const c10::optional<at::Tensor>& key_mask, bool causal, c10::optional<double> scale, bool return_cls_attn,
    bool return_col_sum, int64_t col_sum_start, int64_t col_sum_end, const c10::optional<at::Tensor>& cu_seqlens,
    int64_t causal_prefix) {
  return forward_impl(q, k, v, key_bias, key_mask, causal, scale, return_cls_attn, return_col_sum, col_sum_start,
                      col_sum_end, cu_seqlens, causal_prefix, /*tensor_cores=*/true);
}
inline std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> forward_simt(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const c10::optional<at::Tensor>& key_bias,
    const c10::optional<at::Tensor>& key_mask, bool causal, c10::optional<double> scale, bool return_cls_attn,
    bool return_col_sum, int64_t col_sum_start, int64_t col_sum_end, const c10::optional<at::Tensor>& cu_seqlens,
    int64_t causal_prefix) {
  return forward_impl(q, k, v, key_bias, key_mask, causal, scale, return_cls_attn, return_col_sum, col_sum_start,
                      col_sum_end, cu_seqlens, causal_prefix, /*tensor_cores=*/false);
}

// The tensor-core dq and dk/dv kernels for fp16 / bf16 where both are usable (tc_kernel_usable); false,
// launching nothing, otherwise.
template <typename scalar_t, typename acc_t, typename Stream>
bool launch_backward_tc(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const acc_t* addp,
                        const int64_t* sp, int64_t ns, const Problem& p, int d, acc_t sc, const at::Tensor& dout,
                        const at::Tensor& lse, const at::Tensor& Dv, at::Tensor& dq, at::Tensor& dk, at::Tensor& dv,
                        acc_t* dbp, Stream stream) {
  if constexpr (std::is_same<scalar_t, at::Half>::value || std::is_same<scalar_t, at::BFloat16>::value) {
    const size_t smem_dq = tc_bwd_layout(d, false).bytes, smem_dkv = tc_bwd_layout(d, true).bytes;
    if (!tc_kernel_usable(attn_bwd_dq_tc_kernel<scalar_t>, smem_dq, q) ||
        !tc_kernel_usable(attn_bwd_dkv_tc_kernel<scalar_t>, smem_dkv, q))
      return false;
    {
      auto kern = attn_bwd_dq_tc_kernel<scalar_t>;
      allow_smem(kern, smem_dq);
      IMTOK_LAUNCH(kern, dim3(ns * p.H, ceil_div(p.max_nq, kTcBM)), dim3(kTcThreads), smem_dq, stream,
                   q.data_ptr<scalar_t>(), k.data_ptr<scalar_t>(), v.data_ptr<scalar_t>(), addp, sp, p.H, p.Nq,
                   p.Nk, d, sc, p.causal, dout.data_ptr<scalar_t>(), lse.data_ptr<acc_t>(), Dv.data_ptr<acc_t>(),
                   dq.data_ptr<acc_t>());
    }
    {
      auto kern = attn_bwd_dkv_tc_kernel<scalar_t>;
      allow_smem(kern, smem_dkv);
      IMTOK_LAUNCH(kern, dim3(ns * p.H, ceil_div(p.max_nk, kTcBN)), dim3(kTcThreads), smem_dkv, stream,
                   q.data_ptr<scalar_t>(), k.data_ptr<scalar_t>(), v.data_ptr<scalar_t>(), addp, sp, p.H, p.Nq,
                   p.Nk, d, sc, p.causal, dout.data_ptr<scalar_t>(), lse.data_ptr<acc_t>(), Dv.data_ptr<acc_t>(),
                   dk.data_ptr<acc_t>(), dv.data_ptr<acc_t>(), dbp);
    }
    return true;
  } else {
    return false;
  }
}

// tensor_cores = false keeps fp16 / bf16 on the SIMT kernels (the twin, for tests: attention_backward_simt).
inline std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> backward_impl(
    const at::Tensor& grad_out, const c10::optional<at::Tensor>& grad_lse, const at::Tensor& q_in,
    const at::Tensor& k_in, const at::Tensor& v_in, const at::Tensor& out, const at::Tensor& lse_in,
    const c10::optional<at::Tensor>& key_bias, const c10::optional<at::Tensor>& key_mask, bool causal,
    c10::optional<double> scale, const c10::optional<at::Tensor>& cu_seqlens, bool need_bias_grad,
    int64_t causal_prefix, bool tensor_cores) {
  const Problem p = imtok::attention::check_problem(q_in, k_in, v_in, key_bias, key_mask, causal, causal_prefix, scale,
                                                    cu_seqlens);
  imtok::attention::check_backward_inputs(p, q_in, grad_out, grad_lse, out, lse_in);
  TORCH_CHECK_VALUE(!need_bias_grad || key_bias.has_value(), "need_bias_grad requires key_bias");
  check_grid(p);
  IMTOK_DEVICE_GUARD(q_in);
  const at::Tensor q = q_in.contiguous(), k = k_in.contiguous(), v = v_in.contiguous();
  const at::Tensor dout = grad_out.contiguous();
  const auto acc = p.acc_dtype;
  const auto opts = q.options().dtype(acc);
  const at::Tensor add = imtok::attention::key_additive(p, key_bias, key_mask, opts);
  const at::Tensor lse = lse_in.to(acc).contiguous();
  at::Tensor Dv = dout.to(acc).mul(out.to(acc)).sum(-1);
  if (grad_lse.has_value()) Dv = Dv.sub(grad_lse->to(acc));
  Dv = Dv.contiguous();
  at::Tensor dq = at::zeros({p.B, p.H, p.Nq, p.d}, opts);
  at::Tensor dk = at::zeros({p.B, p.H, p.Nk, p.d}, opts);
  at::Tensor dv = at::zeros({p.B, p.H, p.Nk, p.d}, opts);
  at::Tensor dbh = need_bias_grad ? at::zeros({p.B, p.H, p.Nk}, opts) : at::Tensor();
  const at::Tensor segs = segment_table(p, q);
  const int64_t ns = static_cast<int64_t>(p.segs.size());
  const int d = static_cast<int>(p.d), ld = d + 1;
  auto stream = IMTOK_CURRENT_STREAM();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(), "attention_backward_device", [&] {
    using acc_t = std::conditional_t<std::is_same<scalar_t, double>::value, double, float>;
    const acc_t sc = static_cast<acc_t>(p.scale);
    const acc_t* addp = opt_ptr<acc_t>(add);
    const int64_t* sp = segs.data_ptr<int64_t>();
    acc_t* dbp = need_bias_grad ? dbh.data_ptr<acc_t>() : static_cast<acc_t*>(nullptr);
    if (tensor_cores && launch_backward_tc<scalar_t>(q, k, v, addp, sp, ns, p, d, sc, dout, lse, Dv, dq, dk,
                                                     dv, dbp, stream))
      return;
    {
      const size_t smem = ((2 * kBM + 2 * kBN) * ld + kBM * kBN + 2 * kBM) * sizeof(acc_t);
      auto kern = attn_bwd_dq_kernel<scalar_t, acc_t>;
      allow_smem(kern, smem);
      IMTOK_LAUNCH(kern, dim3(ns * p.H, ceil_div(p.max_nq, kBM)), dim3(kThreads), smem, stream,
                   q.data_ptr<scalar_t>(), k.data_ptr<scalar_t>(), v.data_ptr<scalar_t>(), addp, sp, p.H, p.Nq,
                   p.Nk, d, sc, p.causal, dout.data_ptr<scalar_t>(), lse.data_ptr<acc_t>(), Dv.data_ptr<acc_t>(),
                   dq.data_ptr<acc_t>());
    }
    {
      const size_t smem = ((2 * kBN + 2 * kBM) * ld + 2 * kBM * kBN + 2 * kBM) * sizeof(acc_t);
      auto kern = attn_bwd_dkv_kernel<scalar_t, acc_t>;
      allow_smem(kern, smem);
      IMTOK_LAUNCH(kern, dim3(ns * p.H, ceil_div(p.max_nk, kBN)), dim3(kThreads), smem, stream,
                   q.data_ptr<scalar_t>(), k.data_ptr<scalar_t>(), v.data_ptr<scalar_t>(), addp, sp, p.H, p.Nq,
                   p.Nk, d, sc, p.causal, dout.data_ptr<scalar_t>(), lse.data_ptr<acc_t>(), Dv.data_ptr<acc_t>(),
                   dk.data_ptr<acc_t>(), dv.data_ptr<acc_t>(), dbp);
    }
  });
  at::Tensor dbias = need_bias_grad ? dbh.sum(1).to(key_bias->scalar_type()) : at::empty({0}, q.options());
  const auto dt = q.scalar_type();
  return {dq.to(dt), dk.to(dt), dv.to(dt), dbias};
}

inline std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> backward(
    const at::Tensor& grad_out, const c10::optional<at::Tensor>& grad_lse, const at::Tensor& q,
    const at::Tensor& k, const at::Tensor& v, const at::Tensor& out, const at::Tensor& lse,
    const c10::optional<at::Tensor>& key_bias, const c10::optional<at::Tensor>& key_mask, bool causal,
    c10::optional<double> scale, const c10::optional<at::Tensor>& cu_seqlens, bool need_bias_grad,
    int64_t causal_prefix) {
  return backward_impl(grad_out, grad_lse, q, k, v, out, lse, key_bias, key_mask, causal, scale, cu_seqlens,
                       need_bias_grad, causal_prefix, /*tensor_cores=*/true);
}
inline std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> backward_simt(
    const at::Tensor& grad_out, const c10::optional<at::Tensor>& grad_lse, const at::Tensor& q,
    const at::Tensor& k, const at::Tensor& v, const at::Tensor& out, const at::Tensor& lse,
    const c10::optional<at::Tensor>& key_bias, const c10::optional<at::Tensor>& key_mask, bool causal,
    c10::optional<double> scale, const c10::optional<at::Tensor>& cu_seqlens, bool need_bias_grad,
    int64_t causal_prefix) {
  return backward_impl(grad_out, grad_lse, q, k, v, out, lse, key_bias, key_mask, causal, scale, cu_seqlens,
                       need_bias_grad, causal_prefix, /*tensor_cores=*/false);
}

// Registers the launchers on `m` (imtok_cuda for CUDA tensors, imtok_cuda_emu for the emulation). Forward and
// backward also register on their own: nvcc compiles them in two translation units, in parallel.
inline void register_forward_kernels(torch::Library& m) { m.impl("attention_forward", &forward); }
inline void register_backward_kernels(torch::Library& m) { m.impl("attention_backward", &backward); }
inline void register_device_kernels(torch::Library& m) {
  register_forward_kernels(m);
  register_backward_kernels(m);
}

}  // namespace attention
}  // namespace IMTOK_DEVICE_NS
}  // namespace imtok
