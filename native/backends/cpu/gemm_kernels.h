// CPU grouped GEMM: the packed weight layout and the inner kernels that stream it.
//
// Packed layout (built once by pack_experts, weights keep their dtype: f32, or f16/bf16 bits):
//   per expert, first the GEMM1 panels, then the GEMM2 panels.
//   GEMM1 panel p (p < f_pad / kGateCols), K = d:  element [k][j], j < kNR:
//     j <  kGateCols: W1[p*kGateCols + j][k]          (gate projection)
//     j >= kGateCols: W3[p*kGateCols + j - kGateCols][k]  (up projection)
//   so one pass over a panel yields the gate and up values of kGateCols hidden units, and the
//   SwiGLU epilogue combines them without another pass.
//   GEMM2 panel p (p < ceil(d / kNR)), K = f_pad:  element [k][j] = W2[p*kNR + j][k].
//   Rows and columns past d or f are zero, so every kernel runs on whole panels and only the
//   final stores are masked; f_pad = f rounded up to kGateCols (the zero hidden units give h = 0).
//
// Activations are packed per call into micro-panels of kMR rows: element [k][i] = row i, column
// k (row stride kMR), which the kernels broadcast from. The one-micro-panel kernels read only the
// first `rows` lanes; the wide kernels read all of them, so the others are written as zeros.
//
// bf16 dot layout (kWBF16Pairs: the avx512-bf16 table's bf16 weights, unless packed exact): the
// same panels with two k steps interleaved per column, so that one 64-byte row of a panel is what
// vdpbf16ps multiplies: element [k/2][j][k%2] (K padded to even with zeros). Its activations are
// bf16 pairs, rounded to nearest even from f32: a micro-panel is [k/2][i] of 32-bit words holding
// (row i, k) in the low half and (row i, k+1) in the high half, K/2 * kMR words in all. Each output
// is still one chain in k order, two products per step (vdpbf16ps adds the exact product of each
// pair into the f32 accumulator), so the bits do not depend on rows, tasks or threads.
#pragma once
#include <cstddef>
#include <cstdint>

#include "moe/dtype.h"

namespace moe {
namespace cpu {

constexpr int kMR = 6;                // rows of a micro-panel (6 x 2 accumulators = 12 ymm)
constexpr int kNR = 16;               // output columns of a packed panel (two ymm, or one zmm)
constexpr int kGateCols = kNR / 2;    // GEMM1 panel: kGateCols gate + kGateCols up columns

// Weight element type of a panel, as an index into the kernel tables.
// kWBF16Pairs: bf16 weights in the bf16 dot layout, against bf16-rounded activations.
enum WeightType : int { kWF32 = 0, kWF16 = 1, kWBF16 = 2, kWBF16Pairs = 3, kNumWeightTypes = 4 };

// Whether the activations of weight type t are bf16 pairs (else f32 micro-panels).
constexpr bool bf16_pairs(WeightType t) { return t == kWBF16Pairs; }
// Floats (32-bit words) of a micro-panel of K = k_len for weight type t.
inline int64_t micro_panel_floats(WeightType t, int64_t k_len) {
  return bf16_pairs(t) ? (k_len + 1) / 2 * kMR : k_len * kMR;
}
// K as packed: the bf16 dot layout pads it to even.
inline int64_t packed_k(WeightType t, int64_t k_len) { return bf16_pairs(t) ? (k_len + 1) / 2 * 2 : k_len; }

inline WeightType weight_type(DType t) {
  return t == DType::kF16 ? kWF16 : t == DType::kBF16 ? kWBF16 : kWF32;
}

// c[i][j] (row stride kNR) = (accumulate ? c[i][j] : 0) + sum_{k < kc} a[k*kMR + i] * b[k*kNR + j]
// for i < rows (1..kMR), j < kNR. b points at panel elements of the kernel's weight type. Every
// output is one chain of multiply-adds in k order whatever `rows` is, so a row's result does not
// depend on which other rows share its micro-panel.
using MicroKernel = void (*)(int rows, int64_t kc, const float* a, const void* b, float* c,
                             bool accumulate);

// Streaming form over several panels for one micro-panel: c[q] = a x panel q for q < np, each
// panel of kc steps, panels panel_bytes apart, tiles kMR*kNR floats apart. Same bits as calling
// MicroKernel panel by panel. flags: kStreamAccumulate adds to c instead of overwriting it (the
// K-blocked order). prefetch: when > 0, each step also prefetches (into L1) the line `prefetch`
// bytes past the one it reads in every panel: a distance ahead when the panels come from memory,
// or the next K block's lines while this block is re-read from L2 (tables may prefetch on their
// own regardless: avx2-fma always prefetches 4 KiB ahead, portable never).
enum StreamFlags : int { kStreamAccumulate = 1 };
using StreamKernel = void (*)(int rows, int64_t kc, const float* a, const void* b, size_t panel_bytes,
                              int np, float* c, int flags, int64_t prefetch);

// The streaming form over G = 2..kMaxWideGroup micro-panels at once (G*kMR rows, every lane
// computed: lanes past a group's rows must hold finite values, the gathers and the SwiGLU
// epilogue write zeros there), micro-panel m at a + m*a_stride words, so that one pass over the
// panels serves all of them: a panel element fetched from memory meets up to 24 rows at once,
// which keeps the pass compute-bound and overlaps it with the fetch. The tile of (micro-panel m,
// panel q) is at c + (m*c_np + q)*kMR*kNR (the task's tile layout, c_np >= np). Same bits as
// StreamKernel on each micro-panel.
constexpr int kMaxWideGroup = 4;
using WideKernel = void (*)(int g, int64_t kc, const float* a, size_t a_stride, const void* b, size_t panel_bytes,
                            int np, float* c, int c_np, int flags, int64_t prefetch);

// One table per ISA. micro/stream entries of a weight type the table cannot run are null
// (kWBF16Pairs outside avx512-bf16); such weights are never packed for it.
struct GemmKernels {
  MicroKernel micro[kNumWeightTypes];
  StreamKernel stream[kNumWeightTypes];
  // Null in the tables that run every micro-panel on its own (avx2-fma, portable).
  WideKernel wide[kNumWeightTypes];
  // Tables with `wide` run tasks of several micro-panels K-blocked: per block of kKC steps, one
  // pass of `wide` over up to kMaxWideGroup micro-panels streams the panels from memory, and the
  // other passes re-read them from L2, all with kStreamAccumulate on the 16-bit chunks as they
  // are. The others widen each chunk to f32 once and run `micro` per micro-panel.
  // dst[i] = widen(src[i]) for i < n; src holds f16 or bf16 bits (type t).
  void (*widen)(WeightType t, const uint16_t* src, float* dst, int64_t n);
  // SwiGLU epilogue of a GEMM1 tile c [rows][kNR]: h = silu(gate) * up, gate = c[i][j],
  // up = c[i][kGateCols + j], written as h[j*kMR + i] (micro-panel layout) for j < kGateCols.
  void (*swiglu)(int rows, const float* c, float* h);
  // The same, written as bf16 pairs (h is a 32-bit-word micro-panel at the tile's first column
  // pair; kGateCols is even, so a tile's columns are whole pairs). Null outside avx512-bf16.
  void (*swiglu_pairs)(int rows, const float* c, uint32_t* h);
  // Rows src[i] (i < rows, each k_len floats) rounded to bf16 pairs into one micro-panel (K padded
  // with a zero to even). Null outside avx512-bf16.
  void (*gather_pairs)(const float* const* src, int rows, int64_t k_len, uint32_t* dst);
  const char* name;
};

// Each table only after the run-time check (cpu_can_run): they are compiled for their ISA.
const GemmKernels& portable_kernels();
const GemmKernels& avx2_kernels();
const GemmKernels& avx512_kernels();
const GemmKernels& avx512_bf16_kernels();

}  // namespace cpu
}  // namespace moe
