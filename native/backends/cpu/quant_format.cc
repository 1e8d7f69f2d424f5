// moe-kernels: quantize_rows / dequantize_rows of moe/quant.h, the package's own quantisers for
// q8_0, q4_0 and q4_k (llama.cpp's bytes, our search for the scales), and the reference
// dequantisation of every format.
//
// The quantisers minimise the squared error of each block (no importance weights):
//   q8_0  d = amax / 127, rounded to f16 first, then q = round(x / d) (so the stored d is the one used).
//   q4_0  candidate scales mapping the largest-magnitude value to -8, -7.5, ..., or +7 (both signs),
//         each refined by least squares on its assignment; the best after f16 rounding wins.
//   q4_k  per sub-block of 32: (scale, min) searched over several step counts and refined by least
//         squares; the eight scales and mins are then quantised to 6 bits under f16 super-scales,
//         each sub-block tries its neighbouring 6-bit codes, and the values are re-quantised with
//         the scales actually stored.
// Relative RMS error on N(0,1) weights (test/15.quant.test.ts measures it): about 0.0042 (q8_0), 0.094 (q4_0),
// 0.082 (q4_k).
#include <algorithm>
#include <cmath>
#include <vector>

#include "moe/quant.h"
#include "threadpool.h"

namespace moe {
namespace quant {

namespace {

float f16_round(float v) { return f16_to_f32(f32_to_f16(v)); }

int nearest(float v) { return int(std::lrintf(v)); }

void quantize_q8_0(const float* x, BlockQ8_0* b) {
  float amax = 0.f;
  for (int j = 0; j < kQK0; ++j) amax = std::max(amax, std::fabs(x[j]));
  b->d = f32_to_f16(amax / 127.f);
  const float d = f16_to_f32(b->d);
  const float id = d != 0.f ? 1.f / d : 0.f;
  for (int j = 0; j < kQK0; ++j) b->qs[j] = int8_t(std::clamp(nearest(x[j] * id), -127, 127));
}

// SSE of block x with scale d (q = clamp(round(x/d)) + 8 in [0,15]); the q's into q when given.
float q4_0_error(const float* x, float d, uint8_t* q) {
  const float id = d != 0.f ? 1.f / d : 0.f;
  float e = 0.f;
  for (int j = 0; j < kQK0; ++j) {
    const int v = std::clamp(nearest(x[j] * id), -8, 7);
    if (q) q[j] = uint8_t(v + 8);
    const float r = x[j] - float(v) * d;
    e += r * r;
  }
  return e;
}

void quantize_q4_0(const float* x, BlockQ4_0* b) {
  float mx = 0.f;
  for (int j = 0; j < kQK0; ++j)
    if (std::fabs(x[j]) > std::fabs(mx)) mx = x[j];
  float best_d = 0.f, best_e = INFINITY;
  static const float kTargets[] = {-8.f, -7.75f, -7.5f, -7.25f, -7.f, -6.5f, 7.f, 6.5f};
  for (float c : kTargets) {
    float d = f16_round(mx / c);
    float e = q4_0_error(x, d, nullptr);
    if (e < best_e) best_e = e, best_d = d;
    // least squares on this assignment: d = sum x q / sum q^2
    uint8_t q[kQK0];
    q4_0_error(x, d, q);
    float sxq = 0.f, sqq = 0.f;
    for (int j = 0; j < kQK0; ++j) {
      const float v = float(int(q[j]) - 8);
      sxq += x[j] * v, sqq += v * v;
    }
    if (sqq > 0.f) {
      d = f16_round(sxq / sqq);
      e = q4_0_error(x, d, nullptr);
      if (e < best_e) best_e = e, best_d = d;
    }
  }
  b->d = f32_to_f16(best_d);
  uint8_t q[kQK0];
  q4_0_error(x, f16_to_f32(b->d), q);
  for (int j = 0; j < kQK0 / 2; ++j) b->qs[j] = uint8_t(q[j] | (q[j + kQK0 / 2] << 4));
}

// Sub-block of 32 as x ~ s * q - m, q in [0,15], s >= 0, m >= 0: SSE for given (s, m).
float k4_error(const float* x, float s, float m, uint8_t* q) {
  const float is = s > 0.f ? 1.f / s : 0.f;
  float e = 0.f;
  for (int l = 0; l < 32; ++l) {
    const int v = std::clamp(nearest((x[l] + m) * is), 0, 15);
    if (q) q[l] = uint8_t(v);
    const float r = s * float(v) - m - x[l];
    e += r * r;
  }
  return e;
}

// The best (s, m) of a sub-block in floats.
void fit_k4(const float* x, float* s_out, float* m_out) {
  float lo = x[0], hi = x[0];
  for (int l = 1; l < 32; ++l) lo = std::min(lo, x[l]), hi = std::max(hi, x[l]);
  lo = std::min(lo, 0.f);  // the min is stored as a non-negative offset
  if (hi <= lo) {
    *s_out = 0.f, *m_out = -lo;
    return;
  }
  float best_s = (hi - lo) / 15.f, best_m = -lo, best_e = k4_error(x, best_s, best_m, nullptr);
  for (int step = -4; step <= 8; ++step) {
    float s = (hi - lo) / (15.f + 0.25f * float(step)), m = -lo;
    for (int it = 0; it < 3; ++it) {
      uint8_t q[32];
      k4_error(x, s, m, q);
      // least squares of x = s q - m over (s, m), m kept >= 0
      float sq = 0, sqq = 0, sx = 0, sxq = 0;
      for (int l = 0; l < 32; ++l) sq += q[l], sqq += float(q[l]) * q[l], sx += x[l], sxq += x[l] * q[l];
      const float det = 32.f * sqq - sq * sq;
      if (det <= 0.f) break;
      float ns = (32.f * sxq - sq * sx) / det;
      float nm = (sq * ns - sx) / 32.f;
      if (nm < 0.f) {  // the constrained optimum: m = 0
        nm = 0.f;
        ns = sqq > 0.f ? sxq / sqq : 0.f;
      }
      if (ns <= 0.f) break;
      s = ns, m = nm;
    }
    const float e = k4_error(x, s, m, nullptr);
    if (e < best_e) best_e = e, best_s = s, best_m = m;
  }
  *s_out = best_s, *m_out = best_m;
}

void quantize_q4_k(const float* x, BlockQ4_K* b) {
  float s[8], m[8], smax = 0.f, mmax = 0.f;
  for (int j = 0; j < 8; ++j) {
    fit_k4(x + 32 * j, &s[j], &m[j]);
    smax = std::max(smax, s[j]), mmax = std::max(mmax, m[j]);
  }
  b->d = f32_to_f16(smax / 63.f);
  b->dmin = f32_to_f16(mmax / 63.f);
  const float d = f16_to_f32(b->d), dmin = f16_to_f32(b->dmin);
  const float id = d > 0.f ? 1.f / d : 0.f, idm = dmin > 0.f ? 1.f / dmin : 0.f;
  uint8_t sc[8], mn[8];
  for (int j = 0; j < 8; ++j) {
    const int s0 = std::clamp(nearest(s[j] * id), 0, 63), m0 = std::clamp(nearest(m[j] * idm), 0, 63);
    int bs = s0, bm = m0;
    float be = INFINITY;
    for (int ds = -1; ds <= 1; ++ds)
      for (int dm = -1; dm <= 1; ++dm) {
        const int cs = s0 + ds, cm = m0 + dm;
        if (cs < 0 || cs > 63 || cm < 0 || cm > 63) continue;
        const float e = k4_error(x + 32 * j, d * float(cs), dmin * float(cm), nullptr);
        if (e < be) be = e, bs = cs, bm = cm;
      }
    sc[j] = uint8_t(bs), mn[j] = uint8_t(bm);
  }
  for (int j = 0; j < 4; ++j) {
    b->scales[j] = uint8_t(sc[j] | ((sc[j + 4] >> 4) << 6));
    b->scales[j + 4] = uint8_t(mn[j] | ((mn[j + 4] >> 4) << 6));
    b->scales[j + 8] = uint8_t((sc[j + 4] & 15) | ((mn[j + 4] & 15) << 4));
  }
  for (int j = 0; j < 4; ++j) {  // 64 values: low nibbles sub-block 2j, high nibbles 2j+1
    uint8_t lo[32], hi[32];
    k4_error(x + 64 * j, d * float(sc[2 * j]), dmin * float(mn[2 * j]), lo);
    k4_error(x + 64 * j + 32, d * float(sc[2 * j + 1]), dmin * float(mn[2 * j + 1]), hi);
    for (int l = 0; l < 32; ++l) b->qs[32 * j + l] = uint8_t(lo[l] | (hi[l] << 4));
  }
}

void quantize_block(DType t, const float* x, void* dst) {
  switch (t) {
    case DType::kQ8_0: quantize_q8_0(x, static_cast<BlockQ8_0*>(dst)); return;
    case DType::kQ4_0: quantize_q4_0(x, static_cast<BlockQ4_0*>(dst)); return;
    case DType::kQ4_K: quantize_q4_k(x, static_cast<BlockQ4_K*>(dst)); return;
    default: return;
  }
}

constexpr int64_t kRowsPerTask = 16;

}  // namespace

Status quantize_rows(const void* src, DType src_type, int64_t rows, int64_t cols, DType t, void* dst) {
  if (!can_quantize(t)) return Status::unsupported(std::string("quantize: cannot make ") + dtype_name(t) + " blocks");
  if (!is_float(src_type)) return Status::invalid("quantize: the source must be f32, f16 or bf16");
  const int64_t qk = quant_block_elems(t);
  if (cols % qk) return Status::invalid("quantize: the row length must be a multiple of the block");
  const size_t rb = row_bytes(t, cols), bb = quant_block_bytes(t);
  parallel_for((rows + kRowsPerTask - 1) / kRowsPerTask, [&](int64_t task, int) {
    std::vector<float> row(static_cast<size_t>(cols));
    for (int64_t r = task * kRowsPerTask; r < std::min(rows, (task + 1) * kRowsPerTask); ++r) {
      for (int64_t i = 0; i < cols; ++i) row[size_t(i)] = load_as_f32(src, src_type, size_t(r * cols + i));
      uint8_t* out = static_cast<uint8_t*>(dst) + size_t(r) * rb;
      for (int64_t b = 0; b < cols / qk; ++b) quantize_block(t, row.data() + b * qk, out + size_t(b) * bb);
    }
  });
  return Status::ok();
}

Status dequantize_rows(const void* src, DType t, int64_t rows, int64_t cols, void* dst, DType dst_type) {
  if (!is_quant(t)) return Status::invalid("dequantize: the source is not a quantised type");
  if (!is_float(dst_type)) return Status::invalid("dequantize: the output must be f32, f16 or bf16");
  const int64_t qk = quant_block_elems(t);
  if (cols % qk) return Status::invalid("dequantize: the row length must be a multiple of the block");
  const size_t rb = row_bytes(t, cols), bb = quant_block_bytes(t);
  parallel_for((rows + kRowsPerTask - 1) / kRowsPerTask, [&](int64_t task, int) {
    float y[kQKK];
    for (int64_t r = task * kRowsPerTask; r < std::min(rows, (task + 1) * kRowsPerTask); ++r) {
      const uint8_t* in = static_cast<const uint8_t*>(src) + size_t(r) * rb;
      for (int64_t b = 0; b < cols / qk; ++b) {
        dequantize_block(t, in + size_t(b) * bb, y);
        for (int64_t i = 0; i < qk; ++i) store_from_f32(dst, dst_type, size_t(r * cols + b * qk + i), y[i]);
      }
    }
  });
  return Status::ok();
}

}  // namespace quant
}  // namespace moe
