// Small row helpers of the CPU model ops: widening a row of any float type to f32, storing an f32
// row to any float type, and f32 reductions in one fixed order (8 interleaved partial sums, then a
// fixed tree), so a result does not depend on threads and the compiler may vectorise the lanes.
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstring>

#include "moe/dtype.h"

namespace moe {
namespace cpu {

inline void load_row(const void* src, DType t, size_t offset, int64_t n, float* dst) {
  if (t == DType::kF32) {
    std::memcpy(dst, static_cast<const float*>(src) + offset, size_t(n) * sizeof(float));
    return;
  }
  const uint16_t* s = static_cast<const uint16_t*>(src) + offset;
  if (t == DType::kBF16)
    for (int64_t i = 0; i < n; ++i) dst[i] = bf16_to_f32(s[i]);
  else
    for (int64_t i = 0; i < n; ++i) dst[i] = f16_to_f32(s[i]);
}

inline void store_row(void* dst, DType t, size_t offset, int64_t n, const float* src) {
  if (t == DType::kF32) {
    std::memcpy(static_cast<float*>(dst) + offset, src, size_t(n) * sizeof(float));
    return;
  }
  uint16_t* d = static_cast<uint16_t*>(dst) + offset;
  if (t == DType::kBF16)
    for (int64_t i = 0; i < n; ++i) d[i] = f32_to_bf16(src[i]);
  else
    for (int64_t i = 0; i < n; ++i) d[i] = f32_to_f16(src[i]);
}

constexpr int kLanes = 8;

inline float reduce_lanes(const float* s) {
  return ((s[0] + s[4]) + (s[1] + s[5])) + ((s[2] + s[6]) + (s[3] + s[7]));
}

// sum_i a[i] * b[i]: lane l sums the i = l (mod 8), in i order; tail into lane i mod 8.
inline float dot(const float* a, const float* b, int64_t n) {
  float s[kLanes] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int l = 0; l < kLanes; ++l) s[l] += a[i + l] * b[i + l];
  for (int l = 0; i < n; ++i, ++l) s[l] += a[i] * b[i];
  return reduce_lanes(s);
}

// The per-row math of RMS norm, one family per kernel table (token_ops.cc picks it): the portable
// one is the 8-lane order of dot() (also used by avx2-fma, compiled for baseline x86-64), the
// AVX-512 one sums 16 lanes and reduces them in a fixed tree.
struct RowKernels {
  float (*sum_squares)(const float* x, int64_t n);            // sum_i x[i]^2, fixed order
  void (*scale)(float* x, float r, const float* w, int64_t n);  // x[i] = (x[i] * r) * w[i]
};
const RowKernels& row_avx512_kernels();  // only when cpu_can_run(CpuKernel::kAvx512)

}  // namespace cpu
}  // namespace moe
