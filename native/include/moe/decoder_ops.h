// moe-kernels: the decoder-model ops of the backend interface (moe/backend.h) besides the MoE layer,
// with their parameters and arguments. Every backend implements these op names with these layouts:
//
//   embedding   table [V,d], ids [T] i32                      -> out [T,d]
//   rms_norm    x [T,d], weight [d]                           -> out [T,d]
//   linear      x [T,in], packed W [out,in] (+ bias [out])    -> y [T,out]        (y = x W^T + b)
//   rope        x [T,H,hd], positions [T] i32                 -> out [T,H,hd]     (may alias x)
//   attention   q [T,Hq,hd], k/v [T,Hkv,hd], KV cache         -> out [T,Hq,hd]
//   paged_attention  the same for tokens of many sequences, over a paged KV pool
//   add         a [n], b [n]                                  -> out [n]          (may alias a)
//   sample      logits [T,V] f32                              -> ids [T] i32
//   cast        src [n], any float type                       -> dst [n], another float type
//   copy        src                                           -> dst (host <-> device, device <-> device)
//
// Activations, weights and outputs may be f32, f16 or bf16 (each tensor its own type; the CUDA
// backend's limits are in its capabilities and errors); all math and every accumulator is f32.
// Results do not depend on the thread count. Ops return a Status, never throw, never exit; the addon
// checks shapes and index ranges first and the ops re-check what touches memory.
#pragma once
#include <cstdint>
#include <memory>

#include "moe/status.h"
#include "moe/tensor.h"

namespace moe {

class Backend;

// ---- packed weights and caches ------------------------------------------------------------------
// A backend's packed copy of one weight matrix W [out,in] (HF layout) and its optional bias [out]
// (kept as f32), built once by Backend::pack_linear (the sources may be freed afterwards).
class PackedLinear {
 public:
  virtual ~PackedLinear() = default;
  Backend* backend = nullptr;
  int64_t in_features = 0, out_features = 0;
  DType dtype = DType::kF32;
  bool has_bias = false;
  virtual size_t bytes() const = 0;
};

// Keys and values of one layer for up to max_seq positions. Layout on every backend: keys and values
// each [num_kv_heads, max_seq, head_dim] in the cache's dtype, so one head's keys are contiguous.
// The cache holds data only; which positions are valid is the caller's bookkeeping (the addon's
// KvCache handle tracks the length).
class KvCache {
 public:
  virtual ~KvCache() = default;
  Backend* backend = nullptr;
  int64_t max_seq = 0, num_kv_heads = 0, head_dim = 0;
  DType dtype = DType::kF32;
  virtual size_t bytes() const = 0;
};

struct KvCacheShape {
  int64_t max_seq = 0, num_kv_heads = 0, head_dim = 0;
  DType dtype = DType::kF32;
};

// A pool of KV blocks shared by many sequences (vLLM's paged cache): num_blocks blocks of block_size
// positions, each holding one layer's keys and values of those positions for every kv head. Which
// blocks belong to which sequence is the caller's bookkeeping (a block table per sequence, passed
// to paged_attention); the pool holds data only. Layout inside a block: the backend's own.
class KvPool {
 public:
  virtual ~KvPool() = default;
  Backend* backend = nullptr;
  int64_t num_blocks = 0, block_size = 0, num_kv_heads = 0, head_dim = 0;
  DType dtype = DType::kF32;
  virtual size_t bytes() const = 0;
};

struct KvPoolShape {
  int64_t num_blocks = 0, block_size = 0, num_kv_heads = 0, head_dim = 0;
  DType dtype = DType::kF32;
};

// ---- parameters ----------------------------------------------------------------------------------
struct AttentionParams {
  int64_t start_pos = 0;       // position of the first of the T tokens
  int64_t sliding_window = 0;  // 0: none; else a query at p sees keys j with p - window < j <= p
};

// ---- op arguments --------------------------------------------------------------------------------
// out[t] = table[ids[t]], converted to out's type. ids outside [0, V) are an error.
struct EmbeddingArgs {
  TensorView table;  // [V,d]
  TensorView ids;    // [T] i32
  TensorView out;    // [T,d]
  template <class F> void visit(F&& f) { f(table, Dir::kIn), f(ids, Dir::kIn), f(out, Dir::kOut); }
};

// Hugging Face MixtralRMSNorm: out[t] = x[t] * rsqrt(mean(x[t]^2) + eps) * weight, all in f32,
// rounded once to out's type (HF rounds to the input type before the weight multiply; for 16-bit
// that differs by <= 1 ulp). out may alias x.
struct RmsNormArgs {
  TensorView x;       // [T,d]
  TensorView weight;  // [d]
  float eps = 1e-5f;
  TensorView out;     // [T,d]
  template <class F> void visit(F&& f) { f(x, Dir::kIn), f(weight, Dir::kIn), f(out, Dir::kOut); }
};

// y = x W^T (+ bias). The op reads all of x before writing y, so y may alias x. Every output is one
// f32 multiply-add chain in k order, then + bias[j] in f32, rounded once to y's type: a row's result
// does not depend on T.
struct LinearArgs {
  TensorView x;  // [T,in]
  const PackedLinear* w = nullptr;
  TensorView y;  // [T,out]
  template <class F> void visit(F&& f) { f(x, Dir::kIn), f(y, Dir::kOut); }
};

// Rotary position embedding, HF rotate_half convention. For each token t, head h and i < hd/2, with
// angle = positions[t] * theta^(-2i/hd):
//   out[i]      = x[i] cos(angle) - x[i+hd/2] sin(angle)
//   out[i+hd/2] = x[i+hd/2] cos(angle) + x[i] sin(angle)
// The CPU computes the angle, its cosine and its sine in f64 and rounds them to f32 (HF computes the
// angle in f32, which loses ~1e-4 rad at positions in the thousands); CUDA's frequencies are f32
// (HF's rounding). The rotation runs in f32. hd even; out may alias x (in place).
struct RopeArgs {
  TensorView x;          // [T,H,hd]
  TensorView positions;  // [T] i32
  double theta = 10000.0;
  TensorView out;        // [T,H,hd]
  template <class F> void visit(F&& f) { f(x, Dir::kIn), f(positions, Dir::kIn), f(out, Dir::kOut); }
};

// Causal grouped-query attention. Writes k, v at positions start_pos .. start_pos+T-1 of the cache,
// then for every token t (position p = start_pos + t) and query head h (kv head h / (Hq/Hkv)):
// out[t,h] = sum_j softmax_j(q[t,h] . K[j] / sqrt(hd)) V[j] over the visible keys j <= p (and
// > p - window), read back from the cache (so a 16-bit cache rounds the new keys the same way
// whether they arrive in one call or token by token: a step-by-step decode gives the same bits as
// one pass). Positions below start_pos must have been written by earlier calls. Hq a multiple of
// Hkv; start_pos + T <= max_seq. Softmax in f32, max-subtracted. out may alias q.
struct AttentionArgs {
  TensorView q;        // [T,Hq,hd]
  TensorView k, v;     // [T,Hkv,hd]
  KvCache* cache = nullptr;
  AttentionParams params;
  TensorView out;      // [T,Hq,hd]
  template <class F> void visit(F&& f) { f(q, Dir::kIn), f(k, Dir::kIn), f(v, Dir::kIn), f(out, Dir::kOut); }
};

// Attention of a batch of tokens from several sequences over a paged pool. Token t belongs to sequence
// seq_of[t] (a row of block_tables) at position positions[t]; the sequence's position j lives in
// block block_tables[seq_of[t], j / block_size], slot j % block_size. First the T new keys and values
// are written at their positions, then every query attends as in AttentionArgs over the keys lo ..
// positions[t] of its own sequence, read back from the pool: the same keys in the same order as a
// KvCache holding that sequence, so the same bits, whatever the other tokens of the batch (a request
// decodes the same alone or among others). (sequence, position) pairs are distinct within a call;
// positions below a token's, of its sequence, must have been written by earlier calls or this one.
// max_position: the largest of positions (known to the caller; a device backend sizes by it).
struct PagedAttentionArgs {
  TensorView q;             // [T,Hq,hd]
  TensorView k, v;          // [T,Hkv,hd]
  TensorView positions;     // [T] i32
  TensorView seq_of;        // [T] i32
  TensorView block_tables;  // [S, max_blocks] i32 (entries a call's positions reach: blocks of the pool)
  KvPool* pool = nullptr;
  int64_t sliding_window = 0;
  int64_t max_position = 0;
  TensorView out;           // [T,Hq,hd]
  template <class F> void visit(F&& f) {
    f(q, Dir::kIn), f(k, Dir::kIn), f(v, Dir::kIn), f(positions, Dir::kIn), f(seq_of, Dir::kIn),
        f(block_tables, Dir::kIn), f(out, Dir::kOut);
  }
};

// out = a + b element-wise in f32; a, b, out of any float types with the same numel. out may alias a
// or b.
struct AddArgs {
  TensorView a, b;
  TensorView out;
  template <class F> void visit(F&& f) { f(a, Dir::kIn), f(b, Dir::kIn), f(out, Dir::kOut); }
};

// ids[t] for each row t of logits [T,V] f32, V <= 2^23, by the exact rule of moe/sampling_rule.h,
// the one every backend follows, so they all give the same id: the row's penalties on its history
// tokens, then greedy argmax (temperature 0) or integer weights q_i = floor(expf((l_i - max) /
// temperature) * 2^40) filtered by min-p, top-k and top-p (the shortest prefix of the weights sorted
// by decreasing value, ties lower index first, whose sum reaches the mass), and one Philox draw of
// (seed, step, stream) (moe/rng_philox.h) inverted over the kept ids in index order. Each row has its
// own parameters, so a row's id never depends on the other rows of the call.
struct SampleArgs {
  TensorView logits;           // [T,V] f32
  TensorView rows;             // [T, 14] i32: one SampleRow (moe/sampling_rule.h) per row
  TensorView penalty_ids;      // [N] i32 (optional): each row's distinct history tokens, in [0, V)
  TensorView penalty_counts;   // [N] i32: how often each occurs (> 0)
  TensorView penalty_offsets;  // [T+1] i32: row t's entries are [offsets[t], offsets[t+1]), 0 .. N
  TensorView ids;              // [T] i32
  template <class F> void visit(F&& f) {
    f(logits, Dir::kIn), f(rows, Dir::kIn), f(penalty_ids, Dir::kIn), f(penalty_counts, Dir::kIn),
        f(penalty_offsets, Dir::kIn), f(ids, Dir::kOut);
  }
};
constexpr int64_t kSampleRowWords = 14;  // sizeof(SampleRow) / 4

// dst[i] = src[i] converted to dst's float type (through f32, rounded to nearest even), the same
// numel; src and dst of one type: a copy. dst may be src only when the types are the same.
struct CastArgs {
  TensorView src, dst;
  template <class F> void visit(F&& f) { f(src, Dir::kIn), f(dst, Dir::kOut); }
};

// dst = src, byte for byte (same bytes); either may be host or device memory of the backend.
struct CopyArgs {
  TensorView src, dst;
  template <class F> void visit(F&& f) { f(src, Dir::kIn), f(dst, Dir::kOut); }
};

}  // namespace moe
