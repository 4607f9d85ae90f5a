// The merge family's device kernels for CUDA tensors: merge/merge_device.h compiled by nvcc.
#include <torch/library.h>

#include "merge/merge_device.h"

TORCH_LIBRARY_IMPL(imtok_cuda, CUDA, m) { imtok::cuda_impl::merge::register_device_kernels(m); }
