// Per-element helpers of the prune family, shared by the CPU kernels and the device kernels.
#pragma once

#include <cmath>
#include <cstdint>

#include "common/device.h"
#include "common/sorted_insert.h"

namespace imtok {
namespace prune {

// 1 / sqrt(degree): GTP's normalized edge weight between r and j is inv_sqrt_degree(r) * inv_sqrt_degree(j).
template <typename T>
IMTOK_HD T inv_sqrt_degree(int degree) { return T(1) / imtok_sqrt(static_cast<T>(degree)); }

// True when (a, ia) comes before (b, ib) in a descending top-k order: larger score first, NaN counts as the
// largest value (as torch.topk), equal scores by ascending index (deterministic; torch.topk leaves ties open).
template <typename T>
IMTOK_HD bool ranks_before(T a, int64_t ia, T b, int64_t ib) {
  const bool an = a != a, bn = b != b;
  if (an != bn) return an;
  if (!an && a != b) return a > b;
  return ia < ib;
}

// Neighbours of cell r on a side x side grid (8-neighbourhood, row-major, ascending index), written to out;
// returns how many (3, 5 or 8 for side >= 2). Cells beyond side*side (non-square M) have none.
IMTOK_HD int spatial_neighbors(int64_t r, int64_t side, int64_t M, int64_t* out) {
  int n = 0;
  if (side <= 0 || r >= side * side) return 0;
  const int64_t y = r / side, x = r % side;
  for (int64_t dy = -1; dy <= 1; ++dy) {
    for (int64_t dx = -1; dx <= 1; ++dx) {
      if (dy == 0 && dx == 0) continue;
      const int64_t yy = y + dy, xx = x + dx;
      if (yy < 0 || yy >= side || xx < 0 || xx >= side) continue;
      const int64_t j = yy * side + xx;
      if (j < M) out[n++] = j;
    }
  }
  return n;
}

// Insert (v, j) into a descending top-k list of length n (capacity k), ties by ascending index.
template <typename T>
IMTOK_HD void topk_insert(T* vals, int64_t* idxs, int& n, int k, T v, int64_t j) {
  sorted_insert(vals, idxs, n, k, v, j, [](T a, int64_t ia, T b, int64_t ib) { return ranks_before(a, ia, b, ib); });
}

}  // namespace prune
}  // namespace imtok
