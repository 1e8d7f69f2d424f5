// The bf16 dot peak (moe/peak.h, measure_bf16_dot_peak): twelve independent _mm512_dpbf16_ps
// chains held in registers, each instruction 16 lanes x 2 bf16 products added into f32 (64
// flops). Compiled with the avx512 flags plus -mavx512bf16; only reached after the run-time check.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"  // GCC 12, inside its AVX-512 intrinsics (their
#pragma GCC diagnostic ignored "-Wuninitialized"        // undefined pass-through vectors)
#include <immintrin.h>

#include "peak.h"
#include "zmm_reduce_inl.h"

namespace moe {
namespace peak_detail {

using cpu::hsum_zmm;

float bf16_dot_chains_avx512bf16(int64_t iters) {
  static_assert(kFmaChains == 12, "the chains below are written out by hand");
  // acc += a . b with a small fixed pair (a, b): the accumulators grow by 2^-20 per step and stay
  // normal and finite for any run. Every chain starts from its own value, so none can be merged.
  const __m512bh a = (__m512bh)_mm512_set1_epi32(0x3a803a80);  // bf16 pair (2^-10, 2^-10)
  const __m512bh b = (__m512bh)_mm512_set1_epi32(0x3a803a80);
  const __m512 step = _mm512_set1_ps(1.0f / 64);
  __m512 a0 = _mm512_set1_ps(0.5f), a1 = _mm512_add_ps(a0, step), a2 = _mm512_add_ps(a1, step);
  __m512 a3 = _mm512_add_ps(a2, step), a4 = _mm512_add_ps(a3, step), a5 = _mm512_add_ps(a4, step);
  __m512 a6 = _mm512_add_ps(a5, step), a7 = _mm512_add_ps(a6, step), a8 = _mm512_add_ps(a7, step);
  __m512 a9 = _mm512_add_ps(a8, step), a10 = _mm512_add_ps(a9, step), a11 = _mm512_add_ps(a10, step);
  for (int64_t i = 0; i < iters; ++i) {
    a0 = _mm512_dpbf16_ps(a0, a, b);
    a1 = _mm512_dpbf16_ps(a1, a, b);
    a2 = _mm512_dpbf16_ps(a2, a, b);
    a3 = _mm512_dpbf16_ps(a3, a, b);
    a4 = _mm512_dpbf16_ps(a4, a, b);
    a5 = _mm512_dpbf16_ps(a5, a, b);
    a6 = _mm512_dpbf16_ps(a6, a, b);
    a7 = _mm512_dpbf16_ps(a7, a, b);
    a8 = _mm512_dpbf16_ps(a8, a, b);
    a9 = _mm512_dpbf16_ps(a9, a, b);
    a10 = _mm512_dpbf16_ps(a10, a, b);
    a11 = _mm512_dpbf16_ps(a11, a, b);
  }
  const __m512 s = _mm512_add_ps(
      _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)),
                    _mm512_add_ps(_mm512_add_ps(a4, a5), _mm512_add_ps(a6, a7))),
      _mm512_add_ps(_mm512_add_ps(a8, a9), _mm512_add_ps(a10, a11)));
  return hsum_zmm(s);
}

}  // namespace peak_detail
}  // namespace moe
