// The horizontal sum of a zmm in one fixed tree (halves added down to one lane), shared by the
// AVX-512 files; include only from files compiled with the AVX-512 flags (internal linkage).
#pragma once
#include <immintrin.h>

namespace moe {
namespace cpu {
namespace {

inline float hsum_zmm(__m512 v) {
  const __m256 a = _mm256_add_ps(_mm512_castps512_ps256(v), _mm512_extractf32x8_ps(v, 1));
  __m128 b = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
  b = _mm_add_ps(b, _mm_movehl_ps(b, b));
  return _mm_cvtss_f32(_mm_add_ss(b, _mm_movehdup_ps(b)));
}

}  // namespace
}  // namespace cpu
}  // namespace moe
