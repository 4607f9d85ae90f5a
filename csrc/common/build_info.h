// What this binary was built with, readable from Python before any op is called (imtok_cuda._C).
#pragma once

#include <torch/headeronly/version.h>

namespace imtok {
#ifdef IMTOK_WITH_CUDA
constexpr int kBuiltWithCuda = 1;
#else
constexpr int kBuiltWithCuda = 0;
#endif
#ifdef IMTOK_EMULATE_CUDA
constexpr int kBuiltWithEmulation = 1;
#else
constexpr int kBuiltWithEmulation = 0;
#endif
constexpr const char* kBuiltTorchVersion = TORCH_VERSION;
constexpr int kBuiltTorchMajor = TORCH_VERSION_MAJOR;
constexpr int kBuiltTorchMinor = TORCH_VERSION_MINOR;
}  // namespace imtok
