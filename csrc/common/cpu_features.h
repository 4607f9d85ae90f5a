// Runtime CPU features for the hand-vectorized CPU kernels (x86-64 with GCC or Clang: IMTOK_X86 and the
// intrinsics headers; elsewhere the callers keep their portable code).
#pragma once

#include <cstdlib>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define IMTOK_X86 1

namespace imtok {

inline bool cpu_has_avx2_fma() {
  static const bool ok = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return ok;
}

// 512-bit paths (they give the same bits as the AVX2 ones); IMTOK_DISABLE_AVX512=1, read once per process,
// keeps the AVX2 paths on an AVX-512 CPU, for comparisons and tests
inline bool cpu_use_avx512() {
  static const bool ok = __builtin_cpu_supports("avx512f") && !std::getenv("IMTOK_DISABLE_AVX512");
  return ok;
}

}  // namespace imtok
#endif
