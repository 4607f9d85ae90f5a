// Tensor-core tiles through the wmma API: nvcuda::wmma under nvcc, its emulation (emu_wmma.h) under the shim,
// both reached as imtok_wmma. mma_element<scalar_t> is the wmma element type of a c10 half type and the
// round-to-nearest-even conversion from float.
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include "common/device.h"

#if defined(__CUDACC__)
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <mma.h>
namespace imtok_wmma = nvcuda::wmma;
#elif defined(IMTOK_EMULATE_CUDA)
namespace imtok_wmma = imtok_emu::wmma;
#endif

namespace imtok {

template <typename scalar_t>
struct mma_element;

#if defined(__CUDACC__)
template <>
struct mma_element<c10::Half> {
  using type = __half;
  static __device__ __forceinline__ type from_float(float x) { return __float2half_rn(x); }
};
template <>
struct mma_element<c10::BFloat16> {
  using type = __nv_bfloat16;
  static __device__ __forceinline__ type from_float(float x) { return __float2bfloat16_rn(x); }
};
#else
template <>
struct mma_element<c10::Half> {
  using type = c10::Half;
  static type from_float(float x) { return c10::Half(x); }
};
template <>
struct mma_element<c10::BFloat16> {
  using type = c10::BFloat16;
  static type from_float(float x) { return c10::BFloat16(x); }
};
#endif

}  // namespace imtok
