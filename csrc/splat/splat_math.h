// Per-token and per-pixel math of the Gaussian splat renderer, shared by the CPU kernels and the device code.
// Conventions (see imtok_cuda/reference/splat.py): pixel grid x_j = 2 j / (W - 1) - 1 (-1 when W == 1),
// inclusive axis-aligned box |dx| <= s sigma_x and |dy| <= s sigma_y, v = exp(-q / (2 (1 - rho^2))).
// The coordinate and box tests use exactly the reference's floating-point operations, so the set of
// (token, pixel) pairs a kernel visits is bit-identical to the reference's mask.
#pragma once

#include <cmath>
#include <cstdint>

#include "common/device.h"

namespace imtok {
namespace splat {

// Coordinate of pixel j on a side of n pixels, computed as the reference does: (2 j) / (n - 1) - 1.
template <typename T>
IMTOK_HD T coord(int64_t j, int64_t n) {
  return n == 1 ? T(-1) : T(2 * j) / T(n - 1) - T(1);
}

// |d| <= r without fabs (exact: negation is exact), false for NaN.
template <typename T>
IMTOK_HD bool within(T d, T r) {
  return d <= r && -d <= r;
}

// floor(u) clamped to [-1, n] (inf and NaN safe).
template <typename T>
IMTOK_HD int64_t clamp_floor(T u, int64_t n) {
  if (!(u > T(-1))) return -1;
  if (!(u < T(n))) return n;
  const int64_t k = static_cast<int64_t>(u);  // u > -1: truncation, fix below for negatives
  return (T(k) > u) ? k - 1 : k;
}

// A conservative pixel-index range [lo, hi] (clamped to [0, n-1], empty when lo > hi) that contains every
// pixel whose coordinate is within r of mu: the continuous estimate widened by one pixel on each side.
template <typename T>
IMTOK_HD void box_range_estimate(T mu, T r, int64_t n, int64_t& lo, int64_t& hi) {
  const T half = T(n - 1) * T(0.5);
  const T ulo = (mu - r + T(1)) * half;
  const T uhi = (mu + r + T(1)) * half;
  lo = clamp_floor(ulo, n) - 1;
  hi = clamp_floor(uhi, n) + 2;
  if (lo < 0) lo = 0;
  if (hi > n - 1) hi = n - 1;
}

template <typename T>
struct Token {
  T mux, muy;   // centre
  T rx, ry;     // box half-widths s * sigma
  T sx, sy, rho;
  T w1;         // -1 / (2 (1 - rho^2))
  T w2, w3, w4; // 1/sx^2, 1/(sx sy), 1/sy^2
};

// s is the box size in sigmas (inf: no cutoff), already in the compute type.
template <typename T>
IMTOK_HD Token<T> make_token(T sx, T sy, T rho, T mux, T muy, T s) {
  Token<T> t;
  t.sx = sx;
  t.sy = sy;
  t.rho = rho;
  t.mux = mux;
  t.muy = muy;
  t.rx = s * sx;
  t.ry = s * sy;
  t.w1 = T(-1) / (T(2) * (T(1) - rho * rho));
  t.w2 = T(1) / (sx * sx);
  t.w3 = T(1) / (sx * sy);
  t.w4 = T(1) / (sy * sy);
  return t;
}

// q of the spec for an offset (dx, dy).
template <typename T>
IMTOK_HD T quad(const Token<T>& t, T dx, T dy) {
  return dx * dx * t.w2 - T(2) * t.rho * dx * dy * t.w3 + dy * dy * t.w4;
}

}  // namespace splat
}  // namespace imtok
