// AVX2/FMA/F16C inner kernels of the CPU grouped GEMM (layouts in gemm_kernels.h).
//
// The micro-kernel computes a kMR x kNR tile (6 rows x 16 columns = 12 ymm accumulators) as a
// sum of rank-1 updates: per k, two vector loads of the packed panel (widened on the fly from
// f16/bf16) and one broadcast per row. It serves both regimes:
//   decode (few rows): each panel element is loaded once for all rows, so the call streams the
//   weights at memory speed;
//   prefill: the driver keeps a panel chunk in L1 and calls the kernel for many micro-panels,
//   12 FMAs per 2 loads of B, so it runs at the FMA throughput.
// Compiled with -mavx2 -mfma -mf16c; only reached after the run-time CPU check.
#include <immintrin.h>

#include <cstring>

#include "gemm_kernels.h"
#include "swiglu_avx2_inl.h"

namespace moe {
namespace cpu {

namespace {

// Loads the kNR = 16 weights of one k step as two f32 vectors.
template <int W>
inline void load_b(const void* b, int64_t k, __m256& lo, __m256& hi) {
  if constexpr (W == kWF32) {
    const float* p = static_cast<const float*>(b) + k * kNR;
    lo = _mm256_loadu_ps(p);
    hi = _mm256_loadu_ps(p + 8);
  } else {
    const uint16_t* p = static_cast<const uint16_t*>(b) + k * kNR;
    const __m128i l = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 8));
    if constexpr (W == kWF16) {
      lo = _mm256_cvtph_ps(l);
      hi = _mm256_cvtph_ps(h);
    } else {  // bf16: the high half of an f32
      lo = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(l), 16));
      hi = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
    }
  }
}

template <int MR, int W>
void micro_tile(int64_t kc, const float* a, const void* b, float* c, bool accumulate) {
  // The row loops are fully unrolled so the accumulator arrays live in registers.
  __m256 c0[MR], c1[MR];
#pragma GCC unroll 6
  for (int i = 0; i < MR; ++i) {
    c0[i] = accumulate ? _mm256_loadu_ps(c + i * kNR) : _mm256_setzero_ps();
    c1[i] = accumulate ? _mm256_loadu_ps(c + i * kNR + 8) : _mm256_setzero_ps();
  }
  for (int64_t k = 0; k < kc; ++k) {
    __m256 b0, b1;
    load_b<W>(b, k, b0, b1);
    const float* ak = a + k * kMR;
#pragma GCC unroll 6
    for (int i = 0; i < MR; ++i) {
      const __m256 ai = _mm256_broadcast_ss(ak + i);
      c0[i] = _mm256_fmadd_ps(ai, b0, c0[i]);
      c1[i] = _mm256_fmadd_ps(ai, b1, c1[i]);
    }
  }
#pragma GCC unroll 6
  for (int i = 0; i < MR; ++i) {
    _mm256_storeu_ps(c + i * kNR, c0[i]);
    _mm256_storeu_ps(c + i * kNR + 8, c1[i]);
  }
}

template <int W>
void micro(int rows, int64_t kc, const float* a, const void* b, float* c, bool accumulate) {
  static_assert(kMR == 6, "the dispatch below covers 1..6 rows");
  switch (rows) {
    case 1: micro_tile<1, W>(kc, a, b, c, accumulate); break;
    case 2: micro_tile<2, W>(kc, a, b, c, accumulate); break;
    case 3: micro_tile<3, W>(kc, a, b, c, accumulate); break;
    case 4: micro_tile<4, W>(kc, a, b, c, accumulate); break;
    case 5: micro_tile<5, W>(kc, a, b, c, accumulate); break;
    default: micro_tile<6, W>(kc, a, b, c, accumulate); break;
  }
}

// Streaming variant for few rows: NP panels at once, so that each k step runs 2*MR*NP independent
// FMA chains. With one panel and one row there are only two, and the 4-cycle FMA latency would cap
// the weight stream below memory bandwidth (8 bytes/cycle for bf16). Every output is still the
// same k-ordered chain as in micro_tile, so the bits do not change. Each panel is also prefetched
// kStreamPrefetchBytes ahead: the hardware prefetcher alone restarts slowly on every new group of
// NP panels, which cost ~10% of the stream rate for bf16.
constexpr int64_t kCacheLine = 64;
constexpr int64_t kStreamPrefetchBytes = 4096;  // measured: 1 KiB too short, 2-8 KiB alike

template <int MR, int NP, int W>
void stream_tiles(int64_t kc, const float* a, const void* b, size_t panel_bytes, float* c, bool accumulate) {
  __m256 acc[NP][MR][2];
#pragma GCC unroll 4
  for (int q = 0; q < NP; ++q)
#pragma GCC unroll 6
    for (int i = 0; i < MR; ++i) {
      acc[q][i][0] = accumulate ? _mm256_loadu_ps(c + q * kMR * kNR + i * kNR) : _mm256_setzero_ps();
      acc[q][i][1] = accumulate ? _mm256_loadu_ps(c + q * kMR * kNR + i * kNR + 8) : _mm256_setzero_ps();
    }
  constexpr int64_t kStepBytes = kNR * (W == kWF32 ? 4 : 2);  // weight bytes per panel per k
  constexpr int64_t kLineSteps = kCacheLine / kStepBytes;      // k steps per cache line
  constexpr int64_t kPrefetchSteps = kStreamPrefetchBytes / kStepBytes;
  for (int64_t k = 0; k < kc; ++k) {
    const float* ak = a + k * kMR;
    if (k % kLineSteps == 0)  // one request per line and panel (past a panel's end is harmless)
#pragma GCC unroll 4
      for (int q = 0; q < NP; ++q)
        _mm_prefetch(static_cast<const char*>(b) + q * panel_bytes + (k + kPrefetchSteps) * kStepBytes,
                     _MM_HINT_T0);
#pragma GCC unroll 4
    for (int q = 0; q < NP; ++q) {
      __m256 b0, b1;
      load_b<W>(static_cast<const uint8_t*>(b) + q * panel_bytes, k, b0, b1);
#pragma GCC unroll 6
      for (int i = 0; i < MR; ++i) {
        const __m256 ai = _mm256_broadcast_ss(ak + i);
        acc[q][i][0] = _mm256_fmadd_ps(ai, b0, acc[q][i][0]);
        acc[q][i][1] = _mm256_fmadd_ps(ai, b1, acc[q][i][1]);
      }
    }
  }
#pragma GCC unroll 4
  for (int q = 0; q < NP; ++q)
#pragma GCC unroll 6
    for (int i = 0; i < MR; ++i) {
      _mm256_storeu_ps(c + q * kMR * kNR + i * kNR, acc[q][i][0]);
      _mm256_storeu_ps(c + q * kMR * kNR + i * kNR + 8, acc[q][i][1]);
    }
}

// Panels per streaming step for `MR` rows: enough chains to hide the FMA latency, at most 12
// accumulators.
template <int MR> constexpr int stream_width() { return MR == 1 ? 4 : MR <= 3 ? 2 : 1; }

template <int MR, int W>
void stream_rows(int64_t kc, const float* a, const void* b, size_t panel_bytes, int np, float* c, bool acc) {
  constexpr int NP = stream_width<MR>();
  const uint8_t* bp = static_cast<const uint8_t*>(b);
  int q = 0;
  for (; q + NP <= np; q += NP) stream_tiles<MR, NP, W>(kc, a, bp + q * panel_bytes, panel_bytes, c + size_t(q) * kMR * kNR, acc);
  for (; q < np; ++q) stream_tiles<MR, 1, W>(kc, a, bp + q * panel_bytes, panel_bytes, c + size_t(q) * kMR * kNR, acc);
}

// This table always prefetches kStreamPrefetchBytes ahead (the prefetch argument is not used).
template <int W>
void stream(int rows, int64_t kc, const float* a, const void* b, size_t panel_bytes, int np, float* c, int flags, int64_t) {
  const bool acc = flags & kStreamAccumulate;
  switch (rows) {
    case 1: stream_rows<1, W>(kc, a, b, panel_bytes, np, c, acc); break;
    case 2: stream_rows<2, W>(kc, a, b, panel_bytes, np, c, acc); break;
    case 3: stream_rows<3, W>(kc, a, b, panel_bytes, np, c, acc); break;
    case 4: stream_rows<4, W>(kc, a, b, panel_bytes, np, c, acc); break;
    case 5: stream_rows<5, W>(kc, a, b, panel_bytes, np, c, acc); break;
    default: stream_rows<6, W>(kc, a, b, panel_bytes, np, c, acc); break;
  }
}

void widen(WeightType t, const uint16_t* src, float* dst, int64_t n) {
  int64_t i = 0;
  if (t == kWF16) {
    for (; i + 8 <= n; i += 8)
      _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i))));
    for (; i < n; ++i) dst[i] = f16_to_f32(src[i]);
  } else {
    for (; i + 8 <= n; i += 8) {
      const __m256i v = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i)));
      _mm256_storeu_ps(dst + i, _mm256_castsi256_ps(_mm256_slli_epi32(v, 16)));
    }
    for (; i < n; ++i) dst[i] = bf16_to_f32(src[i]);
  }
}


}  // namespace

const GemmKernels& avx2_kernels() {
  static const GemmKernels k = {{micro<kWF32>, micro<kWF16>, micro<kWBF16>, nullptr},
                                {stream<kWF32>, stream<kWF16>, stream<kWBF16>, nullptr},
                                {nullptr, nullptr, nullptr, nullptr}, widen, swiglu_tile, nullptr, nullptr, "avx2-fma"};
  return k;
}

}  // namespace cpu
}  // namespace moe
