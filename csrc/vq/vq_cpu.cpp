// CPU kernels of the vq family: nearest code and k nearest codes, fused (no N x K buffer).
//
// The codebook is packed once into [D][Kpad] in the accumulation type (fp32, or fp64 for fp64 inputs) with
// its squared norms; each thread takes blocks of 64 rows and walks the codebook in L2-sized chunks.
// D < 48, fp32 accumulation, AVX2 + FMA (the register path; 4 x 32 with AVX-512): distances of 4 rows x 16
// codes are computed in registers and compared there with each row's threshold (best so far, or k-th best); only a run of 16 that
// holds a smaller distance (or a NaN) is handed to the scalar fold, which keeps codes in index order, so ties
// go to the lowest index without extra work. Dot products and squared norms are then all sequential FMA chains,
// so x equal to a code is at distance exactly 0. Otherwise every distance is folded (portable vector code), and
// for D >= 48 the dot products come from BLAS tiles.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>
#include <ATen/ops/mm.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "common/checks.h"
#include "common/cpu_features.h"
#include "vq/vq_checks.h"
#include "vq/vq_math.h"

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
// "avx2" clones dispatch on the CPU's features ("arch=haswell" clones would only be picked on a Haswell)
#define IMTOK_SIMD_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define IMTOK_SIMD_CLONES
#endif

namespace imtok {
namespace vq {
namespace {

constexpr int kLanes = 16;     // codes per register block
constexpr int kRowGroup = 4;   // rows per register block
constexpr int kRowBlock = 64;  // rows per task
constexpr int64_t kGemmMinD = 48;   // from here on a BLAS tile beats the register kernel (measured, see README)
constexpr int64_t kGemmRows = 256;  // GEMM tile: 256 rows x 2048 codes (2 MiB fp32), reused for every block
constexpr int64_t kGemmCodes = 2048;

#ifdef IMTOK_X86
__attribute__((target("avx2,fma"))) inline float squared_norm_fma(const float* v, int64_t D) {
  float s = 0;
  for (int64_t d = 0; d < D; ++d) s = __builtin_fmaf(v[d], v[d], s);
  return s;
}
#endif

// the register path (see the top of the file) applies to this accumulation type and D on this CPU
template <typename acc_t>
bool use_register_path(int64_t D) {
#ifdef IMTOK_X86
  return std::is_same<acc_t, float>::value && D < kGemmMinD && cpu_has_avx2_fma();
#else
  (void)D;
  return false;
#endif
}

// |v|^2 with the arithmetic of the distance kernel that will use it
template <typename acc_t>
acc_t squared_norm(const acc_t* v, int64_t D, bool fma_chain) {
#ifdef IMTOK_X86
  if constexpr (std::is_same<acc_t, float>::value)
    if (fma_chain) return squared_norm_fma(v, D);
#endif
  (void)fma_chain;
  acc_t s = 0;
  for (int64_t d = 0; d < D; ++d) s += v[d] * v[d];
  return s;
}

template <typename acc_t>
struct PackedCodebook {
  int64_t K = 0, Kpad = 0, D = 0;
  bool registers = false;  // use_register_path: norms are FMA chains
  std::vector<acc_t> cbT;  // [D][Kpad], padding codes are zero
  std::vector<acc_t> en;   // [Kpad]: |e|^2 for l2, 0 for cosine; +inf for padding
};

template <typename scalar_t, typename acc_t>
PackedCodebook<acc_t> pack_codebook(const at::Tensor& codebook, int metric) {
  PackedCodebook<acc_t> p;
  p.K = codebook.size(0);
  p.D = codebook.size(1);
  p.Kpad = (p.K + kLanes - 1) / kLanes * kLanes;
  p.registers = use_register_path<acc_t>(p.D);
  p.cbT.assign(static_cast<size_t>(p.D * p.Kpad), acc_t(0));
  p.en.assign(static_cast<size_t>(p.Kpad), std::numeric_limits<acc_t>::infinity());
  const scalar_t* cb = codebook.data_ptr<scalar_t>();
  at::parallel_for(0, p.K, 256, [&](int64_t k0, int64_t k1) {
    std::vector<acc_t> row(static_cast<size_t>(p.D));
    for (int64_t k = k0; k < k1; ++k) {
      for (int64_t d = 0; d < p.D; ++d) row[d] = static_cast<acc_t>(cb[k * p.D + d]);
      const acc_t sq = squared_norm(row.data(), p.D, p.registers);
      acc_t denom = 1;  // divide like F.normalize (a reciprocal multiply would break exact ties)
      if (metric == kCosine) {  // F.normalize(e, dim=-1, eps=1e-6)
        denom = std::max(std::sqrt(sq), acc_t(1e-6));
        p.en[k] = 0;
      } else {
        p.en[k] = sq;
      }
      for (int64_t d = 0; d < p.D; ++d) p.cbT[d * p.Kpad + k] = row[d] / denom;
    }
  });
  return p;
}

// out[r][l] = (xn[r] + en[k0 + l]) - 2 x_r . e_{k0 + l}  for 4 rows and kc (multiple of 16) codes.
// GCC vector extensions (32-byte vectors) keep the 4 x 16 accumulators in registers; they lower to AVX2 in
// the avx2 clone (no FMA: the norms are plain loops too) and to pairs of SSE ops in the default one.
template <typename acc_t>
IMTOK_SIMD_CLONES void distance_tile(const acc_t* __restrict__ x, const acc_t* __restrict__ xn,
                                     const acc_t* __restrict__ cbT, const acc_t* __restrict__ en, int64_t D,
                                     int64_t Kpad, int64_t k0, int64_t kc, acc_t* __restrict__ out) {
  typedef acc_t V __attribute__((vector_size(32)));
  typedef acc_t VU __attribute__((vector_size(32), aligned(sizeof(acc_t)), may_alias));  // unaligned access
  constexpr int W = 32 / sizeof(acc_t);
  constexpr int NV = kLanes / W;
  auto splat = [](acc_t s) {
    V v;
    for (int i = 0; i < W; ++i) v[i] = s;
    return v;
  };
  for (int64_t kb = 0; kb < kc; kb += kLanes) {
    V acc[kRowGroup][NV];
    for (int r = 0; r < kRowGroup; ++r)
      for (int v = 0; v < NV; ++v) acc[r][v] = splat(acc_t(0));
    const acc_t* c = cbT + k0 + kb;
    for (int64_t d = 0; d < D; ++d) {
      V cv[NV];
      for (int v = 0; v < NV; ++v) cv[v] = *reinterpret_cast<const VU*>(c + d * Kpad + v * W);
      for (int r = 0; r < kRowGroup; ++r) {
        const V xv = splat(x[r * D + d]);
        for (int v = 0; v < NV; ++v) acc[r][v] += xv * cv[v];
      }
    }
    for (int r = 0; r < kRowGroup; ++r) {
      const V xr = splat(xn[r]);
      for (int v = 0; v < NV; ++v) {
        const V ev = *reinterpret_cast<const VU*>(en + k0 + kb + v * W);
        *reinterpret_cast<VU*>(out + r * kc + kb + v * W) = (xr + ev) - splat(acc_t(2)) * acc[r][v];
      }
    }
  }
}

// Folds n distances (codes k0, k0+1, ...) into the running (best, bi) in code order: a strictly smaller
// distance wins, so ties keep the lowest index; the first NaN wins and nothing replaces it (torch.argmin).
// (A vector-extension version of this loop measured 2x slower here: GCC 12 lowers its masked selects badly.)
template <typename acc_t>
inline void fold_nearest(const acc_t* __restrict__ d, int64_t n, int64_t k0, acc_t& best, int64_t& bi) {
  if (best != best) return;
  acc_t b = best;
  int64_t l_best = -1;
  for (int64_t l = 0; l < n; ++l) {
    if (!(d[l] >= b)) {  // one compare: true when smaller, or NaN (b is not NaN here)
      b = d[l];
      l_best = l;
      if (b != b) break;
    }
  }
  if (l_best >= 0) {
    best = b;
    bi = k0 + l_best;
  }
}

template <typename acc_t>
int64_t chunk_codes(const PackedCodebook<acc_t>& p) {
  // keep a chunk of the packed codebook in L2 (~128 KiB) while 64 rows stream over it
  int64_t kc = (131072 / static_cast<int64_t>(sizeof(acc_t))) / std::max<int64_t>(p.D, 1);
  kc = std::max<int64_t>(kLanes, kc / kLanes * kLanes);
  return std::min(kc, p.Kpad);
}

// Large D: the dot products dominate, so they go through BLAS one bounded tile at a time (x block @ codebook
// chunk), and the distances of each tile row are folded in code order like the register path.
template <typename scalar_t, typename acc_t, typename Init, typename Fold, typename Finish>
void for_each_distance_gemm(const scalar_t* x, int64_t N, const PackedCodebook<acc_t>& p, int metric, Init init,
                            Fold fold, Finish finish) {
  const int64_t D = p.D;
  const auto acc_type = c10::CppTypeToScalarType<acc_t>::value;
  const at::Tensor cbT = at::from_blob(const_cast<acc_t*>(p.cbT.data()), {D, p.Kpad}, at::TensorOptions(acc_type));
  at::Tensor xb = at::empty({kGemmRows, D}, at::TensorOptions(acc_type));
  std::vector<acc_t> xn(kGemmRows);
  for (int64_t r0 = 0; r0 < N; r0 += kGemmRows) {
    const int64_t rows = std::min(kGemmRows, N - r0);
    acc_t* xbp = xb.data_ptr<acc_t>();
    at::parallel_for(0, rows, 16, [&](int64_t a, int64_t b) {
      for (int64_t r = a; r < b; ++r) {
        acc_t sq = 0;
        for (int64_t d = 0; d < D; ++d) {
          const acc_t v = static_cast<acc_t>(x[(r0 + r) * D + d]);
          xbp[r * D + d] = v;
          sq += v * v;
        }
        xn[r] = metric == kCosine ? acc_t(0) : sq;
        init(r0 + r, sq);
      }
    });
    const at::Tensor xrows = xb.narrow(0, 0, rows);
    for (int64_t k0 = 0; k0 < p.K; k0 += kGemmCodes) {
      const int64_t kc = std::min(kGemmCodes, p.K - k0);
      const at::Tensor dots = at::mm(xrows, cbT.narrow(1, k0, kc));  // [rows, kc], BLAS threads
      const acc_t* dp = dots.data_ptr<acc_t>();
      at::parallel_for(0, rows, 8, [&](int64_t a, int64_t b) {
        std::vector<acc_t> dist(static_cast<size_t>(kc));
        for (int64_t r = a; r < b; ++r) {
          for (int64_t l = 0; l < kc; ++l) dist[l] = (xn[r] + p.en[k0 + l]) - acc_t(2) * dp[r * kc + l];
          fold(r0 + r, dist.data(), k0, kc);
        }
      });
    }
    for (int64_t r = 0; r < rows; ++r) finish(r0 + r);
  }
}

// Walks rows in blocks of 64 (copied to acc_t, |x|^2 computed once) and the codebook in L2-sized chunks, and
// hands each group of 4 rows and chunk to group(row0, nrows, xg, xng, k0, kc, kvalid, tile); xg holds 4 rows
// (rows past N are zero). init(row, |x|^2) before a row's first code, finish(row) after its last.
template <typename scalar_t, typename acc_t, typename Init, typename Group, typename Finish>
void for_each_row_group(const scalar_t* x, int64_t N, const PackedCodebook<acc_t>& p, int metric, Init init,
                        Group group, Finish finish) {
  const int64_t D = p.D;
  const int64_t kc_max = chunk_codes(p);
  at::parallel_for(0, (N + kRowBlock - 1) / kRowBlock, 1, [&](int64_t b0, int64_t b1) {
    std::vector<acc_t> xbuf(static_cast<size_t>(kRowBlock * std::max<int64_t>(D, 1)), acc_t(0));
    std::vector<acc_t> xn(kRowBlock, acc_t(0));
    std::vector<acc_t> tile(static_cast<size_t>(kRowGroup * kc_max));
    for (int64_t blk = b0; blk < b1; ++blk) {
      const int64_t r0 = blk * kRowBlock;
      const int64_t rows = std::min<int64_t>(kRowBlock, N - r0);
      for (int64_t r = 0; r < kRowBlock; ++r) {
        for (int64_t d = 0; d < D; ++d) xbuf[r * D + d] = r < rows ? static_cast<acc_t>(x[(r0 + r) * D + d]) : acc_t(0);
        const acc_t sq = squared_norm(xbuf.data() + r * D, D, p.registers);
        xn[r] = metric == kCosine ? acc_t(0) : sq;
        if (r < rows) init(r0 + r, sq);
      }
      for (int64_t k0 = 0; k0 < p.Kpad; k0 += kc_max) {
        const int64_t kc = std::min(kc_max, p.Kpad - k0);
        const int64_t kvalid = std::min(kc, p.K - k0);
        for (int64_t g = 0; g < rows; g += kRowGroup)
          group(r0 + g, std::min<int64_t>(kRowGroup, rows - g), xbuf.data() + g * D, xn.data() + g, k0, kc, kvalid,
                tile.data());
      }
      for (int64_t r = 0; r < rows; ++r) finish(r0 + r);
    }
  });
}

// Hands every (row, code, distance) to fold(row, distances, k0, n) in code order.
template <typename scalar_t, typename acc_t, typename Init, typename Fold, typename Finish>
void for_each_distance(const scalar_t* x, int64_t N, const PackedCodebook<acc_t>& p, int metric, Init init,
                       Fold fold, Finish finish) {
  if (p.D >= kGemmMinD) return for_each_distance_gemm<scalar_t, acc_t>(x, N, p, metric, init, fold, finish);
  for_each_row_group<scalar_t, acc_t>(
      x, N, p, metric, init,
      [&](int64_t row0, int64_t nrows, const acc_t* xg, const acc_t* xng, int64_t k0, int64_t kc, int64_t kvalid,
          acc_t* tile) {
        distance_tile<acc_t>(xg, xng, p.cbT.data(), p.en.data(), p.D, p.Kpad, k0, kc, tile);
        for (int64_t r = 0; r < nrows; ++r) fold(row0 + r, tile + r * kc, k0, kvalid);
      },
      finish);
}

#ifdef IMTOK_X86
// The register path for 4 rows (x, xn) and codes [k0, k0 + kc): for each 16 codes the 4 x 16 distances
// (|x|^2 + |e|^2) - 2 x.e are computed with FMA chains and compared with thr[r]; a row whose 16 distances hold
// one with !(d >= thr[r]) (smaller, or NaN on either side) goes to thr[r] = fold(row0 + r, d, code, n) with
// its n valid distances. Rows from nrows on are padding and are never folded.
template <typename Fold>
__attribute__((target("avx2,fma"))) void close_distances_avx2(const float* __restrict__ x,
                                                              const float* __restrict__ xn,
                                                              const float* __restrict__ cbT,
                                                              const float* __restrict__ en, int64_t D,
                                                              int64_t Kpad, int64_t k0, int64_t kc, int64_t kvalid,
                                                              int64_t row0, int64_t nrows, float* thr, Fold& fold) {
  static_assert(kRowGroup == 4 && kLanes == 16, "the register tile below is 4 rows x 16 codes");
  const __m256 two = _mm256_set1_ps(2.0f);
  for (int64_t kb = 0; kb < kc; kb += kLanes) {
    __m256 acc[4][2];
    for (int r = 0; r < 4; ++r) acc[r][0] = acc[r][1] = _mm256_setzero_ps();
    const float* c = cbT + k0 + kb;
    for (int64_t d = 0; d < D; ++d) {
      const __m256 c0 = _mm256_loadu_ps(c + d * Kpad), c1 = _mm256_loadu_ps(c + d * Kpad + 8);
      for (int r = 0; r < 4; ++r) {
        const __m256 xv = _mm256_broadcast_ss(x + r * D + d);
        acc[r][0] = _mm256_fmadd_ps(xv, c0, acc[r][0]);
        acc[r][1] = _mm256_fmadd_ps(xv, c1, acc[r][1]);
      }
    }
    const __m256 e0 = _mm256_loadu_ps(en + k0 + kb), e1 = _mm256_loadu_ps(en + k0 + kb + 8);
    __m256 dist[4][2];
    int hit = 0;
    for (int r = 0; r < 4; ++r) {
      const __m256 xr = _mm256_broadcast_ss(xn + r);
      const __m256 t = _mm256_set1_ps(thr[r]);
      dist[r][0] = _mm256_fnmadd_ps(two, acc[r][0], _mm256_add_ps(xr, e0));
      dist[r][1] = _mm256_fnmadd_ps(two, acc[r][1], _mm256_add_ps(xr, e1));
      const __m256 m = _mm256_or_ps(_mm256_cmp_ps(dist[r][0], t, _CMP_NGE_UQ),
                                    _mm256_cmp_ps(dist[r][1], t, _CMP_NGE_UQ));
      hit |= (_mm256_movemask_ps(m) != 0) << r;
    }
    if (__builtin_expect(hit != 0, 0)) {
      const int64_t n = std::min<int64_t>(kLanes, kvalid - kb);
      for (int r = 0; r < nrows && n > 0; ++r) {
        if (!(hit >> r & 1)) continue;
        alignas(32) float row[kLanes];
        _mm256_store_ps(row, dist[r][0]);
        _mm256_store_ps(row + 8, dist[r][1]);
        thr[r] = fold(row0 + r, row, k0 + kb, n);
      }
    }
  }
}

// The same with 512-bit vectors and 32 codes per step (the last 16 of a chunk masked off when kc is an odd
// multiple of 16): the same FMA chains, so the same bits as close_distances_avx2.
template <typename Fold>
__attribute__((target("avx512f"))) void close_distances_avx512(const float* __restrict__ x,
                                                               const float* __restrict__ xn,
                                                               const float* __restrict__ cbT,
                                                               const float* __restrict__ en, int64_t D,
                                                               int64_t Kpad, int64_t k0, int64_t kc, int64_t kvalid,
                                                               int64_t row0, int64_t nrows, float* thr, Fold& fold) {
  const __m512 two = _mm512_set1_ps(2.0f);
  for (int64_t kb = 0; kb < kc; kb += 2 * kLanes) {
    const __mmask16 hi = kc - kb >= 2 * kLanes ? __mmask16(0xFFFF) : __mmask16(0);
    __m512 acc[4][2];
    for (int r = 0; r < 4; ++r) acc[r][0] = acc[r][1] = _mm512_setzero_ps();
    const float* c = cbT + k0 + kb;
    for (int64_t d = 0; d < D; ++d) {
      const __m512 c0 = _mm512_loadu_ps(c + d * Kpad), c1 = _mm512_maskz_loadu_ps(hi, c + d * Kpad + 16);
      for (int r = 0; r < 4; ++r) {
        const __m512 xv = _mm512_set1_ps(x[r * D + d]);
        acc[r][0] = _mm512_fmadd_ps(xv, c0, acc[r][0]);
        acc[r][1] = _mm512_fmadd_ps(xv, c1, acc[r][1]);
      }
    }
    const __m512 e0 = _mm512_loadu_ps(en + k0 + kb), e1 = _mm512_maskz_loadu_ps(hi, en + k0 + kb + 16);
    __m512 dist[4][2];
    int hit = 0;
    for (int r = 0; r < 4; ++r) {
      const __m512 xr = _mm512_set1_ps(xn[r]);
      const __m512 t = _mm512_set1_ps(thr[r]);
      dist[r][0] = _mm512_fnmadd_ps(two, acc[r][0], _mm512_add_ps(xr, e0));
      dist[r][1] = _mm512_fnmadd_ps(two, acc[r][1], _mm512_add_ps(xr, e1));
      const unsigned m = _mm512_cmp_ps_mask(dist[r][0], t, _CMP_NGE_UQ) |
                         (_mm512_mask_cmp_ps_mask(hi, dist[r][1], t, _CMP_NGE_UQ));
      hit |= (m != 0) << r;
    }
    if (__builtin_expect(hit != 0, 0)) {
      for (int half = 0; half < 2; ++half) {  // in code order: a fold may lower the threshold for the second
        const int64_t kh = kb + half * kLanes;
        const int64_t n = std::min<int64_t>(kLanes, kvalid - kh);
        if (kh >= kc || n <= 0) break;
        for (int r = 0; r < nrows; ++r) {
          if (!(hit >> r & 1)) continue;
          alignas(64) float row[kLanes];
          _mm512_store_ps(row, dist[r][half]);
          bool any = false;
          for (int64_t l = 0; l < n; ++l) any |= !(row[l] >= thr[r]);
          if (any) thr[r] = fold(row0 + r, row, k0 + kh, n);
        }
      }
    }
  }
}
#endif

// Hands fold(row, distances, k0, n) the distances of codes k0 .. k0 + n - 1, in code order. On the register
// path a run of 16 codes is skipped when none of its distances d has !(d >= threshold(row)), so the fold
// must be one such a run cannot change (threshold: the best so far, the k-th best, or NaN for "take all").
template <typename scalar_t, typename acc_t, typename Init, typename Threshold, typename Fold, typename Finish>
void for_each_candidate(const scalar_t* x, int64_t N, const PackedCodebook<acc_t>& p, int metric, Init init,
                        Threshold threshold, Fold fold, Finish finish) {
#ifdef IMTOK_X86
  if constexpr (std::is_same<acc_t, float>::value) {
    if (p.registers) {
      for_each_row_group<scalar_t, acc_t>(
          x, N, p, metric, init,
          [&](int64_t row0, int64_t nrows, const float* xg, const float* xng, int64_t k0, int64_t kc,
              int64_t kvalid, float*) {
            float thr[kRowGroup];
            for (int64_t r = 0; r < kRowGroup; ++r)  // padding rows: -inf is never hit (unless by a NaN code)
              thr[r] = r < nrows ? threshold(row0 + r) : -std::numeric_limits<float>::infinity();
            auto fold_then_threshold = [&](int64_t row, const float* d, int64_t k, int64_t n) {
              fold(row, d, k, n);
              return threshold(row);
            };
            if (cpu_use_avx512())
              close_distances_avx512(xg, xng, p.cbT.data(), p.en.data(), p.D, p.Kpad, k0, kc, kvalid, row0, nrows,
                                     thr, fold_then_threshold);
            else
              close_distances_avx2(xg, xng, p.cbT.data(), p.en.data(), p.D, p.Kpad, k0, kc, kvalid, row0, nrows,
                                   thr, fold_then_threshold);
          },
          finish);
      return;
    }
  }
#endif
  for_each_distance<scalar_t, acc_t>(x, N, p, metric, init, fold, finish);
}

std::tuple<at::Tensor, at::Tensor> nearest_cpu(const at::Tensor& x_in, const at::Tensor& codebook_in,
                                               c10::string_view metric_name) {
  const NearestCall c = prepare_nearest(x_in, codebook_in, 0, false, metric_name);
  const at::Tensor &x = c.x, &codebook = c.codebook, &indices = c.indices, &distances = c.distances;
  const int metric = c.metric;
  const int64_t rows = c.rows;
  if (rows == 0) return {distances, indices};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "vq_nearest_cpu", [&] {
    using acc_t = std::conditional_t<std::is_same<scalar_t, double>::value, double, float>;
    const auto p = pack_codebook<scalar_t, acc_t>(codebook, metric);
    int64_t* idx = indices.data_ptr<int64_t>();
    acc_t* dist = distances.data_ptr<acc_t>();
    // per-row state lives in the outputs (and sq_norm for cosine) to keep the fold branch-light
    std::vector<acc_t> sq_norm(metric == kCosine ? rows : 0);
    const auto init = [&](int64_t r, acc_t sq) {
      idx[r] = 0;
      dist[r] = std::numeric_limits<acc_t>::infinity();
      if (metric == kCosine) sq_norm[r] = sq;
    };
    const auto finish = [&](int64_t r) {
      if (metric == kCosine) dist[r] = report_distance(dist[r], sq_norm[r], metric);
    };
    for_each_candidate<scalar_t, acc_t>(
        x.data_ptr<scalar_t>(), rows, p, metric, init, [&](int64_t r) { return dist[r]; },
        [&](int64_t r, const acc_t* t, int64_t k0, int64_t n) { fold_nearest(t, n, k0, dist[r], idx[r]); }, finish);
  });
  return {distances, indices};
}

std::tuple<at::Tensor, at::Tensor> nearest_topk_cpu(const at::Tensor& x_in, const at::Tensor& codebook_in, int64_t k,
                                                    c10::string_view metric_name) {
  const NearestCall c = prepare_nearest(x_in, codebook_in, k, true, metric_name);
  const at::Tensor &x = c.x, &codebook = c.codebook, &indices = c.indices, &distances = c.distances;
  const int metric = c.metric;
  const int64_t rows = c.rows;
  if (rows == 0) return {distances, indices};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "vq_nearest_topk_cpu", [&] {
    using acc_t = std::conditional_t<std::is_same<scalar_t, double>::value, double, float>;
    const auto p = pack_codebook<scalar_t, acc_t>(codebook, metric);
    int64_t* idx = indices.data_ptr<int64_t>();
    acc_t* dist = distances.data_ptr<acc_t>();
    std::vector<acc_t> sq_norm(metric == kCosine ? rows : 0);
    std::vector<int64_t> count(rows, 0);
    for_each_candidate<scalar_t, acc_t>(
        x.data_ptr<scalar_t>(), rows, p, metric,
        [&](int64_t r, acc_t sq) {
          count[r] = 0;
          if (metric == kCosine) sq_norm[r] = sq;
        },
        [&](int64_t r) {  // the k-th best; NaN (everything enters) while fewer than k
          return count[r] == k ? dist[r * k + k - 1] : std::numeric_limits<acc_t>::quiet_NaN();
        },
        [&](int64_t r, const acc_t* t, int64_t k0, int64_t kvalid) {
          acc_t* td = dist + r * k;
          int64_t* ti = idx + r * k;
          int64_t n = count[r];
          // codes arrive in increasing index order: a candidate enters only if strictly closer than the last
          for (int64_t l = 0; l < kvalid; ++l) topk_insert(td, ti, n, k, t[l], k0 + l);
          count[r] = n;
        },
        [&](int64_t r) {
          if (metric == kCosine)
            for (int64_t j = 0; j < k; ++j) dist[r * k + j] = report_distance(dist[r * k + j], sq_norm[r], metric);
        });
  });
  return {distances, indices};
}

}  // namespace
}  // namespace vq
}  // namespace imtok

TORCH_LIBRARY_IMPL(imtok_cuda, CPU, m) {
  m.impl("vq_nearest", &imtok::vq::nearest_cpu);
  m.impl("vq_nearest_topk", &imtok::vq::nearest_topk_cpu);
}
