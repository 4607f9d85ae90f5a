// CUDA registrations of the vq quantizer ops (kernels in quantizers_kernels.cuh, launchers in
// quantizers_device.h, shared with the emulated build).
#include <torch/library.h>

#include "vq/quantizers_device.h"

namespace dev = imtok::cuda_impl::vqq_dev;

TORCH_LIBRARY_IMPL(imtok_cuda, CUDA, m) {
  m.impl("vq_fsq", &dev::fsq);
  m.impl("vq_fsq_backward", &dev::fsq_backward);
  m.impl("vq_fsq_indices_to_codes", &dev::fsq_indices_to_codes);
  m.impl("vq_lfq", &dev::lfq);
  m.impl("vq_code_counts", &dev::code_counts);
  m.impl("vq_ema_stats", &dev::ema_stats);
}
