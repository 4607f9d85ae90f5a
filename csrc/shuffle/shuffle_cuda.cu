// CUDA registration of the Token-Shuffle family: the launchers in shuffle_device.h compiled by nvcc.
#include <torch/library.h>

#include "shuffle/shuffle_device.h"

TORCH_LIBRARY_IMPL(imtok_cuda, CUDA, m) { IMTOK_SHUFFLE_REGISTER_DEVICE(m); }
