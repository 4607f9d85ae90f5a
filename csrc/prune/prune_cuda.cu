// The prune device kernels for CUDA (CUDA build): torch.ops.imtok_cuda.prune_* on CUDA tensors.
#include <torch/library.h>

#include "prune/prune_device.h"

TORCH_LIBRARY_IMPL(imtok_cuda, CUDA, m) {
  m.impl("prune_evit_keep_fuse", &imtok::cuda_impl::evit_keep_fuse_device);
  m.impl("prune_evit_keep_fuse_backward", &imtok::cuda_impl::evit_keep_fuse_backward_device);
  m.impl("prune_topk_mask", &imtok::cuda_impl::topk_mask_device);
  m.impl("prune_gather_packed", &imtok::cuda_impl::gather_packed_device);
  m.impl("prune_gtp_graph", &imtok::cuda_impl::gtp_graph_device);
  m.impl("prune_gtp_propagate", &imtok::cuda_impl::gtp_propagate_device);
  m.impl("prune_gtp_propagate_backward", &imtok::cuda_impl::gtp_propagate_backward_device);
  m.impl("prune_gtp_graph_select", &imtok::cuda_impl::gtp_graph_select_device);
  m.impl("prune_cls_attn", &imtok::cuda_impl::cls_attn_device);
}
