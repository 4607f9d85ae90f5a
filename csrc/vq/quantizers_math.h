// Per-element math of the vq quantizers (FSQ, LFQ), shared by the CPU kernels and the device kernels.
#pragma once

#include <cmath>
#include <cstdint>

#include "common/device.h"
#include "common/limits.h"

namespace imtok {
namespace vqq {

// FSQ constants per dimension, computed once on the host exactly as vector-quantize-pytorch 1.32 does in
// fp32: half_l = (L - 1) * (1 + 1e-3) / 2, offset = 0.5 (L even) or 0, shift = atanh(offset / half_l).
struct FsqParams {
  int d;
  int levels[kFsqMaxDims];
  int half_width[kFsqMaxDims];  // L // 2
  int basis[kFsqMaxDims];       // cumprod([1] + levels[:-1]) (first dim least significant)
  float half_l[kFsqMaxDims];
  float offset[kFsqMaxDims];
  float shift[kFsqMaxDims];
};

IMTOK_HD float fsq_tanh(float v) { return tanhf(v); }
IMTOK_HD double fsq_tanh(double v) { return tanh(v); }
IMTOK_HD float fsq_rint(float v) { return rintf(v); }   // round half to even (default rounding mode)
IMTOK_HD double fsq_rint(double v) { return rint(v); }

// Quantize one element of dimension j: returns the integer level r in [-L//2, L - 1 - L//2] (as opmath).
// The expression order matches the anchor: tanh(z + shift) * half_l - offset, then round half to even.
template <typename acc_t>
IMTOK_HD acc_t fsq_level(acc_t z, const FsqParams& p, int j) {
  const acc_t bounded = fsq_tanh(z + acc_t(p.shift[j])) * acc_t(p.half_l[j]) - acc_t(p.offset[j]);
  return fsq_rint(bounded);
}

// d codes / d z for the straight-through estimator, in the order autograd evaluates the anchor's graph:
// ((grad / (L//2)) * half_l) * (1 - t * t), t = tanh(z + shift).
template <typename acc_t>
IMTOK_HD acc_t fsq_grad(acc_t grad, acc_t z, const FsqParams& p, int j) {
  const acc_t t = fsq_tanh(z + acc_t(p.shift[j]));
  return ((grad / acc_t(p.half_width[j])) * acc_t(p.half_l[j])) * (acc_t(1) - t * t);
}

// LFQ / BSQ sign quantization of one row of d values: q = +value where x > 0 else -value (x == 0 and NaN ->
// -value); returns the index, bits most-significant first.
template <typename scalar_t>
IMTOK_HD int64_t lfq_row(const scalar_t* x, float* q, int d, float value) {
  int64_t idx = 0;
  for (int j = 0; j < d; ++j) {
    const bool pos = static_cast<float>(x[j]) > 0.f;
    q[j] = pos ? value : -value;
    idx = (idx << 1) | (pos ? 1 : 0);
  }
  return idx;
}

}  // namespace vqq
}  // namespace imtok
