// Per-element math of the sampling family, shared by the CPU kernels and the device kernels (IMTOK_HD):
// Philox-4x32-10, uniforms, TiTok's Gumbel, the CFG combines, order-preserving float keys.
//
// Random streams: every draw is philox(key = seed, counter = (idx / 4, row lo, row hi, stream))[idx % 4], so a
// number depends only on (seed, stream, row, idx), never on which thread draws it.
#pragma once

#include <cstdint>
#include <cstring>

#include "common/device.h"

namespace imtok {
namespace sampling {

// Philox streams (the counter's last word).
constexpr uint32_t kStreamSample = 0;      // sample_logits Gumbel-max, maskgit sampling Gumbel over V
constexpr uint32_t kStreamConfidence = 1;  // maskgit confidence Gumbel, one per position
constexpr uint32_t kStreamAccept = 2;      // gsd acceptance uniforms, one per draft position
constexpr uint32_t kStreamResample = 3;    // gsd residual / extra-row Gumbel-max over V

struct U32x4 {
  uint32_t x, y, z, w;
};

IMTOK_HD uint32_t mulhilo(uint32_t a, uint32_t b, uint32_t* hi) {
  const uint64_t p = static_cast<uint64_t>(a) * static_cast<uint64_t>(b);
  *hi = static_cast<uint32_t>(p >> 32);
  return static_cast<uint32_t>(p);
}

// Philox-4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3").
IMTOK_HD U32x4 philox4x32_10(U32x4 c, uint32_t k0, uint32_t k1) {
  for (int r = 0; r < 10; ++r) {
    uint32_t hi0, hi1;
    const uint32_t lo0 = mulhilo(0xD2511F53u, c.x, &hi0);
    const uint32_t lo1 = mulhilo(0xCD9E8D57u, c.z, &hi1);
    c = U32x4{hi1 ^ c.y ^ k0, lo1, hi0 ^ c.w ^ k1, lo0};
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  return c;
}

// The four numbers of counter group `group` (elements 4 group .. 4 group + 3) of (seed, stream, row).
IMTOK_HD U32x4 philox_group(uint64_t seed, uint32_t stream, uint64_t row, uint64_t group) {
  return philox4x32_10(U32x4{static_cast<uint32_t>(group), static_cast<uint32_t>(row),
                             static_cast<uint32_t>(row >> 32), stream ^ (static_cast<uint32_t>(group >> 32) << 8)},
                       static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
}

IMTOK_HD uint32_t u32x4_get(const U32x4& v, int i) { return i == 0 ? v.x : (i == 1 ? v.y : (i == 2 ? v.z : v.w)); }

// u in [0, 1): the top 24 bits (exact in float32).
IMTOK_HD float uniform_from_bits(uint32_t b) { return static_cast<float>(b >> 8) * 5.9604644775390625e-08f; }

IMTOK_HD float philox_uniform(uint64_t seed, uint32_t stream, uint64_t row, uint64_t idx) {
  return uniform_from_bits(u32x4_get(philox_group(seed, stream, row, idx >> 2), static_cast<int>(idx & 3)));
}

// TiTok: -log(-log(u)) with log(t) = log(clamp(t, min=1e-20)).
IMTOK_HD float gumbel_from_uniform(float u) {
  const float a = -logf(u < 1e-20f ? 1e-20f : u);
  return -logf(a < 1e-20f ? 1e-20f : a);
}

// Round-to-nearest float ops that nvcc may not contract into FMAs, so the combines equal torch's separate ops.
IMTOK_HD float fmul_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}
IMTOK_HD float fadd_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fadd_rn(a, b);
#else
  return a + b;
#endif
}
IMTOK_HD float fsub_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fsub_rn(a, b);
#else
  return a - b;
#endif
}

// uncond + (cond - uncond) * s (LlamaGen, MDT)
IMTOK_HD float cfg_from_uncond(float c, float u, float s) { return fadd_rn(u, fmul_rn(fsub_rn(c, u), s)); }
// cond + (cond - uncond) * s (MUSE / TiTok constant and linear)
IMTOK_HD float cfg_from_cond(float c, float u, float s) { return fadd_rn(c, fmul_rn(fsub_rn(c, u), s)); }

// l + t * g as torch computes it (t * g rounded first).
IMTOK_HD float add_scaled(float l, float t, float g) { return fadd_rn(l, fmul_rn(t, g)); }

IMTOK_HD uint32_t float_bits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
#endif
}

// Order-preserving key: a < b (floats, no NaN) <=> key(a) < key(b); -0.0 and +0.0 get different keys, so they
// are made equal first.
IMTOK_HD uint32_t float_key(float f) {
  if (f == 0.0f) f = 0.0f;
  const uint32_t u = float_bits(f);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

}  // namespace sampling
}  // namespace imtok
