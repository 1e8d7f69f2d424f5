// moe-kernels CUDA: choosing the next token from logits [T, V] (declarations: decoder_launchers.h; the
// exact rule, shared with the CPU: native/include/moe/sampling_rule.h):
//
//   argmax_kernel          one block per row: greedy id, ties to the lower index, NaN never wins
//   sample_kernel          one block per row, each with its own SampleRow: penalties on a copy of
//                          the row, then greedy, or integer weights (min-p at once), top-k and top-p
//                          by exact threshold searches instead of a sort, one Philox draw, inverse
//                          CDF in index order
//
// Deterministic and exact: the argmax reduction is over a strict total order, and every sum of the
// sampler is over 64-bit integers, so the block's parallel order cannot change a result.
#include "cuda_compat.cuh"
#include "launchers.h"
#include "decoder_launchers.h"

#include "../../include/moe/rng_philox.h"
#include "../../include/moe/sampling_rule.h"

#include <climits>
#include <cmath>

namespace moe {

namespace {

constexpr int kWarp = 32;
constexpr unsigned kFull = 0xffffffffu;
constexpr int kSampleThreads = 256;
constexpr int kSampleWarps = kSampleThreads / kWarp;
// Blocks per SM the registers must allow: 2 x 256 threads leave up to 128 registers (left alone,
// ptxas settled on 40 and spilled the sampler's 64-bit state on sm_80/sm_90).
constexpr int kSampleMinBlocks = 2;
constexpr int kWeightBits = kSampleWeightBits + 1;  // weights lie in [0, 2^40]

// (v, i) beats (bv, bi): not NaN, and bi unset, or larger, or equal with a lower index.
__device__ __forceinline__ bool beats(float v, int i, float bv, int bi) {
  if (v != v) return false;
  return bi < 0 || v > bv || (v == bv && i < bi);
}

// The row's argmax (-1 when every value is NaN), returned to every thread.
__device__ __forceinline__ int block_argmax(const float* __restrict__ row, int vocab, float* s_val, int* s_idx) {
  float bv = 0.f;
  int bi = -1;
  for (int i = int(threadIdx.x); i < vocab; i += kSampleThreads)
    if (beats(row[i], i, bv, bi)) bv = row[i], bi = i;
  MOE_UNROLL
  for (int off = kWarp / 2; off > 0; off >>= 1) {
    const float ov = __shfl_xor_sync(kFull, bv, off);
    const int oi = __shfl_xor_sync(kFull, bi, off);
    if (oi >= 0 && beats(ov, oi, bv, bi)) bv = ov, bi = oi;
  }
  if (threadIdx.x % kWarp == 0) s_val[threadIdx.x / kWarp] = bv, s_idx[threadIdx.x / kWarp] = bi;
  __syncthreads();
  bv = 0.f, bi = -1;
  for (int w = 0; w < kSampleWarps; ++w)
    if (s_idx[w] >= 0 && beats(s_val[w], s_idx[w], bv, bi)) bv = s_val[w], bi = s_idx[w];
  __syncthreads();  // s_val / s_idx may be reused
  return bi;
}

// Sum over the block, to every thread (exact: integers).
__device__ __forceinline__ uint64_t block_sum_u64(uint64_t v, unsigned long long* s_red) {
  MOE_UNROLL
  for (int off = kWarp / 2; off > 0; off >>= 1) v += __shfl_xor_sync(kFull, (unsigned long long)v, off);
  if (threadIdx.x % kWarp == 0) s_red[threadIdx.x / kWarp] = v;
  __syncthreads();
  uint64_t total = 0;
  for (int w = 0; w < kSampleWarps; ++w) total += s_red[w];
  __syncthreads();
  return total;
}

// Exclusive prefix sum over the threads in thread order.
__device__ __forceinline__ uint64_t block_exclusive_scan_u64(uint64_t v, unsigned long long* s_red) {
  const int lane = int(threadIdx.x) % kWarp, warp = int(threadIdx.x) / kWarp;
  uint64_t incl = v;
  MOE_UNROLL
  for (int off = 1; off < kWarp; off *= 2) {
    const uint64_t o = __shfl_up_sync(kFull, (unsigned long long)incl, off);
    if (lane >= off) incl += o;
  }
  if (lane == kWarp - 1) s_red[warp] = incl;
  __syncthreads();
  uint64_t before = 0;
  for (int w = 0; w < warp; ++w) before += s_red[w];
  __syncthreads();
  return before + incl - v;
}

__global__ void __launch_bounds__(kSampleThreads)
    argmax_kernel(const float* __restrict__ logits, int vocab, int32_t* __restrict__ ids) {
  MOE_SHARED(float, s_val, [kSampleWarps]);
  MOE_SHARED(int, s_idx, [kSampleWarps]);
  const int id = block_argmax(logits + int64_t(blockIdx.x) * vocab, vocab, s_val, s_idx);
  if (threadIdx.x == 0) ids[blockIdx.x] = id < 0 ? 0 : id;
}

// The largest v with `count` or more weights >= v (count >= 1): the count-th largest weight.
__device__ __forceinline__ uint64_t block_kth_largest(const uint64_t* __restrict__ q, int vocab, uint64_t count,
                                                      unsigned long long* s_red) {
  uint64_t v = 0;
  for (int b = kWeightBits - 1; b >= 0; --b) {
    const uint64_t cand = v | (uint64_t(1) << b);
    uint64_t c = 0;
    for (int i = int(threadIdx.x); i < vocab; i += kSampleThreads) c += q[i] >= cand;
    if (block_sum_u64(c, s_red) >= count) v = cand;
  }
  return v;
}

__global__ void __launch_bounds__(kSampleThreads, kSampleMinBlocks)
    sample_kernel(const float* __restrict__ logits, int vocab, const SampleRow* __restrict__ rows,
                  const int32_t* __restrict__ pen_ids, const int32_t* __restrict__ pen_counts,
                  const int32_t* __restrict__ pen_offsets, int n_pen, uint64_t* __restrict__ ws_q,
                  float* __restrict__ ws_l, int32_t* __restrict__ ids) {
  MOE_SHARED(float, s_val, [kSampleWarps]);
  MOE_SHARED(int, s_idx, [kSampleWarps]);
  MOE_SHARED(unsigned long long, s_red, [kSampleWarps]);
  MOE_SHARED(int, s_pick, [1]);
  const int64_t row_id = blockIdx.x;
  const SampleRow p = rows[row_id];
  const float* row = logits + row_id * vocab;
  // Penalties: on a copy of the row (the logits are an input); a row's history ids are distinct, so
  // no two threads write one entry.
  if (pen_offsets) {
    const int j0 = pen_offsets[row_id], j1 = pen_offsets[row_id + 1];
    if (0 <= j0 && j0 < j1 && j1 <= n_pen) {
      float* l = ws_l + row_id * vocab;
      for (int i = int(threadIdx.x); i < vocab; i += kSampleThreads) l[i] = row[i];
      __syncthreads();
      for (int j = j0 + int(threadIdx.x); j < j1; j += kSampleThreads) {
        const int id = pen_ids[j];
        if (id >= 0 && id < vocab) l[id] = penalized_logit(l[id], pen_counts[j], p.repetition, p.presence, p.frequency);
      }
      __syncthreads();
      row = l;
    }
  }
  const int greedy = block_argmax(row, vocab, s_val, s_idx);
  if (greedy < 0 || !(p.temperature > 0.f)) {  // every logit NaN, or greedy
    if (threadIdx.x == 0) ids[row_id] = greedy < 0 ? 0 : greedy;
    return;  // the whole block
  }
  const float m = row[greedy];
  const uint64_t theta = min_p_threshold(p.min_p);
  uint64_t* q = ws_q + row_id * vocab;
  uint64_t part = 0;
  for (int i = int(threadIdx.x); i < vocab; i += kSampleThreads) {
    uint64_t w = sample_weight(row[i], m, p.temperature);
    if (w < theta) w = 0;
    q[i] = w;
    part += w;
  }
  uint64_t total = block_sum_u64(part, s_red);  // (its barrier publishes q)
  if (total == 0) {  // no weight anywhere (e.g. every logit -inf): greedy
    if (threadIdx.x == 0) ids[row_id] = greedy;
    return;
  }

  // Contiguous ranges per thread, so that index order is (thread, position) order.
  const int span = (vocab + kSampleThreads - 1) / kSampleThreads;
  const int i0 = min(int(threadIdx.x) * span, vocab), i1 = min(i0 + span, vocab);

  if (p.top_k > 0 && p.top_k < vocab) {  // keep the k largest, ties to the lower index
    const uint64_t k = uint64_t(p.top_k);
    const uint64_t tau_k = block_kth_largest(q, vocab, k, s_red);
    uint64_t n_above = 0, n_tie = 0;
    for (int i = i0; i < i1; ++i) n_above += q[i] > tau_k, n_tie += q[i] == tau_k;
    const uint64_t ties_k = k - block_sum_u64(n_above, s_red);  // >= 1
    uint64_t rank = block_exclusive_scan_u64(n_tie, s_red);
    part = 0;
    for (int i = i0; i < i1; ++i) {
      const uint64_t w = q[i];
      const bool keep = w > tau_k || (w == tau_k && rank++ < ties_k);
      if (!keep) q[i] = 0;
      part += keep ? w : 0;
    }
    total = block_sum_u64(part, s_red);  // >= the top weight
  }
  const uint64_t mass = top_p_mass(total, p.top_p);

  // tau: the largest v with S(v) = sum of the weights >= v at least `mass`, bit by bit from the top.
  uint64_t tau = 0;
  for (int b = kWeightBits - 1; b >= 0; --b) {
    const uint64_t cand = tau | (uint64_t(1) << b);
    uint64_t s = 0;
    for (int i = int(threadIdx.x); i < vocab; i += kSampleThreads) {
      const uint64_t w = q[i];
      if (w >= cand) s += w;
    }
    if (block_sum_u64(s, s_red) >= mass) tau = cand;
  }

  uint64_t above = 0, n_tie = 0;
  for (int i = i0; i < i1; ++i) {
    const uint64_t w = q[i];
    if (w > tau) above += w;
    n_tie += w == tau;
  }
  const uint64_t sum_above = block_sum_u64(above, s_red);
  const uint64_t ties_needed = (mass - sum_above + tau - 1) / tau;  // mass > sum_above, tau >= 1
  const uint64_t ties_before = block_exclusive_scan_u64(n_tie, s_red);
  // This thread's part of the nucleus: its weights above tau and its first ties, up to the quota.
  const uint64_t my_ties = ties_before >= ties_needed ? 0
                           : (ties_needed - ties_before < n_tie ? ties_needed - ties_before : n_tie);
  const uint64_t mine = above + my_ties * tau;
  const uint64_t nucleus = sum_above + ties_needed * tau;
  const uint64_t before = block_exclusive_scan_u64(mine, s_red);
  const uint64_t target = mulhi_u64(philox_u64(p.seed, p.step, p.stream), nucleus);
  if (threadIdx.x == 0) s_pick[0] = -1;
  __syncthreads();
  if (target >= before && target < before + mine) {  // exactly one thread
    uint64_t run = before, tie_rank = ties_before;
    for (int i = i0; i < i1; ++i) {
      const uint64_t w = q[i];
      bool in = w > tau;
      if (w == tau) in = tie_rank++ < ties_needed;
      if (!in) continue;
      run += w;
      if (run > target) {
        s_pick[0] = i;
        break;
      }
    }
  }
  __syncthreads();
  if (threadIdx.x == 0) ids[row_id] = s_pick[0] < 0 ? greedy : s_pick[0];
}

}  // namespace

cudaError_t launch_argmax(const float* logits, int64_t num_tokens, int64_t vocab, int32_t* ids, cudaStream_t stream) {
  if (num_tokens < 0 || num_tokens > INT_MAX || vocab < 1 || vocab > kSampleMaxVocab) return cudaErrorInvalidValue;
  if (num_tokens == 0) return cudaSuccess;
  if (!logits || !ids) return cudaErrorInvalidValue;
  return moe_launch(argmax_kernel, dim3(unsigned(num_tokens)), dim3(kSampleThreads), 0, stream, logits, int(vocab),
                    ids);
}

size_t sample_workspace_bytes(int64_t num_tokens, int64_t vocab, bool penalties) {
  if (num_tokens < 0 || vocab < 1 || vocab > kSampleMaxVocab) return 0;
  return size_t(num_tokens) * size_t(vocab) * (sizeof(uint64_t) + (penalties ? sizeof(float) : 0));
}

cudaError_t launch_sample(const float* logits, int64_t num_tokens, int64_t vocab, const SampleRow* rows,
                          const int32_t* pen_ids, const int32_t* pen_counts, const int32_t* pen_offsets, int64_t n_pen,
                          void* workspace, size_t workspace_bytes, int32_t* ids, cudaStream_t stream) {
  if (num_tokens < 0 || num_tokens > INT_MAX || vocab < 1 || vocab > kSampleMaxVocab || n_pen < 0 || n_pen > INT_MAX)
    return cudaErrorInvalidValue;
  if (num_tokens == 0) return cudaSuccess;
  const bool pen = pen_offsets != nullptr;
  if (!logits || !rows || !ids || (pen && n_pen > 0 && (!pen_ids || !pen_counts))) return cudaErrorInvalidValue;
  if (!workspace || workspace_bytes < sample_workspace_bytes(num_tokens, vocab, pen)) return cudaErrorInvalidValue;
  uint64_t* ws_q = static_cast<uint64_t*>(workspace);
  float* ws_l = pen ? reinterpret_cast<float*>(ws_q + num_tokens * vocab) : nullptr;
  return moe_launch(sample_kernel, dim3(unsigned(num_tokens)), dim3(kSampleThreads), 0, stream, logits, int(vocab), rows,
                    pen_ids, pen_counts, pen_offsets, int(n_pen), ws_q, ws_l, ids);
}

}  // namespace moe
