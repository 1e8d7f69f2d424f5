// moe-kernels CUDA: router softmax + top-k, the GPU twin of route() in native/backends/cpu/routing.cc.
//
//   softmax_topk_kernel<kExperts>  E known at compile time (8, 16, 64): min(E, 32) lanes per token,
//                                  each lane holding E / lanes logits in registers; a warp serves
//                                  32 / lanes tokens at once;
//   softmax_topk_general_kernel    any E: one warp per token, lanes striding over the experts and
//                                  re-reading the row (from L1) on every pass;
//   launch_softmax_topk            argument checks, the grid, and the switch from E onto the two.
//   noisy_logits_kernel            noisy top-k gating: H = logits + N(0,1) * softplus(noise logits),
//                                  one thread per (token, expert), draws from moe/route_rng.h
//   random_routing_kernel          GShard random routing of a top-2 token's second expert, one
//                                  thread per token (route_keep_second of moe/route_rng.h)
//
// Semantics: softmax in f32 over a row of logits [T,E]. The top-k rank the logits themselves
// (softmax is monotone, and ranking the f32 logits is exact, while two probabilities can round to
// the same value): higher first, ties to the lower expert index, NaN after every number. So the
// ranking is a strict total order, and the j-th pick is the best element ranked after pick j-1: no
// per-expert "taken" flags are needed. Weight = exp(l - max) / sum; with `renormalize` each weight
// is divided by the sum of the k kept weights, accumulated in pick order (as the CPU twin does).
// Reductions are xor butterflies, which leave the bitwise-same result in every lane of a group.
#include "cuda_compat.cuh"
#include "launchers.h"

#include <climits>
#include <cmath>

#include "../../include/moe/route_rng.h"

namespace moe {

namespace {
constexpr int kRouteThreads = 128;  // 4 warps per block: enough blocks for small T, few for large
constexpr int kWarpLanes = 32;
constexpr unsigned kAllLanes = 0xffffffffu;
constexpr int kMaxLogitsPerLane = 8;  // registers per lane for compile-time E (E <= 256)
// (NaN, INT_MAX) ranks after every element: where a search starts, and what a lane with no
// candidate left offers to the reduction.
constexpr int kNoCandidateBits = 0x7fc00000;  // quiet NaN
constexpr int kNoCandidateIndex = INT_MAX;
}  // namespace

// True when (va, ia) ranks before (vb, ib): larger logit first, NaN last, ties to the lower index.
__device__ __forceinline__ bool ranks_before(float va, int ia, float vb, int ib) {
  const bool nan_a = va != va, nan_b = vb != vb;
  if (nan_a != nan_b) return nan_b;
  if (!nan_a && va != vb) return va > vb;
  return ia < ib;
}

// Reductions over the kWidth lanes of a token group (kWidth a power of two, <= 32). All lanes of the
// warp take part, so every group of the warp reduces at once.
template <int kWidth>
__device__ __forceinline__ float group_max(float v) {
  MOE_UNROLL
  for (int offset = kWidth / 2; offset > 0; offset >>= 1)
    v = fmaxf(v, __shfl_xor_sync(kAllLanes, v, offset, kWidth));
  return v;
}

template <int kWidth>
__device__ __forceinline__ float group_sum(float v) {
  MOE_UNROLL
  for (int offset = kWidth / 2; offset > 0; offset >>= 1) v += __shfl_xor_sync(kAllLanes, v, offset, kWidth);
  return v;
}

// Leaves in (v, i) the group's first-ranked element.
template <int kWidth>
__device__ __forceinline__ void group_best(float& v, int& i) {
  MOE_UNROLL
  for (int offset = kWidth / 2; offset > 0; offset >>= 1) {
    const float other_v = __shfl_xor_sync(kAllLanes, v, offset, kWidth);
    const int other_i = __shfl_xor_sync(kAllLanes, i, offset, kWidth);
    if (ranks_before(other_v, other_i, v, i)) {
      v = other_v;
      i = other_i;
    }
  }
}


template <int kExperts>
__global__ void __launch_bounds__(kRouteThreads)
    softmax_topk_kernel(const float* __restrict__ logits,  // [num_tokens, kExperts]
                        int64_t num_tokens, int top_k, bool renormalize,
                        int32_t* __restrict__ topk_ids,       // [num_tokens, top_k]
                        float* __restrict__ topk_weights) {   // [num_tokens, top_k]
  static_assert(kExperts > 0 && (kExperts & (kExperts - 1)) == 0, "compile-time E must be a power of two");
  constexpr int kLanes = kExperts < kWarpLanes ? kExperts : kWarpLanes;  // lanes per token
  constexpr int kPerLane = kExperts / kLanes;
  constexpr int kTokensPerBlock = kRouteThreads / kLanes;
  static_assert(kPerLane <= kMaxLogitsPerLane, "too many logits per lane: use the general kernel");
  static_assert(kRouteThreads % kWarpLanes == 0, "whole warps only");

  const int lane = int(threadIdx.x) % kLanes;
  const int64_t token = int64_t(blockIdx.x) * kTokensPerBlock + int(threadIdx.x) / kLanes;
  // Lanes past the last token keep going with dummy data: their warp's shuffles need every lane.
  const bool valid = token < num_tokens;
  const float* row = logits + (valid ? token : 0) * kExperts;

  float v[kPerLane];  // expert s * kLanes + lane: consecutive lanes read consecutive floats
  MOE_UNROLL
  for (int s = 0; s < kPerLane; ++s) v[s] = valid ? row[s * kLanes + lane] : 0.f;

  float mx = -INFINITY;
  MOE_UNROLL
  for (int s = 0; s < kPerLane; ++s) mx = fmaxf(mx, v[s]);
  mx = group_max<kLanes>(mx);
  float sum = 0.f;
  MOE_UNROLL
  for (int s = 0; s < kPerLane; ++s) sum += expf(v[s] - mx);
  sum = group_sum<kLanes>(sum);

  float prev_v = 0.f;
  int prev_i = -1;  // no pick yet
  float kept = 0.f;
  for (int j = 0; j < top_k; ++j) {
    float best_v = __int_as_float(kNoCandidateBits);
    int best_i = kNoCandidateIndex;
    MOE_UNROLL
    for (int s = 0; s < kPerLane; ++s) {
      const int e = s * kLanes + lane;
      const bool after_prev = prev_i < 0 || ranks_before(prev_v, prev_i, v[s], e);
      if (after_prev && ranks_before(v[s], e, best_v, best_i)) {
        best_v = v[s];
        best_i = e;
      }
    }
    group_best<kLanes>(best_v, best_i);
    prev_v = best_v;
    prev_i = best_i;
    const float w = expf(best_v - mx) / sum;
    kept += w;
    if (valid && lane == 0) {
      topk_ids[token * top_k + j] = best_i;
      topk_weights[token * top_k + j] = w;
    }
  }
  if (renormalize && valid && lane == 0)
    for (int j = 0; j < top_k; ++j) topk_weights[token * top_k + j] /= kept;
}

__global__ void __launch_bounds__(kRouteThreads)
    softmax_topk_general_kernel(const float* __restrict__ logits,  // [num_tokens, num_experts]
                                int64_t num_tokens, int num_experts, int top_k, bool renormalize,
                                int32_t* __restrict__ topk_ids,       // [num_tokens, top_k]
                                float* __restrict__ topk_weights) {   // [num_tokens, top_k]
  constexpr int kTokensPerBlock = kRouteThreads / kWarpLanes;
  const int lane = int(threadIdx.x) % kWarpLanes;
  const int64_t token = int64_t(blockIdx.x) * kTokensPerBlock + int(threadIdx.x) / kWarpLanes;
  if (token >= num_tokens) return;  // the whole warp leaves: `token` is uniform across it
  const float* row = logits + token * num_experts;

  float mx = -INFINITY;
  for (int e = lane; e < num_experts; e += kWarpLanes) mx = fmaxf(mx, row[e]);
  mx = group_max<kWarpLanes>(mx);
  float sum = 0.f;
  for (int e = lane; e < num_experts; e += kWarpLanes) sum += expf(row[e] - mx);
  sum = group_sum<kWarpLanes>(sum);

  float prev_v = 0.f;
  int prev_i = -1;
  float kept = 0.f;
  for (int j = 0; j < top_k; ++j) {
    float best_v = __int_as_float(kNoCandidateBits);
    int best_i = kNoCandidateIndex;
    for (int e = lane; e < num_experts; e += kWarpLanes) {
      const float x = row[e];
      if ((prev_i < 0 || ranks_before(prev_v, prev_i, x, e)) && ranks_before(x, e, best_v, best_i)) {
        best_v = x;
        best_i = e;
      }
    }
    group_best<kWarpLanes>(best_v, best_i);
    prev_v = best_v;
    prev_i = best_i;
    const float w = expf(best_v - mx) / sum;
    kept += w;
    if (lane == 0) {
      topk_ids[token * top_k + j] = best_i;
      topk_weights[token * top_k + j] = w;
    }
  }
  if (renormalize && lane == 0)
    for (int j = 0; j < top_k; ++j) topk_weights[token * top_k + j] /= kept;
}

namespace {
// Blocks for `num_tokens` at `tokens_per_block`, or 0 when the grid would be too large.
unsigned route_blocks(int64_t num_tokens, int tokens_per_block) {
  const int64_t blocks = (num_tokens + tokens_per_block - 1) / tokens_per_block;
  return blocks > INT_MAX ? 0u : unsigned(blocks);
}

template <int kExperts>
cudaError_t launch_fixed(const float* logits, int64_t num_tokens, int top_k, bool renormalize,
                         int32_t* topk_ids, float* topk_weights, cudaStream_t stream) {
  constexpr int kLanes = kExperts < kWarpLanes ? kExperts : kWarpLanes;
  const unsigned blocks = route_blocks(num_tokens, kRouteThreads / kLanes);
  if (blocks == 0) return cudaErrorInvalidValue;
  return moe_launch(softmax_topk_kernel<kExperts>, dim3(blocks), dim3(kRouteThreads), 0, stream,
                    logits, num_tokens, top_k, renormalize, topk_ids, topk_weights);
}
}  // namespace

cudaError_t launch_softmax_topk(const float* logits, int64_t num_tokens, int num_experts, int top_k,
                                bool renormalize, int32_t* topk_ids, float* topk_weights,
                                cudaStream_t stream) {
  if (num_tokens < 0 || num_experts < 1 || top_k < 1 || top_k > num_experts) return cudaErrorInvalidValue;
  if (num_tokens == 0) return cudaSuccess;
  if (!logits || !topk_ids || !topk_weights) return cudaErrorInvalidValue;
  // Compile-time instances for the common expert counts (Mixtral 8, 16, fine-grained 64).
  switch (num_experts) {
    case 8: return launch_fixed<8>(logits, num_tokens, top_k, renormalize, topk_ids, topk_weights, stream);
    case 16: return launch_fixed<16>(logits, num_tokens, top_k, renormalize, topk_ids, topk_weights, stream);
    case 64: return launch_fixed<64>(logits, num_tokens, top_k, renormalize, topk_ids, topk_weights, stream);
    default: {
      const unsigned blocks = route_blocks(num_tokens, kRouteThreads / kWarpLanes);
      if (blocks == 0) return cudaErrorInvalidValue;
      return moe_launch(softmax_topk_general_kernel, dim3(blocks), dim3(kRouteThreads), 0, stream,
                        logits, num_tokens, num_experts, top_k, renormalize, topk_ids, topk_weights);
    }
  }
}

// ---- routing variants ----------------------------------------------------------------------------
// The same arithmetic as the CPU twin (route() in native/backends/cpu/routing.cc), through the shared
// helpers of moe/route_rng.h: the draws are equal bit for bit; H differs from the CPU's only by the
// logits' last bits (another summation order), so routing agrees wherever it does not hinge on them.

namespace {
constexpr int kVariantThreads = 256;
}  // namespace

__global__ void __launch_bounds__(kVariantThreads)
    noisy_logits_kernel(const float* __restrict__ logits,        // [num_tokens, num_experts]
                        const float* __restrict__ noise_logits,  // [num_tokens, num_experts]
                        int64_t num_tokens, int num_experts, uint64_t seed,
                        float* __restrict__ noisy) {             // [num_tokens, num_experts]
  const int64_t n = num_tokens * num_experts;
  for (int64_t i = int64_t(blockIdx.x) * kVariantThreads + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * kVariantThreads) {
    const int64_t t = i / num_experts;
    const int e = int(i - t * num_experts);
    // product then sum, each rounded (no FMA contraction), as the CPU twin computes it
    noisy[i] = __fadd_rn(logits[i], __fmul_rn(route_normal(seed, uint64_t(t), uint32_t(e)),
                                              route_softplus(noise_logits[i])));
  }
}

__global__ void __launch_bounds__(kVariantThreads)
    random_routing_kernel(int64_t num_tokens, uint64_t seed,
                          int32_t* __restrict__ topk_ids,        // [num_tokens, 2]
                          float* __restrict__ topk_weights) {    // [num_tokens, 2]
  const int64_t t = int64_t(blockIdx.x) * kVariantThreads + threadIdx.x;
  if (t >= num_tokens) return;
  if (!route_keep_second(seed, uint64_t(t), topk_weights[2 * t], topk_weights[2 * t + 1])) {
    topk_ids[2 * t + 1] = kNoExpert;
    topk_weights[2 * t + 1] = 0.f;
  }
}

namespace {
unsigned variant_blocks(int64_t work) {
  const int64_t blocks = (work + kVariantThreads - 1) / kVariantThreads;
  return unsigned(blocks < 65535 ? blocks : 65535);  // grid-stride loops cover the rest
}
}  // namespace

cudaError_t launch_noisy_logits(const float* logits, const float* noise_logits, int64_t num_tokens,
                                int num_experts, uint64_t seed, float* noisy, cudaStream_t stream) {
  if (num_tokens < 0 || num_experts < 1) return cudaErrorInvalidValue;
  if (num_tokens == 0) return cudaSuccess;
  if (!logits || !noise_logits || !noisy) return cudaErrorInvalidValue;
  return moe_launch(noisy_logits_kernel, dim3(variant_blocks(num_tokens * num_experts)), dim3(kVariantThreads), 0,
                    stream, logits, noise_logits, num_tokens, num_experts, seed, noisy);
}

cudaError_t launch_random_routing(int32_t* topk_ids, float* topk_weights, int64_t num_tokens, int top_k,
                                  uint64_t seed, cudaStream_t stream) {
  if (num_tokens < 0 || top_k != 2) return cudaErrorInvalidValue;
  if (num_tokens == 0) return cudaSuccess;
  if (!topk_ids || !topk_weights) return cudaErrorInvalidValue;
  const int64_t blocks = (num_tokens + kVariantThreads - 1) / kVariantThreads;
  if (blocks > INT_MAX) return cudaErrorInvalidValue;
  return moe_launch(random_routing_kernel, dim3(unsigned(blocks)), dim3(kVariantThreads), 0, stream, num_tokens,
                    seed, topk_ids, topk_weights);
}

}  // namespace moe
