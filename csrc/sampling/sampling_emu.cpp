// The sampling device kernels on CPU threads (emulation build): torch.ops.imtok_cuda_emu.sampling_*.
#include <torch/library.h>

#include "sampling/sampling_device.h"

TORCH_LIBRARY_IMPL(imtok_cuda_emu, CPU, m) {
  m.impl("sampling_sample_logits", &imtok::emu_impl::sample_logits_device);
  m.impl("sampling_maskgit_step", &imtok::emu_impl::maskgit_step_device);
}
