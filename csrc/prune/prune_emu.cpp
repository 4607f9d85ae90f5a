// The prune device kernels on CPU threads (emulation build): torch.ops.imtok_cuda_emu.prune_*.
#include <torch/library.h>

#include "prune/prune_device.h"

TORCH_LIBRARY_IMPL(imtok_cuda_emu, CPU, m) {
  m.impl("prune_evit_keep_fuse", &imtok::emu_impl::evit_keep_fuse_device);
  m.impl("prune_evit_keep_fuse_backward", &imtok::emu_impl::evit_keep_fuse_backward_device);
  m.impl("prune_topk_mask", &imtok::emu_impl::topk_mask_device);
  m.impl("prune_gather_packed", &imtok::emu_impl::gather_packed_device);
  m.impl("prune_gtp_graph", &imtok::emu_impl::gtp_graph_device);
  m.impl("prune_gtp_propagate", &imtok::emu_impl::gtp_propagate_device);
  m.impl("prune_gtp_propagate_backward", &imtok::emu_impl::gtp_propagate_backward_device);
  m.impl("prune_gtp_graph_select", &imtok::emu_impl::gtp_graph_select_device);
  m.impl("prune_cls_attn", &imtok::emu_impl::cls_attn_device);
}
