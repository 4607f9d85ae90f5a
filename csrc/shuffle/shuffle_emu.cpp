// Emulated CUDA registration of the Token-Shuffle family (device kernels on CPU threads, tests only).
#include <torch/library.h>

#include "shuffle/shuffle_device.h"

TORCH_LIBRARY_IMPL(imtok_cuda_emu, CPU, m) { IMTOK_SHUFFLE_REGISTER_DEVICE(m); }
