// The avx512 kernel table of the CPU grouped GEMM and linear layer (layouts in gemm_kernels.h,
// the kernel in gemm_avx512_inl.h): f32 multiply-adds on zmm; f16 weights widened by vcvtph2ps,
// bf16 weights by a shift, 16 at a time, exact. Panels too long for L2 run K-blocked through the
// same kernel with accumulation, the 16-bit chunks widened in registers as they stream.
// Compiled with -mavx512f -mavx512bw -mavx512vl -mavx512dq -mavx2 -mfma -mf16c; only reached after
// the run-time check (cpu_can_run(CpuKernel::kAvx512)).
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

void widen(WeightType t, const uint16_t* src, float* dst, int64_t n) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + i));
    _mm512_storeu_ps(dst + i, t == kWF16 ? _mm512_cvtph_ps(h)
                                         : _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16)));
  }
  for (; i < n; ++i) dst[i] = t == kWF16 ? f16_to_f32(src[i]) : bf16_to_f32(src[i]);
}


}  // namespace

const GemmKernels& avx512_kernels() {
  static const GemmKernels k = {
      {zmm_micro<F32Op<kWF32>>, zmm_micro<F32Op<kWF16>>, zmm_micro<F32Op<kWBF16>>, nullptr},
      {zmm_stream<F32Op<kWF32>>, zmm_stream<F32Op<kWF16>>, zmm_stream<F32Op<kWBF16>>, nullptr},
      {zmm_wide<F32Op<kWF32>>, zmm_wide<F32Op<kWF16>>, zmm_wide<F32Op<kWBF16>>, nullptr},
      widen, swiglu_tile_zmm, nullptr, nullptr, "avx512"};
  return k;
}

}  // namespace cpu
}  // namespace moe
