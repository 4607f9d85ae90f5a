// Small GEMMs on raw pointers for CPU kernels that split the work themselves (at::parallel_for over tiles or
// row blocks): the Fortran sgemm_ / dgemm_ of the BLAS libtorch links (MKL / OpenBLAS), run on the calling
// thread (SingleThreadBlas). Column-major, with the conventions of BLAS.
#pragma once

#include <cstdint>

namespace imtok {
namespace cpu_blas {

enum class TransposeType { NoTranspose, Transpose };

// The BLAS that libtorch links (MKL / OpenBLAS export the Fortran sgemm_/dgemm_). Weak references: when a
// build of torch does not export them, the portable loop below is used instead (slower, same results up to
// rounding).
extern "C" {
void sgemm_(const char*, const char*, const int*, const int*, const int*, const float*, const float*, const int*,
            const float*, const int*, const float*, float*, const int*) __attribute__((weak));
void dgemm_(const char*, const char*, const int*, const int*, const int*, const double*, const double*,
            const int*, const double*, const int*, const double*, double*, const int*) __attribute__((weak));
int MKL_Set_Num_Threads_Local(int) __attribute__((weak));
}

// Inside at::parallel_for every tile GEMM must run on the calling thread: MKL would otherwise start its own
// threads per call (oversubscription, 10-100x slower). Scoped per parallel chunk.
struct SingleThreadBlas {
  int prev = 0;
  bool set = false;
  SingleThreadBlas() {
    if (MKL_Set_Num_Threads_Local) {
      prev = MKL_Set_Num_Threads_Local(1);
      set = true;
    }
  }
  ~SingleThreadBlas() {
    if (set) MKL_Set_Num_Threads_Local(prev);
  }
};

template <typename T>
void gemm_loop(TransposeType ta, TransposeType tb, int64_t m, int64_t n, int64_t k, T alpha, const T* a,
               int64_t lda, const T* b, int64_t ldb, T beta, T* c, int64_t ldc) {
  for (int64_t j = 0; j < n; ++j)
    for (int64_t i = 0; i < m; ++i) {
      T acc = 0;
      for (int64_t l = 0; l < k; ++l) {
        const T x = ta == TransposeType::NoTranspose ? a[l * lda + i] : a[i * lda + l];
        const T y = tb == TransposeType::NoTranspose ? b[j * ldb + l] : b[l * ldb + j];
        acc += x * y;
      }
      c[j * ldc + i] = alpha * acc + (beta == T(0) ? T(0) : beta * c[j * ldc + i]);
    }
}

inline void blas(TransposeType ta, TransposeType tb, int64_t m, int64_t n, int64_t k, float alpha, const float* a,
                 int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  if (!sgemm_) return gemm_loop<float>(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
  const char A = ta == TransposeType::NoTranspose ? 'N' : 'T', B = tb == TransposeType::NoTranspose ? 'N' : 'T';
  const int M = int(m), N = int(n), K = int(k), LA = int(lda), LB = int(ldb), LC = int(ldc);
  sgemm_(&A, &B, &M, &N, &K, &alpha, a, &LA, b, &LB, &beta, c, &LC);
}
inline void blas(TransposeType ta, TransposeType tb, int64_t m, int64_t n, int64_t k, double alpha,
                 const double* a, int64_t lda, const double* b, int64_t ldb, double beta, double* c, int64_t ldc) {
  if (!dgemm_) return gemm_loop<double>(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
  const char A = ta == TransposeType::NoTranspose ? 'N' : 'T', B = tb == TransposeType::NoTranspose ? 'N' : 'T';
  const int M = int(m), N = int(n), K = int(k), LA = int(lda), LB = int(ldb), LC = int(ldc);
  dgemm_(&A, &B, &M, &N, &K, &alpha, a, &LA, b, &LB, &beta, c, &LC);
}

// C[m x n] (col-major) = alpha op(A) op(B) + beta C, with the conventions of BLAS (tiles: m, n, k < 2^31).
template <typename T>
inline void gemm(TransposeType ta, TransposeType tb, int64_t m, int64_t n, int64_t k, T alpha, const T* a,
                 int64_t lda, const T* b, int64_t ldb, T beta, T* c, int64_t ldc) {
  if (m <= 0 || n <= 0) return;
  if (k <= 0) {  // C = beta C
    for (int64_t j = 0; j < n; ++j)
      for (int64_t i = 0; i < m; ++i) c[j * ldc + i] = beta == T(0) ? T(0) : beta * c[j * ldc + i];
    return;
  }
  blas(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}
constexpr TransposeType NT = TransposeType::NoTranspose;
constexpr TransposeType TT = TransposeType::Transpose;

}  // namespace cpu_blas
}  // namespace imtok
