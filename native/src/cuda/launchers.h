// moe-kernels CUDA: host-side declarations of the kernel launchers in native/src/cuda/*.cu, for the
// CUDA backend (and the emulated tests) to call. Each launcher validates its arguments, enqueues its
// kernels on `stream` and returns the status (cudaSuccess, or the launch/argument error); it never
// synchronises and never exits. Message for a code: moe_error_string (cuda_compat.cuh) in .cu files,
// moe_emu::error_string in emulated builds, cudaGetErrorString otherwise.
//
// Only the runtime API's types are needed here. In a translation unit that also includes
// cuda_compat.cuh (an emulated test), include cuda_compat.cuh first: its keyword macros must come
// before any CUDA header.
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>

namespace moe {

// Router softmax + top-k (native/src/cuda/routing.cu; CPU twin: route() in native/src/cpu/routing.cc).
// Softmax in f32 over each row of logits; the top_k experts of a token are the top_k logits, ties to
// the lower expert index, NaN ranked last; ids ordered by decreasing weight; weight = softmax
// probability, divided by the sum of the kept top_k when `renormalize`.
// Errors: cudaErrorInvalidValue when num_tokens < 0, num_experts < 1, top_k not in [1, num_experts]
// or a pointer is null (num_tokens == 0 launches nothing and succeeds).
cudaError_t launch_softmax_topk(const float* logits,    // [num_tokens, num_experts]
                                int64_t num_tokens, int num_experts, int top_k, bool renormalize,
                                int32_t* topk_ids,       // [num_tokens, top_k]
                                float* topk_weights,     // [num_tokens, top_k]
                                cudaStream_t stream);

}  // namespace moe
