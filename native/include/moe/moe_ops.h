// moe-kernels: the MoE ops of the backend interface (moe/backend.h), their parameters and their
// arguments, declared once for every backend (DESIGN.md, "The MoE layer, stage by stage"):
//
//   route         x [T,d], gate [E,d]          -> topk_ids [T,k] i32, topk_weights [T,k] f32,
//                                                 expert_counts [E] i32, logits [T,E] f32, stats [2]
//   permute       topk_ids [T,k]               -> expert_offsets [E+1] (exclusive prefix sum),
//                                                 sorted_rows [T*k] (source token of each sorted row),
//                                                 row_of [T,k] (sorted row of each slot, -1 if dropped)
//   grouped_gemm  x [T,d], sorted_rows, expert_offsets, packed W1/W3 [E,f,d], W2 [E,d,f]
//                                              -> y [R,d] f32 with R = expert_offsets[E]
//   combine       y [R,d] f32, row_of [T,k], topk_weights [T,k] -> out [T,d]
//   moe_forward   the four in one call, with the layer's packed router gate and shared experts
//   dense_ffn     one packed expert on every token (the baseline)
//
// Intermediates (logits, topk_weights, y) are f32 whatever the activation dtype; every accumulator
// is f32. Ops return a Status, never throw, never exit.
//
// An op takes one Args struct: its tensors (each with a direction, listed by visit() so that code
// moving tensors between memories needs no per-op knowledge), its packed weights and its params.
// Optional tensors are absent when !present(). The addon checks shapes and index ranges before
// calling; a backend re-checks what touches memory.
#pragma once
#include <cstdint>
#include <memory>
#include <vector>

#include "moe/moe_params.h"
#include "moe/status.h"
#include "moe/tensor.h"

namespace moe {

class Backend;

// ---- packed weights ----------------------------------------------------------------------------
// Expert weights in Hugging Face layout, one host pointer per expert (so both [E,f,d] tensors and
// per-expert arrays are accepted without copies): w1[e], w3[e] -> [f,d]; w2[e] -> [d,f].
struct ExpertWeightSource {
  int num_experts = 0;
  int64_t d = 0, f = 0;
  DType dtype = DType::kF32;  // f32, f16 or bf16 (all three matrices), or a quantised type (moe/quant.h) of W1 and W3
  DType w2_dtype = DType::kF32;  // W2's: dtype, or another quantised type when dtype is one (llama.cpp's
                                 // Q4_K_M keeps some W2 in q6_k)
  std::vector<const void*> w1, w3, w2;
  // Precision 'exact': multiply bf16 weights with f32 activations. By default the CPU's
  // avx512-bf16 table rounds the activations to bf16 and uses vdpbf16ps (about 2x the speed,
  // results within the bf16 tolerance); other tables and dtypes are exact either way.
  bool exact_f32 = false;
  // Batch-invariant: each row's result must not depend on how many rows a call has (which kernel
  // path a row count picks). The CPU kernels are so for every dtype; the CUDA grouped GEMM then
  // never takes its decode GEMV path (rows <= 16), whose summation order differs from its tiles'.
  // Expert parallelism on CUDA needs it to give the bits of one process (an EP rank's experts get
  // the rows of every rank).
  bool batch_invariant = false;
  // Set when the bytes behind w1/w3/w2 stay valid and unchanged for as long as this is held (the
  // addon sets it for quantised weights in a file the package mapped): a backend whose layout is
  // the source's may then keep pointers into them, holding this, instead of copying them.
  std::shared_ptr<const void> keep_alive;
};

// A backend's packed copy of a layer's experts, built once by Backend::pack_experts, with the
// router gate packed beside them when one was given (an MoE layer's [E,d]; a shared expert's [1,d]
// sigmoid gate). Ops run on the backend that packed them.
class PackedExperts {
 public:
  virtual ~PackedExperts() = default;
  Backend* backend = nullptr;  // the backend that packed them
  int num_experts = 0;
  int64_t d = 0, f = 0;
  DType dtype = DType::kF32;     // of W1/W3 (and W2, unless quantised differently)
  DType w2_dtype = DType::kF32;  // of W2
  bool has_gate = false;       // a gate [num_experts, d] was packed with them
  bool batch_invariant = false;  // packed with ExpertWeightSource::batch_invariant
  virtual size_t bytes() const = 0;  // memory allocated (weights and gate)
  size_t in_place_bytes = 0;         // weight bytes read where they lie (ExpertWeightSource::keep_alive), not in bytes()
};

// ---- op arguments ------------------------------------------------------------------------------
// x: [T,d] any float type; gate: [E,d] any float type (HF layout, [out,in]). Ties in top-k go to the
// lower expert index; ids of one token are ordered by decreasing weight. expert_counts: slots routed
// to each expert (kNoExpert slots not counted).
struct RouteArgs {
  TensorView x, gate;
  RouteParams params;
  TensorView topk_ids;       // [T,k] i32
  TensorView topk_weights;   // [T,k] f32
  TensorView expert_counts;  // [E] i32, optional
  TensorView logits;         // [T,E] f32 (clean), optional
  TensorView stats;          // [2] f32 (kRouterStatsLen), optional
  template <class F> void visit(F&& f) {
    f(x, Dir::kIn), f(gate, Dir::kIn), f(params.noise_gate, Dir::kIn);
    f(topk_ids, Dir::kOut), f(topk_weights, Dir::kOut), f(expert_counts, Dir::kOut), f(logits, Dir::kOut),
        f(stats, Dir::kOut);
  }
};

// Stable counting sort of the T*k slots by expert. capacity < 0: dropless. capacity >= 0: each
// expert keeps its first `capacity` slots in token order; the rest get row_of = -1 and are counted
// in dropped. sorted_rows has expert_offsets[E] valid entries, the rest are -1. An id of kNoExpert
// (-1, moe/route_rng.h: a slot that random routing dropped) goes to no expert: row_of = -1, no sorted
// row, counted neither in expert_offsets nor in dropped. Other ids outside [0, E) are an error (the
// CPU reports it; the addon checks host ids before any backend runs).
struct PermuteArgs {
  TensorView topk_ids;  // [T,k] i32
  int num_experts = 0;
  int64_t capacity = -1;
  TensorView expert_offsets;  // [E+1] i32
  TensorView sorted_rows;     // [T*k] i32
  TensorView row_of;          // [T,k] i32
  TensorView dropped;         // [E] i32, optional
  template <class F> void visit(F&& f) {
    f(topk_ids, Dir::kIn), f(expert_offsets, Dir::kOut), f(sorted_rows, Dir::kOut), f(row_of, Dir::kOut),
        f(dropped, Dir::kOut);
  }
};

// y[r] = W2_e (silu(W1_e x[sorted_rows[r]]) * (W3_e x[sorted_rows[r]])) for the expert e owning sorted
// row r (expert_offsets[e] <= r < expert_offsets[e+1]); sorted_rows absent: row r is token r. y has
// R = expert_offsets[E] rows (the caller sizes it; expert_offsets must be non-decreasing from 0).
struct GroupedGemmArgs {
  TensorView x;               // [T,d] any float type
  TensorView sorted_rows;     // [>= R] i32, optional
  TensorView expert_offsets;  // [E+1] i32
  const PackedExperts* experts = nullptr;
  TensorView y;               // [R,d] f32
  template <class F> void visit(F&& f) {
    f(x, Dir::kIn), f(sorted_rows, Dir::kIn), f(expert_offsets, Dir::kIn), f(y, Dir::kOut);
  }
};

// out[t] = sum_j topk_weights[t,j] * y[row_of[t,j]], summed in f32 in j order; row_of < 0 skipped.
// With shared experts (shared: [T,d] f32, their output for every token), the f32 sum then gets
// + shared[t] (shared_logit absent) or + sigmoid(shared_logit[t]) * shared[t] (Qwen2-MoE's gated
// shared expert; shared_logit: [T] f32, x . g), the product and the sum each rounded.
struct CombineArgs {
  TensorView y;             // [R,d] f32
  TensorView row_of;        // [T,k] i32
  TensorView topk_weights;  // [T,k] f32
  TensorView shared;        // [T,d] f32, optional
  TensorView shared_logit;  // [T] f32, optional
  TensorView out;           // [T,d] any float type
  template <class F> void visit(F&& f) {
    f(y, Dir::kIn), f(row_of, Dir::kIn), f(topk_weights, Dir::kIn), f(shared, Dir::kIn), f(shared_logit, Dir::kIn),
        f(out, Dir::kOut);
  }
};

// Rows between the processes of an expert-parallel group, by a collective transport that runs on
// the backend's own queue (DeviceComm, moe/backend.h; NCCL on a GPU): to rank p, send_rows[p]
// consecutive rows of `send` (the runs in rank order); from rank p, recv_rows[p] rows into `recv`,
// in rank order. send and recv have the same type and row size; every rank calls it with counts
// that match its peers' (recv_rows[p] on this rank = send_rows[this rank] on p).
class DeviceComm;
struct AllToAllArgs {
  DeviceComm* comm = nullptr;
  TensorView send;                  // [R, ...] rows
  std::vector<int64_t> send_rows;   // [ranks]
  TensorView recv;                  // [Rr, ...] rows
  std::vector<int64_t> recv_rows;   // [ranks]
  template <class F> void visit(F&& f) { f(send, Dir::kIn), f(recv, Dir::kOut); }
};

// route -> permute -> grouped_gemm -> combine with the router gate packed with the experts, plus the
// shared experts (DeepSeekMoE / Qwen2-MoE; optional): an always-active SwiGLU FFN packed as one
// expert (several shared experts are one of intermediate size n * f_shared: their rows
// concatenated), applied to every token and added to the routed output, scaled by sigmoid(x . g)
// when a gate g [1,d] was packed with it. Scratch grows with T*k*(d+f), never with the weights.
struct MoeForwardArgs {
  TensorView x;                           // [T,d] any float type
  const PackedExperts* experts = nullptr;  // packed with their gate [E,d]
  const PackedExperts* shared = nullptr;   // one expert of the experts' d, type and backend, or null
  MoeForwardParams params;                // params.route.noise_gate: an input tensor
  TensorView out;                         // [T,d] any float type
  TensorView topk_ids;                    // [T,k] i32, optional
  TensorView topk_weights;                // [T,k] f32, optional
  TensorView expert_counts;               // [E] i32, optional: slots routed to each expert (before capacity)
  TensorView dropped;                     // [E] i32, optional: slots each expert dropped for its capacity
  TensorView logits;                      // [T,E] f32, optional: clean router logits
  TensorView stats;                       // [2] f32, optional: kRouterStatsLen
  template <class F> void visit(F&& f) {
    f(x, Dir::kIn), f(params.route.noise_gate, Dir::kIn);
    f(out, Dir::kOut), f(topk_ids, Dir::kOut), f(topk_weights, Dir::kOut), f(expert_counts, Dir::kOut),
        f(dropped, Dir::kOut), f(logits, Dir::kOut), f(stats, Dir::kOut);
  }
};

// Dense SwiGLU FFN (the baseline): out = W2 (silu(W1 x) * (W3 x)), experts packed as one expert.
struct DenseFfnArgs {
  TensorView x;  // [T,d] any float type
  const PackedExperts* weights = nullptr;
  TensorView out;  // [T,d] any float type
  template <class F> void visit(F&& f) { f(x, Dir::kIn), f(out, Dir::kOut); }
};

// Expert merging for serving: one dense SwiGLU FFN whose W1, W3, W2 are the weighted averages
// sum_e p_e W_e of the experts' (p: [E] f64 weights, normalised to sum to one; all >= 0 and not all
// 0). f32 accumulation in expert order; outputs in the experts' dtype. A weight transform on host
// memory (the CPU backend's), not an op on activations. Averaging SwiGLU experts is an
// approximation: the merged FFN is not the routed mixture of the experts' outputs.
struct MergeExpertsArgs {
  ExpertWeightSource src;
  std::vector<double> p;                             // [E]
  void* out_w1 = nullptr, *out_w3 = nullptr, *out_w2 = nullptr;  // [f,d], [f,d], [d,f] of src.dtype
};

// Weight formats (moe/quant.h): a float matrix to ggml blocks and back. Weight transforms on host
// memory (the CPU backend's), not ops on activations.
//   quantize:   src [rows, cols] f32/f16/bf16 -> dst [rows, cols] q8_0, q4_0 or q4_k (dst.dtype)
//   dequantize: src [rows, cols] any quantised type -> dst [rows, cols] f32/f16/bf16 (ggml's values)
// Any leading dims are rows; cols (the last dim) holds whole blocks.
struct QuantizeArgs {
  TensorView src, dst;
  template <class F> void visit(F&& f) { f(src, Dir::kIn), f(dst, Dir::kOut); }
};

}  // namespace moe
