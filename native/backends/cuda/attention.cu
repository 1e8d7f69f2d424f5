// moe-kernels CUDA: the KV cache and causal attention of a decoder layer (declarations and exact
// semantics: decoder_launchers.h):
//
//   kv_append_kernel<TIn, TC>          k, v [T, Hkv, hd] -> cache rows start .. start + T - 1
//   paged_kv_append_kernel<TIn, TC>    k, v [T, Hkv, hd] -> the pool rows of (sequence, position) t
//   attention_kernel<TC, kE, kSplit>   one block (4 warps) per (query, head), or per (chunk, head,
//                                      query) with kSplit; hd = 32 * kE (lane l owns elements
//                                      [l * kE, (l + 1) * kE) of q, K/V rows and the output)
//   attention_combine_kernel           kSplit: folds the chunk states of a (query, head) in order
//
// The order of every floating-point operation is fixed by key positions alone:
//   - keys form chunks of kAttnChunkKeys, aligned to absolute positions (chunk c: [128c, 128c + 128));
//   - in a chunk, warp w takes the groups of 4 consecutive keys at offsets 16 i + 4 w (i = 0..7), in
//     order, and keeps an online softmax (m, l, acc): the 4 scores of a group (dot products summed
//     by lanes in element order, then across lanes by warp_sum4), m' = max(m, scores),
//     acc = acc * e^(m - m') + sum_u e^(s_u - m') v_u in u order; groups outside [lo, pos] are
//     skipped (a no-op anyway);
//   - the 4 warp states merge in warp order into the chunk state, and the chunk states fold in chunk
//     order from an empty state (merge_state: the same rounding steps everywhere; merging an empty
//     state is exact, so chunks outside a query's range change nothing).
// So decode (T = 1 per step, kSplit) and prefill (kSingle) give the same bits for the same query,
// and the result does not depend on the path, the grid or the schedule. No float atomics. Products
// and sums are written with fmaf / __fmul_rn / __fadd_rn so that nvcc cannot contract them
// differently in the two kernels. Scores use 1 / sqrtf(hd), softmax expf (full precision).
//
// Not done here (yet): a tensor-core (mma.sync) prefill; the K/V of a GQA group are read once per
// query head (the L2 cache absorbs most of the repeats).
#include "cuda_compat.cuh"
#include "elem.cuh"
#include "launchers.h"
#include "decoder_launchers.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <climits>
#include <cmath>

namespace moe {

namespace {

constexpr int kWarp = 32;
constexpr unsigned kFull = 0xffffffffu;
constexpr int kAttnWarps = 4;
constexpr int kAttnThreads = kAttnWarps * kWarp;
constexpr int kKeysPerGroup = 4;                          // keys a warp scores at once
constexpr int kGroupStride = kAttnWarps * kKeysPerGroup;  // keys per sweep of the 4 warps
constexpr int kSplitMaxTiles = 256;                       // kAuto: kSplit below this many (query, head)s
// Blocks per SM the registers must allow: 4 x 128 threads leave up to 128 registers (ptxas chose
// 48 with a spill for hd = 256 and 16-bit caches when left alone).
constexpr int kAttnMinBlocks = 4;
constexpr int kAppendThreads = 256;
constexpr unsigned kMaxGrid = 65535;
static_assert(kAttnChunkKeys % kGroupStride == 0, "whole sweeps per chunk");

// (m, l, acc) of an online softmax: max score, sum of e^(s - m), sum of e^(s - m) v.
// a = merge(a, b), the one rounding recipe of every merge (warp states, chunk states).
template <int kN>
__device__ __forceinline__ void merge_state(float& m_a, float& l_a, float (&acc_a)[kN], float m_b, float l_b,
                                            const float (&acc_b)[kN]) {
  const float m = fmaxf(m_a, m_b);
  if (m == -INFINITY) return;  // both empty
  const float ca = expf(m_a - m), cb = expf(m_b - m);
  l_a = fmaf(l_a, ca, __fmul_rn(l_b, cb));
  MOE_UNROLL
  for (int i = 0; i < kN; ++i) acc_a[i] = fmaf(acc_a[i], ca, __fmul_rn(acc_b[i], cb));
  m_a = m;
}

// The 4 lane-partial scores summed over the warp, every lane getting the same 4 totals, in 10
// shuffles instead of 4 x 5: a reduce-scatter (offset 16: each half of the warp keeps 2 of the
// values and sends the other 2; offset 8: 1 of 2; offsets 4, 2, 1: the last value), after which
// lanes 8u..8u+7 hold the total of score u, then 4 broadcasts. A fixed order: the same bits on
// every run and in every path.
__device__ __forceinline__ void warp_sum4(float (&s)[kKeysPerGroup], int lane) {
  static_assert(kKeysPerGroup == 4, "the steps below split 4 values");
  const bool hi16 = (lane & 16) != 0, hi8 = (lane & 8) != 0;
  MOE_UNROLL
  for (int g = 0; g < 2; ++g) {
    const float send = hi16 ? s[g] : s[g + 2], keep = hi16 ? s[g + 2] : s[g];
    s[g] = __fadd_rn(keep, __shfl_xor_sync(kFull, send, 16));
  }
  {
    const float send = hi8 ? s[0] : s[1], keep = hi8 ? s[1] : s[0];
    s[0] = __fadd_rn(keep, __shfl_xor_sync(kFull, send, 8));
  }
  MOE_UNROLL
  for (int off = 4; off > 0; off >>= 1) s[0] = __fadd_rn(s[0], __shfl_xor_sync(kFull, s[0], off));
  const float mine = s[0];
  MOE_UNROLL
  for (int u = 0; u < kKeysPerGroup; ++u) s[u] = __shfl_sync(kFull, mine, 8 * u);
}

// kE consecutive elements of a cache row as floats (4 at a time when kE % 4 == 0, else 2 at a time
// when kE == 2): vector loads, the cache being 16-byte aligned and rows a multiple of 32 elements.
template <int kE, typename TC>
__device__ __forceinline__ void load_row(const TC* p, float (&v)[kE]) {
  if constexpr (kE == 2) {
    elem::load_n<2>(p, v);
  } else if constexpr (kE % 4 == 0) {
    MOE_UNROLL
    for (int i = 0; i < kE; i += 4) {
      float four[4];
      elem::load_n<4>(p + i, four);
      v[i] = four[0], v[i + 1] = four[1], v[i + 2] = four[2], v[i + 3] = four[3];
    }
  } else {
    MOE_UNROLL
    for (int i = 0; i < kE; ++i) v[i] = elem::to_f32(p[i]);
  }
}

template <typename TIn, typename TC>
__global__ void __launch_bounds__(kAppendThreads)
    kv_append_kernel(const TIn* __restrict__ k, const TIn* __restrict__ v, int64_t count,
                     TC* __restrict__ k_dst, TC* __restrict__ v_dst) {  // the cache at row `start`
  for (int64_t i = int64_t(blockIdx.x) * kAppendThreads + threadIdx.x; i < count;
       i += int64_t(gridDim.x) * kAppendThreads) {
    k_dst[i] = elem::from_f32<TC>(elem::to_f32(k[i]));
    v_dst[i] = elem::from_f32<TC>(elem::to_f32(v[i]));
  }
}

struct AttnParams {
  const void* q;           // [T, Hq, hd] of q_dtype
  DevDType q_dtype;
  int64_t start, window;
  // Paged (tables set): query t is at positions[t] of sequence seq_of[t], whose key j lives in cache
  // row tables[seq_of[t] * max_blocks + j / block_size] * block_size + j % block_size. Unset: query t
  // is at start + t and key j in row j.
  const int32_t* positions;
  const int32_t* seq_of;
  const int32_t* tables;
  int max_blocks, block_size;
  int q_heads, kv_heads;
  int64_t chunk_first;     // kSplit: blockIdx.y = chunk - chunk_first
  int num_chunks;          // kSplit: chunks per (query, head) in the workspace
  void* out;               // [T, Hq, hd] of out_dtype (kSingle)
  DevDType out_dtype;
  float* partial;          // kSplit: [T][Hq][num_chunks][hd + 2]: m, l, acc
};

template <typename TC, int kE, bool kSplit>
__global__ void __launch_bounds__(kAttnThreads, kAttnMinBlocks)
    attention_kernel(AttnParams p, const TC* __restrict__ k_cache, const TC* __restrict__ v_cache) {
  constexpr int kHd = kE * kWarp;
  constexpr int kPer = (kHd + kAttnThreads - 1) / kAttnThreads;  // output elements a thread folds
  MOE_SHARED(float, warp_acc, [kAttnWarps][kHd]);
  MOE_SHARED(float, warp_ml, [kAttnWarps][2]);
  const int tid = int(threadIdx.x), lane = tid % kWarp, warp = tid / kWarp;
  // blockIdx.x = t * Hq + h: the query heads of one GQA group are neighbours in launch order, so
  // their blocks run together and read the group's K/V rows through L2 about once.
  const int64_t t = int64_t(blockIdx.x) / p.q_heads;
  const int h = int(int64_t(blockIdx.x) - t * p.q_heads);
  const int64_t pos = p.tables ? int64_t(p.positions[t]) : p.start + t;
  const int64_t lo = p.window > 0 && pos - p.window + 1 > 0 ? pos - p.window + 1 : 0;
  const int32_t* table = p.tables ? p.tables + int64_t(p.seq_of[t]) * p.max_blocks : nullptr;
  // the cache row of key j: the same keys, so the same bits, whether paged or contiguous
  auto row = [&](int64_t j) { return table ? int64_t(table[j / p.block_size]) * p.block_size + j % p.block_size : j; };
  const int kvh = h / (p.q_heads / p.kv_heads);
  const int64_t row_stride = int64_t(p.kv_heads) * kHd;
  const TC* k_base = k_cache + int64_t(kvh) * kHd + lane * kE;
  const TC* v_base = v_cache + int64_t(kvh) * kHd + lane * kE;
  const float scale = 1.f / sqrtf(float(kHd));

  float qv[kE];
  const int64_t q_off = (t * p.q_heads + h) * kHd + lane * kE;
  MOE_UNROLL
  for (int e = 0; e < kE; ++e) qv[e] = elem::load_dyn(p.q, p.q_dtype, q_off + e);

  float run_m = -INFINITY, run_l = 0.f, run_acc[kPer];
  MOE_UNROLL
  for (int r = 0; r < kPer; ++r) run_acc[r] = 0.f;

  int64_t c_begin = lo / kAttnChunkKeys, c_end = pos / kAttnChunkKeys + 1;  // this query's chunks
  if constexpr (kSplit) {  // just chunk c; one outside the query's range leaves the empty state
    const int64_t c = p.chunk_first + blockIdx.y;
    const bool inside = c >= c_begin && c < c_end;
    c_begin = inside ? c : 0;
    c_end = inside ? c + 1 : 0;
  }
  for (int64_t c = c_begin; c < c_end; ++c) {  // block-uniform bounds: the barriers inside are safe
    // This warp's online softmax over its key groups of chunk c.
    float m = -INFINITY, l = 0.f, acc[kE];
    MOE_UNROLL
    for (int e = 0; e < kE; ++e) acc[e] = 0.f;
    for (int it = 0; it < kAttnChunkKeys / kGroupStride; ++it) {
      const int64_t j0 = c * kAttnChunkKeys + it * kGroupStride + warp * kKeysPerGroup;
      if (j0 + kKeysPerGroup - 1 < lo || j0 > pos) continue;  // warp-uniform
      float s[kKeysPerGroup];
      MOE_UNROLL
      for (int u = 0; u < kKeysPerGroup; ++u) {
        const int64_t j = j0 + u;
        float dot = 0.f;
        if (j >= lo && j <= pos) {
          float kv[kE];
          load_row<kE>(k_base + row(j) * row_stride, kv);
          MOE_UNROLL
          for (int e = 0; e < kE; ++e) dot = fmaf(qv[e], kv[e], dot);
        }
        s[u] = dot;
      }
      warp_sum4(s, lane);
      float mx = m;
      MOE_UNROLL
      for (int u = 0; u < kKeysPerGroup; ++u) {
        const int64_t j = j0 + u;
        s[u] = j >= lo && j <= pos ? __fmul_rn(s[u], scale) : -INFINITY;
        mx = fmaxf(mx, s[u]);
      }
      const float corr = expf(m - mx);  // 0 for the first group (m = -inf)
      l = __fmul_rn(l, corr);
      MOE_UNROLL
      for (int e = 0; e < kE; ++e) acc[e] = __fmul_rn(acc[e], corr);
      MOE_UNROLL
      for (int u = 0; u < kKeysPerGroup; ++u) {
        if (s[u] == -INFINITY) continue;  // masked (uniform across the warp)
        const float pu = expf(s[u] - mx);
        l = __fadd_rn(l, pu);
        float vv[kE];
        load_row<kE>(v_base + row(j0 + u) * row_stride, vv);
        MOE_UNROLL
        for (int e = 0; e < kE; ++e) acc[e] = fmaf(pu, vv[e], acc[e]);
      }
      m = mx;
    }
    MOE_UNROLL
    for (int e = 0; e < kE; ++e) warp_acc[warp][lane * kE + e] = acc[e];
    if (lane == 0) warp_ml[warp][0] = m, warp_ml[warp][1] = l;
    __syncthreads();
    // The chunk state (warps merged in order) for this thread's elements, folded into the run.
    float cm = -INFINITY, cl = 0.f, cacc[kPer];
    MOE_UNROLL
    for (int r = 0; r < kPer; ++r) cacc[r] = 0.f;
    MOE_UNROLL
    for (int w = 0; w < kAttnWarps; ++w) {
      float wacc[kPer];
      MOE_UNROLL
      for (int r = 0; r < kPer; ++r) {
        const int e = tid + r * kAttnThreads;
        wacc[r] = e < kHd ? warp_acc[w][e] : 0.f;
      }
      merge_state(cm, cl, cacc, warp_ml[w][0], warp_ml[w][1], wacc);
    }
    merge_state(run_m, run_l, run_acc, cm, cl, cacc);
    __syncthreads();  // warp_acc is rewritten by the next chunk
  }

  if constexpr (kSplit) {
    float* dst = p.partial + ((t * p.q_heads + h) * p.num_chunks + blockIdx.y) * (kHd + 2);
    if (tid == 0) dst[0] = run_m, dst[1] = run_l;
    MOE_UNROLL
    for (int r = 0; r < kPer; ++r) {
      const int e = tid + r * kAttnThreads;
      if (e < kHd) dst[2 + e] = run_acc[r];
    }
  } else {
    const int64_t o = (t * p.q_heads + h) * kHd;
    MOE_UNROLL
    for (int r = 0; r < kPer; ++r) {
      const int e = tid + r * kAttnThreads;
      if (e < kHd) elem::store_dyn(p.out, p.out_dtype, o + e, run_l > 0.f ? run_acc[r] / run_l : 0.f);
    }
  }
}

// One thread per element of the T new rows: row (t, h, e) -> pool row of (seq_of[t], positions[t]).
template <typename TIn, typename TC>
__global__ void __launch_bounds__(kAppendThreads)
    paged_kv_append_kernel(const TIn* __restrict__ k, const TIn* __restrict__ v, int64_t count, int64_t row,
                           const int32_t* __restrict__ positions, const int32_t* __restrict__ seq_of,
                           const int32_t* __restrict__ tables, int max_blocks, int block_size, TC* __restrict__ k_pool,
                           TC* __restrict__ v_pool) {
  for (int64_t i = int64_t(blockIdx.x) * kAppendThreads + threadIdx.x; i < count;
       i += int64_t(gridDim.x) * kAppendThreads) {
    const int64_t t = i / row, within = i - t * row, pos = positions[t];
    const int64_t dst_row = int64_t(tables[int64_t(seq_of[t]) * max_blocks + pos / block_size]) * block_size + pos % block_size;
    k_pool[dst_row * row + within] = elem::from_f32<TC>(elem::to_f32(k[i]));
    v_pool[dst_row * row + within] = elem::from_f32<TC>(elem::to_f32(v[i]));
  }
}

// kSplit's second pass: one block per (query, head), each thread folds the chunk states of its
// output elements in chunk order (merge_state, as the single-block path does).
__global__ void __launch_bounds__(kAttnThreads)
    attention_combine_kernel(const float* __restrict__ partial, int num_chunks, int q_heads, int head_dim,
                             void* __restrict__ out, DevDType out_dtype) {
  const int64_t t = int64_t(blockIdx.x) / q_heads;  // blockIdx.x = t * Hq + h
  const int h = int(int64_t(blockIdx.x) - t * q_heads);
  const float* src = partial + (t * q_heads + h) * int64_t(num_chunks) * (head_dim + 2);
  for (int e = int(threadIdx.x); e < head_dim; e += kAttnThreads) {
    float m = -INFINITY, l = 0.f, acc[1] = {0.f};
    for (int c = 0; c < num_chunks; ++c) {
      const float* s = src + int64_t(c) * (head_dim + 2);
      const float chunk_acc[1] = {s[2 + e]};
      merge_state(m, l, acc, s[0], s[1], chunk_acc);
    }
    elem::store_dyn(out, out_dtype, (t * q_heads + h) * int64_t(head_dim) + e, l > 0.f ? acc[0] / l : 0.f);
  }
}

int64_t chunks_of(int64_t max_seq) { return (max_seq + kAttnChunkKeys - 1) / kAttnChunkKeys; }

template <typename TC, int kE>
cudaError_t run_attention(const AttnParams& p, int64_t num_tokens, const void* k_cache, const void* v_cache,
                          bool split, cudaStream_t stream) {
  const TC* kc = static_cast<const TC*>(k_cache);
  const TC* vc = static_cast<const TC*>(v_cache);
  if (!split)
    return moe_launch(attention_kernel<TC, kE, false>, dim3(unsigned(num_tokens * p.q_heads)), dim3(kAttnThreads), 0,
                      stream, p, kc, vc);
  cudaError_t err = moe_launch(attention_kernel<TC, kE, true>,
                               dim3(unsigned(num_tokens * p.q_heads), unsigned(p.num_chunks)),
                               dim3(kAttnThreads), 0, stream, p, kc, vc);
  if (err != cudaSuccess) return err;
  return moe_launch(attention_combine_kernel, dim3(unsigned(num_tokens * p.q_heads)), dim3(kAttnThreads),
                    0, stream, static_cast<const float*>(p.partial), p.num_chunks, p.q_heads, kE * kWarp, p.out,
                    p.out_dtype);
}

}  // namespace

cudaError_t launch_kv_append(const void* k, const void* v, DevDType act_dtype, int64_t num_tokens, int kv_heads,
                             int head_dim, int64_t start, void* k_cache, void* v_cache, DevDType cache_dtype,
                             int64_t max_seq, cudaStream_t stream) {
  if (num_tokens < 0 || kv_heads < 1 || head_dim < 1 || start < 0 || max_seq < 0 || start > max_seq - num_tokens ||
      !dev_dtype_ok(act_dtype) || !dev_dtype_ok(cache_dtype))
    return cudaErrorInvalidValue;
  if (max_seq > INT64_MAX / (int64_t(kv_heads) * head_dim)) return cudaErrorInvalidValue;
  if (num_tokens == 0) return cudaSuccess;
  if (!k || !v || !k_cache || !v_cache || !ptr_aligned(k, dev_elem_bytes(act_dtype)) ||
      !ptr_aligned(v, dev_elem_bytes(act_dtype)) || !ptr_aligned(k_cache, dev_elem_bytes(cache_dtype)) ||
      !ptr_aligned(v_cache, dev_elem_bytes(cache_dtype)))
    return cudaErrorInvalidValue;
  const int64_t row = int64_t(kv_heads) * head_dim, count = num_tokens * row;
  const int64_t want = (count + kAppendThreads - 1) / kAppendThreads;
  const dim3 grid(unsigned(want < int64_t(kMaxGrid) ? want : int64_t(kMaxGrid)));
  return MOE_DTYPE_SWITCH(act_dtype, TIn, [&] {
    return MOE_DTYPE_SWITCH(cache_dtype, TC, [&] {
      return moe_launch(kv_append_kernel<TIn, TC>, grid, dim3(kAppendThreads), 0, stream, static_cast<const TIn*>(k),
                        static_cast<const TIn*>(v), count, static_cast<TC*>(k_cache) + start * row,
                        static_cast<TC*>(v_cache) + start * row);
    });
  });
}

size_t attention_workspace_bytes(int64_t num_tokens, int q_heads, int head_dim, int64_t max_seq) {
  if (num_tokens < 0 || q_heads < 1 || head_dim < 1 || head_dim > 256 || max_seq < 1) return 0;
  const int64_t per = chunks_of(max_seq) * (head_dim + 2) * int64_t(sizeof(float));
  if (num_tokens > INT64_MAX / q_heads / per) return 0;
  const size_t bytes = size_t(num_tokens * q_heads * per);
  return bytes == 0 ? 256 : bytes;
}

namespace {
// The checks and the path choice shared by the contiguous and the paged launch: p's position fields
// are set by the caller; keys up to max_pos are read, from the chunk of min_lo on.
cudaError_t launch_attention_with(AttnParams p, int64_t num_tokens, int head_dim, int64_t min_lo, int64_t max_pos,
                                  const void* k_cache, const void* v_cache, DevDType cache_dtype, void* workspace,
                                  size_t workspace_bytes, cudaStream_t stream, AttentionPath path) {
  p.chunk_first = min_lo / kAttnChunkKeys;
  const int64_t n_chunks = max_pos / kAttnChunkKeys - p.chunk_first + 1;
  p.num_chunks = int(n_chunks);
  const size_t need = size_t(num_tokens) * size_t(p.q_heads) * size_t(n_chunks) * size_t(head_dim + 2) * sizeof(float);
  const bool ws_ok = workspace && ptr_aligned(workspace, 16) && workspace_bytes >= need && n_chunks <= 65535;
  bool split = path == AttentionPath::kSplit;
  if (split && !ws_ok) return cudaErrorInvalidValue;
  if (path == AttentionPath::kAuto) split = ws_ok && n_chunks > 1 && num_tokens * p.q_heads < kSplitMaxTiles;
  p.partial = split ? static_cast<float*>(workspace) : nullptr;
  return MOE_DTYPE_SWITCH(cache_dtype, TC, [&] {
    switch (head_dim) {
      case 32: return run_attention<TC, 1>(p, num_tokens, k_cache, v_cache, split, stream);
      case 64: return run_attention<TC, 2>(p, num_tokens, k_cache, v_cache, split, stream);
      case 128: return run_attention<TC, 4>(p, num_tokens, k_cache, v_cache, split, stream);
      case 256: return run_attention<TC, 8>(p, num_tokens, k_cache, v_cache, split, stream);
    }
    return cudaErrorInvalidValue;
  });
}
}  // namespace

cudaError_t launch_attention(const void* q, DevDType q_dtype, int64_t num_tokens, int64_t start, int q_heads,
                             int kv_heads, int head_dim, int64_t window, const void* k_cache, const void* v_cache,
                             DevDType cache_dtype, int64_t max_seq, void* out, DevDType out_dtype, void* workspace,
                             size_t workspace_bytes, cudaStream_t stream, AttentionPath path) {
  if (num_tokens < 0 || start < 0 || q_heads < 1 || kv_heads < 1 || q_heads % kv_heads != 0 ||
      max_seq < 1 || start > max_seq - num_tokens || !dev_dtype_ok(q_dtype) || !dev_dtype_ok(cache_dtype) ||
      !dev_dtype_ok(out_dtype) || num_tokens > INT_MAX / q_heads)
    return cudaErrorInvalidValue;
  if (head_dim != 32 && head_dim != 64 && head_dim != 128 && head_dim != 256) return cudaErrorInvalidValue;
  if (path != AttentionPath::kAuto && path != AttentionPath::kSingle && path != AttentionPath::kSplit)
    return cudaErrorInvalidValue;
  if (max_seq > INT64_MAX / (int64_t(kv_heads) * head_dim)) return cudaErrorInvalidValue;
  if (num_tokens == 0) return cudaSuccess;
  if (!q || !k_cache || !v_cache || !out || !ptr_aligned(q, dev_elem_bytes(q_dtype)) ||
      !ptr_aligned(out, dev_elem_bytes(out_dtype)) || !ptr_aligned(k_cache, 16) || !ptr_aligned(v_cache, 16))
    return cudaErrorInvalidValue;

  AttnParams p = {};
  p.q = q;
  p.q_dtype = q_dtype;
  p.start = start;
  p.window = window > 0 ? window : 0;
  p.q_heads = q_heads;
  p.kv_heads = kv_heads;
  p.out = out;
  p.out_dtype = out_dtype;
  // Chunks any query of this call reads: from the first query's lowest key to the last query.
  const int64_t lo_first = p.window > 0 && start - p.window + 1 > 0 ? start - p.window + 1 : 0;
  return launch_attention_with(p, num_tokens, head_dim, lo_first, start + num_tokens - 1, k_cache, v_cache, cache_dtype,
                               workspace, workspace_bytes, stream, path);
}

size_t paged_attention_workspace_bytes(int64_t num_tokens, int q_heads, int head_dim, int64_t max_pos) {
  return max_pos < 0 ? 0 : attention_workspace_bytes(num_tokens, q_heads, head_dim, max_pos + 1);
}

cudaError_t launch_paged_kv_append(const void* k, const void* v, DevDType act_dtype, int64_t num_tokens, int kv_heads,
                                   int head_dim, const int32_t* positions, const int32_t* seq_of, const int32_t* tables,
                                   int max_blocks, int block_size, void* k_pool, void* v_pool, DevDType pool_dtype,
                                   cudaStream_t stream) {
  if (num_tokens < 0 || kv_heads < 1 || head_dim < 1 || max_blocks < 1 || block_size < 1 || !dev_dtype_ok(act_dtype) ||
      !dev_dtype_ok(pool_dtype))
    return cudaErrorInvalidValue;
  if (num_tokens == 0) return cudaSuccess;
  if (!k || !v || !positions || !seq_of || !tables || !k_pool || !v_pool || !ptr_aligned(k, dev_elem_bytes(act_dtype)) ||
      !ptr_aligned(v, dev_elem_bytes(act_dtype)) || !ptr_aligned(k_pool, dev_elem_bytes(pool_dtype)) ||
      !ptr_aligned(v_pool, dev_elem_bytes(pool_dtype)))
    return cudaErrorInvalidValue;
  const int64_t row = int64_t(kv_heads) * head_dim, count = num_tokens * row;
  const int64_t want = (count + kAppendThreads - 1) / kAppendThreads;
  const dim3 grid(unsigned(want < int64_t(kMaxGrid) ? want : int64_t(kMaxGrid)));
  return MOE_DTYPE_SWITCH(act_dtype, TIn, [&] {
    return MOE_DTYPE_SWITCH(pool_dtype, TC, [&] {
      return moe_launch(paged_kv_append_kernel<TIn, TC>, grid, dim3(kAppendThreads), 0, stream, static_cast<const TIn*>(k),
                        static_cast<const TIn*>(v), count, row, positions, seq_of, tables, max_blocks, block_size,
                        static_cast<TC*>(k_pool), static_cast<TC*>(v_pool));
    });
  });
}

cudaError_t launch_paged_attention(const void* q, DevDType q_dtype, int64_t num_tokens, const int32_t* positions,
                                   const int32_t* seq_of, const int32_t* tables, int max_blocks, int block_size,
                                   int64_t max_pos, int q_heads, int kv_heads, int head_dim, int64_t window,
                                   const void* k_pool, const void* v_pool, DevDType pool_dtype, void* out,
                                   DevDType out_dtype, void* workspace, size_t workspace_bytes, cudaStream_t stream,
                                   AttentionPath path) {
  if (num_tokens < 0 || q_heads < 1 || kv_heads < 1 || q_heads % kv_heads != 0 || max_blocks < 1 || block_size < 1 ||
      max_pos < 0 || !dev_dtype_ok(q_dtype) || !dev_dtype_ok(pool_dtype) || !dev_dtype_ok(out_dtype) ||
      num_tokens > INT_MAX / q_heads)
    return cudaErrorInvalidValue;
  if (head_dim != 32 && head_dim != 64 && head_dim != 128 && head_dim != 256) return cudaErrorInvalidValue;
  if (path != AttentionPath::kAuto && path != AttentionPath::kSingle && path != AttentionPath::kSplit)
    return cudaErrorInvalidValue;
  if (num_tokens == 0) return cudaSuccess;
  if (!q || !positions || !seq_of || !tables || !k_pool || !v_pool || !out || !ptr_aligned(q, dev_elem_bytes(q_dtype)) ||
      !ptr_aligned(out, dev_elem_bytes(out_dtype)) || !ptr_aligned(k_pool, 16) || !ptr_aligned(v_pool, 16))
    return cudaErrorInvalidValue;
  AttnParams p = {};
  p.q = q;
  p.q_dtype = q_dtype;
  p.window = window > 0 ? window : 0;
  p.q_heads = q_heads;
  p.kv_heads = kv_heads;
  p.out = out;
  p.out_dtype = out_dtype;
  p.positions = positions;
  p.seq_of = seq_of;
  p.tables = tables;
  p.max_blocks = max_blocks;
  p.block_size = block_size;
  // the chunks of every query's keys: 0 .. max_pos (a query outside a chunk leaves its state empty)
  return launch_attention_with(p, num_tokens, head_dim, 0, max_pos, k_pool, v_pool, pool_dtype, workspace,
                               workspace_bytes, stream, path);
}

}  // namespace moe
