// The avx512-bf16 kernel table: the avx512 table, plus bf16 weights in the bf16 dot layout
// (gemm_kernels.h) multiplied with vdpbf16ps against activations rounded to bf16 (nearest even,
// vcvtneps2bf16; like vdpbf16ps itself it flushes denormals to zero), accumulated in f32. Each
// step takes a k pair: one 64-byte panel row of 16 columns x 2 k, one 32-bit broadcast per row.
// Compiled with the avx512 flags plus -mavx512bf16; only reached after the run-time check
// (cpu_can_run(CpuKernel::kAvx512Bf16)).
// GCC 12 warns inside its own AVX-512 intrinsics (the undefined pass-through vector of unmasked
// conversions); nothing in this file reads an uninitialised value.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include "gemm_avx512_inl.h"
#include "gemm_kernels.h"
#include "swiglu_zmm_inl.h"

namespace moe {
namespace cpu {

namespace {

struct Bf16PairOp {
  using BVec = __m512bh;
  using AVec = __m512bh;
  static constexpr int64_t kStepK = 2;
  static constexpr int64_t kStepBytes = kNR * 2 * 2;  // 16 columns x 2 k x bf16
  static inline BVec load(const uint8_t* p) { return (__m512bh)_mm512_loadu_si512(p); }
  static inline AVec broadcast(const float* p) {
    return (__m512bh)_mm512_set1_epi32(*reinterpret_cast<const int32_t*>(p));
  }
  static inline __m512 madd(__m512 acc, AVec a, BVec b) { return _mm512_dpbf16_ps(acc, a, b); }
};


// The SwiGLU values of the tile (swiglu_zmm_inl.h: two rows per zmm) rounded to bf16 pairs, the
// same rounding (vcvtneps2bf16) as rounding each row alone: w[i*4 + j] = the pair (v[i*8 + 2j], v[i*8 + 2j + 1]).
// A full tile's 24 words go to h[j*kMR + i] by two permutes; a partial one word by word.
void swiglu_pairs(int rows, const float* c, uint32_t* h) {
  static_assert(kGateCols == 8 && kMR == 6, "4 pairs per row, 6 rows a tile");
  alignas(64) float v[kMR * kGateCols] = {};
  swiglu_values(rows, c, v);
  alignas(64) uint32_t w[32] = {};
  for (int q = 0; q < 3; ++q)  // 16 floats -> 8 words
    _mm256_store_si256(reinterpret_cast<__m256i*>(w + 8 * q), (__m256i)_mm512_cvtneps_pbh(_mm512_load_ps(v + 16 * q)));
  if (rows < kMR) {
    for (int i = 0; i < rows; ++i)
      for (int j = 0; j < kGateCols / 2; ++j) h[j * kMR + i] = w[i * (kGateCols / 2) + j];
    return;
  }
  // output word m = h[j*6 + i] (j = m / 6, i = m % 6) is w[i*4 + j]: lanes of (w[0..16), w[16..32))
  static constexpr struct Idx {
    int32_t v[2][16];
  } idx = [] {
    Idx x{};
    for (int m = 0; m < 24; ++m) x.v[m / 16][m % 16] = (m % kMR) * (kGateCols / 2) + m / kMR;
    return x;
  }();
  const __m512i w0 = _mm512_load_si512(w), w1 = _mm512_load_si512(w + 16);
  _mm512_storeu_si512(h, _mm512_permutex2var_epi32(w0, _mm512_loadu_si512(idx.v[0]), w1));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(h + 16),
                      _mm512_castsi512_si256(_mm512_permutex2var_epi32(w0, _mm512_loadu_si512(idx.v[1]), w1)));
}

void gather_pairs(const float* const* src, int rows, int64_t k_len, uint32_t* dst) {
  const int64_t pairs = (k_len + 1) / 2;
  for (int i = 0; i < rows; ++i) {
    const float* x = src[i];
    int64_t k = 0;
    for (; k + 16 <= k_len; k += 16) {  // 16 floats -> 8 words
      alignas(32) uint32_t w[8];
      _mm256_store_si256(reinterpret_cast<__m256i*>(w), (__m256i)_mm512_cvtneps_pbh(_mm512_loadu_ps(x + k)));
      for (int j = 0; j < 8; ++j) dst[(k / 2 + j) * kMR + i] = w[j];
    }
    if (k < k_len) {  // the tail, zero-padded to whole pairs, through the same instruction
      alignas(64) float t[16] = {};
      for (int64_t j = k; j < k_len; ++j) t[j - k] = x[j];
      alignas(32) uint32_t w[8];
      _mm256_store_si256(reinterpret_cast<__m256i*>(w), (__m256i)_mm512_cvtneps_pbh(_mm512_load_ps(t)));
      for (int64_t j = 0; k / 2 + j < pairs; ++j) dst[(k / 2 + j) * kMR + i] = w[j];
    }
  }
}

}  // namespace

const GemmKernels& avx512_bf16_kernels() {
  static const GemmKernels k = [] {
    GemmKernels t = avx512_kernels();
    t.micro[kWBF16Pairs] = zmm_micro<Bf16PairOp>;
    t.stream[kWBF16Pairs] = zmm_stream<Bf16PairOp>;
    t.wide[kWBF16Pairs] = zmm_wide<Bf16PairOp>;
    t.swiglu_pairs = swiglu_pairs;
    t.gather_pairs = gather_pairs;
    t.name = "avx512-bf16";
    return t;
  }();
  return k;
}

}  // namespace cpu
}  // namespace moe
