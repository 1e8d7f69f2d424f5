// moe-kernels CUDA: combine, the GPU twin of combine() in native/backends/cpu/combine.cc:
//
//   out[t, :] = sum over j of topk_weights[t, j] * y[row_of[t, j], :]
//
//   combine_kernel<OutT, kVec>  a grid-stride loop over (token, group of kVec columns); kVec = 4
//                               reads y as float4 (d % 4 == 0, y 16-byte aligned, out aligned to
//                               4 elements), kVec = 1 is the scalar path for any d or alignment;
//                               OutT = float, __half, __nv_bfloat16
//   launch_combine              argument checks, the grid, the switch onto the instances
//   shared experts              with `shared` ([T,d] f32, the shared experts' output for every
//                               token) the sum then gets + shared[t], or + sigmoid(shared_logit[t]) *
//                               shared[t] (Qwen2-MoE's gated shared expert), as in the CPU twin
//   launch_row_span             expert_offsets {0, n} on the device, for a one-expert grouped GEMM
//                               over every token (the shared experts) without a host round trip
//
// Deterministic: each output element is one thread's f32 sum over j = 0, 1, ... in order, starting
// from 0, no atomics. Every term is rounded as a product, then as a sum (__fmul_rn, __fadd_rn: nvcc
// would otherwise contract them into an FMA, g++ would not), which is also what the CPU twin
// computes, so the emulated, GPU and CPU results are the same bits. A row < 0 (dropped by the
// capacity) contributes nothing, as does a row >= num_rows (never read). f16/bf16 outputs are
// rounded to nearest even from the f32 sum.
#include "cuda_compat.cuh"
#include "launchers.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <climits>

namespace moe {

namespace {
constexpr int kCombineThreads = 256;
constexpr int kCombineVec = 4;                 // floats per float4
constexpr unsigned kMaxCombineBlocks = 65535;  // the grid-stride loop covers the rest
}  // namespace

__device__ __forceinline__ void store_out(float* p, float v) { *p = v; }
__device__ __forceinline__ void store_out(__half* p, float v) { *p = __float2half_rn(v); }
__device__ __forceinline__ void store_out(__nv_bfloat16* p, float v) { *p = __float2bfloat16_rn(v); }

// Four consecutive outputs at p (aligned to four elements).
__device__ __forceinline__ void store_out4(float* p, const float (&v)[kCombineVec]) {
  *reinterpret_cast<float4*>(p) = make_float4(v[0], v[1], v[2], v[3]);
}
__device__ __forceinline__ void store_out4(__half* p, const float (&v)[kCombineVec]) {
  __half2* q = reinterpret_cast<__half2*>(p);
  q[0] = __floats2half2_rn(v[0], v[1]);
  q[1] = __floats2half2_rn(v[2], v[3]);
}
__device__ __forceinline__ void store_out4(__nv_bfloat16* p, const float (&v)[kCombineVec]) {
  __nv_bfloat162* q = reinterpret_cast<__nv_bfloat162*>(p);
  q[0] = __floats2bfloat162_rn(v[0], v[1]);
  q[1] = __floats2bfloat162_rn(v[2], v[3]);
}

template <typename OutT, int kVec>
__global__ void __launch_bounds__(kCombineThreads)
    combine_kernel(const float* __restrict__ y,             // [num_rows, d]
                   int64_t num_rows,
                   const int32_t* __restrict__ row_of,       // [num_tokens, top_k]
                   const float* __restrict__ topk_weights,   // [num_tokens, top_k]
                   int64_t num_tokens, int top_k, int64_t d,
                   const float* __restrict__ shared,         // [num_tokens, d] or null
                   const float* __restrict__ shared_logit,   // [num_tokens] or null
                   OutT* __restrict__ out) {                 // [num_tokens, d]
  static_assert(kVec == 1 || kVec == kCombineVec, "scalar or float4");
  const int64_t groups = d / kVec;  // d % kVec == 0 (the launcher's choice)
  const int64_t total = num_tokens * groups;
  for (int64_t idx = int64_t(blockIdx.x) * kCombineThreads + threadIdx.x; idx < total;
       idx += int64_t(gridDim.x) * kCombineThreads) {
    const int64_t t = idx / groups;
    const int64_t col = (idx - t * groups) * kVec;
    float acc[kVec];
    MOE_UNROLL
    for (int v = 0; v < kVec; ++v) acc[v] = 0.f;
    for (int j = 0; j < top_k; ++j) {
      const int32_t r = row_of[t * top_k + j];  // the same address across the token's threads
      if (r < 0 || r >= num_rows) continue;
      const float w = topk_weights[t * top_k + j];
      const float* src = y + int64_t(r) * d + col;
      float x[kVec];
      if constexpr (kVec == kCombineVec) {
        const float4 q = *reinterpret_cast<const float4*>(src);
        x[0] = q.x;
        x[1] = q.y;
        x[2] = q.z;
        x[3] = q.w;
      } else {
        x[0] = *src;
      }
      MOE_UNROLL
      for (int v = 0; v < kVec; ++v) acc[v] = __fadd_rn(acc[v], __fmul_rn(w, x[v]));
    }
    if (shared) {
      const float g = shared_logit ? 1.f / (1.f + expf(-shared_logit[t])) : 1.f;
      const float* src = shared + t * d + col;
      MOE_UNROLL
      for (int v = 0; v < kVec; ++v) acc[v] = __fadd_rn(acc[v], __fmul_rn(g, src[v]));
    }
    OutT* dst = out + t * d + col;
    if constexpr (kVec == kCombineVec) {
      store_out4(dst, acc);
    } else {
      store_out(dst, acc[0]);
    }
  }
}

namespace {

bool aligned_to(const void* p, size_t bytes) { return reinterpret_cast<uintptr_t>(p) % bytes == 0; }

template <typename OutT>
cudaError_t launch_combine_typed(const float* y, int64_t num_rows, const int32_t* row_of,
                                 const float* topk_weights, int64_t num_tokens, int top_k, int64_t d,
                                 const float* shared, const float* shared_logit, OutT* out, cudaStream_t stream) {
  const bool vec = d % kCombineVec == 0 && aligned_to(y, sizeof(float4)) &&
                   aligned_to(out, kCombineVec * sizeof(OutT)) && aligned_to(shared, sizeof(float4));
  const int64_t work = num_tokens * (vec ? d / kCombineVec : d);
  const int64_t want = (work + kCombineThreads - 1) / kCombineThreads;
  const dim3 grid(unsigned(want < int64_t(kMaxCombineBlocks) ? want : int64_t(kMaxCombineBlocks)));
  if (vec)
    return moe_launch(combine_kernel<OutT, kCombineVec>, grid, dim3(kCombineThreads), 0, stream, y,
                      num_rows, row_of, topk_weights, num_tokens, top_k, d, shared, shared_logit, out);
  return moe_launch(combine_kernel<OutT, 1>, grid, dim3(kCombineThreads), 0, stream, y, num_rows, row_of,
                    topk_weights, num_tokens, top_k, d, shared, shared_logit, out);
}

}  // namespace

cudaError_t launch_combine(const float* y, int64_t num_rows, const int32_t* row_of,
                           const float* topk_weights, int64_t num_tokens, int top_k, int64_t d,
                           void* out, DevDType out_dtype, cudaStream_t stream, const float* shared,
                           const float* shared_logit) {
  if (num_tokens < 0 || top_k < 1 || d < 0 || num_rows < 0) return cudaErrorInvalidValue;
  if (out_dtype != DevDType::kF32 && out_dtype != DevDType::kF16 && out_dtype != DevDType::kBF16)
    return cudaErrorInvalidValue;
  if (num_tokens == 0 || d == 0) return cudaSuccess;
  if (!row_of || !topk_weights || !out || (num_rows > 0 && !y) || (shared_logit && !shared))
    return cudaErrorInvalidValue;
  if (num_tokens > INT64_MAX / top_k || num_tokens > INT64_MAX / d) return cudaErrorInvalidValue;
  switch (out_dtype) {
    case DevDType::kF32:
      return launch_combine_typed(y, num_rows, row_of, topk_weights, num_tokens, top_k, d, shared,
                                  shared_logit, static_cast<float*>(out), stream);
    case DevDType::kF16:
      return launch_combine_typed(y, num_rows, row_of, topk_weights, num_tokens, top_k, d, shared,
                                  shared_logit, static_cast<__half*>(out), stream);
    case DevDType::kBF16:
      return launch_combine_typed(y, num_rows, row_of, topk_weights, num_tokens, top_k, d, shared,
                                  shared_logit, static_cast<__nv_bfloat16*>(out), stream);
  }
  return cudaErrorInvalidValue;
}

__global__ void row_span_kernel(int32_t* __restrict__ offsets, int32_t n) {
  if (threadIdx.x == 0) offsets[0] = 0, offsets[1] = n;
}

cudaError_t launch_row_span(int32_t* offsets, int64_t n, cudaStream_t stream) {
  if (!offsets || n < 0 || n > INT32_MAX) return cudaErrorInvalidValue;
  return moe_launch(row_span_kernel, dim3(1), dim3(32), 0, stream, offsets, int32_t(n));
}

}  // namespace moe
