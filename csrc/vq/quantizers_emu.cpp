// The vq quantizer ops on CPU threads (emulation build, test-only ops under imtok_cuda_emu).
#include <torch/library.h>

#include "vq/quantizers_device.h"

TORCH_LIBRARY_IMPL(imtok_cuda_emu, CPU, m) { imtok::emu_impl::quantizers::register_device_kernels(m); }
