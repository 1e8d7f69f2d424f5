// test/emu/race_mutants.h: the entry points of the race detector's mutant kernels (race_mutant.cu,
// compiled once per mutant with the kernel file's namespace renamed), in plain types, since each
// mutant has its own copy of moe::DevDType and friends.
#pragma once
#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

// moe::launch_grouped_gemm's arguments (dtypes and path as their int values), stream null.
struct RaceMutantGemm {
  const void* x;
  int x_dtype;
  int64_t num_tokens;
  const int32_t* sorted_rows;
  const int32_t* expert_offsets;
  int64_t max_rows;
  const void* packed;
  int num_experts;
  int64_t d, f;
  int w_dtype;
  float* y;
  void* workspace;
  size_t workspace_bytes;
  int path;
};

// moe::launch_permute's arguments, stream null.
struct RaceMutantPermute {
  const int32_t* topk_ids;
  int64_t num_tokens;
  int top_k, num_experts;
  int64_t capacity;
  int32_t *expert_offsets, *sorted_rows, *row_of, *dropped, *first_invalid_slot;
  void* workspace;
  size_t workspace_bytes;
};

cudaError_t race_mutant_gemm_refill_early(const RaceMutantGemm& a);    // 1: refill before the barrier
cudaError_t race_mutant_gemm_no_barrier(const RaceMutantGemm& a);      // 2: the pipeline barrier removed
cudaError_t race_mutant_permute_no_syncwarp(const RaceMutantPermute& a);  // 3: scatter's first __syncwarp removed
