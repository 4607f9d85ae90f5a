// Row kernels of the CPU attention: the only per-score work besides the GEMMs (which go to the BLAS through
// at::native::cpublas::gemm on small tiles). float rows use AVX-512 intrinsics when the CPU has them (runtime
// check), plain loops otherwise; double rows (fp64 inputs, gradcheck) use plain loops and std::exp.
//
//   add_mask_max(s, add, nvalid, n)           s[j] += add[j] (j < nvalid), s[j] = -inf (j >= nvalid); max_j s[j]
//   exp_sub_sum(s, n, m)                      s[j] = exp(s[j] - m); sum_j s[j]            (m finite)
//   exp_accum(s, add, nvalid, m, col)         col[j] += exp(s[j] + add[j] - m) for j < nvalid  (m finite)
//   softmax_grad(s, p, dp, add, nvalid, n, lse, D)
//        p[j] = exp(s[j] + add[j] - lse) (j < nvalid, else 0); s[j] = p[j] * (dp[j] - D); p may be null
// add may be null (no bias, no mask). exp(-inf) = 0 exactly on every path.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define IMTOK_ATTN_X86 1
#endif

namespace imtok {
namespace attention {
namespace rowk {

template <typename T>
inline T neg_inf() { return -std::numeric_limits<T>::infinity(); }

// ---- portable versions (any T) ------------------------------------------------------------------
template <typename T>
inline T add_mask_max_ref(T* s, const T* add, int64_t nvalid, int64_t n) {
  T m = neg_inf<T>();
  for (int64_t j = 0; j < nvalid; ++j) {
    T x = add ? s[j] + add[j] : s[j];
    s[j] = x;
    m = x > m ? x : m;
  }
  for (int64_t j = nvalid; j < n; ++j) s[j] = neg_inf<T>();
  return m;
}
template <typename T>
inline T exp_sub_sum_ref(T* s, int64_t n, T m) {
  T sum = 0;
  for (int64_t j = 0; j < n; ++j) {
    T e = std::exp(s[j] - m);
    s[j] = e;
    sum += e;
  }
  return sum;
}
template <typename T>
inline void exp_accum_ref(const T* s, const T* add, int64_t nvalid, T m, T* col) {
  for (int64_t j = 0; j < nvalid; ++j) col[j] += std::exp((add ? s[j] + add[j] : s[j]) - m);
}
template <typename T>
inline void softmax_grad_ref(T* s, T* p, const T* dp, const T* add, int64_t nvalid, int64_t n, T lse, T D) {
  if (!(lse > neg_inf<T>())) nvalid = 0;
  for (int64_t j = 0; j < nvalid; ++j) {
    T e = std::exp((add ? s[j] + add[j] : s[j]) - lse);
    if (p) p[j] = e;
    s[j] = e * (dp[j] - D);
  }
  for (int64_t j = nvalid; j < n; ++j) {
    if (p) p[j] = 0;
    s[j] = 0;
  }
}

#ifdef IMTOK_ATTN_X86
// GCC's _mm512_cvtps_epi32 starts from _mm512_undefined_epi32(): a false -Wmaybe-uninitialized at -O3.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
inline bool has_avx512() {
  static const bool ok = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq");
  return ok;
}

// exp(x) for 16 floats: Cephes polynomial after range reduction; x < -87.3 gives exactly 0 (incl. -inf).
__attribute__((target("avx512f,avx512dq"))) inline __m512 exp16(__m512 x) {
  const __m512 lo = _mm512_set1_ps(-87.3f);
  const __mmask16 under = _mm512_cmp_ps_mask(x, lo, _CMP_LT_OQ);
  x = _mm512_max_ps(x, lo);
  x = _mm512_min_ps(x, _mm512_set1_ps(88.3f));
  __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                  _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 y = _mm512_set1_ps(1.9875691500E-4f);
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(1.3981999507E-3f));
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(8.3334519073E-3f));
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(4.1665795894E-2f));
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(1.6666665459E-1f));
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(5.0000001201E-1f));
  y = _mm512_fmadd_ps(y, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
  // 2^n in two halves so that n = 128 (x near 88.3) does not overflow the exponent field
  __m512i ni = _mm512_cvtps_epi32(n);
  __m512i h1 = _mm512_srai_epi32(ni, 1);
  __m512i h2 = _mm512_sub_epi32(ni, h1);
  __m512 p1 = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_add_epi32(h1, _mm512_set1_epi32(127)), 23));
  __m512 p2 = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_add_epi32(h2, _mm512_set1_epi32(127)), 23));
  y = _mm512_mul_ps(_mm512_mul_ps(y, p1), p2);
  return _mm512_mask_mov_ps(y, under, _mm512_setzero_ps());
}

__attribute__((target("avx512f,avx512dq"))) inline float add_mask_max_avx512(float* s, const float* add,
                                                                               int64_t nvalid, int64_t n) {
  __m512 m = _mm512_set1_ps(neg_inf<float>());
  int64_t j = 0;
  for (; j + 16 <= nvalid; j += 16) {
    __m512 x = _mm512_loadu_ps(s + j);
    if (add) {
      x = _mm512_add_ps(x, _mm512_loadu_ps(add + j));
      _mm512_storeu_ps(s + j, x);
    }
    m = _mm512_max_ps(m, x);
  }
  if (j < nvalid) {
    const __mmask16 k = static_cast<__mmask16>((1u << (nvalid - j)) - 1u);
    __m512 x = _mm512_mask_loadu_ps(_mm512_set1_ps(neg_inf<float>()), k, s + j);
    if (add) {
      x = _mm512_add_ps(x, _mm512_mask_loadu_ps(_mm512_setzero_ps(), k, add + j));
      _mm512_mask_storeu_ps(s + j, k, x);
    }
    m = _mm512_max_ps(m, x);
  }
  for (int64_t t = nvalid; t < n; ++t) s[t] = neg_inf<float>();
  return _mm512_reduce_max_ps(m);
}

__attribute__((target("avx512f,avx512dq"))) inline float exp_sub_sum_avx512(float* s, int64_t n, float mval) {
  const __m512 m = _mm512_set1_ps(mval);
  __m512 acc = _mm512_setzero_ps();
  int64_t j = 0;
  for (; j + 16 <= n; j += 16) {
    __m512 e = exp16(_mm512_sub_ps(_mm512_loadu_ps(s + j), m));
    _mm512_storeu_ps(s + j, e);
    acc = _mm512_add_ps(acc, e);
  }
  if (j < n) {
    const __mmask16 k = static_cast<__mmask16>((1u << (n - j)) - 1u);
    __m512 e = exp16(_mm512_sub_ps(_mm512_mask_loadu_ps(_mm512_set1_ps(neg_inf<float>()), k, s + j), m));
    _mm512_mask_storeu_ps(s + j, k, e);
    acc = _mm512_add_ps(acc, e);
  }
  return _mm512_reduce_add_ps(acc);
}

__attribute__((target("avx512f,avx512dq"))) inline void exp_accum_avx512(const float* s, const float* add,
                                                                          int64_t nvalid, float mval, float* col) {
  const __m512 m = _mm512_set1_ps(mval);
  int64_t j = 0;
  for (; j + 16 <= nvalid; j += 16) {
    __m512 x = _mm512_loadu_ps(s + j);
    if (add) x = _mm512_add_ps(x, _mm512_loadu_ps(add + j));
    _mm512_storeu_ps(col + j, _mm512_add_ps(_mm512_loadu_ps(col + j), exp16(_mm512_sub_ps(x, m))));
  }
  if (j < nvalid) {
    const __mmask16 k = static_cast<__mmask16>((1u << (nvalid - j)) - 1u);
    __m512 x = _mm512_mask_loadu_ps(_mm512_setzero_ps(), k, s + j);
    if (add) x = _mm512_add_ps(x, _mm512_mask_loadu_ps(_mm512_setzero_ps(), k, add + j));
    __m512 c = _mm512_mask_loadu_ps(_mm512_setzero_ps(), k, col + j);
    _mm512_mask_storeu_ps(col + j, k, _mm512_add_ps(c, exp16(_mm512_sub_ps(x, m))));
  }
}

__attribute__((target("avx512f,avx512dq"))) inline void softmax_grad_avx512(float* s, float* p, const float* dp,
                                                                             const float* add, int64_t nvalid,
                                                                             int64_t n, float lse, float D) {
  if (!(lse > neg_inf<float>())) nvalid = 0;
  const __m512 l = _mm512_set1_ps(lse), dd = _mm512_set1_ps(D);
  int64_t j = 0;
  for (; j + 16 <= nvalid; j += 16) {
    __m512 x = _mm512_loadu_ps(s + j);
    if (add) x = _mm512_add_ps(x, _mm512_loadu_ps(add + j));
    __m512 e = exp16(_mm512_sub_ps(x, l));
    if (p) _mm512_storeu_ps(p + j, e);
    _mm512_storeu_ps(s + j, _mm512_mul_ps(e, _mm512_sub_ps(_mm512_loadu_ps(dp + j), dd)));
  }
  if (j < nvalid) {
    const __mmask16 k = static_cast<__mmask16>((1u << (nvalid - j)) - 1u);
    __m512 x = _mm512_mask_loadu_ps(_mm512_setzero_ps(), k, s + j);
    if (add) x = _mm512_add_ps(x, _mm512_mask_loadu_ps(_mm512_setzero_ps(), k, add + j));
    __m512 e = exp16(_mm512_sub_ps(x, l));
    if (p) _mm512_mask_storeu_ps(p + j, k, e);
    __m512 g = _mm512_mask_loadu_ps(_mm512_setzero_ps(), k, dp + j);
    _mm512_mask_storeu_ps(s + j, k, _mm512_mul_ps(e, _mm512_sub_ps(g, dd)));
    j = nvalid;
  }
  for (int64_t t = nvalid; t < n; ++t) {
    if (p) p[t] = 0.f;
    s[t] = 0.f;
  }
}
#pragma GCC diagnostic pop
#endif  // IMTOK_ATTN_X86

// ---- non-finite scores (see imtok_cuda.reference.attention: "Non-finite values") -------------------
// After add_mask_max: a masked key (add = -inf) whose score came out NaN (NaN / inf in its k row) is set back to
// -inf: a masked key is never read. Returns true when an unmasked visible score is NaN or +inf: the row is
// poisoned (out and lse NaN). When a masked score was repaired, *m is recomputed (the max may have seen it).
template <typename T>
inline bool fix_nonfinite(T* s, const T* add, int64_t nvalid, T* m) {
  const T inf = std::numeric_limits<T>::infinity();
  int any = 0;
  for (int64_t j = 0; j < nvalid; ++j) any |= !(s[j] < inf);  // NaN or +inf (vectorizable)
  if (!any) return false;
  bool bad = false, fixed = false;
  for (int64_t j = 0; j < nvalid; ++j) {
    if (s[j] < inf) continue;
    if (add && add[j] == neg_inf<T>()) {
      s[j] = neg_inf<T>();
      fixed = true;
    } else {
      bad = true;
    }
  }
  if (fixed && !bad) {
    T mm = neg_inf<T>();
    for (int64_t j = 0; j < nvalid; ++j) mm = s[j] > mm ? s[j] : mm;
    *m = mm;
  }
  return bad;
}

// Raw scores of masked keys (add = -inf) set to 0 before s + add is formed elsewhere (exp_accum): a NaN in a
// masked key's k row then gives exp(-inf) = 0, not NaN.
template <typename T>
inline void zero_masked_scores(T* s, const T* add, int64_t nvalid) {
  if (!add) return;
  for (int64_t j = 0; j < nvalid; ++j)
    if (add[j] == neg_inf<T>()) s[j] = T(0);
}

// The probabilities of a poisoned row (lse NaN): NaN at the visible unmasked keys, 0 elsewhere; `accumulate`
// adds them (column sums) instead of storing them.
template <typename T>
inline void poisoned_probs(const T* add, int64_t nvalid, int64_t n, T* out, bool accumulate) {
  const T nan = std::numeric_limits<T>::quiet_NaN();
  for (int64_t j = 0; j < n; ++j) {
    const T v = (j < nvalid && !(add && add[j] == neg_inf<T>())) ? nan : T(0);
    out[j] = accumulate ? out[j] + v : v;
  }
}

// ---- dispatch ------------------------------------------------------------------------------------
template <typename T>
inline T add_mask_max(T* s, const T* add, int64_t nvalid, int64_t n) {
  return add_mask_max_ref(s, add, nvalid, n);
}
template <typename T>
inline T exp_sub_sum(T* s, int64_t n, T m) {
  return exp_sub_sum_ref(s, n, m);
}
template <typename T>
inline void exp_accum(const T* s, const T* add, int64_t nvalid, T m, T* col) {
  exp_accum_ref(s, add, nvalid, m, col);
}
template <typename T>
inline void softmax_grad(T* s, T* p, const T* dp, const T* add, int64_t nvalid, int64_t n, T lse, T D) {
  softmax_grad_ref(s, p, dp, add, nvalid, n, lse, D);
}

#ifdef IMTOK_ATTN_X86
template <>
inline float add_mask_max<float>(float* s, const float* add, int64_t nvalid, int64_t n) {
  return has_avx512() ? add_mask_max_avx512(s, add, nvalid, n) : add_mask_max_ref(s, add, nvalid, n);
}
template <>
inline float exp_sub_sum<float>(float* s, int64_t n, float m) {
  return has_avx512() ? exp_sub_sum_avx512(s, n, m) : exp_sub_sum_ref(s, n, m);
}
template <>
inline void exp_accum<float>(const float* s, const float* add, int64_t nvalid, float m, float* col) {
  if (has_avx512())
    exp_accum_avx512(s, add, nvalid, m, col);
  else
    exp_accum_ref(s, add, nvalid, m, col);
}
template <>
inline void softmax_grad<float>(float* s, float* p, const float* dp, const float* add, int64_t nvalid, int64_t n,
                                float lse, float D) {
  if (has_avx512())
    softmax_grad_avx512(s, p, dp, add, nvalid, n, lse, D);
  else
    softmax_grad_ref(s, p, dp, add, nvalid, n, lse, D);
}
#endif

}  // namespace rowk
}  // namespace attention
}  // namespace imtok
