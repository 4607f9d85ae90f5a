// The attention device kernels on CPU threads (emulation build, test-only ops under imtok_cuda_emu), plus the
// SIMT twins of the tensor-core kernels, which exist only there.
#include <torch/library.h>

#include "attention/attention_device.h"

TORCH_LIBRARY_IMPL(imtok_cuda_emu, CPU, m) {
  namespace dev = imtok::emu_impl::attention;
  dev::register_device_kernels(m);
  m.impl("attention_forward_simt", &dev::forward_simt);
  m.impl("attention_backward_simt", &dev::backward_simt);
}
