// The CUDA execution model on CPU threads, so CI (no GPU) runs every CUDA kernel of imtok_cuda.
//
// A launch creates one OS thread per CUDA thread of a block; blocks run one after another, each thread
// seeing its own threadIdx/blockIdx. __syncthreads is a real barrier, warps are groups of 32 consecutive
// threads with their own barrier for shuffles/ballots/__syncwarp, atomics are real atomics. Shared memory
// goes through IMTOK_SHARED_ARRAY / IMTOK_DYNAMIC_SHARED and is bounds-checked; dynamic shared memory is
// poisoned at block start. Errors the shim detects abort the launch and surface as a RuntimeError from the
// op: out-of-bounds shared memory, a thread exiting while others wait at a barrier, threads at different
// __syncthreads sites, partial warp masks, and data races on shared memory. Anything the shim does not
// implement fails to compile.
//
// Race detection is deterministic (it does not depend on how the OS schedules the threads): every shared
// element of an arithmetic type remembers its last writer and readers with the barrier interval they
// accessed it in; two accesses by different threads, at least one a write, in the same interval (no
// __syncthreads between them, and no warp synchronization when both threads are in one warp) are a race.
// ThreadSanitizer also works: build with CFLAGS=-fsanitize=thread LDFLAGS=-fsanitize=thread
// IMTOK_EMULATE_CUDA=1 and run the tests with LD_PRELOAD=$(gcc -print-file-name=libtsan.so).
#pragma once

#include <atomic>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

#include <c10/util/Exception.h>

struct dim3 {
  unsigned int x, y, z;
  constexpr dim3(unsigned int x_ = 1, unsigned int y_ = 1, unsigned int z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct uint3 {
  unsigned int x, y, z;
};

inline thread_local uint3 threadIdx{0, 0, 0};
inline thread_local uint3 blockIdx{0, 0, 0};
inline thread_local dim3 blockDim{1, 1, 1};
inline thread_local dim3 gridDim{1, 1, 1};
constexpr int warpSize = 32;

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __align__(n) alignas(n)

namespace imtok_emu {

struct EmuAbort {};  // thrown in worker threads to unwind after an error was recorded

// Per-element record of the last write and the reads since, for the race detector. Epochs: the block epoch
// is (block serial << 32) + number of __syncthreads passed in the block; the warp epoch counts warp
// synchronizations (shuffles, ballots, __syncwarp) passed. Thread ids are stored +1 (0 = none).
struct Shadow {
  int32_t writer;
  int32_t reader;       // -1: several readers
  int32_t reader_warp;  // warp of the readers, -1 when they span warps
  uint64_t w_block, w_warp, r_block, r_warp;
};
inline thread_local uint64_t tl_block_epoch = 0;
inline thread_local uint64_t tl_warp_epoch = 0;

class LaunchState;
LaunchState*& current_launch();

// A barrier that knows who has exited: waiting while a peer has left the block (or leaving while peers
// wait) is barrier divergence, which deadlocks or misbehaves on a GPU.
class Barrier {
 public:
  void reset(int expected) {
    std::lock_guard<std::mutex> lk(m_);
    expected_ = expected;
    arrived_ = 0;
    exited_ = 0;
    site_ = nullptr;
    line_ = 0;
  }
  void wait(const char* what, const char* file, int line);
  void thread_exit(const char* what);
  void wake_all() {
    std::lock_guard<std::mutex> lk(m_);
    cv_.notify_all();
  }

 private:
  std::mutex m_;
  std::condition_variable cv_;
  int expected_ = 0;
  int arrived_ = 0;
  int exited_ = 0;
  uint64_t generation_ = 0;
  const char* site_ = nullptr;
  int line_ = 0;
};

struct Warp {
  Barrier barrier;
  uint64_t slots[32];
  int active = 32;
  float mma_a[256], mma_b[256], mma_c[256];  // the warp's tiles during an emulated wmma::mma_sync
};

class LaunchState {
 public:
  LaunchState(const char* name, dim3 grid, dim3 block, size_t smem)
      : name_(name), grid_(grid), block_(block), smem_bytes_(smem) {
    nthreads_ = static_cast<int>(block.x * block.y * block.z);
    nwarps_ = (nthreads_ + 31) / 32;
    warps_.reset(new Warp[nwarps_]);
    for (int w = 0; w < nwarps_; ++w) {
      warps_[w].active = std::min(32, nthreads_ - 32 * w);
      warps_[w].barrier.reset(warps_[w].active);
    }
    block_barrier_.reset(nthreads_);
    dynamic_smem_.resize(smem ? smem : 1);
    dynamic_shadow_.assign(dynamic_smem_.size(), Shadow{});
  }
  void fail(const std::string& msg) {
    {
      std::lock_guard<std::mutex> lk(err_m_);
      if (!aborted_.load()) error_ = std::string("emulated CUDA kernel ") + name_ + ": " + msg;
      aborted_.store(true);
    }
    block_barrier_.wake_all();
    for (int w = 0; w < nwarps_; ++w) warps_[w].barrier.wake_all();
    throw EmuAbort{};
  }
  bool aborted() const { return aborted_.load(); }
  const std::string& error() const { return error_; }
  Barrier& block_barrier() { return block_barrier_; }
  Warp& warp(int w) { return warps_[w]; }
  int nthreads() const { return nthreads_; }
  int nwarps() const { return nwarps_; }
  unsigned char* dynamic_smem() { return dynamic_smem_.data(); }
  size_t smem_bytes() const { return smem_bytes_; }
  Shadow* dynamic_shadow() { return dynamic_shadow_.data(); }
  std::mutex& shadow_mutex() { return shadow_m_; }
  static uint64_t& block_serial() {
    static uint64_t serial = 0;  // grows across launches, so records of earlier blocks never conflict
    return serial;
  }
  void start_block() {  // called by one thread while all others wait
    ++block_serial();
    block_barrier_.reset(nthreads_);
    for (int w = 0; w < nwarps_; ++w) warps_[w].barrier.reset(warps_[w].active);
    std::memset(dynamic_smem_.data(), 0xFF, dynamic_smem_.size());
  }

  const char* name_;
  dim3 grid_, block_;

 private:
  size_t smem_bytes_;
  int nthreads_ = 0, nwarps_ = 0;
  std::unique_ptr<Warp[]> warps_;
  Barrier block_barrier_;
  std::vector<unsigned char> dynamic_smem_;
  std::vector<Shadow> dynamic_shadow_;
  std::mutex shadow_m_;
  std::mutex err_m_;
  std::atomic<bool> aborted_{false};
  std::string error_;
};

inline LaunchState*& current_launch() {
  static LaunchState* launch = nullptr;  // one launch at a time (launch_mutex)
  return launch;
}
inline std::mutex& launch_mutex() {
  static std::mutex m;
  return m;
}
inline thread_local int tl_linear_tid = 0;

[[noreturn]] inline void fail(const std::string& msg) {
  current_launch()->fail(msg);
  throw EmuAbort{};  // unreachable: fail() throws
}

inline void Barrier::wait(const char* what, const char* file, int line) {
  LaunchState* st = current_launch();
  std::unique_lock<std::mutex> lk(m_);
  if (st->aborted()) throw EmuAbort{};
  if (exited_ > 0) {
    lk.unlock();
    fail(std::string(what) + " at " + file + ":" + std::to_string(line) + " reached after " +
         std::to_string(exited_) + " thread(s) of the block/warp exited (barrier divergence)");
  }
  if (arrived_ == 0) {
    site_ = file;
    line_ = line;
  } else if (line_ != line || std::strcmp(site_, file) != 0) {
    std::string msg = std::string("threads wait at different ") + what + " sites: " + site_ + ":" +
                      std::to_string(line_) + " and " + file + ":" + std::to_string(line);
    lk.unlock();
    fail(msg);
  }
  const uint64_t gen = generation_;
  if (++arrived_ == expected_) {
    arrived_ = 0;
    ++generation_;
    cv_.notify_all();
    return;
  }
  cv_.wait(lk, [&] { return generation_ != gen || st->aborted(); });
  if (generation_ == gen) throw EmuAbort{};
}

inline void Barrier::thread_exit(const char* what) {
  std::unique_lock<std::mutex> lk(m_);
  ++exited_;
  if (arrived_ > 0) {
    std::string msg = std::string("a thread exited while ") + std::to_string(arrived_) + " thread(s) wait at " +
                      what + " " + site_ + ":" + std::to_string(line_) + " (barrier divergence)";
    lk.unlock();
    fail(msg);
  }
}

// The end-of-block rendezvous of a launch: every thread, whether it returned early or not.
class Rendezvous {
 public:
  explicit Rendezvous(int n) : n_(n) {}
  void arrive_and_wait(const std::function<void()>& last) {
    std::unique_lock<std::mutex> lk(m_);
    const uint64_t gen = gen_;
    if (++arrived_ == n_) {
      if (last) last();
      arrived_ = 0;
      ++gen_;
      cv_.notify_all();
      return;
    }
    cv_.wait(lk, [&] { return gen_ != gen; });
  }

 private:
  std::mutex m_;
  std::condition_variable cv_;
  int n_, arrived_ = 0;
  uint64_t gen_ = 0;
};

template <typename Kernel, typename... Args>
void launch(const char* name, dim3 grid, dim3 block, size_t smem, Kernel kernel, Args... args) {
  const uint64_t nblocks = uint64_t(grid.x) * grid.y * grid.z;
  if (nblocks == 0) return;
  const uint64_t nthreads = uint64_t(block.x) * block.y * block.z;
  TORCH_CHECK(nthreads >= 1 && nthreads <= 1024 && block.z <= 64,
              "emulated CUDA kernel ", name, ": invalid block size (", block.x, ", ", block.y, ", ", block.z, ")");
  TORCH_CHECK(grid.y <= 65535 && grid.z <= 65535, "emulated CUDA kernel ", name, ": grid.y/z > 65535");
  TORCH_CHECK(smem <= 227 * 1024, "emulated CUDA kernel ", name, ": ", smem, " bytes of dynamic shared memory");
  std::lock_guard<std::mutex> guard(launch_mutex());
  LaunchState state(name, grid, block, smem);
  current_launch() = &state;
  state.start_block();
  Rendezvous end_of_block(static_cast<int>(nthreads));
  std::vector<std::thread> threads;
  threads.reserve(nthreads);
  for (uint64_t t = 0; t < nthreads; ++t) {
    threads.emplace_back([&, t] {
      threadIdx = uint3{unsigned(t % block.x), unsigned((t / block.x) % block.y), unsigned(t / (block.x * block.y))};
      blockDim = block;
      gridDim = grid;
      tl_linear_tid = static_cast<int>(t);
      const int warp = static_cast<int>(t / 32);
      for (uint64_t b = 0; b < nblocks; ++b) {
        blockIdx = uint3{unsigned(b % grid.x), unsigned((b / grid.x) % grid.y), unsigned(b / (uint64_t(grid.x) * grid.y))};
        tl_block_epoch = LaunchState::block_serial() << 32;
        if (!state.aborted()) {
          try {
            kernel(args...);
            state.block_barrier().thread_exit("__syncthreads");
            state.warp(warp).barrier.thread_exit("a warp-synchronous operation");
          } catch (const EmuAbort&) {
          } catch (const std::exception& e) {
            try {
              state.fail(e.what());
            } catch (const EmuAbort&) {
            }
          }
        }
        end_of_block.arrive_and_wait([&] { state.start_block(); });
      }
    });
  }
  for (auto& th : threads) th.join();
  current_launch() = nullptr;
  TORCH_CHECK(!state.aborted(), state.error());
}

// ---- shared memory -------------------------------------------------------------------------------
[[noreturn]] inline void race(const char* kind, int other, int me) {
  fail(std::string("data race on shared memory: ") + kind + " by threads " + std::to_string(other) + " and " +
       std::to_string(me) + " with no __syncthreads (or warp synchronization) between them");
}

// Is an access by thread `tid` (ids +1) at epochs (b, w) ordered before the current thread's access?
inline bool ordered_before(int32_t tid1, uint64_t b, uint64_t w) {
  if (b < tl_block_epoch) return true;
  return ((tid1 - 1) >> 5) == (tl_linear_tid >> 5) && w < tl_warp_epoch;
}

inline void on_read(Shadow* sh) {
  std::lock_guard<std::mutex> lk(current_launch()->shadow_mutex());
  const int32_t me1 = tl_linear_tid + 1;
  if (sh->writer && sh->writer != me1 && !ordered_before(sh->writer, sh->w_block, sh->w_warp))
    race("write then read", sh->writer - 1, tl_linear_tid);
  const int32_t warp = tl_linear_tid >> 5;
  if (sh->reader == 0 || sh->reader == me1 || ordered_before(sh->reader, sh->r_block, sh->r_warp)) {
    sh->reader = me1;
    sh->reader_warp = warp;
  } else {
    sh->reader = -1;
    if (sh->reader_warp != warp) sh->reader_warp = -1;
  }
  sh->r_block = tl_block_epoch;
  sh->r_warp = tl_warp_epoch;
}

inline void on_write(Shadow* sh) {
  std::lock_guard<std::mutex> lk(current_launch()->shadow_mutex());
  const int32_t me1 = tl_linear_tid + 1;
  if (sh->writer && sh->writer != me1 && !ordered_before(sh->writer, sh->w_block, sh->w_warp))
    race("write then write", sh->writer - 1, tl_linear_tid);
  if (sh->reader > 0 && sh->reader != me1 && !ordered_before(sh->reader, sh->r_block, sh->r_warp))
    race("read then write", sh->reader - 1, tl_linear_tid);
  if (sh->reader == -1 && !(sh->r_block < tl_block_epoch ||
                            (sh->reader_warp == (tl_linear_tid >> 5) && sh->r_warp < tl_warp_epoch)))
    race("reads then write", -1, tl_linear_tid);
  *sh = Shadow{me1, 0, 0, tl_block_epoch, tl_warp_epoch, 0, 0};
}

// What `smem[i]` yields for arithmetic element types: reads and writes are recorded for the race detector.
template <typename T>
struct SharedRef {
  T* p;
  Shadow* sh;
  operator T() const {
    on_read(sh);
    return *p;
  }
  const SharedRef& operator=(const T& v) const {
    on_write(sh);
    *p = v;
    return *this;
  }
  const SharedRef& operator=(const SharedRef& o) const { return *this = static_cast<T>(o); }
  template <typename U> const SharedRef& operator+=(const U& v) const { return *this = T(static_cast<T>(*this) + v); }
  template <typename U> const SharedRef& operator-=(const U& v) const { return *this = T(static_cast<T>(*this) - v); }
  template <typename U> const SharedRef& operator*=(const U& v) const { return *this = T(static_cast<T>(*this) * v); }
  template <typename U> const SharedRef& operator/=(const U& v) const { return *this = T(static_cast<T>(*this) / v); }
  template <typename U> const SharedRef& operator|=(const U& v) const { return *this = T(static_cast<T>(*this) | v); }
  template <typename U> const SharedRef& operator&=(const U& v) const { return *this = T(static_cast<T>(*this) & v); }
  T* operator&() const { return p; }  // for atomics on shared memory (not race-checked: they are atomic)
};
// imtok_min / imtok_max found by argument-dependent lookup when an operand is a shared-memory element
template <typename T> T imtok_min(const SharedRef<T>& a, const T& b) { const T x = a; return b < x ? b : x; }
template <typename T> T imtok_min(const T& a, const SharedRef<T>& b) { const T y = b; return y < a ? y : a; }
template <typename T> T imtok_min(const SharedRef<T>& a, const SharedRef<T>& b) { const T x = a, y = b; return y < x ? y : x; }
template <typename T> T imtok_max(const SharedRef<T>& a, const T& b) { const T x = a; return x < b ? b : x; }
template <typename T> T imtok_max(const T& a, const SharedRef<T>& b) { const T y = b; return a < y ? y : a; }
template <typename T> T imtok_max(const SharedRef<T>& a, const SharedRef<T>& b) { const T x = a, y = b; return x < y ? y : x; }

// element types whose shared-memory accesses go through SharedRef (race-checked); emu_wmma.h adds the
// half-precision types
template <typename T>
struct is_tracked : std::is_arithmetic<T> {};

template <typename T, size_t N>
struct SharedArray {
  T data[N];
  Shadow shadow[N];
  decltype(auto) operator[](int64_t i) {
    if (i < 0 || static_cast<size_t>(i) >= N)
      fail("shared-memory index " + std::to_string(i) + " out of bounds [0, " + std::to_string(N) + ")");
    if constexpr (is_tracked<T>::value)
      return SharedRef<T>{&data[i], &shadow[i]};
    else
      return (data[i]);
  }
};

template <typename T>
struct SharedSpan {
  T* ptr;
  int64_t n;
  unsigned char* base;  // start of the block's dynamic shared memory: shadows are indexed by byte offset
  Shadow* shadow;
  decltype(auto) operator[](int64_t i) const {
    if (i < 0 || i >= n)
      fail("dynamic shared-memory index " + std::to_string(i) + " out of bounds [0, " + std::to_string(n) + ")");
    if constexpr (is_tracked<T>::value)
      return SharedRef<T>{ptr + i, shadow + (reinterpret_cast<unsigned char*>(ptr + i) - base)};
    else
      return (ptr[i]);
  }
  SharedSpan operator+(int64_t off) const {
    if (off < 0 || off > n)
      fail("dynamic shared-memory offset " + std::to_string(off) + " out of bounds [0, " + std::to_string(n) + "]");
    return SharedSpan{ptr + off, n - off, base, shadow};
  }
  template <typename U>
  SharedSpan<U> as() const {  // reinterpret the rest of the buffer as another type
    return SharedSpan<U>{reinterpret_cast<U*>(ptr), static_cast<int64_t>(n * sizeof(T) / sizeof(U)), base, shadow};
  }
};

template <typename T>
SharedSpan<T> dynamic_shared() {
  LaunchState* st = current_launch();
  return SharedSpan<T>{reinterpret_cast<T*>(st->dynamic_smem()), static_cast<int64_t>(st->smem_bytes() / sizeof(T)),
                       st->dynamic_smem(), st->dynamic_shadow()};
}

// ---- warps --------------------------------------------------------------------------------------
inline int lane_id() { return tl_linear_tid & 31; }
inline Warp& my_warp() { return current_launch()->warp(tl_linear_tid >> 5); }
inline void check_mask(unsigned mask, const char* what) {
  Warp& w = my_warp();
  const unsigned full = w.active == 32 ? 0xFFFFFFFFu : ((1u << w.active) - 1u);
  if ((mask & full) != full)
    fail(std::string(what) + ": mask 0x" + std::to_string(mask) + " is not the full warp (" +
         std::to_string(w.active) + " active lanes); partial masks are not emulated");
}
template <typename T>
uint64_t to_bits(T v) {
  static_assert(sizeof(T) <= 8 && std::is_trivially_copyable<T>::value, "warp shuffle of an unsupported type");
  uint64_t b = 0;
  std::memcpy(&b, &v, sizeof(T));
  return b;
}
template <typename T>
T from_bits(uint64_t b) {
  T v;
  std::memcpy(&v, &b, sizeof(T));
  return v;
}
template <typename T>
T shuffle_from(unsigned mask, T v, int src, const char* what, const char* file, int line) {
  check_mask(mask, what);
  Warp& w = my_warp();
  w.slots[lane_id()] = to_bits(v);
  w.barrier.wait(what, file, line);
  if (src < 0 || src >= w.active) src = lane_id();  // reading an inactive lane: undefined on a GPU; keep own
  const uint64_t r = w.slots[src];
  w.barrier.wait(what, file, line);
  ++tl_warp_epoch;
  return from_bits<T>(r);
}
inline unsigned ballot(unsigned mask, bool pred, const char* what, const char* file, int line) {
  check_mask(mask, what);
  Warp& w = my_warp();
  w.slots[lane_id()] = pred ? 1u : 0u;
  w.barrier.wait(what, file, line);
  unsigned r = 0;
  for (int l = 0; l < w.active; ++l) r |= (w.slots[l] ? 1u : 0u) << l;
  w.barrier.wait(what, file, line);
  ++tl_warp_epoch;
  return r;
}

// ---- atomics (real atomics on the bit pattern) ------------------------------------------------------
template <typename T, typename F>
T atomic_update(T* addr, F f) {
  static_assert(sizeof(T) == 4 || sizeof(T) == 8, "atomic on an unsupported type");
  using Bits = typename std::conditional<sizeof(T) == 4, uint32_t, uint64_t>::type;
  Bits* p = reinterpret_cast<Bits*>(addr);
  Bits old_bits = __atomic_load_n(p, __ATOMIC_SEQ_CST);
  while (true) {
    T old_v;
    std::memcpy(&old_v, &old_bits, sizeof(T));
    T new_v = f(old_v);
    Bits new_bits;
    std::memcpy(&new_bits, &new_v, sizeof(T));
    if (__atomic_compare_exchange_n(p, &old_bits, new_bits, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST))
      return old_v;
  }
}

}  // namespace imtok_emu

// ---- the CUDA names kernels use -------------------------------------------------------------------
namespace imtok_emu {
inline void syncthreads(const char* file, int line) {
  current_launch()->block_barrier().wait("__syncthreads", file, line);
  ++tl_block_epoch;
}
inline void syncwarp(unsigned mask, const char* file, int line) {
  check_mask(mask, "__syncwarp");
  my_warp().barrier.wait("__syncwarp", file, line);
  ++tl_warp_epoch;
}
}  // namespace imtok_emu
#define __syncthreads() imtok_emu::syncthreads(__FILE__, __LINE__)
#define __syncwarp(mask) imtok_emu::syncwarp((mask), __FILE__, __LINE__)
#define __shfl_sync(mask, v, src) \
  imtok_emu::shuffle_from((mask), (v), (int(src) & 31), "__shfl_sync", __FILE__, __LINE__)
#define __shfl_xor_sync(mask, v, lm) \
  imtok_emu::shuffle_from((mask), (v), imtok_emu::lane_id() ^ int(lm), "__shfl_xor_sync", __FILE__, __LINE__)
#define __shfl_down_sync(mask, v, d) \
  imtok_emu::shuffle_from((mask), (v), (imtok_emu::lane_id() + int(d) < 32 ? imtok_emu::lane_id() + int(d) : imtok_emu::lane_id()), "__shfl_down_sync", __FILE__, __LINE__)
#define __shfl_up_sync(mask, v, d) \
  imtok_emu::shuffle_from((mask), (v), (imtok_emu::lane_id() - int(d) >= 0 ? imtok_emu::lane_id() - int(d) : imtok_emu::lane_id()), "__shfl_up_sync", __FILE__, __LINE__)
#define __ballot_sync(mask, pred) imtok_emu::ballot((mask), bool(pred), "__ballot_sync", __FILE__, __LINE__)
#define __any_sync(mask, pred) (imtok_emu::ballot((mask), bool(pred), "__any_sync", __FILE__, __LINE__) != 0u)
#define __all_sync(mask, pred) \
  (imtok_emu::ballot((mask), !bool(pred), "__all_sync", __FILE__, __LINE__) == 0u)

template <typename T>
inline T atomicAdd(T* addr, T v) { return imtok_emu::atomic_update(addr, [v](T o) { return T(o + v); }); }
template <typename T>
inline T atomicMax(T* addr, T v) { return imtok_emu::atomic_update(addr, [v](T o) { return o < v ? v : o; }); }
template <typename T>
inline T atomicMin(T* addr, T v) { return imtok_emu::atomic_update(addr, [v](T o) { return v < o ? v : o; }); }
template <typename T>
inline T atomicExch(T* addr, T v) { return imtok_emu::atomic_update(addr, [v](T) { return v; }); }
template <typename T>
inline T atomicCAS(T* addr, T compare, T v) {
  return imtok_emu::atomic_update(addr, [compare, v](T o) { return o == compare ? v : o; });
}

inline float __expf(float x) { return std::exp(x); }
inline float __logf(float x) { return std::log(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline double rsqrt(double x) { return 1.0 / std::sqrt(x); }
inline float __saturatef(float x) { return x < 0.f ? 0.f : (x > 1.f ? 1.f : x); }
inline int __float_as_int(float x) { int i; std::memcpy(&i, &x, 4); return i; }
inline float __int_as_float(int i) { float x; std::memcpy(&x, &i, 4); return x; }
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __ffs(unsigned x) { return __builtin_ffs(static_cast<int>(x)); }
template <typename T>
inline T __ldg(const T* p) { return *p; }

#include "common/emu_wmma.h"

#define IMTOK_SHARED_ARRAY(T, name, n) static imtok_emu::SharedArray<T, (n)> name
#define IMTOK_SHARED_ARRAY2(T, name, n, m) static imtok_emu::SharedArray<imtok_emu::SharedArray<T, (m)>, (n)> name
#define IMTOK_DYNAMIC_SHARED(T, name) auto name = imtok_emu::dynamic_shared<T>()
#define IMTOK_DEVICE_GUARD(tensor) ((void)0)
#define IMTOK_CURRENT_STREAM() 0
#define IMTOK_LAUNCH(kernel, grid, block, smem, stream, ...) \
  ((void)(stream), imtok_emu::launch(#kernel, dim3(grid), dim3(block), size_t(smem), kernel, __VA_ARGS__))
