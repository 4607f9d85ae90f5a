// CPU kernels of attention_forward / attention_backward: blocked flash-style attention that never stores the
// Nq x Nk scores. Work items are (segment, head, query block) (forward, dq) or (segment, head, key block)
// (column sums, dk/dv/dbias); each is independent, so at::parallel_for splits them and the result does not
// depend on the thread count. Score tiles S = Q K^T and the P V / dS K / P^T dO / dS^T Q products are BLAS
// calls on small tiles (at::native::cpublas::gemm, raw pointers); the row work (bias, mask, online softmax)
// is in attention_cpu_vec.h. Half inputs are converted to fp32 once (O(N d)), computed in fp32, rounded once.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "attention/attention_common.h"
#include "attention/attention_cpu_vec.h"
#include "common/cpu_blas.h"

namespace imtok {
namespace attention {
namespace {

constexpr int64_t kQueryBlock = 64;     // rows of a query block (forward, dq)
constexpr int64_t kKeyBlock = 64;       // keys of a key block (col sums, dk/dv)
constexpr int64_t kSingleChunk = 1024;  // up to this many keys the forward does one exact pass per query block
constexpr int64_t kKeyChunk = 512;      // otherwise, keys per online-softmax step
constexpr int64_t kQueryChunk = 256;    // queries per step of the key-block passes
constexpr int64_t kBackwardTile = 32768;  // elements of one score tile of the single-pass backward

using cpu_blas::gemm;
using cpu_blas::NT;
using cpu_blas::SingleThreadBlas;
using cpu_blas::TT;

// Row-major S[M][n] = alpha * Q[M][d] K[n][d]^T
template <typename T>
inline void scores(const T* Q, const T* K, int64_t M, int64_t n, int64_t d, T alpha, T* S) {
  gemm<T>(TT, NT, n, M, d, alpha, K, d, Q, d, T(0), S, n);
}
// Row-major O[M][d] = beta O + alpha P[M][n] V[n][d]
template <typename T>
inline void pv(const T* P, const T* V, int64_t M, int64_t n, int64_t d, T alpha, T beta, T* O) {
  gemm<T>(NT, NT, d, M, n, alpha, V, d, P, n, beta, O, d);
}
// Row-major G[n][d] += alpha P[M][n]^T X[M][d]
template <typename T>
inline void ptx(const T* P, const T* X, int64_t M, int64_t n, int64_t d, T alpha, T* G) {
  gemm<T>(NT, TT, d, n, M, alpha, X, d, P, n, T(1), G, d);
}

// Work items (segment, head, block), blocks innermost: a thread's consecutive items share the head's K / V
// (or Q / dO) in cache.
struct Task {
  int32_t seg;
  int32_t h;
  int64_t start;  // first query (or key) of the block, segment-local
};

inline std::vector<Task> make_tasks(const Problem& p, bool over_queries, int64_t block) {
  std::vector<Task> t;
  for (size_t s = 0; s < p.segs.size(); ++s) {
    const int64_t n = over_queries ? p.segs[s].nq : p.segs[s].nk;
    for (int64_t h = 0; h < p.H; ++h)
      for (int64_t x = 0; x < n; x += block) t.push_back({static_cast<int32_t>(s), static_cast<int32_t>(h), x});
  }
  return t;
}

inline int64_t grain_for(int64_t ntasks) { return std::max<int64_t>(1, ntasks / (8 * at::get_num_threads())); }

template <typename T>
struct Tensors {
  const T *q = nullptr, *k = nullptr, *v = nullptr, *add = nullptr;
};

// ---- forward -------------------------------------------------------------------------------------
template <typename T>
struct FwdScratch {
  std::vector<T> S, O, m, l;
  FwdScratch(int64_t chunk, int64_t d) : S(kQueryBlock * chunk), O(kQueryBlock * d), m(kQueryBlock), l(kQueryBlock) {}
};

// One query block [q0, q0 + M) of segment sg, head h: online softmax over key chunks, writes out and lse.
// When fuse_col / fuse_cls are set (only with one key chunk, where S holds the final unnormalised p after the
// loop), the block also adds its rows' probabilities to col (rows in [col_lo, col_hi)) and writes the CLS row.
template <typename T>
void forward_block(const Problem& p, const Tensors<T>& in, const Segment& sg, int64_t h, int64_t q0, int64_t chunk,
                   FwdScratch<T>& sc, T* out, T* lse, T* col, int64_t col_lo, int64_t col_hi, T* cls) {
  const int64_t H = p.H, Nq = p.Nq, Nk = p.Nk, d = p.d;
  const T scale = static_cast<T>(p.scale);
  const int64_t M = std::min(kQueryBlock, sg.nq - q0);
  const int64_t bh = sg.b * H + h;
  const T* Q = in.q + (bh * Nq + sg.qo + q0) * d;
  const T* K = in.k + (bh * Nk + sg.ko) * d;
  const T* V = in.v + (bh * Nk + sg.ko) * d;
  const T* add = in.add ? in.add + sg.b * Nk + sg.ko : nullptr;
  T* O = sc.O.data();
  T* m = sc.m.data();
  T* l = sc.l.data();
  T* Sp = sc.S.data();
  std::fill(O, O + M * d, T(0));
  std::fill(m, m + M, rowk::neg_inf<T>());
  std::fill(l, l + M, T(0));
  const int64_t kend = p.causal.visible(q0 + M - 1, sg.nq, sg.nk);
  int64_t last_n = 0;
  for (int64_t k0 = 0; k0 < kend; k0 += chunk) {
    const int64_t n = std::min(chunk, kend - k0);
    last_n = n;
    scores<T>(Q, K + k0 * d, M, n, d, scale, Sp);
    for (int64_t r = 0; r < M; ++r) {
      T* srow = Sp + r * n;
      const int64_t nvalid =
          std::max<int64_t>(0, std::min<int64_t>(n, p.causal.visible(q0 + r, sg.nq, sg.nk) - k0));
      if (std::isnan(l[r])) {  // poisoned by an earlier chunk
        std::fill(srow, srow + n, T(0));
        continue;
      }
      T mx = rowk::add_mask_max<T>(srow, add ? add + k0 : nullptr, nvalid, n);
      if (rowk::fix_nonfinite<T>(srow, add ? add + k0 : nullptr, nvalid, &mx)) {  // NaN / +inf score: poisoned
        l[r] = std::numeric_limits<T>::quiet_NaN();
        std::fill(srow, srow + n, T(0));
        continue;
      }
      const T mnew = std::max(m[r], mx);
      if (mnew == rowk::neg_inf<T>()) {
        std::fill(srow, srow + n, T(0));
        continue;
      }
      const T alpha = m[r] == rowk::neg_inf<T>() ? T(0) : std::exp(m[r] - mnew);
      const T rs = rowk::exp_sub_sum<T>(srow, n, mnew);
      if (alpha != T(1)) {
        T* orow = O + r * d;
        for (int64_t c = 0; c < d; ++c) orow[c] *= alpha;
      }
      l[r] = l[r] * alpha + rs;
      m[r] = mnew;
    }
    pv<T>(Sp, V + k0 * d, M, n, d, T(1), T(1), O);
  }
  T* out_p = out + (bh * Nq + sg.qo + q0) * d;
  T* lse_p = lse + bh * Nq + sg.qo + q0;
  for (int64_t r = 0; r < M; ++r) {
    if (std::isnan(l[r])) {
      for (int64_t c = 0; c < d; ++c) out_p[r * d + c] = std::numeric_limits<T>::quiet_NaN();
      lse_p[r] = std::numeric_limits<T>::quiet_NaN();
    } else if (l[r] > T(0)) {
      const T inv = T(1) / l[r];
      for (int64_t c = 0; c < d; ++c) out_p[r * d + c] = O[r * d + c] * inv;
      lse_p[r] = m[r] + std::log(l[r]);
    } else {
      for (int64_t c = 0; c < d; ++c) out_p[r * d + c] = T(0);
      lse_p[r] = rowk::neg_inf<T>();
    }
  }
  // fused side outputs (single key chunk: kend <= chunk, S = p * l for the keys [0, last_n))
  if (cls && q0 == 0 && M > 0 && l[0] > T(0)) {
    T* crow = cls + bh * Nk + sg.ko;
    const T inv = T(1) / l[0];
    for (int64_t j = 0; j < last_n; ++j) crow[j] = Sp[j] * inv;
  } else if (cls && q0 == 0 && M > 0 && std::isnan(l[0])) {
    rowk::poisoned_probs<T>(add, p.causal.visible(0, sg.nq, sg.nk), sg.nk, cls + bh * Nk + sg.ko, false);
  }
  if (col) {
    T* c = col + bh * Nk + sg.ko;
    const int64_t r0 = std::max<int64_t>(col_lo - q0, 0), r1 = std::min<int64_t>(col_hi - q0, M);
    for (int64_t r = r0; r < r1; ++r) {
      if (std::isnan(l[r])) {
        rowk::poisoned_probs<T>(add, p.causal.visible(q0 + r, sg.nq, sg.nk), sg.nk, c, true);
        continue;
      }
      if (!(l[r] > T(0))) continue;
      const T inv = T(1) / l[r];
      const T* srow = Sp + r * last_n;
      for (int64_t j = 0; j < last_n; ++j) c[j] += srow[j] * inv;
    }
  }
}

// Fused side outputs need one key chunk per query block and enough (segment, head) items to keep every
// thread busy while each item runs its query blocks in order (the column sums then accumulate in a fixed
// order: deterministic). The choice depends only on the shapes, never on the thread count.
inline bool use_fused_side_outputs(const Problem& p) {
  return p.max_nk <= kSingleChunk && static_cast<int64_t>(p.segs.size()) * p.H >= 32;
}

// col / cls: null unless requested and fused (use_fused_side_outputs); both must be zero-filled.
template <typename T>
void forward_kernel(const Problem& p, const Tensors<T>& in, T* out, T* lse, T* col, int64_t start, int64_t end,
                    T* cls) {
  const int64_t H = p.H, d = p.d;
  const int64_t chunk = p.max_nk <= kSingleChunk ? std::max<int64_t>(p.max_nk, 1) : kKeyChunk;
  if (col || cls) {
    TORCH_INTERNAL_ASSERT(use_fused_side_outputs(p));
    const int64_t n_items = static_cast<int64_t>(p.segs.size()) * H;
    at::parallel_for(0, n_items, grain_for(n_items), [&](int64_t begin, int64_t end_it) {
      SingleThreadBlas single_thread_blas;
      FwdScratch<T> sc(chunk, d);
      for (int64_t it = begin; it < end_it; ++it) {
        const Segment& sg = p.segs[it / H];
        int64_t lo, hi;
        col_range(start, end, sg.nq, &lo, &hi);
        for (int64_t q0 = 0; q0 < sg.nq; q0 += kQueryBlock)
          forward_block<T>(p, in, sg, it % H, q0, chunk, sc, out, lse, col, lo, hi, cls);
      }
    });
    return;
  }
  const std::vector<Task> tasks = make_tasks(p, true, kQueryBlock);
  const int64_t n_items = static_cast<int64_t>(tasks.size());
  at::parallel_for(0, n_items, grain_for(n_items), [&](int64_t begin, int64_t end_it) {
    SingleThreadBlas single_thread_blas;
    FwdScratch<T> sc(chunk, d);
    for (int64_t it = begin; it < end_it; ++it) {
      const Task& tk = tasks[it];
      forward_block<T>(p, in, p.segs[tk.seg], tk.h, tk.start, chunk, sc, out, lse, nullptr, 0, 0, nullptr);
    }
  });
}

// CLS row: p_0j = exp(scale q_0 . k_j + add_j - lse_0) for every segment and head. cls: [B, H, Nk].
template <typename T>
void cls_kernel(const Problem& p, const Tensors<T>& in, const T* lse, T* cls) {
  const int64_t H = p.H, Nq = p.Nq, Nk = p.Nk, d = p.d;
  const T scale = static_cast<T>(p.scale);
  const int64_t n_items = static_cast<int64_t>(p.segs.size()) * H;
  at::parallel_for(0, n_items, grain_for(n_items), [&](int64_t begin, int64_t end) {
    SingleThreadBlas single_thread_blas;
    for (int64_t it = begin; it < end; ++it) {
      const Segment& sg = p.segs[it / H];
      const int64_t h = it % H, bh = sg.b * H + h;
      T* row = cls + bh * Nk + sg.ko;
      const T l0 = sg.nq > 0 ? lse[bh * Nq + sg.qo] : rowk::neg_inf<T>();
      const int64_t nvalid = p.causal.visible(0, sg.nq, sg.nk);
      const T* add = in.add ? in.add + sg.b * Nk + sg.ko : nullptr;
      if (std::isnan(l0)) {  // poisoned CLS row
        rowk::poisoned_probs<T>(add, nvalid, sg.nk, row, false);
        continue;
      }
      if (!(l0 > rowk::neg_inf<T>())) {
        std::fill(row, row + sg.nk, T(0));
        continue;
      }
      const T* q0 = in.q + (bh * Nq + sg.qo) * d;
      const T* K = in.k + (bh * Nk + sg.ko) * d;
      scores<T>(q0, K, 1, sg.nk, d, scale, row);
      rowk::zero_masked_scores<T>(row, add, nvalid);
      std::vector<T> tmp(sg.nk, T(0));
      rowk::exp_accum<T>(row, add, nvalid, l0, tmp.data());
      std::copy(tmp.begin(), tmp.end(), row);
    }
  });
}

// Column sums over the queries [lo, hi) of each segment: one item per (segment, head, key block); the query
// loop inside runs in a fixed order, so the sums are deterministic. col: [B, H, Nk].
template <typename T>
void colsum_kernel(const Problem& p, const Tensors<T>& in, const T* lse, int64_t start, int64_t end, T* col) {
  const int64_t H = p.H, Nq = p.Nq, Nk = p.Nk, d = p.d;
  const T scale = static_cast<T>(p.scale);
  const std::vector<Task> tasks = make_tasks(p, false, kKeyBlock);
  const int64_t n_items = static_cast<int64_t>(tasks.size());
  at::parallel_for(0, n_items, grain_for(n_items), [&](int64_t begin, int64_t end_it) {
    SingleThreadBlas single_thread_blas;
    std::vector<T> S(kQueryChunk * kKeyBlock);
    for (int64_t it = begin; it < end_it; ++it) {
      const Task& tk = tasks[it];
      const int64_t h = tk.h;
      const Segment& sg = p.segs[tk.seg];
      const int64_t k0 = tk.start, nkb = std::min(kKeyBlock, sg.nk - k0), bh = sg.b * H + h;
      T* c = col + bh * Nk + sg.ko + k0;
      std::fill(c, c + nkb, T(0));
      int64_t lo, hi;
      col_range(start, end, sg.nq, &lo, &hi);
      lo = std::max<int64_t>(lo, p.causal.first_query(k0, sg.nq, sg.nk));  // earlier queries see none of these keys
      const T* K = in.k + (bh * Nk + sg.ko + k0) * d;
      const T* add = in.add ? in.add + sg.b * Nk + sg.ko + k0 : nullptr;
      for (int64_t i0 = lo; i0 < hi; i0 += kQueryChunk) {
        const int64_t nqc = std::min(kQueryChunk, hi - i0);
        const T* Q = in.q + (bh * Nq + sg.qo + i0) * d;
        scores<T>(Q, K, nqc, nkb, d, scale, S.data());
        for (int64_t r = 0; r < nqc; ++r) {
          const T l = lse[bh * Nq + sg.qo + i0 + r];
          const int64_t nvalid =
              std::max<int64_t>(0, std::min<int64_t>(nkb, p.causal.visible(i0 + r, sg.nq, sg.nk) - k0));
          if (std::isnan(l)) {  // a poisoned query row: NaN into every column it sees
            rowk::poisoned_probs<T>(add, nvalid, nkb, c, true);
            continue;
          }
          if (!(l > rowk::neg_inf<T>())) continue;
          rowk::zero_masked_scores<T>(S.data() + r * nkb, add, nvalid);
          rowk::exp_accum<T>(S.data() + r * nkb, add, nvalid, l, c);
        }
      }
    }
  });
}

// ---- backward ------------------------------------------------------------------------------------
// Dv[i] = sum_c dO[i, c] O[i, c] - dlse[i]; dS_ij = P_ij (dP_ij - Dv_i), dP = dO V^T.
template <typename T>
void backward_dq_kernel(const Problem& p, const Tensors<T>& in, const T* dout, const T* lse, const T* Dv, T* dq) {
  const int64_t H = p.H, Nq = p.Nq, Nk = p.Nk, d = p.d;
  const T scale = static_cast<T>(p.scale);
  const std::vector<Task> tasks = make_tasks(p, true, kQueryBlock);
  const int64_t n_items = static_cast<int64_t>(tasks.size());
  at::parallel_for(0, n_items, grain_for(n_items), [&](int64_t begin, int64_t end) {
    SingleThreadBlas single_thread_blas;
    std::vector<T> S(kQueryBlock * kKeyChunk), dP(kQueryBlock * kKeyChunk);
    for (int64_t it = begin; it < end; ++it) {
      const Task& tk = tasks[it];
      const int64_t h = tk.h;
      const Segment& sg = p.segs[tk.seg];
      const int64_t q0 = tk.start, M = std::min(kQueryBlock, sg.nq - q0), bh = sg.b * H + h;
      const int64_t row0 = bh * Nq + sg.qo + q0;
      const T* Q = in.q + row0 * d;
      const T* dO = dout + row0 * d;
      const T* K = in.k + (bh * Nk + sg.ko) * d;
      const T* V = in.v + (bh * Nk + sg.ko) * d;
      const T* add = in.add ? in.add + sg.b * Nk + sg.ko : nullptr;
      T* dQ = dq + row0 * d;
      std::fill(dQ, dQ + M * d, T(0));
      const int64_t kend = p.causal.visible(q0 + M - 1, sg.nq, sg.nk);
      for (int64_t k0 = 0; k0 < kend; k0 += kKeyChunk) {
        const int64_t n = std::min(kKeyChunk, kend - k0);
        scores<T>(Q, K + k0 * d, M, n, d, scale, S.data());
        scores<T>(dO, V + k0 * d, M, n, d, T(1), dP.data());
        for (int64_t r = 0; r < M; ++r) {
          const int64_t nvalid = std::max<int64_t>(
              0, std::min<int64_t>(n, p.causal.visible(q0 + r, sg.nq, sg.nk) - k0));
          rowk::softmax_grad<T>(S.data() + r * n, nullptr, dP.data() + r * n, add ? add + k0 : nullptr, nvalid,
                                n, lse[row0 + r], Dv[row0 + r]);
        }
        pv<T>(S.data(), K + k0 * d, M, n, d, scale, T(1), dQ);
      }
    }
  });
}

// dk, dv and the per-head key-bias gradient dbh [B, H, Nk]: one item per (segment, head, key block).
template <typename T>
void backward_dkv_kernel(const Problem& p, const Tensors<T>& in, const T* dout, const T* lse, const T* Dv, T* dk,
                         T* dv, T* dbh) {
  const int64_t H = p.H, Nq = p.Nq, Nk = p.Nk, d = p.d;
  const T scale = static_cast<T>(p.scale);
  const std::vector<Task> tasks = make_tasks(p, false, kKeyBlock);
  const int64_t n_items = static_cast<int64_t>(tasks.size());
  at::parallel_for(0, n_items, grain_for(n_items), [&](int64_t begin, int64_t end) {
    SingleThreadBlas single_thread_blas;
    std::vector<T> S(kQueryChunk * kKeyBlock), P(kQueryChunk * kKeyBlock), dP(kQueryChunk * kKeyBlock);
    for (int64_t it = begin; it < end; ++it) {
      const Task& tk = tasks[it];
      const int64_t h = tk.h;
      const Segment& sg = p.segs[tk.seg];
      const int64_t k0 = tk.start, nkb = std::min(kKeyBlock, sg.nk - k0), bh = sg.b * H + h;
      const int64_t key0 = bh * Nk + sg.ko + k0;
      const T* K = in.k + key0 * d;
      const T* V = in.v + key0 * d;
      const T* add = in.add ? in.add + sg.b * Nk + sg.ko + k0 : nullptr;
      T* dK = dk + key0 * d;
      T* dV = dv + key0 * d;
      T* dB = dbh ? dbh + key0 : nullptr;
      std::fill(dK, dK + nkb * d, T(0));
      std::fill(dV, dV + nkb * d, T(0));
      if (dB) std::fill(dB, dB + nkb, T(0));
      const int64_t lo = p.causal.first_query(k0, sg.nq, sg.nk);
      for (int64_t i0 = lo; i0 < sg.nq; i0 += kQueryChunk) {
        const int64_t nqc = std::min(kQueryChunk, sg.nq - i0);
        const int64_t row0 = bh * Nq + sg.qo + i0;
        const T* Q = in.q + row0 * d;
        const T* dO = dout + row0 * d;
        scores<T>(Q, K, nqc, nkb, d, scale, S.data());
        scores<T>(dO, V, nqc, nkb, d, T(1), dP.data());
        for (int64_t r = 0; r < nqc; ++r) {
          const int64_t nvalid =
              std::max<int64_t>(0, std::min<int64_t>(nkb, p.causal.visible(i0 + r, sg.nq, sg.nk) - k0));
          rowk::softmax_grad<T>(S.data() + r * nkb, P.data() + r * nkb, dP.data() + r * nkb, add, nvalid, nkb,
                                lse[row0 + r], Dv[row0 + r]);
        }
        ptx<T>(P.data(), dO, nqc, nkb, d, T(1), dV);
        ptx<T>(S.data(), Q, nqc, nkb, d, scale, dK);
        if (dB)
          for (int64_t r = 0; r < nqc; ++r)
            for (int64_t j = 0; j < nkb; ++j) dB[j] += S[r * nkb + j];
      }
    }
  });
}

// One pass over each (segment, head): per query block and key chunk, S and dP are computed once and give dQ
// (complete per block), dK, dV and dbh (accumulated over the query blocks in order, so deterministic). 10 N^2 d
// flops against the 14 of the dq + dkv kernels above (which recompute S and dP), at the price of parallelism
// over (segment, head) items only: used when there are enough of them (use_single_pass_backward).
template <typename T>
void backward_single_pass_kernel(const Problem& p, const Tensors<T>& in, const T* dout, const T* lse, const T* Dv,
                                 T* dq, T* dk, T* dv, T* dbh) {
  const int64_t H = p.H, Nq = p.Nq, Nk = p.Nk, d = p.d;
  const T scale = static_cast<T>(p.scale);
  const int64_t chunk = std::min<int64_t>(std::max<int64_t>(p.max_nk, 1), kKeyChunk);
  // query rows per block: the S / P / dP tiles (rows x chunk each) stay within kBackwardTile elements
  const int64_t rows = std::max<int64_t>(16, kBackwardTile / chunk);
  const int64_t n_items = static_cast<int64_t>(p.segs.size()) * H;
  at::parallel_for(0, n_items, grain_for(n_items), [&](int64_t begin, int64_t end) {
    SingleThreadBlas single_thread_blas;
    std::vector<T> S(rows * chunk), P(rows * chunk), dP(rows * chunk);
    for (int64_t it = begin; it < end; ++it) {
      const Segment& sg = p.segs[it / H];
      const int64_t bh = sg.b * H + it % H;
      const T* K = in.k + (bh * Nk + sg.ko) * d;
      const T* V = in.v + (bh * Nk + sg.ko) * d;
      const T* add = in.add ? in.add + sg.b * Nk + sg.ko : nullptr;
      T* dK = dk + (bh * Nk + sg.ko) * d;
      T* dV = dv + (bh * Nk + sg.ko) * d;
      T* dB = dbh ? dbh + bh * Nk + sg.ko : nullptr;
      const int64_t nblocks = std::max<int64_t>(1, (sg.nq + rows - 1) / rows);
      const int64_t step = std::max<int64_t>(1, (sg.nq + nblocks - 1) / nblocks);  // 197 rows: 99 + 98, not 166 + 31
      for (int64_t q0 = 0; q0 < sg.nq; q0 += step) {
        const int64_t M = std::min(step, sg.nq - q0), row0 = bh * Nq + sg.qo + q0;
        const T* Q = in.q + row0 * d;
        const T* dO = dout + row0 * d;
        T* dQ = dq + row0 * d;
        std::fill(dQ, dQ + M * d, T(0));
        const int64_t kend = p.causal.visible(q0 + M - 1, sg.nq, sg.nk);
        for (int64_t k0 = 0; k0 < kend; k0 += chunk) {
          const int64_t n = std::min(chunk, kend - k0);
          scores<T>(Q, K + k0 * d, M, n, d, scale, S.data());
          scores<T>(dO, V + k0 * d, M, n, d, T(1), dP.data());
          for (int64_t r = 0; r < M; ++r) {
            const int64_t nvalid =
                std::max<int64_t>(0, std::min<int64_t>(n, p.causal.visible(q0 + r, sg.nq, sg.nk) - k0));
            rowk::softmax_grad<T>(S.data() + r * n, P.data() + r * n, dP.data() + r * n, add ? add + k0 : nullptr,
                                  nvalid, n, lse[row0 + r], Dv[row0 + r]);
          }
          pv<T>(S.data(), K + k0 * d, M, n, d, scale, T(1), dQ);
          ptx<T>(P.data(), dO, M, n, d, T(1), dV + k0 * d);
          ptx<T>(S.data(), Q, M, n, d, scale, dK + k0 * d);
          if (dB)
            for (int64_t r = 0; r < M; ++r)
              for (int64_t j = 0; j < n; ++j) dB[k0 + j] += S[r * n + j];
        }
      }
    }
  });
}

// Shape-only choice (never the thread count): the same inputs give the same bits on any machine size.
inline bool use_single_pass_backward(const Problem& p) { return static_cast<int64_t>(p.segs.size()) * p.H >= 32; }

// ---- op entry points -----------------------------------------------------------------------------
template <typename T>
Tensors<T> make_tensors(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& add) {
  Tensors<T> t;
  t.q = q.data_ptr<T>();
  t.k = k.data_ptr<T>();
  t.v = v.data_ptr<T>();
  t.add = add.defined() ? add.data_ptr<T>() : nullptr;
  return t;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> attention_forward_cpu(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const c10::optional<at::Tensor>& key_bias,
    const c10::optional<at::Tensor>& key_mask, bool causal, c10::optional<double> scale, bool return_cls_attn,
    bool return_col_sum, int64_t col_sum_start, int64_t col_sum_end, const c10::optional<at::Tensor>& cu_seqlens,
    int64_t causal_prefix) {
  check_device_type(q, c10::DeviceType::CPU, "q");
  const Problem p = check_problem(q, k, v, key_bias, key_mask, causal, causal_prefix, scale, cu_seqlens);
  check_col_range(col_sum_start, col_sum_end);
  const auto acc = p.acc_dtype;
  const auto opts = q.options().dtype(acc);
  const at::Tensor qa = q.to(acc).contiguous(), ka = k.to(acc).contiguous(), va = v.to(acc).contiguous();
  const at::Tensor add = key_additive(p, key_bias, key_mask, opts);
  at::Tensor out = at::empty({p.B, p.H, p.Nq, p.d}, opts);
  at::Tensor lse = at::full({p.B, p.H, p.Nq}, -std::numeric_limits<double>::infinity(), opts);
  at::Tensor cls = return_cls_attn ? at::zeros({p.B, p.H, p.Nk}, opts) : at::empty({0}, opts);
  at::Tensor col = return_col_sum ? at::zeros({p.B, p.H, p.Nk}, opts) : at::empty({0}, opts);
  AT_DISPATCH_FLOATING_TYPES(acc, "attention_forward_cpu", [&] {
    const Tensors<scalar_t> in = make_tensors<scalar_t>(qa, ka, va, add);
    const bool fused = (return_cls_attn || return_col_sum) && use_fused_side_outputs(p);
    forward_kernel<scalar_t>(p, in, out.data_ptr<scalar_t>(), lse.data_ptr<scalar_t>(),
                             fused && return_col_sum ? col.data_ptr<scalar_t>() : nullptr, col_sum_start, col_sum_end,
                             fused && return_cls_attn ? cls.data_ptr<scalar_t>() : nullptr);
    if (return_cls_attn && !fused) cls_kernel<scalar_t>(p, in, lse.data_ptr<scalar_t>(), cls.data_ptr<scalar_t>());
    if (return_col_sum && !fused)
      colsum_kernel<scalar_t>(p, in, lse.data_ptr<scalar_t>(), col_sum_start, col_sum_end, col.data_ptr<scalar_t>());
  });
  return {out.to(q.scalar_type()), lse, cls, col};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> attention_backward_cpu(
    const at::Tensor& grad_out, const c10::optional<at::Tensor>& grad_lse, const at::Tensor& q, const at::Tensor& k,
    const at::Tensor& v, const at::Tensor& out, const at::Tensor& lse, const c10::optional<at::Tensor>& key_bias,
    const c10::optional<at::Tensor>& key_mask, bool causal, c10::optional<double> scale,
    const c10::optional<at::Tensor>& cu_seqlens, bool need_bias_grad, int64_t causal_prefix) {
  check_device_type(q, c10::DeviceType::CPU, "q");
  const Problem p = check_problem(q, k, v, key_bias, key_mask, causal, causal_prefix, scale, cu_seqlens);
  check_backward_inputs(p, q, grad_out, grad_lse, out, lse);
  TORCH_CHECK_VALUE(!need_bias_grad || key_bias.has_value(), "need_bias_grad requires key_bias");
  const auto acc = p.acc_dtype;
  const auto opts = q.options().dtype(acc);
  const at::Tensor qa = q.to(acc).contiguous(), ka = k.to(acc).contiguous(), va = v.to(acc).contiguous();
  const at::Tensor doa = grad_out.to(acc).contiguous();
  const at::Tensor add = key_additive(p, key_bias, key_mask, opts);
  const at::Tensor lse_a = lse.to(acc).contiguous();
  at::Tensor Dv = doa.mul(out.to(acc)).sum(-1);
  if (grad_lse.has_value()) Dv = Dv.sub(grad_lse->to(acc));
  Dv = Dv.contiguous();
  at::Tensor dq = at::empty({p.B, p.H, p.Nq, p.d}, opts);
  at::Tensor dk = at::zeros({p.B, p.H, p.Nk, p.d}, opts);  // zeros: keys of empty sequences are never visited
  at::Tensor dv = at::zeros({p.B, p.H, p.Nk, p.d}, opts);
  at::Tensor dbh = need_bias_grad ? at::zeros({p.B, p.H, p.Nk}, opts) : at::Tensor();
  if (p.Nq > 0 && p.Nk > 0) {
    AT_DISPATCH_FLOATING_TYPES(acc, "attention_backward_cpu", [&] {
      const Tensors<scalar_t> in = make_tensors<scalar_t>(qa, ka, va, add);
      const scalar_t* dop = doa.data_ptr<scalar_t>();
      const scalar_t* lp = lse_a.data_ptr<scalar_t>();
      const scalar_t* Dp = Dv.data_ptr<scalar_t>();
      scalar_t* dbp = need_bias_grad ? dbh.data_ptr<scalar_t>() : nullptr;
      if (use_single_pass_backward(p)) {
        backward_single_pass_kernel<scalar_t>(p, in, dop, lp, Dp, dq.data_ptr<scalar_t>(), dk.data_ptr<scalar_t>(),
                                              dv.data_ptr<scalar_t>(), dbp);
      } else {
        backward_dq_kernel<scalar_t>(p, in, dop, lp, Dp, dq.data_ptr<scalar_t>());
        backward_dkv_kernel<scalar_t>(p, in, dop, lp, Dp, dk.data_ptr<scalar_t>(), dv.data_ptr<scalar_t>(), dbp);
      }
    });
  } else {
    dq.zero_();
  }
  at::Tensor dbias = need_bias_grad ? dbh.sum(1).to(key_bias->scalar_type()) : at::empty({0}, q.options());
  const auto dt = q.scalar_type();
  return {dq.to(dt), dk.to(dt), dv.to(dt), dbias};
}

}  // namespace
}  // namespace attention
}  // namespace imtok

TORCH_LIBRARY_IMPL(imtok_cuda, CPU, m) {
  m.impl("attention_forward", &imtok::attention::attention_forward_cpu);
  m.impl("attention_backward", &imtok::attention::attention_backward_cpu);
}
