// Test-only op imtok_cuda_emu::shim_selftest: runs the shim's self-test kernels on CPU threads.
#include <ATen/core/Tensor.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include "common/checks.h"
#include "common/shim_selftest_kernels.cuh"

namespace {

at::Tensor shim_selftest(int64_t which, const at::Tensor& x) {
  imtok::check_dtype(x, at::kFloat, "x");
  TORCH_CHECK_VALUE(x.numel() == 128 && x.is_contiguous(), "x must be a contiguous tensor of 128 floats");
  TORCH_CHECK_VALUE(which >= 0 && which <= 7, "which must be in [0, 7], got ", which);
  at::Tensor out = at::zeros({128 * 6}, x.options());
  auto kern = imtok::emu_impl::selftest::selftest_kernel;
  IMTOK_LAUNCH(kern, dim3(1), dim3(128), 0, 0, static_cast<int>(which), x.data_ptr<float>(), out.data_ptr<float>());
  return out;
}

at::Tensor shim_wmma_selftest(int64_t which, const at::Tensor& a, const at::Tensor& b) {
  imtok::check_dtype(a, at::kHalf, "a");
  imtok::check_dtype(b, at::kHalf, "b");
  TORCH_CHECK_VALUE(a.sizes() == b.sizes() && a.dim() == 2 && a.size(0) == 32 && a.size(1) == 32 &&
                        a.is_contiguous() && b.is_contiguous(),
                    "a and b must be contiguous 32 x 32 fp16 matrices");
  TORCH_CHECK_VALUE(which >= 0 && which <= 3, "which must be in [0, 3], got ", which);
  at::Tensor out = at::zeros({2, 32, 32}, a.options().dtype(at::kFloat));
  auto kern = imtok::emu_impl::selftest::wmma_selftest_kernel;
  IMTOK_LAUNCH(kern, dim3(1), dim3(128), imtok::emu_impl::selftest::kWmmaSmem, 0, static_cast<int>(which),
               a.data_ptr<c10::Half>(), b.data_ptr<c10::Half>(), out.data_ptr<float>());
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(imtok_cuda_emu, m) {
  m.def("shim_selftest(int which, Tensor x) -> Tensor");
  m.impl("shim_selftest", c10::DispatchKey::CPU, &shim_selftest);
  m.def("shim_wmma_selftest(int which, Tensor a, Tensor b) -> Tensor");
  m.impl("shim_wmma_selftest", c10::DispatchKey::CPU, &shim_wmma_selftest);
}
