// The splat device kernels compiled for the CUDA emulation shim and registered under imtok_cuda_emu (tests).
#include <torch/library.h>

#include "splat/splat_device.h"

TORCH_LIBRARY_IMPL(imtok_cuda_emu, CPU, m) {
  m.impl("splat_render", &imtok::emu_impl::splat_dev::render);
  m.impl("splat_render_backward", &imtok::emu_impl::splat_dev::render_backward);
}
