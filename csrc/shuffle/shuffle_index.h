// Token-Shuffle index maps shared by the CPU and device code.
// shuffle:   [B, (h s)(w s), D] -> [B, h w, s s D]  ('b (h s1 w s2) d -> b (h w) (s1 s2 d)')
// The fine token of coarse row q = i w + j and sub-position (s1, s2) is (i s + s1) (w s) + j s + s2.
#pragma once

#include "common/device.h"

namespace imtok {
namespace shuffle {

IMTOK_HD int64_t fine_token(int64_t q, int64_t sub, int64_t w, int64_t s) {
  const int64_t i = q / w, j = q % w, s1 = sub / s, s2 = sub % s;
  return (i * s + s1) * (w * s) + j * s + s2;
}

}  // namespace shuffle
}  // namespace imtok
