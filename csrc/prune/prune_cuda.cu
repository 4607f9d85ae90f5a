// The prune family's device kernels for CUDA tensors: prune/prune_device.h compiled by nvcc.
#include <torch/library.h>

#include "prune/prune_device.h"

TORCH_LIBRARY_IMPL(imtok_cuda, CUDA, m) { imtok::cuda_impl::prune::register_device_kernels(m); }
