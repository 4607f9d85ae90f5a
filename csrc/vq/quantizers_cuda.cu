// The vq quantizer ops (FSQ, LFQ, EMA statistics) for CUDA tensors: vq/quantizers_device.h compiled by nvcc.
#include <torch/library.h>

#include "vq/quantizers_device.h"

TORCH_LIBRARY_IMPL(imtok_cuda, CUDA, m) { imtok::cuda_impl::quantizers::register_device_kernels(m); }
