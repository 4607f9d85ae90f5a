// Tensor-level launchers of the sampling family, shared by the real CUDA build (sampling_cuda.cu) and the emulated
// one (sampling_emu.cpp): input checks, output allocation, dtype dispatch, grid sizes, IMTOK_LAUNCH.
#pragma once

#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>

#include <tuple>

#include "common/checks.h"
#include "sampling/sampling_checks.h"
#include "sampling/sampling_kernels.cuh"

namespace imtok {
namespace IMTOK_DEVICE_NS {

#if defined(__CUDACC__)
constexpr c10::DeviceType kSamplingDevice = c10::DeviceType::CUDA;
#else
constexpr c10::DeviceType kSamplingDevice = c10::DeviceType::CPU;
#endif

inline at::Tensor sample_logits_device(const at::Tensor& logits_, const c10::optional<at::Tensor>& uncond_,
                                       double cfg_scale, double temperature, int64_t top_k, double top_p,
                                       int64_t seed) {
  sampling::check_sample_inputs(logits_, uncond_, cfg_scale, temperature, top_k, top_p);
  check_device_type(logits_, kSamplingDevice, "logits");
  IMTOK_DEVICE_GUARD(logits_);
  const at::Tensor logits = logits_.contiguous();
  const bool has_u = uncond_.has_value();
  const at::Tensor uncond = has_u ? uncond_->to(logits.scalar_type()).contiguous() : at::Tensor();
  const int64_t B = logits.size(0), V = logits.size(1);
  at::Tensor out = at::empty({B}, logits.options().dtype(at::kLong));
  if (B == 0) return out;
  auto stream = IMTOK_CURRENT_STREAM();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "sampling_sample_logits", [&] {
    auto kern = sampling_k::sample_logits_kernel<scalar_t>;
    IMTOK_LAUNCH(kern, static_cast<unsigned>(B), sampling_k::kThreads, 0, stream, logits.data_ptr<scalar_t>(),
                 has_u ? uncond.data_ptr<scalar_t>() : static_cast<scalar_t*>(nullptr), out.data_ptr<int64_t>(), V,
                 static_cast<float>(cfg_scale), static_cast<float>(temperature), top_k, static_cast<float>(top_p),
                 static_cast<uint64_t>(seed));
  });
  return out;
}

inline std::tuple<at::Tensor, at::Tensor, at::Tensor> maskgit_step_device(
    const at::Tensor& logits_, const at::Tensor& tokens_, int64_t mask_token_id, const at::Tensor& mask_len_,
    const c10::optional<at::Tensor>& uncond_, double guidance_scale, c10::string_view cfg_form,
    double softmax_temperature, double randomize_temperature, int64_t seed) {
  const int form = sampling::check_maskgit_inputs(logits_, tokens_, mask_len_, uncond_, guidance_scale, cfg_form,
                                                  softmax_temperature, randomize_temperature);
  check_device_type(logits_, kSamplingDevice, "logits");
  IMTOK_DEVICE_GUARD(logits_);
  const at::Tensor logits = logits_.contiguous(), tokens = tokens_.contiguous(), mask_len = mask_len_.contiguous();
  const int64_t B = logits.size(0), N = logits.size(1), V = logits.size(2);
  if (mask_len.device().is_cpu()) {
    sampling::check_mask_len_values_cpu(mask_len, N);
    sampling::check_maskgit_token_values_cpu(tokens, V, mask_token_id);
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
    auto kern = sampling_k::maskgit_sample_kernel<scalar_t>;
    IMTOK_LAUNCH(kern, static_cast<unsigned>(ceil_div(P, sampling_k::kWarps)), sampling_k::kThreads, 0, stream,
                 logits.data_ptr<scalar_t>(), has_u ? uncond.data_ptr<scalar_t>() : static_cast<scalar_t*>(nullptr),
                 tokens.data_ptr<int64_t>(), sampled.data_ptr<int64_t>(), conf.data_ptr<float>(), P, V,
                 mask_token_id, form, static_cast<float>(guidance_scale), static_cast<float>(softmax_temperature),
                 static_cast<float>(randomize_temperature), static_cast<uint64_t>(seed));
  });
  IMTOK_LAUNCH(sampling_k::maskgit_remask_kernel, static_cast<unsigned>(B), sampling_k::kThreads, 0, stream,
               conf.data_ptr<float>(), sampled.data_ptr<int64_t>(), mask_len.data_ptr<int64_t>(),
               next.data_ptr<int64_t>(), remask.data_ptr<bool>(), N, mask_token_id);
  return {sampled, next, remask};
}

}  // namespace IMTOK_DEVICE_NS
}  // namespace imtok
