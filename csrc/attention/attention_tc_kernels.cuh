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

// ---- warp-level tile products (each warp works on its own 16 rows) ---------------------------------------
// C [16 x 64] (fp32, row-major, ldc) = A [16 x dp] B^T, with A and B [64 x dp] row-major 16-bit tiles:
// S = Q K^T and dP = dO V^T.
template <typename mt, typename PtrA, typename PtrB, typename PtrC>
__device__ __forceinline__ void warp_gemm_abt(PtrA a, int lda, PtrB b, int ldb, int dp, PtrC c, int ldc) {
  namespace wm = imtok_wmma;
  wm::fragment<wm::accumulator, 16, 16, 16, float> acc[kTcBN / 16];
  for (int nt = 0; nt < kTcBN / 16; ++nt) wm::fill_fragment(acc[nt], 0.f);
  for (int kk = 0; kk < dp / 16; ++kk) {  // each fragment of A is loaded once
    wm::fragment<wm::matrix_a, 16, 16, 16, mt, wm::row_major> fa;
    wm::load_matrix_sync(fa, a + kk * 16, lda);
    for (int nt = 0; nt < kTcBN / 16; ++nt) {
      wm::fragment<wm::matrix_b, 16, 16, 16, mt, wm::col_major> fb;  // column n of B^T is row n of B
      wm::load_matrix_sync(fb, b + (nt * 16) * ldb + kk * 16, ldb);
      wm::mma_sync(acc[nt], fa, fb, acc[nt]);
    }
  }
  for (int nt = 0; nt < kTcBN / 16; ++nt) wm::store_matrix_sync(c + nt * 16, acc[nt], ldc, wm::mem_row_major);
}

// C [16 x dp] (fp32 in shared memory, row-major, ldc) += A [16 x 64] B, B [64 x dp] row-major 16-bit; A is
// row-major (P, dS: O += P V, dQ += dS K) or col-major (P^T, dS^T read from [query][key] tiles: dV += P^T dO,
// dK += dS^T Q). C goes through the accumulator fragments and back (its row scaling happens in shared memory).
template <typename mt, typename LayoutA, typename PtrA, typename PtrB, typename PtrC>
__device__ __forceinline__ void warp_gemm_acc(PtrA a, int lda, PtrB b, int ldb, int dp, PtrC c, int ldc) {
  namespace wm = imtok_wmma;
  constexpr bool a_rows = std::is_same<LayoutA, wm::row_major>::value;
  for (int ct = 0; ct < dp / 16; ++ct) {
    wm::fragment<wm::accumulator, 16, 16, 16, float> acc;
    wm::load_matrix_sync(acc, c + ct * 16, ldc, wm::mem_row_major);
    for (int kk = 0; kk < kTcBN / 16; ++kk) {
      wm::fragment<wm::matrix_a, 16, 16, 16, mt, LayoutA> fa;
      wm::fragment<wm::matrix_b, 16, 16, 16, mt, wm::row_major> fb;
      wm::load_matrix_sync(fa, a_rows ? a + kk * 16 : a + (kk * 16) * lda, lda);
      wm::load_matrix_sync(fb, b + (kk * 16) * ldb + ct * 16, ldb);
      wm::mma_sync(acc, fa, fb, acc);
    }
    wm::store_matrix_sync(c + ct * 16, acc, ldc, wm::mem_row_major);
  }
}

// rows [0, rows) x columns [0, dp) of a [*, d] matrix into a 16-bit tile with leading dimension ld, zero padded
template <typename scalar_t, typename SmemT>
__device__ __forceinline__ void stage_tile(SmemT sm, const scalar_t* __restrict__ src, int64_t rows, int tile_rows,
                                           int d, int dp, int ld) {
  for (int e = threadIdx.x; e < tile_rows * dp; e += blockDim.x) {
    const int r = e / dp, c = e % dp;
    const float x = r < rows && c < d ? static_cast<float>(src[static_cast<int64_t>(r) * d + c]) : 0.f;
    sm[r * ld + c] = mma_element<scalar_t>::from_float(x);
  }
}

template <typename scalar_t>
__global__ void __launch_bounds__(kTcThreads)
    attn_fwd_tc_kernel(const scalar_t* __restrict__ q, const scalar_t* __restrict__ k,
                       const scalar_t* __restrict__ v, const float* __restrict__ add, const int64_t* __restrict__ segs,
                       int64_t H, int64_t Nq, int64_t Nk, int d, float scale, CausalMask causal,
                       scalar_t* __restrict__ out, float* __restrict__ lse) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
  __trap();  // bf16 tiles need sm_80; the launcher checks the kernel was built for it (tc_kernel_usable)
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

  stage_tile<scalar_t>(sQ, Qb, M, kTcBM, d, L.dp, L.ldh);  // zero past M rows and d columns
  for (int e = tid; e < kTcBM * L.dp; e += kTcThreads) sO[(e / L.dp) * L.ldo + e % L.dp] = 0.f;
  __syncthreads();  // also when no key tile follows: the rows are read out below by other threads

  // the softmax row of this lane pair, and the half of its keys (and of its output columns) this lane takes
  const int r = warp * 16 + lane / 2, half = lane % 2;
  const int64_t vis = r < M ? causal.visible(q0 + r, sg.nq, sg.nk) : 0;
  const int c_lo = half * (L.dp / 2), c_hi = c_lo + L.dp / 2;
  float m_run = -INFINITY, l_run = 0.f;

  const int64_t kend = causal.visible(q0 + M - 1, sg.nq, sg.nk);
  for (int64_t k0 = 0; k0 < kend; k0 += kTcBN) {
    const int64_t n = imtok_min<int64_t>(kTcBN, kend - k0);
    if (k0 > 0) __syncthreads();  // the previous K / V tiles are consumed
    stage_tile<scalar_t>(sK, Kb + k0 * d, n, kTcBN, d, L.dp, L.ldh);
    stage_tile<scalar_t>(sV, Vb + k0 * d, n, kTcBN, d, L.dp, L.ldh);
    __syncthreads();
    warp_gemm_abt<mt>(sQ + (warp * 16) * L.ldh, L.ldh, sK, L.ldh, L.dp, sS + (warp * 16) * L.lds, L.lds);  // S
    __syncwarp(0xffffffffu);

    // online softmax of row r over this lane's 32 keys, combined with the partner lane
    float tmax = -INFINITY;
    for (int jj = 0; jj < kTcBN / 2; ++jj) {
      const int j = half * (kTcBN / 2) + jj;
      if (j < n && k0 + j < vis && !masked_key(addb, k0 + j)) {
        float s = sS[r * L.lds + j] * scale;
        if (addb) s += addb[k0 + j];
        tmax = nan_max(tmax, s);
      }
    }
    tmax = nan_max(tmax, __shfl_xor_sync(0xffffffffu, tmax, 1));
    const float mnew = poison_inf(nan_max(m_run, tmax));  // NaN: a poisoned row (out and lse NaN)
    float rowsum = 0.f;
    for (int jj = 0; jj < kTcBN / 2; ++jj) {
      const int j = half * (kTcBN / 2) + jj;
      float p = 0.f;
      if (mnew != -INFINITY && j < n && k0 + j < vis && !masked_key(addb, k0 + j)) {
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

    warp_gemm_acc<mt, wm::row_major>(sP + (warp * 16) * L.ldp, L.ldp, sV, L.ldh, L.dp, sO + (warp * 16) * L.ldo,
                                     L.ldo);  // O += P V
    __syncwarp(0xffffffffu);
  }

  if (r < M) {
    const bool none = l_run == 0.f, poisoned = l_run != l_run;
    const float inv = none ? 0.f : 1.f / l_run;
    const int64_t row = bh * Nq + sg.qo + q0 + r;
    for (int c = c_lo; c < c_hi && c < d; ++c)
      out[row * d + c] = static_cast<scalar_t>(poisoned ? NAN : sO[r * L.ldo + c] * inv);
    if (half == 0) lse[row] = none ? -INFINITY : (poisoned ? NAN : m_run + imtok_log(l_run));
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
                          int64_t Nk, int d, float scale, CausalMask causal, const float* __restrict__ lse,
                          int64_t start, int64_t end, float* __restrict__ col) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
  __trap();
#else
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
  stage_tile<scalar_t>(sK, Kb, n, kTcBN, d, dp, ldh);
  int64_t hi = end < 0 ? sg.nq : imtok_min<int64_t>(end, sg.nq);
  int64_t lo = imtok_min<int64_t>(start, hi);
  lo = imtok_max<int64_t>(lo, causal.first_query(k0, sg.nq, sg.nk));
  const int j = tid % kTcBN, rh = tid / kTcBN;  // this thread's key column and half of the query rows
  const float addj = add && j < n ? add[sg.b * Nk + sg.ko + k0 + j] : 0.f;
  float acc = 0.f;
  for (int64_t i0 = lo; i0 < hi; i0 += kTcBM) {
    const int64_t M = imtok_min<int64_t>(kTcBM, hi - i0);
    __syncthreads();  // K staged / the previous tile's S and lse consumed
    stage_tile<scalar_t>(sQ, q + (bh * Nq + sg.qo + i0) * d, M, kTcBM, d, dp, ldh);
    if (tid < kTcBM) sLse[tid] = tid < M ? lse[bh * Nq + sg.qo + i0 + tid] : -INFINITY;
    __syncthreads();
    warp_gemm_abt<mt>(sQ + (warp * 16) * ldh, ldh, sK, ldh, dp, sS + (warp * 16) * lds, lds);
    __syncthreads();  // a column sum reads the rows of every warp
    for (int rr = 0; rr < kTcBM / 2; ++rr) {
      const int r = rh * (kTcBM / 2) + rr;
      const float l = sLse[r];
      if (r < M && j < n && l != -INFINITY && k0 + j < causal.visible(i0 + r, sg.nq, sg.nk) &&
          addj != -INFINITY)  // a masked key is never read
        acc += imtok_exp(sS[r * lds + j] * scale + addj - l);  // NaN for a poisoned row (lse NaN)
    }
  }
  if (rh == 1) sPart[j] = acc;
  __syncthreads();
  if (rh == 0 && j < n) col[bh * Nk + sg.ko + k0 + j] = acc + sPart[j];
#endif
}

// ---- backward ---------------------------------------------------------------------------------------------
// attn_bwd_dq_tc_kernel / attn_bwd_dkv_tc_kernel have the contracts of attn_bwd_dq_kernel / attn_bwd_dkv_kernel
// (fp32 dq, dk, dv and per-head dbias; deterministic, no atomics). Per pair of tiles: S = Q K^T and
// dP = dO V^T on tensor cores; p = exp(scale s + add - lse) and dS = p (dP - D) in fp32 on two lanes per
// row; P and dS rounded to the input type (as FlashAttention does) for dQ += dS K (one block per 64 queries)
// or dV += P^T dO and dK += dS^T Q (one block per 64 keys, warp w owning keys 16w..16w+15), accumulated in
// fp32 shared memory; dbias sums the fp32 dS.
// smem: four 16-bit [64][dp+8] tiles | S, dP fp32 [64][68] | dS (and P) 16-bit [64][72] |
//       dQ (or dK, dV) fp32 [64][dp+4] | lse, D [64]
struct TcBwdLayout {
  int dp, ldh, lds, ldp, ldo;
  size_t h16[4], s, dps, p16[2], acc[2], lse, D, bytes;
};
IMTOK_HD TcBwdLayout tc_bwd_layout(int d, bool dkv) {
  TcBwdLayout L;
  L.dp = (d + 15) / 16 * 16;
  L.ldh = L.dp + 8;
  L.lds = kTcBN + 4;
  L.ldp = kTcBN + 8;
  L.ldo = L.dp + 4;
  size_t off = 0;
  for (int i = 0; i < 4; ++i, off += size_t(kTcBM) * L.ldh * 2) L.h16[i] = off;
  L.s = off;
  off += size_t(kTcBM) * L.lds * 4;
  L.dps = off;
  off += size_t(kTcBM) * L.lds * 4;
  for (int i = 0; i < 2; ++i) {
    L.p16[i] = off;
    if (i == 0 || dkv) off += size_t(kTcBM) * L.ldp * 2;
  }
  for (int i = 0; i < 2; ++i) {
    L.acc[i] = off;
    if (i == 0 || dkv) off += size_t(kTcBM) * L.ldo * 4;
  }
  L.lse = off;
  L.D = off + kTcBM * 4;
  L.bytes = L.D + kTcBM * 4;
  return L;
}

// p = exp(scale s + add - lse) and dS = p (dP - D) for this lane's half (32 keys) of row r of the tile (0 for
// keys j >= kvis, not visible, or j >= n); dS goes to sdS rounded for the tensor cores; with kWithP also P to sP
// and the fp32 dS over dP (for dbias). addb points at the tile's first key.
template <bool kWithP, typename scalar_t, typename PtrF, typename PtrH>
__device__ __forceinline__ void row_probs_and_ds(int r, int half, int64_t n, int64_t kvis, const float* addb,
                                                 float scale, float l_r, float D_r, PtrF sS, PtrF sdP, int lds,
                                                 PtrH sP, PtrH sdS, int ldp) {
  for (int jj = 0; jj < kTcBN / 2; ++jj) {
    const int j = half * (kTcBN / 2) + jj;
    float p = 0.f, ds = 0.f;
    if (j < n && j < kvis) {
      float s = sS[r * lds + j] * scale;
      if (addb) s += addb[j];
      p = imtok_exp(s - l_r);
      ds = p * (sdP[r * lds + j] - D_r);
    }
    if (kWithP) {
      sP[r * ldp + j] = mma_element<scalar_t>::from_float(p);
      sdP[r * lds + j] = ds;
    }
    sdS[r * ldp + j] = mma_element<scalar_t>::from_float(ds);
  }
}

template <typename scalar_t>
__global__ void __launch_bounds__(kTcThreads)
    attn_bwd_dq_tc_kernel(const scalar_t* __restrict__ q, const scalar_t* __restrict__ k,
                          const scalar_t* __restrict__ v, const float* __restrict__ add,
                          const int64_t* __restrict__ segs, int64_t H, int64_t Nq, int64_t Nk, int d, float scale,
                          CausalMask causal, const scalar_t* __restrict__ dout, const float* __restrict__ lse,
                          const float* __restrict__ Dv, float* __restrict__ dq) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
  __trap();
#else
  namespace wm = imtok_wmma;
  using mt = typename mma_element<scalar_t>::type;
  const int64_t seg = blockIdx.x / H, h = blockIdx.x % H;
  const SegInfo sg = load_seg(segs, seg);
  const int64_t q0 = static_cast<int64_t>(blockIdx.y) * kTcBM;
  if (q0 >= sg.nq) return;
  const int64_t M = imtok_min<int64_t>(kTcBM, sg.nq - q0);
  const int64_t bh = sg.b * H + h, row0 = bh * Nq + sg.qo + q0;
  const TcBwdLayout L = tc_bwd_layout(d, false);
  IMTOK_DYNAMIC_SHARED(unsigned char, smem);
  auto sQ = smem_region<mt>(smem, L.h16[0]);
  auto sdO = smem_region<mt>(smem, L.h16[1]);
  auto sK = smem_region<mt>(smem, L.h16[2]);
  auto sV = smem_region<mt>(smem, L.h16[3]);
  auto sS = smem_region<float>(smem, L.s);
  auto sdP = smem_region<float>(smem, L.dps);
  auto sdS = smem_region<mt>(smem, L.p16[0]);
  auto sdQ = smem_region<float>(smem, L.acc[0]);
  auto sLse = smem_region<float>(smem, L.lse);
  auto sD = smem_region<float>(smem, L.D);
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  stage_tile<scalar_t>(sQ, q + row0 * d, M, kTcBM, d, L.dp, L.ldh);
  stage_tile<scalar_t>(sdO, dout + row0 * d, M, kTcBM, d, L.dp, L.ldh);
  for (int e = tid; e < kTcBM * L.dp; e += kTcThreads) sdQ[(e / L.dp) * L.ldo + e % L.dp] = 0.f;
  if (tid < kTcBM) {
    sLse[tid] = tid < M ? lse[row0 + tid] : -INFINITY;
    sD[tid] = tid < M ? Dv[row0 + tid] : 0.f;
  }
  __syncthreads();
  const scalar_t* Kb = k + (bh * Nk + sg.ko) * d;
  const scalar_t* Vb = v + (bh * Nk + sg.ko) * d;
  const float* addb = add ? add + sg.b * Nk + sg.ko : nullptr;
  const int r = warp * 16 + lane / 2, half = lane % 2;  // this lane pair's row, this lane's half of it
  const float l_r = sLse[r], D_r = sD[r];
  const int64_t vis = r < M && l_r != -INFINITY ? causal.visible(q0 + r, sg.nq, sg.nk) : 0;
  const int64_t kend = causal.visible(q0 + M - 1, sg.nq, sg.nk);
  for (int64_t k0 = 0; k0 < kend; k0 += kTcBN) {
    const int64_t n = imtok_min<int64_t>(kTcBN, kend - k0);
    if (k0 > 0) __syncthreads();  // the previous K / V tiles are consumed
    stage_tile<scalar_t>(sK, Kb + k0 * d, n, kTcBN, d, L.dp, L.ldh);
    stage_tile<scalar_t>(sV, Vb + k0 * d, n, kTcBN, d, L.dp, L.ldh);
    __syncthreads();
    warp_gemm_abt<mt>(sQ + (warp * 16) * L.ldh, L.ldh, sK, L.ldh, L.dp, sS + (warp * 16) * L.lds, L.lds);
    warp_gemm_abt<mt>(sdO + (warp * 16) * L.ldh, L.ldh, sV, L.ldh, L.dp, sdP + (warp * 16) * L.lds, L.lds);
    __syncwarp(0xffffffffu);
    row_probs_and_ds<false, scalar_t>(r, half, n, vis - k0, addb ? addb + k0 : nullptr, scale, l_r, D_r, sS, sdP,
                                      L.lds, sdS, sdS, L.ldp);
    __syncwarp(0xffffffffu);
    warp_gemm_acc<mt, wm::row_major>(sdS + (warp * 16) * L.ldp, L.ldp, sK, L.ldh, L.dp, sdQ + (warp * 16) * L.ldo,
                                     L.ldo);  // dQ += dS K
    __syncwarp(0xffffffffu);
  }
  if (r < M)
    for (int c = half * (L.dp / 2); c < (half + 1) * (L.dp / 2) && c < d; ++c)
      dq[(row0 + r) * d + c] = sdQ[r * L.ldo + c] * scale;
#endif
}

template <typename scalar_t>
__global__ void __launch_bounds__(kTcThreads)
    attn_bwd_dkv_tc_kernel(const scalar_t* __restrict__ q, const scalar_t* __restrict__ k,
                           const scalar_t* __restrict__ v, const float* __restrict__ add,
                           const int64_t* __restrict__ segs, int64_t H, int64_t Nq, int64_t Nk, int d, float scale,
                           CausalMask causal, const scalar_t* __restrict__ dout, const float* __restrict__ lse,
                           const float* __restrict__ Dv, float* __restrict__ dk, float* __restrict__ dv,
                           float* __restrict__ dbh) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
  __trap();
#else
  namespace wm = imtok_wmma;
  using mt = typename mma_element<scalar_t>::type;
  const int64_t seg = blockIdx.x / H, h = blockIdx.x % H;
  const SegInfo sg = load_seg(segs, seg);
  const int64_t k0 = static_cast<int64_t>(blockIdx.y) * kTcBN;
  if (k0 >= sg.nk) return;
  const int64_t n = imtok_min<int64_t>(kTcBN, sg.nk - k0);
  const int64_t bh = sg.b * H + h, key0 = bh * Nk + sg.ko + k0;
  const TcBwdLayout L = tc_bwd_layout(d, true);
  IMTOK_DYNAMIC_SHARED(unsigned char, smem);
  auto sK = smem_region<mt>(smem, L.h16[0]);
  auto sV = smem_region<mt>(smem, L.h16[1]);
  auto sQ = smem_region<mt>(smem, L.h16[2]);
  auto sdO = smem_region<mt>(smem, L.h16[3]);
  auto sS = smem_region<float>(smem, L.s);
  auto sdP = smem_region<float>(smem, L.dps);  // dP, then dS in fp32 (for dbias)
  auto sP = smem_region<mt>(smem, L.p16[0]);
  auto sdS = smem_region<mt>(smem, L.p16[1]);
  auto sdK = smem_region<float>(smem, L.acc[0]);
  auto sdV = smem_region<float>(smem, L.acc[1]);
  auto sLse = smem_region<float>(smem, L.lse);
  auto sD = smem_region<float>(smem, L.D);
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  stage_tile<scalar_t>(sK, k + key0 * d, n, kTcBN, d, L.dp, L.ldh);
  stage_tile<scalar_t>(sV, v + key0 * d, n, kTcBN, d, L.dp, L.ldh);
  for (int e = tid; e < kTcBN * L.dp; e += kTcThreads) {
    sdK[(e / L.dp) * L.ldo + e % L.dp] = 0.f;
    sdV[(e / L.dp) * L.ldo + e % L.dp] = 0.f;
  }
  const float* addb = add ? add + sg.b * Nk + sg.ko + k0 : nullptr;
  const int r = warp * 16 + lane / 2, half = lane % 2;  // softmax row (query) of this lane pair
  const int jc = tid % kTcBN, rh = tid / kTcBN;          // dbias: this thread's key and half of the rows
  float gb = 0.f;
  const int64_t lo = causal.first_query(k0, sg.nq, sg.nk);
  for (int64_t i0 = lo; i0 < sg.nq; i0 += kTcBM) {
    const int64_t M = imtok_min<int64_t>(kTcBM, sg.nq - i0);
    const int64_t row0 = bh * Nq + sg.qo + i0;
    __syncthreads();  // K, V staged and dK, dV zeroed / the previous query tile consumed
    stage_tile<scalar_t>(sQ, q + row0 * d, M, kTcBM, d, L.dp, L.ldh);
    stage_tile<scalar_t>(sdO, dout + row0 * d, M, kTcBM, d, L.dp, L.ldh);
    if (tid < kTcBM) {
      sLse[tid] = tid < M ? lse[row0 + tid] : -INFINITY;
      sD[tid] = tid < M ? Dv[row0 + tid] : 0.f;
    }
    __syncthreads();
    warp_gemm_abt<mt>(sQ + (warp * 16) * L.ldh, L.ldh, sK, L.ldh, L.dp, sS + (warp * 16) * L.lds, L.lds);
    warp_gemm_abt<mt>(sdO + (warp * 16) * L.ldh, L.ldh, sV, L.ldh, L.dp, sdP + (warp * 16) * L.lds, L.lds);
    __syncwarp(0xffffffffu);
    const float l_r = sLse[r], D_r = sD[r];
    const int64_t vis = r < M && l_r != -INFINITY ? causal.visible(i0 + r, sg.nq, sg.nk) : 0;
    row_probs_and_ds<true, scalar_t>(r, half, n, vis - k0, addb, scale, l_r, D_r, sS, sdP, L.lds, sP, sdS, L.ldp);
    __syncthreads();  // every warp reads the P / dS rows of all warps
    warp_gemm_acc<mt, wm::col_major>(sP + warp * 16, L.ldp, sdO, L.ldh, L.dp, sdV + (warp * 16) * L.ldo,
                                     L.ldo);  // dV += P^T dO
    warp_gemm_acc<mt, wm::col_major>(sdS + warp * 16, L.ldp, sQ, L.ldh, L.dp, sdK + (warp * 16) * L.ldo,
                                     L.ldo);  // dK += dS^T Q
    for (int rr = 0; rr < kTcBM / 2; ++rr) gb += sdP[(rh * (kTcBM / 2) + rr) * L.lds + jc];
  }
  __syncthreads();  // dK / dV complete; sD is free for the dbias halves
  if (rh == 1) sD[jc] = gb;
  __syncthreads();
  if (rh == 0 && jc < n && dbh) dbh[key0 + jc] = gb + sD[jc];
  if (r < n)
    for (int c = half * (L.dp / 2); c < (half + 1) * (L.dp / 2) && c < d; ++c) {
      dk[(key0 + r) * d + c] = sdK[r * L.ldo + c] * scale;
      dv[(key0 + r) * d + c] = sdV[r * L.ldo + c];
    }
#endif
}

}  // namespace attention
}  // namespace IMTOK_DEVICE_NS
}  // namespace imtok
