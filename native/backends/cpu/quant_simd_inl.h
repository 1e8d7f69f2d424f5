// moe-kernels CPU backend: the x86 tables of quant_kernels.h, written once and compiled three times
// (quant_kernels_avx2.cc, quant_kernels_avxvnni.cc, quant_kernels_avx512vnni.cc), each with its own
// instruction-set flags. They differ only in dot_u8s8, the sum of four u8 x s8 products per int32
// lane: vpmaddubsw + vpmaddwd on AVX2, one vpdpbusd with VNNI. Both are exact (no operand here can
// saturate vpmaddubsw's int16: |u| <= 128 with |s| <= 127, or u <= 63), so the three tables give the
// same bits. Signed weights meet signed activations through the sign trick: |w| . (a * sign(w)).
//
// q8_0 / q4_0 accumulate per block in f32 lanes (two interleaved accumulators, summed at the end);
// the k-quants sum a super-block in integers and accumulate d * sumi - dmin * summ in scalar f32,
// exactly as the portable table does (and so give its bits).
//
// Defines before inclusion: MOE_QUANT_TABLE (the table's function name), MOE_QUANT_NAME,
// MOE_QUANT_DPBUSD (0: maddubs, 1: AVX-VNNI, 2: AVX512VL-VNNI).
#include <immintrin.h>

#include <cstring>

#include "quant_kernels.h"

namespace moe {
namespace cpu {

void quantize_act32_portable(const float* x, int64_t n, ActQ8_32* out);
void quantize_act256_portable(const float* x, int64_t n, ActQ8_256* out);

namespace {

using namespace quant;

inline __m256i dot_u8s8(__m256i acc, __m256i u, __m256i s) {
#if MOE_QUANT_DPBUSD == 1
  return _mm256_dpbusd_avx_epi32(acc, u, s);
#elif MOE_QUANT_DPBUSD == 2
  return _mm256_dpbusd_epi32(acc, u, s);
#else
  const __m256i p = _mm256_maddubs_epi16(u, s);
  return _mm256_add_epi32(acc, _mm256_madd_epi16(p, _mm256_set1_epi16(1)));
#endif
}

inline float half(uint16_t h) { return _cvtsh_ss(h); }

inline float hsum_ps(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

inline int32_t hsum_epi32(__m256i v) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xB1));
  return _mm_cvtsi128_si32(s);
}

// The k-quants' f32 steps, acc + ((d * sumi) - (dmin * summ)), each rounded on its own as in the
// portable table: scalar SSE intrinsics, which the compiler does not fuse into an FMA whatever
// -ffp-contract says (the node-gyp build compiles these files without -ffp-contract=off).
inline float kq_step(float acc, float d, int32_t sumi, float dmin, int32_t summ) {
  const __m128 p = _mm_mul_ss(_mm_set_ss(d), _mm_set_ss(float(sumi)));
  const __m128 m = _mm_mul_ss(_mm_set_ss(dmin), _mm_set_ss(float(summ)));
  return _mm_cvtss_f32(_mm_add_ss(_mm_set_ss(acc), _mm_sub_ss(p, m)));
}
// acc + (s * v), the product rounded first (q6_k)
inline float kq_step6(float acc, float s, int32_t v) {
  return _mm_cvtss_f32(_mm_add_ss(_mm_set_ss(acc), _mm_mul_ss(_mm_set_ss(s), _mm_set_ss(float(v)))));
}

inline __m256i load32(const void* p) { return _mm256_loadu_si256(static_cast<const __m256i*>(p)); }

// signed w (int8) . signed a (int8), 8 int32 lanes
inline __m256i dot_s8s8(__m256i w, __m256i a) {
  return dot_u8s8(_mm256_setzero_si256(), _mm256_sign_epi8(w, w), _mm256_sign_epi8(a, w));
}

inline __m256i q4_0_values(const uint8_t* qs) {  // 32 values q - 8, in element order
  const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(qs));
  const __m256i both = _mm256_set_m128i(_mm_srli_epi16(raw, 4), raw);
  return _mm256_sub_epi8(_mm256_and_si256(both, _mm256_set1_epi8(0x0F)), _mm256_set1_epi8(8));
}

template <bool kQ4>
float dot_b32(int64_t nb, const void* wv, const void* av) {
  const auto* a = static_cast<const ActQ8_32*>(av);
  __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
  auto block = [&](int64_t b) {
    __m256i w;
    float dw;
    if (kQ4) {
      const auto& blk = static_cast<const BlockQ4_0*>(wv)[b];
      w = q4_0_values(blk.qs), dw = half(blk.d);
    } else {
      const auto& blk = static_cast<const BlockQ8_0*>(wv)[b];
      w = load32(blk.qs), dw = half(blk.d);
    }
    const __m256i s = dot_s8s8(w, load32(a[b].q));
    return _mm256_mul_ps(_mm256_set1_ps(dw * a[b].d), _mm256_cvtepi32_ps(s));
  };
  int64_t b = 0;
  for (; b + 1 < nb; b += 2) {
    acc0 = _mm256_add_ps(acc0, block(b));
    acc1 = _mm256_add_ps(acc1, block(b + 1));
  }
  if (b < nb) acc0 = _mm256_add_ps(acc0, block(b));
  return hsum_ps(_mm256_add_ps(acc0, acc1));
}

// Unsigned values u (32 bytes, <= 31) . activations, times a per-sub-block scale given as int16 in
// every lane (scale16): vpmaddubsw then vpmaddwd, 8 int32 lanes. (With VNNI, vpdpbusd would need a
// vpmulld for the scale: two instructions either way, and this form measured faster.)
inline __m256i scaled_dot(__m256i u, __m256i s, __m256i scale16) {
  return _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), scale16);
}

// Byte-shuffle masks that broadcast int16 element j of a 128-bit lane to the whole lane.
alignas(32) constexpr uint8_t kBroadcast16[8][32] = {
#define MOE_B16(j) {2 * j, 2 * j + 1, 2 * j, 2 * j + 1, 2 * j, 2 * j + 1, 2 * j, 2 * j + 1, 2 * j, 2 * j + 1, 2 * j, 2 * j + 1, \
                    2 * j, 2 * j + 1, 2 * j, 2 * j + 1, 2 * j, 2 * j + 1, 2 * j, 2 * j + 1, 2 * j, 2 * j + 1, 2 * j, 2 * j + 1, \
                    2 * j, 2 * j + 1, 2 * j, 2 * j + 1, 2 * j, 2 * j + 1, 2 * j, 2 * j + 1}
    MOE_B16(0), MOE_B16(1), MOE_B16(2), MOE_B16(3), MOE_B16(4), MOE_B16(5), MOE_B16(6), MOE_B16(7)
#undef MOE_B16
};
inline __m256i scale_of(__m256i s16, int j) {
  return _mm256_shuffle_epi8(s16, _mm256_load_si256(reinterpret_cast<const __m256i*>(kBroadcast16[j])));
}

template <bool kFive>
float dot_qk45(int64_t nb, const void* wv, const void* av) {
  const auto* a = static_cast<const ActQ8_256*>(av);
  const __m256i m4 = _mm256_set1_epi8(0x0F), one = _mm256_set1_epi8(1);
  float acc = 0.f;
  for (int64_t b = 0; b < nb; ++b) {
    const uint8_t *scales, *qs, *qh = nullptr;
    uint16_t dh, dminh;
    if (kFive) {
      const auto& w = static_cast<const BlockQ5_K*>(wv)[b];
      scales = w.scales, qs = w.qs, qh = w.qh, dh = w.d, dminh = w.dmin;
    } else {
      const auto& w = static_cast<const BlockQ4_K*>(wv)[b];
      scales = w.scales, qs = w.qs, dh = w.d, dminh = w.dmin;
    }
    // the eight 6-bit scales and mins, four per 32-bit word (scale_min_k4 on whole words):
    // with scales[0..11] as words wa, wb, wc: sc[0..3] = wa & 63, m[0..3] = wb & 63,
    // sc[4..7] = (wc & 15) | (wa >> 6) << 4, m[4..7] = (wc >> 4) | (wb >> 6) << 4, per byte
    uint32_t wa, wb, wc;
    std::memcpy(&wa, scales, 4), std::memcpy(&wb, scales + 4, 4), std::memcpy(&wc, scales + 8, 4);
    const uint32_t words[4] = {wa & 0x3f3f3f3fu, (wc & 0x0f0f0f0fu) | ((wa >> 2) & 0x30303030u), wb & 0x3f3f3f3fu,
                               ((wc >> 4) & 0x0f0f0f0fu) | ((wb >> 2) & 0x30303030u)};
    uint8_t sm[16];  // sc[0..7], then m[0..7]
    std::memcpy(sm, words, 16);
    // the eight scales as int16, in both 128-bit lanes
    const __m256i s16 = _mm256_broadcastsi128_si256(_mm_cvtepu8_epi16(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(sm))));
    __m256i sumi = _mm256_setzero_si256();
    __m256i hb = kFive ? load32(qh) : _mm256_setzero_si256();
    const int8_t* y = a[b].q;
    for (int j = 0; j < 4; ++j, y += 64) {
      const __m256i q = load32(qs + 32 * j);
      __m256i lo = _mm256_and_si256(q, m4), hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), m4);
      if (kFive) {
        lo = _mm256_or_si256(lo, _mm256_slli_epi16(_mm256_and_si256(hb, one), 4));
        hi = _mm256_or_si256(hi, _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hb, 1), one), 4));
        hb = _mm256_srli_epi16(hb, 2);
      }
      sumi = _mm256_add_epi32(sumi, scaled_dot(lo, load32(y), scale_of(s16, 2 * j)));
      sumi = _mm256_add_epi32(sumi, scaled_dot(hi, load32(y + 32), scale_of(s16, 2 * j + 1)));
    }
    // sum_j m_j * (bsums[2j] + bsums[2j+1]): pairwise sums of the 16 bsums against the 8 mins
    const __m128i bs0 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(a[b].bsums));
    const __m128i bs1 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(a[b].bsums + 8));
    const __m128i mins16 = _mm_cvtepu8_epi16(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(sm + 8)));
    __m128i pm = _mm_madd_epi16(_mm_hadd_epi16(bs0, bs1), mins16);
    pm = _mm_add_epi32(pm, _mm_shuffle_epi32(pm, 0x4E));
    pm = _mm_add_epi32(pm, _mm_shuffle_epi32(pm, 0xB1));
    const int32_t summ = _mm_cvtsi128_si32(pm);
    const float d = half(dh) * a[b].d, dmin = half(dminh) * a[b].d;
    acc = kq_step(acc, d, hsum_epi32(sumi), dmin, summ);
  }
  return acc;
}

#if MOE_QUANT_DPBUSD == 2
// q4_k on 64-byte vectors (AVX512BW): two 64-value groups per step. Step p covers qs[64p, 64p + 64):
// its low nibbles are sub-blocks 4p (bytes 0-31) and 4p + 2 (bytes 32-63), its high nibbles 4p + 1
// and 4p + 3, whose activations are two 32-byte runs each. The same integer sums as the 256-bit
// form, the same float steps: the portable table's bits.
alignas(64) constexpr uint8_t kBroadcast16x2[4][64] = {
#define MOE_H(j) 2 * j, 2 * j + 1, 2 * j, 2 * j + 1, 2 * j, 2 * j + 1, 2 * j, 2 * j + 1, 2 * j, 2 * j + 1, 2 * j, 2 * j + 1, \
                 2 * j, 2 * j + 1, 2 * j, 2 * j + 1
#define MOE_B(a, b) {MOE_H(a), MOE_H(a), MOE_H(b), MOE_H(b)}
    MOE_B(0, 2), MOE_B(1, 3), MOE_B(4, 6), MOE_B(5, 7)
#undef MOE_B
#undef MOE_H
};

inline __m512i pair32(const int8_t* a, const int8_t* b) {
  return _mm512_inserti64x4(_mm512_castsi256_si512(load32(a)), load32(b), 1);
}

float dot_q4_k_512(int64_t nb, const void* wv, const void* av) {
  const auto* a = static_cast<const ActQ8_256*>(av);
  const __m512i m4 = _mm512_set1_epi8(0x0F);
  float acc = 0.f;
  for (int64_t b = 0; b < nb; ++b) {
    const auto& w = static_cast<const BlockQ4_K*>(wv)[b];
    uint32_t wa, wb, wc;
    std::memcpy(&wa, w.scales, 4), std::memcpy(&wb, w.scales + 4, 4), std::memcpy(&wc, w.scales + 8, 4);
    const uint32_t words[4] = {wa & 0x3f3f3f3fu, (wc & 0x0f0f0f0fu) | ((wa >> 2) & 0x30303030u), wb & 0x3f3f3f3fu,
                               ((wc >> 4) & 0x0f0f0f0fu) | ((wb >> 2) & 0x30303030u)};
    uint8_t sm[16];
    std::memcpy(sm, words, 16);
    const __m512i s16 = _mm512_broadcast_i32x4(_mm_cvtepu8_epi16(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(sm))));
    const int8_t* y = a[b].q;
    __m512i sumi = _mm512_setzero_si512();
    for (int p = 0; p < 2; ++p, y += 128) {
      const __m512i q = _mm512_loadu_si512(w.qs + 64 * p);
      const __m512i lo = _mm512_and_si512(q, m4), hi = _mm512_and_si512(_mm512_srli_epi16(q, 4), m4);
      const __m512i slo = _mm512_shuffle_epi8(s16, _mm512_load_si512(kBroadcast16x2[2 * p]));
      const __m512i shi = _mm512_shuffle_epi8(s16, _mm512_load_si512(kBroadcast16x2[2 * p + 1]));
      sumi = _mm512_add_epi32(sumi, _mm512_madd_epi16(_mm512_maddubs_epi16(lo, pair32(y, y + 64)), slo));
      sumi = _mm512_add_epi32(sumi, _mm512_madd_epi16(_mm512_maddubs_epi16(hi, pair32(y + 32, y + 96)), shi));
    }
    const __m128i bs0 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(a[b].bsums));
    const __m128i bs1 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(a[b].bsums + 8));
    const __m128i mins16 = _mm_cvtepu8_epi16(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(sm + 8)));
    __m128i pm = _mm_madd_epi16(_mm_hadd_epi16(bs0, bs1), mins16);
    pm = _mm_add_epi32(pm, _mm_shuffle_epi32(pm, 0x4E));
    pm = _mm_add_epi32(pm, _mm_shuffle_epi32(pm, 0xB1));
    const int32_t summ = _mm_cvtsi128_si32(pm);
    const __m256i s256 = _mm256_add_epi32(_mm512_castsi512_si256(sumi), _mm512_extracti64x4_epi64(sumi, 1));
    const float d = half(w.d) * a[b].d, dmin = half(w.dmin) * a[b].d;
    acc = kq_step(acc, d, hsum_epi32(s256), dmin, summ);
  }
  return acc;
}
#define MOE_DOT_Q4_K dot_q4_k_512
#else
#define MOE_DOT_Q4_K dot_qk45<false>
#endif

float dot_q6_k(int64_t nb, const void* wv, const void* av) {
  const auto* w = static_cast<const BlockQ6_K*>(wv);
  const auto* a = static_cast<const ActQ8_256*>(av);
  const __m256i m4 = _mm256_set1_epi8(0x0F), m2 = _mm256_set1_epi8(3);
  float acc = 0.f;
  for (int64_t b = 0; b < nb; ++b) {
    __m256i sumi = _mm256_setzero_si256();
    int32_t corr = 0;
    for (int n = 0; n < 2; ++n) {
      const uint8_t* ql = w[b].ql + 64 * n;
      const __m256i l0 = load32(ql), l1 = load32(ql + 32), h = load32(w[b].qh + 32 * n);
      const __m256i q[4] = {
          _mm256_or_si256(_mm256_and_si256(l0, m4), _mm256_slli_epi16(_mm256_and_si256(h, m2), 4)),
          _mm256_or_si256(_mm256_and_si256(l1, m4), _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(h, 2), m2), 4)),
          _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l0, 4), m4),
                          _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(h, 4), m2), 4)),
          _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), m4),
                          _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(h, 6), m2), 4)),
      };
      const int8_t* sc = w[b].scales + 8 * n;
      for (int i = 0; i < 4; ++i) {
        const __m256i s = load32(a[b].q + 128 * n + 32 * i);
#if MOE_QUANT_DPBUSD
        const __m256i scale = _mm256_set_epi32(sc[2 * i + 1], sc[2 * i + 1], sc[2 * i + 1], sc[2 * i + 1], sc[2 * i], sc[2 * i],
                                               sc[2 * i], sc[2 * i]);
        sumi = _mm256_add_epi32(sumi, _mm256_mullo_epi32(dot_u8s8(_mm256_setzero_si256(), q[i], s), scale));
#else
        const __m256i scale = _mm256_set_m128i(_mm_set1_epi16(sc[2 * i + 1]), _mm_set1_epi16(sc[2 * i]));
        sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(_mm256_maddubs_epi16(q[i], s), scale));
#endif
      }
      for (int i = 0; i < 8; ++i) corr += int32_t(sc[i]) * a[b].bsums[8 * n + i];
    }
    acc = kq_step6(acc, half(w[b].d) * a[b].d, hsum_epi32(sumi) - 32 * corr);
  }
  return acc;
}

// ---- dequantisation to f32 (prefill panels) -------------------------------------------------------
// 8 unsigned bytes -> 8 floats
inline __m256 u8_to_ps(__m128i v) { return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(v)); }
inline __m256 s8_to_ps(__m128i v) { return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(v)); }

void dequant_q8_0(const void* bv, int64_t nb, float* out) {
  const auto* b = static_cast<const BlockQ8_0*>(bv);
  for (int64_t i = 0; i < nb; ++i, out += 32) {
    const __m256 d = _mm256_set1_ps(half(b[i].d));
    for (int j = 0; j < 32; j += 8)
      _mm256_storeu_ps(out + j, _mm256_mul_ps(s8_to_ps(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(b[i].qs + j))), d));
  }
}

void dequant_q4_0(const void* bv, int64_t nb, float* out) {
  const auto* b = static_cast<const BlockQ4_0*>(bv);
  for (int64_t i = 0; i < nb; ++i, out += 32) {
    const __m256 d = _mm256_set1_ps(half(b[i].d));
    const __m256i v = q4_0_values(b[i].qs);  // q - 8 as int8
    const __m128i lo = _mm256_castsi256_si128(v), hi = _mm256_extracti128_si256(v, 1);
    _mm256_storeu_ps(out + 0, _mm256_mul_ps(s8_to_ps(lo), d));
    _mm256_storeu_ps(out + 8, _mm256_mul_ps(s8_to_ps(_mm_srli_si128(lo, 8)), d));
    _mm256_storeu_ps(out + 16, _mm256_mul_ps(s8_to_ps(hi), d));
    _mm256_storeu_ps(out + 24, _mm256_mul_ps(s8_to_ps(_mm_srli_si128(hi, 8)), d));
  }
}

void dequant_q4_k(const void* bv, int64_t nb, float* out) {
  const auto* b = static_cast<const BlockQ4_K*>(bv);
  const __m256i m4 = _mm256_set1_epi8(0x0F);
  for (int64_t i = 0; i < nb; ++i) {
    const float d = half(b[i].d), dmin = half(b[i].dmin);
    for (int j = 0; j < 4; ++j) {
      const __m256i q = load32(b[i].qs + 32 * j);
      const __m256i v[2] = {_mm256_and_si256(q, m4), _mm256_and_si256(_mm256_srli_epi16(q, 4), m4)};
      for (int h = 0; h < 2; ++h, out += 32) {
        uint8_t sc, m;
        scale_min_k4(2 * j + h, b[i].scales, &sc, &m);
        const __m256 dl = _mm256_set1_ps(d * float(sc)), ml = _mm256_set1_ps(dmin * float(m));
        const __m128i lo = _mm256_castsi256_si128(v[h]), hi = _mm256_extracti128_si256(v[h], 1);
        _mm256_storeu_ps(out + 0, _mm256_fmsub_ps(dl, u8_to_ps(lo), ml));
        _mm256_storeu_ps(out + 8, _mm256_fmsub_ps(dl, u8_to_ps(_mm_srli_si128(lo, 8)), ml));
        _mm256_storeu_ps(out + 16, _mm256_fmsub_ps(dl, u8_to_ps(hi), ml));
        _mm256_storeu_ps(out + 24, _mm256_fmsub_ps(dl, u8_to_ps(_mm_srli_si128(hi, 8)), ml));
      }
    }
  }
}

// 8x8 f32 transpose: dst[c * dstride + r] = src[r * sstride + c]
inline void transpose8(const float* src, size_t ss, float* dst, size_t ds) {
  __m256 r[8], t[8], u[8];
  for (int i = 0; i < 8; ++i) r[i] = _mm256_loadu_ps(src + size_t(i) * ss);
  for (int i = 0; i < 4; ++i) {
    t[2 * i] = _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  for (int h = 0; h < 2; ++h) {  // rows 0-3 (h = 0) and 4-7 (h = 1)
    const __m256 a = t[4 * h], b = t[4 * h + 1], c = t[4 * h + 2], d = t[4 * h + 3];
    u[4 * h + 0] = _mm256_shuffle_ps(a, c, 0x44);
    u[4 * h + 1] = _mm256_shuffle_ps(a, c, 0xEE);
    u[4 * h + 2] = _mm256_shuffle_ps(b, d, 0x44);
    u[4 * h + 3] = _mm256_shuffle_ps(b, d, 0xEE);
  }
  for (int i = 0; i < 4; ++i) {
    _mm256_storeu_ps(dst + size_t(i) * ds, _mm256_permute2f128_ps(u[i], u[4 + i], 0x20));
    _mm256_storeu_ps(dst + size_t(4 + i) * ds, _mm256_permute2f128_ps(u[i], u[4 + i], 0x31));
  }
}

void to_panel(const float* rows, size_t row_stride, int nrows, int64_t kc, float* panel) {
  if (nrows != 16 || kc % 8) return to_panel_scalar(rows, row_stride, nrows, kc, panel);
  for (int64_t k0 = 0; k0 < kc; k0 += 8)
    for (int j0 = 0; j0 < 16; j0 += 8) transpose8(rows + size_t(j0) * row_stride + size_t(k0), row_stride, panel + size_t(k0) * 16 + j0, 16);
}

}  // namespace

const QuantKernels& MOE_QUANT_TABLE() {
  static const QuantKernels k = {
      {dot_b32<false>, dot_b32<true>, MOE_DOT_Q4_K, dot_qk45<true>, dot_q6_k},
      {dot_tile<dot_b32<false>>, dot_tile<dot_b32<true>>, dot_tile<MOE_DOT_Q4_K>, dot_tile<dot_qk45<true>>,
       dot_tile<dot_q6_k>},
      {dequant_q8_0, dequant_q4_0, dequant_q4_k, dequant_reference<DType::kQ5_K>, dequant_reference<DType::kQ6_K>},
      to_panel,
      quantize_act32_portable,
      quantize_act256_portable,
      MOE_QUANT_NAME,
  };
  return k;
}

}  // namespace cpu
}  // namespace moe
