// test/emu: native/backends/cuda/quant_gemm.cu (quantised GEMM1 with fused SwiGLU, and the GEMV of
// GEMM2 / the linear layer) run in the emulator against a double reference computed here on the
// dequantised weights (moe::quant::dequantize_block, the format's definition). Every format; weights
// from the CPU quantiser (q8_0, q4_0, q4_k) or random valid blocks (q5_k, q6_k); experts with no rows,
// one expert with every row, a bias, rows in tiles of 4 with a tail; the GEMV under every schedule
// (no barrier is used, and none must be needed). Tolerance: 1e-4 of max|ref| (f32 arithmetic).
#include "../../native/backends/cuda/cuda_compat.cuh"
#include "../../native/backends/cuda/quant_launchers.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "check.h"
#include "moe/quant.h"
#include "schedules.h"

namespace {

using moe::DType;

struct Mem {  // 256-byte aligned "device" memory (the emulator's device memory is host memory)
  unsigned char* p;
  explicit Mem(size_t n) : p(static_cast<unsigned char*>(std::aligned_alloc(256, (n + 255) / 256 * 256 + 256))) { std::memset(p, 0, n); }
  ~Mem() { std::free(p); }
  template <class T> T* as() const { return reinterpret_cast<T*>(p); }
};

// rows x cols of format t: ggml bytes (src) and their values (vals)
void make_matrix(DType t, int64_t rows, int64_t cols, uint32_t seed, std::vector<uint8_t>* src, std::vector<float>* vals) {
  std::mt19937 rng(seed);
  src->resize(moe::row_bytes(t, cols) * size_t(rows));
  if (moe::quant::can_quantize(t)) {
    std::normal_distribution<float> n(0.f, 1.f / std::sqrt(float(cols)));
    std::vector<float> w(size_t(rows * cols));
    for (float& v : w) v = n(rng);
    // the CPU quantiser runs on the compute pool: fine in a test binary
    CHECK(moe::quant::quantize_rows(w.data(), DType::kF32, rows, cols, t, src->data()).is_ok());
  } else {
    for (uint8_t& b : *src) b = uint8_t(rng());
    const size_t bb = moe::quant_block_bytes(t);
    for (size_t b = 0; b < src->size() / bb; ++b) {  // finite small f16 scales
      const uint16_t h = uint16_t(((2 + rng() % 2) << 10) | (rng() & 0x3ff) | ((rng() & 1) << 15));
      uint8_t* blk = src->data() + b * bb;
      if (t == DType::kQ6_K) std::memcpy(blk + 208, &h, 2);
      else std::memcpy(blk, &h, 2), std::memcpy(blk + 2, &h, 2);
    }
  }
  vals->resize(size_t(rows * cols));
  const int64_t qk = moe::quant_block_elems(t);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t b = 0; b < cols / qk; ++b)
      moe::quant::dequantize_block(t, src->data() + moe::row_bytes(t, cols) * size_t(r) + moe::quant_block_bytes(t) * size_t(b),
                                   vals->data() + r * cols + b * qk);
}

void check_close(const float* got, const std::vector<double>& ref, const std::string& what) {
  double mx = 1e-30;
  for (double v : ref) mx = std::max(mx, std::fabs(v));
  size_t bad = 0, worst = 0;
  double we = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    const double e = std::fabs(double(got[i]) - ref[i]);
    if (!(e <= 1e-4 * mx)) ++bad;
    if (!(e <= we)) we = e, worst = i;
  }
  if (bad) emu_test::fail(__FILE__, __LINE__, what + ": " + std::to_string(bad) + " of " + std::to_string(ref.size()) +
                                                  " out of tolerance; worst at " + std::to_string(worst) + ": got " +
                                                  std::to_string(got[worst]) + ", ref " + std::to_string(ref[worst]));
}

// The experts' layer GEMMs: GEMM1 (interleaved W1/W3 rows) then the GEMV of W2, on `offsets`.
void run_layer(DType t13, DType t2, int E, int64_t d, int64_t f, const std::vector<int32_t>& offsets, int64_t T, uint32_t seed) {
  const std::string name = std::string(moe::dtype_name(t13)) + "/" + moe::dtype_name(t2) + " E=" + std::to_string(E) +
                           " d=" + std::to_string(d) + " f=" + std::to_string(f);
  const int64_t R = offsets[size_t(E)];
  const size_t row13 = moe::quant_device_row_bytes(t13, d), row2 = moe::quant_device_row_bytes(t2, f);
  CHECK(row13 % 16 == 0 && row2 % 16 == 0 && row13 > 0 && row2 > 0);
  const size_t w2_off = size_t(2 * f) * row13, eb = w2_off + size_t(d) * row2;
  Mem packed(eb * size_t(E));
  std::vector<std::vector<float>> w1v(static_cast<size_t>(E)), w3v(static_cast<size_t>(E)), w2v(static_cast<size_t>(E));
  for (int e = 0; e < E; ++e) {
    std::vector<uint8_t> s1, s3, s2;
    make_matrix(t13, f, d, seed + 10 * e, &s1, &w1v[size_t(e)]);
    make_matrix(t13, f, d, seed + 10 * e + 1, &s3, &w3v[size_t(e)]);
    make_matrix(t2, d, f, seed + 10 * e + 2, &s2, &w2v[size_t(e)]);
    unsigned char* base = packed.p + size_t(e) * eb;
    for (int64_t j = 0; j < f; ++j) {
      moe::quant_repack_row(t13, s1.data() + moe::row_bytes(t13, d) * size_t(j), d, base + size_t(2 * j) * row13);
      moe::quant_repack_row(t13, s3.data() + moe::row_bytes(t13, d) * size_t(j), d, base + size_t(2 * j + 1) * row13);
    }
    for (int64_t i = 0; i < d; ++i) moe::quant_repack_row(t2, s2.data() + moe::row_bytes(t2, f) * size_t(i), f, base + w2_off + size_t(i) * row2);
  }
  std::mt19937 rng(seed + 99);
  std::normal_distribution<float> n(0.f, 1.f);
  Mem x(size_t(T * d) * 4), rows(size_t(std::max<int64_t>(R, 1)) * 4), offs(size_t(E + 1) * 4), h(size_t(R * f) * 4 + 4),
      y(size_t(R * d) * 4 + 4);
  for (int64_t i = 0; i < T * d; ++i) x.as<float>()[i] = n(rng);
  for (int64_t r = 0; r < R; ++r) rows.as<int32_t>()[r] = int32_t((r * 7 + 3) % T);
  std::memcpy(offs.p, offsets.data(), offsets.size() * 4);
  CHECK_OK(moe::launch_quant_gemm1(x.as<float>(), rows.as<int32_t>(), offs.as<int32_t>(), E, packed.p, eb, row13, t13, d, f, h.as<float>(), 0));
  CHECK_OK(moe::launch_quant_gemv(h.as<float>(), offs.as<int32_t>(), E, 0, packed.p + w2_off, eb, row2, t2, f, d, nullptr, y.as<float>(), 0));
  CHECK_OK(cudaDeviceSynchronize());
  std::vector<double> href(size_t(R * f)), yref(size_t(R * d));
  for (int e = 0; e < E; ++e)
    for (int64_t r = offsets[size_t(e)]; r < offsets[size_t(e) + 1]; ++r) {
      const float* xr = x.as<float>() + rows.as<int32_t>()[r] * d;
      for (int64_t j = 0; j < f; ++j) {
        double g = 0, u = 0;
        for (int64_t k = 0; k < d; ++k) g += double(w1v[size_t(e)][size_t(j * d + k)]) * xr[k], u += double(w3v[size_t(e)][size_t(j * d + k)]) * xr[k];
        href[size_t(r * f + j)] = g / (1 + std::exp(-g)) * u;
      }
      for (int64_t i = 0; i < d; ++i) {
        double s = 0;
        for (int64_t j = 0; j < f; ++j) s += double(w2v[size_t(e)][size_t(i * f + j)]) * h.as<float>()[r * f + j];  // y from the kernel's h
        yref[size_t(r * d + i)] = s;
      }
    }
  check_close(h.as<float>(), href, name + " h");
  check_close(y.as<float>(), yref, name + " y");
}

}  // namespace

TEST(quant_gemm_every_format) {
  const DType all[] = {DType::kQ8_0, DType::kQ4_0, DType::kQ4_K, DType::kQ5_K, DType::kQ6_K};
  for (DType t : all) {
    // 3 experts: 5 rows (a tile of 4 and a tail), none, 2
    run_layer(t, t, 3, 256, 256, {0, 5, 5, 7}, 6, 11);
  }
}

TEST(quant_gemm_mixed_w2_and_one_expert) {
  run_layer(DType::kQ4_K, DType::kQ6_K, 2, 256, 512, {0, 9, 9}, 9, 21);  // Q4_K_M's mix; every row on expert 0
  run_layer(DType::kQ8_0, DType::kQ8_0, 1, 96, 64, {0, 3}, 3, 31);       // d, f not multiples of 256
}

TEST(quant_gemv_linear_bias_schedules) {
  const int64_t k = 512, n = 40, T = 6;
  for (DType t : {DType::kQ4_0, DType::kQ6_K}) {
    std::vector<uint8_t> src;
    std::vector<float> vals;
    make_matrix(t, n, k, 41, &src, &vals);
    const size_t row = moe::quant_device_row_bytes(t, k);
    Mem w(row * size_t(n)), a(size_t(T * k) * 4), b(size_t(n) * 4), y(size_t(T * n) * 4);
    for (int64_t r = 0; r < n; ++r) moe::quant_repack_row(t, src.data() + moe::row_bytes(t, k) * size_t(r), k, w.p + size_t(r) * row);
    for (int64_t i = 0; i < T * k; ++i) a.as<float>()[i] = float((i * 37) % 19) / 9.f - 1.f;
    for (int64_t i = 0; i < n; ++i) b.as<float>()[i] = float(i) / 8.f;
    std::vector<double> ref(size_t(T * n));
    for (int64_t r = 0; r < T; ++r)
      for (int64_t j = 0; j < n; ++j) {
        double s = 0;
        for (int64_t i = 0; i < k; ++i) s += double(vals[size_t(j * k + i)]) * a.as<float>()[r * k + i];
        ref[size_t(r * n + j)] = s + b.as<float>()[j];
      }
    for (moe_emu::Schedule s : emu_test::kAllSchedules) {
      emu_test::ScheduleScope scope(s);
      std::memset(y.p, 0xff, size_t(T * n) * 4);
      CHECK_OK(moe::launch_quant_gemv(a.as<float>(), nullptr, 1, T, w.p, 0, row, t, k, n, b.as<float>(), y.as<float>(), 0));
      CHECK_OK(cudaDeviceSynchronize());
      check_close(y.as<float>(), ref, std::string(moe::dtype_name(t)) + " linear");
    }
  }
}

TEST(quant_launchers_reject_bad_arguments) {
  Mem m(4096);
  CHECK_EQ(moe::launch_quant_gemv(m.as<float>(), nullptr, 1, 1, m.p, 0, 64, DType::kBF16, 32, 1, nullptr, m.as<float>(), 0), cudaErrorInvalidValue);
  CHECK_EQ(moe::launch_quant_gemv(m.as<float>(), nullptr, 1, 1, m.p, 0, 64, DType::kQ4_K, 32, 1, nullptr, m.as<float>(), 0), cudaErrorInvalidValue);
  CHECK_EQ(moe::launch_quant_gemv(m.as<float>(), nullptr, 1, 1, m.p + 8, 0, 64, DType::kQ8_0, 32, 1, nullptr, m.as<float>(), 0), cudaErrorInvalidValue);
  CHECK_EQ(moe::launch_quant_gemm1(m.as<float>(), nullptr, nullptr, 1, m.p, 0, 64, DType::kQ8_0, 32, 1, m.as<float>(), 0), cudaErrorInvalidValue);
  CHECK_EQ(moe::quant_device_row_bytes(DType::kQ4_K, 100), size_t(0));
  CHECK_EQ(moe::quant_device_row_bytes(DType::kQ6_K, 256), size_t(224));  // 208 + 2, padded to 16
}
