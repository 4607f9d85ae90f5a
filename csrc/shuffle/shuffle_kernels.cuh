// Device kernels of Token-Shuffle. Plain CUDA C++ (also runs under the emulation shim).
//   permute_kernel: the shuffle / unshuffle permutation, one thread per element of the coarse layout.
//   gather_gemm_kernel: C = A @ W^T (+ bias) with A's rows gathered through the shuffle (ShuffleLinear) or
//   C's rows scattered through the unshuffle (LinearUnshuffle): 16 x 16 shared-memory tiles, SIMT FMA,
//   fp32 (fp64 for double) accumulation. No tensor cores, so this same path runs in the shim.
#pragma once

#include "common/device.h"
#include "shuffle/shuffle_index.h"

namespace imtok {
namespace IMTOK_DEVICE_NS {
namespace shuffle {

// coarse element e = ((b Q + q) S + sub) D + d  <->  fine element (b T + fine_token(q, sub)) D + d
template <typename scalar_t>
__global__ void permute_kernel(const scalar_t* __restrict__ src, scalar_t* __restrict__ dst, int64_t n,
                               int64_t Q, int64_t w, int64_t s, int64_t D, bool to_coarse) {
  const int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (e >= n) return;
  const int64_t S = s * s;
  const int64_t d = e % D;
  const int64_t rest = e / D;
  const int64_t sub = rest % S;
  const int64_t bq = rest / S;
  const int64_t b = bq / Q, q = bq % Q;
  const int64_t f = (b * Q * S + imtok::shuffle::fine_token(q, sub, w, s)) * D + d;
  if (to_coarse) dst[e] = src[f];
  else dst[f] = src[e];
}

constexpr int kTile = 16;

// rows = B Q coarse rows; K inputs; N outputs. mode 0: A gathered (x fine [B, T, D], K = S D), C plain [rows, N].
// mode 1: A plain [rows, K], C scattered into fine [B, T, D] with N = S D.
template <typename scalar_t, typename acc_t>
__global__ void gather_gemm_kernel(const scalar_t* __restrict__ a, const scalar_t* __restrict__ wgt,
                                   const scalar_t* __restrict__ bias, scalar_t* __restrict__ c, int64_t rows,
                                   int64_t K, int64_t N, int64_t Q, int64_t w, int64_t s, int64_t D, int mode) {
  IMTOK_SHARED_ARRAY2(acc_t, as, kTile, kTile + 1);
  IMTOK_SHARED_ARRAY2(acc_t, ws, kTile, kTile + 1);
  const int tx = threadIdx.x, ty = threadIdx.y;  // tx: output column / k in loads, ty: row
  const int64_t row = int64_t(blockIdx.y) * kTile + ty;
  const int64_t col = int64_t(blockIdx.x) * kTile + tx;
  const int64_t S = s * s;
  acc_t acc = 0;
  for (int64_t k0 = 0; k0 < K; k0 += kTile) {
    // A tile: rows of this block, k = k0 + tx
    const int64_t ka = k0 + tx;
    acc_t av = 0;
    if (row < rows && ka < K) {
      if (mode == 0) {
        const int64_t b = row / Q, q = row % Q, sub = ka / D, d = ka % D;
        av = static_cast<acc_t>(a[(b * Q * S + imtok::shuffle::fine_token(q, sub, w, s)) * D + d]);
      } else {
        av = static_cast<acc_t>(a[row * K + ka]);
      }
    }
    as[ty][tx] = av;
    // W tile: output columns of this block (indexed by ty), k = k0 + tx; stored transposed
    const int64_t wn = int64_t(blockIdx.x) * kTile + ty;
    ws[tx][ty] = (wn < N && ka < K) ? static_cast<acc_t>(wgt[wn * K + ka]) : static_cast<acc_t>(0);
    __syncthreads();
    for (int kk = 0; kk < kTile; ++kk) acc += as[ty][kk] * ws[kk][tx];
    __syncthreads();
  }
  if (row < rows && col < N) {
    if (bias) acc += static_cast<acc_t>(bias[col]);
    if (mode == 0) {
      c[row * N + col] = static_cast<scalar_t>(acc);
    } else {
      const int64_t b = row / Q, q = row % Q, sub = col / D, d = col % D;
      c[(b * Q * S + imtok::shuffle::fine_token(q, sub, w, s)) * D + d] = static_cast<scalar_t>(acc);
    }
  }
}

}  // namespace shuffle
}  // namespace IMTOK_DEVICE_NS
}  // namespace imtok
