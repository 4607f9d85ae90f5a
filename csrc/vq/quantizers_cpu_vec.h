// Element loops of the FSQ CPU kernels, over runs of whole rows (flat index k of a run is dimension k % d).
//
// tanh is torch's own CPU tanh, so the CPU kernel reproduces the anchor's arithmetic bit for bit: torch.tanh
// on float / double CPU tensors is MKL VML's vsTanh / vdTanh (high accuracy, denormals kept: torch's
// ATen/cpu/vml.h), found here through weak references to the symbols libtorch_cpu exports. With a torch built
// without MKL (ARM wheels) this falls back to std::tanh while torch uses Sleef: codes can then differ from the
// anchor's where an ulp of tanh moves the bound across a rounding tie, gradients by an ulp or two.
// The device kernels use the device's tanhf, so CPU and device codes can differ in the same rare way.
//
// The rest follows the anchor op by op: bound = tanh(z + shift) * half_l - offset rounded separately (two torch
// ops: no FMA), round half to even, codes = level / (L // 2); the gradient is ((g / (L//2)) * half_l) *
// (1 - t * t) where torch's tanh backward computes 1 - t * t with one rounding (its AVX2 / AVX-512 kernels are
// built with FMA contraction): fnmadd on the AVX2 path, std::fma on the portable one.
#pragma once

#include <cmath>
#include <cstdint>
#include <type_traits>

#include "common/cpu_features.h"
#include "vq/quantizers_math.h"

extern "C" {
// MKL VML (LP64): n, input, output, mode
void vmsTanh(int, const float*, float*, long long) __attribute__((weak));
void vmdTanh(int, const double*, double*, long long) __attribute__((weak));
}

namespace imtok {
namespace vqq {
namespace cpu {

// VML_HA | VML_FTZDAZ_OFF | VML_ERRMODE_IGNORE, the mode torch passes (mkl_vml_defines.h values)
constexpr long long kVmlMode = 0x2 | 0x140000 | 0x100;

inline void tanh_like_torch(const float* x, float* y, int64_t n) {
  if (vmsTanh && n > 0) return vmsTanh(static_cast<int>(n), x, y, kVmlMode);
  for (int64_t k = 0; k < n; ++k) y[k] = std::tanh(x[k]);
}
inline void tanh_like_torch(const double* x, double* y, int64_t n) {
  if (vmdTanh && n > 0) return vmdTanh(static_cast<int>(n), x, y, kVmlMode);
  for (int64_t k = 0; k < n; ++k) y[k] = std::tanh(x[k]);
}

// Rows per period of the repeated parameters: a multiple of the vector width, so a vector that starts at a
// multiple of 8 in a run reads its 8 parameters contiguously at offset (k mod kRepRows * d).
constexpr int kRepRows = 8;

// The per-dimension constants repeated over kRepRows rows (element k of a run -> index k % period).
template <typename acc_t>
struct FsqRep {
  int period;
  acc_t shift[kRepRows * kFsqMaxDims], half_l[kRepRows * kFsqMaxDims], offset[kRepRows * kFsqMaxDims],
      half_width[kRepRows * kFsqMaxDims];
  explicit FsqRep(const FsqParams& p) : period(kRepRows * p.d) {
    for (int k = 0; k < period; ++k) {
      const int j = k % p.d;
      shift[k] = acc_t(p.shift[j]);
      half_l[k] = acc_t(p.half_l[j]);
      offset[k] = acc_t(p.offset[j]);
      half_width[k] = acc_t(p.half_width[j]);
    }
  }
};

// x[k] = z[k] + shift (the tanh argument), n elements of whole rows
template <typename scalar_t, typename acc_t>
inline void add_shift(const scalar_t* z, int64_t n, const FsqRep<acc_t>& rep, acc_t* x) {
  for (int64_t k = 0, o = 0; k < n; ++k) {
    x[k] = static_cast<acc_t>(z[k]) + rep.shift[o];
    if (++o == rep.period) o = 0;
  }
}

// t -> level r = rint(t * half_l - offset) (kept in t for the index), codes = r / (L // 2)
template <typename acc_t>
inline void levels_and_codes_ref(acc_t* t, int64_t n, const FsqRep<acc_t>& rep, acc_t* codes) {
  for (int64_t k = 0, o = 0; k < n; ++k) {
    const acc_t scaled = t[k] * rep.half_l[o];
    const acc_t r = fsq_rint(scaled - rep.offset[o]);
    t[k] = r;
    codes[k] = r / rep.half_width[o];
    if (++o == rep.period) o = 0;
  }
}

// gz = ((g / (L // 2)) * half_l) * (1 - t * t), the last factor rounded once
template <typename acc_t>
inline void grad_ref(const acc_t* g, const acc_t* t, int64_t n, const FsqRep<acc_t>& rep, acc_t* gz) {
  for (int64_t k = 0, o = 0; k < n; ++k) {
    gz[k] = ((g[k] / rep.half_width[o]) * rep.half_l[o]) * std::fma(-t[k], t[k], acc_t(1));
    if (++o == rep.period) o = 0;
  }
}

#ifdef IMTOK_X86
// Keeps a product in a register as it is: the compiler may not fuse it with the next add (no FMA contraction).
#define IMTOK_FSQ_OPAQUE(v) asm("" : "+x"(v))

__attribute__((target("avx2,fma"))) inline void add_shift_avx2(const float* z, int64_t n, const FsqRep<float>& rep,
                                                                 float* x) {
  int64_t k = 0, o = 0;
  for (; k + 8 <= n; k += 8) {
    _mm256_storeu_ps(x + k, _mm256_add_ps(_mm256_loadu_ps(z + k), _mm256_loadu_ps(rep.shift + o)));
    o += 8;
    if (o == rep.period) o = 0;
  }
  for (; k < n; ++k, ++o) x[k] = z[k] + rep.shift[o];
}

__attribute__((target("avx2,fma"))) inline void levels_and_codes_avx2(float* t, int64_t n, const FsqRep<float>& rep,
                                                                        float* codes) {
  int64_t k = 0, o = 0;
  for (; k + 8 <= n; k += 8) {
    __m256 scaled = _mm256_mul_ps(_mm256_loadu_ps(t + k), _mm256_loadu_ps(rep.half_l + o));
    IMTOK_FSQ_OPAQUE(scaled);
    const __m256 r = _mm256_round_ps(_mm256_sub_ps(scaled, _mm256_loadu_ps(rep.offset + o)),
                                     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    _mm256_storeu_ps(t + k, r);
    _mm256_storeu_ps(codes + k, _mm256_div_ps(r, _mm256_loadu_ps(rep.half_width + o)));
    o += 8;
    if (o == rep.period) o = 0;
  }
  for (; k < n; ++k, ++o) {
    float scaled = t[k] * rep.half_l[o];
    IMTOK_FSQ_OPAQUE(scaled);
    const float r = fsq_rint(scaled - rep.offset[o]);
    t[k] = r;
    codes[k] = r / rep.half_width[o];
  }
}

__attribute__((target("avx2,fma"))) inline void grad_avx2(const float* g, const float* t, int64_t n,
                                                            const FsqRep<float>& rep, float* gz) {
  const __m256 one = _mm256_set1_ps(1.f);
  int64_t k = 0, o = 0;
  for (; k + 8 <= n; k += 8) {
    const __m256 a = _mm256_mul_ps(_mm256_div_ps(_mm256_loadu_ps(g + k), _mm256_loadu_ps(rep.half_width + o)),
                                   _mm256_loadu_ps(rep.half_l + o));
    const __m256 tk = _mm256_loadu_ps(t + k);
    _mm256_storeu_ps(gz + k, _mm256_mul_ps(a, _mm256_fnmadd_ps(tk, tk, one)));
    o += 8;
    if (o == rep.period) o = 0;
  }
  for (; k < n; ++k, ++o) gz[k] = ((g[k] / rep.half_width[o]) * rep.half_l[o]) * std::fma(-t[k], t[k], 1.f);
}
#undef IMTOK_FSQ_OPAQUE
#endif  // IMTOK_X86

template <typename scalar_t, typename acc_t>
inline void fsq_add_shift(const scalar_t* z, int64_t n, const FsqRep<acc_t>& rep, acc_t* x) {
#ifdef IMTOK_X86
  if constexpr (std::is_same<scalar_t, float>::value)
    if (cpu_has_avx2_fma()) return add_shift_avx2(z, n, rep, x);
#endif
  add_shift(z, n, rep, x);
}

template <typename acc_t>
inline void fsq_levels_and_codes(acc_t* t, int64_t n, const FsqRep<acc_t>& rep, acc_t* codes) {
#ifdef IMTOK_X86
  if constexpr (std::is_same<acc_t, float>::value)
    if (cpu_has_avx2_fma()) return levels_and_codes_avx2(t, n, rep, codes);
#endif
  levels_and_codes_ref(t, n, rep, codes);
}

template <typename acc_t>
inline void fsq_grad_run(const acc_t* g, const acc_t* t, int64_t n, const FsqRep<acc_t>& rep, acc_t* gz) {
#ifdef IMTOK_X86
  if constexpr (std::is_same<acc_t, float>::value)
    if (cpu_has_avx2_fma()) return grad_avx2(g, t, n, rep, gz);
#endif
  grad_ref(g, t, n, rep, gz);
}

}  // namespace cpu
}  // namespace vqq
}  // namespace imtok
