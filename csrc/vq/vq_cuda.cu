#include <torch/library.h>

#include "vq/vq_device.h"

TORCH_LIBRARY_IMPL(imtok_cuda, CUDA, m) {
  m.impl("vq_nearest", &imtok::cuda_impl::vq::nearest);
  m.impl("vq_nearest_topk", &imtok::cuda_impl::vq::nearest_topk);
}
