// The members of each output row of a merge plan, shared by the CPU kernels (merge_cpu.cpp, int64_t offsets)
// and the device kernels (merge_kernels.cuh, int offsets).
#pragma once

#include <cstdint>

#include "common/device.h"

namespace imtok {
namespace merge {

// Output rows: the unmerged "a" rows (unm order), then the "b" rows (destinations); with a distillation token,
// row 0 is the class token (a row of unm), row 1 the distillation token (b row 0). A row's members are its own
// token, then (destinations) the sources merged into it, in plan order. Plans are validated on the host
// (merge_plan.h) before any kernel runs; member() still returns -1 for an index out of range.
template <typename Off>
struct PlanView {
  const int64_t* src;
  const int64_t* dst;
  const int64_t* unm;
  const int64_t* apos;  // nullptr: ToMe (a = 2i)
  const int64_t* bpos;  // nullptr: ToMe (b = 2j + 1)
  const Off* off;       // [B, Nb + 1]: CSR of the sources of each destination
  const Off* lst;       // [B, r]: plan positions k of each destination's sources
  int64_t B, T, Na, Nb, r, U;
  bool distill;

  IMTOK_HD int64_t a_pos(int64_t i) const { return apos ? apos[i] : 2 * i; }
  IMTOK_HD int64_t b_pos(int64_t j) const { return bpos ? bpos[j] : 2 * j + 1; }
  IMTOK_HD int64_t tout() const { return U + Nb; }
  // output row -> (is destination, index in unm or in b)
  IMTOK_HD void row_kind(int64_t row, bool& is_dst, int64_t& idx) const {
    if (distill) {
      if (row == 0) { is_dst = false; idx = 0; }
      else if (row == 1) { is_dst = true; idx = 0; }
      else if (row <= U) { is_dst = false; idx = row - 1; }
      else { is_dst = true; idx = row - U; }
    } else {
      is_dst = row >= U;
      idx = is_dst ? row - U : row;
    }
  }
  // number of members of a row (1 + merged sources)
  IMTOK_HD int64_t n_members(int64_t b, int64_t row) const {
    bool d;
    int64_t idx;
    row_kind(row, d, idx);
    if (!d) return 1;
    const Off* o = off + b * (Nb + 1);
    return 1 + (o[idx + 1] - o[idx]);
  }
  // member m's token position (or -1 when an index is out of range)
  IMTOK_HD int64_t member(int64_t b, int64_t row, int64_t m) const {
    bool d;
    int64_t idx;
    row_kind(row, d, idx);
    int64_t t = -1;
    if (!d) {
      const int64_t i = unm[b * U + idx];
      if (i >= 0 && i < Na) t = a_pos(i);
    } else if (m == 0) {
      t = b_pos(idx);
    } else {
      const Off* o = off + b * (Nb + 1);
      const int64_t i = src[b * r + lst[b * r + o[idx] + m - 1]];
      if (i >= 0 && i < Na) t = a_pos(i);
    }
    return (t >= 0 && t < T) ? t : -1;
  }
};

}  // namespace merge
}  // namespace imtok
