// CPU kernels of Token-Shuffle: the permutation itself, and the permutation folded into a Linear layer (fp32 /
// fp64: rows gathered blockwise into a per-thread buffer, one BLAS call per block; never the whole shuffled
// tensor).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif
#include <vector>

#include "common/checks.h"
#include "common/cpu_blas.h"
#include "shuffle/shuffle_checks.h"
#include "shuffle/shuffle_index.h"

namespace imtok {
namespace shuffle {
namespace {

using at::Tensor;

// Coarse row bq = b h w + q (q = i w + j) holds s runs of s D features, each contiguous in the fine layout too:
// run s1 is fine tokens (i s + s1)(w s) + j s + [0, s) (fine_token with sub = s1 s + s2). Returns the fine
// element offset of run 0; run s1 starts s1 w s D further.
inline int64_t fine_run_offset(int64_t bq, int64_t Q, int64_t T, int64_t w, int64_t s, int64_t D) {
  const int64_t b = bq / Q, q = bq % Q;
  return (b * T + fine_token(q, 0, w, s)) * D;
}

// One run (a few KB) copied inline: a libc memcpy call per run costs about as much as the copy itself.
inline void copy_run(char* dst, const char* src, int64_t bytes) {
  int64_t k = 0;
#if defined(__SSE2__)
  for (; k + 16 <= bytes; k += 16)
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + k), _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + k)));
#endif
  if (k < bytes) std::memcpy(dst + k, src + k, bytes - k);
}

// copy between fine [B, T, D] and coarse [B, h w, s s D]; to_coarse chooses the direction
void permute_rows(const Tensor& src, Tensor& dst, int64_t B, int64_t h, int64_t w, int64_t s, int64_t D,
                  bool to_coarse) {
  const int64_t Q = h * w, S = s * s, T = Q * S, run = s * D * src.element_size();
  const int64_t es = src.element_size();
  const char* sp = static_cast<const char*>(src.const_data_ptr());
  char* dp = static_cast<char*>(dst.mutable_data_ptr());
  at::parallel_for(0, B * Q, std::max<int64_t>(1, 8192 / std::max<int64_t>(1, S * D)), [&](int64_t q0, int64_t q1) {
    for (int64_t bq = q0; bq < q1; ++bq) {
      const int64_t fine = fine_run_offset(bq, Q, T, w, s, D) * es, coarse = bq * S * D * es;
      for (int64_t s1 = 0; s1 < s; ++s1) {
        const int64_t f = fine + s1 * w * run, c = coarse + s1 * run;
        if (to_coarse) copy_run(dp + c, sp + f, run);
        else copy_run(dp + f, sp + c, run);
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

// fp32 / fp64: at::parallel_for over blocks of coarse rows; each task gathers (or scatters) its block through a
// buffer of about kTaskBytes that stays in cache, with a single-threaded BLAS call per block. One parallel
// region for the whole op: every multi-threaded BLAS call wakes and joins its thread pool, which costs more
// than the copies on a busy machine.
constexpr int64_t kTaskBytes = int64_t(512) << 10;
inline int64_t task_rows(int64_t width, int64_t es) { return std::max<int64_t>(16, kTaskBytes / (width * es + 1)); }

// Row-major out[n][N] = a[n][K] w[N][K]^T + (bias, broadcast over rows, or 0)
template <typename T>
void rows_times_weight_t(const T* a, int64_t n, int64_t K, const T* w, int64_t N, const T* bias, T* out) {
  if (bias)
    for (int64_t r = 0; r < n; ++r) std::copy(bias, bias + N, out + r * N);
  cpu_blas::gemm<T>(cpu_blas::TT, cpu_blas::NT, N, n, K, T(1), w, K, a, K, bias ? T(1) : T(0), out, N);
}

// y = shuffle(x) @ weight^T + bias
template <typename T>
void shuffle_linear_blas(const Tensor& x, const ShuffleDims& d, int64_t w, int64_t s, const Tensor& weight,
                         const T* bias, Tensor& y) {
  const int64_t rows = d.B * d.Q, K = d.K, N = d.N, D = d.D;
  const int64_t blk = task_rows(K, sizeof(T));
  const T* xp = x.const_data_ptr<T>();
  const T* wp = weight.const_data_ptr<T>();
  T* yp = y.mutable_data_ptr<T>();
  at::parallel_for(0, (rows + blk - 1) / blk, 1, [&](int64_t k0, int64_t k1) {
    cpu_blas::SingleThreadBlas single_thread_blas;
    std::vector<T> buf(std::min(blk, rows) * K);
    for (int64_t k = k0; k < k1; ++k) {
      const int64_t r0 = k * blk, n = std::min(blk, rows - r0);
      for (int64_t rr = 0; rr < n; ++rr) {
        const T* fine = xp + fine_run_offset(r0 + rr, d.Q, d.T, w, s, D);
        for (int64_t s1 = 0; s1 < s; ++s1)
          copy_run(reinterpret_cast<char*>(buf.data() + rr * K + s1 * s * D),
                   reinterpret_cast<const char*>(fine + s1 * w * s * D), s * D * sizeof(T));
      }
      rows_times_weight_t<T>(buf.data(), n, K, wp, N, bias, yp + r0 * N);
    }
  });
}

// y = unshuffle(x @ weight^T + bias)
template <typename T>
void linear_unshuffle_blas(const Tensor& x, const ShuffleDims& d, int64_t w, int64_t s, const Tensor& weight,
                           const T* bias, Tensor& y) {
  const int64_t rows = d.B * d.Q, K = d.K, N = d.N, D = d.D;
  const int64_t blk = task_rows(N, sizeof(T));
  const T* xp = x.const_data_ptr<T>();
  const T* wp = weight.const_data_ptr<T>();
  T* yp = y.mutable_data_ptr<T>();
  at::parallel_for(0, (rows + blk - 1) / blk, 1, [&](int64_t k0, int64_t k1) {
    cpu_blas::SingleThreadBlas single_thread_blas;
    std::vector<T> buf(std::min(blk, rows) * N);
    for (int64_t k = k0; k < k1; ++k) {
      const int64_t r0 = k * blk, n = std::min(blk, rows - r0);
      rows_times_weight_t<T>(xp + r0 * K, n, K, wp, N, bias, buf.data());
      for (int64_t rr = 0; rr < n; ++rr) {
        T* fine = yp + fine_run_offset(r0 + rr, d.Q, d.T, w, s, D);
        for (int64_t s1 = 0; s1 < s; ++s1)
          copy_run(reinterpret_cast<char*>(fine + s1 * w * s * D),
                   reinterpret_cast<const char*>(buf.data() + rr * N + s1 * s * D), s * D * sizeof(T));
      }
    }
  });
}

// Half / bfloat16: the permutation as one copy (permute_rows), then torch's own GEMM on the result.
Tensor shuffle_linear_cpu(const Tensor& x_, int64_t h, int64_t w, int64_t s, const Tensor& weight_,
                          const c10::optional<Tensor>& bias_) {
  const ShuffleDims d = check_shuffle_args(x_, h, w, s, kShuffleLinear, &weight_, bias_);
  const Tensor x = x_.contiguous();
  const bool has_bias = bias_.has_value() && bias_->defined();
  Tensor y = at::empty({d.B, d.Q, d.N}, x.options());
  if (y.numel() == 0) return y;
  if (x.scalar_type() == c10::kFloat || x.scalar_type() == c10::kDouble) {
    const Tensor wt = weight_.contiguous();
    const Tensor bias = has_bias ? bias_->contiguous() : Tensor();
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "shuffle_linear_cpu", [&] {
      shuffle_linear_blas<scalar_t>(x, d, w, s, wt, has_bias ? bias.const_data_ptr<scalar_t>() : nullptr, y);
    });
    return y;
  }
  Tensor shuffled = at::empty({d.B * d.Q, d.K}, x.options());
  if (shuffled.numel()) permute_rows(x, shuffled, d.B, h, w, s, d.D, true);
  Tensor y2 = y.view({d.B * d.Q, d.N});
  if (has_bias) at::addmm_out(y2, *bias_, shuffled, weight_.t());
  else at::mm_out(y2, shuffled, weight_.t());
  return y;
}

Tensor linear_unshuffle_cpu(const Tensor& x_, int64_t h, int64_t w, int64_t s, const Tensor& weight_,
                            const c10::optional<Tensor>& bias_) {
  const ShuffleDims d = check_shuffle_args(x_, h, w, s, kLinearUnshuffle, &weight_, bias_);
  const Tensor x = x_.contiguous();
  const bool has_bias = bias_.has_value() && bias_->defined();
  Tensor y = at::empty({d.B, d.T, d.D}, x.options());
  if (y.numel() == 0) return y;
  if (x.scalar_type() == c10::kFloat || x.scalar_type() == c10::kDouble) {
    const Tensor wt = weight_.contiguous();
    const Tensor bias = has_bias ? bias_->contiguous() : Tensor();
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "linear_unshuffle_cpu", [&] {
      linear_unshuffle_blas<scalar_t>(x, d, w, s, wt, has_bias ? bias.const_data_ptr<scalar_t>() : nullptr, y);
    });
    return y;
  }
  const Tensor x2 = x.view({d.B * d.Q, d.K});
  const Tensor coarse = has_bias ? at::addmm(*bias_, x2, weight_.t()) : at::mm(x2, weight_.t());
  permute_rows(coarse, y, d.B, h, w, s, d.D, false);
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
