// The splat device kernels for real GPUs: TORCH_LIBRARY_IMPL(imtok_cuda, CUDA).
#include <torch/library.h>

#include "splat/splat_device.h"

TORCH_LIBRARY_IMPL(imtok_cuda, CUDA, m) {
  m.impl("splat_render", &imtok::cuda_impl::splat_dev::render);
  m.impl("splat_render_backward", &imtok::cuda_impl::splat_dev::render_backward);
}
