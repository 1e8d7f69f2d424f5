// moe-kernels CUDA: the MoE block forward pass, chained on one stream with no host round trip
// (graph-capturable): router logits -> softmax + top-k -> permute (dropless) -> grouped expert
// GEMMs with fused SwiGLU (max_rows = T*k) -> weighted combine. Host code only: every kernel is one
// of the launchers of router.cu, routing.cu, permute.cu, grouped_gemm.cu and combine.cu.
//
// Workspace: every intermediate on a 256-byte boundary, in this order:
//   logits f32 [T,E] | ids i32 [T,k] | weights f32 [T,k] | expert_offsets i32 [E+1] |
//   sorted_rows i32 [T*k] | row_of i32 [T*k] | y f32 [T*k, d] | permute scratch | grouped-GEMM scratch
// (ids / weights are written to topk_ids_out / topk_weights_out instead when those are given).
#include "cuda_compat.cuh"
#include "launchers.h"

#include <cstdint>

namespace moe {

namespace {
constexpr size_t kMoeAlign = 256;

size_t align_up(size_t n) { return (n + kMoeAlign - 1) / kMoeAlign * kMoeAlign; }

struct MoeWorkspaceLayout {
  size_t logits = 0, ids = 0, weights = 0, offsets = 0, sorted_rows = 0, row_of = 0, y = 0, permute = 0,
         gemm = 0;
  size_t permute_bytes = 0, gemm_bytes = 0;
  size_t bytes = 0;  // 0: invalid shape
};

bool valid_dtype(DevDType t) { return t == DevDType::kF32 || t == DevDType::kF16 || t == DevDType::kBF16; }

MoeWorkspaceLayout moe_layout(const MoeDeviceLayer& layer, int64_t num_tokens, int top_k) {
  MoeWorkspaceLayout L;
  const int E = layer.num_experts;
  if (num_tokens < 0 || E < 1 || top_k < 1 || top_k > E || layer.d < 1 || layer.f < 1 ||
      !valid_dtype(layer.w_dtype))
    return L;
  if (num_tokens > (int64_t(1) << 30) / top_k) return L;  // permute's limit on slots
  const int64_t slots = num_tokens * top_k;
  if (layer.d > (int64_t(1) << 30) || slots * layer.d > (int64_t(1) << 46)) return L;
  L.permute_bytes = permute_workspace_bytes(num_tokens, top_k, E);
  L.gemm_bytes = grouped_gemm_workspace_bytes(num_tokens, slots, layer.d, layer.f, layer.w_dtype);
  if (L.permute_bytes == 0 || L.gemm_bytes == 0) return L;
  size_t at = 0;
  auto take = [&](size_t bytes) {
    const size_t here = at;
    at += align_up(bytes);
    return here;
  };
  L.logits = take(size_t(num_tokens) * size_t(E) * sizeof(float));
  L.ids = take(size_t(slots) * sizeof(int32_t));
  L.weights = take(size_t(slots) * sizeof(float));
  L.offsets = take((size_t(E) + 1) * sizeof(int32_t));
  L.sorted_rows = take(size_t(slots) * sizeof(int32_t));
  L.row_of = take(size_t(slots) * sizeof(int32_t));
  L.y = take(size_t(slots) * size_t(layer.d) * sizeof(float));
  L.permute = take(L.permute_bytes);
  L.gemm = take(L.gemm_bytes);
  L.bytes = at;
  return L;
}
}  // namespace

size_t moe_forward_workspace_bytes(const MoeDeviceLayer& layer, int64_t num_tokens, int top_k) {
  return moe_layout(layer, num_tokens, top_k).bytes;
}

cudaError_t launch_moe_forward(const MoeDeviceLayer& layer, const void* x, DevDType x_dtype, int64_t num_tokens,
                               int top_k, bool normalize, void* out, DevDType out_dtype, int32_t* topk_ids_out,
                               float* topk_weights_out, void* workspace, size_t workspace_bytes,
                               cudaStream_t stream) {
  const MoeWorkspaceLayout L = moe_layout(layer, num_tokens, top_k);
  if (L.bytes == 0 || !valid_dtype(x_dtype) || !valid_dtype(out_dtype)) return cudaErrorInvalidValue;
  if (num_tokens == 0) return cudaSuccess;
  if (!x || !out || !layer.gate || !layer.packed || !workspace || workspace_bytes < L.bytes)
    return cudaErrorInvalidValue;
  if (reinterpret_cast<uintptr_t>(workspace) % kMoeAlign) return cudaErrorInvalidValue;

  unsigned char* ws = static_cast<unsigned char*>(workspace);
  const int E = layer.num_experts;
  const int64_t slots = num_tokens * top_k;
  float* logits = reinterpret_cast<float*>(ws + L.logits);
  int32_t* ids = topk_ids_out ? topk_ids_out : reinterpret_cast<int32_t*>(ws + L.ids);
  float* weights = topk_weights_out ? topk_weights_out : reinterpret_cast<float*>(ws + L.weights);
  int32_t* offsets = reinterpret_cast<int32_t*>(ws + L.offsets);
  int32_t* sorted_rows = reinterpret_cast<int32_t*>(ws + L.sorted_rows);
  int32_t* row_of = reinterpret_cast<int32_t*>(ws + L.row_of);
  float* y = reinterpret_cast<float*>(ws + L.y);

  cudaError_t err = launch_router_logits(x, x_dtype, layer.gate, num_tokens, layer.d, E, logits, stream);
  if (err != cudaSuccess) return err;
  err = launch_softmax_topk(logits, num_tokens, E, top_k, normalize, ids, weights, stream);
  if (err != cudaSuccess) return err;
  err = launch_permute(ids, num_tokens, top_k, E, /*capacity=*/-1, offsets, sorted_rows, row_of,
                       /*dropped=*/nullptr, /*first_invalid_slot=*/nullptr, ws + L.permute, L.permute_bytes, stream);
  if (err != cudaSuccess) return err;
  err = launch_grouped_gemm(x, x_dtype, num_tokens, sorted_rows, offsets, /*max_rows=*/slots, layer.packed, E,
                            layer.d, layer.f, layer.w_dtype, y, ws + L.gemm, L.gemm_bytes, stream);
  if (err != cudaSuccess) return err;
  return launch_combine(y, slots, row_of, weights, num_tokens, top_k, layer.d, out, out_dtype, stream);
}

}  // namespace moe
