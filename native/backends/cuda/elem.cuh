// moe-kernels CUDA: element helpers of the model-op kernels (token_ops.cu, attention.cu) and the
// grouped GEMM: f32 <-> f32/f16/bf16 conversions (nearest even), loads of 2 or 4 and stores of 4
// consecutive elements (one vector access; pointer aligned to that many elements), and loads whose
// dtype is known only at run time (small tensors: a norm weight, a query vector). Include after
// cuda_compat.cuh.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "launchers.h"

namespace moe {
namespace elem {

__device__ __forceinline__ float to_f32(float v) { return v; }
__device__ __forceinline__ float to_f32(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_f32(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
__device__ __forceinline__ T from_f32(float v);
template <>
__device__ __forceinline__ float from_f32<float>(float v) { return v; }
template <>
__device__ __forceinline__ __half from_f32<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

__device__ __forceinline__ uint32_t bits16(__half v) { return __half_as_ushort(v); }
__device__ __forceinline__ uint32_t bits16(__nv_bfloat16 v) { return __bfloat16_as_ushort(v); }
__device__ __forceinline__ float from_bits16(uint32_t b, __half*) {
  return __half2float(__ushort_as_half(static_cast<unsigned short>(b)));
}
__device__ __forceinline__ float from_bits16(uint32_t b, __nv_bfloat16*) { return __uint_as_float(b << 16); }

// kN consecutive elements (kN = 1, or 2 / 4 from a pointer aligned to kN elements) as floats.
template <int kN, typename T>
__device__ __forceinline__ void load_n(const T* p, float (&v)[kN]) {
  static_assert(kN == 1 || kN == 2 || kN == 4, "scalar, two or four");
  if constexpr (kN == 1) {
    v[0] = to_f32(*p);
  } else if constexpr (kN == 2 && sizeof(T) == 4) {
    const float2 q = *reinterpret_cast<const float2*>(p);
    v[0] = q.x, v[1] = q.y;
  } else if constexpr (kN == 2) {
    const uint32_t q = *reinterpret_cast<const uint32_t*>(p);
    v[0] = from_bits16(q & 0xffffu, static_cast<T*>(nullptr));
    v[1] = from_bits16(q >> 16, static_cast<T*>(nullptr));
  } else if constexpr (sizeof(T) == 4) {
    const float4 q = *reinterpret_cast<const float4*>(p);
    v[0] = q.x, v[1] = q.y, v[2] = q.z, v[3] = q.w;
  } else {
    const uint2 q = *reinterpret_cast<const uint2*>(p);
    v[0] = from_bits16(q.x & 0xffffu, static_cast<T*>(nullptr));
    v[1] = from_bits16(q.x >> 16, static_cast<T*>(nullptr));
    v[2] = from_bits16(q.y & 0xffffu, static_cast<T*>(nullptr));
    v[3] = from_bits16(q.y >> 16, static_cast<T*>(nullptr));
  }
}

template <int kN, typename T>
__device__ __forceinline__ void store_n(T* p, const float (&v)[kN]) {
  static_assert(kN == 1 || kN == 4, "scalar or four");
  if constexpr (kN == 1) {
    *p = from_f32<T>(v[0]);
  } else if constexpr (sizeof(T) == 4) {
    *reinterpret_cast<float4*>(p) = make_float4(v[0], v[1], v[2], v[3]);
  } else {
    uint2 q;
    q.x = bits16(from_f32<T>(v[0])) | (bits16(from_f32<T>(v[1])) << 16);
    q.y = bits16(from_f32<T>(v[2])) | (bits16(from_f32<T>(v[3])) << 16);
    *reinterpret_cast<uint2*>(p) = q;
  }
}

// Element i of a tensor whose dtype is a run-time value.
__device__ __forceinline__ float load_dyn(const void* p, DevDType t, int64_t i) {
  switch (t) {
    case DevDType::kF16: return to_f32(static_cast<const __half*>(p)[i]);
    case DevDType::kBF16: return to_f32(static_cast<const __nv_bfloat16*>(p)[i]);
    default: return static_cast<const float*>(p)[i];
  }
}

__device__ __forceinline__ void store_dyn(void* p, DevDType t, int64_t i, float v) {
  switch (t) {
    case DevDType::kF16: static_cast<__half*>(p)[i] = from_f32<__half>(v); break;
    case DevDType::kBF16: static_cast<__nv_bfloat16*>(p)[i] = from_f32<__nv_bfloat16>(v); break;
    default: static_cast<float*>(p)[i] = v; break;
  }
}

}  // namespace elem

// Host side: element size and validity of a DevDType, pointer alignment.
inline size_t dev_elem_bytes(DevDType t) { return t == DevDType::kF32 ? 4 : 2; }
inline bool dev_dtype_ok(DevDType t) { return t == DevDType::kF32 || t == DevDType::kF16 || t == DevDType::kBF16; }
inline bool ptr_aligned(const void* p, size_t bytes) { return reinterpret_cast<uintptr_t>(p) % bytes == 0; }

// flash-attention style dispatch of a run-time dtype onto a type alias of the body.
#define MOE_DTYPE_SWITCH(dtype, TName, ...)                      \
  [&]() -> cudaError_t {                                         \
    switch (dtype) {                                             \
      case ::moe::DevDType::kF32: {                              \
        using TName = float;                                     \
        return __VA_ARGS__();                                    \
      }                                                          \
      case ::moe::DevDType::kF16: {                              \
        using TName = __half;                                    \
        return __VA_ARGS__();                                    \
      }                                                          \
      case ::moe::DevDType::kBF16: {                             \
        using TName = __nv_bfloat16;                             \
        return __VA_ARGS__();                                    \
      }                                                          \
    }                                                            \
    return cudaErrorInvalidValue;                                \
  }()

}  // namespace moe
