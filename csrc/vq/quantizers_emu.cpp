// The vq quantizer device kernels compiled for the CPU execution shim and registered for CPU tensors under
// imtok_cuda_emu (tests compare them with the reference; see CONTRIBUTING.md).
#include <torch/library.h>

#include "vq/quantizers_device.h"

namespace dev = imtok::emu_impl::vqq_dev;

TORCH_LIBRARY_IMPL(imtok_cuda_emu, CPU, m) {
  m.impl("vq_fsq", &dev::fsq);
  m.impl("vq_fsq_backward", &dev::fsq_backward);
  m.impl("vq_fsq_indices_to_codes", &dev::fsq_indices_to_codes);
  m.impl("vq_lfq", &dev::lfq);
  m.impl("vq_code_counts", &dev::code_counts);
  m.impl("vq_ema_stats", &dev::ema_stats);
}
