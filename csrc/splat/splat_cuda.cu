// The splat family's device kernels for CUDA tensors: splat/splat_device.h compiled by nvcc.
#include <torch/library.h>

#include "splat/splat_device.h"

TORCH_LIBRARY_IMPL(imtok_cuda, CUDA, m) { imtok::cuda_impl::splat::register_device_kernels(m); }
