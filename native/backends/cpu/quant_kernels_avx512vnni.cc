// moe-kernels CPU backend: the avx512-vnni table of quant_kernels.h (quant_simd_inl.h), compiled with the
// avx512-vnni flags (CMakeLists.txt / binding.gyp: files named *_avx512vnni.cc); called only after the run-time check.
#define MOE_QUANT_TABLE avx512vnni_quant_kernels
#define MOE_QUANT_NAME "avx512-vnni"
#define MOE_QUANT_DPBUSD 2
#include "quant_simd_inl.h"
