// CPU row-wise ops of a decoder model: embedding lookup, RMS norm, rotary position embedding and
// the residual add (declared in moe/decoder_ops.h). Each is memory-bound: rows are widened to f32
// in a small per-task buffer, computed in f32 and stored in the output's type, with tasks of
// whole rows so that the results do not depend on the thread count.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "cpu_features.h"
#include "moe/quant.h"
#include "cpu_ops.h"
#include "threadpool.h"
#include "row_ops.h"

namespace moe {
namespace cpu {

namespace {
constexpr int64_t kTaskElems = 1 << 15;  // elements handled by one task of a row-wise op

// fn(row, scratch) for every row, rows grouped into tasks of about kTaskElems elements; scratch
// holds `scratch_floats` floats per task.
template <class Fn>
void for_rows(int64_t rows, int64_t row_elems, int64_t scratch_floats, const Fn& fn) {
  const int64_t per_task = std::max<int64_t>(1, kTaskElems / std::max<int64_t>(1, row_elems));
  parallel_for((rows + per_task - 1) / per_task, [&](int64_t task, int) {
    std::vector<float> scratch(static_cast<size_t>(scratch_floats));
    const int64_t end = std::min(rows, (task + 1) * per_task);
    for (int64_t r = task * per_task; r < end; ++r) fn(r, scratch.data());
  });
}

float sum_squares_portable(const float* x, int64_t n) { return cpu::dot(x, x, n); }
void scale_portable(float* x, float r, const float* w, int64_t n) {
  for (int64_t i = 0; i < n; ++i) x[i] = (x[i] * r) * w[i];
}

const cpu::RowKernels& row_kernels() {
  static const cpu::RowKernels portable = {sum_squares_portable, scale_portable};
  static const cpu::RowKernels& k =
      cpu_features().table >= CpuKernel::kAvx512 ? cpu::row_avx512_kernels() : portable;
  return k;
}

bool same_dims(const TensorView& a, const TensorView& b) {
  if (a.ndim != b.ndim) return false;
  for (int i = 0; i < a.ndim; ++i)
    if (a.dims[i] != b.dims[i]) return false;
  return true;
}
}  // namespace

Status embedding(const TensorView& table, const int32_t* ids, int64_t T, const TensorView& out) {
  if (table.ndim != 2) return Status::invalid("embedding: table must be [V,d]");
  const int64_t V = table.dims[0], d = table.dims[1];
  if (out.ndim != 2 || out.dims[0] != T || out.dims[1] != d) return Status::invalid("embedding: out must be [T,d]");
  for (int64_t t = 0; t < T; ++t)
    if (ids[t] < 0 || ids[t] >= V) return Status::invalid("embedding: id out of range");
  if (is_quant(table.dtype)) {  // rows of blocks: the values of dequantize_rows, rows read where they lie
    const int64_t qk = quant_block_elems(table.dtype);
    if (d % qk) return Status::invalid("embedding: a quantised table's rows must be whole blocks");
    const size_t rb = row_bytes(table.dtype, d), bb = quant_block_bytes(table.dtype);
    for_rows(T, d, d, [&](int64_t t, float* row) {
      const uint8_t* in = static_cast<const uint8_t*>(table.data) + size_t(ids[t]) * rb;
      for (int64_t b = 0; b < d / qk; ++b) quant::dequantize_block(table.dtype, in + size_t(b) * bb, row + b * qk);
      for (int64_t i = 0; i < d; ++i) store_from_f32(out.data, out.dtype, size_t(t * d + i), row[i]);
    });
    return Status::ok();
  }
  if (out.dtype == table.dtype && is_float(table.dtype)) {  // a row copy, bit for bit (a model keeps its table as such a copy)
    const size_t row_bytes = size_t(d) * dtype_size(table.dtype);
    for_rows(T, d, 0, [&](int64_t t, float*) {
      std::memcpy(static_cast<uint8_t*>(out.data) + size_t(t) * row_bytes,
                  static_cast<const uint8_t*>(table.data) + size_t(ids[t]) * row_bytes, row_bytes);
    });
    return Status::ok();
  }
  for_rows(T, d, d, [&](int64_t t, float* row) {
    cpu::load_row(table.data, table.dtype, size_t(ids[t]) * size_t(d), d, row);
    cpu::store_row(out.data, out.dtype, size_t(t) * size_t(d), d, row);
  });
  return Status::ok();
}

Status rms_norm(const TensorView& x, const TensorView& weight, float eps, const TensorView& out) {
  if (x.ndim != 2) return Status::invalid("rms_norm: x must be [T,d]");
  const int64_t T = x.dims[0], d = x.dims[1];
  if (weight.numel() != d) return Status::invalid("rms_norm: weight must be [d]");
  if (!same_dims(out, x)) return Status::invalid("rms_norm: out must be [T,d]");
  std::vector<float> w(static_cast<size_t>(d));
  cpu::load_row(weight.data, weight.dtype, 0, d, w.data());
  const cpu::RowKernels& k = row_kernels();
  for_rows(T, d, d, [&](int64_t t, float* row) {
    cpu::load_row(x.data, x.dtype, size_t(t) * size_t(d), d, row);
    const float ms = k.sum_squares(row, d) / float(d);
    const float r = 1.0f / std::sqrt(ms + eps);
    k.scale(row, r, w.data(), d);
    cpu::store_row(out.data, out.dtype, size_t(t) * size_t(d), d, row);
  });
  return Status::ok();
}

Status rope(const TensorView& x, const int32_t* positions, double theta, const TensorView& out) {
  if (x.ndim != 3 || x.dims[2] % 2 != 0) return Status::invalid("rope: x must be [T,H,hd] with hd even");
  if (!same_dims(out, x)) return Status::invalid("rope: out must have x's dims");
  const int64_t T = x.dims[0], H = x.dims[1], hd = x.dims[2], half = hd / 2;
  // inv_freq[i] = theta^(-2i/hd) and the angles in f64; cos/sin rounded to f32 once per (t, i)
  std::vector<double> inv_freq(static_cast<size_t>(half));
  for (int64_t i = 0; i < half; ++i) inv_freq[size_t(i)] = std::pow(theta, -double(2 * i) / double(hd));
  std::vector<float> cs(static_cast<size_t>(T * hd));  // per token: cos[half], sin[half]
  parallel_for(T, [&](int64_t t, int) {
    for (int64_t i = 0; i < half; ++i) {
      const double a = double(positions[t]) * inv_freq[size_t(i)];
      cs[size_t(t * hd + i)] = float(std::cos(a));
      cs[size_t(t * hd + half + i)] = float(std::sin(a));
    }
  });
  for_rows(T * H, hd, hd, [&](int64_t r, float* row) {
    const float* c = cs.data() + size_t(r / H) * size_t(hd);
    const float* s = c + half;
    cpu::load_row(x.data, x.dtype, size_t(r) * size_t(hd), hd, row);
    for (int64_t i = 0; i < half; ++i) {
      const float x1 = row[i], x2 = row[i + half];
      row[i] = x1 * c[i] - x2 * s[i];
      row[i + half] = x2 * c[i] + x1 * s[i];
    }
    cpu::store_row(out.data, out.dtype, size_t(r) * size_t(hd), hd, row);
  });
  return Status::ok();
}

Status add(const TensorView& a, const TensorView& b, const TensorView& out) {
  const int64_t n = a.numel();
  if (b.numel() != n || out.numel() != n) return Status::invalid("add: a, b and out must have the same size");
  constexpr int64_t kChunk = 4096;  // elements per row of the task split
  const int64_t rows = (n + kChunk - 1) / kChunk;
  for_rows(rows, kChunk, 2 * kChunk, [&](int64_t r, float* buf) {
    const int64_t i0 = r * kChunk, len = std::min(kChunk, n - i0);
    float* bb = buf + kChunk;
    cpu::load_row(a.data, a.dtype, size_t(i0), len, buf);
    cpu::load_row(b.data, b.dtype, size_t(i0), len, bb);
    for (int64_t i = 0; i < len; ++i) buf[i] += bb[i];
    cpu::store_row(out.data, out.dtype, size_t(i0), len, buf);
  });
  return Status::ok();
}

}  // namespace cpu
}  // namespace moe
