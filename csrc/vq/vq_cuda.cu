// The vq nearest-code search for CUDA tensors: vq/vq_device.h compiled by nvcc.
#include <torch/library.h>

#include "vq/vq_device.h"

TORCH_LIBRARY_IMPL(imtok_cuda, CUDA, m) { imtok::cuda_impl::vq::register_device_kernels(m); }
