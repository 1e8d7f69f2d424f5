// moe-kernels: the backend-neutral ops of a whole decoder model (Mixtral), besides the MoE layer of
// ops.h. Every backend implements these op names with these layouts; shapes are in the comments.
//
//   embedding   table [V,d], ids [T] i32                      -> out [T,d]
//   rms_norm    x [T,d], weight [d]                           -> out [T,d]
//   linear      x [T,in], packed W [out,in] (+ bias [out])    -> y [T,out]        (y = x W^T + b)
//   rope        x [T,H,hd], positions [T] i32                 -> out [T,H,hd]     (may alias x)
//   attention   q [T,Hq,hd], k/v [T,Hkv,hd], KV cache         -> out [T,Hq,hd]
//   add         a [n], b [n]                                  -> out [n]          (may alias a)
//   sample      logits [T,V] f32                              -> ids [T] i32
//
// Activations, weights and outputs may be f32, f16 or bf16 (each tensor its own type); all math and
// every accumulator is f32. Results do not depend on the thread count. Ops return a Status, never
// throw, never exit; the addon checks shapes and index ranges first and the ops re-check what
// touches memory.
#pragma once
#include <cstdint>
#include <memory>

#include "moe/status.h"
#include "moe/tensor.h"

namespace moe {

// ---- embedding -----------------------------------------------------------------------------
// out[t] = table[ids[t]], converted to out's type. ids outside [0, V) are an error.
Status embedding(const TensorView& table, const int32_t* ids, int64_t T, const TensorView& out);

// ---- RMS norm (Hugging Face MixtralRMSNorm) --------------------------------------------------
// out[t] = x[t] * rsqrt(mean(x[t]^2) + eps) * weight, all in f32, rounded once to out's type.
// (HF rounds to the input type before the weight multiply; for 16-bit that differs by <= 1 ulp.)
// out may alias x.
Status rms_norm(const TensorView& x, const TensorView& weight, float eps, const TensorView& out);

// ---- linear (optional bias) --------------------------------------------------------------------
// Backend-specific packed copy of one weight matrix W [out,in] (HF layout) and its optional bias
// [out] (kept as f32), built once.
class PackedLinear {
 public:
  virtual ~PackedLinear() = default;
  int64_t in_features = 0, out_features = 0;
  DType dtype = DType::kF32;
  bool has_bias = false;
  virtual size_t bytes() const = 0;  // memory held by the packed weights
  virtual const char* backend() const { return "cpu"; }  // which backend packed it
};

// w: [out,in] f32/f16/bf16; bias: null or [out] of any float type (Qwen2's q/k/v projections).
// Copies and repacks; the sources may be freed afterwards.
Status pack_linear(const TensorView& w, const TensorView* bias, std::unique_ptr<PackedLinear>* out);
// The same with precision 'exact' when exact_f32, as ExpertWeightSource::exact_f32: bf16 weights
// against f32 activations even where the CPU's avx512-bf16 table would round the activations to
// bf16 (pack_linear is pack_linear_precision with exact_f32 = false).
Status pack_linear_precision(const TensorView& w, const TensorView* bias, bool exact_f32,
                             std::unique_ptr<PackedLinear>* out);

// x: [T,in]; y: [T,out], any float types. The op reads all of x before writing y, so y may alias
// x. Every output is one f32 multiply-add chain in k order, then + bias[j] in f32, rounded once to
// y's type: a row's result does not depend on T.
Status linear(const TensorView& x, const PackedLinear& w, const TensorView& y);

// ---- rotary position embedding (HF rotate_half convention) -----------------------------------
// For each token t, head h and i < hd/2, with angle = positions[t] * theta^(-2i/hd):
//   out[i]        = x[i] cos(angle) - x[i+hd/2] sin(angle)
//   out[i+hd/2]   = x[i+hd/2] cos(angle) + x[i] sin(angle)
// The angle, its cosine and its sine are computed in f64 and rounded to f32 (HF computes the
// angle in f32, which loses ~1e-4 rad at positions in the thousands); the rotation runs in f32.
// x, out: [T,H,hd] with hd even; out may alias x (in place).
Status rope(const TensorView& x, const int32_t* positions, double theta, const TensorView& out);

// ---- KV cache and attention --------------------------------------------------------------------
// Keys and values of one layer for up to max_seq positions. Layout on every backend: keys and
// values each [num_kv_heads, max_seq, head_dim] in the cache's dtype, so one head's keys are
// contiguous. The cache holds data only; which positions are valid is the caller's bookkeeping
// (the addon's KvCache handle tracks the length).
class KvCache {
 public:
  virtual ~KvCache() = default;
  int64_t max_seq = 0, num_kv_heads = 0, head_dim = 0;
  DType dtype = DType::kF32;
  virtual size_t bytes() const = 0;
  virtual const char* backend() const { return "cpu"; }  // where the keys and values live
};

Status create_kv_cache(int64_t max_seq, int64_t num_kv_heads, int64_t head_dim, DType dtype,
                       std::unique_ptr<KvCache>* out);

struct AttentionParams {
  int64_t start_pos = 0;       // position of the first of the T tokens
  int64_t sliding_window = 0;  // 0: none; else a query at p sees keys j with p - window < j <= p
};

// Causal grouped-query attention. Writes k, v at positions start_pos .. start_pos+T-1 of the
// cache, then for every token t (position p = start_pos + t) and query head h (kv head
// h / (Hq/Hkv)):  out[t,h] = sum_j softmax_j(q[t,h] . K[j] / sqrt(hd)) V[j] over the visible keys
// j <= p (and > p - window), read back from the cache (so a 16-bit cache rounds the new keys the
// same way whether they arrive in one call or token by token: a step-by-step decode gives the
// same bits as one pass). Positions below start_pos must have been written by earlier calls.
// q: [T,Hq,hd], k, v: [T,Hkv,hd], out: [T,Hq,hd]; Hq a multiple of Hkv; start_pos + T <= max_seq.
// Softmax in f32, max-subtracted. out may alias q.
Status attention(const TensorView& q, const TensorView& k, const TensorView& v, KvCache& cache,
                 const AttentionParams& p, const TensorView& out);

// ---- residual add ------------------------------------------------------------------------------
// out = a + b element-wise in f32; a, b, out of any float types with the same numel. out may
// alias a or b.
Status add(const TensorView& a, const TensorView& b, const TensorView& out);

// ---- sampling ----------------------------------------------------------------------------------
struct SampleParams {
  float temperature = 0.f;  // 0: greedy argmax (ties to the lower index, NaN never wins)
  float top_p = 1.f;        // in (0, 1]: nucleus mass
  uint64_t seed = 0;
  uint64_t step = 0;        // e.g. the decode step: (seed, step, row) picks the random number
};

// ids[t] for each row t of logits [T,V] f32, V <= 2^23:
//   temperature 0: argmax (ties to the lower index, NaN never wins, 0 when all NaN). Otherwise the
//   exact integer rule of moe/sampling_rule.h, the one the CUDA kernel follows, so both backends
//   give the same id: integer weights q_i = floor(expf((l_i - max) / temperature) * 2^40) (0 for
//   NaN and -inf), the nucleus = the shortest prefix of the weights sorted by decreasing value
//   (ties: lower index first) whose sum reaches P = max(1, ceil(sum q * round(top_p * 2^32) /
//   2^32)), and target = mulhi(philox_u64(seed, step, t), nucleus sum) (moe/rng_philox.h); the id
//   is the first nucleus index, in increasing index order, where the running sum of nucleus weights
//   exceeds target.
//   +inf logits share the draw equally; a row of only NaN / -inf falls back to argmax.
Status sample(const float* logits, int64_t T, int64_t V, const SampleParams& p, int32_t* ids);

}  // namespace moe
