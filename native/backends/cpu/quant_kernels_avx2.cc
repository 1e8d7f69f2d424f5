// moe-kernels CPU backend: the avx2 table of quant_kernels.h (quant_simd_inl.h), compiled with the
// avx2 flags (CMakeLists.txt / binding.gyp: files named *_avx2.cc); called only after the run-time check.
#define MOE_QUANT_TABLE avx2_quant_kernels
#define MOE_QUANT_NAME "avx2"
#define MOE_QUANT_DPBUSD 0
#include "quant_simd_inl.h"
