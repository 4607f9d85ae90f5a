// Emulated CUDA registration of the merge family: the same launchers and kernels on CPU threads (tests only).
#include <torch/library.h>

#include "merge/merge_device.h"

TORCH_LIBRARY_IMPL(imtok_cuda_emu, CPU, m) {
  IMTOK_MERGE_REGISTER_DEVICE(m);
  // the destination split is tiny host-side work (tomesd's argsort); the emulated namespace reuses the CPU op
}
