#include "cpu_features.h"

#include <cstdlib>
#include <cstring>

namespace moe {

const CpuFeatures& cpu_features() {
  static const CpuFeatures f = [] {
    CpuFeatures c;
#if defined(__x86_64__) || defined(__i386__)
    __builtin_cpu_init();
    c.avx2 = __builtin_cpu_supports("avx2");
    c.fma = __builtin_cpu_supports("fma");
    c.f16c = __builtin_cpu_supports("f16c");
    c.avx512f = __builtin_cpu_supports("avx512f");
    c.avx512bf16 = __builtin_cpu_supports("avx512bf16");
#endif
    // MOE_CPU_KERNEL=portable forces the portable path (tests use it to cover both).
    const char* force = std::getenv("MOE_CPU_KERNEL");
    const bool portable = force && std::strcmp(force, "portable") == 0;
    c.kernel = (!portable && c.avx2 && c.fma && c.f16c) ? "avx2-fma" : "portable";
    return c;
  }();
  return f;
}

}  // namespace moe
