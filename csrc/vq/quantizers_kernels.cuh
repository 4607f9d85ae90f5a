// Device kernels of the vq quantizers: FSQ (forward, backward, indices -> codes), LFQ sign quantization,
// per-code counts and the deterministic EMA statistics (counting sort + in-order segment sums).
// Plain CUDA C++: compiled by nvcc for the GPU and by g++ against common/emu_shim.h for the emulated tests.
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include "common/device.h"
#include "vq/quantizers_math.h"

namespace imtok {
namespace IMTOK_DEVICE_NS {
namespace quantizers {

using vqq::FsqParams;

// ---- FSQ ---------------------------------------------------------------------------------------------
// One thread per vector (row of d elements). Codes in opmath (float / double), index int32; a NaN anywhere
// in the row gives NaN codes for those elements and index -1.
template <typename scalar_t, typename acc_t>
__global__ void fsq_forward_kernel(const scalar_t* __restrict__ z, acc_t* __restrict__ codes,
                                   int32_t* __restrict__ indices, int64_t n, FsqParams p) {
  const int64_t row = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (row >= n) return;
  const scalar_t* zr = z + row * p.d;
  acc_t* cr = codes + row * p.d;
  int64_t idx = 0;
  bool bad = false;
  for (int j = 0; j < p.d; ++j) {
    const acc_t r = vqq::fsq_level<acc_t>(static_cast<acc_t>(zr[j]), p, j);
    cr[j] = r / acc_t(p.half_width[j]);
    if (r != r) {
      bad = true;
    } else {
      idx += int64_t(int64_t(r) + p.half_width[j]) * p.basis[j];
    }
  }
  indices[row] = bad ? int32_t(-1) : int32_t(idx);
}

template <typename scalar_t, typename acc_t>
__global__ void fsq_backward_kernel(const acc_t* __restrict__ grad, const scalar_t* __restrict__ z,
                                    scalar_t* __restrict__ grad_z, int64_t n, FsqParams p) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n * p.d) return;
  const int j = int(i % p.d);
  grad_z[i] = static_cast<scalar_t>(
      vqq::fsq_grad<acc_t>(static_cast<acc_t>(grad[i]), static_cast<acc_t>(z[i]), p, j));
}

// indices [n] (int32 or int64) -> codes [n, d] float32: ((idx // basis) % L - L//2) / (L//2).
template <typename index_t>
__global__ void fsq_indices_to_codes_kernel(const index_t* __restrict__ indices, float* __restrict__ codes,
                                            int64_t n, FsqParams p) {
  const int64_t row = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (row >= n) return;
  const int64_t idx = static_cast<int64_t>(indices[row]);
  for (int j = 0; j < p.d; ++j) {
    const int64_t lv = (idx / p.basis[j]) % p.levels[j];
    codes[row * p.d + j] = float(lv - p.half_width[j]) / float(p.half_width[j]);
  }
}

// ---- LFQ / BSQ sign quantization ------------------------------------------------------------------------
// One thread per row (vqq::lfq_row).
template <typename scalar_t>
__global__ void lfq_forward_kernel(const scalar_t* __restrict__ x, float* __restrict__ q,
                                   int64_t* __restrict__ indices, int64_t n, int d, float value) {
  const int64_t row = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (row >= n) return;
  indices[row] = vqq::lfq_row(x + row * d, q + row * d, d, value);
}

// c in [0, k); otherwise sets *bad, which the launcher reports after the kernel.
__device__ __forceinline__ bool code_in_range(int64_t c, int64_t k, int* bad) {
  if (c >= 0 && c < k) return true;
  atomicExch(bad, 1);
  return false;
}

// ---- per-code counts ----------------------------------------------------------------------------------
// Integer atomics: the result does not depend on the order. Indices outside [0, K) set *bad.
template <typename index_t>
__global__ void code_counts_kernel(const index_t* __restrict__ indices, int64_t n, int64_t k,
                                   unsigned long long* __restrict__ counts, int* __restrict__ bad) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const int64_t c = static_cast<int64_t>(indices[i]);
  if (!code_in_range(c, k, bad)) return;
  atomicAdd(counts + c, 1ull);
}

// ---- EMA statistics: a stable counting sort of the rows by code, then in-order segment sums -----------
// 1) hist[c][k] = rows of chunk c (rows [c*chunk, (c+1)*chunk)) with code k (integer atomics).
template <typename index_t>
__global__ void ema_chunk_hist_kernel(const index_t* __restrict__ indices, int64_t n, int64_t k, int chunk,
                                      int* __restrict__ hist, int* __restrict__ bad) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const int64_t c = static_cast<int64_t>(indices[i]);
  if (!code_in_range(c, k, bad)) return;
  atomicAdd(hist + (i / chunk) * k + c, 1);
}

// 2) per code: exclusive scan of hist over chunks (in place) and the total count.
__global__ void ema_chunk_scan_kernel(int* __restrict__ hist, int64_t nchunks, int64_t k,
                                      int64_t* __restrict__ counts) {
  const int64_t code = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (code >= k) return;
  int run = 0;
  for (int64_t c = 0; c < nchunks; ++c) {
    const int v = hist[c * k + code];
    hist[c * k + code] = run;
    run += v;
  }
  counts[code] = run;
}

// 3) exclusive scan of counts over codes, one block: each thread scans a contiguous range of codes.
constexpr int kScanThreads = 256;
__global__ void ema_offsets_kernel(const int64_t* __restrict__ counts, int64_t k, int64_t* __restrict__ offsets) {
  IMTOK_SHARED_ARRAY(int64_t, partial, kScanThreads);
  const int t = threadIdx.x;
  const int64_t per = (k + kScanThreads - 1) / kScanThreads;
  const int64_t lo = imtok_min<int64_t>(k, t * per), hi = imtok_min<int64_t>(k, lo + per);
  int64_t s = 0;
  for (int64_t i = lo; i < hi; ++i) s += counts[i];
  partial[t] = s;
  __syncthreads();
  if (t == 0) {
    int64_t run = 0;
    for (int i = 0; i < kScanThreads; ++i) {
      const int64_t v = partial[i];
      partial[i] = run;
      run += v;
    }
  }
  __syncthreads();
  int64_t run = partial[t];
  for (int64_t i = lo; i < hi; ++i) {
    offsets[i] = run;
    run += counts[i];
  }
}

// 4) place each row: position = offsets[code] + (rows of earlier chunks with the code) + (rows earlier in
//    this chunk with the code). One block of `chunk` threads per chunk; the chunk's codes in shared memory.
template <typename index_t>
__global__ void ema_place_kernel(const index_t* __restrict__ indices, int64_t n, int64_t k,
                                 const int* __restrict__ hist, const int64_t* __restrict__ offsets,
                                 int64_t* __restrict__ perm) {
  IMTOK_DYNAMIC_SHARED(int64_t, codes);
  const int chunk = blockDim.x;
  const int64_t base = int64_t(blockIdx.x) * chunk;
  const int t = threadIdx.x;
  const int64_t i = base + t;
  codes[t] = i < n ? static_cast<int64_t>(indices[i]) : int64_t(-1);
  __syncthreads();
  if (i >= n) return;
  const int64_t c = codes[t];
  int rank = 0;
  for (int m = 0; m < t; ++m) rank += codes[m] == c ? 1 : 0;
  perm[offsets[c] + hist[int64_t(blockIdx.x) * k + c] + rank] = i;
}

// 5) sums[k][j] = sum over the rows of code k, in increasing row order, accumulated in acc_t.
template <typename scalar_t, typename acc_t>
__global__ void ema_segment_sum_kernel(const scalar_t* __restrict__ x, int64_t d, const int64_t* __restrict__ perm,
                                       const int64_t* __restrict__ offsets, const int64_t* __restrict__ counts,
                                       int64_t k, acc_t* __restrict__ sums) {
  const int64_t t = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (t >= k * d) return;
  const int64_t code = t / d, j = t % d;
  const int64_t lo = offsets[code], hi = lo + counts[code];
  acc_t s = acc_t(0);
  for (int64_t p = lo; p < hi; ++p) s += static_cast<acc_t>(x[perm[p] * d + j]);
  sums[t] = s;
}

}  // namespace quantizers
}  // namespace IMTOK_DEVICE_NS
}  // namespace imtok
