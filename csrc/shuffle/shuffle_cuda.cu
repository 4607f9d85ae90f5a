// The shuffle family's device kernels for CUDA tensors: shuffle/shuffle_device.h compiled by nvcc.
#include <torch/library.h>

#include "shuffle/shuffle_device.h"

TORCH_LIBRARY_IMPL(imtok_cuda, CUDA, m) { imtok::cuda_impl::shuffle::register_device_kernels(m); }
