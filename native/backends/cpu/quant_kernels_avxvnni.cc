// moe-kernels CPU backend: the avx-vnni table of quant_kernels.h (quant_simd_inl.h), compiled with the
// avx-vnni flags (CMakeLists.txt / binding.gyp: files named *_avxvnni.cc); called only after the run-time check.
#define MOE_QUANT_TABLE avxvnni_quant_kernels
#define MOE_QUANT_NAME "avx-vnni"
#define MOE_QUANT_DPBUSD 1
#include "quant_simd_inl.h"
