// The bounded sorted list behind every top-k of the project (vq nearest_topk, prune's semantic neighbours), on
// the CPU and on the device.
#pragma once

#include <cstdint>

#include "common/device.h"

namespace imtok {

// Inserts (v, i) into the list (vals, idxs) of length n and capacity k, kept in the order before(a, ia, b, ib)
// (true when (a, ia) comes first). A candidate that does not come before the last entry of a full list is dropped.
template <typename T, typename Count, typename Before>
IMTOK_HD void sorted_insert(T* vals, int64_t* idxs, Count& n, Count k, T v, int64_t i, Before before) {
  if (n == k && !before(v, i, vals[k - 1], idxs[k - 1])) return;
  Count pos = n == k ? k - 1 : n;
  while (pos > 0 && before(v, i, vals[pos - 1], idxs[pos - 1])) {
    vals[pos] = vals[pos - 1];
    idxs[pos] = idxs[pos - 1];
    --pos;
  }
  vals[pos] = v;
  idxs[pos] = i;
  if (n < k) ++n;
}

}  // namespace imtok
