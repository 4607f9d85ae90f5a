// Host/device macros shared by every op family.
//
// Three compilation modes for the same device source (*_kernels.cuh, *_device.h):
//   nvcc                      -> real CUDA, namespace imtok::cuda_impl
//   g++ with IMTOK_EMULATE_CUDA -> CUDA execution model on CPU threads (emu_shim.h), namespace imtok::emu_impl
//   g++ otherwise             -> only IMTOK_HD math helpers are usable (CPU kernels)
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)

#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#define IMTOK_HD __host__ __device__ __forceinline__
#define IMTOK_DEVICE_NS cuda_impl
#define IMTOK_SHARED_ARRAY(T, name, n) __shared__ T name[n]
#define IMTOK_SHARED_ARRAY2(T, name, n, m) __shared__ T name[n][m]
#define IMTOK_DYNAMIC_SHARED(T, name)                              \
  extern __shared__ __align__(128) unsigned char imtok_dyn_smem_[]; \
  T* name = reinterpret_cast<T*>(imtok_dyn_smem_)
#define IMTOK_DEVICE_GUARD(tensor) const c10::cuda::CUDAGuard imtok_device_guard_((tensor).device())
#define IMTOK_CURRENT_STREAM() (c10::cuda::getCurrentCUDAStream().stream())
#define IMTOK_LAUNCH(kernel, grid, block, smem, stream, ...)                        \
  do {                                                                              \
    const dim3 imtok_grid_ = dim3(grid); /* not dim3 g(grid): most vexing parse */ \
    if (imtok_grid_.x == 0 || imtok_grid_.y == 0 || imtok_grid_.z == 0) break;      \
    kernel<<<imtok_grid_, (block), (smem), (stream)>>>(__VA_ARGS__);                \
    C10_CUDA_KERNEL_LAUNCH_CHECK();                                                 \
  } while (0)

#elif defined(IMTOK_EMULATE_CUDA)

#include "common/emu_shim.h"
#define IMTOK_HD inline
#define IMTOK_DEVICE_NS emu_impl

#else

#define IMTOK_HD inline

#endif

#if defined(__CUDACC__) || defined(IMTOK_EMULATE_CUDA)
#include <c10/core/DeviceType.h>

namespace imtok {
namespace IMTOK_DEVICE_NS {
// The device of the tensors the device launchers take: CUDA, or CPU for the emulated kernels.
#if defined(__CUDACC__)
constexpr c10::DeviceType kDeviceType = c10::DeviceType::CUDA;
#else
constexpr c10::DeviceType kDeviceType = c10::DeviceType::CPU;
#endif
}  // namespace IMTOK_DEVICE_NS
}  // namespace imtok
#endif

namespace imtok {
template <typename T>
IMTOK_HD T imtok_min(T a, T b) { return b < a ? b : a; }
template <typename T>
IMTOK_HD T imtok_max(T a, T b) { return a < b ? b : a; }
IMTOK_HD int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
IMTOK_HD float imtok_sqrt(float x) { return sqrtf(x); }
IMTOK_HD double imtok_sqrt(double x) { return sqrt(x); }
IMTOK_HD float imtok_exp(float x) { return expf(x); }
IMTOK_HD double imtok_exp(double x) { return exp(x); }
IMTOK_HD float imtok_log(float x) { return logf(x); }
IMTOK_HD double imtok_log(double x) { return log(x); }

// A typed view of dynamic shared memory `bytes` into the block's buffer, for kernels that keep regions of
// different element types in it (raw pointer on the GPU, bounds- and race-checked span under the shim).
#if defined(__CUDACC__)
template <typename U, typename T>
__device__ __forceinline__ U* smem_region(T* base, size_t bytes) {
  return reinterpret_cast<U*>(reinterpret_cast<unsigned char*>(base) + bytes);
}
#elif defined(IMTOK_EMULATE_CUDA)
template <typename U, typename T>
imtok_emu::SharedSpan<U> smem_region(const imtok_emu::SharedSpan<T>& base, size_t bytes) {
  return (base.template as<unsigned char>() + static_cast<int64_t>(bytes)).template as<U>();
}
#endif
}  // namespace imtok
