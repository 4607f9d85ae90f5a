// Ordering of candidate codes shared by the CPU and device kernels of the vq family.
//
// torch.argmin semantics: NaN is the smallest value (the first NaN wins), otherwise the smaller distance,
// and among equal distances the lower code index. nearest and nearest_topk use this one order, so
// nearest_topk(...)[..., 0] == nearest(...) always.
#pragma once

#include "common/device.h"

namespace imtok {
namespace vq {

template <typename acc_t>
IMTOK_HD bool closer(acc_t da, int64_t ia, acc_t db, int64_t ib) {
  const bool na = da != da, nb = db != db;
  if (na || nb) return na && (!nb || ia < ib);
  return da < db || (da == db && ia < ib);
}

// metric ids used by every kernel of the family
enum Metric : int { kL2 = 0, kCosine = 1 };

}  // namespace vq
}  // namespace imtok
