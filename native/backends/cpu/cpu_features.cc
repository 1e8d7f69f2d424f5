// Run-time CPU detection (cpu_features.h): cpuid for the instructions, xgetbv for the OS's
// register state, MOE_CPU_KERNEL for a forced table.
#include "cpu_features.h"

#include <cstdint>
#include <cstdlib>
#include <cstring>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif

namespace moe {

namespace {

#if defined(__x86_64__) || defined(__i386__)
// XCR0 bits: 1 SSE, 2 AVX (upper ymm), 5 opmask, 6 upper zmm0-15, 7 zmm16-31.
constexpr uint64_t kXcr0Avx = (1u << 1) | (1u << 2);
constexpr uint64_t kXcr0Avx512 = kXcr0Avx | (1u << 5) | (1u << 6) | (1u << 7);

uint64_t read_xcr0() {
  uint32_t lo, hi;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));  // only called when OSXSAVE is set
  return (uint64_t(hi) << 32) | lo;
}

void detect(CpuFeatures& c) {
  unsigned a, b, cx, d;
  if (!__get_cpuid(1, &a, &b, &cx, &d)) return;
  const bool osxsave = cx & (1u << 27), avx = cx & (1u << 28);
  c.fma = cx & (1u << 12);
  c.f16c = cx & (1u << 29);
  const uint64_t xcr0 = osxsave ? read_xcr0() : 0;
  c.os_avx = avx && (xcr0 & kXcr0Avx) == kXcr0Avx;
  c.os_avx512 = c.os_avx && (xcr0 & kXcr0Avx512) == kXcr0Avx512;
  if (!c.os_avx) c.fma = c.f16c = false;  // VEX-encoded: unusable without the ymm state
  if (__get_cpuid_max(0, nullptr) < 7) return;
  __cpuid_count(7, 0, a, b, cx, d);
  const unsigned max_sub = a;
  c.avx2 = c.os_avx && (b & (1u << 5));
  c.avx512f = c.os_avx512 && (b & (1u << 16));
  c.avx512dq = c.avx512f && (b & (1u << 17));
  c.avx512bw = c.avx512f && (b & (1u << 30));
  c.avx512vl = c.avx512f && (b & (1u << 31));
  if (max_sub >= 1) {
    __cpuid_count(7, 1, a, b, cx, d);
    c.avx512bf16 = c.avx512f && (a & (1u << 5));
  }
}
#else
void detect(CpuFeatures&) {}
#endif

bool can_run(const CpuFeatures& c, CpuKernel k) {
  const bool avx2 = c.avx2 && c.fma && c.f16c;
  const bool avx512 = avx2 && c.avx512f && c.avx512bw && c.avx512vl && c.avx512dq;
  switch (k) {
    case CpuKernel::kAvx512Bf16: return avx512 && c.avx512bf16;
    case CpuKernel::kAvx512: return avx512;
    case CpuKernel::kAvx2: return avx2;
    default: return true;
  }
}

// MOE_CPU_KERNEL's value as a table; false when unset or not a table's name.
bool parse_forced(const char* s, CpuKernel* k) {
  if (!s || !*s) return false;
  if (!std::strcmp(s, "portable")) *k = CpuKernel::kPortable;
  else if (!std::strcmp(s, "avx2") || !std::strcmp(s, "avx2-fma")) *k = CpuKernel::kAvx2;
  else if (!std::strcmp(s, "avx512")) *k = CpuKernel::kAvx512;
  else if (!std::strcmp(s, "avx512-bf16") || !std::strcmp(s, "avx512bf16")) *k = CpuKernel::kAvx512Bf16;
  else return false;
  return true;
}

}  // namespace

const char* cpu_kernel_name(CpuKernel k) {
  switch (k) {
    case CpuKernel::kAvx512Bf16: return "avx512-bf16";
    case CpuKernel::kAvx512: return "avx512";
    case CpuKernel::kAvx2: return "avx2-fma";
    default: return "portable";
  }
}

bool cpu_can_run(CpuKernel k) { return can_run(cpu_features(), k); }

const CpuFeatures& cpu_features() {
  static const CpuFeatures f = [] {
    CpuFeatures c;
    detect(c);
    CpuKernel want = CpuKernel::kAvx512Bf16;
    const char* env = std::getenv("MOE_CPU_KERNEL");
    const bool forced = parse_forced(env, &want);
    CpuKernel k = want;
    while (k != CpuKernel::kPortable && !can_run(c, k)) k = CpuKernel(int(k) - 1);
    c.table = k;
    c.kernel = cpu_kernel_name(k);
    if (env && *env && !forced)
      c.kernel_note = std::string("MOE_CPU_KERNEL=") + env + " is not a table (portable, avx2, avx512, avx512-bf16); widest usable";
    else if (forced && k == want)
      c.kernel_note = std::string("forced by MOE_CPU_KERNEL=") + env;
    else if (forced)
      c.kernel_note = std::string("MOE_CPU_KERNEL=") + env + " cannot run on this CPU; widest usable below it";
    else
      c.kernel_note = "widest usable";
    return c;
  }();
  return f;
}

}  // namespace moe
