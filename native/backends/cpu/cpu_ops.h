// moe-kernels CPU backend: the kernels behind CpuBackend (cpu_backend.cc), with host pointers and the
// shapes in the comments. Private to native/backends/cpu (and the emulator tests that compare the CUDA
// kernels with their CPU twins): everything else calls them through moe::Backend.
#pragma once
#include <cstdint>
#include <memory>
#include <vector>

#include "moe/decoder_ops.h"
#include "moe/moe_ops.h"
#include "moe/status.h"
#include "moe/tensor.h"

namespace moe {
namespace cpu {

// ---- MoE stages (moe/moe_ops.h for the semantics) ------------------------------------------------
struct RouterStats {
  float aux_loss = 0.f;  // stats[0] of moe/moe_ops.h
  float z_loss = 0.f;    // stats[1]
};

// x: [T,d], gate: [E,d], any float types. topk_ids [T,k], topk_weights [T,k]: required;
// expert_counts [E], logits [T,E] and stats: may be null.
Status route(const TensorView& x, const TensorView& gate, const RouteParams& p, int32_t* topk_ids,
             float* topk_weights, int32_t* expert_counts, float* logits, RouterStats* stats = nullptr);

Status permute(const int32_t* topk_ids, int64_t T, int k, int E, int64_t capacity,
               int32_t* expert_offsets, int32_t* sorted_rows, int32_t* row_of, int32_t* dropped);

// Copies and repacks the weights (and the gate, when given, as is); the sources may be freed after.
Status pack_experts(const ExpertWeightSource& src, const TensorView* gate, std::unique_ptr<PackedExperts>* out);
// The gate packed with experts from pack_experts above (absent: !present()).
const TensorView& packed_gate(const PackedExperts& w);

// x: [T,d] f32. sorted_rows: [R] or null (identity). expert_offsets: [E+1]. y: [R,d] f32.
Status grouped_gemm(const float* x, int64_t T, const int32_t* sorted_rows, const int32_t* expert_offsets,
                    const PackedExperts& w, float* y);

// out: [T,d] any float type; shared [T,d] f32 and shared_logit [T] f32 may be null.
Status combine(const float* y, int64_t R, const int32_t* row_of, const float* topk_weights, int64_t T, int k,
               const TensorView& out, const float* shared = nullptr, const float* shared_logit = nullptr);

// ---- whole layers ---------------------------------------------------------------------------------
struct MoeLayerWeights {
  TensorView gate;                          // [E,d] any float type
  const PackedExperts* experts = nullptr;
  const PackedExperts* shared = nullptr;    // one expert, or null
  TensorView shared_gate;                   // [1,d] or absent
};
// Outputs of one forward; all but `out` may be null.
struct MoeForwardOutputs {
  TensorView out;                     // [T,d], any float type
  int32_t* topk_ids = nullptr;        // [T,k]
  float* topk_weights = nullptr;      // [T,k]
  int32_t* expert_counts = nullptr;   // [E]
  int32_t* dropped = nullptr;         // [E]
  float* logits = nullptr;            // [T,E]
  RouterStats* stats = nullptr;
};
Status moe_forward(const MoeLayerWeights& layer, const TensorView& x, const MoeForwardParams& p,
                   const MoeForwardOutputs& outs);
Status dense_ffn(const PackedExperts& w, const TensorView& x, const TensorView& out);
Status merge_experts(const ExpertWeightSource& src, const double* p, void* out_w1, void* out_w3, void* out_w2);

// ---- quantised weights (quant_experts.cc; the functions above dispatch to these) -------------------
Status pack_quant_experts(const ExpertWeightSource& src, const TensorView* gate, std::unique_ptr<PackedExperts>* out);
const TensorView& quant_packed_gate(const PackedExperts& w);
Status quant_grouped_gemm(const float* x, int64_t T, const int32_t* sorted_rows, const int32_t* expert_offsets,
                          const PackedExperts& w, float* y);
Status pack_quant_linear(const TensorView& w, const TensorView* bias, std::unique_ptr<PackedLinear>* out);
// x: [T,in] f32; y: [T,out] any float type.
Status quant_linear(const float* x, int64_t T, const PackedLinear& w, const TensorView& y);

// Widens a [n] float tensor of any dtype to f32 (threaded for large n).
void widen_to_f32(const TensorView& x, float* dst);

// ---- decoder ops (moe/decoder_ops.h) ---------------------------------------------------------------
Status embedding(const TensorView& table, const int32_t* ids, int64_t T, const TensorView& out);
Status rms_norm(const TensorView& x, const TensorView& weight, float eps, const TensorView& out);
Status pack_linear(const TensorView& w, const TensorView* bias, std::unique_ptr<PackedLinear>* out);
// The same with precision 'exact' when exact_f32, as ExpertWeightSource::exact_f32: bf16 weights
// against f32 activations even where the avx512-bf16 table would round the activations to bf16
// (pack_linear is pack_linear_precision with exact_f32 = false).
Status pack_linear_precision(const TensorView& w, const TensorView* bias, bool exact_f32,
                             std::unique_ptr<PackedLinear>* out);
Status linear(const TensorView& x, const PackedLinear& w, const TensorView& y);
Status rope(const TensorView& x, const int32_t* positions, double theta, const TensorView& out);
Status create_kv_cache(int64_t max_seq, int64_t num_kv_heads, int64_t head_dim, DType dtype,
                       std::unique_ptr<KvCache>* out);
Status attention(const TensorView& q, const TensorView& k, const TensorView& v, KvCache& cache,
                 const AttentionParams& p, const TensorView& out);
Status add(const TensorView& a, const TensorView& b, const TensorView& out);
Status create_kv_pool(const KvPoolShape& shape, std::unique_ptr<KvPool>* out);
Status paged_attention(const PagedAttentionArgs& a);
Status sample(const SampleArgs& a);

}  // namespace cpu
}  // namespace moe
