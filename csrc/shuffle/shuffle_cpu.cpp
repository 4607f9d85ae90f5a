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
#include "shuffle/shuffle_checks.h"
#include "shuffle/shuffle_index.h"

namespace imtok {
namespace shuffle {
namespace {

using at::Tensor;

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
  const ShuffleDims d = check_shuffle_args(x_, h, w, s, kTokenShuffle);
  const Tensor x = x_.contiguous();
  const int64_t B = d.B, D = d.D;
  Tensor y = at::empty({B, d.Q, d.S * D}, x.options());
  if (y.numel()) permute_rows(x, y, B, h, w, s, D, true);
  return y;
}

Tensor token_unshuffle_cpu(const Tensor& y_, int64_t h, int64_t w, int64_t s) {
  const ShuffleDims d = check_shuffle_args(y_, h, w, s, kTokenUnshuffle);
  const Tensor y = y_.contiguous();
  const int64_t B = d.B, D = d.D;
  Tensor x = at::empty({B, d.T, D}, y.options());
  if (x.numel()) permute_rows(y, x, B, h, w, s, D, false);
  return x;
}

// Row blocks of at most kBufferBytes: large, since every BLAS call wakes its thread pool (costly when loaded).
constexpr int64_t kBufferBytes = int64_t(8) << 20;
inline int64_t row_block(int64_t width, int64_t es) { return std::max<int64_t>(64, kBufferBytes / (width * es + 1)); }

// y = shuffle(x) @ weight^T + bias, gathering a block of coarse rows at a time.
Tensor shuffle_linear_cpu(const Tensor& x_, int64_t h, int64_t w, int64_t s, const Tensor& weight_,
                          const c10::optional<Tensor>& bias_) {
  const ShuffleDims d = check_shuffle_args(x_, h, w, s, kShuffleLinear, &weight_, bias_);
  const int64_t B = d.B, D = d.D, Q = d.Q, K = d.K;
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
  const ShuffleDims d = check_shuffle_args(x_, h, w, s, kLinearUnshuffle, &weight_, bias_);
  const int64_t N = d.N, B = d.B, Q = d.Q, D = d.D, Kin = d.K;
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
