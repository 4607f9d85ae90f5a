// Device kernels of the Gaussian splat renderer (plain CUDA C++: also runs under the CPU emulation shim).
//
// Forward: one launch for the whole batch; a block renders a 16 x 16 pixel tile of one image for a chunk of
// at most CMAX channels. The image's tokens are staged through shared memory 256 at a time: each thread
// computes one token's constants and tests its box (a conservative pixel-index estimate) against the tile,
// the kept tokens are compacted in token order (ballot + warp prefix), their features are staged kGroup at a
// time, and every thread accumulates its pixel over the kept tokens in token order (exact per-pixel box test,
// bit-identical to the reference's mask). Output goes straight to [B, C, H, W]; optionally the weight sum map.
//
// Backward: one block per (token, image, channel chunk) over the token's clipped box: per-thread partial sums
// in a fixed pixel order, then a fixed-order block reduction (warp shuffles, then warps in order):
// deterministic, no atomics.
#pragma once

#include "common/device.h"
#include "splat/splat_math.h"

namespace imtok {
namespace IMTOK_DEVICE_NS {
namespace splat {

using imtok::splat::Token;

constexpr int kTile = 16;
constexpr int kThreads = kTile * kTile;  // forward block
constexpr int kWarps = kThreads / 32;
constexpr int kChunk = kThreads;         // tokens tested per round (one per thread)
constexpr int kGroup = 64;               // kept tokens whose features are staged at once
constexpr int kBwdThreads = 128;         // backward block
constexpr int kBwdWarps = kBwdThreads / 32;

IMTOK_HD int64_t valid_tokens(const int64_t* lengths, int b, int N) {
  if (lengths == nullptr) return N;
  const int64_t l = lengths[b];
  return l < 0 ? 0 : (l > N ? N : l);
}

// out[b, c0 + c, i, j] (when out) for c < min(CMAX, C - c0), c0 = CMAX * (blockIdx.z % nchunks);
// wsum[b, i, j] = sum of the in-box weights (when wsum; written by chunk 0). Grid (tiles_x, tiles_y, B * nchunks).
template <typename scalar_t, typename acc_t, int CMAX>
__global__ void __launch_bounds__(kThreads)
    splat_forward_kernel(const scalar_t* __restrict__ geom, const scalar_t* __restrict__ feat,
                         const int64_t* __restrict__ lengths, scalar_t* __restrict__ out, acc_t* __restrict__ wsum,
                         int N, int C, int H, int W, acc_t s, bool normalize, int nchunks) {
  // the kept tokens' constants, structure of arrays (in emulation every element is race-checked)
  IMTOK_SHARED_ARRAY(acc_t, s_mux, kChunk);
  IMTOK_SHARED_ARRAY(acc_t, s_muy, kChunk);
  IMTOK_SHARED_ARRAY(acc_t, s_rx, kChunk);
  IMTOK_SHARED_ARRAY(acc_t, s_ry, kChunk);
  IMTOK_SHARED_ARRAY(acc_t, s_rho, kChunk);
  IMTOK_SHARED_ARRAY(acc_t, s_w1, kChunk);
  IMTOK_SHARED_ARRAY(acc_t, s_w2, kChunk);
  IMTOK_SHARED_ARRAY(acc_t, s_w3, kChunk);
  IMTOK_SHARED_ARRAY(acc_t, s_w4, kChunk);
  IMTOK_SHARED_ARRAY(int, s_idx, kChunk);
  IMTOK_SHARED_ARRAY(int, s_wcount, kWarps);
  IMTOK_SHARED_ARRAY(acc_t, s_f, kGroup * CMAX);

  const int tid = threadIdx.x + threadIdx.y * kTile;
  const int lane = tid & 31, warp = tid >> 5;
  const int b = blockIdx.z / nchunks, chunk = blockIdx.z % nchunks;
  const int c0 = chunk * CMAX;
  const int cc = out == nullptr ? 0 : imtok_min(CMAX, C - c0);
  const int tj0 = blockIdx.x * kTile, ti0 = blockIdx.y * kTile;
  const int tj1 = imtok_min(tj0 + kTile, W) - 1, ti1 = imtok_min(ti0 + kTile, H) - 1;
  const int j = tj0 + threadIdx.x, i = ti0 + threadIdx.y;
  const bool active = i < H && j < W;
  const acc_t x = imtok::splat::coord<acc_t>(j, W), y = imtok::splat::coord<acc_t>(i, H);
  const int64_t nb = valid_tokens(lengths, b, N);

  acc_t acc[CMAX];
#pragma unroll
  for (int c = 0; c < CMAX; ++c) acc[c] = acc_t(0);
  acc_t wacc = acc_t(0);

  for (int64_t t0 = 0; t0 < nb; t0 += kChunk) {
    const int64_t n = t0 + tid;
    bool keep = false;
    Token<acc_t> tk;
    if (n < nb) {
      const scalar_t* gp = geom + (int64_t(b) * N + n) * 5;
      tk = imtok::splat::make_token<acc_t>(static_cast<acc_t>(gp[0]), static_cast<acc_t>(gp[1]),
                                           static_cast<acc_t>(gp[2]), static_cast<acc_t>(gp[3]),
                                           static_cast<acc_t>(gp[4]), s);
      int64_t lo, hi;
      imtok::splat::box_range_estimate(tk.mux, tk.rx, W, lo, hi);
      keep = lo <= hi && lo <= tj1 && hi >= tj0;
      if (keep) {
        imtok::splat::box_range_estimate(tk.muy, tk.ry, H, lo, hi);
        keep = lo <= hi && lo <= ti1 && hi >= ti0;
      }
    }
    const unsigned ballot = __ballot_sync(0xffffffffu, keep);
    if (lane == 0) s_wcount[warp] = __popc(ballot);
    __syncthreads();
    int off = 0, total = 0;
    for (int w = 0; w < kWarps; ++w) {
      const int cw = s_wcount[w];
      if (w < warp) off += cw;
      total += cw;
    }
    if (keep) {
      const int pos = off + __popc(ballot & ((1u << lane) - 1u));
      s_mux[pos] = tk.mux;
      s_muy[pos] = tk.muy;
      s_rx[pos] = tk.rx;
      s_ry[pos] = tk.ry;
      s_rho[pos] = tk.rho;
      s_w1[pos] = tk.w1;
      s_w2[pos] = tk.w2;
      s_w3[pos] = tk.w3;
      s_w4[pos] = tk.w4;
      s_idx[pos] = static_cast<int>(n);
    }
    __syncthreads();
    for (int k0 = 0; k0 < total; k0 += kGroup) {
      const int kn = imtok_min(kGroup, total - k0);
      for (int e = tid; e < kn * cc; e += kThreads) {
        const int k = e / cc, c = e % cc;
        s_f[k * CMAX + c] = static_cast<acc_t>(feat[(int64_t(b) * N + s_idx[k0 + k]) * C + c0 + c]);
      }
      __syncthreads();
      if (active) {
        for (int k = 0; k < kn; ++k) {
          const int kk = k0 + k;
          const acc_t dx = x - s_mux[kk], dy = y - s_muy[kk];
          if (imtok::splat::within(dx, static_cast<acc_t>(s_rx[kk])) &&
              imtok::splat::within(dy, static_cast<acc_t>(s_ry[kk]))) {
            Token<acc_t> t;
            t.rho = s_rho[kk];
            t.w1 = s_w1[kk];
            t.w2 = s_w2[kk];
            t.w3 = s_w3[kk];
            t.w4 = s_w4[kk];
            const acc_t v = imtok::imtok_exp(t.w1 * imtok::splat::quad(t, dx, dy));
            wacc += v;
#pragma unroll
            for (int c = 0; c < CMAX; ++c)
              if (c < cc) acc[c] += v * s_f[k * CMAX + c];
          }
        }
      }
      __syncthreads();
    }
  }
  if (!active) return;
  if (wsum != nullptr && chunk == 0) wsum[(int64_t(b) * H + i) * W + j] = wacc;
  if (out != nullptr) {
#pragma unroll
    for (int c = 0; c < CMAX; ++c) {
      if (c < cc) {
        acc_t val = acc[c];
        if (normalize) val = wacc != acc_t(0) ? val / wacc : acc_t(0);
        out[((int64_t(b) * C + c0 + c) * H + i) * W + j] = static_cast<scalar_t>(val);
      }
    }
  }
}

// Gradients of token (blockIdx.y, blockIdx.x) for the channel chunk blockIdx.z (geometry by chunk 0).
// gp = dL/dF as [B, C, H, W] (already divided by the weight sum when normalized), kmap = sum_c gp F or null.
// Dynamic shared memory: C acc_t (the token's features).
template <typename scalar_t, typename acc_t, int CMAX>
__global__ void __launch_bounds__(kBwdThreads)
    splat_backward_kernel(const scalar_t* __restrict__ geom, const scalar_t* __restrict__ feat,
                          const int64_t* __restrict__ lengths, const acc_t* __restrict__ gp,
                          const acc_t* __restrict__ kmap, scalar_t* __restrict__ dgeom,
                          scalar_t* __restrict__ dfeat, int N, int C, int H, int W, acc_t s) {
  IMTOK_DYNAMIC_SHARED(acc_t, s_f);
  IMTOK_SHARED_ARRAY2(acc_t, s_red, kBwdWarps, 5 + CMAX);

  const int tid = threadIdx.x;
  const int lane = tid & 31, warp = tid >> 5;
  const int n = blockIdx.x, b = blockIdx.y, chunk = blockIdx.z;
  const int c0 = chunk * CMAX;
  const int cc = imtok_max(0, imtok_min(CMAX, C - c0));
  const int64_t tok = int64_t(b) * N + n;
  const int64_t HW = int64_t(H) * W;

  if (n >= valid_tokens(lengths, b, N)) {  // padding: zero gradient (uniform for the block)
    if (chunk == 0 && tid < 5) dgeom[tok * 5 + tid] = static_cast<scalar_t>(acc_t(0));
    for (int c = tid; c < cc; c += kBwdThreads) dfeat[tok * C + c0 + c] = static_cast<scalar_t>(acc_t(0));
    return;
  }
  for (int c = tid; c < C; c += kBwdThreads) s_f[c] = static_cast<acc_t>(feat[tok * C + c]);
  __syncthreads();

  const scalar_t* g = geom + tok * 5;
  const Token<acc_t> t =
      imtok::splat::make_token<acc_t>(static_cast<acc_t>(g[0]), static_cast<acc_t>(g[1]), static_cast<acc_t>(g[2]),
                                      static_cast<acc_t>(g[3]), static_cast<acc_t>(g[4]), s);
  int64_t j0, j1, i0, i1;
  imtok::splat::box_range_estimate(t.mux, t.rx, W, j0, j1);
  imtok::splat::box_range_estimate(t.muy, t.ry, H, i0, i1);
  const int64_t bw = j1 >= j0 ? j1 - j0 + 1 : 0, bh = i1 >= i0 ? i1 - i0 + 1 : 0;

  acc_t a[5 + CMAX];
#pragma unroll
  for (int k = 0; k < 5 + CMAX; ++k) a[k] = acc_t(0);
  const acc_t rw3 = t.rho * t.w3;
  for (int64_t p = tid; p < bw * bh; p += kBwdThreads) {
    const int64_t i = i0 + p / bw, j = j0 + p % bw;
    const acc_t dx = imtok::splat::coord<acc_t>(j, W) - t.mux;
    const acc_t dy = imtok::splat::coord<acc_t>(i, H) - t.muy;
    if (!(imtok::splat::within(dx, t.rx) && imtok::splat::within(dy, t.ry))) continue;
    const acc_t q = imtok::splat::quad(t, dx, dy);
    const acc_t v = imtok::imtok_exp(t.w1 * q);
    const acc_t* gpix = gp + int64_t(b) * C * HW + i * W + j;
    acc_t gs = kmap != nullptr ? -kmap[int64_t(b) * HW + i * W + j] : acc_t(0);
    for (int c = 0; c < C; ++c) gs += gpix[c * HW] * s_f[c];
#pragma unroll
    for (int c = 0; c < CMAX; ++c)
      if (c < cc) a[5 + c] += v * gpix[(c0 + c) * HW];
    const acc_t tt = gs * acc_t(2) * t.w1 * v;
    const acc_t dxdy = dx * dy;
    a[0] += tt * (rw3 * dxdy - t.w2 * dx * dx);
    a[1] += tt * (rw3 * dxdy - t.w4 * dy * dy);
    a[2] -= tt * (acc_t(2) * t.w1 * t.rho * q + t.w3 * dxdy);
    a[3] += tt * (-t.w2 * dx + rw3 * dy);
    a[4] += tt * (-t.w4 * dy + rw3 * dx);
  }
  // fixed-order block reduction: a tree within each warp, then the warps in order
#pragma unroll
  for (int k = 0; k < 5 + CMAX; ++k) {
    acc_t v = a[k];
    for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
    if (lane == 0) s_red[warp][k] = v;
  }
  __syncthreads();
  if (tid < 5 + cc) {
    acc_t v = acc_t(0);
    for (int w = 0; w < kBwdWarps; ++w) v += s_red[w][tid];
    if (tid < 5) {
      if (chunk == 0) {
        if (tid == 0) v = v / t.sx;
        if (tid == 1) v = v / t.sy;
        dgeom[tok * 5 + tid] = static_cast<scalar_t>(v);
      }
    } else {
      dfeat[tok * C + c0 + tid - 5] = static_cast<scalar_t>(v);
    }
  }
}

}  // namespace splat
}  // namespace IMTOK_DEVICE_NS
}  // namespace imtok
