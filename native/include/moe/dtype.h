// moe-kernels: element types and scalar conversions shared by every backend.
// 16-bit floats travel as raw uint16 bits; conversions round to nearest even, as the hardware does.
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstring>

namespace moe {

// f32, f16, bf16 and i32 are element types. The quantised types (moe/quant.h) are ggml's block
// formats: a row of a matrix is a sequence of blocks of quant_block_elems() values stored in
// quant_block_bytes() bytes, so a [rows, cols] quantised tensor needs cols to be a multiple of the
// block and holds rows * cols / block_elems * block_bytes bytes.
enum class DType : int { kF32 = 0, kF16 = 1, kBF16 = 2, kI32 = 3, kQ8_0 = 4, kQ4_0 = 5, kQ4_K = 6, kQ5_K = 7, kQ6_K = 8 };
constexpr int kNumDTypes = 9;

inline bool is_quant(DType t) { return int(t) >= int(DType::kQ8_0) && int(t) <= int(DType::kQ6_K); }
// Values per block, and bytes per block, of a quantised type (1 and the element size otherwise).
inline int64_t quant_block_elems(DType t) {
  return t == DType::kQ8_0 || t == DType::kQ4_0 ? 32 : is_quant(t) ? 256 : 1;
}
inline size_t dtype_size(DType t) {
  switch (t) {
    case DType::kF16: case DType::kBF16: return 2;
    case DType::kF32: case DType::kI32: return 4;
    case DType::kQ8_0: return 34;   // f16 d, int8 qs[32]
    case DType::kQ4_0: return 18;   // f16 d, uint8 qs[16]
    case DType::kQ4_K: return 144;  // f16 d, f16 dmin, scales[12], qs[128]
    case DType::kQ5_K: return 176;  // f16 d, f16 dmin, scales[12], qh[32], qs[128]
    case DType::kQ6_K: return 210;  // ql[128], qh[64], int8 scales[16], f16 d
  }
  return 4;
}
inline size_t quant_block_bytes(DType t) { return dtype_size(t); }
// Bytes of `n` consecutive values of a row (n a multiple of the block for quantised types).
inline size_t row_bytes(DType t, int64_t n) { return size_t(n / quant_block_elems(t)) * dtype_size(t); }
inline const char* dtype_name(DType t) {
  switch (t) {
    case DType::kF32: return "float32";
    case DType::kF16: return "float16";
    case DType::kBF16: return "bfloat16";
    case DType::kI32: return "int32";
    case DType::kQ8_0: return "q8_0";
    case DType::kQ4_0: return "q4_0";
    case DType::kQ4_K: return "q4_k";
    case DType::kQ5_K: return "q5_k";
    case DType::kQ6_K: return "q6_k";
  }
  return "?";
}
inline bool is_float(DType t) { return t == DType::kF32 || t == DType::kF16 || t == DType::kBF16; }

inline float bits_to_f32(uint32_t u) { float f; std::memcpy(&f, &u, 4); return f; }
inline uint32_t f32_to_bits(float f) { uint32_t u; std::memcpy(&u, &f, 4); return u; }

inline float bf16_to_f32(uint16_t h) { return bits_to_f32(uint32_t(h) << 16); }
inline uint16_t f32_to_bf16(float f) {
  uint32_t u = f32_to_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 0x40);  // quiet NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return uint16_t(u >> 16);
}

inline float f16_to_f32(uint16_t h) {
  uint32_t sign = uint32_t(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1fu, man = h & 0x3ffu;
  if (exp == 0) {
    if (man == 0) return bits_to_f32(sign);
    // subnormal: value = man * 2^-24
    float v = float(man) * 5.9604644775390625e-08f;
    return sign ? -v : v;
  }
  if (exp == 31) return bits_to_f32(sign | 0x7f800000u | (man << 13));
  return bits_to_f32(sign | ((exp + 112) << 23) | (man << 13));
}
inline uint16_t f32_to_f16(float f) {
  uint32_t u = f32_to_bits(f);
  uint16_t sign = uint16_t((u >> 16) & 0x8000u);
  uint32_t a = u & 0x7fffffffu;
  if (a > 0x7f800000u) return uint16_t(sign | 0x7e00u);  // NaN
  if (a >= 0x477ff000u) return uint16_t(sign | 0x7c00u);  // overflow (>= 65520 rounds to inf)
  if (a < 0x38800000u) {                                 // subnormal or zero in f16
    // round(a_value / 2^-24) with ties to even, computed exactly in float
    float v = bits_to_f32(a) * 16777216.0f;  // exact scaling by 2^24
    // nearbyint with ties-to-even on the default rounding mode
    float r = v + 12582912.0f - 12582912.0f;  // 1.5*2^23 trick (v < 1024 here)
    return uint16_t(sign | uint16_t(r));
  }
  uint32_t e = (a >> 23) - 112, m = a & 0x7fffffu;
  uint32_t h = (e << 10) | (m >> 13);
  uint32_t rest = m & 0x1fffu;
  if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) h++;
  return uint16_t(sign | h);
}

// Reads element i of a float tensor of type t as f32.
inline float load_as_f32(const void* p, DType t, size_t i) {
  switch (t) {
    case DType::kF32: return static_cast<const float*>(p)[i];
    case DType::kF16: return f16_to_f32(static_cast<const uint16_t*>(p)[i]);
    case DType::kBF16: return bf16_to_f32(static_cast<const uint16_t*>(p)[i]);
    default: return 0.f;
  }
}
inline void store_from_f32(void* p, DType t, size_t i, float v) {
  switch (t) {
    case DType::kF32: static_cast<float*>(p)[i] = v; break;
    case DType::kF16: static_cast<uint16_t*>(p)[i] = f32_to_f16(v); break;
    case DType::kBF16: static_cast<uint16_t*>(p)[i] = f32_to_bf16(v); break;
    default: break;
  }
}

}  // namespace moe
