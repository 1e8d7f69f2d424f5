// SwiGLU of GEMM1 tiles on zmm, for the avx512 and avx512-bf16 tables: two tile rows per zmm
// (lanes 0-7 one row's kGateCols columns, lanes 8-15 the next row's), and a full tile's transpose
// into its micro-panel done with permutes instead of 48 scalar stores. Lane by lane the arithmetic
// is swiglu_avx2_inl.h's (the same exp polynomial, rounding and division), so the results are its
// bits. Include only from files compiled with the AVX-512 flags (internal linkage).
#pragma once
#include <immintrin.h>

#include <cstdint>

#include "gemm_kernels.h"
#include "swiglu_avx2_inl.h"

namespace moe {
namespace cpu {
namespace {

// exp256 (swiglu_avx2_inl.h) on 16 lanes, operation for operation, with its constants.
inline __m512 exp512(__m512 x) {
  using namespace exp_poly;
  x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(kMinArg)), _mm512_set1_ps(kMaxArg));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(kLog2e)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(kLn2Hi), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(kLn2Lo), r);
  __m512 p = _mm512_set1_ps(kC[0]);
  for (int i = 1; i < 6; ++i) p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(kC[i]));
  p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
  const __m512i e = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(kExpBias)), kMantBits);
  return _mm512_mul_ps(p, _mm512_castsi512_ps(e));
}

// silu(gate) * up of tile rows i and i + 1 (c points at row i): swiglu_row of each, in one zmm.
inline __m512 swiglu_rows2(const float* c) {
  static_assert(kGateCols == 8 && kNR == 16, "a tile row is 8 gate then 8 up values");
  const __m512 g = _mm512_insertf32x8(_mm512_castps256_ps512(_mm256_loadu_ps(c)), _mm256_loadu_ps(c + kNR), 1);
  const __m512 u = _mm512_insertf32x8(_mm512_castps256_ps512(_mm256_loadu_ps(c + kGateCols)), _mm256_loadu_ps(c + kNR + kGateCols), 1);
  const __m512 denom = _mm512_add_ps(_mm512_set1_ps(1.0f), exp512(_mm512_xor_ps(g, _mm512_set1_ps(-0.0f))));
  return _mm512_mul_ps(_mm512_div_ps(g, denom), u);
}

// v [rows][kGateCols] of SwiGLU values, row-major (v[i*8 + j]).
inline void swiglu_values(int rows, const float* c, float* v) {
  int i = 0;
  for (; i + 2 <= rows; i += 2) _mm512_storeu_ps(v + i * kGateCols, swiglu_rows2(c + i * kNR));
  if (i < rows) _mm256_storeu_ps(v + i * kGateCols, swiglu_row(c + i * kNR));
}

// The f32 SwiGLU epilogue (GemmKernels::swiglu): h[j*kMR + i] = v[i*8 + j]. A full tile (6 rows)
// is 48 contiguous floats of h, each output vector gathered from the three vectors of v by two
// permutes and a blend.
inline void swiglu_tile_zmm(int rows, const float* c, float* h) {
  static_assert(kMR == 6 && kGateCols == 8, "the transpose below is 6 x 8");
  alignas(64) float v[kMR * kGateCols];
  swiglu_values(rows, c, v);
  if (rows < kMR) {
    for (int i = 0; i < rows; ++i)
      for (int j = 0; j < kGateCols; ++j) h[j * kMR + i] = v[i * kGateCols + j];
    return;
  }
  // output m = 16*o + l is h[j*6 + i] = v[i*8 + j], j = m / 6, i = m % 6: a lane of (a, b) when
  // that index is below 32, else lane index - 32 of c
  struct Plan {
    int32_t idx[3][16];
    uint16_t from_c[3];
  };
  static constexpr Plan plan = [] {
    Plan p{};
    for (int m = 0; m < 48; ++m) {
      const int src = (m % kMR) * kGateCols + m / kMR;
      p.idx[m / 16][m % 16] = src & 31;
      if (src >= 32) p.from_c[m / 16] = uint16_t(p.from_c[m / 16] | (1u << (m % 16)));
    }
    return p;
  }();
  const __m512 a = _mm512_load_ps(v), b = _mm512_load_ps(v + 16), c2 = _mm512_load_ps(v + 32);
  for (int o = 0; o < 3; ++o) {
    const __m512i ix = _mm512_loadu_si512(plan.idx[o]);
    const __m512 ab = _mm512_permutex2var_ps(a, ix, b);
    const __m512 fc = _mm512_permutexvar_ps(ix, c2);
    _mm512_storeu_ps(h + 16 * o, _mm512_mask_blend_ps(__mmask16(plan.from_c[o]), ab, fc));
  }
}

}  // namespace
}  // namespace cpu
}  // namespace moe
