// CPU kernels of Token-Shuffle: the permutation itself, and the permutation folded into a Linear layer
// (rows gathered blockwise into a small buffer, one at::mm per block; never the whole shuffled tensor).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>

#include "common/checks.h"
#include "shuffle/shuffle_index.h"

namespace imtok {
namespace shuffle {
namespace {

using at::Tensor;

void check_grid(int64_t h, int64_t w, int64_t s) {
  TORCH_CHECK_VALUE(h > 0 && w > 0, "h and w must be positive, got h=", h, ", w=", w);
  TORCH_CHECK_VALUE(s > 0, "s must be positive, got ", s);
}

void check_fine(const Tensor& x, const char* name, int64_t h, int64_t w, int64_t s) {
  check_floating(x, name);
  check_dim(x, 3, name);
  TORCH_CHECK_VALUE(x.size(1) == h * s * w * s, name, ".shape[1] must be (h s)(w s) = ", h * s * w * s,
                    " tokens, got shape ", x.sizes());
}

void check_coarse(const Tensor& x, const char* name, int64_t h, int64_t w, int64_t s) {
  check_floating(x, name);
  check_dim(x, 3, name);
  TORCH_CHECK_VALUE(x.size(1) == h * w, name, ".shape[1] must be h w = ", h * w, " tokens, got shape ", x.sizes());
  TORCH_CHECK_VALUE(x.size(2) % (s * s) == 0, name, ".shape[2] must be divisible by s*s = ", s * s,
                    ", got shape ", x.sizes());
}

// copy between fine [B, T, D] and coarse [B, h w, s s D]; to_coarse chooses the direction
void permute_rows(const Tensor& src, Tensor& dst, int64_t B, int64_t h, int64_t w, int64_t s, int64_t D,
                  bool to_coarse) {
  const int64_t Q = h * w, S = s * s, T = Q * S;
  const int64_t es = src.element_size();
  const char* sp = static_cast<const char*>(src.const_data_ptr());
  char* dp = static_cast<char*>(dst.mutable_data_ptr());
  at::parallel_for(0, B * Q, std::max<int64_t>(1, 8192 / std::max<int64_t>(1, S * D)), [&](int64_t q0, int64_t q1) {
    for (int64_t bq = q0; bq < q1; ++bq) {
      const int64_t b = bq / Q, q = bq % Q;
      for (int64_t sub = 0; sub < S; ++sub) {
        const int64_t fine = (b * T + fine_token(q, sub, w, s)) * D;
        const int64_t coarse = bq * S * D + sub * D;
        if (to_coarse) std::memcpy(dp + coarse * es, sp + fine * es, D * es);
        else std::memcpy(dp + fine * es, sp + coarse * es, D * es);
      }
    }
  });
}

Tensor token_shuffle_cpu(const Tensor& x_, int64_t h, int64_t w, int64_t s) {
  check_grid(h, w, s);
  check_fine(x_, "x", h, w, s);
  const Tensor x = x_.contiguous();
  const int64_t B = x.size(0), D = x.size(2);
  Tensor y = at::empty({B, h * w, s * s * D}, x.options());
  if (y.numel()) permute_rows(x, y, B, h, w, s, D, true);
  return y;
}

Tensor token_unshuffle_cpu(const Tensor& y_, int64_t h, int64_t w, int64_t s) {
  check_grid(h, w, s);
  check_coarse(y_, "x", h, w, s);
  const Tensor y = y_.contiguous();
  const int64_t B = y.size(0), D = y.size(2) / (s * s);
  Tensor x = at::empty({B, h * s * w * s, D}, y.options());
  if (x.numel()) permute_rows(y, x, B, h, w, s, D, false);
  return x;
}

void check_linear(const Tensor& x, const Tensor& weight, const c10::optional<Tensor>& bias, int64_t in_features) {
  check_floating(weight, "weight");
  check_dim(weight, 2, "weight");
  check_same_dtype(x, "x", weight, "weight");
  check_same_device(x, "x", weight, "weight");
  TORCH_CHECK_VALUE(weight.size(1) == in_features, "weight.shape[1] must be the input features ", in_features,
                    ", got shape ", weight.sizes());
  if (bias.has_value() && bias->defined()) {
    check_same_dtype(x, "x", *bias, "bias");
    check_dim(*bias, 1, "bias");
    TORCH_CHECK_VALUE(bias->size(0) == weight.size(0), "bias must have ", weight.size(0), " entries, got shape ",
                      bias->sizes());
  }
}

// Row blocks of at most kBufferBytes: large, since every BLAS call wakes its thread pool (costly when loaded).
constexpr int64_t kBufferBytes = int64_t(8) << 20;
inline int64_t row_block(int64_t width, int64_t es) { return std::max<int64_t>(64, kBufferBytes / (width * es + 1)); }

// y = shuffle(x) @ weight^T + bias, gathering a block of coarse rows at a time.
Tensor shuffle_linear_cpu(const Tensor& x_, int64_t h, int64_t w, int64_t s, const Tensor& weight_,
                          const c10::optional<Tensor>& bias_) {
  check_grid(h, w, s);
  check_fine(x_, "x", h, w, s);
  const int64_t B = x_.size(0), D = x_.size(2), Q = h * w, K = s * s * D;
  check_linear(x_, weight_, bias_, K);
  const Tensor x = x_.contiguous();
  const Tensor wt = weight_.t();
  const bool has_bias = bias_.has_value() && bias_->defined();
  const int64_t N = weight_.size(0);
  Tensor y = at::empty({B, Q, N}, x.options());
  const int64_t kRowBlock = row_block(K, x_.element_size());
  const int64_t rows = B * Q, nblk = (rows + kRowBlock - 1) / kRowBlock;
  Tensor y2 = y.view({rows, N});
  Tensor buf = at::empty({std::min(kRowBlock, rows), K}, x.options());
  const int64_t es = x.element_size();
  const char* sp = static_cast<const char*>(x.const_data_ptr());
  char* bp = static_cast<char*>(buf.mutable_data_ptr());
  for (int64_t k = 0; k < nblk; ++k) {  // blocks in turn: at::mm threads itself (no GEMM inside parallel_for)
    const int64_t r0 = k * kRowBlock, n = std::min(kRowBlock, rows - r0);
    // the gather is a few MB of memcpy: serial (alternating OpenMP regions with BLAS threads costs more)
    for (int64_t rr = 0; rr < n; ++rr) {
      const int64_t bq = r0 + rr, b = bq / Q, q = bq % Q;
      for (int64_t sub = 0; sub < s * s; ++sub)
        std::memcpy(bp + (rr * K + sub * D) * es, sp + ((b * Q * s * s + fine_token(q, sub, w, s)) * D) * es,
                    D * es);
    }
    Tensor out = y2.narrow(0, r0, n);
    const Tensor a = buf.narrow(0, 0, n);
    if (has_bias) at::addmm_out(out, *bias_, a, wt);
    else at::mm_out(out, a, wt);
  }
  return y;
}

// y = unshuffle(x @ weight^T + bias): each block's product rows are scattered to their fine tokens.
Tensor linear_unshuffle_cpu(const Tensor& x_, int64_t h, int64_t w, int64_t s, const Tensor& weight_,
                            const c10::optional<Tensor>& bias_) {
  check_grid(h, w, s);
  check_floating(x_, "x");
  check_dim(x_, 3, "x");
  TORCH_CHECK_VALUE(x_.size(1) == h * w, "x.shape[1] must be h w = ", h * w, " tokens, got shape ", x_.sizes());
  check_linear(x_, weight_, bias_, x_.size(2));
  const int64_t N = weight_.size(0);
  TORCH_CHECK_VALUE(N % (s * s) == 0, "weight.shape[0] must be divisible by s*s = ", s * s, ", got shape ",
                    weight_.sizes());
  const int64_t B = x_.size(0), Q = h * w, D = N / (s * s), Kin = x_.size(2);
  const Tensor x = x_.contiguous();
  const Tensor wt = weight_.t();
  const bool has_bias = bias_.has_value() && bias_->defined();
  Tensor y = at::empty({B, Q * s * s, D}, x.options());
  const int64_t kRowBlock = row_block(N, x_.element_size());
  const int64_t rows = B * Q, nblk = (rows + kRowBlock - 1) / kRowBlock;
  const Tensor x2 = x.view({rows, Kin});
  Tensor buf = at::empty({std::min(kRowBlock, rows), N}, x.options());
  const int64_t es = x.element_size();
  const char* bp = static_cast<const char*>(buf.const_data_ptr());
  char* yp = static_cast<char*>(y.mutable_data_ptr());
  for (int64_t k = 0; k < nblk; ++k) {
    const int64_t r0 = k * kRowBlock, n = std::min(kRowBlock, rows - r0);
    Tensor out = buf.narrow(0, 0, n);
    if (has_bias) at::addmm_out(out, *bias_, x2.narrow(0, r0, n), wt);
    else at::mm_out(out, x2.narrow(0, r0, n), wt);
    for (int64_t rr = 0; rr < n; ++rr) {
      const int64_t bq = r0 + rr, b = bq / Q, q = bq % Q;
      for (int64_t sub = 0; sub < s * s; ++sub)
        std::memcpy(yp + ((b * Q * s * s + fine_token(q, sub, w, s)) * D) * es, bp + (rr * N + sub * D) * es,
                    D * es);
    }
  }
  return y;
}

}  // namespace
}  // namespace shuffle
}  // namespace imtok

TORCH_LIBRARY_IMPL(imtok_cuda, CPU, m) {
  m.impl("shuffle_token_shuffle", &imtok::shuffle::token_shuffle_cpu);
  m.impl("shuffle_token_unshuffle", &imtok::shuffle::token_unshuffle_cpu);
  m.impl("shuffle_linear", &imtok::shuffle::shuffle_linear_cpu);
  m.impl("shuffle_linear_unshuffle", &imtok::shuffle::linear_unshuffle_cpu);
}
