// moe-kernels CUDA: the element-wise and row-wise ops of a Mixtral decoder around attention and the
// MoE block (declarations and exact semantics: decoder_launchers.h):
//
//   embedding_kernel<TIn, TOut, kVec>   out[t] = table[ids[t]] (zeros for an id out of range); one
//                                       block per token, 4-element vectors when aligned
//   first_bad_id_kernel                 one block: the smallest t with a bad id, or -1
//   rms_norm_kernel<TA, TO, kAdd, kVec> one block per row: (kAdd: sum = a + b, stored) sum of squares
//                                       in f32, a fixed-order block reduction, y = x * r * w
//   residual_add_kernel<T, kVec>        out = a + b, grid-stride
//   bias_add_kernel<TO>                 out[r, c] = x[r, c] + bias[c] (a linear's bias), grid-stride
//   cast_kernel<TI, TO>                 out = in converted (round to nearest even), grid-stride
//   rope_kernel<T>                      one thread per (token, frequency): sincosf once, applied to
//                                       every q and k head of the token, in place
//
// Deterministic: every value is one thread's computation or a reduction in a fixed order (lane
// partials strided over d, an xor butterfly, warp totals summed in warp order), no atomics on floats.
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
constexpr int kEmbedThreads = 128;
constexpr int kBadIdThreads = 256;
constexpr int kNormThreads = 256;
constexpr int kAddThreads = 256;
constexpr int kRopeThreads = 128;
constexpr unsigned kMaxGrid = 65535;  // grid-stride loops beyond this many blocks
constexpr int kVec4 = 4;

unsigned grid_for(int64_t work, int threads) {
  const int64_t want = (work + threads - 1) / threads;
  return unsigned(want < int64_t(kMaxGrid) ? want : int64_t(kMaxGrid));
}

// ---- embedding ---------------------------------------------------------------------------------------

template <typename TIn, typename TOut, int kVec>
__global__ void __launch_bounds__(kEmbedThreads)
    embedding_kernel(const TIn* __restrict__ table,  // [vocab, d]
                     int64_t vocab, int64_t d,
                     const int32_t* __restrict__ ids,  // [T]
                     TOut* __restrict__ out) {         // [T, d]
  const int64_t t = blockIdx.x;
  const int32_t id = ids[t];
  const bool ok = id >= 0 && id < vocab;
  const TIn* src = table + (ok ? int64_t(id) : 0) * d;
  TOut* dst = out + t * d;
  for (int64_t c = int64_t(threadIdx.x) * kVec; c < d; c += int64_t(kEmbedThreads) * kVec) {
    float v[kVec];
    if (ok) {
      elem::load_n<kVec>(src + c, v);
    } else {
      MOE_UNROLL
      for (int i = 0; i < kVec; ++i) v[i] = 0.f;
    }
    elem::store_n<kVec>(dst + c, v);
  }
}

// The smallest t with ids[t] outside [0, vocab), or -1: per-thread minima, a warp min, warp order.
// 32-bit token indices (launch_embedding checks num_tokens <= INT_MAX, so INT_MAX is never a t): the
// int64 loop and shuffles spilled 56 bytes on sm_120.
__global__ void __launch_bounds__(kBadIdThreads)
    first_bad_id_kernel(const int32_t* __restrict__ ids, int64_t num_tokens, int64_t vocab,
                        int32_t* __restrict__ first_bad) {
  MOE_SHARED(int, warp_min, [kBadIdThreads / kWarp]);
  const int n = int(num_tokens);
  int best = INT_MAX;
  for (int t = int(threadIdx.x); t < n; t += kBadIdThreads) {
    const int32_t id = ids[t];
    if ((id < 0 || id >= vocab) && t < best) best = t;
  }
  MOE_UNROLL
  for (int off = kWarp / 2; off > 0; off >>= 1) best = min(best, __shfl_xor_sync(kFull, best, off));
  if (threadIdx.x % kWarp == 0) warp_min[threadIdx.x / kWarp] = best;
  __syncthreads();
  if (threadIdx.x == 0) {
    for (int w = 1; w < kBadIdThreads / kWarp; ++w) best = min(best, warp_min[w]);
    *first_bad = best == INT_MAX ? -1 : best;
  }
}

// ---- RMSNorm (+ residual add) -------------------------------------------------------------------------

// Sum of v over the block (kNormThreads), the same order on every run: butterfly in each warp, then
// the warp totals in warp order. Every thread gets the total. One use per kernel (no reuse of shared).
__device__ __forceinline__ float block_sum(float v, float* warp_sums) {
  MOE_UNROLL
  for (int off = kWarp / 2; off > 0; off >>= 1) v += __shfl_xor_sync(kFull, v, off);
  if (threadIdx.x % kWarp == 0) warp_sums[threadIdx.x / kWarp] = v;
  __syncthreads();
  float total = 0.f;
  MOE_UNROLL
  for (int w = 0; w < kNormThreads / kWarp; ++w) total += warp_sums[w];
  return total;
}

// One block per row. kAdd: x = a + b rounded to TA, written to sum_out (which may alias a or b: each
// element is read and written by the same thread); else x = a. y = (x * r) * w, r = 1 / sqrtf(mean
// of x^2 + eps) (IEEE sqrt and division, the same bits as a CPU's).
template <typename TA, typename TO, bool kAdd, int kVec>
__global__ void __launch_bounds__(kNormThreads)
    rms_norm_kernel(const TA* a, const TA* b,  // [T, d]
                    const void* __restrict__ w, DevDType w_dtype,  // [d]
                    int64_t d, float eps, TA* sum_out,   // [T, d] (kAdd)
                    TO* __restrict__ y) {                // [T, d]
  MOE_SHARED(float, warp_sums, [kNormThreads / kWarp]);
  const int64_t row = int64_t(blockIdx.x) * d;
  const TA* x = kAdd ? sum_out + row : a + row;
  float sumsq = 0.f;
  for (int64_t c = int64_t(threadIdx.x) * kVec; c < d; c += int64_t(kNormThreads) * kVec) {
    float v[kVec];
    elem::load_n<kVec>(a + row + c, v);
    if constexpr (kAdd) {
      float u[kVec];
      elem::load_n<kVec>(b + row + c, u);
      MOE_UNROLL
      for (int i = 0; i < kVec; ++i) v[i] = elem::to_f32(elem::from_f32<TA>(v[i] + u[i]));
      elem::store_n<kVec>(sum_out + row + c, v);
    }
    MOE_UNROLL
    for (int i = 0; i < kVec; ++i) sumsq = fmaf(v[i], v[i], sumsq);
  }
  const float total = block_sum(sumsq, warp_sums);
  const float r = 1.f / sqrtf(total / float(d) + eps);
  for (int64_t c = int64_t(threadIdx.x) * kVec; c < d; c += int64_t(kNormThreads) * kVec) {
    float v[kVec];
    elem::load_n<kVec>(x + c, v);  // kAdd: this thread's own stores above
    MOE_UNROLL
    for (int i = 0; i < kVec; ++i) v[i] = v[i] * r * elem::load_dyn(w, w_dtype, c + i);
    elem::store_n<kVec>(y + row + c, v);
  }
}

template <typename T, int kVec>
__global__ void __launch_bounds__(kAddThreads)
    residual_add_kernel(const T* a, const T* b, T* out, int64_t groups) {  // groups of kVec elements
  for (int64_t g = int64_t(blockIdx.x) * kAddThreads + threadIdx.x; g < groups;
       g += int64_t(gridDim.x) * kAddThreads) {
    float u[kVec], v[kVec];
    elem::load_n<kVec>(a + g * kVec, u);
    elem::load_n<kVec>(b + g * kVec, v);
    MOE_UNROLL
    for (int i = 0; i < kVec; ++i) u[i] += v[i];
    elem::store_n<kVec>(out + g * kVec, u);
  }
}

template <typename TO>
__global__ void __launch_bounds__(kAddThreads)
    bias_add_kernel(const float* x, const float* __restrict__ bias, int64_t n, int64_t cols, TO* out) {
  for (int64_t i = int64_t(blockIdx.x) * kAddThreads + threadIdx.x; i < n; i += int64_t(gridDim.x) * kAddThreads)
    out[i] = elem::from_f32<TO>(__fadd_rn(x[i], bias[i % cols]));
}

template <typename TI, typename TO>
__global__ void __launch_bounds__(kAddThreads) cast_kernel(const TI* in, int64_t n, TO* out) {
  for (int64_t i = int64_t(blockIdx.x) * kAddThreads + threadIdx.x; i < n; i += int64_t(gridDim.x) * kAddThreads)
    out[i] = elem::from_f32<TO>(elem::to_f32(in[i]));
}

// ---- RoPE ------------------------------------------------------------------------------------------

struct RopeFreqs {
  float inv_freq[kRopeMaxHeadDim / 2];  // by value in the kernel parameters (512 bytes)
};

template <typename T>
__global__ void __launch_bounds__(kRopeThreads)
    rope_kernel(T* q, T* k, int64_t num_tokens, int q_heads, int kv_heads, int head_dim,
                const int32_t* __restrict__ positions, RopeFreqs freqs) {
  const int half = head_dim / 2;
  const int64_t total = num_tokens * half;
  for (int64_t idx = int64_t(blockIdx.x) * kRopeThreads + threadIdx.x; idx < total;
       idx += int64_t(gridDim.x) * kRopeThreads) {
    const int64_t t = idx / half;
    const int i = int(idx - t * half);
    const float angle = float(positions[t]) * freqs.inv_freq[i];
    float s, c;
    sincosf(angle, &s, &c);
    for (int h = 0; h < q_heads + kv_heads; ++h) {
      T* v = h < q_heads ? q + (t * q_heads + h) * head_dim : k + (t * kv_heads + (h - q_heads)) * head_dim;
      const float x1 = elem::to_f32(v[i]), x2 = elem::to_f32(v[i + half]);
      v[i] = elem::from_f32<T>(x1 * c - x2 * s);
      v[i + half] = elem::from_f32<T>(x2 * c + x1 * s);
    }
  }
}

// ---- host side -------------------------------------------------------------------------------------

template <typename TA, typename TO, bool kAdd>
cudaError_t launch_norm_typed(const void* a, const void* b, const void* w, DevDType w_dtype, int64_t rows,
                              int64_t d, float eps, void* sum_out, void* y, cudaStream_t stream) {
  const TA* at = static_cast<const TA*>(a);
  const TA* bt = static_cast<const TA*>(b);
  TA* st = static_cast<TA*>(sum_out);
  TO* yt = static_cast<TO*>(y);
  const bool vec = d % kVec4 == 0 && ptr_aligned(a, kVec4 * sizeof(TA)) && ptr_aligned(y, kVec4 * sizeof(TO)) &&
                   (!kAdd || (ptr_aligned(b, kVec4 * sizeof(TA)) && ptr_aligned(sum_out, kVec4 * sizeof(TA))));
  if (vec)
    return moe_launch(rms_norm_kernel<TA, TO, kAdd, kVec4>, dim3(unsigned(rows)), dim3(kNormThreads), 0, stream, at,
                      bt, w, w_dtype, d, eps, st, yt);
  return moe_launch(rms_norm_kernel<TA, TO, kAdd, 1>, dim3(unsigned(rows)), dim3(kNormThreads), 0, stream, at, bt,
                    w, w_dtype, d, eps, st, yt);
}

template <bool kAdd>
cudaError_t launch_norm(const void* a, const void* b, DevDType act_dtype, const void* w, DevDType w_dtype,
                        int64_t rows, int64_t d, float eps, void* sum_out, void* y, DevDType y_dtype,
                        cudaStream_t stream) {
  if (rows < 0 || d < 1 || !(eps >= 0.f) || rows > INT_MAX || !dev_dtype_ok(act_dtype) || !dev_dtype_ok(w_dtype) ||
      !dev_dtype_ok(y_dtype))
    return cudaErrorInvalidValue;
  if (rows == 0) return cudaSuccess;
  if (!a || !w || !y || (kAdd && (!b || !sum_out))) return cudaErrorInvalidValue;
  if (!ptr_aligned(a, dev_elem_bytes(act_dtype)) || !ptr_aligned(w, dev_elem_bytes(w_dtype)) ||
      !ptr_aligned(y, dev_elem_bytes(y_dtype)) ||
      (kAdd && (!ptr_aligned(b, dev_elem_bytes(act_dtype)) || !ptr_aligned(sum_out, dev_elem_bytes(act_dtype)))))
    return cudaErrorInvalidValue;
  return MOE_DTYPE_SWITCH(act_dtype, TA, [&] {
    return MOE_DTYPE_SWITCH(y_dtype, TO, [&] {
      return launch_norm_typed<TA, TO, kAdd>(a, b, w, w_dtype, rows, d, eps, sum_out, y, stream);
    });
  });
}

}  // namespace

cudaError_t launch_embedding(const void* table, DevDType table_dtype, int64_t vocab, int64_t d, const int32_t* ids,
                             int64_t num_tokens, void* out, DevDType out_dtype, int32_t* first_bad_index,
                             cudaStream_t stream) {
  if (num_tokens < 0 || vocab < 1 || d < 1 || num_tokens > INT_MAX || !dev_dtype_ok(table_dtype) ||
      !dev_dtype_ok(out_dtype))
    return cudaErrorInvalidValue;
  if (num_tokens > 0 && (!table || !ids || !out || !ptr_aligned(table, dev_elem_bytes(table_dtype)) ||
                         !ptr_aligned(out, dev_elem_bytes(out_dtype))))
    return cudaErrorInvalidValue;
  if (first_bad_index) {
    const cudaError_t err = moe_launch(first_bad_id_kernel, dim3(1), dim3(kBadIdThreads), 0, stream, ids,
                                       num_tokens, vocab, first_bad_index);
    if (err != cudaSuccess) return err;
  }
  if (num_tokens == 0) return cudaSuccess;
  return MOE_DTYPE_SWITCH(table_dtype, TIn, [&] {
    return MOE_DTYPE_SWITCH(out_dtype, TOut, [&] {
      const TIn* src = static_cast<const TIn*>(table);
      TOut* dst = static_cast<TOut*>(out);
      if (d % kVec4 == 0 && ptr_aligned(table, kVec4 * sizeof(TIn)) && ptr_aligned(out, kVec4 * sizeof(TOut)))
        return moe_launch(embedding_kernel<TIn, TOut, kVec4>, dim3(unsigned(num_tokens)), dim3(kEmbedThreads), 0,
                          stream, src, vocab, d, ids, dst);
      return moe_launch(embedding_kernel<TIn, TOut, 1>, dim3(unsigned(num_tokens)), dim3(kEmbedThreads), 0, stream,
                        src, vocab, d, ids, dst);
    });
  });
}

cudaError_t launch_rms_norm(const void* x, DevDType x_dtype, const void* w, DevDType w_dtype, int64_t num_tokens,
                            int64_t d, float eps, void* y, DevDType y_dtype, cudaStream_t stream) {
  return launch_norm<false>(x, nullptr, x_dtype, w, w_dtype, num_tokens, d, eps, nullptr, y, y_dtype, stream);
}

cudaError_t launch_add_rms_norm(const void* a, const void* b, DevDType act_dtype, const void* w, DevDType w_dtype,
                                int64_t num_tokens, int64_t d, float eps, void* sum_out, void* y, DevDType y_dtype,
                                cudaStream_t stream) {
  return launch_norm<true>(a, b, act_dtype, w, w_dtype, num_tokens, d, eps, sum_out, y, y_dtype, stream);
}

cudaError_t launch_residual_add(const void* a, const void* b, void* out, DevDType dtype, int64_t n,
                                cudaStream_t stream) {
  if (n < 0 || !dev_dtype_ok(dtype)) return cudaErrorInvalidValue;
  if (n == 0) return cudaSuccess;
  const size_t es = dev_elem_bytes(dtype);
  if (!a || !b || !out || !ptr_aligned(a, es) || !ptr_aligned(b, es) || !ptr_aligned(out, es))
    return cudaErrorInvalidValue;
  return MOE_DTYPE_SWITCH(dtype, T, [&] {
    const T* at = static_cast<const T*>(a);
    const T* bt = static_cast<const T*>(b);
    T* ot = static_cast<T*>(out);
    const size_t v = kVec4 * sizeof(T);
    if (n % kVec4 == 0 && ptr_aligned(a, v) && ptr_aligned(b, v) && ptr_aligned(out, v))
      return moe_launch(residual_add_kernel<T, kVec4>, dim3(grid_for(n / kVec4, kAddThreads)), dim3(kAddThreads), 0,
                        stream, at, bt, ot, n / kVec4);
    return moe_launch(residual_add_kernel<T, 1>, dim3(grid_for(n, kAddThreads)), dim3(kAddThreads), 0, stream, at, bt,
                      ot, n);
  });
}

cudaError_t launch_bias_add(const float* x, const float* bias, int64_t rows, int64_t cols, void* out, DevDType out_dtype,
                            cudaStream_t stream) {
  if (rows < 0 || cols < 0 || !dev_dtype_ok(out_dtype) || (cols > 0 && rows > INT64_MAX / cols)) return cudaErrorInvalidValue;
  const int64_t n = rows * cols;
  if (n == 0) return cudaSuccess;
  if (!x || !bias || !out || !ptr_aligned(x, 4) || !ptr_aligned(bias, 4) || !ptr_aligned(out, dev_elem_bytes(out_dtype)))
    return cudaErrorInvalidValue;
  return MOE_DTYPE_SWITCH(out_dtype, T, [&] {
    return moe_launch(bias_add_kernel<T>, dim3(grid_for(n, kAddThreads)), dim3(kAddThreads), 0, stream, x, bias, n, cols,
                      static_cast<T*>(out));
  });
}

cudaError_t launch_cast(const void* in, DevDType in_dtype, void* out, DevDType out_dtype, int64_t n, cudaStream_t stream) {
  if (n < 0 || !dev_dtype_ok(in_dtype) || !dev_dtype_ok(out_dtype)) return cudaErrorInvalidValue;
  if (n == 0) return cudaSuccess;
  if (!in || !out || !ptr_aligned(in, dev_elem_bytes(in_dtype)) || !ptr_aligned(out, dev_elem_bytes(out_dtype)))
    return cudaErrorInvalidValue;
  return MOE_DTYPE_SWITCH(in_dtype, TI, [&] {
    return MOE_DTYPE_SWITCH(out_dtype, TO, [&] {
      return moe_launch(cast_kernel<TI, TO>, dim3(grid_for(n, kAddThreads)), dim3(kAddThreads), 0, stream,
                        static_cast<const TI*>(in), n, static_cast<TO*>(out));
    });
  });
}

void rope_inv_freq(int head_dim, float theta, float* inv_freq) {
  for (int i = 0; i < head_dim / 2; ++i)
    inv_freq[i] = 1.0f / powf(theta, float(2 * i) / float(head_dim));
}

cudaError_t launch_rope(void* q, void* k, DevDType dtype, int64_t num_tokens, int q_heads, int kv_heads,
                        int head_dim, const int32_t* positions, float theta, cudaStream_t stream) {
  if (num_tokens < 0 || q_heads < 0 || kv_heads < 0 || head_dim < 2 || head_dim % 2 != 0 ||
      head_dim > kRopeMaxHeadDim || !(theta > 0.f) || !dev_dtype_ok(dtype))
    return cudaErrorInvalidValue;
  if (num_tokens == 0 || q_heads + kv_heads == 0) return cudaSuccess;
  const size_t es = dev_elem_bytes(dtype);
  if (!positions || (q_heads > 0 && (!q || !ptr_aligned(q, es))) || (kv_heads > 0 && (!k || !ptr_aligned(k, es))))
    return cudaErrorInvalidValue;
  if (num_tokens > INT64_MAX / (int64_t(q_heads + kv_heads) * head_dim)) return cudaErrorInvalidValue;
  RopeFreqs freqs = {};
  rope_inv_freq(head_dim, theta, freqs.inv_freq);
  return MOE_DTYPE_SWITCH(dtype, T, [&] {
    return moe_launch(rope_kernel<T>, dim3(grid_for(num_tokens * (head_dim / 2), kRopeThreads)), dim3(kRopeThreads),
                      0, stream, static_cast<T*>(q), static_cast<T*>(k), num_tokens, q_heads, kv_heads, head_dim,
                      positions, freqs);
  });
}

}  // namespace moe
