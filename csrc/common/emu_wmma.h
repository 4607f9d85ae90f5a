// nvcuda::wmma (warp-level matrix multiply-accumulate, the tensor-core API) on the CPU shim, so the tensor-core
// kernels run in CI like every other kernel. Only 16 x 16 x 16 tiles (fp16 / bf16 inputs, fp32 accumulator).
//
// The register layout of a fragment is unspecified by CUDA, and kernels may only touch fragment.x[i]
// uniformly (the same operation on every element); this shim picks its own layout (lane l holds elements
// l, l + 32, ... of the tile in row-major order), so a kernel that depends on the real layout gives wrong
// results here. Every operation is warp-collective: all 32 lanes must reach the same call site (checked like
// __syncwarp, but it orders no memory: a lane reading what another lane stored still needs __syncwarp or
// __syncthreads in between, and the race detector sees each lane's own loads and stores). Pointers must be
// 32-byte aligned and ldm a multiple of 16 bytes, as on the GPU. mma_sync accumulates each dot product in
// fp32 in index order (a tensor core rounds differently; tests compare with a tolerance).
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstdint>
#include <string>
#include <type_traits>

namespace imtok_emu {

// half-precision elements of shared memory are race-checked like the arithmetic types
template <>
struct is_tracked<c10::Half> : std::true_type {};
template <>
struct is_tracked<c10::BFloat16> : std::true_type {};

namespace wmma {

struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };

template <typename Use, int M, int N, int K, typename T, typename Layout = void>
struct fragment {
  static_assert(M == 16 && N == 16 && K == 16, "the emulated wmma supports 16 x 16 x 16 tiles only");
  static_assert(std::is_same<Use, accumulator>::value ? std::is_same<T, float>::value
                                                      : (std::is_same<T, c10::Half>::value ||
                                                         std::is_same<T, c10::BFloat16>::value),
                "emulated wmma: fp16/bf16 matrix_a/matrix_b and fp32 accumulators only");
  static_assert(std::is_same<Use, accumulator>::value || std::is_same<Layout, row_major>::value ||
                    std::is_same<Layout, col_major>::value,
                "matrix_a / matrix_b fragments need a row_major or col_major layout");
  using element_type = T;
  using layout = Layout;
  static constexpr int rows = 16, cols = 16;
  static constexpr int num_elements = rows * cols / 32;
  T x[num_elements];
};

namespace detail {

inline void converge(const char* what, const char* file, int line) {
  check_mask(0xFFFFFFFFu, what);
  my_warp().barrier.wait(what, file, line);  // all lanes at this call site; no memory ordering implied
}

template <typename T>
void check_pointer(const T* p, unsigned ldm, const char* what) {
  if (reinterpret_cast<uintptr_t>(p) % 32 != 0)
    fail(std::string(what) + ": pointer not 32-byte aligned");
  if ((ldm * sizeof(T)) % 16 != 0)
    fail(std::string(what) + ": ldm = " + std::to_string(ldm) + " elements is not a multiple of 16 bytes");
}
template <typename T>
void check_pointer(const SharedSpan<T>& p, unsigned ldm, const char* what) {
  if ((reinterpret_cast<unsigned char*>(p.ptr) - p.base) % 32 != 0)
    fail(std::string(what) + ": shared-memory pointer not 32-byte aligned");
  if ((ldm * sizeof(T)) % 16 != 0)
    fail(std::string(what) + ": ldm = " + std::to_string(ldm) + " elements is not a multiple of 16 bytes");
}

template <typename T>
T read(const T* p, int64_t i) {
  return p[i];
}
template <typename T>
T read(const SharedSpan<T>& p, int64_t i) {
  return static_cast<T>(p[i]);
}
template <typename T, typename V>
void write(T* p, int64_t i, V v) {
  p[i] = static_cast<T>(v);
}
template <typename T, typename V>
void write(const SharedSpan<T>& p, int64_t i, V v) {
  p[i] = static_cast<T>(v);
}

// element (r, c) of a tile stored with leading dimension ldm
inline int64_t offset(bool row_major_mem, int r, int c, unsigned ldm) {
  return row_major_mem ? int64_t(r) * ldm + c : int64_t(c) * ldm + r;
}

}  // namespace detail

template <typename Use, typename T, typename L, typename V>
void fill_fragment(fragment<Use, 16, 16, 16, T, L>& f, const V& v) {
  for (int i = 0; i < f.num_elements; ++i) f.x[i] = static_cast<T>(v);
}

// matrix_a / matrix_b: the memory layout is the fragment's
template <typename Use, typename T, typename L, typename Ptr>
void load_matrix_sync(fragment<Use, 16, 16, 16, T, L>& f, const Ptr& p, unsigned ldm,
                      const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  static_assert(!std::is_same<Use, accumulator>::value, "accumulator loads need a layout_t");
  detail::converge("wmma::load_matrix_sync", file, line);
  detail::check_pointer(p, ldm, "wmma::load_matrix_sync");
  const bool rm = std::is_same<L, row_major>::value;
  for (int i = 0; i < f.num_elements; ++i) {
    const int e = lane_id() + 32 * i, r = e / 16, c = e % 16;
    f.x[i] = static_cast<T>(detail::read(p, detail::offset(rm, r, c, ldm)));
  }
}

template <typename Ptr>
void load_matrix_sync(fragment<accumulator, 16, 16, 16, float>& f, const Ptr& p, unsigned ldm, layout_t layout,
                      const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  detail::converge("wmma::load_matrix_sync", file, line);
  detail::check_pointer(p, ldm, "wmma::load_matrix_sync");
  for (int i = 0; i < f.num_elements; ++i) {
    const int e = lane_id() + 32 * i, r = e / 16, c = e % 16;
    f.x[i] = static_cast<float>(detail::read(p, detail::offset(layout == mem_row_major, r, c, ldm)));
  }
}

template <typename Ptr>
void store_matrix_sync(const Ptr& p, const fragment<accumulator, 16, 16, 16, float>& f, unsigned ldm,
                       layout_t layout, const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  detail::converge("wmma::store_matrix_sync", file, line);
  detail::check_pointer(p, ldm, "wmma::store_matrix_sync");
  for (int i = 0; i < f.num_elements; ++i) {
    const int e = lane_id() + 32 * i, r = e / 16, c = e % 16;
    detail::write(p, detail::offset(layout == mem_row_major, r, c, ldm), f.x[i]);
  }
}

// d = a b + c for the warp's 16 x 16 tiles (d may be c)
template <typename T, typename LA, typename LB>
void mma_sync(fragment<accumulator, 16, 16, 16, float>& d, const fragment<matrix_a, 16, 16, 16, T, LA>& a,
              const fragment<matrix_b, 16, 16, 16, T, LB>& b, const fragment<accumulator, 16, 16, 16, float>& c,
              const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  Warp& w = my_warp();
  check_mask(0xFFFFFFFFu, "wmma::mma_sync");
  for (int i = 0; i < d.num_elements; ++i) {  // publish this lane's elements (tiles in row-major order)
    const int e = lane_id() + 32 * i;
    w.mma_a[e] = static_cast<float>(a.x[i]);
    w.mma_b[e] = static_cast<float>(b.x[i]);
    w.mma_c[e] = c.x[i];
  }
  w.barrier.wait("wmma::mma_sync", file, line);
  float out[fragment<accumulator, 16, 16, 16, float>::num_elements];
  for (int i = 0; i < d.num_elements; ++i) {
    const int e = lane_id() + 32 * i, r = e / 16, col = e % 16;
    float s = w.mma_c[e];
    for (int k = 0; k < 16; ++k) s += w.mma_a[r * 16 + k] * w.mma_b[k * 16 + col];
    out[i] = s;
  }
  w.barrier.wait("wmma::mma_sync", file, line);  // nobody publishes the next tiles before all have read
  for (int i = 0; i < d.num_elements; ++i) d.x[i] = out[i];
}

}  // namespace wmma
}  // namespace imtok_emu
