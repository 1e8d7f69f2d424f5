// moe-kernels CUDA: GEMV-style kernels over ggml's block formats (moe/quant.h), for the experts'
// grouped GEMM with fused SwiGLU and for the linear layer. CPU twin: native/backends/cpu/quant_experts.cc.
//
// Device layout (quant_repack_row, done once at pack time on the host): every row is 16-byte
// aligned and split so that every block's bytes can be read with 128-bit loads:
//   q8_0  [nb x 32 qs]  [nb x f16 d]          q4_0  [nb x 16 qs]  [nb x f16 d]
//   q4_k  [nb x 144: d, dmin, scales, qs] (ggml's block as is)     q5_k [nb x 176] (as is)
//   q6_k  [nb x 208: ql, qh, scales]  [nb x f16 d]
// then padded to a multiple of 16 bytes.
//
// Kernels: one warp per output row, 4 warps per block. A lane takes units of 32 values (unit u:
// lanes stride over the row), dequantises a unit into registers from uint4 loads (dequant_unit
// below: d*sc*q - dmin*m as the format defines it), and multiplies it with up to kTok activation
// rows (f32, float4 loads); then an xor butterfly sums the lanes, so results are the same bits on
// every run. GEMM1 computes W1 and W3 rows of one hidden unit together and writes
// h = silu(g) * u; GEMM2 and the linear layer write y (+ bias). Tokens beyond kTok loop, re-reading
// the row from L1/L2: the decode kernel, also correct (not fast) for prefill.
#include "cuda_compat.cuh"
#include "quant_launchers.h"

#include <cuda_fp16.h>

namespace moe {

namespace {

constexpr int kQuantWarps = 4;                    // warps (output rows) per block
constexpr int kQuantThreads = kQuantWarps * 32;
constexpr int kTok = 4;                           // activation rows per pass

// Bytes of a block's body (read with uint4 loads) and of its f16 tail scale (0: none).
__host__ __device__ constexpr int body_bytes(int fmt) {
  return fmt == int(DType::kQ8_0) ? 32 : fmt == int(DType::kQ4_0) ? 16 : fmt == int(DType::kQ4_K) ? 144
       : fmt == int(DType::kQ5_K) ? 176 : 208;
}
__host__ __device__ constexpr int tail_bytes(int fmt) {
  return fmt == int(DType::kQ4_K) || fmt == int(DType::kQ5_K) ? 0 : 2;
}
__host__ __device__ constexpr int block_values(int fmt) { return fmt == int(DType::kQ8_0) || fmt == int(DType::kQ4_0) ? 32 : 256; }

__device__ __forceinline__ float half_bits(uint32_t h) { return __half2float(__ushort_as_half(static_cast<unsigned short>(h))); }

__device__ __forceinline__ void bytes16(const uint8_t* p, uint8_t (&b)[16]) {
  const uint4 v = *reinterpret_cast<const uint4*>(p);
  const uint32_t w[4] = {v.x, v.y, v.z, v.w};
  MOE_UNROLL
  for (int i = 0; i < 16; ++i) b[i] = uint8_t(w[i / 4] >> (8 * (i % 4)));
}

// Byte k (run-time) of a 16-byte load, by selects: no local-memory array.
__device__ __forceinline__ uint32_t byte_at(const uint4& v, int k) {
  const int wi = k >> 2;
  const uint32_t w = wi == 0 ? v.x : wi == 1 ? v.y : wi == 2 ? v.z : v.w;
  return (w >> (8 * (k & 3))) & 0xffu;
}

// The 32 values of unit u of a row (nb blocks, device layout) into w.
template <int kFmt>
__device__ __forceinline__ void dequant_unit(const uint8_t* row, int64_t nb, int64_t u, float (&w)[32]) {
  if constexpr (kFmt == int(DType::kQ8_0) || kFmt == int(DType::kQ4_0)) {
    const float d = half_bits(reinterpret_cast<const uint16_t*>(row + nb * body_bytes(kFmt))[u]);
    uint8_t b[16];
    if constexpr (kFmt == int(DType::kQ8_0)) {
      MOE_UNROLL
      for (int h = 0; h < 2; ++h) {
        bytes16(row + u * 32 + 16 * h, b);
        MOE_UNROLL
        for (int i = 0; i < 16; ++i) w[16 * h + i] = float(int8_t(b[i])) * d;
      }
    } else {
      bytes16(row + u * 16, b);
      MOE_UNROLL
      for (int i = 0; i < 16; ++i) {
        w[i] = float(int(b[i] & 15) - 8) * d;
        w[16 + i] = float(int(b[i] >> 4) - 8) * d;
      }
    }
  } else if constexpr (kFmt == int(DType::kQ4_K) || kFmt == int(DType::kQ5_K)) {
    const int64_t blk = u / 8;
    const int i = int(u % 8);
    const uint8_t* B = row + blk * body_bytes(kFmt);
    const uint4 hd = *reinterpret_cast<const uint4*>(B);  // d, dmin, scales[12]
    const float d = half_bits(hd.x & 0xffffu), dmin = half_bits(hd.x >> 16);
    auto sc = [&](int k) { return int(byte_at(hd, 4 + k)); };
    int s, m;
    if (i < 4) {
      s = sc(i) & 63, m = sc(i + 4) & 63;
    } else {
      s = (sc(i + 4) & 0xF) | ((sc(i - 4) >> 6) << 4), m = (sc(i + 4) >> 4) | ((sc(i) >> 6) << 4);
    }
    const float dl = d * float(s), ml = dmin * float(m);
    const int qs_off = kFmt == int(DType::kQ5_K) ? 48 : 16;
    MOE_UNROLL
    for (int h = 0; h < 2; ++h) {
      uint8_t q[16], qh[16];
      bytes16(B + qs_off + 32 * (i / 2) + 16 * h, q);
      if constexpr (kFmt == int(DType::kQ5_K)) bytes16(B + 16 + 16 * h, qh);
      MOE_UNROLL
      for (int l = 0; l < 16; ++l) {
        int v = (i & 1) ? q[l] >> 4 : q[l] & 15;
        if constexpr (kFmt == int(DType::kQ5_K)) v += ((qh[l] >> i) & 1) << 4;
        w[16 * h + l] = dl * float(v) - ml;
      }
    }
  } else {  // q6_k: unit i of a block = half n, quarter j of it
    const int64_t blk = u / 8;
    const int i = int(u % 8), n = i / 4, j = i % 4;
    const uint8_t* B = row + blk * body_bytes(kFmt);
    const float d = half_bits(reinterpret_cast<const uint16_t*>(row + nb * body_bytes(kFmt))[blk]);
    const uint4 sc = *reinterpret_cast<const uint4*>(B + 192);
    MOE_UNROLL
    for (int h = 0; h < 2; ++h) {
      uint8_t ql[16], qh[16];
      bytes16(B + 64 * n + 32 * (j & 1) + 16 * h, ql);
      bytes16(B + 128 + 32 * n + 16 * h, qh);
      const float s = d * float(int8_t(byte_at(sc, 8 * n + 2 * j + h)));
      MOE_UNROLL
      for (int l = 0; l < 16; ++l) {
        const int lo = j < 2 ? ql[l] & 15 : ql[l] >> 4;
        const int q = (lo | (((qh[l] >> (2 * j)) & 3) << 4)) - 32;
        w[16 * h + l] = s * float(q);
      }
    }
  }
}

// acc[t] += w . x_t[u*32 .. +32) for t < nt
__device__ __forceinline__ void dot_unit(const float (&w)[32], const float* const (&xs)[kTok], int nt, int64_t u, float (&acc)[kTok]) {
  MOE_UNROLL
  for (int t = 0; t < kTok; ++t) {
    if (t >= nt) break;
    const float4* xp = reinterpret_cast<const float4*>(xs[t] + u * 32);
    float s = 0.f;
    MOE_UNROLL
    for (int q = 0; q < 8; ++q) {
      const float4 v = xp[q];
      s += w[4 * q] * v.x + w[4 * q + 1] * v.y + w[4 * q + 2] * v.z + w[4 * q + 3] * v.w;
    }
    acc[t] += s;
  }
}

__device__ __forceinline__ float warp_sum(float v) {
  MOE_UNROLL
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// h[r, j] = silu(W1_e[j] . x[src(r)]) * (W3_e[j] . x[src(r)]) for the rows r of expert e = blockIdx.y.
template <int kFmt>
__global__ void quant_gemm1_kernel(const float* __restrict__ x, const int32_t* __restrict__ sorted_rows,
                                   const int32_t* __restrict__ offsets, const uint8_t* __restrict__ packed,
                                   size_t expert_bytes, size_t row_stride, int64_t d, int64_t f, float* __restrict__ h) {
  const int warp = int(threadIdx.x) / 32, lane = int(threadIdx.x) % 32;
  const int64_t j = int64_t(blockIdx.x) * kQuantWarps + warp;
  const int e = int(blockIdx.y);
  const int64_t r0 = offsets[e], r1 = offsets[e + 1];
  if (j >= f || r0 >= r1) return;  // whole warps: nothing below synchronises the block
  const uint8_t* w1 = packed + size_t(e) * expert_bytes + size_t(2 * j) * row_stride;
  const uint8_t* w3 = w1 + row_stride;
  const int64_t nb = d / block_values(kFmt), units = d / 32;
  for (int64_t rc = r0; rc < r1; rc += kTok) {
    const int nt = int(r1 - rc < kTok ? r1 - rc : kTok);
    const float* xs[kTok];
    MOE_UNROLL
    for (int t = 0; t < kTok; ++t) {
      const int64_t r = rc + (t < nt ? t : 0);
      xs[t] = x + size_t(sorted_rows ? sorted_rows[r] : r) * size_t(d);
    }
    float g[kTok] = {0.f, 0.f, 0.f, 0.f}, up[kTok] = {0.f, 0.f, 0.f, 0.f};
    for (int64_t u = lane; u < units; u += 32) {
      float w[32];
      dequant_unit<kFmt>(w1, nb, u, w);
      dot_unit(w, xs, nt, u, g);
      dequant_unit<kFmt>(w3, nb, u, w);
      dot_unit(w, xs, nt, u, up);
    }
    MOE_UNROLL
    for (int t = 0; t < kTok; ++t) {
      const float gs = warp_sum(g[t]), us = warp_sum(up[t]);
      if (lane == 0 && t < nt) h[size_t(rc + t) * size_t(f) + size_t(j)] = gs / (1.f + expf(-gs)) * us;
    }
  }
}

// y[r, i] = W_e[i] . a[r] (+ bias[i]) for the rows r of group e = blockIdx.y (a: [R, k] f32).
template <int kFmt>
__global__ void quant_gemv_kernel(const float* __restrict__ a, const int32_t* __restrict__ offsets, int64_t rows_if_no_offsets,
                                  const uint8_t* __restrict__ packed, size_t group_bytes, size_t row_stride, int64_t k,
                                  int64_t n, const float* __restrict__ bias, float* __restrict__ y) {
  const int warp = int(threadIdx.x) / 32, lane = int(threadIdx.x) % 32;
  const int64_t i = int64_t(blockIdx.x) * kQuantWarps + warp;
  const int e = int(blockIdx.y);
  const int64_t r0 = offsets ? offsets[e] : 0, r1 = offsets ? offsets[e + 1] : rows_if_no_offsets;
  if (i >= n || r0 >= r1) return;
  const uint8_t* wr = packed + size_t(e) * group_bytes + size_t(i) * row_stride;
  const int64_t nb = k / block_values(kFmt), units = k / 32;
  const float b = bias ? bias[i] : 0.f;
  for (int64_t rc = r0; rc < r1; rc += kTok) {
    const int nt = int(r1 - rc < kTok ? r1 - rc : kTok);
    const float* xs[kTok];
    MOE_UNROLL
    for (int t = 0; t < kTok; ++t) xs[t] = a + size_t(rc + (t < nt ? t : 0)) * size_t(k);
    float acc[kTok] = {0.f, 0.f, 0.f, 0.f};
    for (int64_t u = lane; u < units; u += 32) {
      float w[32];
      dequant_unit<kFmt>(wr, nb, u, w);
      dot_unit(w, xs, nt, u, acc);
    }
    MOE_UNROLL
    for (int t = 0; t < kTok; ++t) {
      const float s = warp_sum(acc[t]);
      if (lane == 0 && t < nt) y[size_t(rc + t) * size_t(n) + size_t(i)] = bias ? s + b : s;
    }
  }
}

bool valid_fmt(DType t) { return is_quant(t); }

// A runtime format onto a compile-time instance.
template <template <int> class Launch, class... Args>
cudaError_t by_format(DType t, Args... args) {
  switch (t) {
    case DType::kQ8_0: return Launch<int(DType::kQ8_0)>::run(args...);
    case DType::kQ4_0: return Launch<int(DType::kQ4_0)>::run(args...);
    case DType::kQ4_K: return Launch<int(DType::kQ4_K)>::run(args...);
    case DType::kQ5_K: return Launch<int(DType::kQ5_K)>::run(args...);
    case DType::kQ6_K: return Launch<int(DType::kQ6_K)>::run(args...);
    default: return cudaErrorInvalidValue;
  }
}

template <int kFmt>
struct Gemm1 {
  static cudaError_t run(dim3 grid, const float* x, const int32_t* sorted_rows, const int32_t* offsets, const uint8_t* packed,
                         size_t expert_bytes, size_t row_stride, int64_t d, int64_t f, float* h, cudaStream_t s) {
    return moe_launch(quant_gemm1_kernel<kFmt>, grid, dim3(kQuantThreads), 0, s, x, sorted_rows, offsets, packed, expert_bytes,
                      row_stride, d, f, h);
  }
};
template <int kFmt>
struct Gemv {
  static cudaError_t run(dim3 grid, const float* a, const int32_t* offsets, int64_t rows, const uint8_t* packed, size_t group_bytes,
                         size_t row_stride, int64_t k, int64_t n, const float* bias, float* y, cudaStream_t s) {
    return moe_launch(quant_gemv_kernel<kFmt>, grid, dim3(kQuantThreads), 0, s, a, offsets, rows, packed, group_bytes, row_stride,
                      k, n, bias, y);
  }
};

}  // namespace

// ---- host: the device layout ----------------------------------------------------------------------
size_t quant_device_row_bytes(DType t, int64_t n) {
  if (!valid_fmt(t) || n % block_values(int(t))) return 0;
  const size_t nb = size_t(n / block_values(int(t)));
  const size_t raw = nb * size_t(body_bytes(int(t)) + tail_bytes(int(t)));
  return (raw + 15) / 16 * 16;
}

void quant_repack_row(DType t, const void* src, int64_t n, void* dst) {
  const int fmt = int(t);
  const int64_t nb = n / block_values(fmt);
  const size_t bb = dtype_size(t), body = size_t(body_bytes(fmt));
  const uint8_t* s = static_cast<const uint8_t*>(src);
  uint8_t* o = static_cast<uint8_t*>(dst);
  std::memset(o, 0, quant_device_row_bytes(t, n));
  for (int64_t b = 0; b < nb; ++b) {
    const uint8_t* blk = s + size_t(b) * bb;
    if (t == DType::kQ8_0 || t == DType::kQ4_0) {  // d first in ggml's block
      std::memcpy(o + size_t(b) * body, blk + 2, body);
      std::memcpy(o + size_t(nb) * body + size_t(b) * 2, blk, 2);
    } else if (t == DType::kQ6_K) {  // d last
      std::memcpy(o + size_t(b) * body, blk, body);
      std::memcpy(o + size_t(nb) * body + size_t(b) * 2, blk + body, 2);
    } else {
      std::memcpy(o + size_t(b) * body, blk, body);
    }
  }
}

// ---- launchers ---------------------------------------------------------------------------------------
cudaError_t launch_quant_gemm1(const float* x, const int32_t* sorted_rows, const int32_t* offsets, int num_groups,
                               const void* packed, size_t group_bytes, size_t row_stride, DType t, int64_t d, int64_t f,
                               float* h, cudaStream_t stream) {
  if (!valid_fmt(t) || !x || !offsets || !packed || !h || num_groups < 1 || num_groups > 65535 || d % block_values(int(t)) ||
      f < 1 || row_stride % 16 || reinterpret_cast<uintptr_t>(packed) % 16)
    return cudaErrorInvalidValue;
  const dim3 grid(unsigned((f + kQuantWarps - 1) / kQuantWarps), unsigned(num_groups));
  return by_format<Gemm1>(t, grid, x, sorted_rows, offsets, static_cast<const uint8_t*>(packed), group_bytes, row_stride, d, f, h,
                          stream);
}

cudaError_t launch_quant_gemv(const float* a, const int32_t* offsets, int num_groups, int64_t rows, const void* packed,
                              size_t group_bytes, size_t row_stride, DType t, int64_t k, int64_t n, const float* bias,
                              float* y, cudaStream_t stream) {
  if (!valid_fmt(t) || !a || !packed || !y || num_groups < 1 || num_groups > 65535 || k % block_values(int(t)) || n < 1 ||
      row_stride % 16 || reinterpret_cast<uintptr_t>(packed) % 16 || (!offsets && num_groups != 1))
    return cudaErrorInvalidValue;
  if (!offsets && rows == 0) return cudaSuccess;
  const dim3 grid(unsigned((n + kQuantWarps - 1) / kQuantWarps), unsigned(num_groups));
  return by_format<Gemv>(t, grid, a, offsets, rows, static_cast<const uint8_t*>(packed), group_bytes, row_stride, k, n, bias, y,
                         stream);
}

}  // namespace moe
