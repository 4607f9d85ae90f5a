// Device kernels of the attention family (plain SIMT CUDA C++; also runs under the CPU shim, see CONTRIBUTING.md).
//
// Flash-style tiles, fp32 accumulation (fp64 for fp64 inputs), never an Nq x Nk buffer:
//   attn_fwd_kernel     one block per (segment, head, tile of BM queries): the query tile is staged in shared
//                       memory, key/value tiles of BN keys stream through shared memory, the BM x BN score tile
//                       is computed by all 128 threads, each warp runs the online softmax of 4 rows (shuffles),
//                       8 threads per row accumulate the output. Writes out and lse.
//   attn_cls_kernel     p_0j = exp(scale q_0 . k_j + add_j - lse_0), one thread per key.
//   attn_colsum_kernel  one block per (segment, head, tile of BN keys), query tiles in a fixed order:
//                       col_j = sum_i exp(scale q_i . k_j + add_j - lse_i). Deterministic.
//   attn_bwd_dq_kernel  like the forward: dS = P (dP - D), dq = scale dS K.
//   attn_bwd_dkv_kernel one block per key tile, query tiles in a fixed order: dv = P^T dO, dk = scale dS^T Q,
//                       dbias_h = column sums of dS. No atomics: deterministic.
// add is the per-key additive term (key_bias, -inf for masked keys) or null. segs holds per segment
// (b, qo, nq, ko, nk); the causal mask (bottom-right aligned, optionally with a prefix) is CausalMask of
// attention_mask.h.
#pragma once

#include "attention/attention_mask.h"
#include "common/device.h"
#include "common/limits.h"

namespace imtok {
namespace IMTOK_DEVICE_NS {
namespace attention {

using imtok::attention::CausalMask;

constexpr int kBM = 16;        // query rows per tile
constexpr int kBN = 32;        // keys per tile (one warp lane per key)
constexpr int kThreads = 128;  // 4 warps; each warp owns kBM / 4 rows in the softmax
constexpr int kRowsPerWarp = kBM / (kThreads / 32);
constexpr int kOutThreadsPerRow = kThreads / kBM;           // 8
constexpr int kMaxD = static_cast<int>(::imtok::kMaxHeadDim);
constexpr int kOutChunks = kMaxD / kOutThreadsPerRow;       // 16 output channels per thread
constexpr int kDkvGroups = kThreads / kBN;                  // 4 channel groups in the dk/dv kernel
constexpr int kDkvChunks = kMaxD / kDkvGroups;              // 32 channels per thread

template <typename acc_t>
IMTOK_HD acc_t neg_inf_v() {
  return -INFINITY;
}

template <typename acc_t>
__device__ __forceinline__ acc_t warp_max(acc_t x) {
  for (int off = 16; off > 0; off >>= 1) x = imtok_max(x, __shfl_xor_sync(0xffffffffu, x, off));
  return x;
}
// Non-finite scores (imtok_cuda.reference.attention, "Non-finite values"): a NaN-propagating max, and a row
// maximum of +inf turned into NaN, so that a NaN or +inf score poisons its row (out and lse NaN) on every path
// instead of being dropped by a max that ignores NaN.
template <typename acc_t>
IMTOK_HD acc_t nan_max(acc_t a, acc_t b) {
  return b != b ? b : (a != a ? a : imtok_max(a, b));
}
template <typename acc_t>
IMTOK_HD acc_t poison_inf(acc_t m) {
  return m == acc_t(INFINITY) ? acc_t(NAN) : m;
}
template <typename acc_t>
__device__ __forceinline__ acc_t warp_max_nan(acc_t x) {
  for (int off = 16; off > 0; off >>= 1) x = nan_max(x, __shfl_xor_sync(0xffffffffu, x, off));
  return x;
}
// A masked key: key_mask False or key_bias -inf (add = -inf). Nothing of it is read.
template <typename acc_t>
IMTOK_HD bool masked_key(const acc_t* add, int64_t j) {
  return add != nullptr && add[j] == acc_t(-INFINITY);
}

template <typename acc_t>
__device__ __forceinline__ acc_t warp_sum(acc_t x) {
  for (int off = 16; off > 0; off >>= 1) x += __shfl_xor_sync(0xffffffffu, x, off);
  return x;
}

struct SegInfo {
  int64_t b, qo, nq, ko, nk;
};
__device__ __forceinline__ SegInfo load_seg(const int64_t* segs, int64_t s) {
  return SegInfo{segs[s * 5 + 0], segs[s * 5 + 1], segs[s * 5 + 2], segs[s * 5 + 3], segs[s * 5 + 4]};
}

// Stage rows [row0, row0 + rows) (rows <= tile) of a [*, d] matrix into sm[tile][ld], zero padding.
template <typename acc_t, typename scalar_t, typename SmemT>
__device__ __forceinline__ void stage_rows(SmemT sm, const scalar_t* __restrict__ src, int64_t rows, int tile,
                                           int d, int ld) {
  for (int e = threadIdx.x; e < tile * d; e += blockDim.x) {
    const int r = e / d, c = e % d;
    sm[r * ld + c] = r < rows ? static_cast<acc_t>(src[static_cast<int64_t>(r) * d + c]) : acc_t(0);
  }
}

template <typename acc_t, typename SmemT>
__device__ __forceinline__ acc_t dot_smem(SmemT a, int ia, SmemT b, int ib, int d) {
  acc_t s = 0;
  for (int c = 0; c < d; ++c) s += a[ia + c] * b[ib + c];
  return s;
}

// ---- forward ------------------------------------------------------------------------------------------
// smem: sQ [BM][ld] | sK [BN][ld] | sV [BN][ld] | sS [BM][BN] | sAlpha [BM] | sL [BM] | sM [BM]
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
    attn_fwd_kernel(const scalar_t* __restrict__ q, const scalar_t* __restrict__ k, const scalar_t* __restrict__ v,
                    const acc_t* __restrict__ add, const int64_t* __restrict__ segs, int64_t H, int64_t Nq,
                    int64_t Nk, int d, acc_t scale, CausalMask causal, scalar_t* __restrict__ out,
                    acc_t* __restrict__ lse) {
  const int64_t seg = blockIdx.x / H, h = blockIdx.x % H;
  const SegInfo sg = load_seg(segs, seg);
  const int64_t q0 = static_cast<int64_t>(blockIdx.y) * kBM;
  if (q0 >= sg.nq) return;  // the whole block leaves together
  const int64_t M = imtok_min<int64_t>(kBM, sg.nq - q0);
  const int64_t bh = sg.b * H + h;
  const int ld = d + 1;
  IMTOK_DYNAMIC_SHARED(acc_t, smem);
  auto sQ = smem;
  auto sK = smem + kBM * ld;
  auto sV = smem + (kBM + kBN) * ld;
  auto sS = smem + (kBM + 2 * kBN) * ld;
  auto sAlpha = sS + kBM * kBN;
  auto sL = sAlpha + kBM;
  auto sM = sL + kBM;
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const scalar_t* Kb = k + (bh * Nk + sg.ko) * d;
  const scalar_t* Vb = v + (bh * Nk + sg.ko) * d;
  const acc_t* addb = add ? add + sg.b * Nk + sg.ko : nullptr;
  stage_rows<acc_t>(sQ, q + (bh * Nq + sg.qo + q0) * d, M, kBM, d, ld);

  acc_t m_r[kRowsPerWarp], l_r[kRowsPerWarp];
  for (int t = 0; t < kRowsPerWarp; ++t) {
    m_r[t] = neg_inf_v<acc_t>();
    l_r[t] = 0;
  }
  const int orow = tid / kOutThreadsPerRow, osub = tid % kOutThreadsPerRow;
  acc_t o[kOutChunks];
  for (int t = 0; t < kOutChunks; ++t) o[t] = 0;

  const int64_t kend = causal.visible(q0 + M - 1, sg.nq, sg.nk);
  for (int64_t k0 = 0; k0 < kend; k0 += kBN) {
    const int64_t n = imtok_min<int64_t>(kBN, kend - k0);
    __syncthreads();  // previous tile fully consumed
    stage_rows<acc_t>(sK, Kb + k0 * d, n, kBN, d, ld);
    stage_rows<acc_t>(sV, Vb + k0 * d, n, kBN, d, ld);
    __syncthreads();
    for (int e = tid; e < kBM * kBN; e += kThreads) {
      const int r = e / kBN, j = e % kBN;
      acc_t s = neg_inf_v<acc_t>();
      if (r < M && j < n && k0 + j < causal.visible(q0 + r, sg.nq, sg.nk) && !masked_key(addb, k0 + j)) {
        s = dot_smem<acc_t>(sQ, r * ld, sK, j * ld, d) * scale;
        if (addb) s += addb[k0 + j];
      }
      sS[e] = s;
    }
    __syncthreads();
    for (int t = 0; t < kRowsPerWarp; ++t) {
      const int r = warp * kRowsPerWarp + t;
      const acc_t s = sS[r * kBN + lane];
      const acc_t mnew = poison_inf(nan_max(m_r[t], warp_max_nan(s)));  // NaN: poisoned row
      acc_t p = 0, alpha = 1;
      if (mnew != neg_inf_v<acc_t>()) {
        p = imtok_exp(s - mnew);
        alpha = imtok_exp(m_r[t] - mnew);
      }
      const acc_t rs = warp_sum(p);
      l_r[t] = l_r[t] * alpha + rs;
      m_r[t] = mnew;
      sS[r * kBN + lane] = p;
      if (lane == 0) sAlpha[r] = alpha;
    }
    __syncthreads();
    const acc_t a = sAlpha[orow];
    for (int t = 0; t < kOutChunks; ++t) {
      const int c = osub + t * kOutThreadsPerRow;
      if (c < d) {
        acc_t acc = o[t] * a;
        for (int j = 0; j < n; ++j) acc += sS[orow * kBN + j] * sV[j * ld + c];
        o[t] = acc;
      }
    }
  }
  if (lane == 0)
    for (int t = 0; t < kRowsPerWarp; ++t) {
      sL[warp * kRowsPerWarp + t] = l_r[t];
      sM[warp * kRowsPerWarp + t] = m_r[t];
    }
  __syncthreads();
  if (orow < M) {
    const acc_t l = sL[orow];
    const bool none = l == acc_t(0);  // no visible key (NaN l: a poisoned row, out and lse NaN)
    const acc_t inv = none ? acc_t(0) : acc_t(1) / l;
    const int64_t row = bh * Nq + sg.qo + q0 + orow;
    for (int t = 0; t < kOutChunks; ++t) {
      const int c = osub + t * kOutThreadsPerRow;
      if (c < d) out[row * d + c] = static_cast<scalar_t>(l != l ? acc_t(NAN) : o[t] * inv);
    }
    if (osub == 0) lse[row] = none ? neg_inf_v<acc_t>() : (l != l ? acc_t(NAN) : sM[orow] + imtok_log(l));
  }
}

// ---- CLS row --------------------------------------------------------------------------------------------
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
    attn_cls_kernel(const scalar_t* __restrict__ q, const scalar_t* __restrict__ k, const acc_t* __restrict__ add,
                    const int64_t* __restrict__ segs, int64_t H, int64_t Nq, int64_t Nk, int d, acc_t scale,
                    CausalMask causal, const acc_t* __restrict__ lse, acc_t* __restrict__ cls) {
  const int64_t seg = blockIdx.x / H, h = blockIdx.x % H;
  const SegInfo sg = load_seg(segs, seg);
  const int64_t j = static_cast<int64_t>(blockIdx.y) * blockDim.x + threadIdx.x;
  if (j >= sg.nk) return;  // no barrier in this kernel
  const int64_t bh = sg.b * H + h;
  const acc_t l0 = sg.nq > 0 ? lse[bh * Nq + sg.qo] : neg_inf_v<acc_t>();
  acc_t p = 0;
  if (l0 != neg_inf_v<acc_t>() && j < causal.visible(0, sg.nq, sg.nk) && !masked_key(add, sg.b * Nk + sg.ko + j)) {
    const scalar_t* q0 = q + (bh * Nq + sg.qo) * d;
    const scalar_t* kj = k + (bh * Nk + sg.ko + j) * d;
    acc_t s = 0;
    for (int c = 0; c < d; ++c) s += static_cast<acc_t>(q0[c]) * static_cast<acc_t>(kj[c]);
    s *= scale;
    if (add) s += add[sg.b * Nk + sg.ko + j];
    p = imtok_exp(s - l0);  // exp(-inf) = 0 for a masked key
  }
  cls[bh * Nk + sg.ko + j] = p;
}

// ---- column sums ----------------------------------------------------------------------------------------
// smem: sK [BN][ld] | sQ [BM][ld] | sS [BM][BN] | sLse [BM]
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
    attn_colsum_kernel(const scalar_t* __restrict__ q, const scalar_t* __restrict__ k,
                       const acc_t* __restrict__ add, const int64_t* __restrict__ segs, int64_t H, int64_t Nq,
                       int64_t Nk, int d, acc_t scale, CausalMask causal, const acc_t* __restrict__ lse,
                       int64_t start, int64_t end, acc_t* __restrict__ col) {
  const int64_t seg = blockIdx.x / H, h = blockIdx.x % H;
  const SegInfo sg = load_seg(segs, seg);
  const int64_t k0 = static_cast<int64_t>(blockIdx.y) * kBN;
  if (k0 >= sg.nk) return;
  const int64_t n = imtok_min<int64_t>(kBN, sg.nk - k0);
  const int64_t bh = sg.b * H + h;
  const int ld = d + 1, tid = threadIdx.x;
  IMTOK_DYNAMIC_SHARED(acc_t, smem);
  auto sK = smem;
  auto sQ = smem + kBN * ld;
  auto sS = smem + (kBN + kBM) * ld;
  auto sLse = sS + kBM * kBN;
  stage_rows<acc_t>(sK, k + (bh * Nk + sg.ko + k0) * d, n, kBN, d, ld);
  int64_t hi = end < 0 ? sg.nq : imtok_min<int64_t>(end, sg.nq);
  int64_t lo = imtok_min<int64_t>(start, hi);
  lo = imtok_max<int64_t>(lo, causal.first_query(k0, sg.nq, sg.nk));
  const acc_t* addb = add ? add + sg.b * Nk + sg.ko + k0 : nullptr;
  acc_t acc = 0;
  for (int64_t i0 = lo; i0 < hi; i0 += kBM) {
    const int64_t M = imtok_min<int64_t>(kBM, hi - i0);
    __syncthreads();
    stage_rows<acc_t>(sQ, q + (bh * Nq + sg.qo + i0) * d, M, kBM, d, ld);
    if (tid < kBM) sLse[tid] = tid < M ? lse[bh * Nq + sg.qo + i0 + tid] : neg_inf_v<acc_t>();
    __syncthreads();
    for (int e = tid; e < kBM * kBN; e += kThreads) {
      const int r = e / kBN, j = e % kBN;
      const acc_t l = sLse[r];
      acc_t p = 0;
      if (r < M && j < n && l != neg_inf_v<acc_t>() && k0 + j < causal.visible(i0 + r, sg.nq, sg.nk) &&
          !masked_key(addb, j)) {
        acc_t s = dot_smem<acc_t>(sQ, r * ld, sK, j * ld, d) * scale;
        if (addb) s += addb[j];
        p = imtok_exp(s - l);  // NaN for a poisoned row (lse NaN)
      }
      sS[e] = p;
    }
    __syncthreads();
    if (tid < kBN)
      for (int r = 0; r < kBM; ++r) acc += sS[r * kBN + tid];
  }
  if (tid < n) col[bh * Nk + sg.ko + k0 + tid] = acc;
}

// ---- backward: dq -----------------------------------------------------------------------------------------
// smem: sQ [BM][ld] | sdO [BM][ld] | sK [BN][ld] | sV [BN][ld] | sS [BM][BN] | sLse [BM] | sD [BM]
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
    attn_bwd_dq_kernel(const scalar_t* __restrict__ q, const scalar_t* __restrict__ k,
                       const scalar_t* __restrict__ v, const acc_t* __restrict__ add, const int64_t* __restrict__ segs,
                       int64_t H, int64_t Nq, int64_t Nk, int d, acc_t scale, CausalMask causal,
                       const scalar_t* __restrict__ dout, const acc_t* __restrict__ lse,
                       const acc_t* __restrict__ Dv, acc_t* __restrict__ dq) {
  const int64_t seg = blockIdx.x / H, h = blockIdx.x % H;
  const SegInfo sg = load_seg(segs, seg);
  const int64_t q0 = static_cast<int64_t>(blockIdx.y) * kBM;
  if (q0 >= sg.nq) return;
  const int64_t M = imtok_min<int64_t>(kBM, sg.nq - q0);
  const int64_t bh = sg.b * H + h, row0 = bh * Nq + sg.qo + q0;
  const int ld = d + 1, tid = threadIdx.x;
  IMTOK_DYNAMIC_SHARED(acc_t, smem);
  auto sQ = smem;
  auto sdO = smem + kBM * ld;
  auto sK = smem + 2 * kBM * ld;
  auto sV = smem + (2 * kBM + kBN) * ld;
  auto sS = smem + (2 * kBM + 2 * kBN) * ld;
  auto sLse = sS + kBM * kBN;
  auto sD = sLse + kBM;
  stage_rows<acc_t>(sQ, q + row0 * d, M, kBM, d, ld);
  stage_rows<acc_t>(sdO, dout + row0 * d, M, kBM, d, ld);
  if (tid < kBM) {
    sLse[tid] = tid < M ? lse[row0 + tid] : neg_inf_v<acc_t>();
    sD[tid] = tid < M ? Dv[row0 + tid] : acc_t(0);
  }
  const scalar_t* Kb = k + (bh * Nk + sg.ko) * d;
  const scalar_t* Vb = v + (bh * Nk + sg.ko) * d;
  const acc_t* addb = add ? add + sg.b * Nk + sg.ko : nullptr;
  const int orow = tid / kOutThreadsPerRow, osub = tid % kOutThreadsPerRow;
  acc_t g[kOutChunks];
  for (int t = 0; t < kOutChunks; ++t) g[t] = 0;
  const int64_t kend = causal.visible(q0 + M - 1, sg.nq, sg.nk);
  for (int64_t k0 = 0; k0 < kend; k0 += kBN) {
    const int64_t n = imtok_min<int64_t>(kBN, kend - k0);
    __syncthreads();
    stage_rows<acc_t>(sK, Kb + k0 * d, n, kBN, d, ld);
    stage_rows<acc_t>(sV, Vb + k0 * d, n, kBN, d, ld);
    __syncthreads();
    for (int e = tid; e < kBM * kBN; e += kThreads) {
      const int r = e / kBN, j = e % kBN;
      const acc_t l = sLse[r];
      acc_t ds = 0;
      if (r < M && j < n && l != neg_inf_v<acc_t>() && k0 + j < causal.visible(q0 + r, sg.nq, sg.nk)) {
        acc_t s = dot_smem<acc_t>(sQ, r * ld, sK, j * ld, d) * scale;
        if (addb) s += addb[k0 + j];
        const acc_t p = imtok_exp(s - l);
        const acc_t dp = dot_smem<acc_t>(sdO, r * ld, sV, j * ld, d);
        ds = p * (dp - sD[r]);
      }
      sS[e] = ds;
    }
    __syncthreads();
    for (int t = 0; t < kOutChunks; ++t) {
      const int c = osub + t * kOutThreadsPerRow;
      if (c < d) {
        acc_t acc = g[t];
        for (int j = 0; j < n; ++j) acc += sS[orow * kBN + j] * sK[j * ld + c];
        g[t] = acc;
      }
    }
  }
  if (orow < M)
    for (int t = 0; t < kOutChunks; ++t) {
      const int c = osub + t * kOutThreadsPerRow;
      if (c < d) dq[(row0 + orow) * d + c] = g[t] * scale;
    }
}

// ---- backward: dk, dv, per-head dbias ----------------------------------------------------------------------
// smem: sK [BN][ld] | sV [BN][ld] | sQ [BM][ld] | sdO [BM][ld] | sP [BM][BN] | sS [BM][BN] | sLse [BM] | sD [BM]
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
    attn_bwd_dkv_kernel(const scalar_t* __restrict__ q, const scalar_t* __restrict__ k,
                        const scalar_t* __restrict__ v, const acc_t* __restrict__ add,
                        const int64_t* __restrict__ segs, int64_t H, int64_t Nq, int64_t Nk, int d, acc_t scale,
                        CausalMask causal, const scalar_t* __restrict__ dout, const acc_t* __restrict__ lse,
                        const acc_t* __restrict__ Dv, acc_t* __restrict__ dk, acc_t* __restrict__ dv,
                        acc_t* __restrict__ dbh) {
  const int64_t seg = blockIdx.x / H, h = blockIdx.x % H;
  const SegInfo sg = load_seg(segs, seg);
  const int64_t k0 = static_cast<int64_t>(blockIdx.y) * kBN;
  if (k0 >= sg.nk) return;
  const int64_t n = imtok_min<int64_t>(kBN, sg.nk - k0);
  const int64_t bh = sg.b * H + h, key0 = bh * Nk + sg.ko + k0;
  const int ld = d + 1, tid = threadIdx.x;
  IMTOK_DYNAMIC_SHARED(acc_t, smem);
  auto sK = smem;
  auto sV = smem + kBN * ld;
  auto sQ = smem + 2 * kBN * ld;
  auto sdO = smem + (2 * kBN + kBM) * ld;
  auto sP = smem + (2 * kBN + 2 * kBM) * ld;
  auto sS = sP + kBM * kBN;
  auto sLse = sS + kBM * kBN;
  auto sD = sLse + kBM;
  stage_rows<acc_t>(sK, k + key0 * d, n, kBN, d, ld);
  stage_rows<acc_t>(sV, v + key0 * d, n, kBN, d, ld);
  const acc_t* addb = add ? add + sg.b * Nk + sg.ko + k0 : nullptr;
  const int mj = tid % kBN, grp = tid / kBN;  // this thread's key and channel group
  acc_t gk[kDkvChunks], gv[kDkvChunks], gb = 0;
  for (int t = 0; t < kDkvChunks; ++t) gk[t] = gv[t] = 0;
  const int64_t lo = causal.first_query(k0, sg.nq, sg.nk);
  for (int64_t i0 = lo; i0 < sg.nq; i0 += kBM) {
    const int64_t M = imtok_min<int64_t>(kBM, sg.nq - i0);
    const int64_t row0 = bh * Nq + sg.qo + i0;
    __syncthreads();
    stage_rows<acc_t>(sQ, q + row0 * d, M, kBM, d, ld);
    stage_rows<acc_t>(sdO, dout + row0 * d, M, kBM, d, ld);
    if (tid < kBM) {
      sLse[tid] = tid < M ? lse[row0 + tid] : neg_inf_v<acc_t>();
      sD[tid] = tid < M ? Dv[row0 + tid] : acc_t(0);
    }
    __syncthreads();
    for (int e = tid; e < kBM * kBN; e += kThreads) {
      const int r = e / kBN, j = e % kBN;
      const acc_t l = sLse[r];
      acc_t p = 0, ds = 0;
      if (r < M && j < n && l != neg_inf_v<acc_t>() && k0 + j < causal.visible(i0 + r, sg.nq, sg.nk)) {
        acc_t s = dot_smem<acc_t>(sQ, r * ld, sK, j * ld, d) * scale;
        if (addb) s += addb[j];
        p = imtok_exp(s - l);
        const acc_t dp = dot_smem<acc_t>(sdO, r * ld, sV, j * ld, d);
        ds = p * (dp - sD[r]);
      }
      sP[e] = p;
      sS[e] = ds;
    }
    __syncthreads();
    for (int t = 0; t < kDkvChunks; ++t) {
      const int c = grp + t * kDkvGroups;
      if (c < d) {
        acc_t ak = gk[t], av = gv[t];
        for (int r = 0; r < kBM; ++r) {
          ak += sS[r * kBN + mj] * sQ[r * ld + c];
          av += sP[r * kBN + mj] * sdO[r * ld + c];
        }
        gk[t] = ak;
        gv[t] = av;
      }
    }
    if (grp == 0)
      for (int r = 0; r < kBM; ++r) gb += sS[r * kBN + mj];
  }
  if (mj < n) {
    for (int t = 0; t < kDkvChunks; ++t) {
      const int c = grp + t * kDkvGroups;
      if (c < d) {
        dk[(key0 + mj) * d + c] = gk[t] * scale;
        dv[(key0 + mj) * d + c] = gv[t];
      }
    }
    if (grp == 0 && dbh) dbh[key0 + mj] = gb;
  }
}

}  // namespace attention
}  // namespace IMTOK_DEVICE_NS
}  // namespace imtok
