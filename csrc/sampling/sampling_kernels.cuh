// Device kernels of the sampling family (AR filtering + sampling, the MaskGIT step, GSD verification). Plain CUDA
// C++: compiled by nvcc and, for tests, by g++ against common/emu_shim.h.
//
// Selection without sorting: block_radix_search finds, in 8 passes of 4-bit digits over a row, the smallest 32-bit
// key K with weight(keys > K) < target (weights: counts for the k-th value / the mask_len-th confidence, softmax
// mass for the top-p cut-off). Every reduction has a fixed order (per-thread partials in index order, warp
// shuffle trees, warps summed in order), so results do not depend on scheduling.
#pragma once

#include <cstdint>

#include "common/device.h"
#include "common/limits.h"
#include "sampling/sampling_math.h"

namespace imtok {
namespace IMTOK_DEVICE_NS {
namespace sampling {

using ::imtok::sampling::U32x4;
constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
static_assert(kThreads == 256, "the radix search reduces 16 slices of 16 threads");
constexpr float kInf = __builtin_huge_valf();

__device__ __forceinline__ float nan_to_neg_inf(float v) { return v != v ? -kInf : v; }

// Order-preserving key back to its float.
__device__ __forceinline__ float key_to_float(uint32_t k) {
  const uint32_t b = (k & 0x80000000u) ? (k & 0x7fffffffu) : ~k;
  return __int_as_float(static_cast<int>(b));
}

template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
  for (int off = 16; off > 0; off >>= 1) v += __shfl_down_sync(0xffffffffu, v, off);
  return v;  // lane 0 holds the sum
}

__device__ __forceinline__ float warp_max(float v) {
  for (int off = 16; off > 0; off >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, off));
  return v;  // every lane
}

// (value, index): larger value wins, then the lower index; index -1 = nothing.
__device__ __forceinline__ bool arg_better(float v, int64_t i, float bv, int64_t bi) {
  if (i < 0) return false;
  if (bi < 0) return true;
  return v > bv || (v == bv && i < bi);
}

__device__ __forceinline__ void warp_argmax(float& v, int64_t& i) {
  for (int off = 16; off > 0; off >>= 1) {
    const float ov = __shfl_xor_sync(0xffffffffu, v, off);
    const int64_t oi = __shfl_xor_sync(0xffffffffu, i, off);
    if (arg_better(ov, oi, v, i)) {
      v = ov;
      i = oi;
    }
  }
}

// Block-wide reductions (blockDim.x == kThreads; every thread gets the result). Two barriers each.
template <typename T>
__device__ T block_sum(T v) {
  IMTOK_SHARED_ARRAY(T, part, kWarps);
  IMTOK_SHARED_ARRAY(T, total, 1);
  v = warp_sum(v);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) part[warp] = v;
  __syncthreads();
  if (threadIdx.x == 0) {
    T s = T(0);
    for (int w = 0; w < kWarps; ++w) s += part[w];
    total[0] = s;
  }
  __syncthreads();
  const T r = total[0];
  __syncthreads();  // total / part are reused by the next call
  return r;
}

__device__ float block_max(float v) {
  IMTOK_SHARED_ARRAY(float, part, kWarps);
  v = warp_max(v);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) part[warp] = v;
  __syncthreads();
  float r = part[0];
  for (int w = 1; w < kWarps; ++w) r = fmaxf(r, part[w]);
  __syncthreads();
  return r;
}

__device__ void block_argmax(float& v, int64_t& i) {
  IMTOK_SHARED_ARRAY(float, pv, kWarps);
  IMTOK_SHARED_ARRAY(int64_t, pi, kWarps);
  warp_argmax(v, i);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) {
    pv[warp] = v;
    pi[warp] = i;
  }
  __syncthreads();
  float bv = pv[0];
  int64_t bi = pi[0];
  for (int w = 1; w < kWarps; ++w)
    if (arg_better(pv[w], pi[w], bv, bi)) {
      bv = pv[w];
      bi = pi[w];
    }
  __syncthreads();
  v = bv;
  i = bi;
}

// The search's shared scratch lives in non-template functions: one allocation per kernel, however many Elem
// instantiations (a __shared__ array inside the template would be allocated once per instantiation).
#if defined(__CUDACC__)
__device__ __forceinline__ uint64_t* radix_tbins() {
  __shared__ uint64_t s[16 * kThreads];  // [digit][thread]
  return s;
}
__device__ __forceinline__ uint64_t* radix_part() {
  __shared__ uint64_t s[16 * 16];  // [digit][slice of 16 threads]
  return s;
}
__device__ __forceinline__ uint64_t* radix_tot() {
  __shared__ uint64_t s[16];
  return s;
}
#else
inline auto& radix_tbins() {
  IMTOK_SHARED_ARRAY(uint64_t, s, 16 * kThreads);
  return s;
}
inline auto& radix_part() {
  IMTOK_SHARED_ARRAY(uint64_t, s, 16 * 16);
  return s;
}
inline auto& radix_tot() {
  IMTOK_SHARED_ARRAY(uint64_t, s, 16);
  return s;
}
#endif

// The smallest key K such that the weight of the participating elements with key > K is < target (the weight
// above the largest key is 0 < target). elem(j, key, w) -> bool (participates); weights are integers (counts, or
// the fixed-point softmax mass), so every sum is exact and order-free. *above = weight of the keys > K.
// 8 passes of 4-bit digits over j in [0, n); the 16 bins are reduced through shared memory (3 barriers a pass).
template <typename Elem>
__device__ uint32_t block_radix_search(int64_t n, double target, Elem elem, uint64_t* above_out) {
  auto&& tbins = radix_tbins();
  auto&& part = radix_part();
  auto&& tot = radix_tot();
  uint32_t prefix = 0;
  uint64_t above = 0;
  const int tid = threadIdx.x;
  for (int shift = 28; shift >= 0; shift -= 4) {
    uint64_t bins[16];
    for (int d = 0; d < 16; ++d) bins[d] = 0;
    const uint32_t hi_mask = shift == 28 ? 0u : (0xffffffffu << (shift + 4));
    for (int64_t j = tid; j < n; j += blockDim.x) {
      uint32_t key;
      uint64_t w;
      if (!elem(j, key, w)) continue;
      if ((key & hi_mask) != (prefix & hi_mask)) continue;
      bins[(key >> shift) & 15u] += w;
    }
    for (int d = 0; d < 16; ++d) tbins[d * kThreads + tid] = bins[d];
    __syncthreads();
    {
      const int d = tid & 15, slice = tid >> 4;  // kThreads / 16 = 16 slices of 16 threads
      uint64_t acc = 0;
      for (int i = 0; i < 16; ++i) acc += tbins[d * kThreads + slice * 16 + i];
      part[d * 16 + slice] = acc;
    }
    __syncthreads();
    if (tid < 16) {
      uint64_t acc = 0;
      for (int i = 0; i < 16; ++i) acc += part[tid * 16 + i];
      tot[tid] = acc;
    }
    __syncthreads();
    // A(d) = above + sum_{d' > d} tot[d'] (the weight above sub-range d); the smallest d with A(d) < target
    int dsel = 15;
    uint64_t a = above;
    for (int d = 14; d >= 0; --d) {
      const uint64_t next = a + tot[d + 1];
      if (!(static_cast<double>(next) < target)) break;
      a = next;
      dsel = d;
    }
    above = a;
    prefix |= static_cast<uint32_t>(dsel) << shift;
    // tot is read here and rewritten after two more barriers of the next pass: no barrier needed
  }
  *above_out = above;
  return prefix;
}

// ---- the kept set of a row (temperature > 0) --------------------------------------------------------------
// top-k keeps key >= kkey; top-p keeps key > pkey, and key == pkey for indices <= pidx.
struct KeptSet {
  int use_k, use_p;
  uint32_t kkey, pkey;
  int64_t pidx;
  float m;  // the row max
  __device__ bool keep(uint32_t key, int64_t j) const {
    if (use_k && key < kkey) return false;
    if (!use_p || key > pkey) return true;
    return key == pkey && j <= pidx;
  }
};

// lv(j) -> processed logit (NaN -> -inf). All threads of the block call it; all get the same KeptSet.
// The first index of the row's largest value (-1 only for an empty row), returned to every thread of the block:
// the greedy draw, and the fallback of the Gumbel-max draw.
template <typename LV>
__device__ int64_t row_argmax(LV lv, int64_t V) {
  float bv = -kInf;
  int64_t bi = -1;
  for (int64_t j = threadIdx.x; j < V; j += blockDim.x) {
    const float l = lv(j);
    if (arg_better(l, j, bv, bi)) {
      bv = l;
      bi = j;
    }
  }
  block_argmax(bv, bi);
  return bi;
}

template <typename LV>
__device__ KeptSet row_kept_set(LV lv, int64_t V, int64_t top_k, double top_p) {
  KeptSet ks{0, 0, 0u, 0u, 0, -kInf};
  float m = -kInf;
  for (int64_t j = threadIdx.x; j < V; j += blockDim.x) m = fmaxf(m, lv(j));
  m = block_max(m);
  ks.m = m;
  if (top_k > 0 && top_k < V) {
    uint64_t above = 0;
    ks.kkey = block_radix_search(
        V, static_cast<double>(top_k),
        [&](int64_t j, uint32_t& key, uint64_t& w) {
          key = ::imtok::sampling::float_key(lv(j));
          w = 1;
          return true;
        },
        &above);
    ks.use_k = 1;
  }
  if (top_p < 1.0 && m > -kInf) {
    uint64_t z = 0;
    for (int64_t j = threadIdx.x; j < V; j += blockDim.x) {
      const float l = lv(j);
      if (!ks.use_k || ::imtok::sampling::float_key(l) >= ks.kkey) z += ::imtok::sampling::mass_fixed(l, m);
    }
    const uint64_t Z = block_sum(z);
    const double target = top_p * static_cast<double>(Z);
    uint64_t G = 0;
    const uint32_t pkey = block_radix_search(
        V, target,
        [&](int64_t j, uint32_t& key, uint64_t& w) {
          const float l = lv(j);
          key = ::imtok::sampling::float_key(l);
          if (ks.use_k && key < ks.kkey) return false;
          w = ::imtok::sampling::mass_fixed(l, m);
          return true;
        },
        &G);
    // ties at the cut-off value: the first c by index, c = #{n : G + n w < target} (at least one)
    uint64_t neq = 0;
    for (int64_t j = threadIdx.x; j < V; j += blockDim.x) neq += ::imtok::sampling::float_key(lv(j)) == pkey ? 1 : 0;
    neq = block_sum(neq);
    const int64_t c = ::imtok::sampling::top_p_ties_kept(G, ::imtok::sampling::mass_fixed(key_to_float(pkey), m),
                                                         static_cast<int64_t>(neq), target);
    ks.use_p = 1;
    ks.pkey = pkey;
    ks.pidx = V;
    if (c < static_cast<int64_t>(neq)) {
      uint64_t dummy = 0;
      // the c-th tie in ascending index order: key' = ~j, the c-th largest key'
      const uint32_t k2 = block_radix_search(
          V, static_cast<double>(c),
          [&](int64_t j, uint32_t& key, uint64_t& w) {
            if (::imtok::sampling::float_key(lv(j)) != pkey) return false;
            key = ~static_cast<uint32_t>(j);
            w = 1;
            return true;
          },
          &dummy);
      ks.pidx = static_cast<int64_t>(~k2);
    }
  }
  return ks;
}

// Gumbel-max over the kept tokens (Philox (seed, stream, row), one group of four elements per thread step);
// the plain argmax when nothing finite is kept. Every thread gets the result.
template <typename LV>
__device__ int64_t row_gumbel_max(LV lv, int64_t V, const KeptSet& ks, uint64_t seed, uint32_t stream, uint64_t row) {
  float bv = -kInf;
  int64_t bi = -1;
  for (int64_t g4 = threadIdx.x; g4 * 4 < V; g4 += blockDim.x) {
    const U32x4 bits = ::imtok::sampling::philox_group(seed, stream, row, static_cast<uint64_t>(g4));
    for (int q = 0; q < 4; ++q) {
      const int64_t j = g4 * 4 + q;
      if (j >= V) break;
      const float l = lv(j);
      if (!ks.keep(::imtok::sampling::float_key(l), j)) continue;
      const float v = l + ::imtok::sampling::gumbel_from_uniform(
                              ::imtok::sampling::uniform_from_bits(::imtok::sampling::u32x4_get(bits, q)));
      if (v > -kInf && arg_better(v, j, bv, bi)) {
        bv = v;
        bi = j;
      }
    }
  }
  block_argmax(bv, bi);
  if (bi >= 0) return bi;
  return row_argmax(lv, V);
}

// ---- sample_logits --------------------------------------------------------------------------------------------
// grid (B); block kThreads.
template <typename scalar_t>
__global__ void sample_logits_kernel(const scalar_t* __restrict__ logits, const scalar_t* __restrict__ uncond,
                                     int64_t* __restrict__ out, int64_t V, float cfg_scale, float temperature,
                                     int64_t top_k, double top_p, uint64_t seed) {
  const int64_t b = blockIdx.x;
  const scalar_t* c = logits + b * V;
  const scalar_t* u = uncond ? uncond + b * V : nullptr;
  auto lv = [&](int64_t j) -> float {
    float v = static_cast<float>(c[j]);
    if (u) v = ::imtok::sampling::cfg_from_uncond(v, static_cast<float>(u[j]), cfg_scale);
    if (temperature != 0.0f) v = v / temperature;
    return nan_to_neg_inf(v);
  };
  int64_t r;
  if (temperature == 0.0f) {
    r = row_argmax(lv, V);
  } else {
    const KeptSet ks = row_kept_set(lv, V, top_k, top_p);
    r = row_gumbel_max(lv, V, ks, seed, ::imtok::sampling::kStreamSample, static_cast<uint64_t>(b));
  }
  if (threadIdx.x == 0) out[b] = r;
}

// ---- MaskGIT --------------------------------------------------------------------------------------------------
// Sampling + confidence: one warp per position. grid (ceil(B N / kWarps)); block kThreads.
template <typename scalar_t>
__global__ void maskgit_sample_kernel(const scalar_t* __restrict__ logits, const scalar_t* __restrict__ uncond,
                                      const int64_t* __restrict__ tokens, int64_t* __restrict__ sampled,
                                      float* __restrict__ conf, int64_t P, int64_t V, int64_t mask_token_id,
                                      int form, float g, float T, float t, uint64_t seed) {
  const int lane = threadIdx.x & 31;
  const int64_t p = int64_t(blockIdx.x) * kWarps + (threadIdx.x >> 5);
  if (p >= P) return;  // whole warps only
  const int64_t tok = tokens[p];
  if (tok != mask_token_id) {
    if (lane == 0) {
      sampled[p] = tok;
      conf[p] = kInf;
    }
    return;
  }
  const scalar_t* c = logits + p * V;
  const scalar_t* u = uncond ? uncond + p * V : nullptr;
  auto lv = [&](int64_t j) -> float {
    float v = static_cast<float>(c[j]);
    if (u) {
      const float uv = static_cast<float>(u[j]);
      v = form == 0 ? ::imtok::sampling::cfg_from_cond(v, uv, g) : ::imtok::sampling::cfg_from_uncond(v, uv, g);
    }
    return nan_to_neg_inf(v / T);
  };
  float bv = -kInf;
  int64_t bi = -1;
  if (t == 0.0f) {
    for (int64_t j = lane; j < V; j += 32) {
      const float l = lv(j);
      if (arg_better(l, j, bv, bi)) {
        bv = l;
        bi = j;
      }
    }
  } else {
    for (int64_t g4 = lane; g4 * 4 < V; g4 += 32) {
      const U32x4 bits = ::imtok::sampling::philox_group(seed, ::imtok::sampling::kStreamSample,
                                                         static_cast<uint64_t>(p), static_cast<uint64_t>(g4));
      for (int q = 0; q < 4; ++q) {
        const int64_t j = g4 * 4 + q;
        if (j >= V) break;
        const float v = ::imtok::sampling::add_scaled(
            lv(j), t,
            ::imtok::sampling::gumbel_from_uniform(
                ::imtok::sampling::uniform_from_bits(::imtok::sampling::u32x4_get(bits, q))));
        if (arg_better(v, j, bv, bi)) {
          bv = v;
          bi = j;
        }
      }
    }
  }
  warp_argmax(bv, bi);
  if (lane == 0) {
    if (bi < 0) bi = 0;
    const float l = lv(bi);
    sampled[p] = bi;
    conf[p] = t == 0.0f ? l
                        : ::imtok::sampling::add_scaled(
                              l, t,
                              ::imtok::sampling::gumbel_from_uniform(::imtok::sampling::philox_uniform(
                                  seed, ::imtok::sampling::kStreamConfidence, static_cast<uint64_t>(p), 0)));
  }
}

// Re-mask: confidence <= the mask_len-th smallest confidence of the row. grid (B); block kThreads.
__global__ void maskgit_remask_kernel(const float* __restrict__ conf, const int64_t* __restrict__ sampled,
                                      const int64_t* __restrict__ mask_len, int64_t* __restrict__ next,
                                      bool* __restrict__ remask, int64_t N, int64_t mask_token_id) {
  const int64_t b = blockIdx.x;
  const float* cb = conf + b * N;
  int64_t k = mask_len[b];
  k = k < 0 ? 0 : (k > N ? N : k);
  uint32_t cut = 0;  // remask <=> ~key(conf) >= cut
  if (k > 0) {
    uint64_t above = 0;
    cut = block_radix_search(
        N, static_cast<double>(k),
        [&](int64_t n, uint32_t& key, uint64_t& w) {
          key = ~::imtok::sampling::float_key(cb[n]);
          w = 1;
          return true;
        },
        &above);
  }
  for (int64_t n = threadIdx.x; n < N; n += blockDim.x) {
    const bool r = k > 0 && ~::imtok::sampling::float_key(cb[n]) >= cut;
    remask[b * N + n] = r;
    next[b * N + n] = r ? mask_token_id : sampled[b * N + n];
  }
}

// ---- GSD ------------------------------------------------------------------------------------------------------
// Block-wide min / max of uint64 through shared memory (no shuffles), 3 barriers.
template <bool kMin>
__device__ uint64_t block_extreme_u64(uint64_t v) {
  IMTOK_SHARED_ARRAY(uint64_t, all, kThreads);
  IMTOK_SHARED_ARRAY(uint64_t, part, 16);
  const int tid = threadIdx.x;
  all[tid] = v;
  __syncthreads();
  if (tid < 16) {
    uint64_t r = all[tid * 16];
    for (int i = 1; i < 16; ++i) {
      const uint64_t o = all[tid * 16 + i];
      r = kMin ? (o < r ? o : r) : (o > r ? o : r);
    }
    part[tid] = r;
  }
  __syncthreads();
  uint64_t r = part[0];
  for (int i = 1; i < 16; ++i) r = kMin ? (part[i] < r ? part[i] : r) : (part[i] > r ? part[i] : r);
  __syncthreads();
  return r;
}

// The sampling distribution of one row: one-hot at the argmax (temperature 0) or softmax over the kept set.
struct RowDist {
  KeptSet ks;
  float z;        // normaliser from the fixed-point mass
  int64_t amax;   // temperature 0: the argmax, else -1
};

template <typename LV>
__device__ RowDist row_distribution(LV lv, int64_t V, float T, int64_t top_k, double top_p) {
  RowDist d;
  if (T == 0.0f) {
    const int64_t bi = row_argmax(lv, V);
    d.ks = KeptSet{0, 0, 0u, 0u, 0, -kInf};
    d.z = 1.0f;
    d.amax = bi < 0 ? 0 : bi;
    return d;
  }
  d.ks = row_kept_set(lv, V, top_k, top_p);
  d.amax = -1;
  uint64_t z = 0;
  for (int64_t j = threadIdx.x; j < V; j += blockDim.x) {
    const float l = lv(j);
    if (l > -kInf && d.ks.keep(::imtok::sampling::float_key(l), j)) z += ::imtok::sampling::mass_fixed(l, d.ks.m);
  }
  d.z = ::imtok::sampling::fixed_to_float(block_sum(z));
  return d;
}

// (probability, ranking value) of token j with processed logit l.
__device__ __forceinline__ void dist_at(const RowDist& d, float l, int64_t j, float* p, float* r) {
  if (d.amax >= 0) {
    *p = j == d.amax ? 1.0f : 0.0f;
    *r = j == d.amax ? l : -kInf;
    return;
  }
  const bool k = l > -kInf && d.ks.keep(::imtok::sampling::float_key(l), j);
  *p = k ? expf(l - d.ks.m) / d.z : 0.0f;
  *r = k ? l : -kInf;
}

// The ranking value alone (no expf): the processed logit of a kept token, -inf otherwise.
__device__ __forceinline__ float rank_at(const RowDist& d, float l, int64_t j) {
  if (d.amax >= 0) return j == d.amax ? l : -kInf;
  return (l > -kInf && d.ks.keep(::imtok::sampling::float_key(l), j)) ? l : -kInf;
}

// Ranking order: larger ranking value first, then lower index, as one 64-bit key (larger = earlier).
__device__ __forceinline__ uint64_t rank_key(float r, int64_t j) {
  return (static_cast<uint64_t>(::imtok::sampling::float_key(r)) << 32) | (0xffffffffu - static_cast<uint32_t>(j));
}

constexpr int kMaxWindow = static_cast<int>(::imtok::kMaxDraftWindow);

// Acceptance of draft position (b, i): grid (B, L); block kThreads. accept[b, i] = u * sum_C q < sum_C p.
template <typename scalar_t, typename emb_t>
__global__ void gsd_accept_kernel(const int64_t* __restrict__ draft_tokens, const scalar_t* __restrict__ target,
                                  const scalar_t* __restrict__ draft, const emb_t* __restrict__ emb,
                                  bool* __restrict__ accept, int64_t L, int64_t Lt, int64_t V, int64_t D, int window,
                                  float pt, float dt, float T, int64_t top_k, double top_p, uint64_t seed) {
  IMTOK_SHARED_ARRAY(int64_t, cand, 2 * kMaxWindow);
  IMTOK_SHARED_ARRAY(int, ckeep, 2 * kMaxWindow);
  const int64_t b = blockIdx.x, i = blockIdx.y;
  const scalar_t* tr = target + (b * Lt + i) * V;
  const scalar_t* dr = draft + (b * L + i) * V;
  auto lt = [&](int64_t j) -> float { return nan_to_neg_inf(T != 0.0f ? static_cast<float>(tr[j]) / T : static_cast<float>(tr[j])); };
  auto ld = [&](int64_t j) -> float { return nan_to_neg_inf(T != 0.0f ? static_cast<float>(dr[j]) / T : static_cast<float>(dr[j])); };
  const RowDist pd = row_distribution(lt, V, T, top_k, top_p);
  const RowDist qd = row_distribution(ld, V, T, top_k, top_p);
  int64_t x = draft_tokens[b * L + i];
  x = x < 0 ? 0 : (x >= V ? V - 1 : x);  // the host checks CPU inputs; a device never reads out of bounds
  float px, rx, qx, rq;
  dist_at(pd, lt(x), x, &px, &rx);
  dist_at(qd, ld(x), x, &qx, &rq);
  int nc = 0;
  if (window > 0) {
    const uint64_t cx = rank_key(rx, x);
    // the `window` nearest tokens above x (smallest keys > cx), then below (largest keys < cx)
    for (int side = 0; side < 2; ++side) {
      uint64_t last = cx;
      for (int k = 0; k < window; ++k) {
        uint64_t best = side == 0 ? ~uint64_t(0) : 0;
        for (int64_t j = threadIdx.x; j < V; j += blockDim.x) {
          const uint64_t kj = rank_key(rank_at(pd, lt(j), j), j);
          if (side == 0 ? (kj > last && kj < best) : (kj < last && kj > best)) best = kj;
        }
        best = side == 0 ? block_extreme_u64<true>(best) : block_extreme_u64<false>(best);
        if (side == 0 ? best == ~uint64_t(0) : best == 0) break;
        if (threadIdx.x == 0) cand[nc] = static_cast<int64_t>(0xffffffffu - static_cast<uint32_t>(best & 0xffffffffu));
        ++nc;
        last = best;
      }
    }
    __syncthreads();
    // filters: one thread per candidate, the distance summed in dimension order (as the CPU kernel)
    if (static_cast<int>(threadIdx.x) < nc) {
      const int64_t y = cand[threadIdx.x];
      float py, ry;
      dist_at(pd, lt(y), y, &py, &ry);
      float acc = 0.0f;
      for (int64_t e = 0; e < D; ++e) {
        const float diff = static_cast<float>(emb[y * D + e]) - static_cast<float>(emb[x * D + e]);
        acc = ::imtok::sampling::fadd_rn(acc, ::imtok::sampling::fmul_rn(diff, diff));
      }
      ckeep[threadIdx.x] = (fabsf(py - px) < pt && acc < dt) ? 1 : 0;
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    float P = px, Q = qx;
    if (window > 0) {
      // x and the kept candidates in ascending index order (insertion sort of at most 2 window indices)
      int64_t ys[2 * kMaxWindow];
      int ny = 0;
      for (int c = 0; c < nc; ++c) {
        if (!ckeep[c]) continue;
        const int64_t y = cand[c];
        int pos = ny++;
        while (pos > 0 && ys[pos - 1] > y) {
          ys[pos] = ys[pos - 1];
          --pos;
        }
        ys[pos] = y;
      }
      P = 0.0f;
      Q = 0.0f;
      bool x_done = false;
      for (int c = 0; c < ny; ++c) {
        const int64_t y = ys[c];
        if (!x_done && x < y) {
          P += px;
          Q += qx;
          x_done = true;
        }
        float py, ry, qy, rqy;
        dist_at(pd, lt(y), y, &py, &ry);
        dist_at(qd, ld(y), y, &qy, &rqy);
        P += py;
        Q += qy;
      }
      if (!x_done) {
        P += px;
        Q += qx;
      }
    }
    const float u = ::imtok::sampling::philox_uniform(seed, ::imtok::sampling::kStreamAccept,
                                                      static_cast<uint64_t>(b * L + i), 0);
    accept[b * L + i] = u * Q < P;
  }
}

// Prefix acceptance and the next token: grid (B); block kThreads.
template <typename scalar_t>
__global__ void gsd_finish_kernel(const bool* __restrict__ accept, const scalar_t* __restrict__ target,
                                  const scalar_t* __restrict__ draft, int64_t* __restrict__ num_acc,
                                  int64_t* __restrict__ next, int64_t L, int64_t Lt, int64_t V, float T,
                                  int64_t top_k, double top_p, uint64_t seed) {
  const int64_t b = blockIdx.x;
  int64_t n = 0;
  while (n < L && accept[b * L + n]) ++n;  // every thread reads the same flags
  if (n == L && Lt == L) {
    if (threadIdx.x == 0) {
      num_acc[b] = n;
      next[b] = -1;
    }
    return;  // uniform across the block
  }
  const int64_t i = n;  // the first rejected position, or the extra target row
  const scalar_t* tr = target + (b * Lt + i) * V;
  const scalar_t* dr = draft + (b * L + (i < L ? i : 0)) * V;
  auto lt = [&](int64_t j) -> float { return nan_to_neg_inf(T != 0.0f ? static_cast<float>(tr[j]) / T : static_cast<float>(tr[j])); };
  auto ld = [&](int64_t j) -> float { return nan_to_neg_inf(T != 0.0f ? static_cast<float>(dr[j]) / T : static_cast<float>(dr[j])); };
  const RowDist pd = row_distribution(lt, V, T, top_k, top_p);
  const bool residual = i < L;
  RowDist qd = pd;
  if (residual) qd = row_distribution(ld, V, T, top_k, top_p);
  // weights: max(0, p - q) (p when that is all zero) at a rejection, p on the extra row
  int any = 0;
  if (residual) {
    for (int64_t j = threadIdx.x; j < V; j += blockDim.x) {
      float pj, rj, qj, rqj;
      dist_at(pd, lt(j), j, &pj, &rj);
      dist_at(qd, ld(j), j, &qj, &rqj);
      any |= (pj - qj > 0.0f) ? 1 : 0;
    }
    any = block_sum(any) > 0 ? 1 : 0;
  }
  float bv = -kInf;
  int64_t bi = -1;
  const uint64_t row = static_cast<uint64_t>(b * Lt + i);
  for (int64_t g4 = threadIdx.x; g4 * 4 < V; g4 += blockDim.x) {
    const U32x4 bits = ::imtok::sampling::philox_group(seed, ::imtok::sampling::kStreamResample, row,
                                                       static_cast<uint64_t>(g4));
    for (int q = 0; q < 4; ++q) {
      const int64_t j = g4 * 4 + q;
      if (j >= V) break;
      float pj, rj, w;
      dist_at(pd, lt(j), j, &pj, &rj);
      w = pj;
      if (residual && any) {
        float qj, rqj;
        dist_at(qd, ld(j), j, &qj, &rqj);
        w = fmaxf(pj - qj, 0.0f);
      }
      if (!(w > 0.0f)) continue;
      const float v = logf(w) + ::imtok::sampling::gumbel_from_bits(::imtok::sampling::u32x4_get(bits, q));
      if (arg_better(v, j, bv, bi)) {
        bv = v;
        bi = j;
      }
    }
  }
  block_argmax(bv, bi);
  if (threadIdx.x == 0) {
    num_acc[b] = n;
    next[b] = bi;
  }
}

}  // namespace sampling
}  // namespace IMTOK_DEVICE_NS
}  // namespace imtok
