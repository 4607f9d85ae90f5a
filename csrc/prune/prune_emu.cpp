// The prune family's device kernels on CPU threads (emulation build, test-only ops under imtok_cuda_emu).
#include <torch/library.h>

#include "prune/prune_device.h"

TORCH_LIBRARY_IMPL(imtok_cuda_emu, CPU, m) { imtok::emu_impl::prune::register_device_kernels(m); }
