// Input checks of the sampling ops, shared by the CPU kernels and the device launchers (messages name the argument).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <string>

#include "common/checks.h"
#include "common/limits.h"

namespace imtok {
namespace sampling {

inline void check_logits(const at::Tensor& t, int64_t dim, const char* name) {
  TORCH_CHECK_TYPE(t.scalar_type() == c10::kFloat || t.scalar_type() == c10::kHalf ||
                       t.scalar_type() == c10::kBFloat16,
                   name, " must be float16, bfloat16 or float32, got ", t.scalar_type());
  check_dim(t, dim, name);
  TORCH_CHECK_VALUE(t.size(dim - 1) >= 1, name,
                    " must have a vocabulary of at least one token (shape[-1] >= 1), got shape ", t.sizes());
}

inline void check_uncond(const c10::optional<at::Tensor>& u, const at::Tensor& logits) {
  if (!u.has_value()) return;
  const at::Tensor& t = *u;
  TORCH_CHECK_TYPE(t.scalar_type() == c10::kFloat || t.scalar_type() == c10::kHalf ||
                       t.scalar_type() == c10::kBFloat16,
                   "uncond_logits must be float16, bfloat16 or float32, got ", t.scalar_type());
  TORCH_CHECK_VALUE(t.sizes() == logits.sizes(), "uncond_logits must have the shape of logits ", logits.sizes(),
                    ", got ", t.sizes());
  check_same_device(logits, "logits", t, "uncond_logits");
}

inline void check_finite(double v, const char* name) {
  TORCH_CHECK_VALUE(std::isfinite(v), name, " must be finite, got ", v);
}

inline void check_filters(double temperature, int64_t top_k, double top_p, int64_t V) {
  check_finite(temperature, "temperature");
  TORCH_CHECK_VALUE(temperature >= 0, "temperature must be >= 0, got ", temperature);
  TORCH_CHECK_VALUE(top_k >= 0 && top_k <= V, "top_k must be in [0, V] = [0, ", V, "], got ", top_k);
  check_finite(top_p, "top_p");
  TORCH_CHECK_VALUE(top_p > 0 && top_p <= 1, "top_p must be in (0, 1], got ", top_p);
}

inline void check_sample_inputs(const at::Tensor& logits, const c10::optional<at::Tensor>& uncond, double cfg_scale,
                                double temperature, int64_t top_k, double top_p) {
  check_logits(logits, 2, "logits");
  check_uncond(uncond, logits);
  check_finite(cfg_scale, "cfg_scale");
  check_filters(temperature, top_k, top_p, logits.size(1));
}

// Returns 0 for "muse", 1 for "mdt".
inline int check_maskgit_inputs(const at::Tensor& logits, const at::Tensor& tokens, const at::Tensor& mask_len,
                                const c10::optional<at::Tensor>& uncond, double guidance_scale,
                                c10::string_view cfg_form, double softmax_temperature, double randomize_temperature) {
  check_logits(logits, 3, "logits");
  const int64_t B = logits.size(0), N = logits.size(1);
  check_dtype(tokens, c10::kLong, "tokens");
  check_dim(tokens, 2, "tokens");
  check_size(tokens, 0, B, "tokens");
  check_size(tokens, 1, N, "tokens");
  check_same_device(logits, "logits", tokens, "tokens");
  check_dtype(mask_len, c10::kLong, "mask_len");
  check_dim(mask_len, 1, "mask_len");
  check_size(mask_len, 0, B, "mask_len");
  check_same_device(logits, "logits", mask_len, "mask_len");
  check_uncond(uncond, logits);
  check_finite(guidance_scale, "guidance_scale");
  int form = -1;
  if (cfg_form == "muse") form = 0;
  if (cfg_form == "mdt") form = 1;
  TORCH_CHECK_VALUE(form >= 0, "cfg_form must be 'muse' or 'mdt', got '", std::string(cfg_form), "'");
  check_finite(softmax_temperature, "softmax_temperature");
  TORCH_CHECK_VALUE(softmax_temperature > 0, "softmax_temperature must be > 0, got ", softmax_temperature);
  check_finite(randomize_temperature, "randomize_temperature");
  TORCH_CHECK_VALUE(randomize_temperature >= 0, "randomize_temperature must be >= 0, got ", randomize_temperature);
  return form;
}

// Value checks (CPU tensors only: reading device memory would sync).
inline void check_mask_len_values_cpu(const at::Tensor& mask_len, int64_t N) {
  const at::Tensor c = mask_len.contiguous();
  const int64_t* p = c.data_ptr<int64_t>();
  for (int64_t i = 0, n = c.numel(); i < n; ++i)
    TORCH_CHECK_VALUE(p[i] >= 0 && p[i] <= N, "mask_len values must be in [0, N] = [0, ", N, "], got ", p[i]);
}

inline void check_maskgit_token_values_cpu(const at::Tensor& t, int64_t V, int64_t mask_token_id) {
  const at::Tensor c = t.contiguous();
  const int64_t* p = c.data_ptr<int64_t>();
  for (int64_t i = 0, n = c.numel(); i < n; ++i)
    TORCH_CHECK_VALUE(p[i] == mask_token_id || (p[i] >= 0 && p[i] < V), "tokens values must be mask_token_id (",
                      mask_token_id, ") or in [0, V) = [0, ", V, "), got ", p[i]);
}

inline void check_gsd_inputs(const at::Tensor& draft_tokens, const at::Tensor& target, const at::Tensor& draft,
                             const at::Tensor& embedding, int64_t window, double prob_threshold,
                             double dist_threshold, double temperature, int64_t top_k, double top_p) {
  check_logits(target, 3, "target_logits");
  check_logits(draft, 3, "draft_logits");
  check_dtype(draft_tokens, c10::kLong, "draft_tokens");
  check_dim(draft_tokens, 2, "draft_tokens");
  const int64_t B = draft_tokens.size(0), L = draft_tokens.size(1), V = target.size(2);
  TORCH_CHECK_VALUE(draft.size(0) == B && draft.size(1) == L && draft.size(2) == V,
                    "draft_logits must have shape [B, L, V] = [", B, ", ", L, ", ", V, "], got ", draft.sizes());
  TORCH_CHECK_VALUE(target.size(0) == B && (target.size(1) == L || target.size(1) == L + 1),
                    "target_logits must have shape [B, L, V] or [B, L + 1, V] with B = ", B, ", L = ", L, ", got ",
                    target.sizes());
  check_floating(embedding, "embedding");
  check_dim(embedding, 2, "embedding");
  check_size(embedding, 0, V, "embedding");
  check_same_device(target, "target_logits", draft, "draft_logits");
  check_same_device(target, "target_logits", draft_tokens, "draft_tokens");
  check_same_device(target, "target_logits", embedding, "embedding");
  TORCH_CHECK_VALUE(window >= 0 && window <= kMaxDraftWindow, "window must be in [0, ", kMaxDraftWindow, "], got ", window);
  check_finite(prob_threshold, "prob_threshold");
  TORCH_CHECK_VALUE(prob_threshold >= 0, "prob_threshold must be >= 0, got ", prob_threshold);
  check_finite(dist_threshold, "dist_threshold");
  TORCH_CHECK_VALUE(dist_threshold >= 0, "dist_threshold must be >= 0, got ", dist_threshold);
  check_filters(temperature, top_k, top_p, V);
}

inline void check_token_values_cpu(const at::Tensor& t, int64_t V, const char* name) {
  const at::Tensor c = t.contiguous();
  const int64_t* p = c.data_ptr<int64_t>();
  for (int64_t i = 0, n = c.numel(); i < n; ++i)
    TORCH_CHECK_VALUE(p[i] >= 0 && p[i] < V, name, " values must be in [0, V) = [0, ", V, "), got ", p[i]);
}

}  // namespace sampling
}  // namespace imtok
