// Kernels that exercise the emulation shim itself: correct ones (block reduction, warp shuffles and votes,
// atomics) and deliberately broken ones (missing barrier, out-of-bounds shared memory, early exit before a
// barrier, barriers at different sites, a warp reduction without __syncwarp) that the shim must report.
// Compiled only into emulation builds (tests/test_emu_shim.py).
#pragma once

#include "common/device.h"

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

}  // namespace selftest
}  // namespace IMTOK_DEVICE_NS
}  // namespace imtok
