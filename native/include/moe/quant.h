// moe-kernels: ggml's block formats (the bytes of llama.cpp's GGUF files), declared once for every
// backend, with the reference dequantisation that defines each format's values.
//
//   q8_0   32 values in 34 bytes:  d (f16), qs[32] int8                      x = d * q
//   q4_0   32 values in 18 bytes:  d (f16), qs[16] nibbles (low: 0..15, high: 16..31)
//                                                                          x = d * (q - 8)
//   q4_k  256 values in 144 bytes: d, dmin (f16), scales[12] (eight 6-bit scales and mins),
//                                   qs[128] nibbles                          x = d*sc * q - dmin*m
//   q5_k  256 values in 176 bytes: as q4_k plus qh[32], the fifth bit of each value
//   q6_k  256 values in 210 bytes: ql[128] low nibbles, qh[64] high 2 bits, scales[16] int8, d (f16)
//                                                                          x = d*sc * (q - 32)
//
// In the k-quants a super-block of 256 is eight sub-blocks of 32 (q4_k, q5_k) or sixteen of 16
// (q6_k). Within each 64 values of q4_k/q5_k, the first 32 are the low nibbles of qs[0..31] and
// the next 32 their high nibbles; q6_k works in halves of 128 (four runs of 32 from ql[0..63] low/
// high nibbles and qh[0..31]'s four 2-bit fields). The sub-block scale/min j of q4_k/q5_k is
// (j < 4) sc = scales[j] & 63, m = scales[j+4] & 63; (j >= 4) sc = (scales[j+4] & 15) |
// (scales[j-4] >> 6) << 4, m = (scales[j+4] >> 4) | (scales[j] >> 6) << 4.
//
// The values are computed in f32 exactly as ggml's reference C does, one rounding per operation in
// the order written (no fused multiply-add): q4_k/q5_k (d*sc) * q - (dmin*m); q6_k (d*sc) * q;
// q8_0/q4_0 q * d. dequantize_rows() gives those bits; kernels may differ by rounding only.
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstring>

#include "moe/dtype.h"
#include "moe/status.h"

namespace moe {
namespace quant {

constexpr int kQK0 = 32;   // q8_0, q4_0
constexpr int kQKK = 256;  // k-quants
constexpr int kKScaleBytes = 12;

#pragma pack(push, 1)
struct BlockQ8_0 { uint16_t d; int8_t qs[kQK0]; };
struct BlockQ4_0 { uint16_t d; uint8_t qs[kQK0 / 2]; };
struct BlockQ4_K { uint16_t d, dmin; uint8_t scales[kKScaleBytes]; uint8_t qs[kQKK / 2]; };
struct BlockQ5_K { uint16_t d, dmin; uint8_t scales[kKScaleBytes]; uint8_t qh[kQKK / 8]; uint8_t qs[kQKK / 2]; };
struct BlockQ6_K { uint8_t ql[kQKK / 2]; uint8_t qh[kQKK / 4]; int8_t scales[kQKK / 16]; uint16_t d; };
#pragma pack(pop)
static_assert(sizeof(BlockQ8_0) == 34 && sizeof(BlockQ4_0) == 18, "ggml block sizes");
static_assert(sizeof(BlockQ4_K) == 144 && sizeof(BlockQ5_K) == 176 && sizeof(BlockQ6_K) == 210, "ggml block sizes");

// Scale and min of sub-block j (0..7) of a q4_k / q5_k super-block.
inline void scale_min_k4(int j, const uint8_t* q, uint8_t* sc, uint8_t* m) {
  if (j < 4) {
    *sc = q[j] & 63;
    *m = q[j + 4] & 63;
  } else {
    *sc = uint8_t((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4));
    *m = uint8_t((q[j + 4] >> 4) | ((q[j] >> 6) << 4));
  }
}

// The reference values of one block (quant_block_elems(t) floats into y). Written for exactness,
// not speed: every product and difference is rounded to f32 on its own.
#if defined(__GNUC__) && !defined(__clang__) && !defined(__CUDACC__)
#pragma GCC push_options
#pragma GCC optimize("fp-contract=off")
#endif
inline void dequantize_block(DType t, const void* blk, float* y) {
  // volatile-free separation of product and sum: each step is stored to an f32 first.
  switch (t) {
    case DType::kQ8_0: {
      const auto* b = static_cast<const BlockQ8_0*>(blk);
      const float d = f16_to_f32(b->d);
      for (int j = 0; j < kQK0; ++j) y[j] = float(b->qs[j]) * d;
      return;
    }
    case DType::kQ4_0: {
      const auto* b = static_cast<const BlockQ4_0*>(blk);
      const float d = f16_to_f32(b->d);
      for (int j = 0; j < kQK0 / 2; ++j) {
        y[j] = float((b->qs[j] & 0x0F) - 8) * d;
        y[j + kQK0 / 2] = float((b->qs[j] >> 4) - 8) * d;
      }
      return;
    }
    case DType::kQ4_K:
    case DType::kQ5_K: {
      const bool five = t == DType::kQ5_K;
      const auto* b4 = static_cast<const BlockQ4_K*>(blk);
      const auto* b5 = static_cast<const BlockQ5_K*>(blk);
      const float d = f16_to_f32(five ? b5->d : b4->d), dmin = f16_to_f32(five ? b5->dmin : b4->dmin);
      const uint8_t* scales = five ? b5->scales : b4->scales;
      const uint8_t* q = five ? b5->qs : b4->qs;
      for (int j = 0; j < kQKK / 64; ++j, q += 32) {
        for (int h = 0; h < 2; ++h) {
          uint8_t sc, m;
          scale_min_k4(2 * j + h, scales, &sc, &m);
          const float dl = d * float(sc), ml = dmin * float(m);
          for (int l = 0; l < 32; ++l) {
            int v = h ? q[l] >> 4 : q[l] & 0xF;
            if (five && (b5->qh[l] >> (2 * j + h) & 1)) v += 16;
            const float p = dl * float(v);
            y[64 * j + 32 * h + l] = p - ml;
          }
        }
      }
      return;
    }
    case DType::kQ6_K: {
      const auto* b = static_cast<const BlockQ6_K*>(blk);
      const float d = f16_to_f32(b->d);
      for (int n = 0; n < 2; ++n) {
        const uint8_t* ql = b->ql + 64 * n;
        const uint8_t* qh = b->qh + 32 * n;
        const int8_t* sc = b->scales + 8 * n;
        for (int l = 0; l < 32; ++l) {
          const int is = l / 16;
          const int q1 = ((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32;
          const int q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
          const int q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
          const int q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
          float* yy = y + 128 * n;
          const float s1 = d * float(sc[is + 0]), s2 = d * float(sc[is + 2]);
          const float s3 = d * float(sc[is + 4]), s4 = d * float(sc[is + 6]);
          yy[l + 0] = s1 * float(q1);
          yy[l + 32] = s2 * float(q2);
          yy[l + 64] = s3 * float(q3);
          yy[l + 96] = s4 * float(q4);
        }
      }
      return;
    }
    default:
      return;
  }
}
#if defined(__GNUC__) && !defined(__clang__) && !defined(__CUDACC__)
#pragma GCC pop_options
#endif

// ---- whole tensors (native/backends/cpu/quant_format.cc; threaded on the compute pool) ----------
// Quantised formats the package can make itself (quantize): q8_0, q4_0, q4_k.
inline bool can_quantize(DType t) { return t == DType::kQ8_0 || t == DType::kQ4_0 || t == DType::kQ4_K; }

// src: rows x cols of a float type (f32, f16, bf16); dst: rows * row_bytes(t, cols) bytes.
// cols must be a multiple of quant_block_elems(t). Deterministic (no threads' order in the result).
Status quantize_rows(const void* src, DType src_type, int64_t rows, int64_t cols, DType t, void* dst);
// src: rows x cols of quantised type t; dst: rows x cols of f32, f16 or bf16 (the values of
// dequantize_block, rounded to dst_type).
Status dequantize_rows(const void* src, DType t, int64_t rows, int64_t cols, void* dst, DType dst_type);

}  // namespace quant
}  // namespace moe
