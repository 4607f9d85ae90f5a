// CPU kernels of the prune family: EViT keep-and-fuse, FasterVLM top-k mask + packed gather, GTP-ViT graph
// construction (no M x M similarity matrix), propagation over neighbour lists (no dense N x N product), graph
// selection. at::parallel_for over batch rows (and channel chunks where a row alone is too little work).
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/norm.h>
#include <ATen/ops/div.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <tuple>
#include <vector>

#include "common/checks.h"
#include "prune/prune_checks.h"
#include "prune/prune_math.h"

namespace imtok {
namespace {

using prune::ranks_before;

// order[0..n) of the scores of one row: the first k in descending top-k order (ranks_before), the rest unordered.
template <typename acc_t, typename scalar_t>
void topk_order(const scalar_t* s, int64_t n, int64_t k, std::vector<int64_t>& order, bool sorted) {
  order.resize(n);
  std::iota(order.begin(), order.end(), int64_t(0));
  auto cmp = [s](int64_t a, int64_t b) {
    return ranks_before(static_cast<acc_t>(s[a]), a, static_cast<acc_t>(s[b]), b);
  };
  if (k <= 0 || k >= n) {
    if (sorted) std::sort(order.begin(), order.end(), cmp);
    return;
  }
  if (sorted)
    std::partial_sort(order.begin(), order.begin() + k, order.end(), cmp);
  else
    std::nth_element(order.begin(), order.begin() + (k - 1), order.end(), cmp);
}

std::tuple<at::Tensor, at::Tensor> evit_keep_fuse_cpu(const at::Tensor& x_, const at::Tensor& cls_attn_, int64_t left,
                                                      bool fuse) {
  prune::check_evit_inputs(x_, cls_attn_, left);
  check_device_type(x_, c10::DeviceType::CPU, "x");
  const at::Tensor x = x_.contiguous(), cls_attn = cls_attn_.contiguous();
  const int64_t B = x.size(0), N = x.size(1), C = x.size(2), M = N - 1;
  const int64_t Nout = left + 1 + (fuse ? 1 : 0);
  at::Tensor out = at::empty({B, Nout, C}, x.options());
  at::Tensor kept = at::empty({B, left}, x.options().dtype(at::kLong));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "prune_evit_keep_fuse_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* xp = x.data_ptr<scalar_t>();
    const scalar_t* ap = cls_attn.data_ptr<scalar_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    int64_t* kp = kept.data_ptr<int64_t>();
    at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
      std::vector<int64_t> order;
      std::vector<char> is_kept(M);
      std::vector<acc_t> acc(C);
      for (int64_t b = b0; b < b1; ++b) {
        const scalar_t* s = ap + b * M;
        const scalar_t* xb = xp + b * N * C;
        scalar_t* ob = op + b * Nout * C;
        topk_order<acc_t>(s, M, left, order, true);
        std::fill(is_kept.begin(), is_kept.end(), 0);
        std::copy(xb, xb + C, ob);
        for (int64_t r = 0; r < left; ++r) {
          const int64_t i = order[r];
          kp[b * left + r] = i;
          is_kept[i] = 1;
          std::copy(xb + (1 + i) * C, xb + (2 + i) * C, ob + (1 + r) * C);
        }
        if (!fuse) continue;
        std::fill(acc.begin(), acc.end(), acc_t(0));
        for (int64_t i = 0; i < M; ++i) {
          if (is_kept[i]) continue;
          const acc_t w = static_cast<acc_t>(s[i]);
          const scalar_t* xi = xb + (1 + i) * C;
          for (int64_t c = 0; c < C; ++c) acc[c] += static_cast<acc_t>(xi[c]) * w;
        }
        scalar_t* of = ob + (left + 1) * C;
        for (int64_t c = 0; c < C; ++c) of[c] = static_cast<scalar_t>(acc[c]);
      }
    });
  });
  return {out, kept};
}

std::tuple<at::Tensor, at::Tensor> evit_keep_fuse_backward_cpu(const at::Tensor& grad_out_, const at::Tensor& x_,
                                                               const at::Tensor& cls_attn_, const at::Tensor& kept_,
                                                               bool fuse) {
  prune::check_evit_backward_inputs(grad_out_, x_, cls_attn_, kept_, fuse);
  check_device_type(x_, c10::DeviceType::CPU, "x");
  const at::Tensor g = grad_out_.contiguous(), x = x_.contiguous(), cls_attn = cls_attn_.contiguous(),
                   kept = kept_.contiguous();
  const int64_t B = x.size(0), N = x.size(1), C = x.size(2), M = N - 1, left = kept.size(1);
  prune::check_index_values(kept, 0, M, "kept_idx", /*unique_rows=*/true);
  const int64_t Nout = left + 1 + (fuse ? 1 : 0);
  at::Tensor gx = at::empty_like(x);
  at::Tensor ga = at::empty_like(cls_attn);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "prune_evit_keep_fuse_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* gp = g.data_ptr<scalar_t>();
    const scalar_t* xp = x.data_ptr<scalar_t>();
    const scalar_t* ap = cls_attn.data_ptr<scalar_t>();
    const int64_t* kp = kept.data_ptr<int64_t>();
    scalar_t* gxp = gx.data_ptr<scalar_t>();
    scalar_t* gap = ga.data_ptr<scalar_t>();
    at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
      std::vector<int64_t> pos(M);
      for (int64_t b = b0; b < b1; ++b) {
        std::fill(pos.begin(), pos.end(), int64_t(-1));
        for (int64_t r = 0; r < left; ++r) pos[kp[b * left + r]] = r;
        const scalar_t* gb = gp + b * Nout * C;
        const scalar_t* gf = gb + (left + 1) * C;
        scalar_t* gxb = gxp + b * N * C;
        std::copy(gb, gb + C, gxb);
        for (int64_t i = 0; i < M; ++i) {
          scalar_t* dst = gxb + (1 + i) * C;
          const scalar_t* xi = xp + (b * N + 1 + i) * C;
          if (pos[i] >= 0) {
            std::copy(gb + (1 + pos[i]) * C, gb + (2 + pos[i]) * C, dst);
            gap[b * M + i] = scalar_t(0);
          } else if (fuse) {
            const acc_t w = static_cast<acc_t>(ap[b * M + i]);
            acc_t dot = acc_t(0);
            for (int64_t c = 0; c < C; ++c) {
              const acc_t gc = static_cast<acc_t>(gf[c]);
              dst[c] = static_cast<scalar_t>(gc * w);
              dot += gc * static_cast<acc_t>(xi[c]);
            }
            gap[b * M + i] = static_cast<scalar_t>(dot);
          } else {
            std::fill(dst, dst + C, scalar_t(0));
            gap[b * M + i] = scalar_t(0);
          }
        }
      }
    });
  });
  return {gx, ga};
}

at::Tensor topk_mask_cpu(const at::Tensor& scores_, int64_t k) {
  prune::check_topk_mask_inputs(scores_, k);
  check_device_type(scores_, c10::DeviceType::CPU, "scores");
  const at::Tensor scores = scores_.contiguous();
  const int64_t B = scores.size(0), N = scores.size(1);
  at::Tensor mask = at::zeros({B, N}, scores.options().dtype(at::kBool));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, scores.scalar_type(), "prune_topk_mask_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* sp = scores.data_ptr<scalar_t>();
    bool* mp = mask.data_ptr<bool>();
    at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
      std::vector<int64_t> order;
      for (int64_t b = b0; b < b1; ++b) {
        topk_order<acc_t>(sp + b * N, N, k, order, false);
        for (int64_t r = 0; r < k; ++r) mp[b * N + order[r]] = true;
      }
    });
  });
  return mask;
}

std::tuple<at::Tensor, at::Tensor> gather_packed_cpu(const at::Tensor& x_, const at::Tensor& mask_) {
  prune::check_gather_packed_inputs(x_, mask_);
  check_device_type(x_, c10::DeviceType::CPU, "x");
  const at::Tensor x = x_.contiguous(), mask = mask_.contiguous();
  const int64_t B = x.size(0), N = x.size(1), C = x.size(2);
  at::Tensor cu = at::empty({B + 1}, x.options().dtype(at::kInt));
  int* cp = cu.data_ptr<int>();
  const bool* mp = mask.data_ptr<bool>();
  cp[0] = 0;
  for (int64_t b = 0; b < B; ++b) {
    int n = 0;
    for (int64_t i = 0; i < N; ++i) n += mp[b * N + i] ? 1 : 0;
    cp[b + 1] = cp[b] + n;
  }
  at::Tensor packed = at::empty({int64_t(cp[B]), C}, x.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "prune_gather_packed_cpu", [&] {
    const scalar_t* xp = x.data_ptr<scalar_t>();
    scalar_t* pp = packed.data_ptr<scalar_t>();
    at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        int64_t r = cp[b];
        for (int64_t i = 0; i < N; ++i)
          if (mp[b * N + i]) std::copy(xp + (b * N + i) * C, xp + (b * N + i + 1) * C, pp + (r++) * C);
      }
    });
  });
  return {packed, cu};
}

std::tuple<at::Tensor, at::Tensor> gtp_graph_cpu(const at::Tensor& x_, c10::string_view graph_type,
                                                 int64_t num_neighbours) {
  const prune::GraphDims g = prune::check_gtp_graph_inputs(x_, graph_type, num_neighbours);
  check_device_type(x_, c10::DeviceType::CPU, "x");
  const at::Tensor x = x_.contiguous();
  at::Tensor nbr_idx = at::empty({g.B, g.M, g.Kmax}, x.options().dtype(at::kLong));
  at::Tensor nbr_w = at::empty({g.B, g.M, g.Kmax}, x.options());
  std::vector<int> deg(g.B * g.M);
  int64_t* ip = nbr_idx.data_ptr<int64_t>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "prune_gtp_graph_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    // Semantic neighbours: unit rows (as the official x / |x|), then cosine similarities one tile of kTile rows
    // at a time through BLAS ([kTile, M] scratch per task, never M x M), top-K per row in a sorted list.
    constexpr int64_t kTile = 32;
    at::Tensor xn;
    if (g.use_semantic) {
      at::Tensor xi = x.narrow(1, 1, g.M).to(c10::CppTypeToScalarType<acc_t>::value);
      xn = xi.div(xi.norm(2, {-1}, true)).contiguous();
    }
    const int64_t tiles = ceil_div(g.M, kTile);
    at::parallel_for(0, g.B * tiles, 1, [&](int64_t t0, int64_t t1) {
      acc_t vals[kMaxGraphNeighbours];
      int64_t idxs[kMaxGraphNeighbours];
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t b = t / tiles, r0 = (t % tiles) * kTile, rn = std::min(kTile, g.M - r0);
        at::Tensor sims;
        const acc_t* sp = nullptr;
        if (g.use_semantic) {
          at::Tensor xb = xn.select(0, b);
          sims = at::mm(xb.narrow(0, r0, rn), xb.t()).contiguous();
          sp = sims.data_ptr<acc_t>();
        }
        for (int64_t q = 0; q < rn; ++q) {
          const int64_t r = r0 + q;
          int64_t* row = ip + (b * g.M + r) * g.Kmax;
          int n = g.use_spatial ? prune::spatial_neighbors(r, g.side, g.M, row) : 0;
          const int ns = n;
          if (g.use_semantic) {
            int nk = 0;
            const acc_t* srow = sp + q * g.M;
            for (int64_t j = 0; j < g.M; ++j)
              if (j != r) prune::topk_insert(vals, idxs, nk, g.K, srow[j], j);
            for (int k = 0; k < nk; ++k) {
              bool dup = false;
              for (int u = 0; u < ns; ++u) dup = dup || row[u] == idxs[k];
              if (!dup) row[n++] = idxs[k];
            }
          }
          deg[b * g.M + r] = n;
          for (int k = n; k < g.Kmax; ++k) row[k] = -1;
        }
      }
    });
    scalar_t* wp = nbr_w.data_ptr<scalar_t>();
    at::parallel_for(0, g.B * g.M, 64, [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t b = t / g.M;
        const acc_t dr = prune::inv_sqrt_degree<acc_t>(deg[t]);
        for (int k = 0; k < g.Kmax; ++k) {
          const int64_t j = ip[t * g.Kmax + k];
          wp[t * g.Kmax + k] = static_cast<scalar_t>(j < 0 ? acc_t(0) : dr * prune::inv_sqrt_degree<acc_t>(deg[b * g.M + j]));
        }
      }
    });
  });
  return {nbr_idx, nbr_w};
}

at::Tensor gtp_propagate_cpu(const at::Tensor& x_, const at::Tensor& kept_, const at::Tensor& prop_,
                             const at::Tensor& nbr_idx_, const at::Tensor& nbr_w_, double alpha) {
  prune::check_gtp_propagate_inputs(x_, kept_, prop_, nbr_idx_, nbr_w_);
  check_finite_param(alpha, "alpha");
  check_device_type(x_, c10::DeviceType::CPU, "x");
  const at::Tensor x = x_.contiguous(), kept = kept_.contiguous(), prop = prop_.contiguous(),
                   nbr_idx = nbr_idx_.contiguous(), nbr_w = nbr_w_.contiguous();
  const int64_t B = x.size(0), N = x.size(1), C = x.size(2), M = N - 1, Nk = kept.size(1), P = prop.size(1);
  const int64_t K = nbr_idx.size(2);
  prune::check_index_range_cpu(kept, 1, N, "kept_idx");
  prune::check_index_range_cpu(prop, 1, N, "prop_idx");
  prune::check_index_range_cpu(nbr_idx, -1, M, "nbr_idx");
  at::Tensor out = at::empty({B, Nk + 1, C}, x.options());
  std::vector<char> flag(B * M, 0);
  const int64_t* pp = prop.data_ptr<int64_t>();
  for (int64_t b = 0; b < B; ++b)
    for (int64_t p = 0; p < P; ++p) flag[b * M + pp[b * P + p] - 1] = 1;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "prune_gtp_propagate_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* xp = x.data_ptr<scalar_t>();
    const int64_t* kp = kept.data_ptr<int64_t>();
    const int64_t* np = nbr_idx.data_ptr<int64_t>();
    const scalar_t* wp = nbr_w.data_ptr<scalar_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    const acc_t a = static_cast<acc_t>(alpha);
    at::parallel_for(0, B * (Nk + 1), 8, [&](int64_t t0, int64_t t1) {
      std::vector<acc_t> s(C);
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t b = t / (Nk + 1), r = t % (Nk + 1);
        const scalar_t* xb = xp + b * N * C;
        scalar_t* dst = op + t * C;
        if (r == 0) {
          std::copy(xb, xb + C, dst);
          continue;
        }
        const int64_t i = kp[b * Nk + r - 1];
        std::fill(s.begin(), s.end(), acc_t(0));
        for (int64_t k = 0; k < K; ++k) {
          const int64_t j = np[(b * M + i - 1) * K + k];
          if (j < 0 || !flag[b * M + j]) continue;
          const acc_t w = static_cast<acc_t>(wp[(b * M + i - 1) * K + k]);
          const scalar_t* xj = xb + (1 + j) * C;
          for (int64_t c = 0; c < C; ++c) s[c] += w * static_cast<acc_t>(xj[c]);
        }
        const scalar_t* xi = xb + i * C;
        for (int64_t c = 0; c < C; ++c) dst[c] = static_cast<scalar_t>(static_cast<acc_t>(xi[c]) + a * s[c]);
      }
    });
  });
  return out;
}

at::Tensor gtp_propagate_backward_cpu(const at::Tensor& grad_out_, const at::Tensor& kept_, const at::Tensor& prop_,
                                      const at::Tensor& nbr_idx_, const at::Tensor& nbr_w_, double alpha,
                                      int64_t num_tokens) {
  prune::check_gtp_propagate_backward_inputs(grad_out_, kept_, prop_, nbr_idx_, nbr_w_, num_tokens);
  check_finite_param(alpha, "alpha");
  check_device_type(grad_out_, c10::DeviceType::CPU, "grad_out");
  const at::Tensor g = grad_out_.contiguous(), kept = kept_.contiguous(), prop = prop_.contiguous(),
                   nbr_idx = nbr_idx_.contiguous(), nbr_w = nbr_w_.contiguous();
  const int64_t B = g.size(0), C = g.size(2), N = num_tokens, M = N - 1, Nk = kept.size(1), P = prop.size(1);
  const int64_t K = nbr_idx.size(2);
  prune::check_index_range_cpu(kept, 1, N, "kept_idx");
  prune::check_index_range_cpu(prop, 1, N, "prop_idx");
  prune::check_index_range_cpu(nbr_idx, -1, M, "nbr_idx");
  std::vector<char> flag(B * M, 0);
  const int64_t* pp = prop.data_ptr<int64_t>();
  for (int64_t b = 0; b < B; ++b)
    for (int64_t p = 0; p < P; ++p) flag[b * M + pp[b * P + p] - 1] = 1;
  at::Tensor gx;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.scalar_type(), "prune_gtp_propagate_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    at::Tensor acc = at::zeros({B, N, C}, g.options().dtype(c10::CppTypeToScalarType<acc_t>::value));
    const scalar_t* gp = g.data_ptr<scalar_t>();
    const int64_t* kp = kept.data_ptr<int64_t>();
    const int64_t* np = nbr_idx.data_ptr<int64_t>();
    const scalar_t* wp = nbr_w.data_ptr<scalar_t>();
    acc_t* ap = acc.data_ptr<acc_t>();
    const acc_t a = static_cast<acc_t>(alpha);
    // (batch, channel chunk) tasks: each owns its slice of grad_x, rows in order: deterministic.
    const int64_t cw = 64, nch = std::max<int64_t>(1, (C + cw - 1) / cw);
    at::parallel_for(0, B * nch, 1, [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t b = t / nch, c0 = (t % nch) * cw, c1 = std::min(C, c0 + cw);
        const scalar_t* gb = gp + b * (Nk + 1) * C;
        acc_t* gxb = ap + b * N * C;
        for (int64_t c = c0; c < c1; ++c) gxb[c] += static_cast<acc_t>(gb[c]);
        for (int64_t r = 0; r < Nk; ++r) {
          const int64_t i = kp[b * Nk + r];
          const scalar_t* gr = gb + (1 + r) * C;
          for (int64_t c = c0; c < c1; ++c) gxb[i * C + c] += static_cast<acc_t>(gr[c]);
          for (int64_t k = 0; k < K; ++k) {
            const int64_t j = np[(b * M + i - 1) * K + k];
            if (j < 0 || !flag[b * M + j]) continue;
            const acc_t w = a * static_cast<acc_t>(wp[(b * M + i - 1) * K + k]);
            acc_t* dst = gxb + (1 + j) * C;
            for (int64_t c = c0; c < c1; ++c) dst[c] += w * static_cast<acc_t>(gr[c]);
          }
        }
      }
    });
    gx = acc.scalar_type() == g.scalar_type() ? acc : acc.to(g.scalar_type());
  });
  return gx;
}

std::tuple<at::Tensor, at::Tensor> gtp_graph_select_cpu(const at::Tensor& nbr_idx_, const at::Tensor& nbr_w_,
                                                        const at::Tensor& kept_) {
  prune::check_gtp_graph_select_inputs(nbr_idx_, nbr_w_, kept_);
  check_device_type(nbr_idx_, c10::DeviceType::CPU, "nbr_idx");
  const at::Tensor nbr_idx = nbr_idx_.contiguous(), nbr_w = nbr_w_.contiguous(), kept = kept_.contiguous();
  const int64_t B = nbr_idx.size(0), M = nbr_idx.size(1), K = nbr_idx.size(2), Nk = kept.size(1);
  prune::check_index_values(kept, 1, M + 1, "kept_idx", /*unique_rows=*/true);
  prune::check_index_range_cpu(nbr_idx, -1, M, "nbr_idx");
  at::Tensor oi = at::empty({B, Nk, K}, nbr_idx.options());
  at::Tensor ow = at::empty({B, Nk, K}, nbr_w.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, nbr_w.scalar_type(), "prune_gtp_graph_select_cpu", [&] {
    const int64_t* ip = nbr_idx.data_ptr<int64_t>();
    const scalar_t* wp = nbr_w.data_ptr<scalar_t>();
    const int64_t* kp = kept.data_ptr<int64_t>();
    int64_t* oip = oi.data_ptr<int64_t>();
    scalar_t* owp = ow.data_ptr<scalar_t>();
    at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
      std::vector<int64_t> newpos(M);
      for (int64_t b = b0; b < b1; ++b) {
        std::fill(newpos.begin(), newpos.end(), int64_t(-1));
        for (int64_t r = 0; r < Nk; ++r) newpos[kp[b * Nk + r] - 1] = r;
        for (int64_t r = 0; r < Nk; ++r) {
          const int64_t i = kp[b * Nk + r] - 1;
          int64_t n = 0;
          int64_t* orow = oip + (b * Nk + r) * K;
          scalar_t* wrow = owp + (b * Nk + r) * K;
          for (int64_t k = 0; k < K; ++k) {
            const int64_t j = ip[(b * M + i) * K + k];
            if (j < 0 || newpos[j] < 0) continue;
            orow[n] = newpos[j];
            wrow[n] = wp[(b * M + i) * K + k];
            ++n;
          }
          for (int64_t k = n; k < K; ++k) {
            orow[k] = -1;
            wrow[k] = scalar_t(0);
          }
        }
      }
    });
  });
  return {oi, ow};
}

at::Tensor cls_attn_cpu(const at::Tensor& q_, const at::Tensor& k_, double scale) {
  prune::check_cls_attn_inputs(q_, k_);
  check_finite_param(scale, "scale");
  check_device_type(q_, c10::DeviceType::CPU, "q");
  const at::Tensor q = q_.contiguous(), k = k_.contiguous();
  const int64_t B = q.size(0), H = q.size(1), Nq = q.size(2), D = q.size(3), N = k.size(2), M = N - 1;
  at::Tensor out = at::empty({B, M}, q.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(), "prune_cls_attn_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* qp = q.data_ptr<scalar_t>();
    const scalar_t* kp = k.data_ptr<scalar_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    std::vector<acc_t> probs(B * H * M);
    const acc_t sc = static_cast<acc_t>(scale);
    at::parallel_for(0, B * H, 1, [&](int64_t t0, int64_t t1) {
      std::vector<acc_t> q0(D), logit(N);
      for (int64_t t = t0; t < t1; ++t) {
        const scalar_t* qb = qp + t * Nq * D;
        const scalar_t* kb = kp + t * N * D;
        for (int64_t d = 0; d < D; ++d) q0[d] = static_cast<acc_t>(qb[d]) * sc;
        acc_t m = acc_t(0);
        for (int64_t j = 0; j < N; ++j) {
          acc_t s = acc_t(0);
          for (int64_t d = 0; d < D; ++d) s += q0[d] * static_cast<acc_t>(kb[j * D + d]);
          logit[j] = s;
          m = j == 0 ? s : std::max(m, s);
        }
        acc_t total = acc_t(0);
        for (int64_t j = 0; j < N; ++j) {
          logit[j] = std::exp(logit[j] - m);
          total += logit[j];
        }
        for (int64_t j = 1; j < N; ++j) probs[t * M + j - 1] = logit[j] / total;
      }
    });
    at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b)
        for (int64_t j = 0; j < M; ++j) {
          acc_t s = acc_t(0);
          for (int64_t h = 0; h < H; ++h) s += probs[(b * H + h) * M + j];
          op[b * M + j] = static_cast<scalar_t>(s / static_cast<acc_t>(H));
        }
    });
  });
  return out;
}

}  // namespace
}  // namespace imtok

TORCH_LIBRARY_IMPL(imtok_cuda, CPU, m) {
  m.impl("prune_evit_keep_fuse", &imtok::evit_keep_fuse_cpu);
  m.impl("prune_evit_keep_fuse_backward", &imtok::evit_keep_fuse_backward_cpu);
  m.impl("prune_topk_mask", &imtok::topk_mask_cpu);
  m.impl("prune_gather_packed", &imtok::gather_packed_cpu);
  m.impl("prune_gtp_graph", &imtok::gtp_graph_cpu);
  m.impl("prune_gtp_propagate", &imtok::gtp_propagate_cpu);
  m.impl("prune_gtp_propagate_backward", &imtok::gtp_propagate_backward_cpu);
  m.impl("prune_gtp_graph_select", &imtok::gtp_graph_select_cpu);
  m.impl("prune_cls_attn", &imtok::cls_attn_cpu);
}
