// The sampling family's device kernels for CUDA tensors: sampling/sampling_device.h compiled by nvcc.
#include <torch/library.h>

#include "sampling/sampling_device.h"

TORCH_LIBRARY_IMPL(imtok_cuda, CUDA, m) { imtok::cuda_impl::sampling::register_device_kernels(m); }
