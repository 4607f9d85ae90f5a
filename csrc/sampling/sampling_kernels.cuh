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
#include "sampling/sampling_math.h"

namespace imtok {
namespace IMTOK_DEVICE_NS {
namespace sampling_k {

using ::imtok::sampling::U32x4;
constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
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

// The smallest key K such that the weight of the participating elements with key > K is < target (the weight
// must be < target above the largest key: weight(keys > 0xffffffff) = 0 < target). elem(j, key, w) -> bool
// (participates). *above = weight of the elements with key > K. 8 passes of 4-bit digits over j in [0, n).
template <typename W, typename Elem>
__device__ uint32_t block_radix_search(int64_t n, W target, Elem elem, W* above_out) {
  IMTOK_SHARED_ARRAY2(W, wbins, kWarps, 16);
  IMTOK_SHARED_ARRAY(W, tot, 16);
  uint32_t prefix = 0;
  W above = W(0);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  for (int shift = 28; shift >= 0; shift -= 4) {
    W bins[16];
    for (int d = 0; d < 16; ++d) bins[d] = W(0);
    const uint32_t hi_mask = shift == 28 ? 0u : (0xffffffffu << (shift + 4));
    for (int64_t j = threadIdx.x; j < n; j += blockDim.x) {
      uint32_t key;
      W w;
      if (!elem(j, key, w)) continue;
      if ((key & hi_mask) != (prefix & hi_mask)) continue;
      bins[(key >> shift) & 15u] += w;
    }
    for (int d = 0; d < 16; ++d) {
      const W s = warp_sum(bins[d]);
      if (lane == 0) wbins[warp][d] = s;
    }
    __syncthreads();
    if (threadIdx.x < 16) {
      W s = W(0);
      for (int w = 0; w < kWarps; ++w) s += wbins[w][threadIdx.x];
      tot[threadIdx.x] = s;
    }
    __syncthreads();
    // A(d) = above + sum_{d' > d} tot[d'] (the weight above sub-range d); the smallest d with A(d) < target
    int dsel = 15;
    W a = above;
    for (int d = 14; d >= 0; --d) {
      const W next = a + tot[d + 1];
      if (!(next < target)) break;
      a = next;
      dsel = d;
    }
    above = a;
    prefix |= static_cast<uint32_t>(dsel) << shift;
    __syncthreads();  // tot / wbins are rewritten by the next pass
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
template <typename LV>
__device__ KeptSet row_kept_set(LV lv, int64_t V, int64_t top_k, float top_p) {
  KeptSet ks{0, 0, 0u, 0u, 0, -kInf};
  float m = -kInf;
  for (int64_t j = threadIdx.x; j < V; j += blockDim.x) m = fmaxf(m, lv(j));
  m = block_max(m);
  ks.m = m;
  if (top_k > 0 && top_k < V) {
    int above = 0;
    ks.kkey = block_radix_search<int>(
        V, static_cast<int>(top_k),
        [&](int64_t j, uint32_t& key, int& w) {
          key = ::imtok::sampling::float_key(lv(j));
          w = 1;
          return true;
        },
        &above);
    ks.use_k = 1;
  }
  if (top_p < 1.0f && m > -kInf) {
    float z = 0.0f;
    for (int64_t j = threadIdx.x; j < V; j += blockDim.x) {
      const float l = lv(j);
      if (!ks.use_k || ::imtok::sampling::float_key(l) >= ks.kkey) z += expf(l - m);
    }
    const float Z = block_sum(z);
    const float target = top_p * Z;
    float G = 0.0f;
    const uint32_t pkey = block_radix_search<float>(
        V, target,
        [&](int64_t j, uint32_t& key, float& w) {
          const float l = lv(j);
          key = ::imtok::sampling::float_key(l);
          if (ks.use_k && key < ks.kkey) return false;
          w = expf(l - m);
          return true;
        },
        &G);
    // ties at the cut-off value: the first c by index, c = #{n : G + n w < target} (at least one)
    int neq = 0;
    for (int64_t j = threadIdx.x; j < V; j += blockDim.x) neq += ::imtok::sampling::float_key(lv(j)) == pkey ? 1 : 0;
    neq = block_sum(neq);
    const float weq = expf(key_to_float(pkey) - m);
    int c = 0;
    float acc = G;
    while (c < neq && acc < target) {
      ++c;
      acc += weq;
    }
    if (c < 1) c = 1;
    ks.use_p = 1;
    ks.pkey = pkey;
    ks.pidx = V;
    if (c < neq) {
      int dummy = 0;
      // the c-th tie in ascending index order: key' = ~j, the c-th largest key'
      const uint32_t k2 = block_radix_search<int>(
          V, c,
          [&](int64_t j, uint32_t& key, int& w) {
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
  float av = -kInf;
  int64_t ai = -1;
  for (int64_t j = threadIdx.x; j < V; j += blockDim.x) {
    const float l = lv(j);
    if (arg_better(l, j, av, ai)) {
      av = l;
      ai = j;
    }
  }
  block_argmax(av, ai);
  return ai;
}

// ---- sample_logits --------------------------------------------------------------------------------------------
// grid (B); block kThreads.
template <typename scalar_t>
__global__ void sample_logits_kernel(const scalar_t* __restrict__ logits, const scalar_t* __restrict__ uncond,
                                     int64_t* __restrict__ out, int64_t V, float cfg_scale, float temperature,
                                     int64_t top_k, float top_p, uint64_t seed) {
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
    r = bi;
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
    int above = 0;
    cut = block_radix_search<int>(
        N, static_cast<int>(k),
        [&](int64_t n, uint32_t& key, int& w) {
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

}  // namespace sampling_k
}  // namespace IMTOK_DEVICE_NS
}  // namespace imtok
