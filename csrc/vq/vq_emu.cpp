// The vq CUDA kernels compiled for CPU threads (test-only ops under imtok_cuda_emu).
#include <torch/library.h>

#include "vq/vq_device.h"

TORCH_LIBRARY_IMPL(imtok_cuda_emu, CPU, m) {
  m.impl("vq_nearest", &imtok::emu_impl::vq::nearest);
  m.impl("vq_nearest_topk", &imtok::emu_impl::vq::nearest_topk);
}
