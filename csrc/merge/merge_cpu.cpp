// CPU kernels of the merge family (ToMe / tomesd): fused matching and one-pass plan application.
//
// Matching: per batch, the metric rows are normalized into a small buffer, a . b^T is computed one source
// row at a time into a [Nb] scratch row (fp32 on AVX2+FMA CPUs: 4 source rows x 16 destinations in registers,
// with the running max checked there), never the [Ta, Tb] score matrix, reduced to max/argmax (first index on
// ties), and the sources are ordered with std::sort and torch's own key comparator, which reproduces the order
// torch.argsort returns on CPU (an introsort: unstable, so ties and the tomesd -1/0 buffer need the same algorithm).
// Application (merge, wavg, unmerge and their backward) walks each output row's member list (the destination
// and, in plan order, the sources merged into it) once: no atomics, deterministic sums in the reference's order.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>
#include <ATen/ops/index_select.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/zeros.h>
#include <ATen/OpMathType.h>
#include <c10/util/irange.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <utility>
#include <vector>

#include "common/checks.h"
#include "common/cpu_features.h"
#include "merge/merge_plan.h"

namespace imtok {
namespace merge {
namespace {

using at::Tensor;

template <typename T>
inline bool is_nan(T v) { return v != v; }

// torch's CPU sort comparators (KeyValueCompDesc / KeyValueCompAsc): NaN is the largest value.
struct DescByKey {
  template <typename P>
  bool operator()(const P& a, const P& b) const {
    return (is_nan(a.first) && !is_nan(b.first)) || (a.first > b.first);
  }
};
struct AscByKey {
  template <typename P>
  bool operator()(const P& a, const P& b) const {
    return (!is_nan(a.first) && is_nan(b.first)) || (a.first < b.first);
  }
};

// ---------------------------------------------------------------------------------------------------------
// matching
// ---------------------------------------------------------------------------------------------------------
// Normalized metric rows (rounded to scalar_t like the reference's metric / norm) in an acc_t buffer [B, T, C];
// scores a . b^T are produced in tiles of source rows by at::mm into a scratch buffer of at most kScratchBytes
// (never the [Na, Nb] matrix when it is larger), reduced to row max/argmax; then each batch's rows are ordered by
// std::sort. Tiles are large because every BLAS call wakes its thread pool, which is costly on a loaded machine.
constexpr int64_t kScratchBytes = int64_t(8) << 20;

#ifdef IMTOK_X86
// Scores of 4 source rows (a [4][C], rows past the real ones are zero) against destination columns
// [0, Nbpad) of bt [C][Nbpad] (zero padded), 16 columns at a time in registers (FMA over c in order), compared
// there with each row's best so far: only a run of 16 that holds a larger score or a NaN goes to
// fold(row, scores, j0, n) (the scalar first-max rule), which returns the row's new best. Rows with
// skip[r] are never folded.
template <typename Fold>
__attribute__((target("avx2,fma"))) void row_max_tile_avx2(const float* __restrict__ a, const float* __restrict__ bt,
                                                           int64_t C, int64_t Nb, int64_t Nbpad, float* best,
                                                           const bool* skip, Fold& fold) {
  for (int64_t jb = 0; jb < Nbpad; jb += 16) {
    __m256 acc[4][2];
    for (int r = 0; r < 4; ++r) acc[r][0] = acc[r][1] = _mm256_setzero_ps();
    for (int64_t c = 0; c < C; ++c) {
      const __m256 b0 = _mm256_loadu_ps(bt + c * Nbpad + jb), b1 = _mm256_loadu_ps(bt + c * Nbpad + jb + 8);
      for (int r = 0; r < 4; ++r) {
        const __m256 av = _mm256_broadcast_ss(a + r * C + c);
        acc[r][0] = _mm256_fmadd_ps(av, b0, acc[r][0]);
        acc[r][1] = _mm256_fmadd_ps(av, b1, acc[r][1]);
      }
    }
    for (int r = 0; r < 4; ++r) {
      if (skip[r]) continue;
      const __m256 t = _mm256_set1_ps(best[r]);
      const __m256 m = _mm256_or_ps(_mm256_cmp_ps(acc[r][0], t, _CMP_NLE_UQ), _mm256_cmp_ps(acc[r][1], t, _CMP_NLE_UQ));
      if (__builtin_expect(_mm256_movemask_ps(m) != 0, 0)) {
        alignas(32) float row[16];
        _mm256_store_ps(row, acc[r][0]);
        _mm256_store_ps(row + 8, acc[r][1]);
        best[r] = fold(r, row, jb, std::min<int64_t>(16, Nb - jb));
      }
    }
  }
}

// The same with 512-bit vectors, 32 destinations per step (Nbpad a multiple of 32): the same FMA chains,
// so the same bits.

template <typename Fold>
__attribute__((target("avx512f"))) void row_max_tile_avx512(const float* __restrict__ a,
                                                            const float* __restrict__ bt, int64_t C, int64_t Nb,
                                                            int64_t Nbpad, float* best, const bool* skip,
                                                            Fold& fold) {
  for (int64_t jb = 0; jb < Nbpad; jb += 32) {
    __m512 acc[4][2];
    for (int r = 0; r < 4; ++r) acc[r][0] = acc[r][1] = _mm512_setzero_ps();
    for (int64_t c = 0; c < C; ++c) {
      const __m512 b0 = _mm512_loadu_ps(bt + c * Nbpad + jb), b1 = _mm512_loadu_ps(bt + c * Nbpad + jb + 16);
      for (int r = 0; r < 4; ++r) {
        const __m512 av = _mm512_set1_ps(a[r * C + c]);
        acc[r][0] = _mm512_fmadd_ps(av, b0, acc[r][0]);
        acc[r][1] = _mm512_fmadd_ps(av, b1, acc[r][1]);
      }
    }
    for (int r = 0; r < 4; ++r) {
      if (skip[r]) continue;
      const __m512 t = _mm512_set1_ps(best[r]);
      if (__builtin_expect((_mm512_cmp_ps_mask(acc[r][0], t, _CMP_NLE_UQ) |
                            _mm512_cmp_ps_mask(acc[r][1], t, _CMP_NLE_UQ)) != 0, 0)) {
        alignas(64) float row[32];
        _mm512_store_ps(row, acc[r][0]);
        _mm512_store_ps(row + 16, acc[r][1]);
        best[r] = fold(r, row, jb, std::min<int64_t>(32, Nb - jb));
      }
    }
  }
}
#endif

// Small problems (a ViT layer) in fp32 on AVX2+FMA: per batch, 4 source rows x 16 (32 with AVX-512)
// destinations in registers with the running max checked there (row_max_tile_*); the first-max rule of
// row_max on the rare runs that can change it. false (nothing done) for other types, sizes or CPUs.
template <typename scalar_t, typename acc_t>
bool max_scores_in_registers(const acc_t* np_, int64_t B, int64_t T, int64_t C, int64_t Na, int64_t Nb,
                             const int64_t* apos, const int64_t* bpos, bool class_token, bool distill_token,
                             std::vector<scalar_t>& node_max, std::vector<int64_t>& node_idx) {
#ifdef IMTOK_X86
  if constexpr (std::is_same<scalar_t, float>::value) {
    if (Na * Nb * C > (int64_t(1) << 22) || !cpu_has_avx2_fma()) return false;
    const bool wide = cpu_use_avx512();
    const int64_t Nbpad = wide ? (Nb + 31) / 32 * 32 : (Nb + 15) / 16 * 16, j0 = distill_token ? 1 : 0;
    at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
      std::vector<float> bt(C * Nbpad, 0.f), a4(4 * C);
      for (int64_t b = b0; b < b1; ++b) {
        const float* nb_ = np_ + b * T * C;
        for (int64_t j = 0; j < Nb; ++j)
          for (int64_t c = 0; c < C; ++c) bt[c * Nbpad + j] = nb_[(bpos ? bpos[j] : 2 * j + 1) * C + c];
        for (int64_t i0 = 0; i0 < Na; i0 += 4) {
          float best[4];
          int64_t arg[4] = {0, 0, 0, 0};
          bool skip[4];
          for (int r = 0; r < 4; ++r) {
            const int64_t i = i0 + r;
            skip[r] = i >= Na || (class_token && i == 0);
            best[r] = -std::numeric_limits<float>::infinity();
            for (int64_t c = 0; c < C; ++c) a4[r * C + c] = i < Na ? nb_[(apos ? apos[i] : 2 * i) * C + c] : 0.f;
          }
          auto fold = [&](int r, const float* row, int64_t jb, int64_t n) {
            float bv = best[r];
            for (int64_t l = 0; l < n; ++l) {
              const float v = row[l];
              if (jb + l >= j0 && (v > bv || (is_nan(v) && !is_nan(bv)))) {
                bv = v;
                arg[r] = jb + l;
              }
            }
            return bv;
          };
          if (wide)
            row_max_tile_avx512(a4.data(), bt.data(), C, Nb, Nbpad, best, skip, fold);
          else
            row_max_tile_avx2(a4.data(), bt.data(), C, Nb, Nbpad, best, skip, fold);
          for (int r = 0; r < 4 && i0 + r < Na; ++r) {
            node_max[b * Na + i0 + r] = best[r];
            node_idx[b * Na + i0 + r] = arg[r];
          }
        }
      }
    });
    return true;
  }
#endif
  return false;
}

template <typename scalar_t>
void bipartite_match_cpu_impl(const Tensor& metric, const int64_t* apos, const int64_t* bpos, int64_t Na,
                              int64_t Nb, int64_t r, bool class_token, bool distill_token, Tensor& src_idx,
                              Tensor& dst_idx, Tensor& unm_idx) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t B = metric.size(0), T = metric.size(1), C = metric.size(2);
  const scalar_t* m = metric.const_data_ptr<scalar_t>();
  int64_t* src = src_idx.mutable_data_ptr<int64_t>();
  int64_t* dst = dst_idx.mutable_data_ptr<int64_t>();
  int64_t* unm = unm_idx.mutable_data_ptr<int64_t>();
  const int64_t U = Na - r;
  const auto aopts = metric.options().dtype(c10::CppTypeToScalarType<acc_t>::value);
  Tensor normed = at::empty({B, T, C}, aopts);
  acc_t* np_ = normed.mutable_data_ptr<acc_t>();
  at::parallel_for(0, B * T, std::max<int64_t>(1, 16384 / std::max<int64_t>(1, C)), [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const scalar_t* row = m + t * C;
      double ss = 0;
      for (int64_t c = 0; c < C; ++c) ss += double(row[c]) * double(row[c]);
      const acc_t n = acc_t(scalar_t(std::sqrt(ss)));
      for (int64_t c = 0; c < C; ++c) np_[t * C + c] = acc_t(scalar_t(acc_t(row[c]) / n));
    }
  });
  Tensor pos_a, pos_b;
  if (apos) {
    pos_a = at::from_blob(const_cast<int64_t*>(apos), {Na}, metric.options().dtype(c10::kLong));
    pos_b = at::from_blob(const_cast<int64_t*>(bpos), {Nb}, metric.options().dtype(c10::kLong));
  }
  std::vector<scalar_t> node_max(B * Na);
  std::vector<int64_t> node_idx(B * Na, 0);
  auto row_max = [&](int64_t b, int64_t i, const acc_t* row) {
    acc_t best = -std::numeric_limits<acc_t>::infinity();
    int64_t arg = 0;
    if (!(class_token && i == 0)) {
      for (int64_t j = distill_token ? 1 : 0; j < Nb; ++j) {
        const acc_t v = acc_t(scalar_t(row[j]));
        if (v > best || (is_nan(v) && !is_nan(best))) {
          best = v;
          arg = j;
        }
      }
    }
    node_max[b * Na + i] = scalar_t(best);
    node_idx[b * Na + i] = arg;
  };
  if (max_scores_in_registers(np_, B, T, C, Na, Nb, apos, bpos, class_token, distill_token, node_max, node_idx)) {
    // node_max / node_idx are filled
  } else if (Na * Nb * C <= (int64_t(1) << 22)) {
    // small problems (a ViT layer): one task per batch (no BLAS call inside a parallel region), scores one
    // source row at a time into an [Nb] row: axpy over the channels of a transposed copy of b, c in order
    at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
      std::vector<acc_t> bt(C * Nb), srow(Nb);
      for (int64_t b = b0; b < b1; ++b) {
        const acc_t* nb_ = np_ + b * T * C;
        for (int64_t j = 0; j < Nb; ++j) {
          const acc_t* br = nb_ + (bpos ? bpos[j] : 2 * j + 1) * C;
          for (int64_t c = 0; c < C; ++c) bt[c * Nb + j] = br[c];
        }
        for (int64_t i = 0; i < Na; ++i) {
          const acc_t* ar = nb_ + (apos ? apos[i] : 2 * i) * C;
          std::fill(srow.begin(), srow.end(), acc_t(0));
          for (int64_t c = 0; c < C; ++c) {
            const acc_t av = ar[c];
            const acc_t* bc = bt.data() + c * Nb;
            for (int64_t j = 0; j < Nb; ++j) srow[j] += av * bc[j];
          }
          row_max(b, i, srow.data());
        }
      }
    });
  } else {
  // large problems (tomesd): source-row tiles through at::mm (BLAS threads itself), scratch <= kScratchBytes
  const int64_t kTileRows = std::max<int64_t>(16, kScratchBytes / int64_t(sizeof(acc_t)) / std::max<int64_t>(Nb, 1));
  Tensor scratch = at::empty({std::min(kTileRows, std::max<int64_t>(Na, 1)), std::max<int64_t>(Nb, 1)}, aopts);
  for (int64_t b = 0; b < B; ++b) {
    Tensor nb_ = normed[b];
    Tensor A = apos ? nb_.index_select(0, pos_a) : nb_.slice(0, 0, T, 2);
    Tensor Bm = bpos ? nb_.index_select(0, pos_b) : nb_.slice(0, 1, T, 2);
    const Tensor Bt = Bm.t();
    for (int64_t i0 = 0; i0 < Na; i0 += kTileRows) {
      const int64_t n = std::min(kTileRows, Na - i0);
      Tensor sc = scratch.narrow(0, 0, n);
      if (Nb > 0) at::mm_out(sc, A.narrow(0, i0, n), Bt);
      const acc_t* sp = sc.const_data_ptr<acc_t>();
      at::parallel_for(0, n, 16, [&](int64_t q0, int64_t q1) {
        for (int64_t q = q0; q < q1; ++q) row_max(b, i0 + q, sp + q * Nb);
      });
    }
  }
  }
  at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
    std::vector<std::pair<scalar_t, int64_t>> node(Na);
    for (int64_t b = b0; b < b1; ++b) {
      for (int64_t i = 0; i < Na; ++i) node[i] = {node_max[b * Na + i], i};
      std::sort(node.begin(), node.end(), DescByKey());
      for (int64_t k = 0; k < r; ++k) {
        src[b * r + k] = node[k].second;
        dst[b * r + k] = node_idx[b * Na + node[k].second];
      }
      int64_t* ub = unm + b * U;
      for (int64_t k = 0; k < U; ++k) ub[k] = node[r + k].second;
      if (class_token) std::sort(ub, ub + U);
    }
  });
}

void check_metric(const Tensor& metric) {
  check_floating(metric, "metric");
  check_dim(metric, 3, "metric");
  check_device_type(metric, c10::DeviceType::CPU, "metric");
}

std::tuple<Tensor, Tensor, Tensor> tome_match_cpu(const Tensor& metric_, int64_t r, bool class_token,
                                                  bool distill_token) {
  check_metric(metric_);
  const Tensor metric = metric_.contiguous();
  const int64_t B = metric.size(0), T = metric.size(1);
  const int64_t protected_ = int64_t(class_token) + int64_t(distill_token);
  r = std::max<int64_t>(0, std::min<int64_t>(r, (T - protected_) / 2));
  const int64_t Na = (T + 1) / 2, Nb = T / 2;
  auto opts = metric.options().dtype(c10::kLong);
  Tensor src = at::empty({B, r}, opts), dst = at::empty({B, r}, opts), unm = at::empty({B, Na - r}, opts);
  AT_DISPATCH_FLOATING_TYPES_AND2(c10::kHalf, c10::kBFloat16, metric.scalar_type(), "merge_tome_match", [&] {
    bipartite_match_cpu_impl<scalar_t>(metric, nullptr, nullptr, Na, Nb, r, class_token, distill_token, src, dst,
                                       unm);
  });
  return {src, dst, unm};
}

std::tuple<Tensor, Tensor, Tensor> random2d_match_cpu(const Tensor& metric_, const Tensor& a_idx_,
                                                      const Tensor& b_idx_, int64_t r) {
  check_metric(metric_);
  const Tensor metric = metric_.contiguous();
  const Tensor a_idx = a_idx_.contiguous(), b_idx = b_idx_.contiguous();
  const int64_t B = metric.size(0), T = metric.size(1);
  check_device_type(a_idx, c10::DeviceType::CPU, "a_idx");
  check_device_type(b_idx, c10::DeviceType::CPU, "b_idx");
  check_dtype(a_idx, c10::kLong, "a_idx");
  check_dtype(b_idx, c10::kLong, "b_idx");
  check_dim(a_idx, 1, "a_idx");
  check_dim(b_idx, 1, "b_idx");
  const int64_t Na = a_idx.size(0), Nb = b_idx.size(0);
  TORCH_CHECK_VALUE(Na + Nb == T, "a_idx and b_idx must split the ", T, " tokens of metric, got ", Na, " + ", Nb);
  check_split_values(a_idx, b_idx, T);
  TORCH_CHECK_VALUE(Nb > 0 || Na == 0, "b_idx must not be empty");
  r = std::max<int64_t>(0, std::min<int64_t>(r, Na));
  auto opts = metric.options().dtype(c10::kLong);
  Tensor src = at::empty({B, r}, opts), dst = at::empty({B, r}, opts), unm = at::empty({B, Na - r}, opts);
  AT_DISPATCH_FLOATING_TYPES_AND2(c10::kHalf, c10::kBFloat16, metric.scalar_type(), "merge_random2d_match", [&] {
    bipartite_match_cpu_impl<scalar_t>(metric, a_idx.const_data_ptr<int64_t>(), b_idx.const_data_ptr<int64_t>(), Na,
                                       Nb, r, false, false, src, dst, unm);
  });
  return {src, dst, unm};
}

// tomesd's destination choice -> (a_idx, b_idx) via the argsort of the -1 (dst) / 0 (src) buffer.
std::tuple<Tensor, Tensor> random2d_split_cpu(const Tensor& rand_idx_, int64_t h, int64_t w, int64_t sx,
                                              int64_t sy) {
  const SplitDims sd = check_random2d_split_args(rand_idx_, h, w, sx, sy);
  check_device_type(rand_idx_, c10::DeviceType::CPU, "rand_idx");
  const int64_t hsy = sd.hsy, wsx = sd.wsx;
  const Tensor rand_idx = rand_idx_.contiguous();
  const int64_t* ri = rand_idx.const_data_ptr<int64_t>();
  std::vector<std::pair<int64_t, int64_t>> buf(h * w);
  for (int64_t i = 0; i < h * w; ++i) buf[i] = {0, i};
  for (int64_t cy = 0; cy < hsy; ++cy)
    for (int64_t cx = 0; cx < wsx; ++cx) {
      const int64_t k = ri[cy * wsx + cx];
      TORCH_CHECK_VALUE(k >= 0 && k < sx * sy, "rand_idx[", cy, ", ", cx, "] = ", k, " is out of range [0, ",
                        sx * sy, ")");
      buf[(cy * sy + k / sx) * w + cx * sx + k % sx].first = -1;
    }
  std::sort(buf.begin(), buf.end(), AscByKey());
  const int64_t nd = hsy * wsx;
  auto opts = rand_idx.options();
  Tensor a = at::empty({h * w - nd}, opts), bb = at::empty({nd}, opts);
  for (int64_t i = 0; i < nd; ++i) bb.mutable_data_ptr<int64_t>()[i] = buf[i].second;
  for (int64_t i = nd; i < h * w; ++i) a.mutable_data_ptr<int64_t>()[i - nd] = buf[i].second;
  return {a, bb};
}

// ---------------------------------------------------------------------------------------------------------
// plan application
// ---------------------------------------------------------------------------------------------------------
// A checked plan, the CSR of each destination's sources (in plan order) and the view the loops walk.
struct Plan : CheckedPlan {
  std::vector<int64_t> off, lst;  // moved with the plan (the view's pointers stay valid)
  PlanView<int64_t> v;

  // calls f(token) for every member of output row `row` of batch b; returns the number of merged sources
  template <typename F>
  int64_t for_members(int64_t b, int64_t row, F&& f) const {
    const int64_t n = v.n_members(b, row);
    for (int64_t m = 0; m < n; ++m) f(v.member(b, row, m));
    return n - 1;
  }
  int64_t count(int64_t b, int64_t row) const { return v.n_members(b, row) - 1; }

  // f(q, b, row) for every output row q = b * tout + row, in parallel (tasks of about 4096 elements of C each)
  template <typename F>
  void for_each_row(int64_t C, F&& f) const {
    const int64_t tout = d.tout();
    at::parallel_for(0, d.B * tout, std::max<int64_t>(1, 4096 / std::max<int64_t>(1, C)), [&](int64_t q0, int64_t q1) {
      for (int64_t q = q0; q < q1; ++q) f(q, q / tout, q % tout);
    });
  }
  // the same with C scratch values of type S per task: f(q, b, row, scratch)
  template <typename S, typename F>
  void for_each_row(int64_t C, F&& f) const {
    const int64_t tout = d.tout();
    at::parallel_for(0, d.B * tout, std::max<int64_t>(1, 4096 / std::max<int64_t>(1, C)), [&](int64_t q0, int64_t q1) {
      std::vector<S> scratch(C);
      for (int64_t q = q0; q < q1; ++q) f(q, q / tout, q % tout, scratch.data());
    });
  }
};

// Build and validate a plan. T >= 0: tokens of x; otherwise merged_rows resolves the ToMe layout of y.
Plan make_plan(const Tensor& src_idx, const Tensor& dst_idx, const Tensor& unm_idx,
               const c10::optional<Tensor>& a_idx, const c10::optional<Tensor>& b_idx, bool distill,
               int64_t T, int64_t merged_rows) {
  Plan p;
  static_cast<CheckedPlan&>(p) = checked_plan(src_idx, dst_idx, unm_idx, a_idx, b_idx, distill, T, merged_rows);
  check_device_type(src_idx, c10::DeviceType::CPU, "src_idx");
  const int64_t B = p.d.B, r = p.d.r, Nb = p.d.Nb;
  const int64_t* dst = p.dst.const_data_ptr<int64_t>();
  p.off.assign(B * (Nb + 1), 0);
  p.lst.resize(B * r);
  for (int64_t b = 0; b < B; ++b) {
    int64_t* o = p.off.data() + b * (Nb + 1);
    const int64_t* db = dst + b * r;
    for (int64_t k = 0; k < r; ++k) ++o[db[k] + 1];
    for (int64_t j = 0; j < Nb; ++j) o[j + 1] += o[j];
    std::vector<int64_t> fill(o, o + Nb);
    for (int64_t k = 0; k < r; ++k) p.lst[b * r + fill[db[k]]++] = k;
  }
  p.v = p.view(p.off.data(), p.lst.data());
  return p;
}

Tensor apply_cpu(const Tensor& x_, const Tensor& src_idx, const Tensor& dst_idx, const Tensor& unm_idx,
                 const c10::optional<Tensor>& a_idx, const c10::optional<Tensor>& b_idx, c10::string_view mode,
                 bool distill_token) {
  const int mc = mode_code(mode);
  check_floating(x_, "x");
  check_dim(x_, 3, "x");
  check_device_type(x_, c10::DeviceType::CPU, "x");
  Plan p = make_plan(src_idx, dst_idx, unm_idx, a_idx, b_idx, distill_token, x_.size(1), 0);
  TORCH_CHECK_VALUE(x_.size(0) == p.d.B, "x.shape[0] must be the plan's batch ", p.d.B, ", got shape ", x_.sizes());
  const Tensor x = x_.contiguous();
  const int64_t C = x.size(2), T = p.d.T, tout = p.d.tout();
  Tensor out = at::empty({p.d.B, tout, C}, x.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(c10::kHalf, c10::kBFloat16, x.scalar_type(), "merge_apply", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    scalar_t* op = out.mutable_data_ptr<scalar_t>();
    p.for_each_row<acc_t>(C, [&](int64_t q, int64_t b, int64_t row, acc_t* acc) {
      const scalar_t* xb = xp + b * T * C;
      bool first = true;
      const int64_t n = p.for_members(b, row, [&](int64_t t) {
        const scalar_t* xr = xb + t * C;
        if (first) {
          for (int64_t c = 0; c < C; ++c) acc[c] = acc_t(xr[c]);
          first = false;
        } else if (mc == 2) {
          for (int64_t c = 0; c < C; ++c) {
            const acc_t v = acc_t(xr[c]);
            acc[c] = (v > acc[c] || is_nan(v)) ? (is_nan(acc[c]) ? acc[c] : v) : acc[c];
          }
        } else {
          for (int64_t c = 0; c < C; ++c) acc[c] += acc_t(xr[c]);
        }
      });
      scalar_t* orow = op + q * C;
      if (mc == 1) {
        const acc_t cnt = acc_t(n + 1);
        for (int64_t c = 0; c < C; ++c) orow[c] = scalar_t(acc[c] / cnt);
      } else {
        for (int64_t c = 0; c < C; ++c) orow[c] = scalar_t(acc[c]);
      }
    });
  });
  return out;
}

Tensor apply_backward_cpu(const Tensor& grad_, const Tensor& x_, const Tensor& out_, const Tensor& src_idx,
                          const Tensor& dst_idx, const Tensor& unm_idx, const c10::optional<Tensor>& a_idx,
                          const c10::optional<Tensor>& b_idx, c10::string_view mode, bool distill_token) {
  const int mc = mode_code(mode);
  check_floating(x_, "x");
  check_dim(x_, 3, "x");
  check_device_type(x_, c10::DeviceType::CPU, "x");
  Plan p = make_plan(src_idx, dst_idx, unm_idx, a_idx, b_idx, distill_token, x_.size(1), 0);
  const int64_t C = x_.size(2), T = p.d.T, tout = p.d.tout();
  TORCH_CHECK_VALUE(grad_.dim() == 3 && grad_.size(0) == p.d.B && grad_.size(1) == tout && grad_.size(2) == C,
                    "grad must have shape [", p.d.B, ", ", tout, ", ", C, "], got ", grad_.sizes());
  check_same_dtype(grad_, "grad", x_, "x");
  if (mc == 2) {
    TORCH_CHECK_VALUE(out_.sizes() == grad_.sizes(), "out must have the shape of grad ", grad_.sizes(), ", got ",
                      out_.sizes());
    check_same_dtype(out_, "out", x_, "x");
  }
  const Tensor g = grad_.contiguous(), x = x_.contiguous();
  const Tensor o = mc == 2 ? out_.contiguous() : out_;
  Tensor gx = at::empty({p.d.B, T, C}, x.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(c10::kHalf, c10::kBFloat16, x.scalar_type(), "merge_apply_backward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* gp = g.const_data_ptr<scalar_t>();
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const scalar_t* opp = mc == 2 ? o.const_data_ptr<scalar_t>() : nullptr;
    scalar_t* gxp = gx.mutable_data_ptr<scalar_t>();
    p.for_each_row<int64_t>(C, [&](int64_t q, int64_t b, int64_t row, int64_t* ties) {
      const scalar_t* grow = gp + q * C;
      scalar_t* gxb = gxp + b * T * C;
      if (mc == 2) {
        const scalar_t* orow = opp + q * C;
        const scalar_t* xb = xp + b * T * C;
        std::fill(ties, ties + C, 0);
        p.for_members(b, row, [&](int64_t t) {
          for (int64_t c = 0; c < C; ++c) ties[c] += (xb[t * C + c] == orow[c]);
        });
        p.for_members(b, row, [&](int64_t t) {
          for (int64_t c = 0; c < C; ++c)
            gxb[t * C + c] = xb[t * C + c] == orow[c] ? scalar_t(acc_t(grow[c]) / acc_t(ties[c])) : scalar_t(0);
        });
      } else {
        const acc_t inv = mc == 1 ? acc_t(1) / acc_t(p.count(b, row) + 1) : acc_t(1);
        p.for_members(b, row, [&](int64_t t) {
          scalar_t* dstp = gxb + t * C;
          if (mc == 1) {
            for (int64_t c = 0; c < C; ++c) dstp[c] = scalar_t(acc_t(grow[c]) * inv);
          } else {
            for (int64_t c = 0; c < C; ++c) dstp[c] = grow[c];
          }
        });
      }
    });
  });
  return gx;
}

std::tuple<Tensor, Tensor> wavg_cpu(const Tensor& x_, const c10::optional<Tensor>& size_, const Tensor& src_idx,
                                    const Tensor& dst_idx, const Tensor& unm_idx, const c10::optional<Tensor>& a_idx,
                                    const c10::optional<Tensor>& b_idx, bool distill_token) {
  check_floating(x_, "x");
  check_dim(x_, 3, "x");
  check_device_type(x_, c10::DeviceType::CPU, "x");
  Plan p = make_plan(src_idx, dst_idx, unm_idx, a_idx, b_idx, distill_token, x_.size(1), 0);
  TORCH_CHECK_VALUE(x_.size(0) == p.d.B, "x.shape[0] must be the plan's batch ", p.d.B, ", got shape ", x_.sizes());
  const auto size_opt = defined_or_none(size_);
  const int64_t C = x_.size(2), T = p.d.T, tout = p.d.tout();
  Tensor size;
  if (size_opt.has_value()) {
    check_same_dtype(*size_opt, "size", x_, "x");
    TORCH_CHECK_VALUE(size_opt->dim() == 3 && size_opt->size(0) == p.d.B && size_opt->size(1) == T &&
                          size_opt->size(2) == 1,
                      "size must have shape [", p.d.B, ", ", T, ", 1], got ", size_opt->sizes());
    size = size_opt->contiguous();
  }
  const Tensor x = x_.contiguous();
  Tensor out = at::empty({p.d.B, tout, C}, x.options());
  Tensor out_size = at::empty({p.d.B, tout, 1}, x.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(c10::kHalf, c10::kBFloat16, x.scalar_type(), "merge_wavg", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const scalar_t* sp = size.defined() ? size.const_data_ptr<scalar_t>() : nullptr;
    scalar_t* op = out.mutable_data_ptr<scalar_t>();
    scalar_t* osp = out_size.mutable_data_ptr<scalar_t>();
    p.for_each_row<acc_t>(C, [&](int64_t q, int64_t b, int64_t row, acc_t* acc) {
      const scalar_t* xb = xp + b * T * C;
      bool first = true;
      acc_t ss = 0;
      p.for_members(b, row, [&](int64_t t) {
        const scalar_t* xr = xb + t * C;
        const scalar_t s = sp ? sp[b * T + t] : scalar_t(1);
        if (first) {  // x * size is a scalar_t tensor in the reference: round the products
          for (int64_t c = 0; c < C; ++c) acc[c] = acc_t(scalar_t(acc_t(xr[c]) * acc_t(s)));
          ss = acc_t(s);
          first = false;
        } else {
          for (int64_t c = 0; c < C; ++c) acc[c] += acc_t(scalar_t(acc_t(xr[c]) * acc_t(s)));
          ss += acc_t(s);
        }
      });
      scalar_t* orow = op + q * C;
      const scalar_t ssr = scalar_t(ss);
      for (int64_t c = 0; c < C; ++c) orow[c] = scalar_t(acc_t(scalar_t(acc[c])) / acc_t(ssr));
      osp[q] = ssr;
    });
  });
  return {out, out_size};
}

std::tuple<Tensor, Tensor> wavg_backward_cpu(const Tensor& grad_x_, const c10::optional<Tensor>& grad_size_,
                                             const Tensor& x_, const c10::optional<Tensor>& size_,
                                             const Tensor& out_x_, const Tensor& out_size_, const Tensor& src_idx,
                                             const Tensor& dst_idx, const Tensor& unm_idx,
                                             const c10::optional<Tensor>& a_idx, const c10::optional<Tensor>& b_idx,
                                             bool distill_token) {
  check_floating(x_, "x");
  check_dim(x_, 3, "x");
  check_device_type(x_, c10::DeviceType::CPU, "x");
  Plan p = make_plan(src_idx, dst_idx, unm_idx, a_idx, b_idx, distill_token, x_.size(1), 0);
  const int64_t B = p.d.B, C = x_.size(2), T = p.d.T, tout = p.d.tout();
  TORCH_CHECK_VALUE(grad_x_.dim() == 3 && grad_x_.size(0) == B && grad_x_.size(1) == tout && grad_x_.size(2) == C,
                    "grad_x must have shape [", B, ", ", tout, ", ", C, "], got ", grad_x_.sizes());
  TORCH_CHECK_VALUE(out_x_.sizes() == grad_x_.sizes(), "out_x must have shape ", grad_x_.sizes(), ", got ",
                    out_x_.sizes());
  TORCH_CHECK_VALUE(out_size_.numel() == B * tout, "out_size must have shape [", B, ", ", tout, ", 1], got ",
                    out_size_.sizes());
  const auto gs_opt = defined_or_none(grad_size_);
  const auto size_opt = defined_or_none(size_);
  if (gs_opt.has_value())
    TORCH_CHECK_VALUE(gs_opt->numel() == B * tout, "grad_size must have shape [", B, ", ", tout, ", 1], got ",
                      gs_opt->sizes());
  if (size_opt.has_value())
    TORCH_CHECK_VALUE(size_opt->numel() == B * T, "size must have shape [", B, ", ", T, ", 1], got ",
                      size_opt->sizes());
  for (const Tensor* t : {&grad_x_, &out_x_, &out_size_}) check_same_dtype(*t, "grad_x/out_x/out_size", x_, "x");
  const Tensor g = grad_x_.contiguous(), x = x_.contiguous(), y = out_x_.contiguous(), ys = out_size_.contiguous();
  const Tensor gs = gs_opt.has_value() ? gs_opt->to(x.scalar_type()).contiguous() : Tensor();
  const Tensor s = size_opt.has_value() ? size_opt->contiguous() : Tensor();
  Tensor gx = at::empty({B, T, C}, x.options());
  Tensor gsz = at::empty({B, T, 1}, x.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(c10::kHalf, c10::kBFloat16, x.scalar_type(), "merge_wavg_backward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t *gp = g.const_data_ptr<scalar_t>(), *xp = x.const_data_ptr<scalar_t>(),
                   *yp = y.const_data_ptr<scalar_t>(), *ysp = ys.const_data_ptr<scalar_t>();
    const scalar_t* gsp = gs.defined() ? gs.const_data_ptr<scalar_t>() : nullptr;
    const scalar_t* sp = s.defined() ? s.const_data_ptr<scalar_t>() : nullptr;
    scalar_t* gxp = gx.mutable_data_ptr<scalar_t>();
    scalar_t* gszp = gsz.mutable_data_ptr<scalar_t>();
    p.for_each_row(C, [&](int64_t q, int64_t b, int64_t row) {
      const scalar_t* grow = gp + q * C;
      const scalar_t* yrow = yp + q * C;
      const acc_t inv = acc_t(1) / acc_t(ysp[q]);
      const acc_t gsr = gsp ? acc_t(gsp[q]) : acc_t(0);
      p.for_members(b, row, [&](int64_t t) {
        const acc_t st = sp ? acc_t(sp[b * T + t]) : acc_t(1);
        const scalar_t* xr = xp + (b * T + t) * C;
        scalar_t* gxr = gxp + (b * T + t) * C;
        acc_t dot = 0;
        for (int64_t c = 0; c < C; ++c) {
          const acc_t gc = acc_t(grow[c]);
          gxr[c] = scalar_t(gc * st * inv);
          dot += gc * (acc_t(xr[c]) - acc_t(yrow[c]));
        }
        gszp[b * T + t] = scalar_t(dot * inv + gsr);
      });
    });
  });
  return {gx, gsz};
}

Tensor unmerge_cpu(const Tensor& y_, const Tensor& src_idx, const Tensor& dst_idx, const Tensor& unm_idx,
                   const c10::optional<Tensor>& a_idx, const c10::optional<Tensor>& b_idx) {
  check_floating(y_, "y");
  check_dim(y_, 3, "y");
  check_device_type(y_, c10::DeviceType::CPU, "y");
  Plan p = make_plan(src_idx, dst_idx, unm_idx, a_idx, b_idx, false, -1, y_.size(1));
  TORCH_CHECK_VALUE(y_.size(0) == p.d.B, "y.shape[0] must be the plan's batch ", p.d.B, ", got shape ", y_.sizes());
  const Tensor y = y_.contiguous();
  const int64_t C = y.size(2), T = p.d.T;
  // make_plan checked that every token belongs to exactly one output row: each is written once
  Tensor out = at::empty({p.d.B, T, C}, y.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(c10::kHalf, c10::kBFloat16, y.scalar_type(), "merge_unmerge", [&] {
    const scalar_t* yp = y.const_data_ptr<scalar_t>();
    scalar_t* op = out.mutable_data_ptr<scalar_t>();
    p.for_each_row(C, [&](int64_t q, int64_t b, int64_t row) {
      const scalar_t* yr = yp + q * C;
      p.for_members(b, row, [&](int64_t t) { std::copy(yr, yr + C, op + (b * T + t) * C); });
    });
  });
  return out;
}

}  // namespace
}  // namespace merge
}  // namespace imtok

TORCH_LIBRARY_IMPL(imtok_cuda, CPU, m) {
  m.impl("merge_tome_match", &imtok::merge::tome_match_cpu);
  m.impl("merge_random2d_split", &imtok::merge::random2d_split_cpu);
  m.impl("merge_random2d_match", &imtok::merge::random2d_match_cpu);
  m.impl("merge_apply", &imtok::merge::apply_cpu);
  m.impl("merge_apply_backward", &imtok::merge::apply_backward_cpu);
  m.impl("merge_wavg", &imtok::merge::wavg_cpu);
  m.impl("merge_wavg_backward", &imtok::merge::wavg_backward_cpu);
  m.impl("merge_unmerge", &imtok::merge::unmerge_cpu);
}
