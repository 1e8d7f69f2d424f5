// AVX-512 inner loops of the CPU attention (attn_kernels.h), for the avx512 and avx512-bf16 tables.
// Scores: four keys at a time (four independent FMA chains of 16 lanes over the head dim, the tail
// of a head dim that is not a multiple of 16 through masked loads, then a fixed horizontal sum);
// the weighted sum: the head dim in registers of 16 (up to 8 zmm at a time), one FMA per value
// row. The cache's f16/bf16 rows are widened in registers (exact), so both tables compute attention
// on f32 activations. Compiled with the avx512 flags; only reached after the run-time check.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"  // GCC 12, inside its AVX-512 intrinsics (their
#pragma GCC diagnostic ignored "-Wuninitialized"        // undefined pass-through vectors)
#include <immintrin.h>

#include <algorithm>

#include "attn_kernels.h"
#include "zmm_reduce_inl.h"

namespace moe {
namespace cpu {

namespace {

// 16 lanes from element i (the first `mask` lanes when masked; the others are zero).
template <int W>  // 0: f32, 1: f16, 2: bf16
inline __m512 load16(const void* p, int64_t i, __mmask16 mask = 0xffff) {
  if constexpr (W == 0) {
    return _mm512_maskz_loadu_ps(mask, static_cast<const float*>(p) + i);
  } else {
    const __m256i h = _mm256_maskz_loadu_epi16(mask, static_cast<const uint16_t*>(p) + i);
    if constexpr (W == 1) return _mm512_cvtph_ps(h);
    else return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
  }
}

constexpr int kKeys = 4;  // keys per step of the scores loop

template <int W>
void scores_t(const float* q, const void* k, int64_t n, int64_t hd, float scale, float* out) {
  const int64_t hd16 = hd / 16 * 16;
  const __mmask16 tail = __mmask16((1u << (hd - hd16)) - 1);
  const size_t es = W == 0 ? 4 : 2;
  const uint8_t* kb = static_cast<const uint8_t*>(k);
  auto row = [&](int64_t j) { return kb + size_t(j) * size_t(hd) * es; };
  int64_t j = 0;
  for (; j + kKeys <= n; j += kKeys) {
    __m512 acc[kKeys];
    for (int r = 0; r < kKeys; ++r) acc[r] = _mm512_setzero_ps();
    for (int64_t i = 0; i < hd16; i += 16) {
      const __m512 qv = _mm512_loadu_ps(q + i);
      for (int r = 0; r < kKeys; ++r) acc[r] = _mm512_fmadd_ps(qv, load16<W>(row(j + r), i), acc[r]);
    }
    if (tail) {
      const __m512 qv = _mm512_maskz_loadu_ps(tail, q + hd16);
      for (int r = 0; r < kKeys; ++r) acc[r] = _mm512_fmadd_ps(qv, load16<W>(row(j + r), hd16, tail), acc[r]);
    }
    for (int r = 0; r < kKeys; ++r) out[j + r] = hsum_zmm(acc[r]) * scale;
  }
  for (; j < n; ++j) {  // the same chain as above, one key
    __m512 acc = _mm512_setzero_ps();
    for (int64_t i = 0; i < hd16; i += 16) acc = _mm512_fmadd_ps(_mm512_loadu_ps(q + i), load16<W>(row(j), i), acc);
    if (tail) acc = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(tail, q + hd16), load16<W>(row(j), hd16, tail), acc);
    out[j] = hsum_zmm(acc) * scale;
  }
}

// For G heads g (weights e + g*e_stride, accumulators acc + g*hd): acc[g][i0, i0 + 16*NV) +=
// sum_j e_g[j] * v[j][...]. NV and G known at compile time, so the accumulators stay in registers
// (a runtime count kept them in memory: a store-to-load round trip on every FMA), and the G heads
// share each value row's loads (G*NV independent FMA chains). Each head gets the same FMAs in the
// same order as the general loop below.
template <int W, int NV, int G = 1>
void weighted_pass(const float* e, int64_t e_stride, const uint8_t* vb, int64_t n, int64_t hd, int64_t i0, float* acc) {
  const size_t stride = size_t(hd) * (W == 0 ? 4 : 2);
  __m512 a[G][NV];
  for (int g = 0; g < G; ++g)
    for (int x = 0; x < NV; ++x) a[g][x] = _mm512_loadu_ps(acc + g * hd + i0 + 16 * x);
  for (int64_t j = 0; j < n; ++j) {
    const uint8_t* r = vb + size_t(j) * stride;
    __m512 vx[NV];
    for (int x = 0; x < NV; ++x) vx[x] = load16<W>(r, i0 + 16 * x);
    for (int g = 0; g < G; ++g) {
      const __m512 ej = _mm512_set1_ps(e[g * e_stride + j]);
      for (int x = 0; x < NV; ++x) a[g][x] = _mm512_fmadd_ps(ej, vx[x], a[g][x]);
    }
  }
  for (int g = 0; g < G; ++g)
    for (int x = 0; x < NV; ++x) _mm512_storeu_ps(acc + g * hd + i0 + 16 * x, a[g][x]);
}

template <int W>
void weighted_sum_t(const float* e, const void* v, int64_t n, int64_t hd, float* acc) {
  const size_t es = W == 0 ? 4 : 2;
  const uint8_t* vb = static_cast<const uint8_t*>(v);
  constexpr int64_t kBlock = 128;  // floats of acc kept in registers per pass (8 zmm)
  for (int64_t i0 = 0; i0 < hd; i0 += kBlock) {
    const int64_t i1 = std::min(hd, i0 + kBlock);
    if ((i1 - i0) % 16 == 0) {  // whole vectors (head dims 32, 64, 128, 256): registers
      switch ((i1 - i0) / 16) {
        case 1: weighted_pass<W, 1>(e, 0, vb, n, hd, i0, acc); continue;
        case 2: weighted_pass<W, 2>(e, 0, vb, n, hd, i0, acc); continue;
        case 4: weighted_pass<W, 4>(e, 0, vb, n, hd, i0, acc); continue;
        case 8: weighted_pass<W, 8>(e, 0, vb, n, hd, i0, acc); continue;
        default: break;
      }
    }
    const int nv = int((i1 - i0 + 15) / 16);
    const __mmask16 last = __mmask16((i1 - i0) % 16 ? (1u << ((i1 - i0) % 16)) - 1 : 0xffff);
    __m512 a[kBlock / 16];
    for (int x = 0; x < nv; ++x) a[x] = _mm512_maskz_loadu_ps(x == nv - 1 ? last : 0xffff, acc + i0 + 16 * x);
    for (int64_t j = 0; j < n; ++j) {
      const __m512 ej = _mm512_set1_ps(e[j]);
      const uint8_t* r = vb + size_t(j) * size_t(hd) * es;
      for (int x = 0; x < nv; ++x)
        a[x] = _mm512_fmadd_ps(ej, load16<W>(r, i0 + 16 * x, x == nv - 1 ? last : 0xffff), a[x]);
    }
    for (int x = 0; x < nv; ++x) _mm512_mask_storeu_ps(acc + i0 + 16 * x, x == nv - 1 ? last : 0xffff, a[x]);
  }
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

// The group's heads together where their accumulators fit 16 zmm (head dim 16/32/64 with 2-8 heads,
// 128 with 2); otherwise head by head.
template <int W>
void weighted_sum_heads_t(const float* e, int64_t e_stride, int heads, const void* v, int64_t n, int64_t hd, float* acc) {
  const uint8_t* vb = static_cast<const uint8_t*>(v);
  if (hd % 16 == 0) {
    const int nv = int(hd / 16);
#define MOE_HEADS(NV, G) \
  if (nv == NV && heads == G) return weighted_pass<W, NV, G>(e, e_stride, vb, n, hd, 0, acc);
    MOE_HEADS(1, 2) MOE_HEADS(1, 4) MOE_HEADS(1, 8) MOE_HEADS(2, 2) MOE_HEADS(2, 4) MOE_HEADS(2, 8)
    MOE_HEADS(4, 2) MOE_HEADS(4, 4) MOE_HEADS(8, 2)
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

const AttnKernels& attn_avx512_kernels() {
  static const AttnKernels k = {scores, weighted_sum, weighted_sum_heads};
  return k;
}

}  // namespace cpu
}  // namespace moe
