// test/emu: runs test/emu/gemm_demo.cu in the emulator against a plain loop and reports the time of
// the EMULATION.md benchmark shape (128x128x256 bf16 with cp.async + ldmatrix + mma.sync).
#include "../../native/backends/cuda/cuda_compat.cuh"

#include <cuda_bf16.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <vector>

#include "check.h"

namespace gemm_demo {
cudaError_t launch_gemm_bf16(const __nv_bfloat16* a, const __nv_bfloat16* b, float* c, int m, int n,
                             int k, cudaStream_t stream);
}

namespace {
void check_gemm(int m, int n, int k, bool report_time) {
  std::vector<__nv_bfloat16> a(size_t(m) * k), b(size_t(n) * k);
  std::vector<float> af(a.size()), bf(b.size()), c(size_t(m) * n);
  uint64_t s = 42;
  auto next = [&]() {
    s = s * 6364136223846793005ull + 1442695040888963407ull;
    return float(double(s >> 11) / double(1ull << 53) * 2 - 1);
  };
  for (size_t i = 0; i < a.size(); ++i) a[i] = __float2bfloat16(next()), af[i] = __bfloat162float(a[i]);
  for (size_t i = 0; i < b.size(); ++i) b[i] = __float2bfloat16(next()), bf[i] = __bfloat162float(b[i]);
  const auto t0 = std::chrono::steady_clock::now();
  CHECK_OK(gemm_demo::launch_gemm_bf16(a.data(), b.data(), c.data(), m, n, k, nullptr));
  const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  if (report_time) std::printf("     emulated %dx%dx%d bf16 GEMM: %.1f ms\n", m, n, k, ms);
  int bad = 0;
  for (int i = 0; i < m; ++i)
    for (int j = 0; j < n; ++j) {
      double ref = 0;
      for (int p = 0; p < k; ++p) ref += double(af[size_t(i) * k + p]) * double(bf[size_t(j) * k + p]);
      const double got = c[size_t(i) * n + j];
      if (!(std::fabs(got - ref) <= 1e-4 * (1 + std::fabs(ref))) && bad++ < 3)
        emu_test::fail(__FILE__, __LINE__, "C[" + std::to_string(i) + "," + std::to_string(j) + "] = " +
                                               emu_test::describe(got) + ", want " + emu_test::describe(ref));
    }
}
}  // namespace

TEST(gemm_demo_bf16_128x128x256_matches_loop) { check_gemm(128, 128, 256, true); }

TEST(gemm_demo_bf16_multi_block) {
  check_gemm(256, 128, 64, false);
  CHECK(gemm_demo::launch_gemm_bf16(nullptr, nullptr, nullptr, 100, 128, 64, nullptr) == cudaErrorInvalidValue);
}
