// moe-kernels CPU backend: the kernels of the quantised weight formats (moe/quant.h), one table per
// ISA, chosen at run time (quant_kernels() below, by cpu_features()):
//
//   portable      plain C++ integer dot products (any CPU)
//   avx2          vpmaddubsw + vpmaddwd on 32-byte vectors (AVX2)
//   avx-vnni      vpdpbusd on 32-byte vectors (AVX-VNNI)
//   avx512-vnni   vpdpbusd on 64-byte vectors (AVX512-VNNI + AVX512BW)
//
// As llama.cpp does, a weight row meets activations quantised to 8 bits per block (ActQ8): blocks
// of 32 for q8_0/q4_0 weights, super-blocks of 256 with the sums of each 16 for the k-quants (the
// mins and the q6_k offset come out of those sums). Each dot product is exact in integers inside a
// block; the float sum over blocks has a fixed order per table, so a result depends on the table
// but never on the thread count or on the other rows of the call.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

#include "moe/dtype.h"
#include "moe/quant.h"

namespace moe {
namespace cpu {

// An activation block of 32: scale, the sum of its q, and the q.
struct ActQ8_32 {
  float d;
  int32_t sum;
  int8_t q[32];
};
// An activation super-block of 256: scale, the sums of each 16 q, and the q.
struct ActQ8_256 {
  float d;
  int16_t bsums[16];
  int8_t q[256];
  int32_t pad;  // keeps q 4-byte aligned in an array of blocks (sizeof 296)
};
static_assert(sizeof(ActQ8_32) == 40 && sizeof(ActQ8_256) == 296, "activation blocks");

// The activation block that meets weights of type t.
inline bool act_is_256(DType t) { return t == DType::kQ4_K || t == DType::kQ5_K || t == DType::kQ6_K; }
// Bytes of the quantised activations of one row of n values (n a multiple of t's block).
inline size_t act_row_bytes(DType t, int64_t n) {
  return act_is_256(t) ? size_t(n / 256) * sizeof(ActQ8_256) : size_t(n / 32) * sizeof(ActQ8_32);
}

// Index of a weight format in the tables.
enum QuantIndex : int { kQ8_0i = 0, kQ4_0i, kQ4_Ki, kQ5_Ki, kQ6_Ki, kNumQuant };
inline int quant_index(DType t) { return int(t) - int(DType::kQ8_0); }

// dot(w row of nb blocks of the format, a row of nb activation blocks) in f32.
using QuantDot = float (*)(int64_t nb, const void* w, const void* a);
// nrows dots of consecutive weight rows (row_stride bytes apart) with `ncols` activation rows
// (act_stride bytes apart): out[r * out_stride + c]. The same bits as QuantDot one by one.
using QuantDotTile = void (*)(int64_t nb, const uint8_t* w, size_t row_stride, int nrows, const uint8_t* a,
                              size_t act_stride, int ncols, float* out, size_t out_stride);

struct QuantKernels {
  QuantDot dot[kNumQuant];
  QuantDotTile tile[kNumQuant];
  // out[0, nb * block) = the values of nb consecutive blocks (ggml's up to rounding: may fuse).
  void (*dequant[kNumQuant])(const void* blocks, int64_t nb, float* out);
  // panel[k * 16 + j] = rows[j * row_stride + k] for j < nrows, k < kc (rows past nrows: 0): the
  // transpose of 16 dequantised rows into the f32 micro-kernel's panel layout (gemm_kernels.h).
  void (*to_panel)(const float* rows, size_t row_stride, int nrows, int64_t kc, float* panel);
  // x [n] f32 -> n/32 ActQ8_32 or n/256 ActQ8_256 blocks.
  void (*quantize_act32)(const float* x, int64_t n, ActQ8_32* out);
  void (*quantize_act256)(const float* x, int64_t n, ActQ8_256* out);
  const char* name;
};

const QuantKernels& portable_quant_kernels();
const QuantKernels& avx2_quant_kernels();         // AVX2 + FMA + F16C
const QuantKernels& avxvnni_quant_kernels();      // AVX-VNNI (and AVX2)
const QuantKernels& avx512vnni_quant_kernels();   // AVX512F/BW/VL + AVX512-VNNI

// The table in use: MOE_CPU_QUANT_KERNEL=portable|avx2|avx-vnni|avx512-vnni forces one the CPU has
// (tests use it to cover each); otherwise the best the CPU has, or the portable one when
// MOE_CPU_KERNEL=portable.
const QuantKernels& quant_kernels();
// The names of the tables this CPU can run, comma-separated, best last ("portable,avx2,...").
std::string available_quant_kernels();

// The reference dequantisation (moe/quant.h), block by block: the portable table's, and the
// fallback of the others for formats they do not vectorise.
template <DType T>
void dequant_reference(const void* blocks, int64_t nb, float* out) {
  for (int64_t b = 0; b < nb; ++b)
    quant::dequantize_block(T, static_cast<const uint8_t*>(blocks) + size_t(b) * quant_block_bytes(T), out + b * quant_block_elems(T));
}
#define MOE_QUANT_REFERENCE_DEQUANT                                                                     \
  {dequant_reference<DType::kQ8_0>, dequant_reference<DType::kQ4_0>, dequant_reference<DType::kQ4_K>, \
   dequant_reference<DType::kQ5_K>, dequant_reference<DType::kQ6_K>}

inline void to_panel_scalar(const float* rows, size_t row_stride, int nrows, int64_t kc, float* panel) {
  for (int64_t k = 0; k < kc; ++k) {
    float* dst = panel + size_t(k) * 16;
    for (int j = 0; j < nrows; ++j) dst[j] = rows[size_t(j) * row_stride + size_t(k)];
    for (int j = nrows; j < 16; ++j) dst[j] = 0.f;
  }
}

// Shared by every table: the generic tile over a dot (row outer, columns inner).
template <QuantDot Dot>
void dot_tile(int64_t nb, const uint8_t* w, size_t row_stride, int nrows, const uint8_t* a, size_t act_stride, int ncols,
              float* out, size_t out_stride) {
  for (int r = 0; r < nrows; ++r)
    for (int c = 0; c < ncols; ++c) out[size_t(r) * out_stride + size_t(c)] = Dot(nb, w + size_t(r) * row_stride, a + size_t(c) * act_stride);
}

}  // namespace cpu
}  // namespace moe
