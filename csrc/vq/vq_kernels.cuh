// Device kernels of the vq family (plain CUDA C++; also runs under the CPU shim, see CONTRIBUTING.md).
//
// nearest / nearest_topk: one thread per row of x, the block's rows staged transposed in shared memory,
// the (pre-converted) codebook streamed through shared memory in tiles, codes visited in index order so
// the lowest index wins ties with a strict comparison. Memory: O(N) outputs + an fp32 copy of the codebook.
#pragma once

#include "common/device.h"
#include "vq/vq_math.h"

namespace imtok {
namespace IMTOK_DEVICE_NS {
namespace vq {

using imtok::vq::closer;
using imtok::vq::kCosine;
using imtok::vq::report_distance;

// One thread per code: codebook in the accumulation type (l2-normalized for cosine, eps 1e-6 like
// F.normalize) and its squared norm (0 for cosine, where only the dot product ranks codes).
template <typename scalar_t, typename acc_t>
__global__ void prep_codebook_kernel(const scalar_t* __restrict__ cb, int64_t K, int64_t D, int metric,
                                     acc_t* __restrict__ cb_out, acc_t* __restrict__ en) {
  const int64_t k = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (k >= K) return;
  acc_t sq = 0;
  for (int64_t d = 0; d < D; ++d) {
    const acc_t v = static_cast<acc_t>(cb[k * D + d]);
    sq += v * v;
  }
  acc_t denom = 1;  // divide like F.normalize (a reciprocal multiply would break exact ties)
  if (metric == kCosine) {
    denom = imtok_max(imtok_sqrt(sq), acc_t(1e-6));
    en[k] = 0;
  } else {
    en[k] = sq;
  }
  for (int64_t d = 0; d < D; ++d) cb_out[k * D + d] = static_cast<acc_t>(cb[k * D + d]) / denom;
}

// TOPK = false: k is ignored, one best code per row. TOPK = true: the k closest codes, sorted.
// Shared memory: [stage_x ? D * blockDim : 0] rows of x (transposed) | [tile * D] codes | [tile] norms.
template <typename scalar_t, typename acc_t, bool TOPK>
__global__ void nearest_kernel(const scalar_t* __restrict__ x, int64_t N, int64_t D, const acc_t* __restrict__ cb,
                               const acc_t* __restrict__ en, int64_t K, int64_t k, int metric, int64_t tile,
                               bool stage_x, int64_t* __restrict__ out_idx, acc_t* __restrict__ out_dist) {
  IMTOK_DYNAMIC_SHARED(acc_t, smem);
  const int64_t t = threadIdx.x;
  const int64_t nthreads = blockDim.x;
  const int64_t n = static_cast<int64_t>(blockIdx.x) * nthreads + t;
  const bool active = n < N;
  auto xs = smem;
  auto cs = smem + (stage_x ? D * nthreads : 0);
  auto es = cs + tile * D;

  acc_t sq = 0;
  for (int64_t d = 0; d < D; ++d) {
    const acc_t v = active ? static_cast<acc_t>(x[n * D + d]) : acc_t(0);
    if (stage_x) xs[d * nthreads + t] = v;
    sq += v * v;
  }
  const acc_t xn = metric == kCosine ? acc_t(0) : sq;

  acc_t best = acc_t(1) / acc_t(0);  // +inf
  int64_t best_i = 0;
  constexpr int kTopSlots = TOPK ? 128 : 1;
  acc_t top_d[kTopSlots];
  int64_t top_i[kTopSlots];
  int64_t count = 0;

  for (int64_t k0 = 0; k0 < K; k0 += tile) {
    const int64_t kt = imtok_min(tile, K - k0);
    __syncthreads();  // everyone is done with the previous tile
    for (int64_t i = t; i < kt * D; i += nthreads) cs[i] = cb[k0 * D + i];
    for (int64_t i = t; i < kt; i += nthreads) es[i] = en[k0 + i];
    __syncthreads();
    if (!active) continue;
    for (int64_t j = 0; j < kt; ++j) {
      acc_t dot = 0;
      for (int64_t d = 0; d < D; ++d) {
        const acc_t xv = stage_x ? xs[d * nthreads + t] : static_cast<acc_t>(x[n * D + d]);
        dot += xv * cs[j * D + d];
      }
      const acc_t dist = (xn + es[j]) - acc_t(2) * dot;
      const int64_t ci = k0 + j;
      if (!TOPK) {
        if (dist < best || (dist != dist && best == best)) {
          best = dist;
          best_i = ci;
        }
      } else {
        ::imtok::vq::topk_insert(top_d, top_i, count, k, dist, ci);
      }
    }
  }
  if (!active) return;
  if (!TOPK) {
    out_idx[n] = best_i;
    out_dist[n] = report_distance(best, sq, metric);
  } else {
    for (int64_t j = 0; j < k; ++j) {
      out_idx[n * k + j] = top_i[j];
      out_dist[n * k + j] = report_distance(top_d[j], sq, metric);
    }
  }
}

}  // namespace vq
}  // namespace IMTOK_DEVICE_NS
}  // namespace imtok
