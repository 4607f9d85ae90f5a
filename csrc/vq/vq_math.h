// Ordering of candidate codes shared by the CPU and device kernels of the vq family.
//
// torch.argmin semantics: NaN is the smallest value (the first NaN wins), otherwise the smaller distance,
// and among equal distances the lower code index. nearest and nearest_topk use this one order, so
// nearest_topk(...)[..., 0] == nearest(...) always.
#pragma once

#include "common/device.h"
#include "common/sorted_insert.h"

namespace imtok {
namespace vq {

// metric ids used by every kernel of the family
enum Metric : int { kL2 = 0, kCosine = 1 };

template <typename acc_t>
IMTOK_HD bool closer(acc_t da, int64_t ia, acc_t db, int64_t ib) {
  const bool na = da != da, nb = db != db;
  if (na || nb) return na && (!nb || ia < ib);
  return da < db || (da == db && ia < ib);
}

// The distance reported for a search distance d: l2 as is; cosine searches on d = -2 x.e_hat and reports
// 1 - x_hat.e_hat with x_hat = x / max(|x|, 1e-6).
template <typename acc_t>
IMTOK_HD acc_t report_distance(acc_t d, acc_t sq_norm_x, int metric) {
  if (metric != kCosine) return d;
  return acc_t(1) + (d / acc_t(2)) / imtok_max(imtok_sqrt(sq_norm_x), acc_t(1e-6));
}

// Insert candidate (d, i) into a top-k list sorted by closer() (length n, capacity k).
template <typename acc_t>
IMTOK_HD void topk_insert(acc_t* dists, int64_t* idxs, int64_t& n, int64_t k, acc_t d, int64_t i) {
  sorted_insert(dists, idxs, n, k, d, i, [](acc_t a, int64_t ia, acc_t b, int64_t ib) { return closer(a, ia, b, ib); });
}

}  // namespace vq
}  // namespace imtok
