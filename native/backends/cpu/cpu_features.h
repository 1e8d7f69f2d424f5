// moe-kernels: what the CPU can do, detected once at run time.
#pragma once
#include <string>

namespace moe {

struct CpuFeatures {
  bool avx2 = false, fma = false, f16c = false, avx512f = false, avx512bf16 = false;
  std::string kernel;  // the CPU kernel family in use: "avx2-fma" or "portable"
};

const CpuFeatures& cpu_features();

}  // namespace moe
