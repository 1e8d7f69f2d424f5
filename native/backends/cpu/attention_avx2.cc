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

// For G heads g (weights e + g*e_stride, accumulators acc + g*hd): acc[g][i0, i0 + 8*NV) +=
// sum_j e_g[j] * v[j][...], NV and G known at compile time so that the accumulators stay in
// registers and the heads share each value row's loads; each head gets the same FMAs in the same
// order as the general loop below.
template <int W, int NV, int G = 1>
void weighted_pass(const float* e, int64_t e_stride, const uint8_t* vb, int64_t n, int64_t hd, int64_t i0, float* acc) {
  const size_t stride = size_t(hd) * (W == 0 ? 4 : 2);
  __m256 a[G][NV];
  for (int g = 0; g < G; ++g)
    for (int x = 0; x < NV; ++x) a[g][x] = _mm256_loadu_ps(acc + g * hd + i0 + 8 * x);
  for (int64_t j = 0; j < n; ++j) {
    const uint8_t* r = vb + size_t(j) * stride;
    __m256 vx[NV];
    for (int x = 0; x < NV; ++x) vx[x] = load8<W>(r, i0 + 8 * x);
    for (int g = 0; g < G; ++g) {
      const __m256 ej = _mm256_set1_ps(e[g * e_stride + j]);
      for (int x = 0; x < NV; ++x) a[g][x] = _mm256_fmadd_ps(ej, vx[x], a[g][x]);
    }
  }
  for (int g = 0; g < G; ++g)
    for (int x = 0; x < NV; ++x) _mm256_storeu_ps(acc + g * hd + i0 + 8 * x, a[g][x]);
}

template <int W>
void weighted_sum_t(const float* e, const void* v, int64_t n, int64_t hd, float* acc) {
  const int64_t hd8 = hd / 8 * 8;
  const size_t es = W == 0 ? 4 : 2;
  const uint8_t* vb = static_cast<const uint8_t*>(v);
  constexpr int64_t kBlock = 64;  // floats of acc kept in registers per pass (8 ymm)
  for (int64_t i0 = 0; i0 < hd8; i0 += kBlock) {
    const int64_t i1 = std::min(hd8, i0 + kBlock);
    switch ((i1 - i0) / 8) {  // head dims 32, 64, 128, 256: registers
      case 4: weighted_pass<W, 4>(e, 0, vb, n, hd, i0, acc); continue;
      case 8: weighted_pass<W, 8>(e, 0, vb, n, hd, i0, acc); continue;
      default: break;
    }
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

// The group's heads together where their accumulators fit 12 ymm (head dim 8/16/32 with few heads);
// otherwise head by head.
template <int W>
void weighted_sum_heads_t(const float* e, int64_t e_stride, int heads, const void* v, int64_t n, int64_t hd, float* acc) {
  const uint8_t* vb = static_cast<const uint8_t*>(v);
  if (hd % 8 == 0) {
    const int nv = int(hd / 8);
#define MOE_HEADS(NV, G) \
  if (nv == NV && heads == G) return weighted_pass<W, NV, G>(e, e_stride, vb, n, hd, 0, acc);
    MOE_HEADS(1, 2) MOE_HEADS(1, 4) MOE_HEADS(1, 8) MOE_HEADS(2, 2) MOE_HEADS(2, 4) MOE_HEADS(4, 2)
#undef MOE_HEADS
  }
  for (int g = 0; g < heads; ++g) weighted_sum_t<W>(e + g * e_stride, v, n, hd, acc + g * hd);
}

void weighted_sum_heads(const float* e, int64_t e_stride, int heads, const void* v, DType t, int64_t n, int64_t hd, float* acc) {
  if (t == DType::kF32) weighted_sum_heads_t<0>(e, e_stride, heads, v, n, hd, acc);
  else if (t == DType::kF16) weighted_sum_heads_t<1>(e, e_stride, heads, v, n, hd, acc);
  else weighted_sum_heads_t<2>(e, e_stride, heads, v, n, hd, acc);
}

}  // namespace

const AttnKernels& attn_avx2_kernels() {
  static const AttnKernels k = {scores, weighted_sum, weighted_sum_heads};
  return k;
}

}  // namespace cpu
}  // namespace moe
