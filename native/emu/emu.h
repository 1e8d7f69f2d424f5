// moe-kernels CUDA emulator: the device-side language and runtime that lets a .cu kernel file
// compile with g++ (`g++ -x c++ -std=c++17 -DMOE_CUDA_EMU`) and run on the CPU.
//
// Kernels do not include this header directly: they include native/backends/cuda/cuda_compat.cuh, which
// picks real CUDA under nvcc and this header otherwise. What is emulated, and how:
//   - each GPU thread is a fiber (fiber.h); a block's threads run on one OS thread, one at a time,
//     switching only at synchronisation points, in an order chosen by the schedule (round-robin,
//     reverse or seeded random) so that a missing __syncthreads shows up under some schedule;
//   - __syncthreads is a counting barrier: threads at different barriers, or a thread that exits
//     while others wait, are reported as a launch error, never a hang;
//   - warp intrinsics (__shfl*_sync, votes, __syncwarp, ldmatrix, mma.sync) are rendezvous of the
//     lanes named in the mask, with the exact lane semantics of the PTX ISA;
//   - shared memory is a per-block arena: poisoned with 0xFF (NaN for f32/f16/bf16) when a block
//     starts, fenced by canary redzones, limits enforced (48 KB static, opt-in for more dynamic);
//   - blocks run one after another, or on a small pool of OS threads (MOE_EMU_THREADS), so atomics
//     are real atomics.
// Errors end the launch with a cudaError_t and a message (moe_emu::last_error_message), never with
// abort(); the fibers of a failed block are unwound so their destructors run.
//
// The CUDA headers are used for the types (dim3, cudaError_t, cudaStream_t, __nv_bfloat16, ...):
// cuda_bf16.h / cuda_fp16.h pull in cuda_runtime_api.h, and the host functions it declares that
// kernels' launchers need are defined by emu_shims.cc. So an emulated build must never also link
// cudart. Keyword macros (__global__, __shared__, ...) are defined first, before any CUDA header.
#pragma once

#if defined(__CUDACC__)
#error "native/emu emulates CUDA on the CPU: compile with g++ -x c++ -DMOE_CUDA_EMU, not with nvcc"
#endif

// ---- CUDA keywords (before any CUDA header: host_defines.h keeps definitions that exist) --------
#define __global__
#define __device__
#define __host__
#define __constant__
#define __launch_bounds__(...)
#define __noinline__ __attribute__((noinline))
// A plain `__shared__` variable would silently become per-thread storage: make it a compile error
// that names the replacement.
#define __shared__ static_assert(false, "use MOE_SHARED / MOE_DYNAMIC_SHARED from cuda_compat.cuh");

#include <cuda_runtime_api.h>  // types only: dim3, uint3, cudaError_t, cudaStream_t, ...

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <tuple>
#include <type_traits>
#include <utility>

// Emulated architecture, as __CUDA_ARCH__ would read: the smallest shipped target, so kernels take
// the mma.sync / ldmatrix / cp.async paths the emulator implements (no wgmma, TMA or mbarrier).
#ifndef MOE_EMU_ARCH
#define MOE_EMU_ARCH 800
#endif

#define warpSize 32

namespace moe_emu {

constexpr int kWarpSize = 32;
constexpr unsigned kFullMask = 0xffffffffu;

// ---- run-time configuration ---------------------------------------------------------------------

// Order in which the threads of a block run between synchronisation points (and blocks of a grid).
enum class Schedule : int {
  kRoundRobin = 0,  // thread 0, 1, 2, ...
  kReverse = 1,     // last thread first
  kRandom = 2,      // a fresh seeded permutation for every sweep
  kDrift = 3,       // warp by warp: each warp runs as far as it can (to a __syncthreads or the end)
                    // before the next one starts, in a seeded warp order per sweep, so warps drift
                    // apart by whole pipeline iterations as they do on a GPU
};

// Defaults come from the environment when the first launch happens:
//   MOE_EMU_SCHEDULE = rr | reverse | random[:seed] | drift[:seed]   (default rr)
//   MOE_EMU_RACECHECK = 1: the shared-memory race detector (see set_racecheck)
//   MOE_EMU_THREADS  = OS threads that run blocks      (default 1: blocks run on the caller)
//   MOE_EMU_STACK_KB = stack per emulated thread       (default 128)
//   MOE_EMU_SMEM_OPTIN = max dynamic shared bytes per block after cudaFuncSetAttribute
//                        (default 101376, the 99 KB of sm_86/sm_89, the smallest shipped target;
//                        up to 232448, sm_90's 227 KB)
void set_schedule(Schedule s, uint64_t seed = 1);
Schedule schedule();
uint64_t schedule_seed();
void set_worker_threads(int n);
int worker_threads();
// The dynamic shared memory a block may opt in to (what MOE_EMU_SMEM_OPTIN sets), clamped to
// [48 KB, 227 KB]: a test sets sm_90's 227 KB to run kernels chosen only for such devices.
void set_smem_optin(size_t bytes);
size_t smem_optin();
const char* schedule_name(Schedule s);
// Kernel launches started so far in this process (each moe_launch, whether it succeeds or not): a
// test takes the difference around a call to see how many kernels a launcher ran.
uint64_t launch_count();

// The shared-memory race detector. Every byte of a block's shared memory has a shadow: its last
// writer and its readers since the last barrier, each with the emulated thread, the source site and
// the synchronisation clock of the access. Two accesses of the same byte by different threads of a
// block, at least one a write, race unless a __syncthreads (any variant) came between them, or,
// for two lanes of one warp, a __syncwarp whose mask named both. ldmatrix counts as the 16-byte
// row reads of the lanes that address them; cp.async as a write when issued and again when it lands
// at cp.async.wait_group; atomics do not race with atomics. The first race of a block fails the
// launch (cudaErrorLaunchFailure) with the kernel, the shared array and offset, both threads and
// both sites. Plain loads and stores are seen only in translation units compiled with
// `-fsanitize=thread --param tsan-instrument-func-entry-exit=0`, whose hooks (__tsan_read4, ...) the
// emulator defines itself (no TSan runtime is linked): the emulator's test builds compile kernels so.
// Default: MOE_EMU_RACECHECK=1 in the environment turns it on.
void set_racecheck(bool on);
bool racecheck();
// Whether any translation unit linked in was compiled with the access hooks (else only ldmatrix
// and cp.async are seen).
bool racecheck_instrumented();

// The detailed message of the last failed launch or host call on this OS thread.
const char* last_error_message();
// A message for err: the detailed one when err is the last error seen on this thread, else the
// generic CUDA name of the code.
const char* error_string(cudaError_t err);

// ---- what a running emulated thread sees --------------------------------------------------------

struct ThreadCtx {
  uint3 thread_idx;
  uint3 block_idx;
  dim3 block_dim;
  dim3 grid_dim;
};

}  // namespace moe_emu

// The context of the emulated thread running on this OS thread (null outside a kernel). A plain
// __thread pointer with the initial-exec model: one fs-relative load, no TLS wrapper call.
extern __thread moe_emu::ThreadCtx* moe_emu_current __attribute__((tls_model("initial-exec")));

namespace moe_emu {

[[noreturn]] void no_kernel_context(const char* what);

inline ThreadCtx& ctx(const char* what) {
  ThreadCtx* c = moe_emu_current;
  if (__builtin_expect(c == nullptr, 0)) no_kernel_context(what);
  return *c;
}

// ---- runtime entry points used by the device functions below (emu_worker.cc) ---------------------

enum class BarrierOp : int { kSync, kCount, kAnd, kOr };
// Block barrier; returns the reduction for kCount / kAnd / kOr.
int block_barrier(BarrierOp op, int pred, const char* file, int line);

enum class WarpOp : int {
  kShflIdx, kShflUp, kShflDown, kShflXor,  // value exchange
  kBallot, kAny, kAll,                     // votes
  kSyncWarp,
  kLdmatrix,  // .aligned: all 32 lanes, the same instruction
  kMma,       // .aligned: all 32 lanes, the same instruction
};
// One lane's part of a warp collective. `in` / `out` point at this lane's operand and result
// (they stay valid while the lane waits, since it is suspended inside this call).
void warp_collective(WarpOp op, unsigned mask, const void* in, void* out, int param, int width,
                     int bytes, const char* file, int line);
unsigned active_mask();

[[noreturn]] void trap(const char* file, int line);

// Shared memory. A static declaration site: one per MOE_SHARED in the source (per template
// instance), constant-initialised so that no guard is needed.
struct SharedSite {
  const char* name;
  const char* file;
  int line;
  size_t bytes;
  size_t align;
  int id;  // assigned on first use (under a lock), then read-only
};
void* shared_static(SharedSite* site);
void* shared_dynamic(const char* file, int line);

// PTX instructions that have no CPU counterpart (native/backends/cuda/cuda_compat.cuh wraps them).
enum class MmaType : int { kBF16, kF16 };
void ldmatrix(int num, bool trans, const void* row_addr, uint32_t* out, const char* file, int line);
void mma_m16n8k16(MmaType t, float* d, const uint32_t* a, const uint32_t* b, const float* c,
                  const char* file, int line);
void cp_async_16(void* smem_dst, const void* gmem_src, int src_bytes, const char* file, int line);
void cp_async_commit();
void cp_async_wait(int pending_groups_allowed, const char* file, int line);

// A kernel launch, type-erased: `body(arg)` runs the kernel for the current emulated thread.
struct LaunchSpec {
  const void* kernel;  // identifies the function (for cudaFuncSetAttribute)
  void (*body)(void*);
  void* arg;
  dim3 grid, block;
  size_t dynamic_smem;
};
cudaError_t launch(const LaunchSpec& spec);

}  // namespace moe_emu

// ---- built-in variables ------------------------------------------------------------------------
#define threadIdx (::moe_emu::ctx("threadIdx").thread_idx)
#define blockIdx (::moe_emu::ctx("blockIdx").block_idx)
#define blockDim (::moe_emu::ctx("blockDim").block_dim)
#define gridDim (::moe_emu::ctx("gridDim").grid_dim)

// ---- synchronisation ----------------------------------------------------------------------------
// The call site (__builtin_FILE/LINE as default arguments, evaluated where the call is written)
// identifies the barrier in error messages and in the "different barriers" check.
inline void __syncthreads(const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  ::moe_emu::block_barrier(::moe_emu::BarrierOp::kSync, 0, file, line);
}
inline int __syncthreads_count(int pred, const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  return ::moe_emu::block_barrier(::moe_emu::BarrierOp::kCount, pred, file, line);
}
inline int __syncthreads_and(int pred, const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  return ::moe_emu::block_barrier(::moe_emu::BarrierOp::kAnd, pred, file, line);
}
inline int __syncthreads_or(int pred, const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  return ::moe_emu::block_barrier(::moe_emu::BarrierOp::kOr, pred, file, line);
}
inline void __syncwarp(unsigned mask = ::moe_emu::kFullMask, const char* file = __builtin_FILE(),
                       int line = __builtin_LINE()) {
  ::moe_emu::warp_collective(::moe_emu::WarpOp::kSyncWarp, mask, nullptr, nullptr, 0,
                             ::moe_emu::kWarpSize, 0, file, line);
}
inline void __threadfence() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
inline void __threadfence_block() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
[[noreturn]] inline void __trap(const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  ::moe_emu::trap(file, line);
}

// ---- warp shuffles and votes --------------------------------------------------------------------
// Any trivially copyable type of up to 8 bytes (int, float, double, __half, __nv_bfloat162, ...),
// like the CUDA overloads. A lane whose source lane is not in the mask receives 0xFF bytes.
namespace moe_emu {
template <typename T>
inline T shuffle(WarpOp op, unsigned mask, T var, int param, int width, const char* file, int line) {
  static_assert(std::is_trivially_copyable<T>::value && sizeof(T) <= 8,
                "warp shuffles move trivially copyable values of at most 8 bytes");
  T out;
  warp_collective(op, mask, &var, &out, param, width, int(sizeof(T)), file, line);
  return out;
}
}  // namespace moe_emu

template <typename T>
inline T __shfl_sync(unsigned mask, T var, int src_lane, int width = warpSize,
                     const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  return ::moe_emu::shuffle(::moe_emu::WarpOp::kShflIdx, mask, var, src_lane, width, file, line);
}
template <typename T>
inline T __shfl_up_sync(unsigned mask, T var, unsigned delta, int width = warpSize,
                        const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  return ::moe_emu::shuffle(::moe_emu::WarpOp::kShflUp, mask, var, int(delta), width, file, line);
}
template <typename T>
inline T __shfl_down_sync(unsigned mask, T var, unsigned delta, int width = warpSize,
                          const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  return ::moe_emu::shuffle(::moe_emu::WarpOp::kShflDown, mask, var, int(delta), width, file, line);
}
template <typename T>
inline T __shfl_xor_sync(unsigned mask, T var, int lane_mask, int width = warpSize,
                         const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  return ::moe_emu::shuffle(::moe_emu::WarpOp::kShflXor, mask, var, lane_mask, width, file, line);
}
inline unsigned __ballot_sync(unsigned mask, int pred, const char* file = __builtin_FILE(),
                              int line = __builtin_LINE()) {
  unsigned out = 0;
  const int p = pred != 0;
  ::moe_emu::warp_collective(::moe_emu::WarpOp::kBallot, mask, &p, &out, 0, warpSize, 0, file, line);
  return out;
}
inline int __any_sync(unsigned mask, int pred, const char* file = __builtin_FILE(),
                      int line = __builtin_LINE()) {
  int out = 0;
  const int p = pred != 0;
  ::moe_emu::warp_collective(::moe_emu::WarpOp::kAny, mask, &p, &out, 0, warpSize, 0, file, line);
  return out;
}
inline int __all_sync(unsigned mask, int pred, const char* file = __builtin_FILE(),
                      int line = __builtin_LINE()) {
  int out = 0;
  const int p = pred != 0;
  ::moe_emu::warp_collective(::moe_emu::WarpOp::kAll, mask, &p, &out, 0, warpSize, 0, file, line);
  return out;
}
// The lanes of the warp that exist and have not exited (the emulator has no finer notion of
// divergence).
inline unsigned __activemask() { return ::moe_emu::active_mask(); }

// ---- atomics: real atomics, since blocks may run concurrently on a pool of OS threads -----------
namespace moe_emu {
template <typename T, typename F>
inline T atomic_update(T* p, F f) {  // compare-and-swap loop for the read-modify-writes x86 lacks
  T old = __atomic_load_n(p, __ATOMIC_RELAXED);
  while (!__atomic_compare_exchange_n(p, &old, f(old), true, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
  }
  return old;
}
template <typename F, typename U, typename Op>
inline F atomic_float_update(F* p, Op f) {
  static_assert(sizeof(F) == sizeof(U), "float and its bit pattern");
  U* bits = reinterpret_cast<U*>(p);
  U old = __atomic_load_n(bits, __ATOMIC_RELAXED);
  for (;;) {
    F o;
    std::memcpy(&o, &old, sizeof(F));
    const F n = f(o);
    U nb;
    std::memcpy(&nb, &n, sizeof(F));
    if (__atomic_compare_exchange_n(bits, &old, nb, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) return o;
  }
}
}  // namespace moe_emu

#define MOE_EMU_INT_ATOMICS(T)                                                                    \
  inline T atomicAdd(T* p, T v) { return __atomic_fetch_add(p, v, __ATOMIC_RELAXED); }           \
  inline T atomicSub(T* p, T v) { return __atomic_fetch_sub(p, v, __ATOMIC_RELAXED); }           \
  inline T atomicAnd(T* p, T v) { return __atomic_fetch_and(p, v, __ATOMIC_RELAXED); }           \
  inline T atomicOr(T* p, T v) { return __atomic_fetch_or(p, v, __ATOMIC_RELAXED); }             \
  inline T atomicXor(T* p, T v) { return __atomic_fetch_xor(p, v, __ATOMIC_RELAXED); }           \
  inline T atomicExch(T* p, T v) { return __atomic_exchange_n(p, v, __ATOMIC_RELAXED); }         \
  inline T atomicMax(T* p, T v) {                                                                 \
    return ::moe_emu::atomic_update(p, [v](T o) { return o < v ? v : o; });                       \
  }                                                                                               \
  inline T atomicMin(T* p, T v) {                                                                 \
    return ::moe_emu::atomic_update(p, [v](T o) { return v < o ? v : o; });                       \
  }                                                                                               \
  inline T atomicCAS(T* p, T compare, T v) {                                                      \
    __atomic_compare_exchange_n(p, &compare, v, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED);       \
    return compare;                                                                               \
  }
MOE_EMU_INT_ATOMICS(int)
MOE_EMU_INT_ATOMICS(unsigned int)
MOE_EMU_INT_ATOMICS(unsigned long long)
MOE_EMU_INT_ATOMICS(long long)
#undef MOE_EMU_INT_ATOMICS

inline float atomicAdd(float* p, float v) {
  return ::moe_emu::atomic_float_update<float, uint32_t>(p, [v](float o) { return o + v; });
}
inline double atomicAdd(double* p, double v) {
  return ::moe_emu::atomic_float_update<double, uint64_t>(p, [v](double o) { return o + v; });
}
inline float atomicExch(float* p, float v) {
  return ::moe_emu::atomic_float_update<float, uint32_t>(p, [v](float) { return v; });
}
inline unsigned atomicInc(unsigned* p, unsigned limit) {
  return ::moe_emu::atomic_update(p, [limit](unsigned o) { return o >= limit ? 0u : o + 1u; });
}
inline unsigned atomicDec(unsigned* p, unsigned limit) {
  return ::moe_emu::atomic_update(p, [limit](unsigned o) { return (o == 0 || o > limit) ? limit : o - 1u; });
}

// ---- device intrinsics with a CPU meaning --------------------------------------------------------
// Fast-math intrinsics are computed at full precision: results can differ from a GPU in the last
// bits, which is why GPU runs are compared with tolerances.
inline float __expf(float x) { return std::exp(x); }
inline float __logf(float x) { return std::log(x); }
inline float __log2f(float x) { return std::log2(x); }
inline float __exp10f(float x) { return std::pow(10.0f, x); }
inline float __powf(float x, float y) { return std::pow(x, y); }
inline float __sinf(float x) { return std::sin(x); }
inline float __cosf(float x) { return std::cos(x); }
inline float __tanhf(float x) { return std::tanh(x); }
inline float __fdividef(float x, float y) { return x / y; }
inline float __frcp_rn(float x) { return 1.0f / x; }
inline float __fsqrt_rn(float x) { return std::sqrt(x); }
inline float __fmaf_rn(float a, float b, float c) { return std::fma(a, b, c); }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __saturatef(float x) { return x != x ? 0.0f : (x < 0.0f ? 0.0f : (x > 1.0f ? 1.0f : x)); }
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline int __float_as_int(float x) { int i; std::memcpy(&i, &x, sizeof i); return i; }
inline unsigned __float_as_uint(float x) { unsigned i; std::memcpy(&i, &x, sizeof i); return i; }
inline float __int_as_float(int i) { float x; std::memcpy(&x, &i, sizeof x); return x; }
inline float __uint_as_float(unsigned i) { float x; std::memcpy(&x, &i, sizeof x); return x; }
inline long long __double_as_longlong(double x) { long long i; std::memcpy(&i, &x, sizeof i); return i; }
inline double __longlong_as_double(long long i) { double x; std::memcpy(&x, &i, sizeof x); return x; }
inline int __float2int_rn(float x) { return int(std::nearbyint(x)); }
inline int __float2int_rz(float x) { return int(x); }
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz(unsigned(x)); }
inline int __clzll(long long x) { return x == 0 ? 64 : __builtin_clzll((unsigned long long)x); }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline int __ffsll(long long x) { return __builtin_ffsll(x); }
inline unsigned __brev(unsigned x) {
  x = ((x >> 1) & 0x55555555u) | ((x & 0x55555555u) << 1);
  x = ((x >> 2) & 0x33333333u) | ((x & 0x33333333u) << 2);
  x = ((x >> 4) & 0x0F0F0F0Fu) | ((x & 0x0F0F0F0Fu) << 4);
  x = ((x >> 8) & 0x00FF00FFu) | ((x & 0x00FF00FFu) << 8);
  return (x >> 16) | (x << 16);
}
inline unsigned __umulhi(unsigned a, unsigned b) { return unsigned((uint64_t(a) * b) >> 32); }
inline int __mulhi(int a, int b) { return int((int64_t(a) * b) >> 32); }
template <typename T>
inline T __ldg(const T* p) { return *p; }
// Device-code min/max overloads for same-typed arguments (nvcc also offers mixed-type ones).
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a < b ? b : a; }
inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
inline unsigned max(unsigned a, unsigned b) { return a < b ? b : a; }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline long long max(long long a, long long b) { return a < b ? b : a; }
inline unsigned long long min(unsigned long long a, unsigned long long b) { return a < b ? a : b; }
inline unsigned long long max(unsigned long long a, unsigned long long b) { return a < b ? b : a; }
inline float min(float a, float b) { return std::fmin(a, b); }
inline float max(float a, float b) { return std::fmax(a, b); }
inline double min(double a, double b) { return std::fmin(a, b); }
inline double max(double a, double b) { return std::fmax(a, b); }

// ---- launches -----------------------------------------------------------------------------------
namespace moe_emu {

// Like <<<grid, block, smem, stream>>>: the arguments are converted to the kernel's parameter types
// and copied once; every emulated thread calls the kernel with those copies. The launch runs to
// completion before this returns (stream order is trivially kept); errors come back as the result.
template <typename... Params, typename... Args>
cudaError_t launch_kernel(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem_bytes,
                          cudaStream_t stream, Args&&... args) {
  static_assert(sizeof...(Params) == sizeof...(Args), "wrong number of kernel arguments");
  (void)stream;
  struct Call {
    void (*kernel)(Params...);
    std::tuple<std::decay_t<Params>...> params;
    static void run(void* p) {
      Call* c = static_cast<Call*>(p);
      std::apply(c->kernel, c->params);
    }
  };
  Call call{kernel, std::tuple<std::decay_t<Params>...>(std::forward<Args>(args)...)};
  LaunchSpec spec{reinterpret_cast<const void*>(kernel), &Call::run, &call, grid, block, smem_bytes};
  return launch(spec);
}

}  // namespace moe_emu

// ---- shared memory declarations (wrapped by MOE_SHARED / MOE_DYNAMIC_SHARED) ------------------
#define MOE_EMU_SHARED_ALIGNED(align, T, name, dims)                                             \
  static ::moe_emu::SharedSite moe_emu_site_##name{#name, __FILE__, __LINE__, sizeof(T dims),    \
                                                   (align), -1};                                 \
  T(&name) dims = *reinterpret_cast<T(*) dims>(::moe_emu::shared_static(&moe_emu_site_##name))

#define MOE_EMU_DYNAMIC_SHARED(T, name) \
  T* name = reinterpret_cast<T*>(::moe_emu::shared_dynamic(__FILE__, __LINE__))
