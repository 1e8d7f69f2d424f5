// moe-kernels CUDA: router statistics, the GPU twin of the RouterStats part of route() in
// native/backends/cpu/routing.cc (definitions in native/include/moe/moe_ops.h, RouterStats):
//
//   aux_loss = E * sum_e f_e * P_e    Switch load-balancing loss, Hugging Face's top-k definition:
//                                     f_e = (slots routed to e) / T, P_e = mean_t softmax(logits_t)[e]
//   z_loss   = mean_t logsumexp(logits_t)^2   (ST-MoE)
//   expert_counts[e] = slots routed to e (ids of kNoExpert count nowhere)
//
//   router_stats_partial_kernel  one block per kStatTokens tokens: a warp per token for its max and
//                                sum of exp (xor butterflies), then one thread per expert summing
//                                that expert's probabilities and counting its slots over the block's
//                                tokens in token order, and thread 0 the block's sum of lse^2
//   router_stats_final_kernel    one block: per expert, the partials summed over blocks in block
//                                order; the f_e * P_e terms reduced in a fixed tree
//   launch_router_stats          argument checks, workspace layout, the two launches
//
// Deterministic: every sum has a fixed order that depends only on T and E (no atomics), so results
// are the same bits run to run; they differ from the CPU twin's (which sums in double per task of
// 16 tokens) by rounding only.
#include "cuda_compat.cuh"
#include "launchers.h"

#include <climits>
#include <cmath>

namespace moe {

namespace {
constexpr int kStatThreads = 256;
constexpr int kStatWarps = kStatThreads / 32;
constexpr int kStatTokens = 32;  // tokens per block of the partial pass
constexpr unsigned kStatAllLanes = 0xffffffffu;

size_t stat_align(size_t n) { return (n + 255) / 256 * 256; }

struct StatsLayout {
  int64_t blocks = 0;
  size_t prob = 0, count = 0, z = 0, bytes = 0;  // [B,E] f32, [B,E] i32, [B] f32
};

bool stats_layout(int64_t num_tokens, int num_experts, StatsLayout* L) {
  if (num_tokens < 0 || num_experts < 1) return false;
  L->blocks = (num_tokens + kStatTokens - 1) / kStatTokens;
  if (L->blocks > INT_MAX) return false;
  const size_t be = size_t(L->blocks) * size_t(num_experts);
  L->prob = 0;
  L->count = stat_align(be * sizeof(float));
  L->z = L->count + stat_align(be * sizeof(int32_t));
  L->bytes = L->z + stat_align(size_t(L->blocks) * sizeof(float));
  if (L->bytes == 0) L->bytes = 256;
  return true;
}
}  // namespace

__global__ void __launch_bounds__(kStatThreads)
    router_stats_partial_kernel(const float* __restrict__ logits,    // [num_tokens, num_experts]
                                const int32_t* __restrict__ topk_ids,  // [num_tokens, top_k]
                                int64_t num_tokens, int num_experts, int top_k,
                                float* __restrict__ prob_part,       // [B, num_experts]
                                int32_t* __restrict__ count_part,    // [B, num_experts]
                                float* __restrict__ z_part) {        // [B]
  MOE_SHARED(float, row_max, [kStatTokens]);
  MOE_SHARED(float, row_sum, [kStatTokens]);
  const int warp = int(threadIdx.x) / 32, lane = int(threadIdx.x) % 32;
  const int64_t t0 = int64_t(blockIdx.x) * kStatTokens;
  const int n = int(num_tokens - t0 < kStatTokens ? num_tokens - t0 : kStatTokens);
  for (int i = warp; i < n; i += kStatWarps) {  // uniform across the warp
    const float* row = logits + (t0 + i) * num_experts;
    float mx = -INFINITY;
    for (int e = lane; e < num_experts; e += 32) mx = fmaxf(mx, row[e]);
    MOE_UNROLL
    for (int o = 16; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(kStatAllLanes, mx, o));
    float sum = 0.f;
    for (int e = lane; e < num_experts; e += 32) sum += expf(row[e] - mx);
    MOE_UNROLL
    for (int o = 16; o > 0; o >>= 1) sum += __shfl_xor_sync(kStatAllLanes, sum, o);
    if (lane == 0) {
      row_max[i] = mx;
      row_sum[i] = sum;
    }
  }
  __syncthreads();
  const float* rows = logits + t0 * num_experts;
  const int32_t* slots = topk_ids + t0 * top_k;
  const int nslots = n * top_k;
  for (int e = int(threadIdx.x); e < num_experts; e += kStatThreads) {
    float p = 0.f;
    for (int i = 0; i < n; ++i) p += expf(rows[int64_t(i) * num_experts + e] - row_max[i]) / row_sum[i];
    int c = 0;
    for (int s = 0; s < nslots; ++s) c += slots[s] == e;
    prob_part[int64_t(blockIdx.x) * num_experts + e] = p;
    count_part[int64_t(blockIdx.x) * num_experts + e] = c;
  }
  if (threadIdx.x == 0) {
    float z = 0.f;
    for (int i = 0; i < n; ++i) {
      const float lse = row_max[i] + logf(row_sum[i]);
      z += lse * lse;
    }
    z_part[blockIdx.x] = z;
  }
}

__global__ void __launch_bounds__(kStatThreads)
    router_stats_final_kernel(const float* __restrict__ prob_part, const int32_t* __restrict__ count_part,
                              const float* __restrict__ z_part, int num_blocks, int64_t num_tokens,
                              int num_experts,
                              int32_t* __restrict__ expert_counts,  // [num_experts] or null
                              float* __restrict__ stats) {          // [2]: aux_loss, z_loss; or null
  MOE_SHARED(float, terms, [kStatThreads]);
  const float inv_t = 1.0f / float(num_tokens);
  float acc = 0.f;  // this thread's experts e = tid, tid + 256, ... in order
  for (int e = int(threadIdx.x); e < num_experts; e += kStatThreads) {
    float p = 0.f;
    int c = 0;
    for (int b = 0; b < num_blocks; ++b) {
      p += prob_part[int64_t(b) * num_experts + e];
      c += count_part[int64_t(b) * num_experts + e];
    }
    if (expert_counts) expert_counts[e] = c;
    acc += (float(c) * inv_t) * (p * inv_t);
  }
  terms[threadIdx.x] = acc;
  __syncthreads();
  for (int half = kStatThreads / 2; half > 0; half >>= 1) {  // a fixed tree
    if (int(threadIdx.x) < half) terms[threadIdx.x] += terms[threadIdx.x + half];
    __syncthreads();
  }
  if (threadIdx.x == 0 && stats) {
    float z = 0.f;
    for (int b = 0; b < num_blocks; ++b) z += z_part[b];
    stats[0] = float(num_experts) * terms[0];
    stats[1] = z * inv_t;
  }
}

size_t router_stats_workspace_bytes(int64_t num_tokens, int num_experts) {
  StatsLayout L;
  return stats_layout(num_tokens, num_experts, &L) ? L.bytes : 0;
}

cudaError_t launch_router_stats(const float* logits, const int32_t* topk_ids, int64_t num_tokens, int num_experts,
                                int top_k, int32_t* expert_counts, float* stats, void* workspace,
                                size_t workspace_bytes, cudaStream_t stream) {
  StatsLayout L;
  if (!stats_layout(num_tokens, num_experts, &L) || top_k < 1 || top_k > num_experts) return cudaErrorInvalidValue;
  if (!expert_counts && !stats) return cudaSuccess;
  if (num_tokens == 0) {  // no token: zero counts and losses
    cudaError_t err = cudaSuccess;
    if (expert_counts) err = cudaMemsetAsync(expert_counts, 0, size_t(num_experts) * sizeof(int32_t), stream);
    if (err == cudaSuccess && stats) err = cudaMemsetAsync(stats, 0, 2 * sizeof(float), stream);
    return err;
  }
  if (!logits || !topk_ids || !workspace || workspace_bytes < L.bytes) return cudaErrorInvalidValue;
  unsigned char* ws = static_cast<unsigned char*>(workspace);
  float* prob_part = reinterpret_cast<float*>(ws + L.prob);
  int32_t* count_part = reinterpret_cast<int32_t*>(ws + L.count);
  float* z_part = reinterpret_cast<float*>(ws + L.z);
  cudaError_t err = moe_launch(router_stats_partial_kernel, dim3(unsigned(L.blocks)), dim3(kStatThreads), 0, stream,
                               logits, topk_ids, num_tokens, num_experts, top_k, prob_part, count_part, z_part);
  if (err != cudaSuccess) return err;
  return moe_launch(router_stats_final_kernel, dim3(1), dim3(kStatThreads), 0, stream, prob_part, count_part, z_part,
                    int(L.blocks), num_tokens, num_experts, expert_counts, stats);
}

}  // namespace moe
