// Tensor-level launchers of the sampling family, shared by the real CUDA build (sampling_cuda.cu) and the emulated
// one (sampling_emu.cpp): input checks, output allocation, dtype dispatch, grid sizes, IMTOK_LAUNCH.
#pragma once

#include <torch/library.h>

#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>

#include <tuple>

#include "common/checks.h"
#include "sampling/sampling_checks.h"
#include "sampling/sampling_kernels.cuh"

namespace imtok {
namespace IMTOK_DEVICE_NS {
namespace sampling {

inline at::Tensor sample_logits(const at::Tensor& logits_, const c10::optional<at::Tensor>& uncond_,
                                       double cfg_scale, double temperature, int64_t top_k, double top_p,
                                       int64_t seed) {
  imtok::sampling::check_sample_inputs(logits_, uncond_, cfg_scale, temperature, top_k, top_p);
  check_device_type(logits_, kDeviceType, "logits");
  IMTOK_DEVICE_GUARD(logits_);
  const at::Tensor logits = logits_.contiguous();
  const bool has_u = uncond_.has_value();
  const at::Tensor uncond = has_u ? uncond_->to(logits.scalar_type()).contiguous() : at::Tensor();
  const int64_t B = logits.size(0), V = logits.size(1);
  at::Tensor out = at::empty({B}, logits.options().dtype(at::kLong));
  if (B == 0) return out;
  auto stream = IMTOK_CURRENT_STREAM();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "sampling_sample_logits", [&] {
    auto kern = sample_logits_kernel<scalar_t>;
    IMTOK_LAUNCH(kern, static_cast<unsigned>(B), kThreads, 0, stream, logits.data_ptr<scalar_t>(),
                 has_u ? uncond.data_ptr<scalar_t>() : static_cast<scalar_t*>(nullptr), out.data_ptr<int64_t>(), V,
                 static_cast<float>(cfg_scale), static_cast<float>(temperature), top_k, top_p,
                 static_cast<uint64_t>(seed));
  });
  return out;
}

inline std::tuple<at::Tensor, at::Tensor, at::Tensor> maskgit_step(
    const at::Tensor& logits_, const at::Tensor& tokens_, int64_t mask_token_id, const at::Tensor& mask_len_,
    const c10::optional<at::Tensor>& uncond_, double guidance_scale, c10::string_view cfg_form,
    double softmax_temperature, double randomize_temperature, int64_t seed) {
  const int form = imtok::sampling::check_maskgit_inputs(logits_, tokens_, mask_len_, uncond_, guidance_scale, cfg_form,
                                                  softmax_temperature, randomize_temperature);
  check_device_type(logits_, kDeviceType, "logits");
  IMTOK_DEVICE_GUARD(logits_);
  const at::Tensor logits = logits_.contiguous(), tokens = tokens_.contiguous(), mask_len = mask_len_.contiguous();
  const int64_t B = logits.size(0), N = logits.size(1), V = logits.size(2);
  if (mask_len.device().is_cpu()) {
    imtok::sampling::check_mask_len_values_cpu(mask_len, N);
    imtok::sampling::check_maskgit_token_values_cpu(tokens, V, mask_token_id);
  }
  const bool has_u = uncond_.has_value();
  const at::Tensor uncond = has_u ? uncond_->to(logits.scalar_type()).contiguous() : at::Tensor();
  at::Tensor sampled = at::empty({B, N}, tokens.options());
  at::Tensor next = at::empty({B, N}, tokens.options());
  at::Tensor remask = at::empty({B, N}, tokens.options().dtype(at::kBool));
  if (B == 0 || N == 0) return {sampled, next, remask};
  at::Tensor conf = at::empty({B, N}, logits.options().dtype(at::kFloat));
  auto stream = IMTOK_CURRENT_STREAM();
  const int64_t P = B * N;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "sampling_maskgit_step", [&] {
    auto kern = maskgit_sample_kernel<scalar_t>;
    IMTOK_LAUNCH(kern, static_cast<unsigned>(ceil_div(P, kWarps)), kThreads, 0, stream,
                 logits.data_ptr<scalar_t>(), has_u ? uncond.data_ptr<scalar_t>() : static_cast<scalar_t*>(nullptr),
                 tokens.data_ptr<int64_t>(), sampled.data_ptr<int64_t>(), conf.data_ptr<float>(), P, V,
                 mask_token_id, form, static_cast<float>(guidance_scale), static_cast<float>(softmax_temperature),
                 static_cast<float>(randomize_temperature), static_cast<uint64_t>(seed));
  });
  IMTOK_LAUNCH(maskgit_remask_kernel, static_cast<unsigned>(B), kThreads, 0, stream,
               conf.data_ptr<float>(), sampled.data_ptr<int64_t>(), mask_len.data_ptr<int64_t>(),
               next.data_ptr<int64_t>(), remask.data_ptr<bool>(), N, mask_token_id);
  return {sampled, next, remask};
}

inline std::tuple<at::Tensor, at::Tensor> gsd_verify(const at::Tensor& draft_tokens_, const at::Tensor& target_,
                                                            const at::Tensor& draft_, const at::Tensor& embedding_,
                                                            int64_t window, double prob_threshold,
                                                            double dist_threshold, double temperature, int64_t top_k,
                                                            double top_p, int64_t seed) {
  imtok::sampling::check_gsd_inputs(draft_tokens_, target_, draft_, embedding_, window, prob_threshold, dist_threshold,
                             temperature, top_k, top_p);
  check_device_type(target_, kDeviceType, "target_logits");
  IMTOK_DEVICE_GUARD(target_);
  const at::Tensor xt = draft_tokens_.contiguous(), target = target_.contiguous(),
                   draft = draft_.to(target_.scalar_type()).contiguous(), emb = embedding_.contiguous();
  const int64_t B = xt.size(0), L = xt.size(1), Lt = target.size(1), V = target.size(2), D = emb.size(1);
  if (xt.device().is_cpu()) imtok::sampling::check_token_values_cpu(xt, V, "draft_tokens");
  at::Tensor num_acc = at::empty({B}, xt.options());
  at::Tensor next = at::empty({B}, xt.options());
  if (B == 0) return {num_acc, next};
  at::Tensor accept = at::empty({B, L}, xt.options().dtype(at::kBool));
  auto stream = IMTOK_CURRENT_STREAM();
  const float T = static_cast<float>(temperature);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, target.scalar_type(), "sampling_gsd_verify", [&] {
    using logit_t = scalar_t;
    if (L > 0) {
      AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, emb.scalar_type(), "sampling_gsd_verify_emb", [&] {
        auto ka = gsd_accept_kernel<logit_t, scalar_t>;
        IMTOK_LAUNCH(ka, dim3(B, L), kThreads, 0, stream, xt.data_ptr<int64_t>(),
                     target.data_ptr<logit_t>(), draft.data_ptr<logit_t>(), emb.data_ptr<scalar_t>(),
                     accept.data_ptr<bool>(), L, Lt, V, D, static_cast<int>(window),
                     static_cast<float>(prob_threshold), static_cast<float>(dist_threshold), T, top_k, top_p,
                     static_cast<uint64_t>(seed));
      });
    }
    auto kf = gsd_finish_kernel<logit_t>;
    IMTOK_LAUNCH(kf, static_cast<unsigned>(B), kThreads, 0, stream, accept.data_ptr<bool>(),
                 target.data_ptr<logit_t>(), draft.data_ptr<logit_t>(), num_acc.data_ptr<int64_t>(),
                 next.data_ptr<int64_t>(), L, Lt, V, T, top_k, top_p, static_cast<uint64_t>(seed));
  });
  return {num_acc, next};
}

// Registers this family's launchers on `m` (imtok_cuda for CUDA tensors, imtok_cuda_emu for the emulation).
inline void register_device_kernels(torch::Library& m) {
  m.impl("sampling_sample_logits", &sample_logits);
  m.impl("sampling_maskgit_step", &maskgit_step);
  m.impl("sampling_gsd_verify", &gsd_verify);
}

}  // namespace sampling
}  // namespace IMTOK_DEVICE_NS
}  // namespace imtok
