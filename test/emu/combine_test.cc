// test/emu: native/backends/cuda/combine.cu run in the emulator against a scalar reference written here
// from the op's semantics (DESIGN.md "combine"): out[t] = sum over j of w[t,j] * y[row_of[t,j]],
// summed in f32 from 0 in j order, every product and sum rounded on its own (no FMA), dropped slots
// (row_of = -1) skipped. f32 output must match bit for bit; f16/bf16 output must be the reference
// rounded to nearest even, checked both with cuda_fp16.h / cuda_bf16.h and with the CPU backend's
// own conversions (native/include/moe/dtype.h), so GPU and CPU results are the same bits. Shapes:
// d = 1, 3, 4, 33, 128 (float4 and scalar paths, and misaligned pointers that force the scalar
// path); k = 1, 2, 6; T = 1, 33, 511; values that overflow f16; every schedule for small shapes.
#include "../../native/backends/cuda/cuda_compat.cuh"
#include "../../native/backends/cuda/launchers.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "../../native/include/moe/dtype.h"
#include "check.h"
#include "dev_dtype.h"
#include "schedules.h"

namespace {

using emu_test::kAllSchedules;
using emu_test::ScheduleScope;
using emu_test::dtype_name;
using emu_test::elem_bytes;

using moe::DevDType;

struct Inputs {
  std::vector<float> y;          // [R, d]
  std::vector<int32_t> row_of;   // [T, k]
  std::vector<float> weights;    // [T, k]
  int64_t rows = 0;
};

// Rows are a shuffled permutation of 0..T*k-1 (as permute makes them), about one slot in five
// dropped (-1). `wide`: some y values near the f16 limit, so f16 sums overflow to infinity.
Inputs make_inputs(int64_t T, int k, int64_t d, bool wide, uint64_t seed) {
  uint64_t s = seed * 0x9E3779B97F4A7C15ull + 7;
  auto next = [&]() {
    s = s * 6364136223846793005ull + 1442695040888963407ull;
    return double(s >> 11) / double(1ull << 53);
  };
  Inputs in;
  in.rows = T * k;
  in.y.resize(size_t(in.rows * d));
  for (float& v : in.y) v = float((next() * 2 - 1) * (wide && next() < 0.1 ? 60000.0 : 3.0));
  std::vector<int32_t> perm(size_t(in.rows));
  for (size_t i = 0; i < perm.size(); ++i) perm[i] = int32_t(i);
  for (size_t i = perm.size(); i > 1; --i) std::swap(perm[i - 1], perm[size_t(next() * double(i))]);
  in.row_of.resize(size_t(T * k));
  in.weights.resize(size_t(T * k));
  for (size_t i = 0; i < in.row_of.size(); ++i) {
    in.row_of[i] = next() < 0.2 ? -1 : perm[i];
    in.weights[i] = float(next());
  }
  return in;
}

// The reference sum, in f32 in j order: each product rounded to f32, then the sum rounded.
std::vector<float> reference_combine(const Inputs& in, int64_t T, int k, int64_t d) {
  std::vector<float> out(size_t(T * d));
  for (int64_t t = 0; t < T; ++t)
    for (int64_t i = 0; i < d; ++i) {
      float acc = 0.f;
      for (int j = 0; j < k; ++j) {
        const int32_t r = in.row_of[size_t(t * k + j)];
        if (r < 0) continue;
        volatile float prod = in.weights[size_t(t * k + j)] * in.y[size_t(r * d + i)];  // no contraction
        acc = acc + prod;
      }
      out[size_t(t * d + i)] = acc;
    }
  return out;
}

uint32_t f32_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}

uint16_t half_bits(__half h) {
  uint16_t u;
  std::memcpy(&u, &h, sizeof u);
  return u;
}

uint16_t bf16_bits(__nv_bfloat16 h) {
  uint16_t u;
  std::memcpy(&u, &h, sizeof u);
  return u;
}

// Runs the launcher through device buffers. y_shift / out_shift offset the pointers by elements (to
// misalign them); the output starts as garbage.
cudaError_t run_combine(const Inputs& in, int64_t T, int k, int64_t d, DevDType dtype, int y_shift, int out_shift,
                        std::vector<unsigned char>* out_host) {
  const size_t ob = elem_bytes(dtype);
  void *d_y = nullptr, *d_rows = nullptr, *d_w = nullptr, *d_out = nullptr;
  cudaMalloc(&d_y, (in.y.size() + size_t(y_shift)) * sizeof(float) + 1);
  cudaMalloc(&d_rows, in.row_of.size() * sizeof(int32_t) + 1);
  cudaMalloc(&d_w, in.weights.size() * sizeof(float) + 1);
  cudaMalloc(&d_out, size_t(T * d + out_shift) * ob + 1);
  float* y = static_cast<float*>(d_y) + y_shift;
  unsigned char* out = static_cast<unsigned char*>(d_out) + size_t(out_shift) * ob;
  cudaMemcpy(y, in.y.data(), in.y.size() * sizeof(float), cudaMemcpyHostToDevice);
  cudaMemcpy(d_rows, in.row_of.data(), in.row_of.size() * sizeof(int32_t), cudaMemcpyHostToDevice);
  cudaMemcpy(d_w, in.weights.data(), in.weights.size() * sizeof(float), cudaMemcpyHostToDevice);
  cudaMemset(out, 0x5a, size_t(T * d) * ob);
  const cudaError_t err = moe::launch_combine(y, in.rows, static_cast<const int32_t*>(d_rows),
                                              static_cast<const float*>(d_w), T, k, d, out, dtype, nullptr);
  out_host->resize(size_t(T * d) * ob);
  cudaMemcpy(out_host->data(), out, out_host->size(), cudaMemcpyDeviceToHost);
  for (void* p : {d_y, d_rows, d_w, d_out}) cudaFree(p);
  return err;
}

bool check_case(int64_t T, int k, int64_t d, DevDType dtype, bool wide, int y_shift = 0, int out_shift = 0) {
  const Inputs in = make_inputs(T, k, d, wide, uint64_t(T * 977 + k * 13 + d));
  const std::string what = "T=" + std::to_string(T) + " k=" + std::to_string(k) + " d=" + std::to_string(d) + " " +
                           dtype_name(dtype) + (wide ? " wide" : "") + " shift=" + std::to_string(y_shift) + "/" +
                           std::to_string(out_shift) + " (" + moe_emu::schedule_name(moe_emu::schedule()) + ")";
  std::vector<unsigned char> got;
  const cudaError_t err = run_combine(in, T, k, d, dtype, y_shift, out_shift, &got);
  if (err != cudaSuccess) {
    emu_test::fail(__FILE__, __LINE__, what + ": " + moe_error_string(err));
    return false;
  }
  const std::vector<float> ref = reference_combine(in, T, k, d);
  for (size_t i = 0; i < ref.size(); ++i) {
    uint32_t got_bits = 0, want_bits = 0, cpu_bits = 0;
    switch (dtype) {
      case DevDType::kF32: {
        float g;
        std::memcpy(&g, &got[i * 4], 4);
        got_bits = f32_bits(g);
        want_bits = cpu_bits = f32_bits(ref[i]);
        break;
      }
      case DevDType::kF16: {
        uint16_t g;
        std::memcpy(&g, &got[i * 2], 2);
        got_bits = g;
        want_bits = half_bits(__float2half_rn(ref[i]));
        cpu_bits = moe::f32_to_f16(ref[i]);
        break;
      }
      case DevDType::kBF16: {
        uint16_t g;
        std::memcpy(&g, &got[i * 2], 2);
        got_bits = g;
        want_bits = bf16_bits(__float2bfloat16_rn(ref[i]));
        cpu_bits = moe::f32_to_bf16(ref[i]);
        break;
      }
    }
    if (got_bits != want_bits || want_bits != cpu_bits) {
      emu_test::fail(__FILE__, __LINE__, what + ": out[" + std::to_string(i / size_t(d)) + "," +
                                             std::to_string(i % size_t(d)) + "] bits " + std::to_string(got_bits) +
                                             ", want " + std::to_string(want_bits) + " (CPU conversion " +
                                             std::to_string(cpu_bits) + ", f32 sum " +
                                             emu_test::describe(ref[i]) + ")");
      return false;
    }
  }
  return true;
}


const DevDType kAllTypes[] = {DevDType::kF32, DevDType::kF16, DevDType::kBF16};
const int64_t kDims[] = {1, 3, 4, 33, 128};
const int kTopKs[] = {1, 2, 6};

}  // namespace

// Every d, k and output type at T = 1 and 33 under every schedule.
TEST(combine_small_every_schedule) {
  for (moe_emu::Schedule s : kAllSchedules) {
    ScheduleScope scope(s, 99);
    for (DevDType t : kAllTypes)
      for (int64_t d : kDims)
        for (int k : kTopKs)
          for (int64_t T : {1, 33})
            if (!check_case(T, k, d, t, false)) return;
  }
}

// T = 511: several blocks and the grid-stride loop; values that overflow f16.
TEST(combine_larger_and_wide_values) {
  if (!check_case(511, 6, 128, DevDType::kF32, false) || !check_case(511, 2, 33, DevDType::kF16, false) ||
      !check_case(511, 6, 33, DevDType::kBF16, false) || !check_case(511, 2, 128, DevDType::kBF16, false))
    return;
  for (DevDType t : kAllTypes)
    if (!check_case(33, 6, 128, t, true) || !check_case(33, 2, 33, t, true)) return;
}

// Misaligned y or out: the scalar path even when d % 4 == 0, same bits.
TEST(combine_misaligned_pointers_take_the_scalar_path) {
  for (DevDType t : kAllTypes)
    for (int64_t d : {4, 128}) {
      if (!check_case(33, 2, d, t, false, 1, 0) || !check_case(33, 2, d, t, false, 0, 1) ||
          !check_case(33, 2, d, t, false, 2, 3))
        return;
    }
}

// A fully dropped token's output is exactly zero; a row past num_rows is never read.
TEST(combine_dropped_and_out_of_range_rows) {
  const int64_t d = 8;
  std::vector<float> y(2 * d, 1.5f);
  const std::vector<int32_t> rows = {-1, -1, 1, 7};  // token 0 fully dropped; token 1: row 1, row 7 >= R
  const std::vector<float> w = {0.25f, 0.75f, 2.f, 100.f};
  std::vector<float> out(2 * d, -9.f);
  CHECK_OK(moe::launch_combine(y.data(), 2, rows.data(), w.data(), 2, 2, d, out.data(), DevDType::kF32, nullptr));
  for (int64_t i = 0; i < d; ++i) {
    CHECK_EQ(f32_bits(out[size_t(i)]), 0u);
    CHECK_EQ(out[size_t(d + i)], 3.f);
  }
}

TEST(combine_rejects_bad_arguments) {
  std::vector<float> y(64, 0.f), w(64, 0.f), out(64);
  std::vector<int32_t> rows(64, 0);
  CHECK(moe::launch_combine(y.data(), 8, rows.data(), w.data(), -1, 2, 4, out.data(), DevDType::kF32, nullptr) ==
        cudaErrorInvalidValue);
  CHECK(moe::launch_combine(y.data(), 8, rows.data(), w.data(), 4, 0, 4, out.data(), DevDType::kF32, nullptr) ==
        cudaErrorInvalidValue);
  CHECK(moe::launch_combine(y.data(), 8, rows.data(), w.data(), 4, 2, -1, out.data(), DevDType::kF32, nullptr) ==
        cudaErrorInvalidValue);
  CHECK(moe::launch_combine(y.data(), -1, rows.data(), w.data(), 4, 2, 4, out.data(), DevDType::kF32, nullptr) ==
        cudaErrorInvalidValue);
  CHECK(moe::launch_combine(y.data(), 8, rows.data(), w.data(), 4, 2, 4, out.data(), DevDType(7), nullptr) ==
        cudaErrorInvalidValue);
  CHECK(moe::launch_combine(nullptr, 8, rows.data(), w.data(), 4, 2, 4, out.data(), DevDType::kF32, nullptr) ==
        cudaErrorInvalidValue);
  CHECK(moe::launch_combine(y.data(), 8, nullptr, w.data(), 4, 2, 4, out.data(), DevDType::kF32, nullptr) ==
        cudaErrorInvalidValue);
  CHECK(moe::launch_combine(y.data(), 8, rows.data(), nullptr, 4, 2, 4, out.data(), DevDType::kF32, nullptr) ==
        cudaErrorInvalidValue);
  CHECK(moe::launch_combine(y.data(), 8, rows.data(), w.data(), 4, 2, 4, nullptr, DevDType::kF32, nullptr) ==
        cudaErrorInvalidValue);
  CHECK_OK(moe::launch_combine(nullptr, 0, nullptr, nullptr, 0, 2, 4, nullptr, DevDType::kBF16, nullptr));
  CHECK_OK(moe::launch_combine(nullptr, 0, nullptr, nullptr, 4, 2, 0, nullptr, DevDType::kF16, nullptr));
  // y may be null when there are no rows: every slot must then be dropped.
  std::fill(rows.begin(), rows.end(), -1);
  std::fill(out.begin(), out.end(), 5.f);
  CHECK_OK(moe::launch_combine(nullptr, 0, rows.data(), w.data(), 4, 2, 4, out.data(), DevDType::kF32, nullptr));
  CHECK_EQ(out[15], 0.f);
}
