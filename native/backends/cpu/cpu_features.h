// moe-kernels: what the CPU can do, detected once at run time, and the CPU kernel table chosen from it.
//
// Tables, widest first (each needs the instructions below it too):
//   avx512-bf16  AVX512-BF16: bf16 weights dotted with activations rounded to bf16 (vdpbf16ps, f32
//                accumulation); f32 and f16 weights as in avx512
//   avx512       AVX-512F/BW/VL: f32 FMA on zmm; f16 weights widened by vcvtph2ps, bf16 by a shift
//   avx2-fma     AVX2/FMA/F16C: the same on ymm
//   portable     baseline vector code, no FMA
// A table is usable when cpuid reports its instructions and the OS saves their registers (XCR0 via
// xgetbv: the ymm state for AVX2, the opmask and zmm state for AVX-512). MOE_CPU_KERNEL=portable |
// avx2 | avx512 | avx512-bf16 forces a table; one the CPU cannot run falls back to the widest usable
// table below it (`kernel` says which one runs, `kernel_note` why).
#pragma once
#include <string>

namespace moe {

enum class CpuKernel : int { kPortable = 0, kAvx2 = 1, kAvx512 = 2, kAvx512Bf16 = 3 };

struct CpuFeatures {
  // Instruction sets usable here (cpuid and, for the AVX families, the OS's XSAVE state).
  bool avx2 = false, fma = false, f16c = false, avx512f = false, avx512bf16 = false;
  bool avx512bw = false, avx512vl = false, avx512dq = false;
  bool os_avx = false, os_avx512 = false;  // XCR0: ymm state; opmask + zmm state
  CpuKernel table = CpuKernel::kPortable;
  std::string kernel;       // table name: "avx512-bf16", "avx512", "avx2-fma" or "portable"
  std::string kernel_note;  // why this table: "widest usable", "forced by MOE_CPU_KERNEL=...", ...
};

const CpuFeatures& cpu_features();

// The table's name as reported by backendInfo().cpu.kernel.
const char* cpu_kernel_name(CpuKernel k);

// Whether this CPU (and OS) can run table k.
bool cpu_can_run(CpuKernel k);

}  // namespace moe
