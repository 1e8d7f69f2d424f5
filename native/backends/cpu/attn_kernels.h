// Inner loops of the CPU attention (attention.cc) over one kv head's contiguous cache rows, in the
// cache's type (f32, or f16/bf16 widened on the fly): the scores of one query against n keys, and
// the softmax-weighted sum of n values. Two families, picked once by the run-time CPU check like
// the GEMM kernels: AVX2/FMA (attention_avx2.cc) and portable (attention.cc). Each output is a
// fixed-order f32 computation, so results do not depend on threads; the two families differ in
// the last bits (FMA).
#pragma once
#include <cstdint>

#include "moe/dtype.h"

namespace moe {
namespace cpu {

struct AttnKernels {
  // out[j] = scale * sum_i q[i] * k[j*hd + i] for j < n
  void (*scores)(const float* q, const void* k, DType t, int64_t n, int64_t hd, float scale, float* out);
  // acc[i] += sum_j e[j] * v[j*hd + i] for i < hd, j in increasing order
  void (*weighted_sum)(const float* e, const void* v, DType t, int64_t n, int64_t hd, float* acc);
  // weighted_sum for `heads` query heads against the same values (head g: e + g*e_stride, acc +
  // g*hd), each with exactly weighted_sum's arithmetic; the heads only share the value loads
  void (*weighted_sum_heads)(const float* e, int64_t e_stride, int heads, const void* v, DType t, int64_t n, int64_t hd, float* acc);
};

// The table of this CPU (attention.cc; paged_attention.cc uses it too).
const AttnKernels& attn_kernels();
const AttnKernels& attn_portable_kernels();
const AttnKernels& attn_avx2_kernels();    // only when cpu_can_run(CpuKernel::kAvx2)
const AttnKernels& attn_avx512_kernels();  // only when cpu_can_run(CpuKernel::kAvx512)

}  // namespace cpu
}  // namespace moe
