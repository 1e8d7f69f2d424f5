// moe-kernels CUDA: launchers of the non-MoE ops of a Mixtral decoder (issue #4): embedding, RMSNorm
// (alone and fused with the residual add), residual add, linear, RoPE, KV cache + attention, and
// sampling. Same conventions as launchers.h: each launcher validates its arguments, enqueues its
// kernels on `stream` with no host round trip and returns the status; it never synchronises and never
// exits. Every accumulation is f32; results are deterministic (no float atomics, fixed reduction
// orders), so two runs give the same bits.
//
// Files: token_ops.cu (embedding, rms_norm, residual add, rope), grouped_gemm.cu (linear: the GEMM2
// kernels with one dense expert), attention.cu (KV append, attention), sampling.cu (argmax, sampling).
// Element types: DevDType (launchers.h). Device pointers must be aligned to their element type at
// least; the launchers pick vectorised paths when pointers and shapes allow.
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>

#include "launchers.h"

namespace moe {

struct SampleRow;  // moe/sampling_rule.h

// ---- embedding (token_ops.cu) ----------------------------------------------------------------------
// out[t, :] = table[ids[t], :], converted from table_dtype to out_dtype (nearest even). An id outside
// [0, vocab) writes a row of zeros; first_bad_index (a device int, may be null) receives the smallest
// such t, or -1 when every id is valid (read it after the stream synchronises).
// Errors: cudaErrorInvalidValue for num_tokens < 0, vocab < 1, d < 1, an unknown dtype or a null
// pointer that is needed (num_tokens == 0 writes -1 to first_bad_index when given, nothing else).
cudaError_t launch_embedding(const void* table,          // [vocab, d] of table_dtype
                             DevDType table_dtype, int64_t vocab, int64_t d,
                             const int32_t* ids,         // [num_tokens]
                             int64_t num_tokens,
                             void* out,                  // [num_tokens, d] of out_dtype
                             DevDType out_dtype,
                             int32_t* first_bad_index,   // [1] or null
                             cudaStream_t stream);

// ---- RMSNorm, residual add (token_ops.cu) --------------------------------------------------------
// y[t, :] = x[t, :] * rsqrt(mean_i(x[t, i]^2) + eps) * w, all in f32 (x and w widened), y rounded
// once to y_dtype. (Hugging Face's MixtralRMSNorm rounds x * rsqrt(..) to the input dtype before the
// multiplication by w; this kernel does not, so 16-bit results may differ from HF by one rounding.)
// The sum of squares: thread partials strided over d, then a fixed butterfly/warp-order reduction.
// Errors: cudaErrorInvalidValue for num_tokens < 0, d < 1, eps < 0 or NaN, an unknown dtype or a
// null pointer (num_tokens == 0 launches nothing).
cudaError_t launch_rms_norm(const void* x,               // [num_tokens, d] of x_dtype
                            DevDType x_dtype,
                            const void* w,               // [d] of w_dtype
                            DevDType w_dtype, int64_t num_tokens, int64_t d, float eps,
                            void* y,                     // [num_tokens, d] of y_dtype
                            DevDType y_dtype, cudaStream_t stream);

// The decoder's fused "add + RMSNorm": sum = a + b (f32 math, rounded to act_dtype and written to
// sum_out), then y = rms_norm(sum as stored) as above. sum_out may alias a or b (in-place residual).
cudaError_t launch_add_rms_norm(const void* a,           // [num_tokens, d] of act_dtype
                                const void* b,           // [num_tokens, d] of act_dtype
                                DevDType act_dtype,
                                const void* w,           // [d] of w_dtype
                                DevDType w_dtype, int64_t num_tokens, int64_t d, float eps,
                                void* sum_out,           // [num_tokens, d] of act_dtype
                                void* y,                 // [num_tokens, d] of y_dtype
                                DevDType y_dtype, cudaStream_t stream);

// out[i] = in[i] converted from in_dtype to out_dtype (through f32, rounded to nearest even), n elements;
// out must not overlap in unless it is in (the same dtype). Errors: cudaErrorInvalidValue for n < 0, an
// unknown dtype, a null or misaligned pointer (n == 0 launches nothing).
cudaError_t launch_cast(const void* in, DevDType in_dtype, void* out, DevDType out_dtype, int64_t n, cudaStream_t stream);

// out[i] = a[i] + b[i] (f32 math, rounded to dtype), n elements; out may alias a or b.
cudaError_t launch_residual_add(const void* a, const void* b, void* out, DevDType dtype, int64_t n,
                                cudaStream_t stream);

// ---- linear (grouped_gemm.cu) --------------------------------------------------------------------
// y [T, out] = x [T, in] . W^T, W [out, in] row-major (Hugging Face layout, used as is), f32
// accumulation. The GEMM2 kernels of the grouped GEMM with one dense expert:
//   kDecode (T <= 16): weight-streaming GEMV, each weight row read once per 4 rows of x (16-byte
//   loads when in % (16 / elem) == 0); kTensorCores: f16/bf16, in % 8 == 0, out even: mma.sync
//   m16n8k16; kSimt: f32 and the fallback. linear_path: the kAuto choice.
// x is read in w_dtype: another x_dtype (or x not 16-byte aligned) is first converted into the
// workspace (rounded to nearest even: f32 activations meet 16-bit weights as 16-bit values).
// y_dtype: f32, or w_dtype. w must be 16-byte aligned, y aligned to two elements.
// Limits: in, out <= 2^30, T * in and T * out < 2^31.
// Errors: cudaErrorInvalidValue for an invalid shape or dtype, a null or misaligned pointer that is
// needed, a workspace that is too small when x needs converting, or a forced path that does not apply.
GroupedGemmPath linear_path(int64_t num_tokens, int64_t in_features, int64_t out_features, DevDType w_dtype);
size_t linear_workspace_bytes(int64_t num_tokens, int64_t in_features, DevDType w_dtype);  // 0: invalid
cudaError_t launch_linear(const void* x,                 // [num_tokens, in_features] of x_dtype
                          DevDType x_dtype, int64_t num_tokens, int64_t in_features,
                          const void* w,                 // [out_features, in_features] of w_dtype
                          DevDType w_dtype, int64_t out_features,
                          void* y,                       // [num_tokens, out_features] of y_dtype
                          DevDType y_dtype,
                          void* workspace, size_t workspace_bytes,  // may be null if x is w_dtype, aligned
                          cudaStream_t stream, GroupedGemmPath path = GroupedGemmPath::kAuto);

// out[r, c] = x[r, c] + bias[c] in f32, rounded once to out_dtype (a linear layer's bias, after
// launch_linear wrote x in f32); out may alias x when out_dtype is f32 (element by element).
// Errors: cudaErrorInvalidValue for rows or cols < 0, an unknown dtype or a null/misaligned pointer
// (rows * cols == 0 launches nothing).
cudaError_t launch_bias_add(const float* x, const float* bias, int64_t rows, int64_t cols, void* out, DevDType out_dtype,
                            cudaStream_t stream);

// ---- RoPE (token_ops.cu) -------------------------------------------------------------------------
// Rotary embedding in place, Hugging Face rotate_half convention: for each token t, head, and
// i < head_dim / 2, with x1 = v[i], x2 = v[i + head_dim/2]:
//   v[i] = x1 * cos(a) - x2 * sin(a),  v[i + head_dim/2] = x2 * cos(a) + x1 * sin(a)
//   a = float(positions[t]) * inv_freq[i]              (one f32 multiplication)
//   inv_freq[i] = 1.0f / powf(theta, float(2 * i) / float(head_dim))   (all f32, as HF's
//       1.0 / (base ** (torch.arange(0, dim, 2).float() / dim)) in float32; computed once on the
//       host by the launcher with the C library's powf, and passed to the kernel by value)
// sin/cos with sincosf (full precision, not the __sinf intrinsics), the rotation in f32, rounded
// once to dtype (HF rounds cos/sin to the model dtype first). rope_inv_freq writes the table so a
// CPU twin can use the very same values.
// Errors: cudaErrorInvalidValue for num_tokens < 0, heads < 0 (q_heads + kv_heads == 0 is a no-op),
// head_dim odd or not in [2, 256], theta <= 0, an unknown dtype or a null pointer that is needed.
constexpr int kRopeMaxHeadDim = 256;
void rope_inv_freq(int head_dim, float theta, float* inv_freq);  // inv_freq [head_dim / 2]
cudaError_t launch_rope(void* q,                         // [num_tokens, q_heads, head_dim] of dtype
                        void* k,                         // [num_tokens, kv_heads, head_dim] of dtype
                        DevDType dtype, int64_t num_tokens, int q_heads, int kv_heads, int head_dim,
                        const int32_t* positions,        // [num_tokens]
                        float theta, cudaStream_t stream);

// ---- KV cache and attention (attention.cu) -------------------------------------------------------
// One layer's cache: K and V, each [max_seq, kv_heads, head_dim] of cache_dtype.
// Append: cache rows start .. start + T - 1 receive k[t], v[t] (converted to cache_dtype, nearest even).
// Errors: cudaErrorInvalidValue for a negative shape, start + T > max_seq, an unknown dtype or a null
// pointer (T == 0 launches nothing).
cudaError_t launch_kv_append(const void* k,              // [num_tokens, kv_heads, head_dim] of act_dtype
                             const void* v,              // [num_tokens, kv_heads, head_dim] of act_dtype
                             DevDType act_dtype, int64_t num_tokens, int kv_heads, int head_dim,
                             int64_t start,
                             void* k_cache,              // [max_seq, kv_heads, head_dim] of cache_dtype
                             void* v_cache,              // [max_seq, kv_heads, head_dim] of cache_dtype
                             DevDType cache_dtype, int64_t max_seq, cudaStream_t stream);

// Attention of the queries at positions p = start + t (t < T) over the cache (which must already
// hold keys 0 .. start + T - 1, e.g. by launch_kv_append): keys j with lo <= j <= p, lo = 0, or
// p - window + 1 when window > 0 (sliding window); query head h reads kv head h / (q_heads /
// kv_heads) (GQA); scores q.k * (1 / sqrt(head_dim)) in f32, softmax in f32 with max subtraction.
//   out[t, h, :] = sum_j softmax_j * V[j, kv(h), :]
// Deterministic flash-style order: keys form chunks of kAttnChunkKeys aligned to absolute positions;
// inside a chunk 4 warps run an online softmax over fixed key subsets and merge in warp order; the
// chunk states are folded in chunk order (same rounding steps in every path). So a query's result
// depends only on its position, the window and the cache: decode step by step and one prefill over
// the same sequence give the same bits, and so do both paths:
//   kSingle: one block per (query, head) folds its chunks in turn (prefill; no workspace);
//   kSplit:  one block per (chunk, head, query) writes its chunk state to the workspace, then a
//            combine kernel folds them (decode over a long context: parallel over keys).
// kAuto: kSplit when a workspace of attention_workspace_bytes is given, T * q_heads < 256 and the
// keys span more than one chunk; else kSingle. head_dim: 32, 64, 128 or 256. q may be any dtype.
// Errors: cudaErrorInvalidValue for invalid shapes (q_heads % kv_heads != 0, start + T > max_seq,
// head_dim unsupported), an unknown dtype, a null or misaligned (16 bytes for the caches) pointer,
// or a forced kSplit without a large enough workspace (or over more than 65535 chunks).
constexpr int kAttnChunkKeys = 128;
enum class AttentionPath : int { kAuto = 0, kSingle = 1, kSplit = 2 };
size_t attention_workspace_bytes(int64_t num_tokens, int q_heads, int head_dim, int64_t max_seq);  // 0: invalid
cudaError_t launch_attention(const void* q,              // [num_tokens, q_heads, head_dim] of q_dtype
                             DevDType q_dtype, int64_t num_tokens, int64_t start, int q_heads, int kv_heads,
                             int head_dim, int64_t window,  // window <= 0: full causal
                             const void* k_cache,        // [max_seq, kv_heads, head_dim] of cache_dtype
                             const void* v_cache,        // [max_seq, kv_heads, head_dim] of cache_dtype
                             DevDType cache_dtype, int64_t max_seq,
                             void* out,                  // [num_tokens, q_heads, head_dim] of out_dtype
                             DevDType out_dtype,
                             void* workspace, size_t workspace_bytes,  // kSplit only; may be null
                             cudaStream_t stream, AttentionPath path = AttentionPath::kAuto);

// ---- paged KV pool and attention (attention.cu) ---------------------------------------------------
// A pool of KV blocks shared by sequences (vLLM's paged cache): K and V each [num_blocks * block_size,
// kv_heads, head_dim] of pool_dtype, block b holding rows [b * block_size, (b + 1) * block_size). A
// sequence s owns the blocks listed in row s of `tables` [S, max_blocks] i32, in position order:
// its position j lives in row tables[s][j / block_size] * block_size + j % block_size.
// Token t of a call belongs to sequence seq_of[t] at position positions[t].
// Append: the T new rows k[t], v[t] go to their sequence's rows (converted to pool_dtype, nearest
// even). (sequence, position) pairs must be distinct within a call.
// Attention: as launch_attention, for each query t over keys lo .. positions[t] of its sequence,
// read through the table: the same keys in the same order, so the same bits as a contiguous cache
// holding that sequence. max_pos: the largest position of the call (host-known; the split path's
// chunk count and workspace follow it).
// The caller guarantees what the device cannot check: every table entry a position of the call
// reaches is a block of the pool, and seq_of[t] < S.
// Errors: cudaErrorInvalidValue as launch_kv_append / launch_attention.
cudaError_t launch_paged_kv_append(const void* k,        // [num_tokens, kv_heads, head_dim] of act_dtype
                                   const void* v, DevDType act_dtype, int64_t num_tokens, int kv_heads, int head_dim,
                                   const int32_t* positions,  // [num_tokens]
                                   const int32_t* seq_of,     // [num_tokens]
                                   const int32_t* tables,     // [S, max_blocks]
                                   int max_blocks, int block_size, void* k_pool, void* v_pool, DevDType pool_dtype,
                                   cudaStream_t stream);
size_t paged_attention_workspace_bytes(int64_t num_tokens, int q_heads, int head_dim, int64_t max_pos);  // 0: invalid
cudaError_t launch_paged_attention(const void* q,        // [num_tokens, q_heads, head_dim] of q_dtype
                                   DevDType q_dtype, int64_t num_tokens, const int32_t* positions,
                                   const int32_t* seq_of, const int32_t* tables, int max_blocks, int block_size,
                                   int64_t max_pos, int q_heads, int kv_heads, int head_dim, int64_t window,
                                   const void* k_pool, const void* v_pool, DevDType pool_dtype,
                                   void* out,            // [num_tokens, q_heads, head_dim] of out_dtype
                                   DevDType out_dtype, void* workspace, size_t workspace_bytes, cudaStream_t stream,
                                   AttentionPath path = AttentionPath::kAuto);

// ---- sampling (sampling.cu; the exact rule: native/include/moe/sampling_rule.h) -----------------
// Greedy: ids[t] = argmax_i logits[t, i], ties to the lower index, NaN never wins (an all-NaN row
// gives 0). Errors: cudaErrorInvalidValue for num_tokens < 0, vocab < 1 or vocab > 2^23, a null
// pointer (num_tokens == 0 launches nothing).
cudaError_t launch_argmax(const float* logits,           // [num_tokens, vocab]
                          int64_t num_tokens, int64_t vocab,
                          int32_t* ids,                  // [num_tokens]
                          cudaStream_t stream);

// Sampling of each row t by its own SampleRow rows[t] (device memory), the exact rule of
// sampling_rule.h: penalties from the row's history (pen_offsets [T+1], pen_ids / pen_counts [n_pen],
// distinct ids per row; pen_offsets null: none) applied to a copy of the row, then greedy or integer
// weights filtered by min-p, top-k and top-p through exact threshold searches (no sort), one Philox
// draw of (seed, step, stream), inverse CDF in index order. Every step after the penalties is on
// integers, so the id equals the sequential rule's (moe::sample_row, the CPU twin; the tests also
// check a sort-based reference) given the same logits, bit for bit, whatever the reduction order.
// workspace: sample_workspace_bytes(num_tokens, vocab, pen_offsets != null) bytes, 8-byte aligned.
size_t sample_workspace_bytes(int64_t num_tokens, int64_t vocab, bool penalties);
cudaError_t launch_sample(const float* logits,       // [num_tokens, vocab]
                          int64_t num_tokens, int64_t vocab,
                          const SampleRow* rows,     // [num_tokens]
                          const int32_t* pen_ids, const int32_t* pen_counts, const int32_t* pen_offsets, int64_t n_pen,
                          void* workspace, size_t workspace_bytes,
                          int32_t* ids,              // [num_tokens]
                          cudaStream_t stream);

}  // namespace moe
