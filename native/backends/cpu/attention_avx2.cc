// AVX2/FMA/F16C inner loops of the CPU attention (attn_kernels.h). Scores: four keys at a time
// (four independent FMA chains of 8 lanes over the head dim, then a fixed horizontal sum); the
// weighted sum: the head dim in registers of 8, one FMA per value row. Compiled with -mavx2 -mfma
// -mf16c; only reached after the run-time CPU check.
#include <immintrin.h>

#include <algorithm>

#include "attn_kernels.h"

namespace moe {
namespace cpu {

namespace {

template <int W>  // 0: f32, 1: f16, 2: bf16
inline __m256 load8(const void* p, int64_t i) {
  if constexpr (W == 0) {
    return _mm256_loadu_ps(static_cast<const float*>(p) + i);
  } else {
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(static_cast<const uint16_t*>(p) + i));
    if constexpr (W == 1) return _mm256_cvtph_ps(h);
    else return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
  }
}

template <int W>
inline float load1(const void* p, int64_t i) {
  if constexpr (W == 0) return static_cast<const float*>(p)[i];
  else if constexpr (W == 1) return f16_to_f32(static_cast<const uint16_t*>(p)[i]);
  else return bf16_to_f32(static_cast<const uint16_t*>(p)[i]);
}

inline float hsum(__m256 v) {
  const __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  const __m128 t = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(t, _mm_movehdup_ps(t)));
}

constexpr int kKeys = 4;  // keys per step of the scores loop

template <int W>
void scores_t(const float* q, const void* k, int64_t n, int64_t hd, float scale, float* out) {
  const int64_t hd8 = hd / 8 * 8;
  const size_t es = W == 0 ? 4 : 2;
  const uint8_t* kb = static_cast<const uint8_t*>(k);
  auto row = [&](int64_t j) { return kb + size_t(j) * size_t(hd) * es; };
  int64_t j = 0;
  for (; j + kKeys <= n; j += kKeys) {
    __m256 acc[kKeys];
    for (int r = 0; r < kKeys; ++r) acc[r] = _mm256_setzero_ps();
    for (int64_t i = 0; i < hd8; i += 8) {
      const __m256 qv = _mm256_loadu_ps(q + i);
      for (int r = 0; r < kKeys; ++r) acc[r] = _mm256_fmadd_ps(qv, load8<W>(row(j + r), i), acc[r]);
    }
    for (int r = 0; r < kKeys; ++r) {
      float s = hsum(acc[r]);
      for (int64_t i = hd8; i < hd; ++i) s += q[i] * load1<W>(row(j + r), i);
      out[j + r] = s * scale;
    }
  }
  for (; j < n; ++j) {  // the same chain as above, one key
    __m256 acc = _mm256_setzero_ps();
    for (int64_t i = 0; i < hd8; i += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(q + i), load8<W>(row(j), i), acc);
    float s = hsum(acc);
    for (int64_t i = hd8; i < hd; ++i) s += q[i] * load1<W>(row(j), i);
    out[j] = s * scale;
  }
}

template <int W>
void weighted_sum_t(const float* e, const void* v, int64_t n, int64_t hd, float* acc) {
  const int64_t hd8 = hd / 8 * 8;
  const size_t es = W == 0 ? 4 : 2;
  const uint8_t* vb = static_cast<const uint8_t*>(v);
  constexpr int64_t kBlock = 64;  // floats of acc kept in registers per pass (8 ymm)
  for (int64_t i0 = 0; i0 < hd8; i0 += kBlock) {
    const int64_t i1 = std::min(hd8, i0 + kBlock);
    __m256 a[kBlock / 8];
    for (int64_t i = i0; i < i1; i += 8) a[(i - i0) / 8] = _mm256_loadu_ps(acc + i);
    for (int64_t j = 0; j < n; ++j) {
      const __m256 ej = _mm256_set1_ps(e[j]);
      const uint8_t* r = vb + size_t(j) * size_t(hd) * es;
      for (int64_t i = i0; i < i1; i += 8) a[(i - i0) / 8] = _mm256_fmadd_ps(ej, load8<W>(r, i), a[(i - i0) / 8]);
    }
    for (int64_t i = i0; i < i1; i += 8) _mm256_storeu_ps(acc + i, a[(i - i0) / 8]);
  }
  for (int64_t i = hd8; i < hd; ++i)
    for (int64_t j = 0; j < n; ++j) acc[i] += e[j] * load1<W>(vb + size_t(j) * size_t(hd) * es, i);
}

void scores(const float* q, const void* k, DType t, int64_t n, int64_t hd, float scale, float* out) {
  if (t == DType::kF32) scores_t<0>(q, k, n, hd, scale, out);
  else if (t == DType::kF16) scores_t<1>(q, k, n, hd, scale, out);
  else scores_t<2>(q, k, n, hd, scale, out);
}

void weighted_sum(const float* e, const void* v, DType t, int64_t n, int64_t hd, float* acc) {
  if (t == DType::kF32) weighted_sum_t<0>(e, v, n, hd, acc);
  else if (t == DType::kF16) weighted_sum_t<1>(e, v, n, hd, acc);
  else weighted_sum_t<2>(e, v, n, hd, acc);
}

}  // namespace

const AttnKernels& attn_avx2_kernels() {
  static const AttnKernels k = {scores, weighted_sum};
  return k;
}

}  // namespace cpu
}  // namespace moe
