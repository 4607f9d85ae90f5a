// CPU kernels of the Gaussian splat renderer: culled (each token touches only the pixels of its box),
// parallel over (image, block of rows) in the forward and over (image, token) in the backward; sums over
// tokens run in token order; float32 accumulation (float64 for float64 inputs); no atomics, deterministic.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "splat/splat_checks.h"
#include "splat/splat_common.h"
#include "splat/splat_math.h"

namespace imtok {
namespace splat {
namespace {

// The exact (bit-identical to the reference mask) index range of pixels within r of mu; empty: lo > hi.
template <typename T>
void exact_range(T mu, T r, int64_t n, int64_t& lo, int64_t& hi) {
  box_range_estimate(mu, r, n, lo, hi);
  while (lo <= hi && !within(coord<T>(lo, n) - mu, r)) ++lo;
  while (hi >= lo && !within(coord<T>(hi, n) - mu, r)) --hi;
}

template <typename T>
Token<T> load_token(const T* g, T s) {
  return make_token<T>(g[0], g[1], g[2], g[3], g[4], s);
}

// out[b, c, i, j] += v f[c] (when out) and wsum[b, i, j] += v (when wsum), tokens in order; then, when
// normalize, out /= wsum (0 where wsum == 0).
template <typename T>
void accumulate(const T* g, const T* f, const int64_t* len, int64_t B, int64_t N, int64_t C, int64_t H, int64_t W,
                T s, T* out, T* wsum, bool normalize) {
  const int64_t RB = 8;  // rows per task
  const int64_t nrb = ceil_div(H, RB);
  at::parallel_for(0, B * nrb, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> vbuf(W > 0 ? W : 1);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / nrb;
      const int64_t r0 = (task % nrb) * RB, r1 = std::min(H, r0 + RB);
      const int64_t nb = len ? len[b] : N;
      for (int64_t n = 0; n < nb; ++n) {
        const Token<T> t = load_token(g + (b * N + n) * 5, s);
        int64_t i0, i1, j0, j1;
        exact_range(t.muy, t.ry, H, i0, i1);
        i0 = std::max(i0, r0);
        i1 = std::min(i1, r1 - 1);
        if (i0 > i1) continue;
        exact_range(t.mux, t.rx, W, j0, j1);
        if (j0 > j1) continue;
        const int64_t nw = j1 - j0 + 1;
        const T* fn = f ? f + (b * N + n) * C : nullptr;
        for (int64_t i = i0; i <= i1; ++i) {
          const T dy = coord<T>(i, H) - t.muy;
          for (int64_t j = j0; j <= j1; ++j) {
            const T dx = coord<T>(j, W) - t.mux;
            vbuf[j - j0] = std::exp(t.w1 * quad(t, dx, dy));
          }
          if (out) {
            for (int64_t c = 0; c < C; ++c) {
              T* row = out + ((b * C + c) * H + i) * W + j0;
              const T fc = fn[c];
              for (int64_t k = 0; k < nw; ++k) row[k] += vbuf[k] * fc;
            }
          }
          if (wsum) {
            T* row = wsum + (b * H + i) * W + j0;
            for (int64_t k = 0; k < nw; ++k) row[k] += vbuf[k];
          }
        }
      }
      if (normalize && out && wsum) {
        for (int64_t i = r0; i < r1; ++i) {
          const T* wrow = wsum + (b * H + i) * W;
          for (int64_t j = 0; j < W; ++j) vbuf[j] = wrow[j] != T(0) ? T(1) / wrow[j] : T(0);
          for (int64_t c = 0; c < C; ++c) {
            T* row = out + ((b * C + c) * H + i) * W;
            for (int64_t j = 0; j < W; ++j) row[j] = wrow[j] != T(0) ? row[j] / wrow[j] : T(0);
          }
        }
      }
    }
  });
}

// Gradients of one token per task: gp = dL/dF (divided by wsum when normalized), kmap = sum_c gp F (or null).
template <typename T>
void backward(const T* g, const T* f, const int64_t* len, const T* gp, const T* kmap, int64_t B, int64_t N,
              int64_t C, int64_t H, int64_t W, T s, T* dg, T* df) {
  at::parallel_for(0, B * N, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> vbuf(W > 0 ? W : 1), qbuf(W > 0 ? W : 1), gbuf(W > 0 ? W : 1), dxbuf(W > 0 ? W : 1);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / N, n = task % N;
      T* dgn = dg + task * 5;
      T* dfn = df + task * C;
      for (int k = 0; k < 5; ++k) dgn[k] = T(0);
      for (int64_t c = 0; c < C; ++c) dfn[c] = T(0);
      if (len && n >= len[b]) continue;
      const Token<T> t = load_token(g + task * 5, s);
      const T* fn = f + task * C;
      int64_t i0, i1, j0, j1;
      exact_range(t.muy, t.ry, H, i0, i1);
      exact_range(t.mux, t.rx, W, j0, j1);
      if (i0 > i1 || j0 > j1) continue;
      const int64_t nw = j1 - j0 + 1;
      T smx = 0, smy = 0, ssx = 0, ssy = 0, srho = 0;
      for (int64_t i = i0; i <= i1; ++i) {
        const T dy = coord<T>(i, H) - t.muy;
        for (int64_t k = 0; k < nw; ++k) {
          const T dx = coord<T>(j0 + k, W) - t.mux;
          const T q = quad(t, dx, dy);
          dxbuf[k] = dx;
          qbuf[k] = q;
          vbuf[k] = std::exp(t.w1 * q);
          gbuf[k] = kmap ? -kmap[(b * H + i) * W + j0 + k] : T(0);
        }
        for (int64_t c = 0; c < C; ++c) {
          const T* grow = gp + ((b * C + c) * H + i) * W + j0;
          const T fc = fn[c];
          T acc = 0;
          for (int64_t k = 0; k < nw; ++k) {
            gbuf[k] += grow[k] * fc;
            acc += vbuf[k] * grow[k];
          }
          dfn[c] += acc;
        }
        T rmx = 0, rmy = 0, rsx = 0, rsy = 0, rrho = 0;
        for (int64_t k = 0; k < nw; ++k) {
          const T dx = dxbuf[k];
          const T tt = gbuf[k] * T(2) * t.w1 * vbuf[k];
          const T dxdy = dx * dy;
          rmx += tt * (-t.w2 * dx + t.rho * t.w3 * dy);
          rmy += tt * (-t.w4 * dy + t.rho * t.w3 * dx);
          rsx += tt * (t.rho * t.w3 * dxdy - t.w2 * dx * dx);
          rsy += tt * (t.rho * t.w3 * dxdy - t.w4 * dy * dy);
          rrho -= tt * (T(2) * t.w1 * t.rho * qbuf[k] + t.w3 * dxdy);
        }
        smx += rmx;
        smy += rmy;
        ssx += rsx;
        ssy += rsy;
        srho += rrho;
      }
      dgn[0] = ssx / t.sx;
      dgn[1] = ssy / t.sy;
      dgn[2] = srho;
      dgn[3] = smx;
      dgn[4] = smy;
    }
  });
}

struct Prepared {
  at::Tensor g, f, len;
  c10::ScalarType acc;
};

Prepared prepare(const at::Tensor& geometry, const at::Tensor& features, const c10::optional<at::Tensor>& lengths) {
  Prepared p;
  p.acc = acc_type(features.scalar_type());
  p.g = geometry.to(p.acc).contiguous();
  p.f = features.to(p.acc).contiguous();
  if (lengths.has_value()) p.len = lengths->to(c10::kLong).contiguous();
  AT_DISPATCH_FLOATING_TYPES(p.g.scalar_type(), "splat_check_values", [&] {
    check_geometry_values<scalar_t>(p.g.data_ptr<scalar_t>(), p.len.defined() ? p.len.data_ptr<int64_t>() : nullptr,
                                    p.g.size(0), p.g.size(1));
  });
  return p;
}

at::Tensor render_cpu(const at::Tensor& geometry, const at::Tensor& features, int64_t H, int64_t W, double box_sigma,
                      const c10::optional<at::Tensor>& lengths, bool normalize) {
  check_render_args(geometry, features, H, W, box_sigma, lengths);
  check_device_type(geometry, c10::DeviceType::CPU, "geometry");
  const Prepared p = prepare(geometry, features, lengths);
  const int64_t B = geometry.size(0), N = geometry.size(1), C = features.size(2);
  at::Tensor out = at::zeros({B, C, H, W}, p.f.options());
  at::Tensor wsum = normalize ? at::zeros({B, H, W}, p.f.options()) : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES(p.f.scalar_type(), "splat_render_cpu", [&] {
    accumulate<scalar_t>(p.g.data_ptr<scalar_t>(), p.f.data_ptr<scalar_t>(),
                         p.len.defined() ? p.len.data_ptr<int64_t>() : nullptr, B, N, C, H, W,
                         static_cast<scalar_t>(box_sigma), out.data_ptr<scalar_t>(),
                         normalize ? wsum.data_ptr<scalar_t>() : nullptr, normalize);
  });
  return out.to(features.scalar_type());
}

std::tuple<at::Tensor, at::Tensor> render_backward_cpu(const at::Tensor& grad_out, const at::Tensor& geometry,
                                                       const at::Tensor& features,
                                                       const c10::optional<at::Tensor>& out, int64_t H, int64_t W,
                                                       double box_sigma, const c10::optional<at::Tensor>& lengths,
                                                       bool normalize) {
  check_render_args(geometry, features, H, W, box_sigma, lengths);
  check_backward_args(grad_out, geometry, features, out, H, W, normalize);
  check_device_type(geometry, c10::DeviceType::CPU, "geometry");
  const Prepared p = prepare(geometry, features, lengths);
  const int64_t B = geometry.size(0), N = geometry.size(1), C = features.size(2);
  at::Tensor gp = grad_out.to(p.acc).contiguous();
  at::Tensor kmap;
  const auto s = box_sigma;
  if (normalize) {
    at::Tensor wsum = at::zeros({B, H, W}, p.f.options());
    AT_DISPATCH_FLOATING_TYPES(p.f.scalar_type(), "splat_wsum_cpu", [&] {
      accumulate<scalar_t>(p.g.data_ptr<scalar_t>(), nullptr, p.len.defined() ? p.len.data_ptr<int64_t>() : nullptr,
                           B, N, C, H, W, static_cast<scalar_t>(s), nullptr,
                           wsum.data_ptr<scalar_t>(), false);
    });
    std::tie(gp, kmap) = normalize_grad(gp, out->to(p.acc), wsum);
  }
  at::Tensor dg = at::empty({B, N, 5}, p.g.options());
  at::Tensor df = at::empty({B, N, C}, p.f.options());
  AT_DISPATCH_FLOATING_TYPES(p.f.scalar_type(), "splat_render_backward_cpu", [&] {
    backward<scalar_t>(p.g.data_ptr<scalar_t>(), p.f.data_ptr<scalar_t>(),
                       p.len.defined() ? p.len.data_ptr<int64_t>() : nullptr, gp.data_ptr<scalar_t>(),
                       kmap.defined() ? kmap.data_ptr<scalar_t>() : nullptr, B, N, C, H, W,
                       static_cast<scalar_t>(s), dg.data_ptr<scalar_t>(),
                       df.data_ptr<scalar_t>());
  });
  return {dg.to(geometry.scalar_type()), df.to(features.scalar_type())};
}

}  // namespace
}  // namespace splat
}  // namespace imtok

TORCH_LIBRARY_IMPL(imtok_cuda, CPU, m) {
  m.impl("splat_render", &imtok::splat::render_cpu);
  m.impl("splat_render_backward", &imtok::splat::render_backward_cpu);
}
