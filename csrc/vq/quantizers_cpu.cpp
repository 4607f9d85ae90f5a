// CPU kernels of the vq quantizer ops: FSQ, LFQ sign quantization, per-code counts, EMA statistics.
// FSQ evaluates torch's own CPU tanh (quantizers_cpu_vec.h): its codes and gradients are the anchor's, bit for
// bit; the device kernels use the device's tanhf. The other ops are bit-identical to the device kernels (same
// per-element expressions, same summation order).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <type_traits>
#include <vector>

#include "vq/quantizers_common.h"
#include "vq/quantizers_cpu_vec.h"

namespace imtok {
namespace vqq {
namespace {

constexpr int64_t kGrain = 2048;

std::vector<int64_t> batch_shape(const at::Tensor& t) {
  auto s = t.sizes().vec();
  s.pop_back();
  return s;
}

// Rows per step of the FSQ kernels (the tanh argument of one step stays in L1) and rows per parallel task.
constexpr int64_t kFsqStepElems = 4096;
constexpr int64_t kFsqTaskElems = 32768;  // torch's elementwise grain (at::internal::GRAIN_SIZE)

inline int64_t fsq_step_rows(int d) { return std::max<int64_t>(1, kFsqStepElems / d); }

std::tuple<at::Tensor, at::Tensor> fsq_cpu(const at::Tensor& z_in, c10::IntArrayRef levels) {
  const FsqParams p = make_fsq_params(levels);
  check_fsq_input(z_in, p, "z");
  check_device_type(z_in, c10::kCPU, "z");
  const at::Tensor z = z_in.contiguous();
  const int64_t n = z.numel() / p.d;
  const auto acc_dtype = z.scalar_type() == c10::kDouble ? c10::kDouble : c10::kFloat;
  at::Tensor codes = at::empty(z.sizes(), z.options().dtype(acc_dtype));
  at::Tensor indices = at::empty(batch_shape(z), z.options().dtype(c10::kInt));
  AT_DISPATCH_FLOATING_TYPES_AND2(c10::kHalf, c10::kBFloat16, z.scalar_type(), "vq_fsq_cpu", [&] {
    using acc_t = acc_type_t<scalar_t>;
    const scalar_t* zp = z.data_ptr<scalar_t>();
    acc_t* cp = codes.data_ptr<acc_t>();
    int32_t* ip = indices.data_ptr<int32_t>();
    const cpu::FsqRep<acc_t> rep(p);
    const int64_t step = fsq_step_rows(p.d);
    at::parallel_for(0, n, kFsqTaskElems / p.d + 1, [&](int64_t b, int64_t e) {
      std::vector<acc_t> x(step * p.d), t(step * p.d);
      for (int64_t r0 = b; r0 < e; r0 += step) {
        const int64_t rows = std::min(step, e - r0), len = rows * p.d;
        cpu::fsq_add_shift(zp + r0 * p.d, len, rep, x.data());
        cpu::tanh_like_torch(x.data(), t.data(), len);
        cpu::fsq_levels_and_codes(t.data(), len, rep, cp + r0 * p.d);
        for (int64_t row = 0; row < rows; ++row) {  // t now holds the integer levels
          const acc_t* r = t.data() + row * p.d;
          int64_t idx = 0;
          bool bad = false;
          for (int j = 0; j < p.d; ++j) {
            if (r[j] != r[j]) bad = true;
            else idx += (int64_t(r[j]) + p.half_width[j]) * p.basis[j];
          }
          ip[r0 + row] = bad ? int32_t(-1) : int32_t(idx);
        }
      }
    });
  });
  return {codes, indices};
}

at::Tensor fsq_backward_cpu(const at::Tensor& grad_in, const at::Tensor& z_in, c10::IntArrayRef levels) {
  const FsqParams p = make_fsq_params(levels);
  check_fsq_input(z_in, p, "z");
  check_device_type(z_in, c10::kCPU, "z");
  check_floating(grad_in, "grad_codes");
  TORCH_CHECK_VALUE(grad_in.sizes() == z_in.sizes(), "grad_codes must have the shape of z ", z_in.sizes(),
                    ", got ", grad_in.sizes());
  check_same_device(grad_in, "grad_codes", z_in, "z");
  const at::Tensor z = z_in.contiguous();
  const auto acc_dtype = z.scalar_type() == c10::kDouble ? c10::kDouble : c10::kFloat;
  const at::Tensor grad = grad_in.to(acc_dtype).contiguous();
  at::Tensor gz = at::empty(z.sizes(), z.options());
  const int64_t n = z.numel() / p.d;
  AT_DISPATCH_FLOATING_TYPES_AND2(c10::kHalf, c10::kBFloat16, z.scalar_type(), "vq_fsq_backward_cpu", [&] {
    using acc_t = acc_type_t<scalar_t>;
    const scalar_t* zp = z.data_ptr<scalar_t>();
    const acc_t* gp = grad.data_ptr<acc_t>();
    scalar_t* op = gz.data_ptr<scalar_t>();
    const cpu::FsqRep<acc_t> rep(p);
    const int64_t step = fsq_step_rows(p.d);
    at::parallel_for(0, n, kFsqTaskElems / p.d + 1, [&](int64_t b, int64_t e) {
      std::vector<acc_t> x(step * p.d), t(step * p.d);
      for (int64_t r0 = b; r0 < e; r0 += step) {
        const int64_t off = r0 * p.d, len = std::min(step, e - r0) * p.d;
        cpu::fsq_add_shift(zp + off, len, rep, x.data());
        cpu::tanh_like_torch(x.data(), t.data(), len);
        constexpr bool in_place = std::is_same<scalar_t, acc_t>::value;  // else round from x into op
        acc_t* dst = in_place ? reinterpret_cast<acc_t*>(op + off) : x.data();
        cpu::fsq_grad_run(gp + off, t.data(), len, rep, dst);
        if (!in_place)
          for (int64_t k = 0; k < len; ++k) op[off + k] = static_cast<scalar_t>(x[k]);
      }
    });
  });
  return gz;
}

at::Tensor fsq_indices_to_codes_cpu(const at::Tensor& indices_in, c10::IntArrayRef levels) {
  const FsqParams p = make_fsq_params(levels);
  check_index_tensor(indices_in, "indices");
  check_device_type(indices_in, c10::kCPU, "indices");
  const at::Tensor indices = indices_in.contiguous();
  int64_t size = 1;
  for (int j = 0; j < p.d; ++j) size *= p.levels[j];
  auto shape = indices.sizes().vec();
  shape.push_back(p.d);
  at::Tensor codes = at::empty(shape, indices.options().dtype(c10::kFloat));
  const int64_t n = indices.numel();
  AT_DISPATCH_INDEX_TYPES(indices.scalar_type(), "vq_fsq_indices_to_codes_cpu", [&] {
    const index_t* ip = indices.data_ptr<index_t>();
    for (int64_t i = 0; i < n; ++i)
      TORCH_CHECK_VALUE(ip[i] >= 0 && int64_t(ip[i]) < size, "indices must be in [0, prod(levels) = ", size,
                        "), got ", int64_t(ip[i]), " at flat position ", i);
    float* cp = codes.data_ptr<float>();
    at::parallel_for(0, n, kGrain / p.d + 1, [&](int64_t b, int64_t e) {
      for (int64_t row = b; row < e; ++row) {
        const int64_t idx = ip[row];
        for (int j = 0; j < p.d; ++j) {
          const int64_t lv = (idx / p.basis[j]) % p.levels[j];
          cp[row * p.d + j] = float(lv - p.half_width[j]) / float(p.half_width[j]);
        }
      }
    });
  });
  return codes;
}

std::tuple<at::Tensor, at::Tensor> lfq_cpu(const at::Tensor& x_in, double value) {
  check_lfq(x_in, "x", value);
  check_device_type(x_in, c10::kCPU, "x");
  const at::Tensor x = x_in.contiguous();
  const int d = static_cast<int>(x.size(-1));
  const int64_t n = x.numel() / d;
  at::Tensor q = at::empty(x.sizes(), x.options().dtype(c10::kFloat));
  at::Tensor indices = at::empty(batch_shape(x), x.options().dtype(c10::kLong));
  const float v = static_cast<float>(value);
  AT_DISPATCH_FLOATING_TYPES_AND2(c10::kHalf, c10::kBFloat16, x.scalar_type(), "vq_lfq_cpu", [&] {
    const scalar_t* xp = x.data_ptr<scalar_t>();
    float* qp = q.data_ptr<float>();
    int64_t* ip = indices.data_ptr<int64_t>();
    at::parallel_for(0, n, kGrain / d + 1, [&](int64_t b, int64_t e) {
      for (int64_t row = b; row < e; ++row) ip[row] = lfq_row(xp + row * d, qp + row * d, d, v);
    });
  });
  return {q, indices};
}

template <typename index_t>
void check_range(const index_t* ip, int64_t n, int64_t k) {
  for (int64_t i = 0; i < n; ++i)
    TORCH_CHECK_VALUE(ip[i] >= 0 && int64_t(ip[i]) < k, "indices must be in [0, K = ", k, "), got ",
                      int64_t(ip[i]), " at flat position ", i);
}

at::Tensor code_counts_cpu(const at::Tensor& indices_in, int64_t k) {
  check_index_tensor(indices_in, "indices");
  check_codebook_size(k, "K");
  check_device_type(indices_in, c10::kCPU, "indices");
  const at::Tensor indices = indices_in.contiguous();
  at::Tensor counts = at::zeros({k}, indices.options().dtype(c10::kLong));
  const int64_t n = indices.numel();
  AT_DISPATCH_INDEX_TYPES(indices.scalar_type(), "vq_code_counts_cpu", [&] {
    const index_t* ip = indices.data_ptr<index_t>();
    check_range(ip, n, k);
    int64_t* cp = counts.data_ptr<int64_t>();
    for (int64_t i = 0; i < n; ++i) ++cp[ip[i]];
  });
  return counts;
}

std::tuple<at::Tensor, at::Tensor> ema_stats_cpu(const at::Tensor& x_in, const at::Tensor& indices_in, int64_t k) {
  check_ema_inputs(x_in, indices_in, k);
  check_device_type(x_in, c10::kCPU, "x");
  const at::Tensor x = x_in.contiguous();
  const at::Tensor indices = indices_in.contiguous();
  const int64_t n = x.size(0), d = x.size(1);
  const auto acc_dtype = x.scalar_type() == c10::kDouble ? c10::kDouble : c10::kFloat;
  at::Tensor counts = at::zeros({k}, x.options().dtype(c10::kLong));
  at::Tensor sums = at::zeros({k, d}, x.options().dtype(acc_dtype));
  AT_DISPATCH_INDEX_TYPES(indices.scalar_type(), "vq_ema_stats_cpu", [&] {
    const index_t* ip = indices.data_ptr<index_t>();
    check_range(ip, n, k);
    int64_t* cnt = counts.data_ptr<int64_t>();
    for (int64_t i = 0; i < n; ++i) ++cnt[ip[i]];
    AT_DISPATCH_FLOATING_TYPES_AND2(c10::kHalf, c10::kBFloat16, x.scalar_type(), "vq_ema_stats_cpu_sums", [&] {
      using acc_t = acc_type_t<scalar_t>;
      const scalar_t* xp = x.data_ptr<scalar_t>();
      acc_t* sp = sums.data_ptr<acc_t>();
      // Each task owns a range of codes and scans every row in order: per code, rows are added in
      // increasing row order (the device kernel's order), whatever the number of threads.
      at::parallel_for(0, k, 1, [&](int64_t k0, int64_t k1) {
        for (int64_t i = 0; i < n; ++i) {
          const int64_t c = ip[i];
          if (c < k0 || c >= k1) continue;
          acc_t* dst = sp + c * d;
          const scalar_t* src = xp + i * d;
          for (int64_t j = 0; j < d; ++j) dst[j] += static_cast<acc_t>(src[j]);
        }
      });
    });
  });
  return {counts, sums};
}

}  // namespace
}  // namespace vqq
}  // namespace imtok

TORCH_LIBRARY_IMPL(imtok_cuda, CPU, m) {
  m.impl("vq_fsq", &imtok::vqq::fsq_cpu);
  m.impl("vq_fsq_backward", &imtok::vqq::fsq_backward_cpu);
  m.impl("vq_fsq_indices_to_codes", &imtok::vqq::fsq_indices_to_codes_cpu);
  m.impl("vq_lfq", &imtok::vqq::lfq_cpu);
  m.impl("vq_code_counts", &imtok::vqq::code_counts_cpu);
  m.impl("vq_ema_stats", &imtok::vqq::ema_stats_cpu);
}
