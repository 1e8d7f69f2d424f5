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
// k (row stride kMR), which the kernels broadcast from. Only the first `rows` lanes are read.
#pragma once
#include <cstddef>
#include <cstdint>

#include "moe/dtype.h"

namespace moe {
namespace cpu {

constexpr int kMR = 6;                // rows of a micro-panel (6 x 2 accumulators = 12 ymm)
constexpr int kNR = 16;               // output columns of a packed panel (two 8-float vectors)
constexpr int kGateCols = kNR / 2;    // GEMM1 panel: kGateCols gate + kGateCols up columns

// Weight element type of a panel, as an index into the kernel tables.
enum WeightType : int { kWF32 = 0, kWF16 = 1, kWBF16 = 2, kNumWeightTypes = 3 };

inline WeightType weight_type(DType t) {
  return t == DType::kF16 ? kWF16 : t == DType::kBF16 ? kWBF16 : kWF32;
}

// c[i][j] (row stride kNR) = (accumulate ? c[i][j] : 0) + sum_{k < kc} a[k*kMR + i] * b[k*kNR + j]
// for i < rows (1..kMR), j < kNR. b points at panel elements of the kernel's weight type. Every
// output is one chain of multiply-adds in k order whatever `rows` is, so a row's result does not
// depend on which other rows share its micro-panel.
using MicroKernel = void (*)(int rows, int64_t kc, const float* a, const void* b, float* c,
                             bool accumulate);

// Streaming form for a single micro-panel (decode): c[q] = a x panel q for q < np, each panel
// of kc steps, panels panel_bytes apart, tiles kMR*kNR floats apart, no accumulation. Same bits
// as calling MicroKernel panel by panel.
using StreamKernel = void (*)(int rows, int64_t kc, const float* a, const void* b, size_t panel_bytes,
                              int np, float* c);

struct GemmKernels {
  MicroKernel micro[kNumWeightTypes];
  StreamKernel stream[kNumWeightTypes];
  // dst[i] = widen(src[i]) for i < n; src holds f16 or bf16 bits (type t).
  void (*widen)(WeightType t, const uint16_t* src, float* dst, int64_t n);
  // SwiGLU epilogue of a GEMM1 tile c [rows][kNR]: h = silu(gate) * up, gate = c[i][j],
  // up = c[i][kGateCols + j], written as h[j*kMR + i] (micro-panel layout) for j < kGateCols.
  void (*swiglu)(int rows, const float* c, float* h);
  const char* name;
};

const GemmKernels& portable_kernels();
const GemmKernels& avx2_kernels();  // call only when cpu_features().kernel == "avx2-fma"

}  // namespace cpu
}  // namespace moe
