// The attention backward for CUDA tensors (see attention_forward_cuda.cu for why it is a file of its own).
#include <torch/library.h>

#include "attention/attention_device.h"

TORCH_LIBRARY_IMPL(imtok_cuda, CUDA, m) { imtok::cuda_impl::attention::register_backward_kernels(m); }
