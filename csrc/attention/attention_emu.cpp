// The attention CUDA kernels compiled for CPU threads (test-only ops under imtok_cuda_emu).
#include <torch/library.h>

#include "attention/attention_device.h"

TORCH_LIBRARY_IMPL(imtok_cuda_emu, CPU, m) {
  m.impl("attention_forward", &imtok::emu_impl::attention::forward);
  m.impl("attention_backward", &imtok::emu_impl::attention::backward);
  m.impl("attention_forward_simt", &imtok::emu_impl::attention::forward_simt);
  m.impl("attention_backward_simt", &imtok::emu_impl::attention::backward_simt);
}
