// Tensor-level helpers shared by the CPU and the device launchers of the splat ops.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/where.h>

#include <tuple>

namespace imtok {
namespace splat {

// Accumulation type: float64 for float64 inputs, float32 otherwise.
inline c10::ScalarType acc_type(c10::ScalarType t) { return t == c10::kDouble ? c10::kDouble : c10::kFloat; }

// Backward of the normalized render F = S / wsum: with gp = dL/dF / wsum (0 where wsum == 0) and
// k = sum_c gp F, dL/dv_n = sum_c gp f_n[c] - k and dL/df_n[c] = v_n gp[c]. Returns (gp, k).
inline std::tuple<at::Tensor, at::Tensor> normalize_grad(const at::Tensor& grad, const at::Tensor& out,
                                                         const at::Tensor& wsum) {
  const at::Tensor w = wsum.unsqueeze(1);
  const at::Tensor nz = w.ne(0);
  const at::Tensor gp = at::where(nz, grad.div(at::where(nz, w, 1.0)), 0.0).contiguous();
  const at::Tensor k = gp.mul(out).sum(1).contiguous();
  return {gp, k};
}

}  // namespace splat
}  // namespace imtok
