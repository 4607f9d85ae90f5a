// The op catalogue: every schema of imtok_cuda, in one place, one section per family.
// Kernels register from their family's files (TORCH_LIBRARY_IMPL); autograd and fake kernels from Python.
// Emulation builds (IMTOK_EMULATE_CUDA) define the same schemas again under imtok_cuda_emu, where the CUDA
// kernels run on CPU threads for tests.
#include <Python.h>
#include <torch/library.h>

#include "common/build_info.h"

namespace {

void define_schemas(torch::Library& m) {
  // ---- vq -------------------------------------------------------------------------------------------
  m.def("vq_nearest(Tensor x, Tensor codebook, str metric=\"l2\") -> (Tensor distances, Tensor indices)");
  m.def("vq_nearest_topk(Tensor x, Tensor codebook, int k, str metric=\"l2\") -> (Tensor distances, Tensor indices)");
  // ---- vq: quantizers (EMA, FSQ, LFQ, binary) ---------------------------------------------------------

  // ---- splat ------------------------------------------------------------------------------------------
  m.def("splat_render(Tensor geometry, Tensor features, int H, int W, float box_sigma=3.0, Tensor? lengths=None, "
        "bool normalize=False) -> Tensor");
  m.def("splat_render_backward(Tensor grad_out, Tensor geometry, Tensor features, Tensor? out, int H, int W, "
        "float box_sigma, Tensor? lengths, bool normalize) -> (Tensor grad_geometry, Tensor grad_features)");

  // ---- shuffle ----------------------------------------------------------------------------------------

  // ---- merge ------------------------------------------------------------------------------------------

  // ---- prune ------------------------------------------------------------------------------------------

  // ---- attention --------------------------------------------------------------------------------------

}

}  // namespace

TORCH_LIBRARY(imtok_cuda, m) { define_schemas(m); }

#ifdef IMTOK_EMULATE_CUDA
TORCH_LIBRARY(imtok_cuda_emu, m) { define_schemas(m); }
#endif

// A plain Python module, so `import imtok_cuda._C` loads the library and its registrations.
static PyModuleDef imtok_module = {PyModuleDef_HEAD_INIT, "_C", "imtok_cuda kernels", -1, nullptr};
PyMODINIT_FUNC PyInit__C(void) {
  PyObject* mod = PyModule_Create(&imtok_module);
  if (mod == nullptr) return nullptr;
  PyModule_AddIntConstant(mod, "with_cuda", imtok::kBuiltWithCuda);
  PyModule_AddIntConstant(mod, "emulated_cuda", imtok::kBuiltWithEmulation);
  PyModule_AddStringConstant(mod, "torch_version", imtok::kBuiltTorchVersion);
  PyModule_AddIntConstant(mod, "torch_version_major", imtok::kBuiltTorchMajor);
  PyModule_AddIntConstant(mod, "torch_version_minor", imtok::kBuiltTorchMinor);
  return mod;
}
