// AVX2/FMA kernels of the machine-peak measurements (moe/peak.h): a streaming sum with eight
// independent accumulators over 1..8 streams, and twelve independent _mm256_fmadd_ps chains held in registers
// (12 >= FMA latency x FMA ports on current x86 cores, so the chains never wait on each other).
// Compiled with -mavx2 -mfma; only reached after the run-time CPU check.
#include <immintrin.h>

#include "peak.h"

namespace moe {
namespace peak_detail {

namespace {
inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
  return _mm_cvtss_f32(s);
}
}  // namespace

float sum_avx2(const float* p, int64_t n, int streams, bool prefetch) {
  static_assert(kSumBlockFloats == 8 * 8, "one block is one load into each of 8 accumulators");
  __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0;
  const int64_t part = n / streams;
  for (int64_t i = 0; i < part; i += kSumBlockFloats)
    for (int s = 0; s < streams; ++s) {
      const float* q = p + s * part + i;
      if (prefetch)  // 4 KiB ahead, every line of the block
        for (int l = 0; l < 4; ++l) _mm_prefetch(reinterpret_cast<const char*>(q + 1024 + 16 * l), _MM_HINT_T0);
      a0 = _mm256_add_ps(a0, _mm256_load_ps(q + 0));
      a1 = _mm256_add_ps(a1, _mm256_load_ps(q + 8));
      a2 = _mm256_add_ps(a2, _mm256_load_ps(q + 16));
      a3 = _mm256_add_ps(a3, _mm256_load_ps(q + 24));
      a4 = _mm256_add_ps(a4, _mm256_load_ps(q + 32));
      a5 = _mm256_add_ps(a5, _mm256_load_ps(q + 40));
      a6 = _mm256_add_ps(a6, _mm256_load_ps(q + 48));
      a7 = _mm256_add_ps(a7, _mm256_load_ps(q + 56));
    }
  a0 = _mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3));
  a4 = _mm256_add_ps(_mm256_add_ps(a4, a5), _mm256_add_ps(a6, a7));
  return hsum(_mm256_add_ps(a0, a4));
}

float fma_chains_avx2(int64_t iters) {
  static_assert(kFmaChains == 12, "the chains below are written out by hand");
  // acc = acc * m + c converges to c / (1 - m) = 1: no overflow, no denormals, however long it runs.
  // Every chain starts from a different value: chains that start equal are provably equal, and the
  // compiler then keeps one and counts it twelve times (it did: one vfmadd in the loop).
  const __m256 m = _mm256_set1_ps(0.999f), c = _mm256_set1_ps(0.001f);
  const __m256 step = _mm256_set1_ps(1.0f / 64);
  __m256 a0 = _mm256_set1_ps(0.5f), a1 = _mm256_add_ps(a0, step), a2 = _mm256_add_ps(a1, step);
  __m256 a3 = _mm256_add_ps(a2, step), a4 = _mm256_add_ps(a3, step), a5 = _mm256_add_ps(a4, step);
  __m256 a6 = _mm256_add_ps(a5, step), a7 = _mm256_add_ps(a6, step), a8 = _mm256_add_ps(a7, step);
  __m256 a9 = _mm256_add_ps(a8, step), a10 = _mm256_add_ps(a9, step), a11 = _mm256_add_ps(a10, step);
  for (int64_t i = 0; i < iters; ++i) {
    a0 = _mm256_fmadd_ps(a0, m, c);
    a1 = _mm256_fmadd_ps(a1, m, c);
    a2 = _mm256_fmadd_ps(a2, m, c);
    a3 = _mm256_fmadd_ps(a3, m, c);
    a4 = _mm256_fmadd_ps(a4, m, c);
    a5 = _mm256_fmadd_ps(a5, m, c);
    a6 = _mm256_fmadd_ps(a6, m, c);
    a7 = _mm256_fmadd_ps(a7, m, c);
    a8 = _mm256_fmadd_ps(a8, m, c);
    a9 = _mm256_fmadd_ps(a9, m, c);
    a10 = _mm256_fmadd_ps(a10, m, c);
    a11 = _mm256_fmadd_ps(a11, m, c);
  }
  const __m256 s = _mm256_add_ps(
      _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)),
                    _mm256_add_ps(_mm256_add_ps(a4, a5), _mm256_add_ps(a6, a7))),
      _mm256_add_ps(_mm256_add_ps(a8, a9), _mm256_add_ps(a10, a11)));
  return hsum(s);
}

}  // namespace peak_detail
}  // namespace moe
