// The vq nearest-code search on CPU threads (emulation build, test-only ops under imtok_cuda_emu).
#include <torch/library.h>

#include "vq/vq_device.h"

TORCH_LIBRARY_IMPL(imtok_cuda_emu, CPU, m) { imtok::emu_impl::vq::register_device_kernels(m); }
