// moe-kernels: the one header every .cu kernel file includes first. It is the contract that lets the
// same source compile with nvcc for the GPU and with g++ against the CPU emulator (native/emu/):
//
//   nvcc ...                                   -> real CUDA
//   g++ -x c++ -std=c++17 -DMOE_CUDA_EMU ...   -> native/emu (each GPU thread a fiber)
//
// What a kernel file may use, beyond plain CUDA C++ (threadIdx, __syncthreads, __shfl*_sync, votes,
// atomics, cuda_bf16.h / cuda_fp16.h types):
//
//   MOE_CUDA_ARCH           the target's __CUDA_ARCH__ in device code (800, 860, ...; the emulator
//                           reads as MOE_EMU_ARCH, default 800); 0 in nvcc's host pass. Use it
//                           instead of __CUDA_ARCH__, which is undefined under g++.
//   MOE_SHARED(T, name, dims)            static shared array:  MOE_SHARED(float, tile, [32][33]);
//   MOE_SHARED_ALIGNED(a, T, name, dims) the same with alignment `a` (bytes)
//   MOE_DYNAMIC_SHARED(T, name)          T* name = the block's dynamic shared memory (16-byte aligned)
//                           (a bare __shared__ does not compile under the emulator, on purpose)
//   MOE_UNROLL              `#pragma unroll` under nvcc, nothing under g++
//   moe_launch(kernel, grid, block, smem_bytes, stream, args...) -> cudaError_t
//                           the only way to launch; returns the launch error instead of aborting
//   moe_set_max_dynamic_smem(kernel, bytes) -> cudaError_t   opt-in above 48 KB of dynamic smem
//   moe_error_string(err)   detailed message (the emulator's, e.g. which barrier diverged)
//   PTX wrappers, each with an emulated twin (warp-wide: all 32 lanes must call them together):
//     moe_mma_m16n8k16_bf16(d, a, b, c)  float d[4], c[4]; uint32_t a[4], b[2]
//     moe_mma_m16n8k16_f16(d, a, b, c)   mma.sync.aligned.m16n8k16.row.col.f32.{bf16,f16}.*.f32
//     moe_ldmatrix_x1/_x2/_x4(r, row_ptr)        ldmatrix.sync.aligned.m8n8.x{1,2,4}.shared.b16
//     moe_ldmatrix_x1_trans/_x2_trans/_x4_trans  the .trans forms
//     moe_cp_async_16(smem, gmem)                cp.async.cg.shared.global, 16 bytes
//     moe_cp_async_16_zfill(smem, gmem, n)       copies n of the 16 bytes (0..16), zero-fills the rest
//     moe_cp_async_commit()                      cp.async.commit_group
//     moe_cp_async_wait<N>()                     cp.async.wait_group N  (moe_cp_async_wait_all())
//
// Rules a kernel follows so that it can be emulated (DESIGN.md, "No GPU here"): launches go through
// moe_launch; inline PTX lives only in wrappers here, with an emulated twin; nothing relies on
// implicit warp-synchronous execution (use __syncwarp / *_sync intrinsics).
#pragma once

#if defined(__CUDACC__) && defined(MOE_CUDA_EMU)
#error "MOE_CUDA_EMU is for g++ builds of .cu files; nvcc compiles the real kernels"
#elif defined(__CUDACC__)
#define MOE_CUDA_REAL 1
#include <cuda_runtime.h>
#elif defined(MOE_CUDA_EMU)
#include "../../emu/emu.h"
#else
#error "compile .cu files with nvcc, or with g++ -x c++ -DMOE_CUDA_EMU against native/emu"
#endif

#include <cstddef>
#include <cstdint>

// ---- architecture -------------------------------------------------------------------------------
#if defined(MOE_CUDA_REAL)
#if defined(__CUDA_ARCH__)
#define MOE_CUDA_ARCH __CUDA_ARCH__
#else
#define MOE_CUDA_ARCH 0
#endif
#else
#define MOE_CUDA_ARCH MOE_EMU_ARCH
#endif

// ---- shared memory, unrolling -------------------------------------------------------------------
#if defined(MOE_CUDA_REAL)
#define MOE_SHARED(T, name, dims) __shared__ T name dims
#define MOE_SHARED_ALIGNED(align, T, name, dims) __shared__ __align__(align) T name dims
#define MOE_DYNAMIC_SHARED(T, name)                                   \
  extern __shared__ __align__(16) unsigned char moe_dynamic_smem_[]; \
  T* name = reinterpret_cast<T*>(moe_dynamic_smem_)
#define MOE_UNROLL _Pragma("unroll")
#else
#define MOE_SHARED(T, name, dims) MOE_EMU_SHARED_ALIGNED(alignof(T), T, name, dims)
#define MOE_SHARED_ALIGNED(align, T, name, dims) MOE_EMU_SHARED_ALIGNED(align, T, name, dims)
#define MOE_DYNAMIC_SHARED(T, name) MOE_EMU_DYNAMIC_SHARED(T, name)
#define MOE_UNROLL
#endif

// Call-site parameters of the emulated wrappers (so errors name the kernel's line, not this file's).
#if defined(MOE_CUDA_REAL)
#define MOE_SITE_PARAMS
#define MOE_SITE_PARAMS_ONLY
#define MOE_SITE_ARGS
#else
#define MOE_SITE_PARAMS , const char *moe_file = __builtin_FILE(), int moe_line = __builtin_LINE()
#define MOE_SITE_PARAMS_ONLY const char *moe_file = __builtin_FILE(), int moe_line = __builtin_LINE()
#define MOE_SITE_ARGS moe_file, moe_line
#endif

// ---- launches -----------------------------------------------------------------------------------

// Launches kernel<<<grid, block, smem_bytes, stream>>>(args...) and returns the launch status
// (cudaGetLastError under nvcc, which also reports an earlier asynchronous failure on the stream;
// under the emulator the kernel has already run and any execution error is returned here).
template <typename... Params, typename... Args>
inline cudaError_t moe_launch(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem_bytes,
                              cudaStream_t stream, Args&&... args) {
#if defined(MOE_CUDA_REAL)
  kernel<<<grid, block, smem_bytes, stream>>>(static_cast<Params>(args)...);
  return cudaGetLastError();
#else
  return ::moe_emu::launch_kernel(kernel, grid, block, smem_bytes, stream, static_cast<Params>(args)...);
#endif
}

// Allows `kernel` to be launched with up to `bytes` of dynamic shared memory (needed above 48 KB).
template <typename... Params>
inline cudaError_t moe_set_max_dynamic_smem(void (*kernel)(Params...), int bytes) {
  return cudaFuncSetAttribute(reinterpret_cast<const void*>(kernel),
                              cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
}

inline const char* moe_error_string(cudaError_t err) {
#if defined(MOE_CUDA_REAL)
  return cudaGetErrorString(err);
#else
  return ::moe_emu::error_string(err);
#endif
}

// ---- PTX wrappers ---------------------------------------------------------------------------------
// Under nvcc: inline PTX for sm_80+ (a __trap() on older targets, which the build does not ship).
// Under the emulator: the twin in native/emu, same lane layouts (PTX ISA, "Matrix Fragments for
// mma.m16n8k16 with floating point type" and "ldmatrix").

#if defined(MOE_CUDA_REAL)
__device__ __forceinline__ uint32_t moe_smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}
#endif

// D = A * B + C for one 16x8x16 tile, f32 accumulate. d may alias c.
__device__ __forceinline__ void moe_mma_m16n8k16_bf16(float (&d)[4], const uint32_t (&a)[4],
                                                      const uint32_t (&b)[2],
                                                      const float (&c)[4] MOE_SITE_PARAMS) {
#if defined(MOE_CUDA_REAL)
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
      "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%10,%11,%12,%13};\n"
      : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]),
        "f"(c[2]), "f"(c[3]));
#else
  __trap();
#endif
#else
  ::moe_emu::mma_m16n8k16(::moe_emu::MmaType::kBF16, d, a, b, c, MOE_SITE_ARGS);
#endif
}

__device__ __forceinline__ void moe_mma_m16n8k16_f16(float (&d)[4], const uint32_t (&a)[4],
                                                     const uint32_t (&b)[2],
                                                     const float (&c)[4] MOE_SITE_PARAMS) {
#if defined(MOE_CUDA_REAL)
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 "
      "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%10,%11,%12,%13};\n"
      : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]),
        "f"(c[2]), "f"(c[3]));
#else
  __trap();
#endif
#else
  ::moe_emu::mma_m16n8k16(::moe_emu::MmaType::kF16, d, a, b, c, MOE_SITE_ARGS);
#endif
}

// ldmatrix: `row` is this lane's row address (lane 8*i + r: row r of matrix i; lanes beyond the
// matrices' rows pass any valid shared address). Register i receives this lane's part of matrix i.
__device__ __forceinline__ void moe_ldmatrix_x1(uint32_t& r, const void* row MOE_SITE_PARAMS) {
#if defined(MOE_CUDA_REAL)
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("ldmatrix.sync.aligned.m8n8.x1.shared.b16 {%0}, [%1];\n" : "=r"(r) : "r"(moe_smem_addr(row)));
#else
  __trap();
#endif
#else
  ::moe_emu::ldmatrix(1, false, row, &r, MOE_SITE_ARGS);
#endif
}

__device__ __forceinline__ void moe_ldmatrix_x2(uint32_t (&r)[2], const void* row MOE_SITE_PARAMS) {
#if defined(MOE_CUDA_REAL)
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0,%1}, [%2];\n"
               : "=r"(r[0]), "=r"(r[1])
               : "r"(moe_smem_addr(row)));
#else
  __trap();
#endif
#else
  ::moe_emu::ldmatrix(2, false, row, r, MOE_SITE_ARGS);
#endif
}

__device__ __forceinline__ void moe_ldmatrix_x4(uint32_t (&r)[4], const void* row MOE_SITE_PARAMS) {
#if defined(MOE_CUDA_REAL)
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(moe_smem_addr(row)));
#else
  __trap();
#endif
#else
  ::moe_emu::ldmatrix(4, false, row, r, MOE_SITE_ARGS);
#endif
}

__device__ __forceinline__ void moe_ldmatrix_x1_trans(uint32_t& r, const void* row MOE_SITE_PARAMS) {
#if defined(MOE_CUDA_REAL)
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("ldmatrix.sync.aligned.m8n8.x1.trans.shared.b16 {%0}, [%1];\n"
               : "=r"(r)
               : "r"(moe_smem_addr(row)));
#else
  __trap();
#endif
#else
  ::moe_emu::ldmatrix(1, true, row, &r, MOE_SITE_ARGS);
#endif
}

__device__ __forceinline__ void moe_ldmatrix_x2_trans(uint32_t (&r)[2], const void* row MOE_SITE_PARAMS) {
#if defined(MOE_CUDA_REAL)
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0,%1}, [%2];\n"
               : "=r"(r[0]), "=r"(r[1])
               : "r"(moe_smem_addr(row)));
#else
  __trap();
#endif
#else
  ::moe_emu::ldmatrix(2, true, row, r, MOE_SITE_ARGS);
#endif
}

__device__ __forceinline__ void moe_ldmatrix_x4_trans(uint32_t (&r)[4], const void* row MOE_SITE_PARAMS) {
#if defined(MOE_CUDA_REAL)
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(moe_smem_addr(row)));
#else
  __trap();
#endif
#else
  ::moe_emu::ldmatrix(4, true, row, r, MOE_SITE_ARGS);
#endif
}

// cp.async.cg (L2 only, 16 bytes). Both addresses 16-byte aligned; smem must be shared memory.
__device__ __forceinline__ void moe_cp_async_16(void* smem, const void* gmem MOE_SITE_PARAMS) {
#if defined(MOE_CUDA_REAL)
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(moe_smem_addr(smem)), "l"(gmem));
#else
  __trap();
#endif
#else
  ::moe_emu::cp_async_16(smem, gmem, 16, MOE_SITE_ARGS);
#endif
}

// Copies the first src_bytes (0..16) of the 16 and zero-fills the rest: the predicated load for tile
// edges (src_bytes 0 reads nothing, so gmem may then point anywhere valid-looking, e.g. the base).
__device__ __forceinline__ void moe_cp_async_16_zfill(void* smem, const void* gmem,
                                                      int src_bytes MOE_SITE_PARAMS) {
#if defined(MOE_CUDA_REAL)
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(moe_smem_addr(smem)),
               "l"(gmem), "r"(src_bytes));
#else
  __trap();
#endif
#else
  ::moe_emu::cp_async_16(smem, gmem, src_bytes, MOE_SITE_ARGS);
#endif
}

__device__ __forceinline__ void moe_cp_async_commit() {
#if defined(MOE_CUDA_REAL)
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.commit_group;\n" ::);
#endif
#else
  ::moe_emu::cp_async_commit();
#endif
}

// Waits until at most N of this thread's committed cp.async groups are still in flight. Other
// threads' copies are visible only after a __syncthreads that follows their wait.
template <int N>
__device__ __forceinline__ void moe_cp_async_wait(MOE_SITE_PARAMS_ONLY) {
  static_assert(N >= 0, "cp.async.wait_group takes a non-negative count");
#if defined(MOE_CUDA_REAL)
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
#endif
#else
  ::moe_emu::cp_async_wait(N, MOE_SITE_ARGS);
#endif
}

__device__ __forceinline__ void moe_cp_async_wait_all(MOE_SITE_PARAMS_ONLY) {
#if defined(MOE_CUDA_REAL)
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.wait_all;\n" ::);
#endif
#else
  ::moe_emu::cp_async_commit();
  ::moe_emu::cp_async_wait(0, MOE_SITE_ARGS);
#endif
}
