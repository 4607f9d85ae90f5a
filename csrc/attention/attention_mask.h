// The causal mask of one segment (nq queries, nk keys), shared by the CPU kernels and the device kernels.
//   causal:             query i sees keys j <= i + (nk - nq)  (bottom-right aligned, FlashAttention >= 2.1);
//   causal with prefix: and every query also sees the first `prefix` keys (a prefix-LM mask; with nq == nk and
//                       prefix P it is FlexTok's "causal_last": the first P tokens attend to one another, token
//                       i >= P to every key j <= i).
// Query i sees exactly the keys [0, visible(i)), so a row is one range, and the queries that see key j are
// [first_query(j), nq): the kernels skip whole blocks with these two numbers.
#pragma once

#include <cstdint>

#include "common/device.h"

namespace imtok {
namespace attention {

struct CausalMask {
  bool on = false;
  int64_t prefix = 0;

  IMTOK_HD int64_t visible(int64_t i, int64_t nq, int64_t nk) const {
    if (!on) return nk;
    int64_t v = i + (nk - nq) + 1;
    if (v < prefix) v = prefix;
    return v < 0 ? 0 : (v > nk ? nk : v);
  }

  IMTOK_HD int64_t first_query(int64_t j, int64_t nq, int64_t nk) const {
    if (!on || j < prefix) return 0;
    const int64_t i = j - (nk - nq);
    return i < 0 ? 0 : i;
  }
};

}  // namespace attention
}  // namespace imtok
