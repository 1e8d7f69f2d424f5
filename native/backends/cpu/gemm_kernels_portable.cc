// Portable inner kernels of the CPU grouped GEMM (layouts in gemm_kernels.h), for CPUs without
// AVX2/FMA/F16C and for MOE_CPU_KERNEL=portable. Same blocking as the AVX2 kernels, with the
// tile computed in two passes of 8 columns on 4-float vectors of the compiler's vector extension
// (SSE2 on baseline x86-64); separate multiply and add, so results differ from the FMA kernels in
// the last bits. A plain scalar loop serves compilers without the extension.
#include <cmath>
#include <cstring>

#include "gemm_kernels.h"

namespace moe {
namespace cpu {

namespace {

template <int W>
inline float load_w(const void* b, int64_t i) {
  if constexpr (W == kWF32) return static_cast<const float*>(b)[i];
  else if constexpr (W == kWF16) return f16_to_f32(static_cast<const uint16_t*>(b)[i]);
  else return bf16_to_f32(static_cast<const uint16_t*>(b)[i]);
}

#if defined(__GNUC__)
// GCC/Clang vector extension: 4 floats, SSE2 registers on baseline x86-64, NEON on arm64.
typedef float V4 __attribute__((vector_size(16)));
constexpr int kHalf = kNR / 2;  // columns per pass: 2*kMR accumulators + operands fit 16 registers

template <int W>
inline V4 load4(const void* b, int64_t i) {
  V4 v;
  if constexpr (W == kWF32) {
    std::memcpy(&v, static_cast<const float*>(b) + i, sizeof v);
  } else if constexpr (W == kWBF16) {  // widen in vector registers: bf16 is the top half of f32
    typedef uint16_t U16x4 __attribute__((vector_size(8)));
    typedef uint32_t U32x4 __attribute__((vector_size(16)));
    U16x4 h;
    std::memcpy(&h, static_cast<const uint16_t*>(b) + i, sizeof h);
    const U32x4 u = __builtin_convertvector(h, U32x4) << 16;
    std::memcpy(&v, &u, sizeof v);
  } else {
    for (int l = 0; l < 4; ++l) v[l] = load_w<W>(b, i + l);
  }
  return v;
}

template <int MR, int W>
void micro_tile(int64_t kc, const float* a, const void* b, float* c, bool accumulate) {
  for (int j0 = 0; j0 < kNR; j0 += kHalf) {
    V4 acc[MR][2];
#pragma GCC unroll 6
    for (int i = 0; i < MR; ++i)
      for (int h = 0; h < 2; ++h) {
        if (accumulate) std::memcpy(&acc[i][h], c + i * kNR + j0 + 4 * h, sizeof(V4));
        else acc[i][h] = V4{0.f, 0.f, 0.f, 0.f};
      }
    for (int64_t k = 0; k < kc; ++k) {
      const V4 b0 = load4<W>(b, k * kNR + j0), b1 = load4<W>(b, k * kNR + j0 + 4);
      const float* ak = a + k * kMR;
#pragma GCC unroll 6
      for (int i = 0; i < MR; ++i) {
        acc[i][0] += ak[i] * b0;
        acc[i][1] += ak[i] * b1;
      }
    }
#pragma GCC unroll 6
    for (int i = 0; i < MR; ++i)
      for (int h = 0; h < 2; ++h) std::memcpy(c + i * kNR + j0 + 4 * h, &acc[i][h], sizeof(V4));
  }
}
#else
template <int MR, int W>
void micro_tile(int64_t kc, const float* a, const void* b, float* c, bool accumulate) {
  float acc[MR][kNR];
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < kNR; ++j) acc[i][j] = accumulate ? c[i * kNR + j] : 0.f;
  for (int64_t k = 0; k < kc; ++k)
    for (int i = 0; i < MR; ++i)
      for (int j = 0; j < kNR; ++j) acc[i][j] += a[k * kMR + i] * load_w<W>(b, k * kNR + j);
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < kNR; ++j) c[i * kNR + j] = acc[i][j];
}
#endif

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

template <int W>
void stream(int rows, int64_t kc, const float* a, const void* b, size_t panel_bytes, int np, float* c, int flags, int64_t) {
  for (int q = 0; q < np; ++q)
    micro<W>(rows, kc, a, static_cast<const uint8_t*>(b) + q * panel_bytes, c + size_t(q) * kMR * kNR,
             flags & kStreamAccumulate);
}

void widen(WeightType t, const uint16_t* src, float* dst, int64_t n) {
  if (t == kWF16)
    for (int64_t i = 0; i < n; ++i) dst[i] = f16_to_f32(src[i]);
  else
    for (int64_t i = 0; i < n; ++i) dst[i] = bf16_to_f32(src[i]);
}

void swiglu(int rows, const float* c, float* h) {
  for (int i = 0; i < rows; ++i)
    for (int j = 0; j < kGateCols; ++j) {
      const float g = c[i * kNR + j], u = c[i * kNR + kGateCols + j];
      h[j * kMR + i] = g / (1.f + std::exp(-g)) * u;
    }
}

}  // namespace

const GemmKernels& portable_kernels() {
  static const GemmKernels k = {{micro<kWF32>, micro<kWF16>, micro<kWBF16>, nullptr},
                                {stream<kWF32>, stream<kWF16>, stream<kWBF16>, nullptr},
                                {nullptr, nullptr, nullptr, nullptr}, widen, swiglu, nullptr, nullptr, "portable"};
  return k;
}

}  // namespace cpu
}  // namespace moe
