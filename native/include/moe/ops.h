// moe-kernels: the backend-neutral op API. Every backend implements these op names with these
// layouts (DESIGN.md, "The MoE layer, stage by stage"); shapes are in the comments.
//
//   route         x [T,d], gate [E,d]          -> topk_ids [T,k] i32, topk_weights [T,k] f32,
//                                                 expert_counts [E] i32, logits [T,E] f32 (optional)
//   permute       topk_ids [T,k]               -> expert_offsets [E+1] (exclusive prefix sum),
//                                                 sorted_rows [T*k] (source token of each sorted row),
//                                                 row_of [T,k] (sorted row of each slot, -1 if dropped)
//   grouped_gemm  x [T,d] f32, sorted_rows, expert_offsets, packed W1/W3 [E,f,d], W2 [E,d,f]
//                                              -> y [R,d] f32 with R = expert_offsets[E]
//   combine       y [R,d] f32, row_of [T,k], topk_weights [T,k] -> out [T,d]
//
// Intermediates (logits, topk_weights, y) are f32 whatever the activation dtype; every accumulator
// is f32. Ops return a Status, never throw, never exit.
#pragma once
#include <cstdint>
#include <memory>
#include <vector>

#include "moe/status.h"
#include "moe/tensor.h"

namespace moe {

// ---- route ---------------------------------------------------------------------------------
struct RouteParams {
  int top_k = 2;
  bool normalize = true;  // renormalise the k kept probabilities to sum to one (Mixtral)
};

// x: [T,d] f32/f16/bf16; gate: [E,d] f32/f16/bf16 (HF layout, [out,in]).
// topk_ids [T,k], topk_weights [T,k]: required. expert_counts [E] (tokens routed to each expert)
// and logits [T,E]: may be null. Ties in top-k go to the lower expert index; ids of one token are
// ordered by decreasing weight.
Status route(const TensorView& x, const TensorView& gate, const RouteParams& p, int32_t* topk_ids,
             float* topk_weights, int32_t* expert_counts, float* logits);

// ---- permute -------------------------------------------------------------------------------
// Stable counting sort of the T*k slots by expert. capacity < 0: dropless. capacity >= 0: each
// expert keeps its first `capacity` slots in token order; the rest get row_of = -1 and are counted
// in dropped[E] (may be null). sorted_rows has expert_offsets[E] valid entries, the rest are -1.
Status permute(const int32_t* topk_ids, int64_t T, int k, int E, int64_t capacity,
               int32_t* expert_offsets, int32_t* sorted_rows, int32_t* row_of, int32_t* dropped);

// ---- grouped GEMM over experts with fused SwiGLU -------------------------------------------
// Expert weights in Hugging Face layout, one pointer per expert (so both [E,f,d] tensors and
// per-expert arrays are accepted without copies): w1[e], w3[e] -> [f,d]; w2[e] -> [d,f].
struct ExpertWeightSource {
  int num_experts = 0;
  int64_t d = 0, f = 0;
  DType dtype = DType::kF32;  // f32, f16 or bf16; all three matrices share it
  std::vector<const void*> w1, w3, w2;
};

// Backend-specific packed copy of the expert weights, built once per layer.
class PackedExperts {
 public:
  virtual ~PackedExperts() = default;
  int num_experts = 0;
  int64_t d = 0, f = 0;
  DType dtype = DType::kF32;
  virtual size_t bytes() const = 0;  // memory held by the packed weights
  // The backend that packed them and runs ops on them: "cpu", "cuda" or "cuda-emu".
  virtual const char* backend() const { return "cpu"; }
};

// Copies and repacks the weights; the source may be freed afterwards.
Status pack_experts(const ExpertWeightSource& src, std::unique_ptr<PackedExperts>* out);

// x: [T,d] f32. sorted_rows: [R] source token of each row, or null for the identity (then R == T).
// expert_offsets: [E+1]. y: [R,d] f32 where R = expert_offsets[E].
// y[r] = W2_e (silu(W1_e x[sorted_rows[r]]) * (W3_e x[sorted_rows[r]])) for the expert e owning r.
Status grouped_gemm(const float* x, int64_t T, const int32_t* sorted_rows,
                    const int32_t* expert_offsets, const PackedExperts& w, float* y);

// ---- combine -------------------------------------------------------------------------------
// out[t] = sum_j topk_weights[t,j] * y[row_of[t,j]], summed in f32 in j order; row_of < 0 skipped.
// out: [T,d] f32/f16/bf16.
Status combine(const float* y, int64_t R, const int32_t* row_of, const float* topk_weights,
               int64_t T, int k, const TensorView& out);

// ---- whole layers --------------------------------------------------------------------------
// An MoE layer: router gate (f32 copy, [E,d]) and packed experts.
// gate: [E,d] any float dtype (small; widened per call). experts: packed once per layer.
struct MoeLayerWeights {
  TensorView gate;
  const PackedExperts* experts = nullptr;
};

struct MoeForwardParams {
  RouteParams route;
  int64_t capacity = -1;  // -1: dropless
};

// Outputs of one forward; all but `out` may be null.
struct MoeForwardOutputs {
  TensorView out;                  // [T,d], any float dtype
  int32_t* topk_ids = nullptr;     // [T,k]
  float* topk_weights = nullptr;   // [T,k]
  int32_t* expert_counts = nullptr;  // [E]
};

// Runs route -> permute -> grouped_gemm -> combine with scratch of O(T*k*(d+f)).
Status moe_forward(const MoeLayerWeights& layer, const TensorView& x, const MoeForwardParams& p,
                   const MoeForwardOutputs& outs);

// Dense SwiGLU FFN (the baseline): experts packed with num_experts == 1.
// out = W2 (silu(W1 x) * (W3 x)), out [T,d] any float dtype.
Status dense_ffn(const PackedExperts& w, const TensorView& x, const TensorView& out);

// Widens a [n] float tensor of any dtype to f32 (threaded for large n).
void widen_to_f32(const TensorView& x, float* dst);

}  // namespace moe
