// SwiGLU of GEMM1 tiles on ymm, shared by the AVX2 and AVX-512 tables (include only from
// files compiled with at least -mavx2 -mfma; internal linkage, so each ISA's copy stays its own).
#pragma once
#include <immintrin.h>

#include "gemm_kernels.h"

namespace moe {
namespace cpu {
namespace {

// exp(x) for f32 lanes, about 1 ulp: x = n ln2 + r with |r| <= ln2/2 (ln2 split in two parts so
// n*ln2 is exact), exp(r) by the Cephes degree-7 polynomial, 2^n built in the exponent field.
// x is clamped to the range where 2^n stays a normal number; silu only needs exp of -a, where the
// clamp turns overflow into a huge finite value (silu -> -0) and underflow into ~1e-38 (silu -> a).
// The constants of that exp, shared with the zmm copy (swiglu_zmm_inl.h, exp512) so that the two
// widths compute the same bits.
namespace exp_poly {
constexpr float kMaxArg = 88.0f;    // n <= 127
constexpr float kMinArg = -87.0f;   // n >= -126
constexpr float kLog2e = 1.44269504088896341f;
constexpr float kLn2Hi = 0.693359375f;  // exactly representable with few mantissa bits
constexpr float kLn2Lo = -2.12194440e-4f;
constexpr float kC[6] = {1.9875691500e-4f, 1.3981999507e-3f, 8.3334519073e-3f, 4.1665795894e-2f, 1.6666665459e-1f, 5.0000001201e-1f};
constexpr int kExpBias = 127, kMantBits = 23;
}  // namespace exp_poly

inline __m256 exp256(__m256 x) {
  using namespace exp_poly;
  x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(kMinArg)), _mm256_set1_ps(kMaxArg));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(kLog2e)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(kLn2Hi), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(kLn2Lo), r);
  __m256 p = _mm256_set1_ps(kC[0]);
  for (int i = 1; i < 6; ++i) p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(kC[i]));
  p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
  const __m256i e = _mm256_slli_epi32(
      _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(kExpBias)), kMantBits);
  return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

// silu(gate) * up for the kGateCols gate values c[0..8) and up values c[8..16) of a tile row.
inline __m256 swiglu_row(const float* c) {
  static_assert(kGateCols == 8, "one ymm of gate and one of up values per row");
  const __m256 g = _mm256_loadu_ps(c);
  const __m256 u = _mm256_loadu_ps(c + kGateCols);
  const __m256 denom = _mm256_add_ps(_mm256_set1_ps(1.0f), exp256(_mm256_xor_ps(g, _mm256_set1_ps(-0.0f))));  // 1 + exp(-g)
  return _mm256_mul_ps(_mm256_div_ps(g, denom), u);
}

// The f32 SwiGLU epilogue (GemmKernels::swiglu) of the AVX2 and AVX-512 tables.
inline void swiglu_tile(int rows, const float* c, float* h) {
  for (int i = 0; i < rows; ++i) {
    alignas(32) float v[kGateCols];
    _mm256_store_ps(v, swiglu_row(c + i * kNR));
    for (int j = 0; j < kGateCols; ++j) h[j * kMR + i] = v[j];
  }
}

}  // namespace
}  // namespace cpu
}  // namespace moe
