// AVX-512 row math of RMS norm (row_ops.h, RowKernels) for the avx512 and avx512-bf16 tables: the
// sum of squares in 16 lanes (tail masked) reduced in a fixed tree, the scaling 16 at a time.
// Compiled with the avx512 flags; only reached after the run-time check.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"  // GCC 12, inside its AVX-512 intrinsics (their
#pragma GCC diagnostic ignored "-Wuninitialized"        // undefined pass-through vectors)
#include <immintrin.h>

#include "row_ops.h"
#include "zmm_reduce_inl.h"

namespace moe {
namespace cpu {

namespace {

inline __mmask16 tail_mask(int64_t left) { return left >= 16 ? __mmask16(0xffff) : __mmask16((1u << left) - 1); }

float sum_squares(const float* x, int64_t n) {
  __m512 a0 = _mm512_setzero_ps(), a1 = a0;  // two chains: lanes of even and odd blocks of 16
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    const __m512 u = _mm512_loadu_ps(x + i), v = _mm512_loadu_ps(x + i + 16);
    a0 = _mm512_fmadd_ps(u, u, a0);
    a1 = _mm512_fmadd_ps(v, v, a1);
  }
  for (; i < n; i += 16) {
    const __m512 u = _mm512_maskz_loadu_ps(tail_mask(n - i), x + i);
    a0 = _mm512_fmadd_ps(u, u, a0);
  }
  return hsum_zmm(_mm512_add_ps(a0, a1));
}

void scale(float* x, float r, const float* w, int64_t n) {
  const __m512 rv = _mm512_set1_ps(r);
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 m = tail_mask(n - i);
    _mm512_mask_storeu_ps(x + i, m, _mm512_mul_ps(_mm512_mul_ps(_mm512_maskz_loadu_ps(m, x + i), rv), _mm512_maskz_loadu_ps(m, w + i)));
  }
}

}  // namespace

const RowKernels& row_avx512_kernels() {
  static const RowKernels k = {sum_squares, scale};
  return k;
}

}  // namespace cpu
}  // namespace moe
