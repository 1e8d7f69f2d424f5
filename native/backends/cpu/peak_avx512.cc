// AVX-512 kernels of the machine-peak measurements (moe/peak.h) for the avx512 and avx512-bf16
// tables: a streaming sum of zmm loads into four independent accumulators over 1..8 streams, and
// twelve independent _mm512_fmadd_ps chains held in registers (12 >= FMA latency x FMA ports on
// current x86 cores). Compiled with the avx512 flags; only reached after the run-time check.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"  // GCC 12, inside its AVX-512 intrinsics (their
#pragma GCC diagnostic ignored "-Wuninitialized"        // undefined pass-through vectors)
#include <immintrin.h>

#include "peak.h"
#include "zmm_reduce_inl.h"

namespace moe {
namespace peak_detail {

using cpu::hsum_zmm;

float sum_avx512(const float* p, int64_t n, int streams, bool prefetch) {
  static_assert(kSumBlockFloats == 4 * 16, "one block is one load into each of 4 accumulators");
  __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
  const int64_t part = n / streams;
  for (int64_t i = 0; i < part; i += kSumBlockFloats)
    for (int s = 0; s < streams; ++s) {
      const float* q = p + s * part + i;
      if (prefetch)  // 4 KiB ahead, every line of the block
        for (int l = 0; l < 4; ++l) _mm_prefetch(reinterpret_cast<const char*>(q + 1024 + 16 * l), _MM_HINT_T0);
      a0 = _mm512_add_ps(a0, _mm512_load_ps(q + 0));
      a1 = _mm512_add_ps(a1, _mm512_load_ps(q + 16));
      a2 = _mm512_add_ps(a2, _mm512_load_ps(q + 32));
      a3 = _mm512_add_ps(a3, _mm512_load_ps(q + 48));
    }
  return hsum_zmm(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
}

float fma_chains_avx512(int64_t iters) {
  static_assert(kFmaChains == 12, "the chains below are written out by hand");
  // As fma_chains_avx2: acc = acc * m + c converges to 1, and every chain starts from its own value
  // (equal chains are provably equal, and the compiler then keeps one).
  const __m512 m = _mm512_set1_ps(0.999f), c = _mm512_set1_ps(0.001f);
  const __m512 step = _mm512_set1_ps(1.0f / 64);
  __m512 a0 = _mm512_set1_ps(0.5f), a1 = _mm512_add_ps(a0, step), a2 = _mm512_add_ps(a1, step);
  __m512 a3 = _mm512_add_ps(a2, step), a4 = _mm512_add_ps(a3, step), a5 = _mm512_add_ps(a4, step);
  __m512 a6 = _mm512_add_ps(a5, step), a7 = _mm512_add_ps(a6, step), a8 = _mm512_add_ps(a7, step);
  __m512 a9 = _mm512_add_ps(a8, step), a10 = _mm512_add_ps(a9, step), a11 = _mm512_add_ps(a10, step);
  for (int64_t i = 0; i < iters; ++i) {
    a0 = _mm512_fmadd_ps(a0, m, c);
    a1 = _mm512_fmadd_ps(a1, m, c);
    a2 = _mm512_fmadd_ps(a2, m, c);
    a3 = _mm512_fmadd_ps(a3, m, c);
    a4 = _mm512_fmadd_ps(a4, m, c);
    a5 = _mm512_fmadd_ps(a5, m, c);
    a6 = _mm512_fmadd_ps(a6, m, c);
    a7 = _mm512_fmadd_ps(a7, m, c);
    a8 = _mm512_fmadd_ps(a8, m, c);
    a9 = _mm512_fmadd_ps(a9, m, c);
    a10 = _mm512_fmadd_ps(a10, m, c);
    a11 = _mm512_fmadd_ps(a11, m, c);
  }
  const __m512 s = _mm512_add_ps(
      _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)),
                    _mm512_add_ps(_mm512_add_ps(a4, a5), _mm512_add_ps(a6, a7))),
      _mm512_add_ps(_mm512_add_ps(a8, a9), _mm512_add_ps(a10, a11)));
  return hsum_zmm(s);
}

}  // namespace peak_detail
}  // namespace moe
