// The attention forward for CUDA tensors (SIMT flash-style tiles and the tensor-core kernels). Forward and
// backward are separate translation units so that a many-core build compiles them in parallel: each
// instantiates its kernels for four dtypes and is the longest nvcc job of the project.
#include <torch/library.h>

#include "attention/attention_device.h"

TORCH_LIBRARY_IMPL(imtok_cuda, CUDA, m) { imtok::cuda_impl::attention::register_forward_kernels(m); }
