// Kernels that exercise the emulation shim itself: correct ones (block reduction, warp shuffles and votes,
// atomics) and deliberately broken ones (missing barrier, out-of-bounds shared memory, early exit before a
// barrier, barriers at different sites, a warp reduction without __syncwarp) that the shim must report.
// Compiled only into emulation builds (tests/test_emu_shim.py).
#pragma once

#include "common/device.h"
#include "common/mma.h"

namespace imtok {
namespace IMTOK_DEVICE_NS {
namespace selftest {

enum Case : int {
  kBlockSum = 0,       // correct: shared-memory tree reduction + warp shuffles
  kWarpVotes = 1,      // correct: ballot / any / all / shfl_xor / shfl_up
  kAtomicSum = 2,      // correct: atomicAdd on global memory from every thread
  kMissingBarrier = 3, // broken: reads a neighbour's shared-memory slot with no __syncthreads
  kOutOfBounds = 4,    // broken: indexes shared memory one past the end
  kEarlyExit = 5,      // broken: some threads return before a __syncthreads
  kDifferentSites = 6, // broken: even and odd threads wait at different __syncthreads
  kWarpNoSync = 7,     // broken: warp-level reduction in shared memory without __syncwarp
};

// 128 threads, one block; x has 128 floats; out[0] = result (or per-thread results for kWarpVotes)
__global__ void selftest_kernel(int which, const float* __restrict__ x, float* __restrict__ out) {
  IMTOK_SHARED_ARRAY(float, s, 128);
  const int t = threadIdx.x;
  switch (which) {
    case kBlockSum: {
      s[t] = x[t];
      __syncthreads();
      for (int stride = 64; stride >= 32; stride /= 2) {
        if (t < stride) s[t] = s[t] + s[t + stride];
        __syncthreads();
      }
      if (t < 32) {
        float v = s[t];
        for (int o = 16; o > 0; o /= 2) v += __shfl_down_sync(0xffffffffu, v, o);
        if (t == 0) out[0] = v;
      }
      break;
    }
    case kWarpVotes: {
      const bool pred = x[t] > 0.f;
      const unsigned b = __ballot_sync(0xffffffffu, pred);
      const bool any = __any_sync(0xffffffffu, pred);
      const bool all = __all_sync(0xffffffffu, pred);
      const float xr = __shfl_xor_sync(0xffffffffu, x[t], 1);
      const float up = __shfl_up_sync(0xffffffffu, x[t], 1);
      const float bc = __shfl_sync(0xffffffffu, x[t], 5);
      out[t * 6 + 0] = static_cast<float>(__popc(b));
      out[t * 6 + 1] = any ? 1.f : 0.f;
      out[t * 6 + 2] = all ? 1.f : 0.f;
      out[t * 6 + 3] = xr;
      out[t * 6 + 4] = up;
      out[t * 6 + 5] = bc;
      break;
    }
    case kAtomicSum:
      atomicAdd(out, x[t]);
      break;
    case kMissingBarrier:
      s[t] = x[t];
      out[t] = s[(t + 1) % 128];  // BUG: thread t+1 may not have written yet
      break;
    case kOutOfBounds:
      s[t + 1] = x[t];  // BUG: thread 127 writes s[128]
      break;
    case kEarlyExit:
      if (t >= 100) return;  // BUG: threads 100.. leave while the rest wait below
      s[t] = x[t];
      __syncthreads();
      out[t] = s[127 - t];
      break;
    case kDifferentSites:
      if (t % 2 == 0) {
        __syncthreads();  // BUG: two different barriers
      } else {
        __syncthreads();
      }
      break;
    case kWarpNoSync:
      s[t] = x[t];
      __syncthreads();
      if (t < 32) {
        for (int o = 16; o > 0; o /= 2) {
          if (t < o) s[t] = s[t] + s[t + o];  // BUG: needs __syncwarp() between the steps
        }
        if (t == 0) out[0] = s[0];
      }
      break;
  }
}

// The emulated wmma: one block of 4 warps, each computing one 16 x 16 tile of C = A B (pass 0, B loaded
// row-major) and of C = A B^T (pass 1, B loaded col-major) for 32 x 32 fp16 A, B staged in shared memory;
// out [2][32][32] fp32, copied out of shared memory by lanes that did not store those elements.
enum WmmaCase : int {
  kWmmaGemm = 0,         // correct
  kWmmaNoSyncwarp = 1,   // broken: lanes read the stored tile without __syncwarp
  kWmmaDivergent = 2,    // broken: half of the warp skips mma_sync
  kWmmaMisaligned = 3,   // broken: store to a pointer 16 bytes off the 32-byte alignment
};
constexpr int kWmmaLd = 40, kWmmaLdC = 36;
constexpr size_t kWmmaSmem = 2 * 32 * kWmmaLd * 2 + 32 * kWmmaLdC * 4;

__global__ void wmma_selftest_kernel(int which, const c10::Half* __restrict__ a, const c10::Half* __restrict__ b,
                                     float* __restrict__ out) {
  namespace wm = imtok_wmma;
  using mt = mma_element<c10::Half>::type;
  IMTOK_DYNAMIC_SHARED(unsigned char, smem);
  auto sA = smem_region<mt>(smem, 0);
  auto sB = smem_region<mt>(smem, 32 * kWmmaLd * 2);
  auto sC = smem_region<float>(smem, 2 * 32 * kWmmaLd * 2);
  const int t = threadIdx.x, warp = t / 32, lane = t % 32, ti = warp / 2, tj = warp % 2;
  for (int e = t; e < 32 * 32; e += blockDim.x) {
    sA[(e / 32) * kWmmaLd + e % 32] = mma_element<c10::Half>::from_float(static_cast<float>(a[e]));
    sB[(e / 32) * kWmmaLd + e % 32] = mma_element<c10::Half>::from_float(static_cast<float>(b[e]));
  }
  __syncthreads();
  for (int pass = 0; pass < 2; ++pass) {
    wm::fragment<wm::accumulator, 16, 16, 16, float> acc;
    wm::fill_fragment(acc, 0.f);
    for (int kk = 0; kk < 2; ++kk) {
      wm::fragment<wm::matrix_a, 16, 16, 16, mt, wm::row_major> fa;
      wm::load_matrix_sync(fa, sA + 16 * ti * kWmmaLd + 16 * kk, kWmmaLd);
      if (pass == 0) {
        wm::fragment<wm::matrix_b, 16, 16, 16, mt, wm::row_major> fb;  // B[k][n]
        wm::load_matrix_sync(fb, sB + 16 * kk * kWmmaLd + 16 * tj, kWmmaLd);
        if (which == kWmmaDivergent && lane >= 16) continue;  // BUG: lanes 16.. skip the warp-wide mma
        wm::mma_sync(acc, fa, fb, acc);
      } else {
        wm::fragment<wm::matrix_b, 16, 16, 16, mt, wm::col_major> fb;  // B^T[k][n] = B[n][k]
        wm::load_matrix_sync(fb, sB + 16 * tj * kWmmaLd + 16 * kk, kWmmaLd);
        wm::mma_sync(acc, fa, fb, acc);
      }
    }
    const int skew = which == kWmmaMisaligned ? 4 : 0;  // BUG when 4: 16 bytes off
    wm::store_matrix_sync(sC + 16 * ti * kWmmaLdC + 16 * tj + skew, acc, kWmmaLdC, wm::mem_row_major);
    if (which != kWmmaNoSyncwarp) __syncwarp(0xffffffffu);
    for (int i = lane * 8; i < lane * 8 + 8; ++i) {
      const int r = 16 * ti + i / 16, c = 16 * tj + i % 16;
      out[pass * 1024 + r * 32 + c] = sC[r * kWmmaLdC + c];
    }
    __syncwarp(0xffffffffu);  // the tile is read before the next pass stores over it
  }
}

}  // namespace selftest
}  // namespace IMTOK_DEVICE_NS
}  // namespace imtok
