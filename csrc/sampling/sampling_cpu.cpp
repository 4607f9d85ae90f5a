// CPU kernels of the sampling family: fused AR filtering + sampling, the MaskGIT step, GSD verification.
// at::parallel_for over rows (AR, GSD batch rows) or positions (MaskGIT). Selection, never a full sort:
// std::nth_element for the k-th value and the mask_len-th confidence, a weighted quickselect for the top-p cut-off,
// Gumbel-max (Philox) for the categorical draws, so a sample never depends on a summation order.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <tuple>
#include <utility>
#include <vector>

#include "common/checks.h"
#include "sampling/sampling_checks.h"
#include "sampling/sampling_math.h"

namespace imtok {
namespace {

using namespace sampling;
constexpr float kInf = std::numeric_limits<float>::infinity();

inline float sanitize(float v) { return std::isnan(v) ? -kInf : v; }

// Gumbel numbers of one (seed, stream, row), one Philox call per group of four elements.
struct GumbelStream {
  uint64_t seed;
  uint32_t stream;
  uint64_t row;
  uint64_t group = ~uint64_t(0);
  U32x4 bits{0, 0, 0, 0};
  float operator()(int64_t j) {
    const uint64_t g = static_cast<uint64_t>(j) >> 2;
    if (g != group) {
      bits = philox_group(seed, stream, row, g);
      group = g;
    }
    return gumbel_from_uniform(uniform_from_bits(u32x4_get(bits, static_cast<int>(j & 3))));
  }
};

// The kept set of one row of processed logits l[V] (temperature > 0): top-k keeps l >= kth; top-p keeps l > pval and
// the first `pties` tokens (by index) equal to pval. keep(j) answers in index order only (it counts ties).
struct RowFilter {
  bool use_k = false, use_p = false;
  float kth = -kInf, pval = -kInf, m = -kInf;
  int64_t pties = 0, seen = 0;
  bool kept_k(float v) const { return !use_k || v >= kth; }
  bool keep(float v) {  // call with j ascending
    if (!kept_k(v)) return false;
    if (!use_p || v > pval) return true;
    if (v < pval) return false;
    return seen++ < pties;
  }
};

// Weighted quickselect over items (value, weight): the value v* of the last token kept by top-p (the smallest value
// with mass(strictly greater) < target), that mass and the weight / count of the tokens equal to v*.
void top_p_cut(std::vector<std::pair<float, float>>& items, float target, float* vstar, float* above_out,
               float* weq_out, int64_t* neq_out) {
  int64_t lo = 0, hi = static_cast<int64_t>(items.size());
  float above = 0.0f;
  while (true) {
    const int64_t mid = lo + (hi - lo) / 2;
    float a = items[lo].first, b = items[mid].first, c = items[hi - 1].first;
    const float pivot = std::max(std::min(a, b), std::min(std::max(a, b), c));  // median of three
    // three-way partition of [lo, hi) into > pivot | == pivot | < pivot
    int64_t gt = lo, i = lo, lt = hi;
    while (i < lt) {
      const float v = items[i].first;
      if (v > pivot)
        std::swap(items[i++], items[gt++]);
      else if (v < pivot)
        std::swap(items[i], items[--lt]);
      else
        ++i;
    }
    float mass_gt = 0.0f, mass_eq = 0.0f;
    for (int64_t j = lo; j < gt; ++j) mass_gt += items[j].second;
    for (int64_t j = gt; j < lt; ++j) mass_eq += items[j].second;
    const float G = above + mass_gt;
    if (G >= target && gt > lo) {
      hi = gt;
      continue;
    }
    if (G + mass_eq >= target || lt == hi) {
      *vstar = pivot;
      *above_out = G;
      *weq_out = items[gt].second;
      *neq_out = lt - gt;
      return;
    }
    above = G + mass_eq;
    lo = lt;
  }
}

// Fill f for the processed logits l[V] (temperature > 0, NaN already -inf).
void build_filter(const float* l, int64_t V, int64_t top_k, double top_p, RowFilter& f, std::vector<float>& scratch,
                  std::vector<std::pair<float, float>>& items) {
  f = RowFilter{};
  float m = -kInf;
  for (int64_t j = 0; j < V; ++j) m = std::max(m, l[j]);
  f.m = m;
  if (top_k > 0 && top_k < V) {
    scratch.assign(l, l + V);
    std::nth_element(scratch.begin(), scratch.begin() + (top_k - 1), scratch.end(), std::greater<float>());
    f.kth = scratch[top_k - 1];
    f.use_k = true;
  }
  if (top_p < 1.0 && m > -kInf) {
    items.clear();
    float Z = 0.0f;
    for (int64_t j = 0; j < V; ++j) {
      if (!f.kept_k(l[j])) continue;
      const float w = expf(l[j] - m);
      items.emplace_back(l[j], w);
      Z += w;
    }
    const float target = static_cast<float>(top_p) * Z;
    float vstar, G, weq;
    int64_t neq;
    top_p_cut(items, target, &vstar, &G, &weq, &neq);
    int64_t c = 0;
    float acc = G;
    while (c < neq && acc < target) {
      ++c;
      acc += weq;
    }
    f.use_p = true;
    f.pval = vstar;
    f.pties = std::max<int64_t>(c, 1);  // G < target: the first token equal to v* is always kept
  }
}

int64_t argmax_row(const float* l, int64_t V) {
  int64_t best = 0;
  for (int64_t j = 1; j < V; ++j)
    if (l[j] > l[best]) best = j;
  return best;
}

// Gumbel-max over the kept tokens of l (lowest index on ties); the argmax when nothing finite is kept.
int64_t gumbel_max_kept(const float* l, int64_t V, RowFilter& f, GumbelStream gs) {
  float best = -kInf;
  int64_t idx = -1;
  f.seen = 0;
  for (int64_t j = 0; j < V; ++j) {
    if (!f.keep(l[j])) continue;
    const float v = l[j] + gs(j);
    if (v > best) {
      best = v;
      idx = j;
    }
  }
  return idx >= 0 ? idx : argmax_row(l, V);
}

template <typename scalar_t>
void process_row(const scalar_t* c, const scalar_t* u, int64_t V, float s, float T, float* l) {
  for (int64_t j = 0; j < V; ++j) {
    float v = static_cast<float>(c[j]);
    if (u) v = cfg_from_uncond(v, static_cast<float>(u[j]), s);
    if (T != 0.0f) v = v / T;
    l[j] = sanitize(v);
  }
}

at::Tensor sample_logits_cpu(const at::Tensor& logits_, const c10::optional<at::Tensor>& uncond_, double cfg_scale,
                             double temperature, int64_t top_k, double top_p, int64_t seed) {
  check_sample_inputs(logits_, uncond_, cfg_scale, temperature, top_k, top_p);
  check_device_type(logits_, c10::DeviceType::CPU, "logits");
  const at::Tensor logits = logits_.contiguous();
  const bool has_u = uncond_.has_value();
  const at::Tensor uncond = has_u ? uncond_->to(logits.scalar_type()).contiguous() : at::Tensor();
  const int64_t B = logits.size(0), V = logits.size(1);
  at::Tensor out = at::empty({B}, logits.options().dtype(at::kLong));
  int64_t* op = out.data_ptr<int64_t>();
  const float s = static_cast<float>(cfg_scale), T = static_cast<float>(temperature);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "sampling_sample_logits_cpu", [&] {
    const scalar_t* cp = logits.data_ptr<scalar_t>();
    const scalar_t* up = has_u ? uncond.data_ptr<scalar_t>() : nullptr;
    at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
      std::vector<float> l(V), scratch;
      std::vector<std::pair<float, float>> items;
      RowFilter f;
      for (int64_t b = b0; b < b1; ++b) {
        process_row(cp + b * V, up ? up + b * V : nullptr, V, s, T, l.data());
        if (T == 0.0f) {
          op[b] = argmax_row(l.data(), V);
          continue;
        }
        build_filter(l.data(), V, top_k, top_p, f, scratch, items);
        op[b] = gumbel_max_kept(l.data(), V, f, GumbelStream{static_cast<uint64_t>(seed), kStreamSample,
                                                               static_cast<uint64_t>(b)});
      }
    });
  });
  return out;
}

// ---- MaskGIT --------------------------------------------------------------------------------------------------
std::tuple<at::Tensor, at::Tensor, at::Tensor> maskgit_step_cpu(const at::Tensor& logits_, const at::Tensor& tokens_,
                                                                int64_t mask_token_id, const at::Tensor& mask_len_,
                                                                const c10::optional<at::Tensor>& uncond_,
                                                                double guidance_scale, c10::string_view cfg_form,
                                                                double softmax_temperature,
                                                                double randomize_temperature, int64_t seed) {
  const int form = check_maskgit_inputs(logits_, tokens_, mask_len_, uncond_, guidance_scale, cfg_form,
                                        softmax_temperature, randomize_temperature);
  check_device_type(logits_, c10::DeviceType::CPU, "logits");
  const at::Tensor logits = logits_.contiguous(), tokens = tokens_.contiguous(), mask_len = mask_len_.contiguous();
  const int64_t B = logits.size(0), N = logits.size(1), V = logits.size(2);
  check_mask_len_values_cpu(mask_len, N);
  check_maskgit_token_values_cpu(tokens, V, mask_token_id);
  const bool has_u = uncond_.has_value();
  const at::Tensor uncond = has_u ? uncond_->to(logits.scalar_type()).contiguous() : at::Tensor();
  at::Tensor sampled = at::empty({B, N}, tokens.options());
  at::Tensor next = at::empty({B, N}, tokens.options());
  at::Tensor remask = at::empty({B, N}, tokens.options().dtype(at::kBool));
  std::vector<float> conf(B * N);
  const float g = static_cast<float>(guidance_scale), T = static_cast<float>(softmax_temperature),
              t = static_cast<float>(randomize_temperature);
  const int64_t* tp = tokens.data_ptr<int64_t>();
  int64_t* sp = sampled.data_ptr<int64_t>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "sampling_maskgit_step_cpu", [&] {
    const scalar_t* cp = logits.data_ptr<scalar_t>();
    const scalar_t* up = has_u ? uncond.data_ptr<scalar_t>() : nullptr;
    const int64_t grain = std::max<int64_t>(1, 65536 / V);
    at::parallel_for(0, B * N, grain, [&](int64_t p0, int64_t p1) {
      for (int64_t p = p0; p < p1; ++p) {
        if (tp[p] != mask_token_id) {
          sp[p] = tp[p];
          conf[p] = kInf;
          continue;
        }
        const scalar_t* c = cp + p * V;
        const scalar_t* u = up ? up + p * V : nullptr;
        auto lv = [&](int64_t j) {
          float v = static_cast<float>(c[j]);
          if (u) v = form == 0 ? cfg_from_cond(v, static_cast<float>(u[j]), g) : cfg_from_uncond(v, static_cast<float>(u[j]), g);
          return sanitize(v / T);
        };
        int64_t best = 0;
        float best_l = lv(0);
        if (t == 0.0f) {
          for (int64_t j = 1; j < V; ++j) {
            const float v = lv(j);
            if (v > best_l) {
              best_l = v;
              best = j;
            }
          }
        } else {
          GumbelStream gs{static_cast<uint64_t>(seed), kStreamSample, static_cast<uint64_t>(p)};
          float best_v = add_scaled(best_l, t, gs(0));
          for (int64_t j = 1; j < V; ++j) {
            const float lj = lv(j);
            const float v = add_scaled(lj, t, gs(j));
            if (v > best_v) {
              best_v = v;
              best = j;
              best_l = lj;
            }
          }
        }
        sp[p] = best;
        conf[p] = t == 0.0f ? best_l
                            : add_scaled(best_l, t, gumbel_from_uniform(philox_uniform(
                                                       static_cast<uint64_t>(seed), kStreamConfidence,
                                                       static_cast<uint64_t>(p), 0)));
      }
    });
  });
  const int64_t* mlp = mask_len.data_ptr<int64_t>();
  int64_t* np_ = next.data_ptr<int64_t>();
  bool* rp = remask.data_ptr<bool>();
  at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
    std::vector<float> tmp;
    for (int64_t b = b0; b < b1; ++b) {
      const float* cb = conf.data() + b * N;
      const int64_t k = mlp[b];
      float cut = -kInf;
      if (k > 0) {
        tmp.assign(cb, cb + N);
        std::nth_element(tmp.begin(), tmp.begin() + (k - 1), tmp.end());
        cut = tmp[k - 1];
      }
      for (int64_t n = 0; n < N; ++n) {
        const bool r = k > 0 && cb[n] <= cut;
        rp[b * N + n] = r;
        np_[b * N + n] = r ? mask_token_id : sp[b * N + n];
      }
    }
  });
  return {sampled, next, remask};
}

// ---- GSD ------------------------------------------------------------------------------------------------------
// The sampling distribution of one row: probs p[V] (float32) and the ranking values r[V] (processed logit of kept
// tokens, -inf for filtered ones; temperature 0: one-hot at the argmax).
template <typename scalar_t>
void gsd_distribution(const scalar_t* row, int64_t V, float T, int64_t top_k, double top_p, float* p, float* r,
                      std::vector<float>& l, RowFilter& f, std::vector<float>& scratch,
                      std::vector<std::pair<float, float>>& items) {
  process_row<scalar_t>(row, nullptr, V, 1.0f, T, l.data());
  if (T == 0.0f) {
    const int64_t a = argmax_row(l.data(), V);
    for (int64_t j = 0; j < V; ++j) {
      p[j] = j == a ? 1.0f : 0.0f;
      r[j] = j == a ? l[j] : -kInf;
    }
    return;
  }
  build_filter(l.data(), V, top_k, top_p, f, scratch, items);
  f.seen = 0;
  float Z = 0.0f;
  for (int64_t j = 0; j < V; ++j) {
    const bool k = f.keep(l[j]) && l[j] > -kInf;
    r[j] = k ? l[j] : -kInf;
    p[j] = k ? expf(l[j] - f.m) : 0.0f;
    Z += p[j];
  }
  const float inv = Z > 0.0f ? 1.0f / Z : 0.0f;
  for (int64_t j = 0; j < V; ++j) p[j] *= inv;
}

// y ranks before z: larger ranking value first, then lower index.
inline bool ranks_before(float ry, int64_t y, float rz, int64_t z) { return ry > rz || (ry == rz && y < z); }

template <typename emb_t>
float emb_d2(const emb_t* E, int64_t D, int64_t x, int64_t y) {
  float acc = 0.0f;
  for (int64_t d = 0; d < D; ++d) {
    const float diff = static_cast<float>(E[y * D + d]) - static_cast<float>(E[x * D + d]);
    acc += diff * diff;
  }
  return acc;
}

// Gumbel-max over log(w_j) for w_j > 0 (a draw from w / sum w); -1 when all w are 0.
int64_t gumbel_max_weights(const float* w, int64_t V, GumbelStream gs) {
  float best = -kInf;
  int64_t idx = -1;
  for (int64_t j = 0; j < V; ++j) {
    if (!(w[j] > 0.0f)) continue;
    const float v = logf(w[j]) + gs(j);
    if (v > best) {
      best = v;
      idx = j;
    }
  }
  return idx;
}

std::tuple<at::Tensor, at::Tensor> gsd_verify_cpu(const at::Tensor& draft_tokens_, const at::Tensor& target_,
                                                  const at::Tensor& draft_, const at::Tensor& embedding_,
                                                  int64_t window, double prob_threshold, double dist_threshold,
                                                  double temperature, int64_t top_k, double top_p, int64_t seed) {
  check_gsd_inputs(draft_tokens_, target_, draft_, embedding_, window, prob_threshold, dist_threshold, temperature,
                   top_k, top_p);
  check_device_type(target_, c10::DeviceType::CPU, "target_logits");
  const at::Tensor xt = draft_tokens_.contiguous(), target = target_.contiguous(),
                   draft = draft_.to(target_.scalar_type()).contiguous(), emb = embedding_.contiguous();
  const int64_t B = xt.size(0), L = xt.size(1), Lt = target.size(1), V = target.size(2), D = emb.size(1);
  check_token_values_cpu(xt, V, "draft_tokens");
  at::Tensor num_acc = at::empty({B}, xt.options());
  at::Tensor next = at::empty({B}, xt.options());
  int64_t* nap = num_acc.data_ptr<int64_t>();
  int64_t* ntp = next.data_ptr<int64_t>();
  const int64_t* xp = xt.data_ptr<int64_t>();
  const float T = static_cast<float>(temperature), pt = static_cast<float>(prob_threshold),
              dt = static_cast<float>(dist_threshold);
  const uint64_t useed = static_cast<uint64_t>(seed);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, target.scalar_type(), "sampling_gsd_verify_cpu", [&] {
    using logit_t = scalar_t;
    const logit_t* tp = target.data_ptr<logit_t>();
    const logit_t* dp = draft.data_ptr<logit_t>();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, emb.scalar_type(), "sampling_gsd_verify_cpu_emb", [&] {
      const scalar_t* ep = emb.data_ptr<scalar_t>();
      at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
        std::vector<float> l(V), p(V), q(V), r(V), rq(V), scratch;
        std::vector<std::pair<float, float>> items;
        std::vector<int64_t> above, below;
        RowFilter f;
        for (int64_t b = b0; b < b1; ++b) {
          int64_t n = 0, nt = -1;
          bool rejected = false;
          for (int64_t i = 0; i < L; ++i) {
            gsd_distribution<logit_t>(tp + (b * Lt + i) * V, V, T, top_k, top_p, p.data(), r.data(), l, f, scratch,
                                      items);
            gsd_distribution<logit_t>(dp + (b * L + i) * V, V, T, top_k, top_p, q.data(), rq.data(), l, f, scratch,
                                      items);
            const int64_t x = xp[b * L + i];
            float P = p[x], Q = q[x];
            if (window > 0) {
              // the `window` tokens just before x and just after x in the ranking, by selection
              above.clear();
              below.clear();
              for (int64_t y = 0; y < V; ++y) {
                if (y == x) continue;
                (ranks_before(r[y], y, r[x], x) ? above : below).push_back(y);
              }
              auto closer_above = [&](int64_t a, int64_t c) { return ranks_before(r[c], c, r[a], a); };
              auto closer_below = [&](int64_t a, int64_t c) { return ranks_before(r[a], a, r[c], c); };
              const int64_t na = std::min<int64_t>(window, above.size()), nb = std::min<int64_t>(window, below.size());
              if (na < static_cast<int64_t>(above.size()))
                std::nth_element(above.begin(), above.begin() + (na - 1), above.end(), closer_above);
              if (nb < static_cast<int64_t>(below.size()))
                std::nth_element(below.begin(), below.begin() + (nb - 1), below.end(), closer_below);
              std::vector<int64_t> cl(above.begin(), above.begin() + na);
              cl.insert(cl.end(), below.begin(), below.begin() + nb);
              std::sort(cl.begin(), cl.end());  // at most 2 window tokens: sum in index order
              // P, Q: x plus the kept window tokens, summed in ascending index order
              P = 0.0f;
              Q = 0.0f;
              bool x_done = false;
              for (int64_t y : cl) {
                if (!x_done && x < y) {
                  P += p[x];
                  Q += q[x];
                  x_done = true;
                }
                if (std::fabs(p[y] - p[x]) < pt && emb_d2(ep, D, x, y) < dt) {
                  P += p[y];
                  Q += q[y];
                }
              }
              if (!x_done) {
                P += p[x];
                Q += q[x];
              }
            }
            const float u = philox_uniform(useed, kStreamAccept, static_cast<uint64_t>(b * L + i), 0);
            if (u * Q < P) {
              ++n;
              continue;
            }
            rejected = true;
            bool any = false;
            for (int64_t j = 0; j < V; ++j) {
              r[j] = std::max(p[j] - q[j], 0.0f);
              any = any || r[j] > 0.0f;
            }
            nt = gumbel_max_weights(any ? r.data() : p.data(), V,
                                    GumbelStream{useed, kStreamResample, static_cast<uint64_t>(b * Lt + i)});
            break;
          }
          if (!rejected && Lt == L + 1) {
            gsd_distribution<logit_t>(tp + (b * Lt + L) * V, V, T, top_k, top_p, p.data(), r.data(), l, f, scratch,
                                      items);
            nt = gumbel_max_weights(p.data(), V, GumbelStream{useed, kStreamResample, static_cast<uint64_t>(b * Lt + L)});
          }
          nap[b] = n;
          ntp[b] = nt;
        }
      });
    });
  });
  return {num_acc, next};
}

}  // namespace
}  // namespace imtok

TORCH_LIBRARY_IMPL(imtok_cuda, CPU, m) {
  m.impl("sampling_sample_logits", &imtok::sample_logits_cpu);
  m.impl("sampling_maskgit_step", &imtok::maskgit_step_cpu);
  m.impl("sampling_gsd_verify", &imtok::gsd_verify_cpu);
}
