// test/emu: a tiled bf16 tensor-core GEMM, C[M,N] = A[M,K] * B[N,K]^T in f32, written against
// cuda_compat.cuh with every PTX wrapper (cp.async double buffering, ldmatrix.x4, mma.sync m16n8k16).
// It is not the product's grouped GEMM: it exists to (1) time the emulator on the EMULATION.md
// benchmark shape (128x128x256), (2) check the wrappers end to end against a plain loop, and (3) let
// test/emu/nvcc-check.sh prove the wrappers' inline PTX assembles for every target.
// Shapes must be multiples of the block tile (the launcher says so otherwise).
#include "../../native/backends/cuda/cuda_compat.cuh"

#include <cuda_bf16.h>

namespace gemm_demo {

constexpr int kBlockM = 128, kBlockN = 128, kBlockK = 32;
constexpr int kWarpsM = 2, kWarpsN = 2;
constexpr int kThreads = kWarpsM * kWarpsN * 32;
constexpr int kWarpM = kBlockM / kWarpsM, kWarpN = kBlockN / kWarpsN;  // 64 x 64 per warp
constexpr int kMmaM = 16, kMmaN = 8, kMmaK = 16;
constexpr int kTilesM = kWarpM / kMmaM, kTilesN = kWarpN / kMmaN;       // 4 x 8 mma tiles per warp
constexpr int kPad = 8;                         // bf16 elements: keeps rows 16-byte aligned, spreads banks
constexpr int kRowStride = kBlockK + kPad;      // shared row of one tile, in elements
constexpr int kStages = 2;
constexpr int kChunkElems = 16 / sizeof(__nv_bfloat16);                   // one cp.async
constexpr int kChunksPerRow = kBlockK / kChunkElems;
static_assert(kBlockM * kChunksPerRow % kThreads == 0, "whole chunks per thread");
static_assert(kStages * (kBlockM + kBlockN) * kRowStride * sizeof(__nv_bfloat16) <= 48 * 1024,
              "static shared memory stays under 48 KB");

__global__ void __launch_bounds__(kThreads)
    gemm_bf16_kernel(const __nv_bfloat16* __restrict__ a,  // [M, K]
                     const __nv_bfloat16* __restrict__ b,  // [N, K]
                     float* __restrict__ c,                // [M, N]
                     int n, int k) {
  MOE_SHARED_ALIGNED(16, __nv_bfloat16, a_s, [kStages][kBlockM][kRowStride]);
  MOE_SHARED_ALIGNED(16, __nv_bfloat16, b_s, [kStages][kBlockN][kRowStride]);
  const int tid = int(threadIdx.x), lane = tid % 32, warp = tid / 32;
  const int warp_m = warp / kWarpsN, warp_n = warp % kWarpsN;
  const int64_t m0 = int64_t(blockIdx.y) * kBlockM, n0 = int64_t(blockIdx.x) * kBlockN;

  auto load_stage = [&](int stage, int k0) {
    for (int chunk = tid; chunk < kBlockM * kChunksPerRow; chunk += kThreads) {
      const int row = chunk / kChunksPerRow, col = chunk % kChunksPerRow * kChunkElems;
      moe_cp_async_16(&a_s[stage][row][col], a + (m0 + row) * k + k0 + col);
      moe_cp_async_16(&b_s[stage][row][col], b + (n0 + row) * k + k0 + col);
    }
  };

  float acc[kTilesM][kTilesN][4];
  MOE_UNROLL
  for (int i = 0; i < kTilesM; ++i)
    MOE_UNROLL
    for (int j = 0; j < kTilesN; ++j)
      MOE_UNROLL
      for (int r = 0; r < 4; ++r) acc[i][j][r] = 0.f;

  const int k_tiles = k / kBlockK;
  load_stage(0, 0);
  moe_cp_async_commit();
  for (int kt = 0; kt < k_tiles; ++kt) {
    if (kt + 1 < k_tiles) load_stage((kt + 1) % kStages, (kt + 1) * kBlockK);
    moe_cp_async_commit();    // possibly empty: keeps the group count uniform
    moe_cp_async_wait<1>();   // this thread's copies of tile kt have landed...
    __syncthreads();          // ...and everybody else's too
    const int stage = kt % kStages;
    MOE_UNROLL
    for (int kk = 0; kk < kBlockK; kk += kMmaK) {
      uint32_t af[kTilesM][4], bf[kTilesN][2];
      MOE_UNROLL
      for (int i = 0; i < kTilesM; ++i) {
        // x4: lanes 0-15 address rows 0-15 at k, lanes 16-31 the same rows at k + 8.
        const int row = warp_m * kWarpM + i * kMmaM + lane % 16;
        moe_ldmatrix_x4(af[i], &a_s[stage][row][kk + lane / 16 * 8]);
      }
      MOE_UNROLL
      for (int j = 0; j < kTilesN; j += 2) {
        // x4 over two n8 tiles: lanes 0-7 / 8-15 rows n..n+7 at k / k+8, lanes 16-31 rows n+8..15.
        const int row = warp_n * kWarpN + j * kMmaN + (lane / 16) * 8 + lane % 8;
        uint32_t r[4];
        moe_ldmatrix_x4(r, &b_s[stage][row][kk + (lane / 8) % 2 * 8]);
        bf[j][0] = r[0], bf[j][1] = r[1], bf[j + 1][0] = r[2], bf[j + 1][1] = r[3];
      }
      MOE_UNROLL
      for (int i = 0; i < kTilesM; ++i)
        MOE_UNROLL
        for (int j = 0; j < kTilesN; ++j) moe_mma_m16n8k16_bf16(acc[i][j], af[i], bf[j], acc[i][j]);
    }
    __syncthreads();  // the stage is overwritten by the next iteration's copies
  }
  moe_cp_async_wait<0>();

  const int group = lane / 4, tig = lane % 4;
  MOE_UNROLL
  for (int i = 0; i < kTilesM; ++i)
    MOE_UNROLL
    for (int j = 0; j < kTilesN; ++j)
      MOE_UNROLL
      for (int r = 0; r < 4; ++r) {
        const int64_t row = m0 + warp_m * kWarpM + i * kMmaM + group + (r / 2) * 8;
        const int64_t col = n0 + warp_n * kWarpN + j * kMmaN + tig * 2 + r % 2;
        c[row * n + col] = acc[i][j][r];
      }
}

cudaError_t launch_gemm_bf16(const __nv_bfloat16* a, const __nv_bfloat16* b, float* c, int m, int n,
                             int k, cudaStream_t stream) {
  if (m <= 0 || n <= 0 || k <= 0 || m % kBlockM || n % kBlockN || k % kBlockK) return cudaErrorInvalidValue;
  return moe_launch(gemm_bf16_kernel, dim3(unsigned(n / kBlockN), unsigned(m / kBlockM)), dim3(kThreads), 0,
                    stream, a, b, c, n, k);
}

}  // namespace gemm_demo
