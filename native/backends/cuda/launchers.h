// moe-kernels CUDA: host-side declarations of the kernel launchers in native/backends/cuda/*.cu, for the
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

#include "moe/dtype.h"
#include "moe/moe_params.h"

namespace moe {

// Router softmax + top-k (native/backends/cuda/routing.cu; CPU twin: route() in native/backends/cpu/routing.cc).
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

// Noisy top-k gating (routing.cu; CPU twin: route() with RouteParams::noise_gate):
// noisy[t, e] = logits[t, e] + route_normal(seed, t, e) * route_softplus(noise_logits[t, e]), the
// product and the sum each rounded (no FMA), draws from moe/route_rng.h; noise_logits = x W_noise^T
// from launch_router_logits. Feed `noisy` to launch_softmax_topk (renormalize: the softmax over the
// k kept values). Errors: cudaErrorInvalidValue for num_tokens < 0, num_experts < 1, a null pointer.
cudaError_t launch_noisy_logits(const float* logits,        // [num_tokens, num_experts]
                                const float* noise_logits,  // [num_tokens, num_experts]
                                int64_t num_tokens, int num_experts, uint64_t seed,
                                float* noisy,               // [num_tokens, num_experts] (may alias logits)
                                cudaStream_t stream);

// GShard random routing (routing.cu; CPU twin: route() with RouteParams::random_routing), in place
// on launch_softmax_topk's output for top_k == 2: the second expert of token t is kept when
// route_keep_second(seed, t, w0, w1) (probability min(1, 2 * w1 / (w0 + w1))), else its id becomes
// kNoExpert (-1) and its weight 0. Errors: cudaErrorInvalidValue for num_tokens < 0, top_k != 2, a
// null pointer.
cudaError_t launch_random_routing(int32_t* topk_ids,      // [num_tokens, 2]
                                  float* topk_weights,    // [num_tokens, 2]
                                  int64_t num_tokens, int top_k, uint64_t seed, cudaStream_t stream);

// Router statistics (router_stats.cu; CPU twin: route() with a RouterStats, moe/moe_ops.h), from the
// clean f32 logits and the final topk_ids: expert_counts[e] = slots routed to e (kNoExpert slots
// count nowhere), stats[0] = E * sum_e (count_e / T) * mean_t softmax(logits_t)[e] (Switch loss, HF's
// top-k definition), stats[1] = mean_t logsumexp(logits_t)^2 (z-loss). Either output may be null.
// Fixed-order reductions, no atomics: the same bits on every run. T == 0 zeroes the outputs.
// workspace: device scratch of router_stats_workspace_bytes(num_tokens, num_experts) bytes
// (256-byte aligned). Errors: cudaErrorInvalidValue for a bad shape, a null input, a small workspace.
size_t router_stats_workspace_bytes(int64_t num_tokens, int num_experts);  // 0: invalid shape
cudaError_t launch_router_stats(const float* logits,       // [num_tokens, num_experts]
                                const int32_t* topk_ids,   // [num_tokens, top_k]
                                int64_t num_tokens, int num_experts, int top_k,
                                int32_t* expert_counts,    // [num_experts] or null
                                float* stats,              // [2] or null
                                void* workspace, size_t workspace_bytes, cudaStream_t stream);

// Permute: stable counting sort of the T*k routing slots by expert (native/backends/cuda/permute.cu; CPU
// twin: permute() in native/backends/cpu/permute.cc, same results bit for bit). Slot s = t * top_k + j.
//   expert_offsets [E+1]  exclusive prefix sum of the rows each expert keeps
//   sorted_rows    [T*k]  source token of each sorted row; -1 from expert_offsets[E] on
//   row_of         [T*k]  sorted row of each slot, -1 when dropped by the capacity (or invalid)
//   dropped        [E]    slots each expert dropped (may be null)
// capacity < 0: dropless; else each expert keeps its first `capacity` slots in slot (token) order.
// Rows of an expert ascend by slot. An id of kNoExpert (-1, moe/route_rng.h: a slot GShard random
// routing dropped) goes to no expert: row_of = -1, no sorted row, counted neither in expert_offsets
// nor in dropped, and not reported below. Any other id outside [0, num_experts) writes nothing out
// of bounds: its slot gets row_of = -1, no sorted row, and counts nowhere; first_invalid_slot (a
// device int, may be null) receives the smallest such slot, or -1 when every id is valid: read it
// after the stream synchronises to report the CPU twin's error. `workspace`: device scratch of at least
// permute_workspace_bytes(num_tokens, top_k, num_experts) bytes (int-aligned; its contents need
// no initialisation). Several kernels on `stream`, no host round trip (graph-capturable).
// Limits: num_tokens * top_k <= 2^30, num_experts <= 2^20 - 1 (E <= 1024 takes one pass, larger E
// two radix passes).
// Errors: cudaErrorInvalidValue for num_tokens < 0, top_k < 1, num_experts out of range, a null
// pointer that is needed, or a workspace that is too small.
size_t permute_workspace_bytes(int64_t num_tokens, int top_k, int num_experts);  // 0: invalid shape
cudaError_t launch_permute(const int32_t* topk_ids,     // [num_tokens, top_k]
                           int64_t num_tokens, int top_k, int num_experts, int64_t capacity,
                           int32_t* expert_offsets,     // [num_experts + 1]
                           int32_t* sorted_rows,        // [num_tokens * top_k]
                           int32_t* row_of,             // [num_tokens, top_k]
                           int32_t* dropped,            // [num_experts] or null
                           int32_t* first_invalid_slot, // [1] or null
                           void* workspace, size_t workspace_bytes, cudaStream_t stream);

// Element type of a float tensor on the device (the values of moe::DType's float types), shared by
// every launcher that takes one.
enum class DevDType : int { kF32 = 0, kF16 = 1, kBF16 = 2 };

// Combine (native/backends/cuda/combine.cu; CPU twin: combine() in native/backends/cpu/combine.cc):
// out[t, :] = sum over j = 0..top_k-1 of topk_weights[t, j] * y[row_of[t, j], :], in f32 and in j
// order, each term rounded as a product then a sum (no FMA contraction), so results are the same bits
// on every run and match the CPU twin; row_of < 0 (dropped) contributes nothing, and so does a row
// >= num_rows (the CPU twin rejects one; nothing is read out of bounds). out is f32, f16 or bf16
// (rounded to nearest even). float4 loads when d % 4 == 0 and the pointers allow it.
// Shared experts: with `shared` the f32 sum then gets + g * shared[t, :], g = 1 or, with
// shared_logit, sigmoid(shared_logit[t]) (product and sum rounded, as the CPU twin's).
// Errors: cudaErrorInvalidValue for num_tokens < 0, top_k < 1, d < 0, num_rows < 0, an unknown
// out_dtype, or a null pointer that is needed (num_tokens == 0 or d == 0 launches nothing).
cudaError_t launch_combine(const float* y,              // [num_rows, d]
                           int64_t num_rows,
                           const int32_t* row_of,       // [num_tokens, top_k]
                           const float* topk_weights,   // [num_tokens, top_k]
                           int64_t num_tokens, int top_k, int64_t d,
                           void* out,                   // [num_tokens, d] of out_dtype
                           DevDType out_dtype, cudaStream_t stream,
                           const float* shared = nullptr,        // [num_tokens, d] or null
                           const float* shared_logit = nullptr); // [num_tokens] or null

// offsets[0] = 0, offsets[1] = n (combine.cu): the expert_offsets of a one-expert grouped GEMM over
// n rows, written on the device. Errors: cudaErrorInvalidValue for a null pointer or n out of int32.
cudaError_t launch_row_span(int32_t* offsets, int64_t n, cudaStream_t stream);

// Grouped expert GEMMs with fused SwiGLU (native/backends/cuda/grouped_gemm.cu; CPU twin: grouped_gemm()
// in native/backends/cpu/grouped_gemm.cc). For each sorted row r of expert e (expert_offsets[e] <= r <
// expert_offsets[e+1]) and token t = sorted_rows[r] (sorted_rows null: t = r):
//   h[r, :] = silu(W1_e x[t, :]) * (W3_e x[t, :])   (f32 math; h stored in the weight dtype)
//   y[r, :] = W2_e h[r, :]                           (f32 accumulation)
// Tiles are scheduled on the device from expert_offsets (no host round trip; graph-capturable).
// x is read in the weight dtype: another dtype (or x not 16-byte aligned) is first converted into
// the workspace, so with f16/bf16 weights f32 activations are rounded to 16 bits.
// Preconditions the device cannot check: expert_offsets is non-decreasing from 0 and
// R = expert_offsets[E] <= max_rows (rows past max_rows are not computed); sorted_rows[r] in [0, T).
// Paths (kAuto picks by grouped_gemm_path from host-known values only): kDecode (max_rows <= 16):
// GEMV-style weight streaming; kTensorCores: f16/bf16 with d % 8 == 0 and f % 8 == 0, mma.sync;
// kSimt: f32, and the general fallback. Forcing kTensorCores where it does not apply is an error.
enum class GroupedGemmPath : int { kAuto = 0, kDecode = 1, kTensorCores = 2, kSimt = 3 };
GroupedGemmPath grouped_gemm_path(int64_t max_rows, int64_t d, int64_t f, DevDType w_dtype);

// Packed weights, built once on the host (no CUDA calls) into a caller buffer of
// grouped_gemm_packed_bytes(...) bytes (0: invalid shape), then copied to the device as is:
//   W13 [E][2*f_pad][d], f_pad = round_up(f, 8): packed row 16g+i = W1 row 8g+i, row 16g+8+i = W3
//       row 8g+i (i < 8); rows of features >= f are zero;
//   W2  [E][d][f] (Hugging Face layout), starting at W13's bytes rounded up to 256.
// w1[e], w3[e]: [f, d], w2[e]: [d, f], host pointers in w_dtype, one per expert.
// Limits: d, f <= 2^30, 2*f_pad*d < 2^31, d*f < 2^31.
size_t grouped_gemm_packed_bytes(int num_experts, int64_t d, int64_t f, DevDType w_dtype);
cudaError_t grouped_gemm_pack(int num_experts, int64_t d, int64_t f, DevDType w_dtype,
                              const void* const* w1,  // [E] -> [f, d]
                              const void* const* w3,  // [E] -> [f, d]
                              const void* const* w2,  // [E] -> [d, f]
                              void* packed, size_t packed_bytes);

// Device scratch: h [max_rows][f] and the converted x [num_tokens][d], both in the weight dtype,
// each on a 256-byte boundary. 0: invalid shape.
size_t grouped_gemm_workspace_bytes(int64_t num_tokens, int64_t max_rows, int64_t d, int64_t f,
                                    DevDType w_dtype);

// The path whose per-row result does not depend on max_rows (the tiles: tensor cores where they
// apply, else SIMT; never the decode GEMV), or kAuto when `invariant` is false.
GroupedGemmPath grouped_gemm_fixed_path(bool invariant, int64_t d, int64_t f, DevDType w_dtype);

// packed, workspace and y must be 16-byte aligned (cudaMalloc's are), x aligned to its element.
// max_rows == 0 or num_tokens == 0 launches nothing. Errors: cudaErrorInvalidValue for an invalid
// shape or dtype, a null or misaligned pointer that is needed, a workspace that is too small, or a
// forced path that does not apply.
cudaError_t launch_grouped_gemm(const void* x,                 // [num_tokens, d] of x_dtype
                                DevDType x_dtype, int64_t num_tokens,
                                const int32_t* sorted_rows,    // [max_rows] (first R used) or null
                                const int32_t* expert_offsets, // [num_experts + 1]
                                int64_t max_rows,              // host-known bound on R, e.g. T*k
                                const void* packed,            // grouped_gemm_pack's layout
                                int num_experts, int64_t d, int64_t f, DevDType w_dtype,
                                float* y,                      // [max_rows, d] (first R written)
                                void* workspace, size_t workspace_bytes, cudaStream_t stream,
                                GroupedGemmPath path = GroupedGemmPath::kAuto);

}  // namespace moe

namespace moe {

// Router logits (native/backends/cuda/router.cu): logits[t, e] = sum_i x[t, i] * gate[e, i], x read in
// x_dtype and widened to f32, f32 accumulation (one warp per (t, e); lane partials strided over d,
// then an xor butterfly: the same bits on every run, not those of a serial sum).
// Errors: cudaErrorInvalidValue for num_tokens < 0, d < 0, num_experts < 1, an unknown x_dtype, or a
// null / misaligned pointer that is needed (num_tokens == 0 launches nothing).
cudaError_t launch_router_logits(const void* x,         // [num_tokens, d] of x_dtype
                                 DevDType x_dtype,
                                 const float* gate,     // [num_experts, d]
                                 int64_t num_tokens, int64_t d, int num_experts,
                                 float* logits,         // [num_tokens, num_experts]
                                 cudaStream_t stream);

// One MoE layer's weights on the device.
struct MoeDeviceLayer {
  int num_experts = 0;
  int64_t d = 0, f = 0;                 // model and expert hidden sizes
  DevDType w_dtype = DevDType::kBF16;   // expert weights' dtype
  const float* gate = nullptr;          // device [num_experts, d], f32
  const void* packed = nullptr;         // device, grouped_gemm_pack's layout (16-byte aligned)
  // Each row's result independent of the row count: the grouped GEMMs take grouped_gemm_fixed_path().
  bool batch_invariant = false;
  // Shared experts (optional): one packed expert of intermediate size shared_f (same d and w_dtype),
  // run on every token and added in the combine, scaled by sigmoid(x . shared_gate) when
  // shared_gate (device [1, d] f32) is set.
  const void* shared_packed = nullptr;
  int64_t shared_f = 0;
  const float* shared_gate = nullptr;
  // Quantised experts (quant_gemm.cu; w_dtype unused): W1/W3 in q13 and W2 in q2 (kF32: not
  // quantised), per expert 2f rows of row13 bytes (W1 and W3 interleaved) then d rows of row2 bytes
  // from w2_offset; expert_bytes apart. The shared experts (one expert) in the same formats.
  DType q13 = DType::kF32, q2 = DType::kF32;
  size_t expert_bytes = 0, row13 = 0, row2 = 0, w2_offset = 0;
  size_t shared_row2 = 0, shared_w2_offset = 0;
};

// The quantised grouped GEMM of a layer (moe_forward.cu): x of x_dtype -> f32 in the workspace, then
// launch_quant_gemm1 and launch_quant_gemv; workspace quant_layer_gemm_workspace_bytes().
size_t quant_layer_gemm_workspace_bytes(int64_t num_tokens, int64_t max_rows, int64_t d, int64_t f);
cudaError_t launch_quant_layer_gemm(const MoeDeviceLayer& layer, bool shared, const void* x, DevDType x_dtype, int64_t num_tokens,
                                    const int32_t* sorted_rows, const int32_t* offsets, int64_t max_rows, float* y,
                                    void* workspace, size_t workspace_bytes, cudaStream_t stream);

// Routing of one forward: moe::MoeForwardParams (moe/moe_ops.h: top-k, renormalisation, capacity, noisy
// gating, random routing; the one declaration every backend reads), with the noise weights on the
// device. params.route.noise_gate is not read here: noisy gating is on when noise_gate is set.
struct MoeDeviceRouting {
  MoeForwardParams params;
  const float* noise_gate = nullptr;  // device [num_experts, d] f32, or null
};

// Optional device outputs of one forward (each may be null).
struct MoeDeviceOutputs {
  int32_t* topk_ids = nullptr;       // [T, k] (kNoExpert for a slot random routing dropped)
  float* topk_weights = nullptr;     // [T, k]
  int32_t* expert_counts = nullptr;  // [E] slots routed to each expert, before capacity
  int32_t* dropped = nullptr;        // [E] slots each expert dropped for its capacity
  float* logits = nullptr;           // [T, E] clean router logits
  float* stats = nullptr;            // [2]: aux_loss, z_loss (launch_router_stats)
};

// Workspace for launch_moe_forward (every intermediate on a 256-byte boundary). 0: invalid shape.
size_t moe_forward_workspace_bytes(const MoeDeviceLayer& layer, int64_t num_tokens, int top_k);
size_t moe_forward_workspace_bytes(const MoeDeviceLayer& layer, int64_t num_tokens, const MoeDeviceRouting& routing);

// The MoE block (native/backends/cuda/moe_forward.cu), all on `stream` with no host synchronisation
// (graph-capturable): launch_router_logits -> launch_softmax_topk (renormalize = normalize) ->
// launch_permute (dropless) -> launch_grouped_gemm (max_rows = T*k) -> launch_combine into `out`
// [num_tokens, d] of out_dtype. topk_ids_out [T, k] / topk_weights_out [T, k] (device, may be null)
// receive the routing. workspace: device, 256-byte aligned, >= moe_forward_workspace_bytes(...).
// Errors: cudaErrorInvalidValue for an invalid shape or dtype, a null pointer that is needed, a small
// or misaligned workspace; otherwise the first failing launcher's status.
cudaError_t launch_moe_forward(const MoeDeviceLayer& layer, const void* x, DevDType x_dtype, int64_t num_tokens,
                               int top_k, bool normalize, void* out, DevDType out_dtype,
                               int32_t* topk_ids_out,     // [num_tokens, top_k] or null
                               float* topk_weights_out,   // [num_tokens, top_k] or null
                               void* workspace, size_t workspace_bytes, cudaStream_t stream);

// The same with the routing variants: router logits (and x W_noise^T -> launch_noisy_logits when
// noisy) -> launch_softmax_topk -> launch_random_routing (when on) -> launch_router_stats (when
// counts or stats are asked for) -> launch_permute with the capacity -> grouped GEMM -> [shared
// experts: launch_row_span -> one-expert grouped GEMM over all tokens -> router logits of
// shared_gate] -> combine (with the shared output added).
// Errors as above, plus cudaErrorInvalidValue for random_routing with top_k != 2.
cudaError_t launch_moe_forward(const MoeDeviceLayer& layer, const void* x, DevDType x_dtype, int64_t num_tokens,
                               const MoeDeviceRouting& routing, void* out, DevDType out_dtype,
                               const MoeDeviceOutputs& outputs, void* workspace, size_t workspace_bytes,
                               cudaStream_t stream);

}  // namespace moe
