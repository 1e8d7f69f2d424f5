// The AVX-512 panel kernel (layouts in gemm_kernels.h), shared by the avx512 and avx512-bf16
// tables. Include only from files compiled with the AVX-512 flags; everything here has internal
// linkage, so each ISA file keeps its own copy (no inline function compiled for one ISA can be
// picked by the linker for another).
//
// One zmm holds one k step of a panel (kNR = 16 columns), so a kernel call covers MR rows of one
// micro-panel x NP panels with MR*NP zmm accumulators: per step NP vector loads of the panels,
// MR broadcasts of the activations and MR*NP multiply-adds. The widest instance is 6 x 4 panels
// (6 x 64 columns): 24 accumulators + 4 panel vectors + 1 broadcast of 32 registers, 24 FMAs per
// 4 loads and 6 broadcasts, so prefill runs at the FMA rate from panels held in L2. Fewer rows
// can take more panels (1..3 rows: up to 8) for more independent chains; a decode passes 4 at a
// time, 4 memory streams per thread (panel_gemm.h, kDecodeStreams). Each output is one chain in k order whatever MR and NP are (same bits as the
// one-panel case), so a row's result does not depend on its micro-panel or on the task split.
//
// An Op says what a step is: the B vector of a panel (f32, or f16/bf16 widened in registers, or a
// bf16 k pair), the activation broadcast (an f32, or a pair of bf16) and the multiply-add.
#pragma once
#include <immintrin.h>

#include <algorithm>

#include "gemm_kernels.h"

namespace moe {
namespace cpu {
namespace {

constexpr int64_t kZmmCacheLine = 64;

// Panels per kernel call for MR rows: as many as 24 accumulators allow, at most 8.
template <int MR> constexpr int zmm_stream_width() { return MR <= 3 ? 8 : 4; }

template <int MR, int NP, bool PF, class Op>
inline void zmm_tiles(int64_t steps, const float* a, const uint8_t* b, size_t panel_bytes, float* c, bool accumulate,
                      int64_t prefetch) {
  __m512 acc[NP][MR];
#pragma GCC unroll 8
  for (int q = 0; q < NP; ++q)
#pragma GCC unroll 6
    for (int i = 0; i < MR; ++i)
      acc[q][i] = accumulate ? _mm512_loadu_ps(c + (q * kMR + i) * kNR) : _mm512_setzero_ps();
  constexpr int64_t kLineSteps = std::max<int64_t>(1, kZmmCacheLine / Op::kStepBytes);
  for (int64_t s = 0; s < steps; ++s) {
    if (PF && s % kLineSteps == 0)  // one request per line and panel (past a panel's end is harmless)
#pragma GCC unroll 8
      for (int q = 0; q < NP; ++q)
        _mm_prefetch(reinterpret_cast<const char*>(b + q * panel_bytes + s * Op::kStepBytes + prefetch), _MM_HINT_T0);
    typename Op::BVec bv[NP];
#pragma GCC unroll 8
    for (int q = 0; q < NP; ++q) bv[q] = Op::load(b + q * panel_bytes + s * Op::kStepBytes);
    const float* as = a + s * kMR;
#pragma GCC unroll 6
    for (int i = 0; i < MR; ++i) {
      const typename Op::AVec ai = Op::broadcast(as + i);
#pragma GCC unroll 8
      for (int q = 0; q < NP; ++q) acc[q][i] = Op::madd(acc[q][i], ai, bv[q]);
    }
  }
#pragma GCC unroll 8
  for (int q = 0; q < NP; ++q)
#pragma GCC unroll 6
    for (int i = 0; i < MR; ++i) _mm512_storeu_ps(c + (q * kMR + i) * kNR, acc[q][i]);
}

template <int MR, bool PF, class Op>
void zmm_stream_rows(int64_t steps, const float* a, const uint8_t* b, size_t panel_bytes, int np, float* c, bool acc,
                     int64_t pf) {
  constexpr int NP = zmm_stream_width<MR>();
  constexpr size_t kTile = size_t(kMR) * kNR;
  int q = 0;
  for (; q + NP <= np; q += NP) zmm_tiles<MR, NP, PF, Op>(steps, a, b + q * panel_bytes, panel_bytes, c + q * kTile, acc, pf);
  if constexpr (NP > 4)
    for (; q + 4 <= np; q += 4) zmm_tiles<MR, 4, PF, Op>(steps, a, b + q * panel_bytes, panel_bytes, c + q * kTile, acc, pf);
  for (; q + 2 <= np; q += 2) zmm_tiles<MR, 2, PF, Op>(steps, a, b + q * panel_bytes, panel_bytes, c + q * kTile, acc, pf);
  for (; q < np; ++q) zmm_tiles<MR, 1, PF, Op>(steps, a, b + q * panel_bytes, panel_bytes, c + q * kTile, acc, pf);
}

template <bool PF, class Op>
void zmm_stream_pf(int rows, int64_t steps, const float* a, const uint8_t* b, size_t panel_bytes, int np, float* c, bool acc,
                   int64_t pf) {
  static_assert(kMR == 6, "the dispatch below covers 1..6 rows");
  switch (rows) {
    case 1: zmm_stream_rows<1, PF, Op>(steps, a, b, panel_bytes, np, c, acc, pf); break;
    case 2: zmm_stream_rows<2, PF, Op>(steps, a, b, panel_bytes, np, c, acc, pf); break;
    case 3: zmm_stream_rows<3, PF, Op>(steps, a, b, panel_bytes, np, c, acc, pf); break;
    case 4: zmm_stream_rows<4, PF, Op>(steps, a, b, panel_bytes, np, c, acc, pf); break;
    case 5: zmm_stream_rows<5, PF, Op>(steps, a, b, panel_bytes, np, c, acc, pf); break;
    default: zmm_stream_rows<6, PF, Op>(steps, a, b, panel_bytes, np, c, acc, pf); break;
  }
}

// The table's StreamKernel for Op; kc counts k (an Op of k pairs takes kc / 2 steps, kc even).
template <class Op>
void zmm_stream(int rows, int64_t kc, const float* a, const void* b, size_t panel_bytes, int np, float* c, int flags,
                int64_t prefetch) {
  const int64_t steps = kc / Op::kStepK;
  const uint8_t* bp = static_cast<const uint8_t*>(b);
  const bool acc = flags & kStreamAccumulate;
  if (prefetch > 0) zmm_stream_pf<true, Op>(rows, steps, a, bp, panel_bytes, np, c, acc, prefetch);
  else zmm_stream_pf<false, Op>(rows, steps, a, bp, panel_bytes, np, c, acc, 0);
}

// G micro-panels (G*kMR rows) x NP panels, one chain per output as in zmm_tiles.
template <int G, int NP, bool PF, class Op>
inline void zmm_wide_tiles(int64_t steps, const float* a, size_t a_stride, const uint8_t* b, size_t panel_bytes, float* c,
                           int c_np, bool accumulate, int64_t prefetch) {
  constexpr int MR = G * kMR;
  constexpr size_t kTile = size_t(kMR) * kNR;
  auto out = [&](int q, int i) { return c + (size_t(i / kMR) * size_t(c_np) + size_t(q)) * kTile + size_t(i % kMR) * kNR; };
  __m512 acc[NP][MR];
#pragma GCC unroll 4
  for (int q = 0; q < NP; ++q)
#pragma GCC unroll 24
    for (int i = 0; i < MR; ++i) acc[q][i] = accumulate ? _mm512_loadu_ps(out(q, i)) : _mm512_setzero_ps();
  constexpr int64_t kLineSteps = std::max<int64_t>(1, kZmmCacheLine / Op::kStepBytes);
  for (int64_t s = 0; s < steps; ++s) {
    if (PF && s % kLineSteps == 0)
#pragma GCC unroll 4
      for (int q = 0; q < NP; ++q)
        _mm_prefetch(reinterpret_cast<const char*>(b + q * panel_bytes + s * Op::kStepBytes + prefetch), _MM_HINT_T0);
    typename Op::BVec bv[NP];
#pragma GCC unroll 4
    for (int q = 0; q < NP; ++q) bv[q] = Op::load(b + q * panel_bytes + s * Op::kStepBytes);
#pragma GCC unroll 4
    for (int m = 0; m < G; ++m) {
      const float* as = a + size_t(m) * a_stride + s * kMR;
#pragma GCC unroll 6
      for (int i = 0; i < kMR; ++i) {
        const typename Op::AVec ai = Op::broadcast(as + i);
#pragma GCC unroll 4
        for (int q = 0; q < NP; ++q) acc[q][m * kMR + i] = Op::madd(acc[q][m * kMR + i], ai, bv[q]);
      }
    }
  }
#pragma GCC unroll 4
  for (int q = 0; q < NP; ++q)
#pragma GCC unroll 24
    for (int i = 0; i < MR; ++i) _mm512_storeu_ps(out(q, i), acc[q][i]);
}

template <int G, bool PF, class Op>
void zmm_wide_group(int64_t steps, const float* a, size_t a_stride, const uint8_t* b, size_t panel_bytes, int np, float* c,
                    int c_np, bool acc, int64_t pf) {
  constexpr size_t kTile = size_t(kMR) * kNR;
  int q = 0;
  if constexpr (G == 2)  // 12 rows x 2 panels: 24 accumulators
    for (; q + 2 <= np; q += 2) zmm_wide_tiles<2, 2, PF, Op>(steps, a, a_stride, b + q * panel_bytes, panel_bytes, c + q * kTile, c_np, acc, pf);
  for (; q < np; ++q) zmm_wide_tiles<G, 1, PF, Op>(steps, a, a_stride, b + q * panel_bytes, panel_bytes, c + q * kTile, c_np, acc, pf);
}

// The table's WideKernel for Op (gemm_kernels.h); kc counts k as in zmm_stream.
template <class Op>
void zmm_wide(int g, int64_t kc, const float* a, size_t a_stride, const void* b, size_t panel_bytes, int np, float* c,
              int c_np, int flags, int64_t prefetch) {
  static_assert(kMaxWideGroup == 4, "the dispatch below covers 2..4 micro-panels");
  const int64_t steps = kc / Op::kStepK;
  const uint8_t* bp = static_cast<const uint8_t*>(b);
  const bool acc = flags & kStreamAccumulate;
  const bool pf = prefetch > 0;
  switch (g) {
    case 2: pf ? zmm_wide_group<2, true, Op>(steps, a, a_stride, bp, panel_bytes, np, c, c_np, acc, prefetch)
               : zmm_wide_group<2, false, Op>(steps, a, a_stride, bp, panel_bytes, np, c, c_np, acc, 0); break;
    case 3: pf ? zmm_wide_group<3, true, Op>(steps, a, a_stride, bp, panel_bytes, np, c, c_np, acc, prefetch)
               : zmm_wide_group<3, false, Op>(steps, a, a_stride, bp, panel_bytes, np, c, c_np, acc, 0); break;
    default: pf ? zmm_wide_group<4, true, Op>(steps, a, a_stride, bp, panel_bytes, np, c, c_np, acc, prefetch)
                : zmm_wide_group<4, false, Op>(steps, a, a_stride, bp, panel_bytes, np, c, c_np, acc, 0); break;
  }
}

// The table's MicroKernel for Op: one panel.
template <class Op>
void zmm_micro(int rows, int64_t kc, const float* a, const void* b, float* c, bool accumulate) {
  zmm_stream<Op>(rows, kc, a, b, 0, 1, c, accumulate ? kStreamAccumulate : 0, 0);
}

// f32 activations against f32, f16 or bf16 weights (widened in registers: exact).
template <int W>
struct F32Op {
  using BVec = __m512;
  using AVec = __m512;
  static constexpr int64_t kStepK = 1;
  static constexpr int64_t kStepBytes = W == kWF32 ? kNR * 4 : kNR * 2;
  static inline BVec load(const uint8_t* p) {
    if constexpr (W == kWF32) {
      return _mm512_loadu_ps(p);
    } else {
      const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
      if constexpr (W == kWF16) return _mm512_cvtph_ps(h);
      else return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));  // bf16: high half of an f32
    }
  }
  static inline AVec broadcast(const float* p) { return _mm512_set1_ps(*p); }
  static inline __m512 madd(__m512 acc, AVec a, BVec b) { return _mm512_fmadd_ps(a, b, acc); }
};

}  // namespace
}  // namespace cpu
}  // namespace moe
