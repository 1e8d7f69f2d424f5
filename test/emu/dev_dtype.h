// test/emu/dev_dtype.h: host-side helpers for the device element types (moe::DevDType) shared by
// the kernel tests: names, sizes, rounding to a type and reading/writing elements of one.
// Include after cuda_compat.cuh and launchers.h.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstddef>

namespace emu_test {

inline const char* dtype_name(moe::DevDType t) {
  switch (t) {
    case moe::DevDType::kF32: return "f32";
    case moe::DevDType::kF16: return "f16";
    case moe::DevDType::kBF16: return "bf16";
  }
  return "?";
}

inline size_t elem_bytes(moe::DevDType t) { return t == moe::DevDType::kF32 ? 4 : 2; }

// The value v rounds to in dtype t (nearest even), as a float.
inline float round_to(float v, moe::DevDType t) {
  switch (t) {
    case moe::DevDType::kF32: return v;
    case moe::DevDType::kF16: return __half2float(__float2half_rn(v));
    case moe::DevDType::kBF16: return __bfloat162float(__float2bfloat16_rn(v));
  }
  return v;
}

// Writes v, rounded to nearest even, in dtype t at dst[i].
inline void store_as(void* dst, size_t i, float v, moe::DevDType t) {
  switch (t) {
    case moe::DevDType::kF32: static_cast<float*>(dst)[i] = v; break;
    case moe::DevDType::kF16: static_cast<__half*>(dst)[i] = __float2half_rn(v); break;
    case moe::DevDType::kBF16: static_cast<__nv_bfloat16*>(dst)[i] = __float2bfloat16_rn(v); break;
  }
}

inline float load_as(const void* src, size_t i, moe::DevDType t) {
  switch (t) {
    case moe::DevDType::kF32: return static_cast<const float*>(src)[i];
    case moe::DevDType::kF16: return __half2float(static_cast<const __half*>(src)[i]);
    case moe::DevDType::kBF16: return __bfloat162float(static_cast<const __nv_bfloat16*>(src)[i]);
  }
  return 0;
}

}  // namespace emu_test
