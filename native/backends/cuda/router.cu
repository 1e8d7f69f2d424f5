// moe-kernels CUDA: router logits, logits[t, e] = sum_i x[t, i] * gate[e, i], f32 accumulation.
//
//   router_logits_kernel<T, kVec>  one warp per (token, expert) pair, so that even one decode token
//                                  spreads over E warps; the lanes stride over d (16-byte chunks when
//                                  kVec: 4 f32 or 8 f16/bf16 elements of x, with the matching gate
//                                  floats), then an xor butterfly sums the 32 partials. The order of
//                                  the sum depends only on d, so results are the same bits on every
//                                  run (not those of a serial sum).
//   launch_router_logits           argument checks, the grid, and the switch on x's dtype / alignment.
#include "cuda_compat.cuh"
#include "launchers.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <climits>

namespace moe {

namespace {
constexpr int kRouterThreads = 128;  // 4 warps, 4 (token, expert) pairs per block
constexpr int kRouterLanes = 32;
constexpr unsigned kRouterAllLanes = 0xffffffffu;
}  // namespace

__device__ __forceinline__ float router_to_float(float v) { return v; }
__device__ __forceinline__ float router_to_float(__half v) { return __half2float(v); }
__device__ __forceinline__ float router_to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

// The elements of x in one 32-bit word of a 16-byte load, widened to f32 (bit operations, no
// type-punning pointer casts).
__device__ __forceinline__ void router_widen(uint32_t w, float, float* out) { out[0] = __uint_as_float(w); }
__device__ __forceinline__ void router_widen(uint32_t w, __nv_bfloat16, float* out) {
  out[0] = __uint_as_float(w << 16);
  out[1] = __uint_as_float(w & 0xffff0000u);
}
__device__ __forceinline__ void router_widen(uint32_t w, __half, float* out) {
  __half_raw lo, hi;
  lo.x = static_cast<unsigned short>(w & 0xffffu);
  hi.x = static_cast<unsigned short>(w >> 16);
  out[0] = __half2float(__half(lo));
  out[1] = __half2float(__half(hi));
}

// kVec: x and gate rows are 16-byte aligned and d is a multiple of the 16-byte chunk of x.
template <typename T, bool kVec>
__global__ void __launch_bounds__(kRouterThreads)
    router_logits_kernel(const T* __restrict__ x,          // [num_tokens, d]
                         const float* __restrict__ gate,   // [num_experts, d]
                         int64_t num_tokens, int64_t d, int num_experts,
                         float* __restrict__ logits) {     // [num_tokens, num_experts]
  constexpr int kWarps = kRouterThreads / kRouterLanes;
  const int lane = int(threadIdx.x) % kRouterLanes;
  const int64_t pair = int64_t(blockIdx.x) * kWarps + int(threadIdx.x) / kRouterLanes;
  if (pair >= num_tokens * num_experts) return;  // uniform across the warp
  const int64_t t = pair / num_experts;
  const int e = int(pair % num_experts);
  const T* xr = x + t * d;
  const float* gr = gate + int64_t(e) * d;

  float acc = 0.f;
  if constexpr (kVec) {
    constexpr int kChunk = 16 / int(sizeof(T));  // elements of x per 16-byte load
    const int64_t chunks = d / kChunk;
    for (int64_t c = lane; c < chunks; c += kRouterLanes) {
      const uint4 raw = reinterpret_cast<const uint4*>(xr)[c];
      const uint32_t words[4] = {raw.x, raw.y, raw.z, raw.w};
      float xv[kChunk];
      MOE_UNROLL
      for (int q = 0; q < 4; ++q) router_widen(words[q], T(), &xv[q * (kChunk / 4)]);
      const float4* g4 = reinterpret_cast<const float4*>(gr + c * kChunk);
      MOE_UNROLL
      for (int q = 0; q < kChunk / 4; ++q) {
        const float4 g = g4[q];
        acc += xv[4 * q + 0] * g.x;
        acc += xv[4 * q + 1] * g.y;
        acc += xv[4 * q + 2] * g.z;
        acc += xv[4 * q + 3] * g.w;
      }
    }
  } else {
    for (int64_t i = lane; i < d; i += kRouterLanes) acc += router_to_float(xr[i]) * gr[i];
  }
  MOE_UNROLL
  for (int offset = kRouterLanes / 2; offset > 0; offset >>= 1)
    acc += __shfl_xor_sync(kRouterAllLanes, acc, offset);
  if (lane == 0) logits[t * num_experts + e] = acc;
}

namespace {
template <typename T>
cudaError_t launch_router_typed(const void* x, const float* gate, int64_t num_tokens, int64_t d,
                                int num_experts, float* logits, cudaStream_t stream) {
  constexpr int kWarps = kRouterThreads / kRouterLanes;
  const int64_t pairs = num_tokens * num_experts;
  const int64_t blocks = (pairs + kWarps - 1) / kWarps;
  if (blocks > INT_MAX) return cudaErrorInvalidValue;
  const T* xt = static_cast<const T*>(x);
  constexpr int kChunk = 16 / int(sizeof(T));
  const bool vec = d % kChunk == 0 && reinterpret_cast<uintptr_t>(x) % 16 == 0 &&
                   reinterpret_cast<uintptr_t>(gate) % 16 == 0;
  if (vec)
    return moe_launch(router_logits_kernel<T, true>, dim3(unsigned(blocks)), dim3(kRouterThreads), 0, stream,
                      xt, gate, num_tokens, d, num_experts, logits);
  return moe_launch(router_logits_kernel<T, false>, dim3(unsigned(blocks)), dim3(kRouterThreads), 0, stream,
                    xt, gate, num_tokens, d, num_experts, logits);
}
}  // namespace

cudaError_t launch_router_logits(const void* x, DevDType x_dtype, const float* gate, int64_t num_tokens,
                                 int64_t d, int num_experts, float* logits, cudaStream_t stream) {
  if (num_tokens < 0 || d < 0 || num_experts < 1) return cudaErrorInvalidValue;
  if (num_tokens > (int64_t(1) << 40) / num_experts) return cudaErrorInvalidValue;
  if (num_tokens == 0) return cudaSuccess;
  if (!logits || (d > 0 && (!x || !gate))) return cudaErrorInvalidValue;
  switch (x_dtype) {
    case DevDType::kF32:
      if (reinterpret_cast<uintptr_t>(x) % alignof(float)) return cudaErrorInvalidValue;
      return launch_router_typed<float>(x, gate, num_tokens, d, num_experts, logits, stream);
    case DevDType::kF16:
      if (reinterpret_cast<uintptr_t>(x) % alignof(__half)) return cudaErrorInvalidValue;
      return launch_router_typed<__half>(x, gate, num_tokens, d, num_experts, logits, stream);
    case DevDType::kBF16:
      if (reinterpret_cast<uintptr_t>(x) % alignof(__nv_bfloat16)) return cudaErrorInvalidValue;
      return launch_router_typed<__nv_bfloat16>(x, gate, num_tokens, d, num_experts, logits, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace moe
