// CUDA registration of the merge family: the launchers in merge_device.h compiled by nvcc.
#include <torch/library.h>

#include "merge/merge_device.h"

TORCH_LIBRARY_IMPL(imtok_cuda, CUDA, m) { IMTOK_MERGE_REGISTER_DEVICE(m); }
