// test/emu/race_mutant.cu: a shipped kernel file with one synchronisation removed or moved, for the
// race detector's tests (race_mutants_test.cc). The kernel file is included unchanged: macros
// defined here, before it, turn the one call site named by its line into the mutant. run.sh compiles
// this file once per mutant with
//   -DMOE_MUTANT=<1|2|3>       which mutant (below)
//   -DMOE_MUTANT_LINE=<n>      the line of the call site in the kernel file (run.sh finds it by its
//                              text and fails when the text is gone: a mutant must not silently
//                              become the original); MOE_MUTANT_LINE2 a second one (mutant 1)
//   -Dmoe=moe_mutant<k>        the kernel file's namespace renamed, so that the mutant links beside
//                              the real kernels in one test binary
// and exports one entry point in the global namespace with plain types (race_mutants.h).
//
//   1  grouped_gemm.cu, tensor-core pipeline: refill before the barrier. The loop's __syncthreads
//      moves from before the refill of stage (kt-1) % kStages to after it (the commit that follows),
//      so a warp refills a stage another warp may still be reading (write-after-read).
//   2  grouped_gemm.cu, the same __syncthreads removed: a warp reads a stage whose other rows other
//      threads' cp.async have not landed (read-after-write), and refills race as in 1.
//   3  permute.cu, scatter: the __syncwarp between the lanes' reads of their warp's digit counts
//      and the leaders' updates removed (write-after-read inside a warp).
#include "../../native/backends/cuda/cuda_compat.cuh"

#include "race_mutants.h"

#if !defined(MOE_MUTANT) || !defined(MOE_MUTANT_LINE)
#error "run.sh defines MOE_MUTANT and MOE_MUTANT_LINE"
#endif

// The real synchronisation, called by the macros below with the site of the original call.
inline void race_mutant_syncthreads(const char* file, int line) {
  if (MOE_MUTANT == 2 && line == MOE_MUTANT_LINE) return;
  if (MOE_MUTANT == 1 && line == MOE_MUTANT_LINE) return;
  __syncthreads(file, line);
}
inline void race_mutant_commit(const char* file, int line) {
  moe_cp_async_commit();
#if MOE_MUTANT == 1
  if (line == MOE_MUTANT_LINE2) __syncthreads(file, line);  // the moved barrier, after the refill
#else
  (void)file, (void)line;
#endif
}
inline void race_mutant_syncwarp(unsigned mask, const char* file, int line) {
  if (MOE_MUTANT == 3 && line == MOE_MUTANT_LINE) return;
  __syncwarp(mask, file, line);
}

#define __syncthreads() race_mutant_syncthreads(__FILE__, __LINE__)
#define moe_cp_async_commit() race_mutant_commit(__FILE__, __LINE__)
#define __syncwarp(...) race_mutant_syncwarp(race_mutant_mask(__VA_ARGS__), __FILE__, __LINE__)
inline unsigned race_mutant_mask(unsigned mask = 0xffffffffu) { return mask; }

#if MOE_MUTANT == 1 || MOE_MUTANT == 2
#include "../../native/backends/cuda/grouped_gemm.cu"

#if MOE_MUTANT == 1
cudaError_t race_mutant_gemm_refill_early(const RaceMutantGemm& a) {
#else
cudaError_t race_mutant_gemm_no_barrier(const RaceMutantGemm& a) {
#endif
  return moe::launch_grouped_gemm(a.x, moe::DevDType(a.x_dtype), a.num_tokens, a.sorted_rows, a.expert_offsets,
                                  a.max_rows, a.packed, a.num_experts, a.d, a.f, moe::DevDType(a.w_dtype), a.y,
                                  a.workspace, a.workspace_bytes, nullptr, moe::GroupedGemmPath(a.path));
}
#elif MOE_MUTANT == 3
#include "../../native/backends/cuda/permute.cu"

cudaError_t race_mutant_permute_no_syncwarp(const RaceMutantPermute& a) {
  return moe::launch_permute(a.topk_ids, a.num_tokens, a.top_k, a.num_experts, a.capacity, a.expert_offsets,
                             a.sorted_rows, a.row_of, a.dropped, a.first_invalid_slot, a.workspace,
                             a.workspace_bytes, nullptr);
}
#else
#error "unknown MOE_MUTANT"
#endif
