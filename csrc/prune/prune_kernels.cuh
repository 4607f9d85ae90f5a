// Device kernels of the prune family (EViT keep-and-fuse, GTP-ViT graph + propagation, FasterVLM top-k mask and
// packed gather). Plain CUDA C++: compiled by nvcc and, for tests, by g++ against common/emu_shim.h.
#pragma once

#include <cstdint>

#include "common/device.h"
#include "common/limits.h"
#include "prune/prune_math.h"

#if defined(__CUDACC__)
#define IMTOK_PRUNE_SMEM_AS(U, span) reinterpret_cast<U*>(span)
#else
#define IMTOK_PRUNE_SMEM_AS(U, span) (span).template as<U>()
#endif

namespace imtok {
namespace IMTOK_DEVICE_NS {
namespace prune {

constexpr int kThreads = 256;
constexpr int kMaxSemanticK = static_cast<int>(::imtok::kMaxGraphNeighbours);

// rank[i] = position of score i in the descending order of the M scores of this block (O(M^2 / threads)).
// scores and rank live in shared memory; the caller syncs before and after.
template <typename acc_t, typename SpanA, typename SpanI>
__device__ __forceinline__ void block_ranks(SpanA scores, SpanI rank, int64_t M) {
  for (int64_t i = threadIdx.x; i < M; i += blockDim.x) {
    const acc_t si = scores[i];
    int r = 0;
    for (int64_t j = 0; j < M; ++j) r += ::imtok::prune::ranks_before(static_cast<acc_t>(scores[j]), j, si, i) ? 1 : 0;
    rank[i] = r;
  }
}

// ---- EViT ----------------------------------------------------------------------------------------------
// grid (B, ceil(C / cw)); block kThreads. out [B, left + 1 + fuse, C], kept_idx [B, left] (written by chunk 0).
// smem: scores[M] (acc_t), rank[M] (int), inv[left] (int).
template <typename scalar_t, typename acc_t>
__global__ void evit_keep_fuse_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ cls_attn,
                                      scalar_t* __restrict__ out, int64_t* __restrict__ kept_idx, int64_t N,
                                      int64_t C, int64_t left, int fuse, int64_t cw) {
  IMTOK_DYNAMIC_SHARED(acc_t, scores);
  auto rank = IMTOK_PRUNE_SMEM_AS(int, scores + (N - 1));
  auto inv = rank + (N - 1);
  const int64_t M = N - 1;
  const int64_t b = blockIdx.x;
  const int64_t c0 = int64_t(blockIdx.y) * cw;
  const int64_t cn = imtok_min<int64_t>(cw, C - c0);
  const int64_t Nout = left + 1 + fuse;
  for (int64_t i = threadIdx.x; i < M; i += blockDim.x) scores[i] = static_cast<acc_t>(cls_attn[b * M + i]);
  __syncthreads();
  block_ranks<acc_t>(scores, rank, M);
  __syncthreads();
  for (int64_t i = threadIdx.x; i < M; i += blockDim.x) {
    const int r = rank[i];
    if (r < left) {
      inv[r] = static_cast<int>(i);
      if (blockIdx.y == 0) kept_idx[b * left + r] = i;
    }
  }
  __syncthreads();
  const scalar_t* xb = x + b * N * C;
  scalar_t* ob = out + b * Nout * C;
  for (int64_t e = threadIdx.x; e < (left + 1) * cn; e += blockDim.x) {
    const int64_t r = e / cn, c = c0 + e % cn;
    const int64_t src = r == 0 ? 0 : 1 + inv[r - 1];
    ob[r * C + c] = xb[src * C + c];
  }
  if (fuse) {
    for (int64_t c = c0 + threadIdx.x; c < c0 + cn; c += blockDim.x) {
      acc_t acc = acc_t(0);
      for (int64_t i = 0; i < M; ++i)
        if (rank[i] >= left) acc += static_cast<acc_t>(xb[(1 + i) * C + c]) * scores[i];
      ob[(left + 1) * C + c] = static_cast<scalar_t>(acc);
    }
  }
}

// grad_x: grid (B, ceil(C / cw)); smem: pos[M] (int), the output row of token i or -1.
template <typename scalar_t, typename acc_t>
__global__ void evit_backward_x_kernel(const scalar_t* __restrict__ g, const scalar_t* __restrict__ cls_attn,
                                       const int64_t* __restrict__ kept_idx, scalar_t* __restrict__ grad_x,
                                       int64_t N, int64_t C, int64_t left, int fuse, int64_t cw) {
  IMTOK_DYNAMIC_SHARED(int, pos);
  const int64_t M = N - 1;
  const int64_t b = blockIdx.x;
  const int64_t c0 = int64_t(blockIdx.y) * cw;
  const int64_t cn = imtok_min<int64_t>(cw, C - c0);
  const int64_t Nout = left + 1 + fuse;
  for (int64_t i = threadIdx.x; i < M; i += blockDim.x) pos[i] = -1;
  __syncthreads();
  for (int64_t r = threadIdx.x; r < left; r += blockDim.x) {
    const int64_t t = kept_idx[b * left + r];
    if (t >= 0 && t < M) pos[t] = static_cast<int>(r);  // out-of-range indices are ignored on the device
  }
  __syncthreads();
  const scalar_t* gb = g + b * Nout * C;
  scalar_t* gx = grad_x + b * N * C;
  for (int64_t e = threadIdx.x; e < N * cn; e += blockDim.x) {
    const int64_t i = e / cn, c = c0 + e % cn;
    acc_t v;
    if (i == 0) {
      v = static_cast<acc_t>(gb[c]);
    } else {
      const int p = pos[i - 1];
      if (p >= 0)
        v = static_cast<acc_t>(gb[(1 + p) * C + c]);
      else if (fuse)
        v = static_cast<acc_t>(gb[(left + 1) * C + c]) * static_cast<acc_t>(cls_attn[b * M + i - 1]);
      else
        v = acc_t(0);
    }
    gx[i * C + c] = static_cast<scalar_t>(v);
  }
}

// grad_cls_attn[b, i] = <g_fused, x[1 + i]> for the fused tokens, 0 for the kept. grid (B); one warp per token.
template <typename scalar_t, typename acc_t>
__global__ void evit_backward_attn_kernel(const scalar_t* __restrict__ g, const scalar_t* __restrict__ x,
                                          const int64_t* __restrict__ kept_idx, scalar_t* __restrict__ grad_attn,
                                          int64_t N, int64_t C, int64_t left, int fuse) {
  IMTOK_DYNAMIC_SHARED(int, kept);
  const int64_t M = N - 1;
  const int64_t b = blockIdx.x;
  const int64_t Nout = left + 1 + fuse;
  for (int64_t i = threadIdx.x; i < M; i += blockDim.x) kept[i] = 0;
  __syncthreads();
  for (int64_t r = threadIdx.x; r < left; r += blockDim.x) {
    const int64_t t = kept_idx[b * left + r];
    if (t >= 0 && t < M) kept[t] = 1;
  }
  __syncthreads();
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
  const scalar_t* gf = g + (b * Nout + left + 1) * C;
  for (int64_t i = warp; i < M; i += nwarps) {
    acc_t acc = acc_t(0);
    const bool active = fuse && !kept[i];
    if (active)
      for (int64_t c = lane; c < C; c += 32) acc += static_cast<acc_t>(gf[c]) * static_cast<acc_t>(x[(b * N + 1 + i) * C + c]);
    for (int off = 16; off > 0; off >>= 1) acc += __shfl_down_sync(0xffffffffu, acc, off);
    if (lane == 0) grad_attn[b * M + i] = static_cast<scalar_t>(active ? acc : acc_t(0));
  }
}

// ---- FasterVLM -----------------------------------------------------------------------------------------
// mask[b, i] = rank of scores[b, i] < k. grid (B); smem scores[N] (acc_t), rank[N] (int).
template <typename scalar_t, typename acc_t>
__global__ void topk_mask_kernel(const scalar_t* __restrict__ scores, bool* __restrict__ mask, int64_t N, int64_t k) {
  IMTOK_DYNAMIC_SHARED(acc_t, s);
  auto rank = IMTOK_PRUNE_SMEM_AS(int, s + N);
  const int64_t b = blockIdx.x;
  for (int64_t i = threadIdx.x; i < N; i += blockDim.x) s[i] = static_cast<acc_t>(scores[b * N + i]);
  __syncthreads();
  block_ranks<acc_t>(s, rank, N);
  __syncthreads();
  for (int64_t i = threadIdx.x; i < N; i += blockDim.x) mask[b * N + i] = rank[i] < k;
}

// counts[b] = number of true entries of mask row b; then cu_seqlens by one thread (B is small).
__global__ void mask_counts_kernel(const bool* __restrict__ mask, int* __restrict__ counts, int64_t N) {
  IMTOK_SHARED_ARRAY(int, part, kThreads);
  const int64_t b = blockIdx.x;
  int n = 0;
  for (int64_t i = threadIdx.x; i < N; i += blockDim.x) n += mask[b * N + i] ? 1 : 0;
  part[threadIdx.x] = n;
  __syncthreads();
  for (int s = kThreads / 2; s > 0; s >>= 1) {
    if (int(threadIdx.x) < s) part[threadIdx.x] += part[threadIdx.x + s];
    __syncthreads();
  }
  if (threadIdx.x == 0) counts[b] = part[0];
}

__global__ void cu_seqlens_kernel(const int* __restrict__ counts, int* __restrict__ cu, int64_t B) {
  if (threadIdx.x == 0 && blockIdx.x == 0) {
    int acc = 0;
    cu[0] = 0;
    for (int64_t b = 0; b < B; ++b) {
      acc += counts[b];
      cu[b + 1] = acc;
    }
  }
}

// grid (B, ceil(N / rows)); each block lists the kept tokens of row b in order (segment scan in shared memory)
// and copies kept rows [tile * rows, (tile + 1) * rows). smem: list[N] (int).
template <typename scalar_t>
__global__ void gather_packed_kernel(const scalar_t* __restrict__ x, const bool* __restrict__ mask,
                                     const int* __restrict__ cu, scalar_t* __restrict__ packed, int64_t N, int64_t C,
                                     int64_t rows) {
  IMTOK_DYNAMIC_SHARED(int, list);
  IMTOK_SHARED_ARRAY(int, seg, kThreads);
  const int64_t b = blockIdx.x;
  const int64_t seg_len = (N + blockDim.x - 1) / blockDim.x;
  const int64_t s0 = threadIdx.x * seg_len, s1 = imtok_min<int64_t>(N, s0 + seg_len);
  int n = 0;
  for (int64_t i = s0; i < s1; ++i) n += mask[b * N + i] ? 1 : 0;
  seg[threadIdx.x] = n;
  __syncthreads();
  if (threadIdx.x == 0) {
    int acc = 0;
    for (int t = 0; t < int(blockDim.x); ++t) {
      const int v = seg[t];
      seg[t] = acc;
      acc += v;
    }
  }
  __syncthreads();
  int p = seg[threadIdx.x];
  for (int64_t i = s0; i < s1; ++i)
    if (mask[b * N + i]) list[p++] = static_cast<int>(i);
  __syncthreads();
  const int64_t count = cu[b + 1] - cu[b];
  const int64_t r0 = int64_t(blockIdx.y) * rows;
  const int64_t rn = imtok_min<int64_t>(rows, count - r0);
  if (rn <= 0) return;
  scalar_t* ob = packed + (int64_t(cu[b]) + r0) * C;
  for (int64_t e = threadIdx.x; e < rn * C; e += blockDim.x) {
    const int64_t r = e / C, c = e % C;
    ob[r * C + c] = x[(b * N + list[r0 + r]) * C + c];
  }
}

// CLS-row attention without the attention map: p[b, h, j - 1] = softmax_j((scale * q[b, h, 0]) . k[b, h, j]) for
// j >= 1. grid (B, H); smem: q0[D], logit[N] (acc_t). Then cls_attn_mean_kernel averages the heads in order.
template <typename scalar_t, typename acc_t>
__global__ void cls_attn_probs_kernel(const scalar_t* __restrict__ q, const scalar_t* __restrict__ k,
                                      acc_t* __restrict__ probs, int64_t H, int64_t Nq, int64_t N, int64_t D,
                                      acc_t scale) {
  IMTOK_DYNAMIC_SHARED(acc_t, q0);
  auto logit = q0 + D;
  IMTOK_SHARED_ARRAY(acc_t, red, kThreads);
  const int64_t b = blockIdx.x, h = blockIdx.y;
  const scalar_t* qb = q + (b * H + h) * Nq * D;
  const scalar_t* kb = k + (b * H + h) * N * D;
  for (int64_t d = threadIdx.x; d < D; d += blockDim.x) q0[d] = static_cast<acc_t>(qb[d]) * scale;
  __syncthreads();
  for (int64_t j = threadIdx.x; j < N; j += blockDim.x) {
    acc_t s = acc_t(0);
    for (int64_t d = 0; d < D; ++d) s += q0[d] * static_cast<acc_t>(kb[j * D + d]);
    logit[j] = s;
  }
  __syncthreads();
  acc_t m = logit[0];
  for (int64_t j = threadIdx.x; j < N; j += blockDim.x) m = imtok_max<acc_t>(m, logit[j]);
  red[threadIdx.x] = m;
  __syncthreads();
  for (int s = kThreads / 2; s > 0; s >>= 1) {
    if (int(threadIdx.x) < s) red[threadIdx.x] = imtok_max<acc_t>(red[threadIdx.x], red[threadIdx.x + s]);
    __syncthreads();
  }
  m = red[0];
  __syncthreads();
  acc_t sum = acc_t(0);
  for (int64_t j = threadIdx.x; j < N; j += blockDim.x) {
    const acc_t e = imtok_exp(logit[j] - m);
    logit[j] = e;
    sum += e;
  }
  red[threadIdx.x] = sum;
  __syncthreads();
  for (int s = kThreads / 2; s > 0; s >>= 1) {
    if (int(threadIdx.x) < s) red[threadIdx.x] += red[threadIdx.x + s];
    __syncthreads();
  }
  const acc_t total = red[0];
  for (int64_t j = 1 + threadIdx.x; j < N; j += blockDim.x) probs[(b * H + h) * (N - 1) + j - 1] = logit[j] / total;
}

template <typename scalar_t, typename acc_t>
__global__ void cls_attn_mean_kernel(const acc_t* __restrict__ probs, scalar_t* __restrict__ out, int64_t H,
                                     int64_t M) {
  const int64_t b = blockIdx.x;
  for (int64_t j = int64_t(blockIdx.y) * blockDim.x + threadIdx.x; j < M; j += int64_t(gridDim.y) * blockDim.x) {
    acc_t s = acc_t(0);
    for (int64_t h = 0; h < H; ++h) s += probs[(b * H + h) * M + j];
    out[b * M + j] = static_cast<scalar_t>(s / static_cast<acc_t>(H));
  }
}

// ---- GTP-ViT -------------------------------------------------------------------------------------------
// Semantic neighbours: one warp per image token r (M = N - 1 of them): cosine with every other image token,
// the warp reduces each dot product, lane 0 keeps a sorted top-K. grid (B, ceil(M / warps)).
template <typename scalar_t, typename acc_t>
__global__ void semantic_topk_kernel(const scalar_t* __restrict__ x, int64_t* __restrict__ sem_idx, int64_t N,
                                     int64_t C, int K) {
  const int64_t M = N - 1;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
  const int64_t b = blockIdx.x;
  const int64_t r = int64_t(blockIdx.y) * nwarps + warp;
  if (r >= M) return;  // whole warps leave together; no block barrier below
  const scalar_t* xb = x + (b * N + 1) * C;
  const scalar_t* xr = xb + r * C;
  acc_t sr = acc_t(0);
  for (int64_t c = lane; c < C; c += 32) {
    const acc_t v = static_cast<acc_t>(xr[c]);
    sr += v * v;
  }
  for (int off = 16; off > 0; off >>= 1) sr += __shfl_down_sync(0xffffffffu, sr, off);
  sr = __shfl_sync(0xffffffffu, sr, 0);
  const acc_t nr = imtok_sqrt(sr);
  acc_t vals[kMaxSemanticK];
  int64_t idxs[kMaxSemanticK];
  int n = 0;
  for (int64_t j = 0; j < M; ++j) {
    const scalar_t* xj = xb + j * C;
    acc_t d = acc_t(0), sj = acc_t(0);
    for (int64_t c = lane; c < C; c += 32) {
      const acc_t v = static_cast<acc_t>(xj[c]);
      d += static_cast<acc_t>(xr[c]) * v;
      sj += v * v;
    }
    for (int off = 16; off > 0; off >>= 1) {
      d += __shfl_down_sync(0xffffffffu, d, off);
      sj += __shfl_down_sync(0xffffffffu, sj, off);
    }
    if (lane == 0 && j != r) ::imtok::prune::topk_insert(vals, idxs, n, K, d / (nr * imtok_sqrt(sj)), j);
  }
  if (lane == 0)
    for (int k = 0; k < K; ++k) sem_idx[(b * M + r) * K + k] = k < n ? idxs[k] : -1;
}

// Neighbour lists of the graph: spatial 8-neighbours (ascending), then the semantic neighbours not already
// listed; -1 padding; deg[b, r] = count. grid (B, ceil(M / threads)), one thread per row.
__global__ void graph_lists_kernel(const int64_t* __restrict__ sem_idx, int64_t* __restrict__ nbr_idx,
                                   int* __restrict__ deg, int64_t M, int64_t side, int use_spatial, int K, int Kmax) {
  const int64_t b = blockIdx.x;
  const int64_t r = int64_t(blockIdx.y) * blockDim.x + threadIdx.x;
  if (r >= M) return;
  int64_t* row = nbr_idx + (b * M + r) * Kmax;
  int64_t sp[8];
  int n = use_spatial ? ::imtok::prune::spatial_neighbors(r, side, M, sp) : 0;
  for (int k = 0; k < n; ++k) row[k] = sp[k];
  for (int k = 0; k < K; ++k) {
    const int64_t j = sem_idx[(b * M + r) * K + k];
    if (j < 0) continue;
    bool dup = false;
    for (int t = 0; t < (use_spatial ? n : 0); ++t) dup = dup || row[t] == j;
    if (!dup) row[n++] = j;
  }
  deg[b * M + r] = n;
  for (int k = n; k < Kmax; ++k) row[k] = -1;
}

// w = deg_r^-1/2 * deg_j^-1/2 (D^-1/2 A D^-1/2). grid (B, ceil(M / threads)).
template <typename scalar_t, typename acc_t>
__global__ void graph_weights_kernel(const int64_t* __restrict__ nbr_idx, const int* __restrict__ deg,
                                     scalar_t* __restrict__ nbr_w, int64_t M, int Kmax) {
  const int64_t b = blockIdx.x;
  const int64_t r = int64_t(blockIdx.y) * blockDim.x + threadIdx.x;
  if (r >= M) return;
  const acc_t dr = ::imtok::prune::inv_sqrt_degree<acc_t>(deg[b * M + r]);
  for (int k = 0; k < Kmax; ++k) {
    const int64_t j = nbr_idx[(b * M + r) * Kmax + k];
    acc_t w = acc_t(0);
    if (j >= 0) w = dr * ::imtok::prune::inv_sqrt_degree<acc_t>(deg[b * M + j]);
    nbr_w[(b * M + r) * Kmax + k] = static_cast<scalar_t>(w);
  }
}

// flag[j] = 1 when image token j + 1 is propagated (listed in prop[b]), else 0; the whole block writes, then syncs.
template <typename SpanI>
__device__ __forceinline__ void mark_propagated(SpanI flag, const int64_t* __restrict__ prop, int64_t b, int64_t P,
                                                int64_t M) {
  for (int64_t j = threadIdx.x; j < M; j += blockDim.x) flag[j] = 0;
  __syncthreads();
  for (int64_t p = threadIdx.x; p < P; p += blockDim.x) {
    const int64_t t = prop[b * P + p];
    if (t >= 1 && t <= M) flag[t - 1] = 1;
  }
  __syncthreads();
}

// out[b, 0] = x[b, 0]; out[b, 1 + r] = x[b, kept[r]] + alpha * sum_{j in nbr(kept[r] - 1), j + 1 propagated}
// w * x[b, 1 + j]. grid (B, ceil((1 + Nk) / rows)); smem: flag[M] (int) = token j + 1 is propagated.
template <typename scalar_t, typename acc_t>
__global__ void gtp_propagate_kernel(const scalar_t* __restrict__ x, const int64_t* __restrict__ kept,
                                     const int64_t* __restrict__ prop, const int64_t* __restrict__ nbr_idx,
                                     const scalar_t* __restrict__ nbr_w, scalar_t* __restrict__ out, int64_t N,
                                     int64_t C, int64_t Nk, int64_t P, int K, acc_t alpha, int64_t rows) {
  IMTOK_DYNAMIC_SHARED(int, flag);
  const int64_t M = N - 1;
  const int64_t b = blockIdx.x;
  mark_propagated(flag, prop, b, P, M);
  const int64_t r0 = int64_t(blockIdx.y) * rows;
  const int64_t rn = imtok_min<int64_t>(rows, Nk + 1 - r0);
  const scalar_t* xb = x + b * N * C;
  for (int64_t e = threadIdx.x; e < rn * C; e += blockDim.x) {
    const int64_t r = r0 + e / C, c = e % C;
    scalar_t v;
    if (r == 0) {
      v = xb[c];
    } else {
      const int64_t t = kept[b * Nk + r - 1];
      if (t < 1 || t > M) {  // out-of-range index: a zero row (the CPU kernel rejects it)
        out[(b * (Nk + 1) + r) * C + c] = static_cast<scalar_t>(0.0f);
        continue;
      }
      const int64_t* nb = nbr_idx + (b * M + t - 1) * K;
      const scalar_t* wb = nbr_w + (b * M + t - 1) * K;
      acc_t s = acc_t(0);
      for (int k = 0; k < K; ++k) {
        const int64_t j = nb[k];
        if (j >= 0 && j < M && flag[j]) s += static_cast<acc_t>(wb[k]) * static_cast<acc_t>(xb[(1 + j) * C + c]);
      }
      v = static_cast<scalar_t>(static_cast<acc_t>(xb[t * C + c]) + alpha * s);
    }
    out[(b * (Nk + 1) + r) * C + c] = v;
  }
}

// Backward: one thread owns channel c of batch b and walks every output row in order: deterministic, no atomics.
// grid (B, ceil(C / threads)); smem: flag[M] (int).
template <typename scalar_t, typename acc_t>
__global__ void gtp_propagate_backward_kernel(const scalar_t* __restrict__ g, const int64_t* __restrict__ kept,
                                              const int64_t* __restrict__ prop, const int64_t* __restrict__ nbr_idx,
                                              const scalar_t* __restrict__ nbr_w, acc_t* __restrict__ gx, int64_t N,
                                              int64_t C, int64_t Nk, int64_t P, int K, acc_t alpha) {
  IMTOK_DYNAMIC_SHARED(int, flag);
  const int64_t M = N - 1;
  const int64_t b = blockIdx.x;
  mark_propagated(flag, prop, b, P, M);
  const int64_t c = int64_t(blockIdx.y) * blockDim.x + threadIdx.x;
  if (c >= C) return;
  acc_t* gxb = gx + b * N * C;
  const scalar_t* gb = g + b * (Nk + 1) * C;
  for (int64_t i = 0; i < N; ++i) gxb[i * C + c] = acc_t(0);
  gxb[c] = static_cast<acc_t>(gb[c]);
  for (int64_t r = 0; r < Nk; ++r) {
    const int64_t t = kept[b * Nk + r];
    if (t < 1 || t > M) continue;
    const acc_t gr = static_cast<acc_t>(gb[(1 + r) * C + c]);
    gxb[t * C + c] += gr;
    const int64_t* nb = nbr_idx + (b * M + t - 1) * K;
    const scalar_t* wb = nbr_w + (b * M + t - 1) * K;
    for (int k = 0; k < K; ++k) {
      const int64_t j = nb[k];
      if (j >= 0 && j < M && flag[j]) gxb[(1 + j) * C + c] += alpha * static_cast<acc_t>(wb[k]) * gr;
    }
  }
}

// G <- G[kept, kept] on neighbour lists: row r = old row kept[r] - 1, entries whose column is kept remapped to
// their new position (order kept), the rest dropped; -1 / 0 padding. grid (B, ceil(Nk / threads));
// smem: newpos[M] (int).
template <typename scalar_t>
__global__ void graph_select_kernel(const int64_t* __restrict__ nbr_idx, const scalar_t* __restrict__ nbr_w,
                                    const int64_t* __restrict__ kept, int64_t* __restrict__ out_idx,
                                    scalar_t* __restrict__ out_w, int64_t M, int64_t Nk, int K) {
  IMTOK_DYNAMIC_SHARED(int, newpos);
  const int64_t b = blockIdx.x;
  for (int64_t j = threadIdx.x; j < M; j += blockDim.x) newpos[j] = -1;
  __syncthreads();
  for (int64_t r = threadIdx.x; r < Nk; r += blockDim.x) {
    const int64_t t = kept[b * Nk + r];
    if (t >= 1 && t <= M) newpos[t - 1] = static_cast<int>(r);
  }
  __syncthreads();
  const int64_t r = int64_t(blockIdx.y) * blockDim.x + threadIdx.x;
  if (r >= Nk) return;
  const int64_t t = kept[b * Nk + r] - 1;
  int64_t* oi = out_idx + (b * Nk + r) * K;
  scalar_t* ow = out_w + (b * Nk + r) * K;
  int n = 0;
  if (t >= 0 && t < M) {
    const int64_t* nb = nbr_idx + (b * M + t) * K;
    const scalar_t* wb = nbr_w + (b * M + t) * K;
    for (int k = 0; k < K; ++k) {
      const int64_t j = nb[k];
      if (j < 0 || j >= M) continue;
      const int p = newpos[j];
      if (p < 0) continue;
      oi[n] = p;
      ow[n] = wb[k];
      ++n;
    }
  }
  for (int k = n; k < K; ++k) {
    oi[k] = -1;
    ow[k] = static_cast<scalar_t>(0.0f);
  }
}

}  // namespace prune
}  // namespace IMTOK_DEVICE_NS
}  // namespace imtok
