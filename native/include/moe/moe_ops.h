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

#include "moe/route_rng.h"
#include "moe/status.h"
#include "moe/tensor.h"

namespace moe {

// ---- route ---------------------------------------------------------------------------------
// Routing variants (all off by default: Mixtral top-k, renormalised). The random draws come from
// the counter-based generator of moe/route_rng.h, keyed by (seed, token index, expert), so a seed
// gives the same routing on every backend and every run.
struct RouteParams {
  int top_k = 2;
  bool normalize = true;  // renormalise the k kept probabilities to sum to one (Mixtral)
  // Noisy top-k gating (Shazeer et al. 2017) when noise_gate.data is set: W_noise [E,d], any float
  // dtype. The routing logits become H[t,e] = logits[t,e] + N(0,1) * softplus(x_t . W_noise[e])
  // (route_normal(noise_seed, t, e)); top-k and the softmax use H (with normalize: the softmax over
  // the k kept values of H). Reported logits and router statistics use the clean logits.
  TensorView noise_gate;
  uint64_t noise_seed = 0;
  // GShard random routing (top_k == 2 only): the second expert of each token is kept with
  // probability min(1, 2 * g2) (route_keep_second(random_seed, t, w0, w1)); a dropped second slot
  // gets id kNoExpert (-1) and weight 0, and the first keeps its weight.
  bool random_routing = false;
  uint64_t random_seed = 0;
};

// Router statistics for training-time monitoring, from the clean f32 logits of the call.
struct RouterStats {
  // Switch load-balancing loss E * sum_e f_e * P_e as Hugging Face transformers'
  // load_balancing_loss_func computes it for top-k: f_e = (slots routed to e) / T, summed over the
  // k choices (so sum_e f_e = k, and perfectly uniform routing gives k), P_e = mean over tokens of
  // softmax(logits)[e]. Slots routed to no expert (random routing) count nowhere; capacity drops
  // still count (f_e is the router's choice, before capacity).
  float aux_loss = 0.f;
  // ST-MoE router z-loss: mean over tokens of logsumexp(logits_t)^2.
  float z_loss = 0.f;
};

// x: [T,d] f32/f16/bf16; gate: [E,d] f32/f16/bf16 (HF layout, [out,in]).
// topk_ids [T,k], topk_weights [T,k]: required. expert_counts [E] (slots routed to each expert,
// kNoExpert slots not counted), logits [T,E] (clean) and stats: may be null. Ties in top-k go to
// the lower expert index; ids of one token are ordered by decreasing weight.
Status route(const TensorView& x, const TensorView& gate, const RouteParams& p, int32_t* topk_ids,
             float* topk_weights, int32_t* expert_counts, float* logits, RouterStats* stats = nullptr);

// ---- permute -------------------------------------------------------------------------------
// Stable counting sort of the T*k slots by expert. capacity < 0: dropless. capacity >= 0: each
// expert keeps its first `capacity` slots in token order; the rest get row_of = -1 and are counted
// in dropped[E] (may be null). sorted_rows has expert_offsets[E] valid entries, the rest are -1.
// An id of kNoExpert (-1, moe/route_rng.h: a slot that random routing dropped) goes to no expert:
// row_of = -1, no sorted row, counted neither in expert_offsets nor in dropped. Other ids outside
// [0, E) are an error.
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
  // Precision 'exact': multiply bf16 weights with f32 activations. By default the CPU's
  // avx512-bf16 table rounds the activations to bf16 and uses vdpbf16ps (about 2x the speed,
  // results within the bf16 tolerance); other tables and dtypes are exact either way.
  bool exact_f32 = false;
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
// With shared experts (shared: [T,d] f32, their output for every token), the f32 sum then gets
// + shared[t] (shared_logit null) or + sigmoid(shared_logit[t]) * shared[t] (Qwen2-MoE's gated
// shared expert; shared_logit: [T] f32, x . g), the product and the sum each rounded.
Status combine(const float* y, int64_t R, const int32_t* row_of, const float* topk_weights,
               int64_t T, int k, const TensorView& out, const float* shared = nullptr,
               const float* shared_logit = nullptr);

// ---- whole layers --------------------------------------------------------------------------
// An MoE layer: router gate (f32 copy, [E,d]) and packed experts.
// gate: [E,d] any float dtype (small; widened per call). experts: packed once per layer.
// Shared experts (DeepSeekMoE / Qwen2-MoE), optional: an always-active SwiGLU FFN packed as one
// expert (several shared experts are one of intermediate size n * f_shared: their rows concatenated),
// applied to every token and added to the routed output, scaled by sigmoid(x . shared_gate) when
// shared_gate ([1,d], any float dtype) is set.
struct MoeLayerWeights {
  TensorView gate;
  const PackedExperts* experts = nullptr;
  const PackedExperts* shared = nullptr;  // num_experts == 1, same d and backend as `experts`
  TensorView shared_gate;                 // [1,d] or empty
};

struct MoeForwardParams {
  RouteParams route;
  int64_t capacity = -1;  // slots per expert; -1: from the capacity factors below
  // Expert capacity from a factor (moe/route_rng.h expert_capacity: ceil(T*k/E * factor)), used when
  // capacity < 0. A call is "decode" when decode == 1, or decode == -1 (auto) and T == 1 (one token:
  // a single sequence's generation step); it then uses eval_capacity_factor when that is > 0, else
  // capacity_factor. Every other call uses capacity_factor. A factor <= 0: dropless.
  double capacity_factor = 0;
  double eval_capacity_factor = 0;
  int decode = -1;
};

// Outputs of one forward; all but `out` may be null.
struct MoeForwardOutputs {
  TensorView out;                  // [T,d], any float dtype
  int32_t* topk_ids = nullptr;     // [T,k]
  float* topk_weights = nullptr;   // [T,k]
  int32_t* expert_counts = nullptr;  // [E] slots the router sent to each expert (before capacity)
  int32_t* dropped = nullptr;      // [E] slots each expert dropped for its capacity
  float* logits = nullptr;         // [T,E] clean router logits
  RouterStats* stats = nullptr;    // load-balancing and z losses
};

// Capacity that moe_forward applies for T tokens (-1: dropless), by the rule of MoeForwardParams.
int64_t moe_capacity(const MoeForwardParams& p, int64_t T, int E);

// Runs route -> permute -> grouped_gemm -> combine with scratch of O(T*k*(d+f)).
Status moe_forward(const MoeLayerWeights& layer, const TensorView& x, const MoeForwardParams& p,
                   const MoeForwardOutputs& outs);

// Dense SwiGLU FFN (the baseline): experts packed with num_experts == 1.
// out = W2 (silu(W1 x) * (W3 x)), out [T,d] any float dtype.
Status dense_ffn(const PackedExperts& w, const TensorView& x, const TensorView& out);

// Expert merging for serving: one dense SwiGLU FFN whose W1, W3, W2 are the weighted averages
// sum_e p_e W_e of the experts' (p: [E] f64 weights, normalised here to sum to one; all >= 0 and
// not all 0). f32 accumulation in expert order; outputs in the experts' dtype. w1, w3: [f,d];
// w2: [d,f]; out_w*: same shapes and dtype. Averaging SwiGLU experts is an approximation: the
// merged FFN is not the routed mixture of the experts' outputs.
Status merge_experts(const ExpertWeightSource& src, const double* p, void* out_w1, void* out_w3, void* out_w2);

// Widens a [n] float tensor of any dtype to f32 (threaded for large n).
void widen_to_f32(const TensorView& x, float* dst);

}  // namespace moe
