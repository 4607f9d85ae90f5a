// The sampling device kernels for CUDA (CUDA build): torch.ops.imtok_cuda.sampling_* on CUDA tensors.
#include <torch/library.h>

#include "sampling/sampling_device.h"

TORCH_LIBRARY_IMPL(imtok_cuda, CUDA, m) {
  m.impl("sampling_sample_logits", &imtok::cuda_impl::sample_logits_device);
  m.impl("sampling_maskgit_step", &imtok::cuda_impl::maskgit_step_device);
}
