// moe-kernels CUDA: the MoE block forward pass, chained on one stream with no host round trip
// (graph-capturable): router logits -> [noisy gating] -> softmax + top-k -> [random routing] ->
// [router statistics] -> permute (dropless, or with the capacity) -> grouped expert GEMMs with fused
// SwiGLU (max_rows = T*k) -> [shared experts on every token] -> weighted combine (plus the shared
// output). Host code only: every kernel is one of the launchers
// of router.cu, routing.cu, router_stats.cu, permute.cu, grouped_gemm.cu and combine.cu.
//
// Workspace: every intermediate on a 256-byte boundary, in this order:
//   logits f32 [T,E] | noise logits f32 [T,E] (noisy gating only) | ids i32 [T,k] | weights f32 [T,k] |
//   expert_offsets i32 [E+1] | sorted_rows i32 [T*k] | row_of i32 [T*k] | y f32 [T*k, d] |
//   permute scratch | grouped-GEMM scratch (the larger of the routed and the shared GEMM's) |
//   router-statistics scratch | shared experts only: y_shared f32 [T, d] | shared logit f32 [T] |
//   shared offsets i32 [2]
// (logits / ids / weights are written to the caller's outputs instead when those are given).
#include "cuda_compat.cuh"
#include "launchers.h"
#include "decoder_launchers.h"
#include "quant_launchers.h"

#include <cstdint>


namespace moe {

namespace {
constexpr size_t kMoeAlign = 256;

size_t align_up(size_t n) { return (n + kMoeAlign - 1) / kMoeAlign * kMoeAlign; }

struct MoeWorkspaceLayout {
  size_t logits = 0, noise = 0, ids = 0, weights = 0, offsets = 0, sorted_rows = 0, row_of = 0, y = 0,
         permute = 0, gemm = 0, stats = 0, shared_y = 0, shared_logit = 0, shared_offsets = 0;
  size_t permute_bytes = 0, gemm_bytes = 0, stats_bytes = 0;
  size_t bytes = 0;  // 0: invalid shape
};

bool valid_dtype(DevDType t) { return t == DevDType::kF32 || t == DevDType::kF16 || t == DevDType::kBF16; }

// The layout for these routing options: the noise logits are only reserved for noisy gating; the
// statistics scratch (8 bytes per expert per 32 tokens) always, since the outputs that need it are
// not known when the workspace is sized.
MoeWorkspaceLayout moe_layout(const MoeDeviceLayer& layer, int64_t num_tokens, const MoeDeviceRouting& r) {
  MoeWorkspaceLayout L;
  const int E = layer.num_experts, top_k = r.params.route.top_k;
  const bool quant = layer.q13 != DType::kF32;
  if (num_tokens < 0 || E < 1 || top_k < 1 || top_k > E || layer.d < 1 || layer.f < 1 ||
      (!quant && !valid_dtype(layer.w_dtype)))
    return L;
  if (r.params.route.random_routing && top_k != 2) return L;
  if (num_tokens > (int64_t(1) << 30) / top_k) return L;  // permute's limit on slots
  const int64_t slots = num_tokens * top_k;
  if (layer.d > (int64_t(1) << 30) || slots * layer.d > (int64_t(1) << 46)) return L;
  L.permute_bytes = permute_workspace_bytes(num_tokens, top_k, E);
  L.gemm_bytes = quant ? quant_layer_gemm_workspace_bytes(num_tokens, slots, layer.d, layer.f)
                       : grouped_gemm_workspace_bytes(num_tokens, slots, layer.d, layer.f, layer.w_dtype);
  L.stats_bytes = router_stats_workspace_bytes(num_tokens, E);
  if (L.permute_bytes == 0 || L.gemm_bytes == 0 || L.stats_bytes == 0) return L;
  if (layer.shared_packed) {  // the shared experts' GEMM reuses the routed one's scratch
    if (layer.shared_f < 1) return L;
    const size_t shared_gemm = quant ? quant_layer_gemm_workspace_bytes(num_tokens, num_tokens, layer.d, layer.shared_f)
                                     : grouped_gemm_workspace_bytes(num_tokens, num_tokens, layer.d, layer.shared_f, layer.w_dtype);
    if (shared_gemm == 0) return L;
    if (shared_gemm > L.gemm_bytes) L.gemm_bytes = shared_gemm;
  }
  size_t at = 0;
  auto take = [&](size_t bytes) {
    const size_t here = at;
    at += align_up(bytes);
    return here;
  };
  L.logits = take(size_t(num_tokens) * size_t(E) * sizeof(float));
  if (r.noise_gate) L.noise = take(size_t(num_tokens) * size_t(E) * sizeof(float));
  L.ids = take(size_t(slots) * sizeof(int32_t));
  L.weights = take(size_t(slots) * sizeof(float));
  L.offsets = take((size_t(E) + 1) * sizeof(int32_t));
  L.sorted_rows = take(size_t(slots) * sizeof(int32_t));
  L.row_of = take(size_t(slots) * sizeof(int32_t));
  L.y = take(size_t(slots) * size_t(layer.d) * sizeof(float));
  L.permute = take(L.permute_bytes);
  L.gemm = take(L.gemm_bytes);
  L.stats = take(L.stats_bytes);
  if (layer.shared_packed) {
    L.shared_y = take(size_t(num_tokens) * size_t(layer.d) * sizeof(float));
    L.shared_logit = take(size_t(num_tokens) * sizeof(float));
    L.shared_offsets = take(2 * sizeof(int32_t));
  }
  L.bytes = at;
  return L;
}

MoeDeviceRouting mixtral_routing(int top_k, bool normalize) {
  MoeDeviceRouting r;
  r.params.route.top_k = top_k;
  r.params.route.normalize = normalize;
  return r;
}
}  // namespace

size_t moe_forward_workspace_bytes(const MoeDeviceLayer& layer, int64_t num_tokens, const MoeDeviceRouting& routing) {
  return moe_layout(layer, num_tokens, routing).bytes;
}

size_t moe_forward_workspace_bytes(const MoeDeviceLayer& layer, int64_t num_tokens, int top_k) {
  return moe_forward_workspace_bytes(layer, num_tokens, mixtral_routing(top_k, true));
}

cudaError_t launch_moe_forward(const MoeDeviceLayer& layer, const void* x, DevDType x_dtype, int64_t num_tokens,
                               const MoeDeviceRouting& r, void* out, DevDType out_dtype,
                               const MoeDeviceOutputs& outputs, void* workspace, size_t workspace_bytes,
                               cudaStream_t stream) {
  const MoeWorkspaceLayout L = moe_layout(layer, num_tokens, r);
  if (L.bytes == 0 || !valid_dtype(x_dtype) || !valid_dtype(out_dtype)) return cudaErrorInvalidValue;
  const RouteParams& rp = r.params.route;
  const int E = layer.num_experts, top_k = rp.top_k;
  if (num_tokens == 0) {  // nothing to compute; counts, drops and losses of no token are zero
    cudaError_t err = cudaSuccess;
    if (outputs.expert_counts) err = cudaMemsetAsync(outputs.expert_counts, 0, size_t(E) * sizeof(int32_t), stream);
    if (err == cudaSuccess && outputs.dropped)
      err = cudaMemsetAsync(outputs.dropped, 0, size_t(E) * sizeof(int32_t), stream);
    if (err == cudaSuccess && outputs.stats) err = cudaMemsetAsync(outputs.stats, 0, 2 * sizeof(float), stream);
    return err;
  }
  if (!x || !out || !layer.gate || !layer.packed || !workspace || workspace_bytes < L.bytes)
    return cudaErrorInvalidValue;
  if (reinterpret_cast<uintptr_t>(workspace) % kMoeAlign) return cudaErrorInvalidValue;

  unsigned char* ws = static_cast<unsigned char*>(workspace);
  const int64_t slots = num_tokens * top_k;
  float* logits = outputs.logits ? outputs.logits : reinterpret_cast<float*>(ws + L.logits);
  int32_t* ids = outputs.topk_ids ? outputs.topk_ids : reinterpret_cast<int32_t*>(ws + L.ids);
  float* weights = outputs.topk_weights ? outputs.topk_weights : reinterpret_cast<float*>(ws + L.weights);
  int32_t* offsets = reinterpret_cast<int32_t*>(ws + L.offsets);
  int32_t* sorted_rows = reinterpret_cast<int32_t*>(ws + L.sorted_rows);
  int32_t* row_of = reinterpret_cast<int32_t*>(ws + L.row_of);
  float* y = reinterpret_cast<float*>(ws + L.y);

  cudaError_t err = launch_router_logits(x, x_dtype, layer.gate, num_tokens, layer.d, E, logits, stream);
  if (err != cudaSuccess) return err;
  const float* routing_logits = logits;  // the clean logits, or H with noisy gating
  if (r.noise_gate) {
    float* noisy = reinterpret_cast<float*>(ws + L.noise);
    err = launch_router_logits(x, x_dtype, r.noise_gate, num_tokens, layer.d, E, noisy, stream);
    if (err != cudaSuccess) return err;
    err = launch_noisy_logits(logits, noisy, num_tokens, E, rp.noise_seed, noisy, stream);
    if (err != cudaSuccess) return err;
    routing_logits = noisy;
  }
  err = launch_softmax_topk(routing_logits, num_tokens, E, top_k, rp.normalize, ids, weights, stream);
  if (err != cudaSuccess) return err;
  if (rp.random_routing) {
    err = launch_random_routing(ids, weights, num_tokens, top_k, rp.random_seed, stream);
    if (err != cudaSuccess) return err;
  }
  if (outputs.expert_counts || outputs.stats) {
    err = launch_router_stats(logits, ids, num_tokens, E, top_k, outputs.expert_counts, outputs.stats, ws + L.stats,
                              L.stats_bytes, stream);
    if (err != cudaSuccess) return err;
  }
  const int64_t capacity = moe_capacity(r.params, num_tokens, E);
  err = launch_permute(ids, num_tokens, top_k, E, capacity, offsets, sorted_rows, row_of, outputs.dropped,
                       /*first_invalid_slot=*/nullptr, ws + L.permute, L.permute_bytes, stream);
  if (err != cudaSuccess) return err;
  const bool quant = layer.q13 != DType::kF32;
  err = quant ? launch_quant_layer_gemm(layer, false, x, x_dtype, num_tokens, sorted_rows, offsets, slots, y, ws + L.gemm,
                                        L.gemm_bytes, stream)
              : launch_grouped_gemm(x, x_dtype, num_tokens, sorted_rows, offsets, /*max_rows=*/slots, layer.packed, E,
                                    layer.d, layer.f, layer.w_dtype, y, ws + L.gemm, L.gemm_bytes, stream,
                                    grouped_gemm_fixed_path(layer.batch_invariant, layer.d, layer.f, layer.w_dtype));
  if (err != cudaSuccess) return err;
  float* shared_y = nullptr;
  float* shared_logit = nullptr;
  if (layer.shared_packed) {  // every token through the one shared expert, then its gate's logit
    int32_t* span = reinterpret_cast<int32_t*>(ws + L.shared_offsets);
    shared_y = reinterpret_cast<float*>(ws + L.shared_y);
    err = launch_row_span(span, num_tokens, stream);
    if (err != cudaSuccess) return err;
    err = quant ? launch_quant_layer_gemm(layer, true, x, x_dtype, num_tokens, nullptr, span, num_tokens, shared_y, ws + L.gemm,
                                          L.gemm_bytes, stream)
                : launch_grouped_gemm(x, x_dtype, num_tokens, /*sorted_rows=*/nullptr, span, /*max_rows=*/num_tokens,
                                      layer.shared_packed, 1, layer.d, layer.shared_f, layer.w_dtype, shared_y, ws + L.gemm,
                                      L.gemm_bytes, stream,
                                      grouped_gemm_fixed_path(layer.batch_invariant, layer.d, layer.shared_f, layer.w_dtype));
    if (err != cudaSuccess) return err;
    if (layer.shared_gate) {
      shared_logit = reinterpret_cast<float*>(ws + L.shared_logit);
      err = launch_router_logits(x, x_dtype, layer.shared_gate, num_tokens, layer.d, 1, shared_logit, stream);
      if (err != cudaSuccess) return err;
    }
  }
  return launch_combine(y, slots, row_of, weights, num_tokens, top_k, layer.d, out, out_dtype, stream, shared_y,
                        shared_logit);
}

size_t quant_layer_gemm_workspace_bytes(int64_t num_tokens, int64_t max_rows, int64_t d, int64_t f) {
  if (num_tokens < 0 || max_rows < 0 || d < 1 || f < 1) return 0;
  return align_up(size_t(num_tokens) * size_t(d) * 4) + align_up(size_t(max_rows) * size_t(f) * 4);
}

cudaError_t launch_quant_layer_gemm(const MoeDeviceLayer& layer, bool shared, const void* x, DevDType x_dtype, int64_t num_tokens,
                                    const int32_t* sorted_rows, const int32_t* offsets, int64_t max_rows, float* y,
                                    void* workspace, size_t workspace_bytes, cudaStream_t stream) {
  const int64_t d = layer.d, f = shared ? layer.shared_f : layer.f;
  const int E = shared ? 1 : layer.num_experts;
  const void* packed = shared ? layer.shared_packed : layer.packed;
  if (num_tokens == 0 || max_rows == 0) return cudaSuccess;
  if (!packed || !workspace || workspace_bytes < quant_layer_gemm_workspace_bytes(num_tokens, max_rows, d, f))
    return cudaErrorInvalidValue;
  unsigned char* ws = static_cast<unsigned char*>(workspace);
  float* x32 = reinterpret_cast<float*>(ws);
  float* h = reinterpret_cast<float*>(ws + align_up(size_t(num_tokens) * size_t(d) * 4));
  cudaError_t err = launch_cast(x, x_dtype, x32, DevDType::kF32, num_tokens * d, stream);
  if (err != cudaSuccess) return err;
  const size_t row13 = shared ? quant_device_row_bytes(layer.q13, d) : layer.row13;
  const size_t row2 = shared ? layer.shared_row2 : layer.row2, w2_off = shared ? layer.shared_w2_offset : layer.w2_offset;
  const size_t group = shared ? 0 : layer.expert_bytes;
  err = launch_quant_gemm1(x32, sorted_rows, offsets, E, packed, group, row13, layer.q13, d, f, h, stream);
  if (err != cudaSuccess) return err;
  return launch_quant_gemv(h, offsets, E, 0, static_cast<const unsigned char*>(packed) + w2_off, group, row2, layer.q2, f, d,
                           nullptr, y, stream);
}

cudaError_t launch_moe_forward(const MoeDeviceLayer& layer, const void* x, DevDType x_dtype, int64_t num_tokens,
                               int top_k, bool normalize, void* out, DevDType out_dtype, int32_t* topk_ids_out,
                               float* topk_weights_out, void* workspace, size_t workspace_bytes,
                               cudaStream_t stream) {
  MoeDeviceOutputs outputs;
  outputs.topk_ids = topk_ids_out;
  outputs.topk_weights = topk_weights_out;
  return launch_moe_forward(layer, x, x_dtype, num_tokens, mixtral_routing(top_k, normalize), out, out_dtype, outputs,
                            workspace, workspace_bytes, stream);
}

}  // namespace moe
