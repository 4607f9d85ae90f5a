// Per-element math of the sampling family, shared by the CPU kernels and the device kernels (IMTOK_HD):
// Philox-4x32-10, uniforms, TiTok's Gumbel, the CFG combines, order-preserving float keys.
//
// Random streams: every draw is philox(key = seed, counter = (idx / 4, row lo, row hi, stream))[idx % 4], so a
// number depends only on (seed, stream, row, idx), never on which thread draws it.
#pragma once

#include <c10/util/bit_cast.h>

#include <cstdint>

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
IMTOK_HD float uniform_from_bits(uint32_t b) {
  return static_cast<float>(static_cast<int32_t>(b >> 8)) * 5.9604644775390625e-08f;
}

IMTOK_HD float philox_uniform(uint64_t seed, uint32_t stream, uint64_t row, uint64_t idx) {
  return uniform_from_bits(u32x4_get(philox_group(seed, stream, row, idx >> 2), static_cast<int>(idx & 3)));
}

// The bits of a float as uint32 and back.
IMTOK_HD uint32_t float_bits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  return c10::bit_cast<uint32_t>(f);
#endif
}
IMTOK_HD float float_from_bits(uint32_t b) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(b);
#else
  return c10::bit_cast<float>(b);
#endif
}

// Natural log of a positive normal float, branch-free (Cephes logf's polynomial): the same operations on every
// path, so the CPU kernels (scalar or auto-vectorized, no FMA on x86-64 builds) and the emulated device kernels
// give the same bits; max error about 1 ulp. Only for the Gumbel draws, whose inputs are in [1e-20, 46.1].
IMTOK_HD float log_pos(float x) {
  const uint32_t b = float_bits(x);
  const int32_t small = (b & 0x007fffffu) < 0x3504f3u ? 1 : 0;  // mantissa below sqrt(1/2) * 2 (as m in [1, 2))
  const int32_t e = static_cast<int32_t>(b >> 23) - 126 - small;  // x = m 2^e
  const float m = float_from_bits((b & 0x007fffffu) | 0x3f000000u);  // in [0.5, 1)
  const float f = (m + m * static_cast<float>(small)) - 1.0f;  // m in [sqrt(1/2), sqrt(2)) minus 1
  const float z = f * f;
  float y = 7.0376836292e-2f;
  y = y * f - 1.1514610310e-1f;
  y = y * f + 1.1676998740e-1f;
  y = y * f - 1.2420140846e-1f;
  y = y * f + 1.4249322787e-1f;
  y = y * f - 1.6668057665e-1f;
  y = y * f + 2.0000714765e-1f;
  y = y * f - 2.4999993993e-1f;
  y = y * f + 3.3333331174e-1f;
  y = y * f * z;
  const float fe = static_cast<float>(e);
  y = y + -2.12194440e-4f * fe;
  y = y + -0.5f * z;
  float r = f + y;
  r = r + 0.693359375f * fe;
  return r;
}

// TiTok: -log(-log(u)) with log(t) = log(clamp(t, min=1e-20)), u in [0, 1).
IMTOK_HD float gumbel_from_uniform(float u) {
  const float a = -log_pos(u < 1e-20f ? 1e-20f : u);
  return -log_pos(a < 1e-20f ? 1e-20f : a);
}
// The same number from the raw Philox output, written without branches (vectorizes): u = 0 is the only u below
// 1e-20, and -log(u) >= -log(1 - 2^-24) > 1e-20, so the second clamp never acts.
IMTOK_HD float gumbel_from_bits(uint32_t b) {
  const uint32_t k = b >> 8;
  const float u = static_cast<float>(static_cast<int32_t>(k)) * 5.9604644775390625e-08f +
                  static_cast<float>(k == 0u ? 1 : 0) * 1e-20f;
  return -log_pos(-log_pos(u));
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

// Order-preserving key: a < b (floats, no NaN) <=> key(a) < key(b); -0.0 and +0.0 get different keys, so they
// are made equal first.
IMTOK_HD uint32_t float_key(float f) {
  if (f == 0.0f) f = 0.0f;
  const uint32_t u = float_bits(f);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

// The softmax mass of a logit l in a row with max m as a 32.32 fixed-point integer: exp(l - m) in [0, 1] times
// 2^32. Top-p sums these, so every implementation (and every summation order) gets the same sums.
IMTOK_HD uint64_t mass_fixed(float l, float m) {
  float e = expf(l - m);
  if (!(e >= 0.0f)) e = 0.0f;  // NaN (an infinite logit): no mass, and no undefined float -> integer cast
  if (e > 1.0f) e = 1.0f;
  return static_cast<uint64_t>(static_cast<double>(e) * 4294967296.0);
}

// The normaliser of a row from its fixed-point mass (the same float in every implementation).
IMTOK_HD float fixed_to_float(uint64_t z) { return static_cast<float>(static_cast<double>(z) * 2.3283064365386963e-10); }

// How many of the neq tokens tied at the top-p cut-off value (each of mass w, after mass G strictly above) are
// kept: #{n < neq : G + n w < target}, at least one.
IMTOK_HD int64_t top_p_ties_kept(uint64_t G, uint64_t w, int64_t neq, double target) {
  int64_t c = 0;
  uint64_t acc = G;
  while (c < neq && static_cast<double>(acc) < target) {
    ++c;
    acc += w;
  }
  return c < 1 ? 1 : c;
}

}  // namespace sampling
}  // namespace imtok
