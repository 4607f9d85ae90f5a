// Tensor-level launchers of the prune family, shared by the real CUDA build (prune_cuda.cu) and the emulated one
// (prune_emu.cpp): input checks, output allocation, dtype dispatch, grid sizes, IMTOK_LAUNCH.
#pragma once

#include <torch/library.h>

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>

#include <cmath>
#include <string>
#include <tuple>

#include "common/checks.h"
#include "prune/prune_checks.h"
#include "prune/prune_kernels.cuh"

namespace imtok {
namespace IMTOK_DEVICE_NS {
namespace prune {

// Dynamic shared memory a block may use without opting in.
constexpr int64_t kPruneSmemLimit = 48 * 1024;

inline void prune_check_smem(int64_t bytes, const char* what) {
  TORCH_CHECK_VALUE(bytes <= kPruneSmemLimit, what, ": needs ", bytes,
                    " bytes of shared memory (> 48 KiB); the sequence is too long for this kernel");
}

inline std::tuple<at::Tensor, at::Tensor> evit_keep_fuse(const at::Tensor& x_, const at::Tensor& cls_attn_,
                                                                 int64_t left, bool fuse) {
  imtok::prune::check_evit_inputs(x_, cls_attn_, left);
  check_device_type(x_, kDeviceType, "x");
  IMTOK_DEVICE_GUARD(x_);
  const at::Tensor x = x_.contiguous(), cls_attn = cls_attn_.contiguous();
  const int64_t B = x.size(0), N = x.size(1), C = x.size(2), M = N - 1;
  at::Tensor out = at::empty({B, left + 1 + (fuse ? 1 : 0), C}, x.options());
  at::Tensor kept = at::empty({B, left}, x.options().dtype(at::kLong));
  if (B == 0) return {out, kept};  // with C == 0 one chunk still writes kept_idx
  const int64_t cw = C == 0 ? 1 : imtok_min<int64_t>(C, 128);
  const int64_t chunks = C == 0 ? 1 : ceil_div(C, cw);
  auto stream = IMTOK_CURRENT_STREAM();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "prune_evit_keep_fuse", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    // the int arrays are rounded up to whole acc_t so the (emulated) span keeps every byte
    const int64_t smem = (M + ceil_div((M + left) * int64_t(sizeof(int)), sizeof(acc_t))) * int64_t(sizeof(acc_t));
    prune_check_smem(smem, "prune_evit_keep_fuse");
    auto kern = evit_keep_fuse_kernel<scalar_t, acc_t>;
    IMTOK_LAUNCH(kern, dim3(B, chunks), kThreads, smem, stream, x.data_ptr<scalar_t>(),
                 cls_attn.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), kept.data_ptr<int64_t>(), N, C, left,
                 fuse ? 1 : 0, cw);
  });
  return {out, kept};
}

inline std::tuple<at::Tensor, at::Tensor> evit_keep_fuse_backward(const at::Tensor& grad_out_,
                                                                         const at::Tensor& x_,
                                                                         const at::Tensor& cls_attn_,
                                                                         const at::Tensor& kept_,
                                                                         bool fuse) {
  imtok::prune::check_evit_backward_inputs(grad_out_, x_, cls_attn_, kept_, fuse);
  check_device_type(x_, kDeviceType, "x");
  IMTOK_DEVICE_GUARD(x_);
  const at::Tensor g = grad_out_.contiguous(), x = x_.contiguous(), cls_attn = cls_attn_.contiguous(),
                   kept = kept_.contiguous();
  const int64_t B = x.size(0), N = x.size(1), C = x.size(2), M = N - 1, left = kept.size(1);
  imtok::prune::check_index_values(kept, 0, M, "kept_idx", /*unique_rows=*/true);
  at::Tensor gx = at::empty_like(x);
  at::Tensor ga = at::empty_like(cls_attn);
  if (B == 0) return {gx, ga};
  auto stream = IMTOK_CURRENT_STREAM();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "prune_evit_keep_fuse_backward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    prune_check_smem(M * int64_t(sizeof(int)), "prune_evit_keep_fuse_backward");
    if (C > 0) {
      const int64_t cw = imtok_min<int64_t>(C, 128);
      auto kx = evit_backward_x_kernel<scalar_t, acc_t>;
      IMTOK_LAUNCH(kx, dim3(B, ceil_div(C, cw)), kThreads, M * sizeof(int), stream, g.data_ptr<scalar_t>(),
                   cls_attn.data_ptr<scalar_t>(), kept.data_ptr<int64_t>(), gx.data_ptr<scalar_t>(), N, C, left,
                   fuse ? 1 : 0, cw);
    }
    if (M > 0) {
      auto ka = evit_backward_attn_kernel<scalar_t, acc_t>;
      IMTOK_LAUNCH(ka, static_cast<unsigned>(B), kThreads, M * sizeof(int), stream, g.data_ptr<scalar_t>(),
                   x.data_ptr<scalar_t>(), kept.data_ptr<int64_t>(), ga.data_ptr<scalar_t>(), N, C, left,
                   fuse ? 1 : 0);
    }
  });
  return {gx, ga};
}

inline at::Tensor topk_mask(const at::Tensor& scores_, int64_t k) {
  imtok::prune::check_topk_mask_inputs(scores_, k);
  check_device_type(scores_, kDeviceType, "scores");
  IMTOK_DEVICE_GUARD(scores_);
  const at::Tensor scores = scores_.contiguous();
  const int64_t B = scores.size(0), N = scores.size(1);
  at::Tensor mask = at::empty({B, N}, scores.options().dtype(at::kBool));
  if (B == 0 || N == 0) return mask;
  auto stream = IMTOK_CURRENT_STREAM();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, scores.scalar_type(), "prune_topk_mask", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const int64_t smem = (N + ceil_div(N * int64_t(sizeof(int)), sizeof(acc_t))) * int64_t(sizeof(acc_t));
    prune_check_smem(smem, "prune_topk_mask");
    auto kern = topk_mask_kernel<scalar_t, acc_t>;
    IMTOK_LAUNCH(kern, static_cast<unsigned>(B), kThreads, smem, stream, scores.data_ptr<scalar_t>(), mask.data_ptr<bool>(),
                 N, k);
  });
  return mask;
}

inline std::tuple<at::Tensor, at::Tensor> gather_packed(const at::Tensor& x_, const at::Tensor& mask_) {
  imtok::prune::check_gather_packed_inputs(x_, mask_);
  check_device_type(x_, kDeviceType, "x");
  IMTOK_DEVICE_GUARD(x_);
  const at::Tensor x = x_.contiguous(), mask = mask_.contiguous();
  const int64_t B = x.size(0), N = x.size(1), C = x.size(2);
  at::Tensor cu = at::zeros({B + 1}, x.options().dtype(at::kInt));
  if (B == 0 || N == 0) return {at::empty({0, C}, x.options()), cu};
  at::Tensor counts = at::empty({B}, x.options().dtype(at::kInt));
  auto stream = IMTOK_CURRENT_STREAM();
  IMTOK_LAUNCH(mask_counts_kernel, static_cast<unsigned>(B), kThreads, 0, stream, mask.data_ptr<bool>(),
               counts.data_ptr<int>(), N);
  IMTOK_LAUNCH(cu_seqlens_kernel, 1, 32, 0, stream, counts.data_ptr<int>(), cu.data_ptr<int>(), B);
  const int64_t total = cu[B].item<int64_t>();  // the packed size decides the allocation: one sync
  at::Tensor packed = at::empty({total, C}, x.options());
  if (total == 0 || C == 0) return {packed, cu};
  prune_check_smem(N * int64_t(sizeof(int)), "prune_gather_packed");
  const int64_t rows = 16;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "prune_gather_packed", [&] {
    auto kern = gather_packed_kernel<scalar_t>;
    IMTOK_LAUNCH(kern, dim3(B, ceil_div(N, rows)), kThreads, N * sizeof(int), stream,
                 x.data_ptr<scalar_t>(), mask.data_ptr<bool>(), cu.data_ptr<int>(), packed.data_ptr<scalar_t>(), N,
                 C, rows);
  });
  return {packed, cu};
}

inline std::tuple<at::Tensor, at::Tensor> gtp_graph(const at::Tensor& x_, c10::string_view graph_type,
                                                           int64_t num_neighbours) {
  const imtok::prune::GraphDims g = imtok::prune::check_gtp_graph_inputs(x_, graph_type, num_neighbours);
  check_device_type(x_, kDeviceType, "x");
  IMTOK_DEVICE_GUARD(x_);
  const at::Tensor x = x_.contiguous();
  at::Tensor nbr_idx = at::empty({g.B, g.M, g.Kmax}, x.options().dtype(at::kLong));
  at::Tensor nbr_w = at::empty({g.B, g.M, g.Kmax}, x.options());
  if (g.B == 0 || g.M == 0 || g.Kmax == 0) return {nbr_idx, nbr_w};
  at::Tensor sem = at::empty({g.B, g.M, g.K}, x.options().dtype(at::kLong));
  at::Tensor deg = at::empty({g.B, g.M}, x.options().dtype(at::kInt));
  auto stream = IMTOK_CURRENT_STREAM();
  const int threads = kThreads;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "prune_gtp_graph", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    if (g.use_semantic) {
      auto ks = semantic_topk_kernel<scalar_t, acc_t>;
      IMTOK_LAUNCH(ks, dim3(g.B, ceil_div(g.M, threads / 32)), threads, 0, stream, x.data_ptr<scalar_t>(),
                   sem.data_ptr<int64_t>(), g.N, g.C, g.K);
    }
    IMTOK_LAUNCH(graph_lists_kernel, dim3(g.B, ceil_div(g.M, threads)), threads, 0, stream,
                 sem.data_ptr<int64_t>(), nbr_idx.data_ptr<int64_t>(), deg.data_ptr<int>(), g.M, g.side,
                 g.use_spatial ? 1 : 0, g.K, g.Kmax);
    auto kw = graph_weights_kernel<scalar_t, acc_t>;
    IMTOK_LAUNCH(kw, dim3(g.B, ceil_div(g.M, threads)), threads, 0, stream, nbr_idx.data_ptr<int64_t>(),
                 deg.data_ptr<int>(), nbr_w.data_ptr<scalar_t>(), g.M, g.Kmax);
  });
  return {nbr_idx, nbr_w};
}

inline at::Tensor gtp_propagate(const at::Tensor& x_, const at::Tensor& kept_, const at::Tensor& prop_,
                                       const at::Tensor& nbr_idx_, const at::Tensor& nbr_w_, double alpha) {
  imtok::prune::check_gtp_propagate_inputs(x_, kept_, prop_, nbr_idx_, nbr_w_);
  check_device_type(x_, kDeviceType, "x");
  IMTOK_DEVICE_GUARD(x_);
  const at::Tensor x = x_.contiguous(), kept = kept_.contiguous(), prop = prop_.contiguous(),
                   nbr_idx = nbr_idx_.contiguous(), nbr_w = nbr_w_.contiguous();
  const int64_t B = x.size(0), N = x.size(1), C = x.size(2), M = N - 1, Nk = kept.size(1), P = prop.size(1);
  const int K = static_cast<int>(nbr_idx.size(2));
  check_finite_param(alpha, "alpha");
  imtok::prune::check_index_values(kept, 1, N, "kept_idx");
  imtok::prune::check_index_values(prop, 1, N, "prop_idx");
  imtok::prune::check_index_values(nbr_idx, -1, M, "nbr_idx");
  at::Tensor out = at::empty({B, Nk + 1, C}, x.options());
  if (B == 0 || C == 0) return out;
  prune_check_smem(M * int64_t(sizeof(int)), "prune_gtp_propagate");
  const int64_t rows = imtok_max<int64_t>(1, imtok_min<int64_t>(16, 4096 / C));
  auto stream = IMTOK_CURRENT_STREAM();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "prune_gtp_propagate", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    auto kern = gtp_propagate_kernel<scalar_t, acc_t>;
    IMTOK_LAUNCH(kern, dim3(B, ceil_div(Nk + 1, rows)), kThreads, M * sizeof(int), stream,
                 x.data_ptr<scalar_t>(), kept.data_ptr<int64_t>(), prop.data_ptr<int64_t>(),
                 nbr_idx.data_ptr<int64_t>(), nbr_w.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), N, C, Nk, P, K,
                 static_cast<acc_t>(alpha), rows);
  });
  return out;
}

inline at::Tensor gtp_propagate_backward(const at::Tensor& grad_out_, const at::Tensor& kept_,
                                                const at::Tensor& prop_, const at::Tensor& nbr_idx_,
                                                const at::Tensor& nbr_w_, double alpha, int64_t num_tokens) {
  imtok::prune::check_gtp_propagate_backward_inputs(grad_out_, kept_, prop_, nbr_idx_, nbr_w_, num_tokens);
  check_device_type(grad_out_, kDeviceType, "grad_out");
  IMTOK_DEVICE_GUARD(grad_out_);
  const at::Tensor g = grad_out_.contiguous(), kept = kept_.contiguous(), prop = prop_.contiguous(),
                   nbr_idx = nbr_idx_.contiguous(), nbr_w = nbr_w_.contiguous();
  const int64_t B = g.size(0), C = g.size(2), N = num_tokens, M = N - 1, Nk = kept.size(1), P = prop.size(1);
  const int K = static_cast<int>(nbr_idx.size(2));
  check_finite_param(alpha, "alpha");
  imtok::prune::check_index_values(kept, 1, N, "kept_idx");
  imtok::prune::check_index_values(prop, 1, N, "prop_idx");
  imtok::prune::check_index_values(nbr_idx, -1, M, "nbr_idx");
  at::Tensor gx;
  auto stream = IMTOK_CURRENT_STREAM();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.scalar_type(), "prune_gtp_propagate_backward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    at::Tensor acc = at::empty({B, N, C}, g.options().dtype(c10::CppTypeToScalarType<acc_t>::value));
    if (B > 0 && C > 0) {
      prune_check_smem(M * int64_t(sizeof(int)), "prune_gtp_propagate_backward");
      const int threads = 128;
      auto kern = gtp_propagate_backward_kernel<scalar_t, acc_t>;
      IMTOK_LAUNCH(kern, dim3(B, ceil_div(C, threads)), threads, M * sizeof(int), stream, g.data_ptr<scalar_t>(),
                   kept.data_ptr<int64_t>(), prop.data_ptr<int64_t>(), nbr_idx.data_ptr<int64_t>(),
                   nbr_w.data_ptr<scalar_t>(), acc.data_ptr<acc_t>(), N, C, Nk, P, K, static_cast<acc_t>(alpha));
    }
    gx = acc.scalar_type() == g.scalar_type() ? acc : acc.to(g.scalar_type());
  });
  return gx;
}

inline std::tuple<at::Tensor, at::Tensor> gtp_graph_select(const at::Tensor& nbr_idx_,
                                                                  const at::Tensor& nbr_w_,
                                                                  const at::Tensor& kept_) {
  imtok::prune::check_gtp_graph_select_inputs(nbr_idx_, nbr_w_, kept_);
  check_device_type(nbr_idx_, kDeviceType, "nbr_idx");
  IMTOK_DEVICE_GUARD(nbr_idx_);
  const at::Tensor nbr_idx = nbr_idx_.contiguous(), nbr_w = nbr_w_.contiguous(), kept = kept_.contiguous();
  const int64_t B = nbr_idx.size(0), M = nbr_idx.size(1), Nk = kept.size(1);
  const int K = static_cast<int>(nbr_idx.size(2));
  imtok::prune::check_index_values(kept, 1, M + 1, "kept_idx", /*unique_rows=*/true);
  imtok::prune::check_index_values(nbr_idx, -1, M, "nbr_idx");
  at::Tensor oi = at::empty({B, Nk, K}, nbr_idx.options());
  at::Tensor ow = at::empty({B, Nk, K}, nbr_w.options());
  if (B == 0 || Nk == 0 || K == 0) return {oi, ow};
  prune_check_smem(M * int64_t(sizeof(int)), "prune_gtp_graph_select");
  auto stream = IMTOK_CURRENT_STREAM();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, nbr_w.scalar_type(), "prune_gtp_graph_select", [&] {
    auto kern = graph_select_kernel<scalar_t>;
    IMTOK_LAUNCH(kern, dim3(B, ceil_div(Nk, kThreads)), kThreads, M * sizeof(int), stream,
                 nbr_idx.data_ptr<int64_t>(), nbr_w.data_ptr<scalar_t>(), kept.data_ptr<int64_t>(),
                 oi.data_ptr<int64_t>(), ow.data_ptr<scalar_t>(), M, Nk, K);
  });
  return {oi, ow};
}

inline at::Tensor cls_attn(const at::Tensor& q_, const at::Tensor& k_, double scale) {
  imtok::prune::check_cls_attn_inputs(q_, k_);
  check_finite_param(scale, "scale");
  check_device_type(q_, kDeviceType, "q");
  IMTOK_DEVICE_GUARD(q_);
  const at::Tensor q = q_.contiguous(), k = k_.contiguous();
  const int64_t B = q.size(0), H = q.size(1), Nq = q.size(2), D = q.size(3), N = k.size(2), M = N - 1;
  at::Tensor out = at::empty({B, M}, q.options());
  if (B == 0 || M == 0) return out;
  if (H == 0) return out.fill_(std::nan(""));  // a mean over no heads
  auto stream = IMTOK_CURRENT_STREAM();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(), "prune_cls_attn", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const int64_t smem = (D + N) * int64_t(sizeof(acc_t));
    prune_check_smem(smem, "prune_cls_attn");
    at::Tensor probs = at::empty({B, H, M}, q.options().dtype(c10::CppTypeToScalarType<acc_t>::value));
    auto kp = cls_attn_probs_kernel<scalar_t, acc_t>;
    IMTOK_LAUNCH(kp, dim3(B, H), kThreads, smem, stream, q.data_ptr<scalar_t>(), k.data_ptr<scalar_t>(),
                 probs.data_ptr<acc_t>(), H, Nq, N, D, static_cast<acc_t>(scale));
    auto km = cls_attn_mean_kernel<scalar_t, acc_t>;
    IMTOK_LAUNCH(km, dim3(B, ceil_div(M, kThreads)), kThreads, 0, stream, probs.data_ptr<acc_t>(),
                 out.data_ptr<scalar_t>(), H, M);
  });
  return out;
}

// Registers this family's launchers on `m` (imtok_cuda for CUDA tensors, imtok_cuda_emu for the emulation).
inline void register_device_kernels(torch::Library& m) {
  m.impl("prune_evit_keep_fuse", &evit_keep_fuse);
  m.impl("prune_evit_keep_fuse_backward", &evit_keep_fuse_backward);
  m.impl("prune_topk_mask", &topk_mask);
  m.impl("prune_gather_packed", &gather_packed);
  m.impl("prune_gtp_graph", &gtp_graph);
  m.impl("prune_gtp_propagate", &gtp_propagate);
  m.impl("prune_gtp_propagate_backward", &gtp_propagate_backward);
  m.impl("prune_gtp_graph_select", &gtp_graph_select);
  m.impl("prune_cls_attn", &cls_attn);
}

}  // namespace prune
}  // namespace IMTOK_DEVICE_NS
}  // namespace imtok
