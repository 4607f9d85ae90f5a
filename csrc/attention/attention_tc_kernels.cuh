// Tensor-core forward of the attention family for fp16 / bf16 inputs: wmma 16 x 16 x 16 tiles with fp32
// accumulation (sm_80 and newer; under the CPU shim through the emulated wmma of common/emu_wmma.h).
//
// attn_fwd_tc_kernel has the contract of attn_fwd_kernel (writes out and lse) and attn_colsum_tc_kernel that
// of attn_colsum_kernel (column sums from lse); the CLS row (one query) stays on the SIMT kernel.
// One block of 4 warps per (segment, head, 64 queries); each warp owns 16 query rows. Per tile of 64 keys:
//   S = Q K^T on tensor cores (fp32), stored to shared memory;
//   online softmax on two lanes per row: scale, key bias / mask, causal limit, running max and sum in fp32;
//   P rounded to the input type (as FlashAttention does) for O += P V on tensor cores.
// O stays in shared memory in fp32 and is rescaled per row there: a fragment's register layout is
// unspecified, so a row of an accumulator cannot be scaled in registers through the wmma API.
#pragma once

#include "attention/attention_kernels.cuh"
#include "common/mma.h"

namespace imtok {
namespace IMTOK_DEVICE_NS {
namespace attention {

constexpr int kTcBM = 64;       // query rows per block (16 per warp)
constexpr int kTcBN = 64;       // keys per tile
constexpr int kTcThreads = 128;

// Shared-memory regions (byte offsets, each 32-byte aligned as wmma requires) for head dim d padded to dp:
// sQ [64][dp+8], sK [64][dp+8], sV [64][dp+8], sP [64][72] in the 16-bit type; sS [64][68], sO [64][dp+4] fp32.
struct TcLayout {
  int dp, ldh, ldp, lds, ldo;
  size_t q, k, v, p, s, o, bytes;
};
IMTOK_HD TcLayout tc_layout(int d) {
  TcLayout L;
  L.dp = (d + 15) / 16 * 16;
  L.ldh = L.dp + 8;  // padding rows by 16 bytes spreads them over the shared-memory banks
  L.ldp = kTcBN + 8;
  L.lds = kTcBN + 4;
  L.ldo = L.dp + 4;
  L.q = 0;
  L.k = L.q + size_t(kTcBM) * L.ldh * 2;
  L.v = L.k + size_t(kTcBN) * L.ldh * 2;
  L.p = L.v + size_t(kTcBN) * L.ldh * 2;
  L.s = L.p + size_t(kTcBM) * L.ldp * 2;
  L.o = L.s + size_t(kTcBM) * L.lds * 4;
  L.bytes = L.o + size_t(kTcBM) * L.ldo * 4;
  return L;
}

template <typename scalar_t>
__global__ void __launch_bounds__(kTcThreads)
    attn_fwd_tc_kernel(const scalar_t* __restrict__ q, const scalar_t* __restrict__ k,
                       const scalar_t* __restrict__ v, const float* __restrict__ add, const int64_t* __restrict__ segs,
                       int64_t H, int64_t Nq, int64_t Nk, int d, float scale, bool causal, scalar_t* __restrict__ out,
                       float* __restrict__ lse) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
  // bf16 tiles need sm_80; the launcher picks this kernel only on sm_80 and newer
#else
  namespace wm = imtok_wmma;
  using mt = typename mma_element<scalar_t>::type;
  const int64_t seg = blockIdx.x / H, h = blockIdx.x % H;
  const SegInfo sg = load_seg(segs, seg);
  const int64_t q0 = static_cast<int64_t>(blockIdx.y) * kTcBM;
  if (q0 >= sg.nq) return;  // the whole block leaves together
  const int64_t M = imtok_min<int64_t>(kTcBM, sg.nq - q0);
  const int64_t bh = sg.b * H + h;
  const TcLayout L = tc_layout(d);
  IMTOK_DYNAMIC_SHARED(unsigned char, smem);
  auto sQ = smem_region<mt>(smem, L.q);
  auto sK = smem_region<mt>(smem, L.k);
  auto sV = smem_region<mt>(smem, L.v);
  auto sP = smem_region<mt>(smem, L.p);
  auto sS = smem_region<float>(smem, L.s);
  auto sO = smem_region<float>(smem, L.o);
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const scalar_t* Qb = q + (bh * Nq + sg.qo + q0) * d;
  const scalar_t* Kb = k + (bh * Nk + sg.ko) * d;
  const scalar_t* Vb = v + (bh * Nk + sg.ko) * d;
  const float* addb = add ? add + sg.b * Nk + sg.ko : nullptr;

  for (int e = tid; e < kTcBM * L.dp; e += kTcThreads) {  // Q tile (zero past M rows and d columns), O = 0
    const int r = e / L.dp, c = e % L.dp;
    const float x = r < M && c < d ? static_cast<float>(Qb[static_cast<int64_t>(r) * d + c]) : 0.f;
    sQ[r * L.ldh + c] = mma_element<scalar_t>::from_float(x);
    sO[r * L.ldo + c] = 0.f;
  }
  __syncthreads();  // also when no key tile follows: the rows are read out below by other threads

  // the softmax row of this lane pair, and the half of its keys (and of its output columns) this lane takes
  const int r = warp * 16 + lane / 2, half = lane % 2;
  const int64_t vis = r < M ? visible(causal, q0 + r, sg.nq, sg.nk) : 0;
  const int c_lo = half * (L.dp / 2), c_hi = c_lo + L.dp / 2;
  float m_run = -INFINITY, l_run = 0.f;

  const int64_t kend = visible(causal, q0 + M - 1, sg.nq, sg.nk);
  for (int64_t k0 = 0; k0 < kend; k0 += kTcBN) {
    const int64_t n = imtok_min<int64_t>(kTcBN, kend - k0);
    if (k0 > 0) __syncthreads();  // the previous K / V tiles are consumed
    for (int e = tid; e < kTcBN * L.dp; e += kTcThreads) {
      const int j = e / L.dp, c = e % L.dp;
      const bool in = j < n && c < d;
      const int64_t g = (k0 + j) * d + c;
      sK[j * L.ldh + c] = mma_element<scalar_t>::from_float(in ? static_cast<float>(Kb[g]) : 0.f);
      sV[j * L.ldh + c] = mma_element<scalar_t>::from_float(in ? static_cast<float>(Vb[g]) : 0.f);
    }
    __syncthreads();

    // S (16 x 64 per warp) = Q K^T; each Q fragment is loaded once per tile
    {
      wm::fragment<wm::accumulator, 16, 16, 16, float> acc[kTcBN / 16];
      for (int nt = 0; nt < kTcBN / 16; ++nt) wm::fill_fragment(acc[nt], 0.f);
      for (int kk = 0; kk < L.dp / 16; ++kk) {
        wm::fragment<wm::matrix_a, 16, 16, 16, mt, wm::row_major> a;
        wm::load_matrix_sync(a, sQ + (warp * 16) * L.ldh + kk * 16, L.ldh);
        for (int nt = 0; nt < kTcBN / 16; ++nt) {
          wm::fragment<wm::matrix_b, 16, 16, 16, mt, wm::col_major> b;  // K^T: column n of K^T is row n of K
          wm::load_matrix_sync(b, sK + (nt * 16) * L.ldh + kk * 16, L.ldh);
          wm::mma_sync(acc[nt], a, b, acc[nt]);
        }
      }
      for (int nt = 0; nt < kTcBN / 16; ++nt)
        wm::store_matrix_sync(sS + (warp * 16) * L.lds + nt * 16, acc[nt], L.lds, wm::mem_row_major);
    }
    __syncwarp(0xffffffffu);

    // online softmax of row r over this lane's 32 keys, combined with the partner lane
    float tmax = -INFINITY;
    for (int jj = 0; jj < kTcBN / 2; ++jj) {
      const int j = half * (kTcBN / 2) + jj;
      if (j < n && k0 + j < vis) {
        float s = sS[r * L.lds + j] * scale;
        if (addb) s += addb[k0 + j];
        tmax = imtok_max(tmax, s);
      }
    }
    tmax = imtok_max(tmax, __shfl_xor_sync(0xffffffffu, tmax, 1));
    const float mnew = imtok_max(m_run, tmax);
    float rowsum = 0.f;
    for (int jj = 0; jj < kTcBN / 2; ++jj) {
      const int j = half * (kTcBN / 2) + jj;
      float p = 0.f;
      if (mnew != -INFINITY && j < n && k0 + j < vis) {
        float s = sS[r * L.lds + j] * scale;
        if (addb) s += addb[k0 + j];
        p = imtok_exp(s - mnew);  // exp(-inf) = 0 for a masked key
      }
      rowsum += p;
      sP[r * L.ldp + j] = mma_element<scalar_t>::from_float(p);
    }
    rowsum += __shfl_xor_sync(0xffffffffu, rowsum, 1);
    const float alpha = mnew != -INFINITY ? imtok_exp(m_run - mnew) : 1.f;
    l_run = l_run * alpha + rowsum;
    m_run = mnew;
    if (alpha != 1.f)
      for (int c = c_lo; c < c_hi; ++c) sO[r * L.ldo + c] *= alpha;
    __syncwarp(0xffffffffu);

    // O (16 x dp per warp) += P V
    for (int ct = 0; ct < L.dp / 16; ++ct) {
      wm::fragment<wm::accumulator, 16, 16, 16, float> acc;
      wm::load_matrix_sync(acc, sO + (warp * 16) * L.ldo + ct * 16, L.ldo, wm::mem_row_major);
      for (int kk = 0; kk < kTcBN / 16; ++kk) {
        wm::fragment<wm::matrix_a, 16, 16, 16, mt, wm::row_major> a;
        wm::fragment<wm::matrix_b, 16, 16, 16, mt, wm::row_major> b;
        wm::load_matrix_sync(a, sP + (warp * 16) * L.ldp + kk * 16, L.ldp);
        wm::load_matrix_sync(b, sV + (kk * 16) * L.ldh + ct * 16, L.ldh);
        wm::mma_sync(acc, a, b, acc);
      }
      wm::store_matrix_sync(sO + (warp * 16) * L.ldo + ct * 16, acc, L.ldo, wm::mem_row_major);
    }
    __syncwarp(0xffffffffu);
  }

  if (r < M) {
    const float inv = l_run > 0.f ? 1.f / l_run : 0.f;
    const int64_t row = bh * Nq + sg.qo + q0 + r;
    for (int c = c_lo; c < c_hi && c < d; ++c) out[row * d + c] = static_cast<scalar_t>(sO[r * L.ldo + c] * inv);
    if (half == 0) lse[row] = l_run > 0.f ? m_run + imtok_log(l_run) : -INFINITY;
  }
#endif
}

// Column sums of the probabilities over queries [start, end): one block per (segment, head, 64 keys); query
// tiles of 64 in increasing order; S = Q K^T on tensor cores, then thread t sums column t % 64 over half of
// the tile's rows (t / 64), the two halves are added at the end: a fixed order, deterministic.
// smem: sK [64][dp+8] | sQ [64][dp+8] (16-bit) | sS [64][68] | sLse [64] | sPart [64] (fp32)
IMTOK_HD size_t colsum_tc_smem(int d) {
  const int dp = (d + 15) / 16 * 16;
  return size_t(kTcBN + kTcBM) * (dp + 8) * 2 + (size_t(kTcBM) * (kTcBN + 4) + kTcBM + kTcBN) * 4;
}

template <typename scalar_t>
__global__ void __launch_bounds__(kTcThreads)
    attn_colsum_tc_kernel(const scalar_t* __restrict__ q, const scalar_t* __restrict__ k,
                          const float* __restrict__ add, const int64_t* __restrict__ segs, int64_t H, int64_t Nq,
                          int64_t Nk, int d, float scale, bool causal, const float* __restrict__ lse, int64_t start,
                          int64_t end, float* __restrict__ col) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
#else
  namespace wm = imtok_wmma;
  using mt = typename mma_element<scalar_t>::type;
  const int64_t seg = blockIdx.x / H, h = blockIdx.x % H;
  const SegInfo sg = load_seg(segs, seg);
  const int64_t k0 = static_cast<int64_t>(blockIdx.y) * kTcBN;
  if (k0 >= sg.nk) return;
  const int64_t n = imtok_min<int64_t>(kTcBN, sg.nk - k0);
  const int64_t bh = sg.b * H + h;
  const int dp = (d + 15) / 16 * 16, ldh = dp + 8, lds = kTcBN + 4;
  IMTOK_DYNAMIC_SHARED(unsigned char, smem);
  auto sK = smem_region<mt>(smem, 0);
  auto sQ = smem_region<mt>(smem, size_t(kTcBN) * ldh * 2);
  auto sS = smem_region<float>(smem, size_t(kTcBN + kTcBM) * ldh * 2);
  auto sLse = sS + kTcBM * lds;
  auto sPart = sLse + kTcBM;
  const int tid = threadIdx.x, warp = tid / 32;
  const scalar_t* Kb = k + (bh * Nk + sg.ko + k0) * d;
  for (int e = tid; e < kTcBN * dp; e += kTcThreads) {
    const int j = e / dp, c = e % dp;
    const float x = j < n && c < d ? static_cast<float>(Kb[static_cast<int64_t>(j) * d + c]) : 0.f;
    sK[j * ldh + c] = mma_element<scalar_t>::from_float(x);
  }
  int64_t hi = end < 0 ? sg.nq : imtok_min<int64_t>(end, sg.nq);
  int64_t lo = imtok_min<int64_t>(start, hi);
  if (causal) lo = imtok_max<int64_t>(lo, k0 - (sg.nk - sg.nq));
  const int j = tid % kTcBN, rh = tid / kTcBN;  // this thread's key column and half of the query rows
  const float addj = add && j < n ? add[sg.b * Nk + sg.ko + k0 + j] : 0.f;
  float acc = 0.f;
  for (int64_t i0 = lo; i0 < hi; i0 += kTcBM) {
    const int64_t M = imtok_min<int64_t>(kTcBM, hi - i0);
    __syncthreads();  // K staged / the previous tile's S and lse consumed
    const scalar_t* Qb = q + (bh * Nq + sg.qo + i0) * d;
    for (int e = tid; e < kTcBM * dp; e += kTcThreads) {
      const int r = e / dp, c = e % dp;
      const float x = r < M && c < d ? static_cast<float>(Qb[static_cast<int64_t>(r) * d + c]) : 0.f;
      sQ[r * ldh + c] = mma_element<scalar_t>::from_float(x);
    }
    if (tid < kTcBM) sLse[tid] = tid < M ? lse[bh * Nq + sg.qo + i0 + tid] : -INFINITY;
    __syncthreads();
    {
      wm::fragment<wm::accumulator, 16, 16, 16, float> s_acc[kTcBN / 16];
      for (int nt = 0; nt < kTcBN / 16; ++nt) wm::fill_fragment(s_acc[nt], 0.f);
      for (int kk = 0; kk < dp / 16; ++kk) {
        wm::fragment<wm::matrix_a, 16, 16, 16, mt, wm::row_major> a;
        wm::load_matrix_sync(a, sQ + (warp * 16) * ldh + kk * 16, ldh);
        for (int nt = 0; nt < kTcBN / 16; ++nt) {
          wm::fragment<wm::matrix_b, 16, 16, 16, mt, wm::col_major> b;
          wm::load_matrix_sync(b, sK + (nt * 16) * ldh + kk * 16, ldh);
          wm::mma_sync(s_acc[nt], a, b, s_acc[nt]);
        }
      }
      for (int nt = 0; nt < kTcBN / 16; ++nt)
        wm::store_matrix_sync(sS + (warp * 16) * lds + nt * 16, s_acc[nt], lds, wm::mem_row_major);
    }
    __syncthreads();  // a column sum reads the rows of every warp
    for (int rr = 0; rr < kTcBM / 2; ++rr) {
      const int r = rh * (kTcBM / 2) + rr;
      const float l = sLse[r];
      if (r < M && j < n && l != -INFINITY && k0 + j < visible(causal, i0 + r, sg.nq, sg.nk))
        acc += imtok_exp(sS[r * lds + j] * scale + addj - l);  // exp(-inf) = 0 for a masked key
    }
  }
  if (rh == 1) sPart[j] = acc;
  __syncthreads();
  if (rh == 0 && j < n) col[bh * Nk + sg.ko + k0 + j] = acc + sPart[j];
#endif
}

}  // namespace attention
}  // namespace IMTOK_DEVICE_NS
}  // namespace imtok
