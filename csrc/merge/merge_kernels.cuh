// Device kernels of the merge family (ToMe / tomesd). Plain CUDA C++: also runs under the emulation shim.
//
// match:  norms_kernel (one warp per token) -> match_kernel (one warp per source row: normalized dot with every
//         destination row, running max/argmax, first index on ties; never the score matrix) -> select_kernel
//         (one block per batch: rank of each source row in descending order, ties by index; src/dst/unm).
// apply:  csr_kernel (one block per batch: sources of each destination in plan order) -> one block per output row
//         walking the row's members (destination first, then its sources in plan order): merge sum/mean/amax,
//         wavg, unmerge and their backward, all without atomics on data.
#pragma once

#include "common/device.h"
#include "merge/merge_math.h"

namespace imtok {
namespace IMTOK_DEVICE_NS {
namespace merge {

using DevPlan = ::imtok::merge::PlanView<int>;

template <typename acc_t>
__device__ __forceinline__ acc_t warp_sum(acc_t v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

template <typename acc_t>
__device__ __forceinline__ bool nan_v(acc_t v) { return v != v; }

// ---- matching ---------------------------------------------------------------------------------------------
// norms[b, t] = ||metric[b, t]|| rounded to scalar_t (as the reference's norm tensor). One warp per token.
template <typename scalar_t, typename acc_t>
__global__ void norms_kernel(const scalar_t* __restrict__ metric, acc_t* __restrict__ norms, int64_t T, int64_t C) {
  const int warps = blockDim.x / 32;
  const int64_t t = int64_t(blockIdx.x) * warps + threadIdx.x / 32;
  const int64_t b = blockIdx.y;
  const int lane = threadIdx.x % 32;
  if (t >= T) return;  // whole warps leave together
  const scalar_t* row = metric + (b * T + t) * C;
  acc_t s = 0;
  for (int64_t c = lane; c < C; c += 32) {
    const acc_t v = static_cast<acc_t>(row[c]);
    s += v * v;
  }
  s = warp_sum(s);
  if (lane == 0) norms[b * T + t] = static_cast<acc_t>(static_cast<scalar_t>(sqrt(static_cast<double>(s))));
}

// One warp per source row i: max over destinations j of <a_i / |a_i|, b_j / |b_j|>, first j on ties.
template <typename scalar_t, typename acc_t>
__global__ void match_kernel(const scalar_t* __restrict__ metric, const acc_t* __restrict__ norms,
                             const int64_t* __restrict__ apos, const int64_t* __restrict__ bpos, int64_t T, int64_t C,
                             int64_t Na, int64_t Nb, bool class_token, bool distill_token, acc_t* __restrict__ node_max,
                             int64_t* __restrict__ node_idx) {
  const int warps = blockDim.x / 32;
  const int64_t i = int64_t(blockIdx.x) * warps + threadIdx.x / 32;
  const int64_t b = blockIdx.y;
  const int lane = threadIdx.x % 32;
  if (i >= Na) return;
  const acc_t ninf = -static_cast<acc_t>(INFINITY);
  acc_t best = ninf;
  int64_t arg = 0;
  if (!(class_token && i == 0)) {
    const int64_t ta = apos ? apos[i] : 2 * i;
    const scalar_t* arow = metric + (b * T + ta) * C;
    const acc_t na = norms[b * T + ta];
    for (int64_t j = distill_token ? 1 : 0; j < Nb; ++j) {
      const int64_t tb = bpos ? bpos[j] : 2 * j + 1;
      const scalar_t* brow = metric + (b * T + tb) * C;
      const acc_t nb = norms[b * T + tb];
      acc_t s = 0;
      for (int64_t c = lane; c < C; c += 32) {
        const acc_t av = static_cast<acc_t>(static_cast<scalar_t>(static_cast<acc_t>(arow[c]) / na));
        const acc_t bv = static_cast<acc_t>(static_cast<scalar_t>(static_cast<acc_t>(brow[c]) / nb));
        s += av * bv;
      }
      s = warp_sum(s);
      const acc_t v = static_cast<acc_t>(static_cast<scalar_t>(s));
      if (v > best || (nan_v(v) && !nan_v(best))) {
        best = v;
        arg = j;
      }
    }
  }
  if (lane == 0) {
    node_max[b * Na + i] = best;
    node_idx[b * Na + i] = arg;
  }
}

// descending, NaN first, ties by index: a strict total order, so ranks are a permutation
template <typename acc_t>
__device__ __forceinline__ bool before(acc_t vj, int64_t j, acc_t vi, int64_t i) {
  const bool nj = nan_v(vj), ni = nan_v(vi);
  if (nj != ni) return nj;
  if (!nj && vj != vi) return vj > vi;
  return j < i;
}

// One block per batch: rank every source row; the first r merge. rank scratch [B, Na].
template <typename acc_t>
__global__ void select_kernel(const acc_t* __restrict__ node_max, const int64_t* __restrict__ node_idx, int64_t Na,
                              int64_t r, bool sort_unm, int64_t* __restrict__ rank, int64_t* __restrict__ src,
                              int64_t* __restrict__ dst, int64_t* __restrict__ unm) {
  const int64_t b = blockIdx.x;
  const acc_t* v = node_max + b * Na;
  int64_t* rk = rank + b * Na;
  const int64_t U = Na - r;
  for (int64_t i = threadIdx.x; i < Na; i += blockDim.x) {
    const acc_t vi = v[i];
    int64_t n = 0;
    for (int64_t j = 0; j < Na; ++j) n += before(v[j], j, vi, i) ? 1 : 0;
    rk[i] = n;
    if (n < r) {
      src[b * r + n] = i;
      dst[b * r + n] = node_idx[b * Na + i];
    } else if (!sort_unm) {
      unm[b * U + n - r] = i;
    }
  }
  __syncthreads();
  if (sort_unm) {
    for (int64_t i = threadIdx.x; i < Na; i += blockDim.x) {
      if (rk[i] < r) continue;
      int64_t pos = 0;
      for (int64_t j = 0; j < i; ++j) pos += rk[j] >= r ? 1 : 0;
      unm[b * U + pos] = i;
    }
  }
}

// ---- plans ------------------------------------------------------------------------------------------------
// One block per batch: off[b] = exclusive prefix of destination counts, lst[b] = plan positions grouped by
// destination in plan order (the position of k among equal destinations is the count of earlier equal ones).
__global__ void csr_kernel(const int64_t* __restrict__ dst, int64_t r, int64_t Nb, int* __restrict__ off,
                           int* __restrict__ lst) {
  const int64_t b = blockIdx.x;
  int* o = off + b * (Nb + 1);
  const int64_t* d = dst + b * r;
  for (int64_t j = threadIdx.x; j <= Nb; j += blockDim.x) o[j] = 0;
  __syncthreads();
  for (int64_t k = threadIdx.x; k < r; k += blockDim.x) {
    const int64_t j = d[k];
    if (j >= 0 && j < Nb) atomicAdd(o + j + 1, 1);  // integer counts: order-independent
  }
  __syncthreads();
  if (threadIdx.x == 0)
    for (int64_t j = 0; j < Nb; ++j) o[j + 1] += o[j];
  __syncthreads();
  for (int64_t k = threadIdx.x; k < r; k += blockDim.x) {
    const int64_t j = d[k];
    if (j < 0 || j >= Nb) continue;
    int n = 0;
    for (int64_t q = 0; q < k; ++q) n += d[q] == j ? 1 : 0;
    lst[b * r + o[j] + n] = static_cast<int>(k);
  }
}

// mode 0 sum, 1 mean, 2 amax. grid (Tout, B), threads over channels.
template <typename scalar_t, typename acc_t>
__global__ void apply_kernel(const scalar_t* __restrict__ x, scalar_t* __restrict__ out, DevPlan p, int64_t C,
                             int mode) {
  const int64_t row = blockIdx.x, b = blockIdx.y;
  const int64_t nm = p.n_members(b, row);
  const scalar_t* xb = x + b * p.T * C;
  scalar_t* orow = out + (b * p.tout() + row) * C;
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
    acc_t acc = 0;
    bool first = true;
    for (int64_t m = 0; m < nm; ++m) {
      const int64_t t = p.member(b, row, m);
      if (t < 0) continue;
      const acc_t v = static_cast<acc_t>(xb[t * C + c]);
      if (first) {
        acc = v;
        first = false;
      } else if (mode == 2) {
        if (!nan_v(acc) && (v > acc || nan_v(v))) acc = v;
      } else {
        acc += v;
      }
    }
    if (mode == 1) acc = acc / static_cast<acc_t>(nm);
    orow[c] = static_cast<scalar_t>(acc);
  }
}

template <typename scalar_t, typename acc_t>
__global__ void apply_backward_kernel(const scalar_t* __restrict__ grad, const scalar_t* __restrict__ x,
                                      const scalar_t* __restrict__ out, scalar_t* __restrict__ gx, DevPlan p,
                                      int64_t C, int mode) {
  const int64_t row = blockIdx.x, b = blockIdx.y;
  const int64_t nm = p.n_members(b, row);
  const int64_t q = b * p.tout() + row;
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
    const acc_t g = static_cast<acc_t>(grad[q * C + c]);
    if (mode == 2) {
      const scalar_t o = out[q * C + c];
      int64_t ties = 0;
      for (int64_t m = 0; m < nm; ++m) {
        const int64_t t = p.member(b, row, m);
        if (t >= 0) ties += x[(b * p.T + t) * C + c] == o ? 1 : 0;
      }
      for (int64_t m = 0; m < nm; ++m) {
        const int64_t t = p.member(b, row, m);
        if (t < 0) continue;
        const int64_t e = (b * p.T + t) * C + c;
        gx[e] = x[e] == o ? static_cast<scalar_t>(g / static_cast<acc_t>(ties)) : static_cast<scalar_t>(0);
      }
    } else {
      const acc_t v = mode == 1 ? g * (static_cast<acc_t>(1) / static_cast<acc_t>(nm)) : g;
      for (int64_t m = 0; m < nm; ++m) {
        const int64_t t = p.member(b, row, m);
        if (t >= 0) gx[(b * p.T + t) * C + c] = mode == 1 ? static_cast<scalar_t>(v) : grad[q * C + c];
      }
    }
  }
}

template <typename scalar_t, typename acc_t>
__global__ void wavg_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ size,
                            scalar_t* __restrict__ out, scalar_t* __restrict__ out_size, DevPlan p, int64_t C) {
  const int64_t row = blockIdx.x, b = blockIdx.y;
  const int64_t nm = p.n_members(b, row);
  const int64_t q = b * p.tout() + row;
  acc_t ss = 0;
  for (int64_t m = 0; m < nm; ++m) {
    const int64_t t = p.member(b, row, m);
    if (t >= 0) ss += size ? static_cast<acc_t>(size[b * p.T + t]) : static_cast<acc_t>(1);
  }
  const scalar_t ssr = static_cast<scalar_t>(ss);
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
    acc_t acc = 0;
    for (int64_t m = 0; m < nm; ++m) {
      const int64_t t = p.member(b, row, m);
      if (t < 0) continue;
      const acc_t s = size ? static_cast<acc_t>(size[b * p.T + t]) : static_cast<acc_t>(1);
      acc += static_cast<acc_t>(static_cast<scalar_t>(static_cast<acc_t>(x[(b * p.T + t) * C + c]) * s));
    }
    out[q * C + c] = static_cast<scalar_t>(static_cast<acc_t>(static_cast<scalar_t>(acc)) / static_cast<acc_t>(ssr));
  }
  if (threadIdx.x == 0) out_size[q] = ssr;
}

// grid (Tout, B); block a multiple of 32 (<= 1024). grad_size / size may be null.
template <typename scalar_t, typename acc_t>
__global__ void wavg_backward_kernel(const scalar_t* __restrict__ gy, const scalar_t* __restrict__ gys,
                                     const scalar_t* __restrict__ x, const scalar_t* __restrict__ size,
                                     const scalar_t* __restrict__ y, const scalar_t* __restrict__ ys,
                                     scalar_t* __restrict__ gx, scalar_t* __restrict__ gsize, DevPlan p, int64_t C) {
  IMTOK_SHARED_ARRAY(acc_t, red, 32);
  const int64_t row = blockIdx.x, b = blockIdx.y;
  const int64_t nm = p.n_members(b, row);
  const int64_t q = b * p.tout() + row;
  const acc_t inv = static_cast<acc_t>(1) / static_cast<acc_t>(ys[q]);
  const acc_t gsr = gys ? static_cast<acc_t>(gys[q]) : static_cast<acc_t>(0);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, nwarps = blockDim.x / 32;
  for (int64_t m = 0; m < nm; ++m) {
    const int64_t t = p.member(b, row, m);  // uniform over the block
    if (t < 0) continue;
    const acc_t st = size ? static_cast<acc_t>(size[b * p.T + t]) : static_cast<acc_t>(1);
    acc_t dot = 0;
    for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
      const acc_t g = static_cast<acc_t>(gy[q * C + c]);
      gx[(b * p.T + t) * C + c] = static_cast<scalar_t>(g * st * inv);
      dot += g * (static_cast<acc_t>(x[(b * p.T + t) * C + c]) - static_cast<acc_t>(y[q * C + c]));
    }
    dot = warp_sum(dot);
    if (lane == 0) red[warp] = dot;
    __syncthreads();
    if (threadIdx.x == 0) {
      acc_t s = 0;
      for (int w = 0; w < nwarps; ++w) s += red[w];
      gsize[b * p.T + t] = static_cast<scalar_t>(s * inv + gsr);
    }
    __syncthreads();
  }
}

template <typename scalar_t>
__global__ void unmerge_kernel(const scalar_t* __restrict__ y, scalar_t* __restrict__ out, DevPlan p, int64_t C) {
  const int64_t row = blockIdx.x, b = blockIdx.y;
  const int64_t nm = p.n_members(b, row);
  const scalar_t* yr = y + (b * p.tout() + row) * C;
  for (int64_t m = 0; m < nm; ++m) {
    const int64_t t = p.member(b, row, m);
    if (t < 0) continue;
    scalar_t* orow = out + (b * p.T + t) * C;
    for (int64_t c = threadIdx.x; c < C; c += blockDim.x) orow[c] = yr[c];
  }
}

}  // namespace merge
}  // namespace IMTOK_DEVICE_NS
}  // namespace imtok
