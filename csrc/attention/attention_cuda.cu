// The attention CUDA kernels for CUDA tensors (SIMT flash-style tiles, see attention_kernels.cuh).
#include <torch/library.h>

#include "attention/attention_device.h"

TORCH_LIBRARY_IMPL(imtok_cuda, CUDA, m) {
  m.impl("attention_forward", &imtok::cuda_impl::attention::forward);
  m.impl("attention_backward", &imtok::cuda_impl::attention::backward);
}
