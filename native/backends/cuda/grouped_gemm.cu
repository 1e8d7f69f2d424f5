// moe-kernels CUDA: the grouped expert GEMMs with fused SwiGLU, the GPU twin of grouped_gemm() in
// native/backends/cpu/grouped_gemm.cc. For each sorted row r owned by expert e (expert_offsets[e] <= r <
// expert_offsets[e+1]) and its source token t = sorted_rows[r]:
//
//   GEMM1   h[r, :] = silu(W1_e x[t, :]) * (W3_e x[t, :])     f32 accumulation and epilogue; h is
//                                                             stored in the weight type (workspace)
//   GEMM2   y[r, :] = W2_e h[r, :]                            f32 accumulation, y f32 [R, d]
//
// Kernels (each launched once for GEMM1, kGlu = true, and once for GEMM2, kGlu = false):
//   grouped_gemm_tc_kernel<T, kGlu, Tile>   f16/bf16 weights, d % 8 == 0 and f % 8 == 0: tensor cores
//                                           (mma.sync m16n8k16, f32 accumulate), ldmatrix.x4 from
//                                           padded shared tiles, a kStages-deep cp.async pipeline with
//                                           zero-fill for rows past the expert's end and K/N tails;
//                                           64x128x32 tiles, 4 warps of 32x64, or for experts with
//                                           many rows 128x128x32 with 8 warps of 64x32 and 4 stages
//                                           (80 KB), or 128x256x64 with 8 warps of 64x64 and 4 stages
//                                           (216 KB) where a block may opt in to that much (sm_90,
//                                           sm_100) (TcTile: the tile table and its occupancy model)
//   grouped_gemm_simt_kernel<T, kGlu>       f32 weights (and the general fallback for f16/bf16 when d
//                                           or f is not a multiple of 8): 64x64x16 FMA tiles, 256
//                                           threads of 4x4 outputs, any d and f
//   grouped_gemv_kernel<T, kGlu, kVec, kRows>  decode (R_max = T*k <= kDecodeMaxRows): one block per
//                                           (expert with rows, 16 or 8 output features); each warp
//                                           streams the weight rows of 4 (or 2: gemv_features) features
//                                           once, with 16-byte loads (kVec; scalar when K is not a
//                                           multiple of 16 bytes; GEMM2 unrolled to 8 in flight), for all of
//                                           the expert's rows in one pass (kRows = 1, 4, 8 or 16, the
//                                           bound min(T, R_max) rounded up: each weight byte is read
//                                           once), then a reduce-scatter of xor shuffles
//   convert_rows_kernel<Src, Dst>           x -> weight type (see "Activations" below)
//   launch_grouped_gemm                     argument checks, workspace layout, the choice of path
//
// Device-side tile scheduling. The host knows only the upper bound R_max = max_rows (= T*k), not the
// per-expert counts, which live on the device in expert_offsets: so there is no host round trip
// between permute and the GEMMs and the forward can be captured in a CUDA graph. The M dimension of
// the grid is an upper bound on the tiles, sum_e ceil(rows_e / BM) <= ceil(R_max / BM) + E; warp 0 of
// each block scans expert_offsets (32 experts per step: per-lane tile counts, a shuffle scan and a
// ballot) to map its linear tile id onto (expert, first row), and the block leaves at once, every
// thread together, when the id is past the last real tile. The decode path counts one "tile" per
// expert with rows, so it reads the weights of those experts only.
//
// Packed weights (grouped_gemm_pack, built once on the host in the weight dtype):
//   [0, w2_offset)   W13 [E][2*f_pad][d], f_pad = round_up(f, 8): W1 and W3 interleaved in groups of
//                    8 rows: packed row 16*g + i is W1 row 8*g + i, packed row 16*g + 8 + i is W3 row
//                    8*g + i (i < 8); rows of features f..f_pad-1 are zero. One GEMM with N = 2*f_pad
//                    computes both products; in the tensor-core kernel the n8 mma tiles 2j / 2j+1 hold
//                    W1 / W3 of the same 8 features in the same lanes, so the SwiGLU epilogue pairs
//                    them in registers.
//   [w2_offset, ..)  W2 [E][d][f], the Hugging Face layout unchanged ([N, K] row-major is the mma
//                    "col" B operand). w2_offset = W13's bytes rounded up to 256.
//
// Activations: the GEMMs read x in the weight dtype. When x's dtype differs (or x is not 16-byte
// aligned), convert_rows_kernel first writes x rounded to the weight dtype (nearest even) into the
// workspace. So with f16/bf16 weights, f32 activations are rounded to 16 bits before the products
// (the CPU twin keeps them in f32); h is rounded to the weight dtype between the GEMMs as well.
//
// Workspace (grouped_gemm_workspace_bytes): h [max_rows][f] in the weight dtype, then the converted
// x [num_tokens][d] in the weight dtype, each starting on a 256-byte boundary.
//
// launch_linear (decoder_launchers.h) reuses the GEMM2 kernels for a plain linear layer y = x W^T of a
// decoder (attention projections, lm_head): one dense "expert" (expert_offsets null, rows
// [0, num_tokens): find_tile's dense mode), W [out, in] in Hugging Face layout as is, no packing;
// the same three paths (decode GEMV for T <= 16, tensor cores, SIMT), y in f32 or the weight type.
#include "cuda_compat.cuh"
#include "elem.cuh"
#include "launchers.h"
#include "decoder_launchers.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <climits>
#include <cstring>
#include <type_traits>

namespace moe {

namespace {

constexpr unsigned kAllLanes = 0xffffffffu;
constexpr int kWarpLanes = 32;
constexpr int kPackGroup = 8;  // W1/W3 interleave group (rows); the n8 width of an mma tile

// Decode (GEMV) path: used when max_rows <= kDecodeMaxRows (the MoE forward passes max_rows = T*k:
// T <= 8 at k = 2; from T = 16 the 64x128 tensor-core tile runs, one M tile per expert up to 64
// rows, so its weights are read once there too).
//
// Throughput model of the decode regime, Mixtral's layer (d 4096, f 14336, E 8, k 2, bf16) on H100
// SXM. Assumptions: HBM3 3.35 TB/s by datasheet, of which a plain copy reaches 90-93%; a loaded
// latency of 600-800 ns, so Little's law wants 2.0-2.7 MB in flight (15-20 KB per SM); 3-5 us fixed
// cost per kernel on the stream (no CUDA graph); uniform routing; registers from ptxas (sm_90).
//   T = 1: GEMM1 1792 blocks of 128 threads (5 per SM at 90 registers, 2.7 waves), GEMM2 512 blocks
//     (6 per SM, one wave); 8 16-byte loads per lane in flight, 48-80 KB per SM (3-5x Little's
//     need); each weight byte read once. GEMMs alone 86-90% of the datasheet bandwidth; the whole
//     forward (six kernels: router logits, softmax + top-k, permute, the two GEMVs, combine)
//     79-86% (it was 75-83% with nine, the permute's four launches now one), against 85%.
//   T = 16..128: the 64x128x32 tile, 4 blocks per SM, GEMM1 3.4 waves with 64 KB per SM in flight,
//     GEMM2 one wave of 256 blocks with ~31 KB (1.35-1.75x the need: its thinnest margin); GEMMs
//     88-92%, the forward 85-90%, against 80%. Its least certain input: the tile reads each weight
//     row in 64-byte pieces, which the model assumes stream as fast as a copy.
// Only a device settles these (scripts/gpu-check.sh); batchInvariant layers take the tensor-core
// path even at T = 1, where GEMM2 has 64 blocks: ~58% for the GEMMs, ~54% for the forward.
constexpr int kDecodeMaxRows = 16;
constexpr int kGemvWarps = 4;
constexpr int kGemvThreads = kGemvWarps * kWarpLanes;
// 3 blocks (12 warps, each with 4-8 16-byte loads per lane in flight) per SM keep enough bytes in
// flight to stream the weights at full bandwidth; the register budget that allows (<= 168) holds the
// unpacked weight vectors and accumulators without spills.
constexpr int kGemvMinBlocks = 3;
// Rows per pass over the weights (kRows of the kernel): the most rows an expert can have, so that
// every weight byte is read once per call (a second pass would stream the weights from HBM again:
// between passes the whole layer's weights go through L2). An expert has at most min(T, max_rows)
// rows (a token's k experts are distinct), <= kDecodeMaxRows here; the bound is rounded up to 1, 4,
// 8 or 16 (gemv_rows). Rows past the bound (only with repeated expert ids) take another pass.
constexpr int kGemvRowBuckets[] = {1, 4, 8, 16};
// Output features per warp: 4; 2 with 16 rows (one (feature, row) group per lane at most), and for
// GEMM1 (W1 and W3: 2 matrices) already with 8 rows, where 4 features' accumulators and weight
// vectors spill on sm_80.
__host__ __device__ constexpr int gemv_features(int rows, int mats) {
  return rows > 8 || (mats == 2 && rows > 4) ? 2 : 4;
}
// Steps of the k loop unrolled so that each lane has >= 8 weight loads in flight in GEMM2: with 4
// features 2 steps, with 2 features 4. GEMM1 is not unrolled: 4 features of W1 and W3 are 8 loads a
// step; with 2 features (8 or 16 rows) the registers go to the accumulators, and the many rows' FMAs
// hide the latency of 4.
__host__ __device__ constexpr int gemv_unroll(int features, int mats) { return mats == 2 ? 1 : 8 / features; }
int gemv_rows(int64_t rows_bound) {
  for (int b : kGemvRowBuckets)
    if (rows_bound <= b) return b;
  return kDecodeMaxRows;
}

// SIMT path.
constexpr int kSimtBlockM = 64, kSimtBlockN = 64, kSimtBlockK = 16;
constexpr int kSimtThreads = 256;  // 16 x 16 threads, 4 x 4 outputs each
constexpr int kSimtPad = 4;        // floats: keeps the transposed tiles' rows off one bank

constexpr int kConvertThreads = 256;
constexpr unsigned kMaxConvertBlocks = 4096;  // grid-stride loop beyond

// Tensor-core tile: kBlockM x kBlockN x kBlockK per block, warps of (kBlockM/kWarpsM) x (kBlockN/kWarpsN),
// kSt pipeline stages in dynamic shared memory, kMinB blocks per SM for __launch_bounds__ (so that
// kMinB * kThreads * registers fit the 64K-register file).
//
// The tiles, with what fits on each target (shared memory per SM: sm_80 164 KB, sm_86/89/120 100 KB,
// sm_90/100 228 KB; 1 KB more per block is reserved by the driver) and the bound the tile's reuse
// puts on throughput. A block brings (BM + BN) * BK * 2 bytes into shared memory per 2*BM*BN*BK
// FLOP: BM*BN / (BM + BN) FLOP per byte. With the operands streamed from L2 (expert weights are
// re-read by every M tile, the A rows by every N tile), the tile can sustain at most intensity x
// the L2 bandwidth, against ~990 TFLOP/s dense bf16 on H100 SXM (mma.sync reaches roughly 2/3 of
// that, a cap of ~66%; wgmma is not used). The L2 bandwidth is the model's weakest assumption, so
// it is given as a range: ~5.5 TB/s is what a microbenchmark measured on an H100 PCIe (114 SMs,
// clocks held to 1.4-1.75 GHz by its 350 W limit), taken as it is; ~7.2 TB/s is the same rate per
// SM and clock on the SXM part (132 SMs at 1.98 GHz), which holds only if the L2 slices keep up
// with more SMs. No figure here settles it; scripts/gpu-check.sh on an H100 does.
//
//   tile               warps stages  smem    blocks/SM: sm_80 sm_86/89/120 sm_90/100   FLOP/B  L2 bound on H100 SXM
//                                                                                              at 5.5      at 7.2 TB/s
//   64x128x32 (default)  4     3     45 KB              3        2           4         42.7    235 (24%)   307 (31%)
//   128x128x32 (large)   8     4     80 KB              2        1           2         64.0    352 (36%)   461 (47%)
//   128x256x64 (wide)    8     4     216 KB             -        -           1         85.3    469 (47%)   614 (62%)
//
// Registers: <= 128 per thread in the first two (4 x 128 or 2 x 256 threads per SM); the wide tile's
// warps hold 64x64 accumulators (128 f32 registers each): ptxas gives 196-220 registers per thread
// (sm_120 to sm_100), one block of 256 threads per SM; nvcc-check shows none spill on any target. Experts with many rows
// (kLargeTileRows) take the wide tile where the device lets a block opt in to 216 KB (sm_90/100:
// 227 KB; run_gemms asks the device), else the large one. By this model the wide tile reaches half
// of the dense peak only at the upper L2 figure; a bound clear of it needs operands read from L2
// once per cluster of blocks (sm_90 TMA multicast or distributed shared memory, with wgmma), which
// neither this kernel nor the emulator has.
template <int kBM, int kBN, int kWM, int kWN, int kSt, int kMinB, int kBK = 32>
struct TcTile {
  static constexpr int kBlockM = kBM, kBlockN = kBN, kBlockK = kBK;
  static constexpr int kWarpsM = kWM, kWarpsN = kWN, kStages = kSt;
  static constexpr int kThreads = kWM * kWN * kWarpLanes;
  static constexpr int kWarpM = kBM / kWM, kWarpN = kBN / kWN;
  static constexpr int kTilesM = kWarpM / 16, kTilesN = kWarpN / 8;  // m16n8k16 tiles per warp
  static constexpr int kChunkElems = 8;                              // 16-bit elements per cp.async
  static constexpr int kChunksPerRow = kBlockK / kChunkElems;
  static constexpr int kRowsPerPass = kThreads / kChunksPerRow;      // tile rows one sweep of copies covers
  static constexpr int kAChunks = kBlockM / kRowsPerPass, kBChunks = kBlockN / kRowsPerPass;
  static constexpr int kPad = 8;  // elements: rows stay 16-byte aligned, ldmatrix rows hit distinct banks
  static constexpr int kRowStride = kBlockK + kPad;
  static constexpr size_t kSmemBytes = size_t(kStages) * (kBlockM + kBlockN) * kRowStride * 2;  // dynamic
  static constexpr int kMinBlocks = kMinB;

  static_assert(kBM % kWM == 0 && kBN % kWN == 0, "whole warp tiles");
  static_assert(kWarpM % 16 == 0, "warp tile rows: whole m16 tiles");
  static_assert(kWarpN % 16 == 0, "warp tile columns: pairs of n8 tiles (ldmatrix.x4, W1/W3 pairs)");
  static_assert(kThreads % kChunksPerRow == 0 && kBlockM % kRowsPerPass == 0 && kBlockN % kRowsPerPass == 0,
                "whole chunks per thread");
  static_assert(kStages >= 2, "a pipeline needs two stages");
  static_assert(kBlockK % 16 == 0, "whole k16 steps of mma.sync");
  static_assert(kSmemBytes <= 227 * 1024, "fits the largest opt-in limit of the targets (sm_90/100); the launcher checks the device's");
};
using TcTileDefault = TcTile<64, 128, 2, 2, 3, 4>;
using TcTileLarge = TcTile<128, 128, 2, 4, 4, 2>;
using TcTileWide = TcTile<128, 256, 2, 4, 4, 1, 64>;
static_assert(TcTileDefault::kSmemBytes <= 99 * 1024 && TcTileLarge::kSmemBytes <= 99 * 1024,
              "the default and large tiles fit the smallest opt-in limit of the targets (sm_86/89/120)");
// The large tile when the experts average at least this many rows (max_rows / E: the host does not
// know the per-expert counts): vLLM's tuned H100 configs switch to larger tiles at M >= 1024 tokens,
// i.e. 256 rows per expert for Mixtral's E = 8, k = 2. Below, the 64-row tile wastes less on the
// last, partial M tile of each expert.
constexpr int64_t kLargeTileRows = 256;

// ---- element helpers ------------------------------------------------------------------------------

using elem::bits16;  // f32 <-> f16/bf16 conversions: elem.cuh, shared with the model ops
using elem::from_f32;
using elem::to_f32;

// Two 16-bit values of a 32-bit word (low half first) as floats.
__device__ __forceinline__ void unpack2(uint32_t w, __nv_bfloat16*, float& lo, float& hi) {
  lo = __uint_as_float(w << 16);
  hi = __uint_as_float(w & 0xffff0000u);
}
__device__ __forceinline__ void unpack2(uint32_t w, __half*, float& lo, float& hi) {
  lo = __half2float(__ushort_as_half(static_cast<unsigned short>(w & 0xffffu)));
  hi = __half2float(__ushort_as_half(static_cast<unsigned short>(w >> 16)));
}

// kElems consecutive elements at p as floats: one 16-byte load when kElems * sizeof(T) == 16 (p
// 16-byte aligned), else one scalar.
template <typename T, int kElems>
__device__ __forceinline__ void load_elems(const T* p, float (&v)[kElems]) {
  if constexpr (kElems == 1) {
    v[0] = to_f32(*p);
  } else if constexpr (sizeof(T) == 4) {
    static_assert(kElems == 4, "16 bytes of f32");
    const float4 q = *reinterpret_cast<const float4*>(p);
    v[0] = q.x, v[1] = q.y, v[2] = q.z, v[3] = q.w;
  } else {
    static_assert(kElems == 8, "16 bytes of f16/bf16");
    const uint4 q = *reinterpret_cast<const uint4*>(p);
    unpack2(q.x, static_cast<T*>(nullptr), v[0], v[1]);
    unpack2(q.y, static_cast<T*>(nullptr), v[2], v[3]);
    unpack2(q.z, static_cast<T*>(nullptr), v[4], v[5]);
    unpack2(q.w, static_cast<T*>(nullptr), v[6], v[7]);
  }
}

// Stores two adjacent outputs (p aligned to two elements).
__device__ __forceinline__ void store_pair(float* p, float a, float b) {
  *reinterpret_cast<float2*>(p) = make_float2(a, b);
}
template <typename T>
__device__ __forceinline__ void store_pair(T* p, float a, float b) {
  *reinterpret_cast<uint32_t*>(p) = bits16(from_f32<T>(a)) | (bits16(from_f32<T>(b)) << 16);
}

__device__ __forceinline__ float silu(float a) { return a / (1.f + __expf(-a)); }

// Packed W13 row of W1's feature n (W3's is 8 rows further).
__device__ __forceinline__ int w1_packed_row(int n) {
  return (n / kPackGroup) * (2 * kPackGroup) + n % kPackGroup;
}

__device__ __forceinline__ void mma_16816(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2],
                                          __nv_bfloat16*) {
  moe_mma_m16n8k16_bf16(d, a, b, d);
}
__device__ __forceinline__ void mma_16816(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2], __half*) {
  moe_mma_m16n8k16_f16(d, a, b, d);
}

// ---- device-side tile scheduling ------------------------------------------------------------------

// Called by all 32 lanes of one warp. Maps the linear tile id `tile` onto the tiles of tile_rows rows
// that each expert's rows form (experts in order, ceil(rows_e / tile_rows) tiles each) and writes
// info = {expert, first row, the expert's end row}, or expert = -1 past the last tile. Scans 32
// experts per step: each lane counts one expert's tiles, a shuffle scan gives the running total and a
// ballot the lane whose range holds `tile`. tile_rows = INT_MAX gives one tile per expert with rows.
// expert_offsets null: dense, one expert (0) owning rows [0, dense_rows) (a plain linear layer,
// launch_linear), no scan.
__device__ __forceinline__ void find_tile(const int32_t* __restrict__ expert_offsets, int num_experts,
                                          int dense_rows, int tile_rows, int tile, int* info) {
  const int lane = int(threadIdx.x) % kWarpLanes;
  int before = 0;  // tiles of the experts already scanned
  int expert = -1, row0 = 0, row_end = 0;
  if (!expert_offsets) {
    const int count = dense_rows > 0 ? (dense_rows - 1) / tile_rows + 1 : 0;
    if (tile < count) {
      expert = 0;
      row0 = tile_rows == INT_MAX ? 0 : tile * tile_rows;
      row_end = dense_rows;
    }
    num_experts = 0;  // skips the scan
  }
  for (int e0 = 0; e0 < num_experts; e0 += kWarpLanes) {
    const int e = e0 + lane;
    int lo = 0, rows = 0;
    if (e < num_experts) {
      lo = expert_offsets[e];
      rows = max(expert_offsets[e + 1] - lo, 0);
    }
    const int count = rows > 0 ? (rows - 1) / tile_rows + 1 : 0;
    int incl = count;
    MOE_UNROLL
    for (int off = 1; off < kWarpLanes; off *= 2) {
      const int v = __shfl_up_sync(kAllLanes, incl, off);
      if (lane >= off) incl += v;
    }
    const int total = __shfl_sync(kAllLanes, incl, kWarpLanes - 1);
    if (tile < before + total) {  // warp-uniform
      const int src = __ffs(int(__ballot_sync(kAllLanes, before + incl > tile))) - 1;
      const int first = __shfl_sync(kAllLanes, before + incl - count, src);
      const int src_lo = __shfl_sync(kAllLanes, lo, src);
      const int src_rows = __shfl_sync(kAllLanes, rows, src);
      expert = e0 + src;
      row0 = src_lo + (tile - first) * (tile_rows == INT_MAX ? 0 : tile_rows);
      row_end = src_lo + src_rows;
      break;
    }
    before += total;
  }
  if (lane == 0) {
    info[0] = expert;
    info[1] = row0;
    info[2] = row_end;
  }
}

// ---- tensor-core kernel (f16/bf16) ------------------------------------------------------------------

// One kBlockM x kBlockN output tile of one expert. GEMM1 (kGlu): A = x rows gathered by sorted_rows
// [., K = d], B = packed W13_e [N = 2*f_pad, d], out = h (T) [R, f]: the epilogue pairs n8 tiles
// 2j (W1) and 2j+1 (W3). GEMM2: A = h [R, K = f] (sorted_rows null), B = W2_e [N = d, f], out = y
// (OutT: f32 for the MoE; f32 or T for launch_linear) [R, d]. Requires K % 8 == 0, 16-byte aligned
// rows, n_cols even. expert_offsets null: dense rows [0, dense_rows) of one expert (find_tile).
template <typename T, bool kGlu, typename Tile, typename OutT = float>
__global__ void __launch_bounds__(Tile::kThreads, Tile::kMinBlocks)
    grouped_gemm_tc_kernel(const T* __restrict__ act,                // [rows or tokens, k_dim]
                           const int32_t* __restrict__ sorted_rows,  // [R] or null (identity)
                           const int32_t* __restrict__ expert_offsets,  // [num_experts + 1] or null
                           int num_experts, int dense_rows,
                           const T* __restrict__ w,                  // [E][n_cols][k_dim]
                           int64_t w_expert_stride, int n_cols, int k_dim, int n_features,
                           void* __restrict__ out, int out_stride) {  // [R, out_stride]
  static_assert(sizeof(T) == 2, "tensor cores take f16/bf16");
  constexpr int kBM = Tile::kBlockM, kBN = Tile::kBlockN, kBK = Tile::kBlockK;
  constexpr int kStages = Tile::kStages;
  // Dynamic shared memory (Tile::kSmemBytes, with the opt-in above 48 KB): A [kStages][kBM][kRowStride]
  // then B [kStages][kBN][kRowStride].
  MOE_DYNAMIC_SHARED(T, smem);
  T(*a_s)[kBM][Tile::kRowStride] = reinterpret_cast<T(*)[kBM][Tile::kRowStride]>(smem);
  T(*b_s)[kBN][Tile::kRowStride] =
      reinterpret_cast<T(*)[kBN][Tile::kRowStride]>(smem + size_t(kStages) * kBM * Tile::kRowStride);
  MOE_SHARED(int, tile_info, [3]);

  const int tid = int(threadIdx.x), lane = tid % kWarpLanes, warp = tid / kWarpLanes;
  if (warp == 0) find_tile(expert_offsets, num_experts, dense_rows, kBM, int(blockIdx.x), tile_info);
  __syncthreads();
  const int expert = tile_info[0], row0 = tile_info[1], row_end = tile_info[2];
  if (expert < 0) return;  // past the last tile: the whole block leaves, before any other barrier

  const int warp_m = warp / Tile::kWarpsN, warp_n = warp % Tile::kWarpsN;
  const int n0 = int(blockIdx.y) * kBN;
  // The rows this thread copies: chunk_row + c * kRowsPerPass, at column chunk_col. A rows are
  // gathered (an element offset each, -1 past the expert's end: k_dim * rows < 2^31, checked by the
  // launcher); B rows are evenly spaced from one pointer. Offsets rather than pointers keep the
  // register count at the 4-blocks-per-SM budget.
  const int chunk_col = tid % Tile::kChunksPerRow * Tile::kChunkElems;
  const int chunk_row = tid / Tile::kChunksPerRow;
  int a_off[Tile::kAChunks];
  MOE_UNROLL
  for (int c = 0; c < Tile::kAChunks; ++c) {
    const int r = row0 + chunk_row + c * Tile::kRowsPerPass;
    a_off[c] = r < row_end ? (sorted_rows ? sorted_rows[r] : r) * k_dim + chunk_col : -1;
  }
  // This thread's B rows c with c * kRowsPerPass < b_rows are inside N.
  const int b_rows = min(n_cols - n0 - chunk_row, Tile::kBlockN);
  const T* b_src = w + int64_t(expert) * w_expert_stride + int64_t(n0 + chunk_row) * k_dim + chunk_col;
  const int64_t b_step = int64_t(Tile::kRowsPerPass) * k_dim;
  // Copies of K columns [k0, k0 + kBK) into `stage`; rows past the expert's end or past N, and
  // columns past K, are zero-filled (k_dim % 8 == 0: a chunk is wholly inside or outside).
  auto load_stage = [&](int stage, int k0) {
    const bool k_ok = k0 + chunk_col < k_dim;
    MOE_UNROLL
    for (int c = 0; c < Tile::kAChunks; ++c) {
      const bool ok = a_off[c] >= 0 && k_ok;
      moe_cp_async_16_zfill(&a_s[stage][chunk_row + c * Tile::kRowsPerPass][chunk_col], act + (ok ? a_off[c] + k0 : 0),
                            ok ? 16 : 0);
    }
    MOE_UNROLL
    for (int c = 0; c < Tile::kBChunks; ++c) {
      const bool ok = c * Tile::kRowsPerPass < b_rows && k_ok;
      moe_cp_async_16_zfill(&b_s[stage][chunk_row + c * Tile::kRowsPerPass][chunk_col],
                            ok ? b_src + c * b_step + k0 : w, ok ? 16 : 0);
    }
  };

  float acc[Tile::kTilesM][Tile::kTilesN][4];
  MOE_UNROLL
  for (int i = 0; i < Tile::kTilesM; ++i)
    MOE_UNROLL
    for (int j = 0; j < Tile::kTilesN; ++j)
      MOE_UNROLL
      for (int r = 0; r < 4; ++r) acc[i][j][r] = 0.f;

  // Pipeline: stages 0..kStages-2 in flight before the loop; iteration kt waits for tile kt, then
  // (after the barrier that also retires every warp's reads of tile kt-1) refills that stage with
  // tile kt + kStages - 1. One commit per iteration, empty ones included, keeps wait<kStages-2> exact.
  const int k_tiles = (k_dim + kBK - 1) / kBK;
  MOE_UNROLL
  for (int s = 0; s < kStages - 1; ++s) {
    if (s < k_tiles) load_stage(s, s * kBK);
    moe_cp_async_commit();
  }
  for (int kt = 0; kt < k_tiles; ++kt) {
    moe_cp_async_wait<kStages - 2>();  // this thread's copies of tile kt have landed...
    __syncthreads();                   // ...everybody's, and nobody still reads stage (kt-1) % kStages
    const int next = kt + kStages - 1;
    if (next < k_tiles) load_stage(next % kStages, next * kBK);
    moe_cp_async_commit();
    const int stage = kt % kStages;
    MOE_UNROLL
    for (int kk = 0; kk < kBK; kk += 16) {
      uint32_t af[Tile::kTilesM][4], bf[Tile::kTilesN][2];
      MOE_UNROLL
      for (int i = 0; i < Tile::kTilesM; ++i) {
        // x4: lanes 0-15 address rows 0-15 at k, lanes 16-31 the same rows at k + 8.
        const int row = warp_m * Tile::kWarpM + i * 16 + lane % 16;
        moe_ldmatrix_x4(af[i], &a_s[stage][row][kk + lane / 16 * 8]);
      }
      MOE_UNROLL
      for (int j = 0; j < Tile::kTilesN; j += 2) {
        // x4 over two n8 tiles: lanes 0-7 / 8-15 rows n..n+7 at k / k+8, lanes 16-31 rows n+8..n+15.
        const int row = warp_n * Tile::kWarpN + j * 8 + (lane / 16) * 8 + lane % 8;
        uint32_t r[4];
        moe_ldmatrix_x4(r, &b_s[stage][row][kk + (lane / 8) % 2 * 8]);
        bf[j][0] = r[0], bf[j][1] = r[1], bf[j + 1][0] = r[2], bf[j + 1][1] = r[3];
      }
      MOE_UNROLL
      for (int i = 0; i < Tile::kTilesM; ++i)
        MOE_UNROLL
        for (int j = 0; j < Tile::kTilesN; ++j) mma_16816(acc[i][j], af[i], bf[j], static_cast<T*>(nullptr));
    }
  }
  moe_cp_async_wait<0>();  // only empty groups are left; leave none behind

  // Epilogue. acc[i][j][r]: row group + (r / 2) * 8 of m16 tile i, column tig * 2 + r % 2 of n8 tile j.
  const int group = lane / 4, tig = lane % 4;
  MOE_UNROLL
  for (int i = 0; i < Tile::kTilesM; ++i)
    MOE_UNROLL
    for (int half = 0; half < 2; ++half) {
      const int row = row0 + warp_m * Tile::kWarpM + i * 16 + group + half * 8;
      if (row >= row_end) continue;
      if constexpr (kGlu) {
        T* h = static_cast<T*>(out) + int64_t(row) * out_stride;
        MOE_UNROLL
        for (int j = 0; j < Tile::kTilesN; j += 2) {
          // n8 tiles j / j+1 are W1 / W3 of the 8 features starting at (packed column of tile j) / 2.
          const int feature = (n0 + warp_n * Tile::kWarpN + j * 8) / 2 + tig * 2;
          if (feature >= n_features) continue;
          store_pair(h + feature, silu(acc[i][j][half * 2]) * acc[i][j + 1][half * 2],
                     silu(acc[i][j][half * 2 + 1]) * acc[i][j + 1][half * 2 + 1]);
        }
      } else {
        OutT* y = static_cast<OutT*>(out) + int64_t(row) * out_stride;
        MOE_UNROLL
        for (int j = 0; j < Tile::kTilesN; ++j) {
          const int col = n0 + warp_n * Tile::kWarpN + j * 8 + tig * 2;
          if (col < n_cols) store_pair(y + col, acc[i][j][half * 2], acc[i][j][half * 2 + 1]);
        }
      }
    }
}

// ---- SIMT kernel (f32, and the general fallback) ---------------------------------------------------

// The same tile of work as the tensor-core kernel, on FMA units: 64x64 output tiles, K in steps of
// 16 staged transposed in shared memory as f32. Thread (tx, ty) holds rows ty + 16*i and columns
// {16*g + l, 16*g + 8 + l} for l = tx % 8 and the two 16-column groups g = 2*(tx/8) + {0,1}: with
// the packed W13, each pair is W1 and W3 of one feature. Any K, N (bounds-checked scalar loads).
template <typename T, bool kGlu, typename OutT = float>
__global__ void __launch_bounds__(kSimtThreads)
    grouped_gemm_simt_kernel(const T* __restrict__ act, const int32_t* __restrict__ sorted_rows,
                             const int32_t* __restrict__ expert_offsets, int num_experts, int dense_rows,
                             const T* __restrict__ w, int64_t w_expert_stride, int n_cols, int k_dim,
                             int n_features, void* __restrict__ out, int out_stride) {
  static_assert(kSimtThreads == 256 && kSimtBlockM == 64 && kSimtBlockN == 64,
                "the thread layout below is 16 x 16 threads of 4 x 4 outputs");
  static_assert(kSimtBlockM * kSimtBlockK % kSimtThreads == 0, "whole loads per thread");
  constexpr int kLoads = kSimtBlockM * kSimtBlockK / kSimtThreads;  // 4 elements of A, 4 of B
  constexpr int kRowsPerLoad = kSimtThreads / kSimtBlockK;
  MOE_SHARED(float, a_s, [kSimtBlockK][kSimtBlockM + kSimtPad]);
  MOE_SHARED(float, b_s, [kSimtBlockK][kSimtBlockN + kSimtPad]);
  MOE_SHARED(int, tile_info, [3]);

  const int tid = int(threadIdx.x);
  if (tid < kWarpLanes) find_tile(expert_offsets, num_experts, dense_rows, kSimtBlockM, int(blockIdx.x), tile_info);
  __syncthreads();
  const int expert = tile_info[0], row0 = tile_info[1], row_end = tile_info[2];
  if (expert < 0) return;  // the whole block, before any other barrier

  const int n0 = int(blockIdx.y) * kSimtBlockN;
  const T* w_e = w + int64_t(expert) * w_expert_stride;
  // Loads: element (row = tid / 16 + 16 * c, k = tid % 16) of the A and B tiles.
  const int ld_k = tid % kSimtBlockK, ld_row = tid / kSimtBlockK;
  const T* a_src[kLoads];
  const T* b_src[kLoads];
  bool a_ok[kLoads], b_ok[kLoads];
  MOE_UNROLL
  for (int c = 0; c < kLoads; ++c) {
    const int r = row0 + ld_row + c * kRowsPerLoad;
    a_ok[c] = r < row_end;
    a_src[c] = act + int64_t(a_ok[c] ? (sorted_rows ? sorted_rows[r] : r) : 0) * k_dim + ld_k;
    const int n = n0 + ld_row + c * kRowsPerLoad;
    b_ok[c] = n < n_cols;
    b_src[c] = w_e + int64_t(b_ok[c] ? n : 0) * k_dim + ld_k;
  }

  const int tx = tid % 16, ty = tid / 16;
  int cols[4];  // W1, W3 of group 2*(tx/8), then W1, W3 of group 2*(tx/8) + 1
  MOE_UNROLL
  for (int q = 0; q < 4; ++q) cols[q] = (2 * (tx / 8) + q / 2) * 16 + (q % 2) * 8 + tx % 8;

  float acc[4][4];
  MOE_UNROLL
  for (int i = 0; i < 4; ++i)
    MOE_UNROLL
    for (int q = 0; q < 4; ++q) acc[i][q] = 0.f;

  for (int k0 = 0; k0 < k_dim; k0 += kSimtBlockK) {
    const bool k_ok = k0 + ld_k < k_dim;
    MOE_UNROLL
    for (int c = 0; c < kLoads; ++c) {
      a_s[ld_k][ld_row + c * kRowsPerLoad] = a_ok[c] && k_ok ? to_f32(a_src[c][k0]) : 0.f;
      b_s[ld_k][ld_row + c * kRowsPerLoad] = b_ok[c] && k_ok ? to_f32(b_src[c][k0]) : 0.f;
    }
    __syncthreads();
    MOE_UNROLL
    for (int kk = 0; kk < kSimtBlockK; ++kk) {
      float a[4], b[4];
      MOE_UNROLL
      for (int i = 0; i < 4; ++i) a[i] = a_s[kk][ty + 16 * i];
      MOE_UNROLL
      for (int q = 0; q < 4; ++q) b[q] = b_s[kk][cols[q]];
      MOE_UNROLL
      for (int i = 0; i < 4; ++i)
        MOE_UNROLL
        for (int q = 0; q < 4; ++q) acc[i][q] = fmaf(a[i], b[q], acc[i][q]);
    }
    __syncthreads();  // the tiles are overwritten next step
  }

  MOE_UNROLL
  for (int i = 0; i < 4; ++i) {
    const int row = row0 + ty + 16 * i;
    if (row >= row_end) continue;
    if constexpr (kGlu) {
      T* h = static_cast<T*>(out) + int64_t(row) * out_stride;
      MOE_UNROLL
      for (int q = 0; q < 4; q += 2) {
        const int feature = (n0 + cols[q]) / 16 * 8 + cols[q] % 8;  // n0 % 16 == 0
        if (feature < n_features) h[feature] = from_f32<T>(silu(acc[i][q]) * acc[i][q + 1]);
      }
    } else {
      OutT* y = static_cast<OutT*>(out) + int64_t(row) * out_stride;
      MOE_UNROLL
      for (int q = 0; q < 4; ++q)
        if (n0 + cols[q] < n_cols) y[n0 + cols[q]] = from_f32<OutT>(acc[i][q]);
    }
  }
}

// ---- decode (GEMV) kernel ------------------------------------------------------------------------

// Sums v[g][m] over the 32 lanes of the warp for kGroups groups of kMats values (kGroups a power of
// two <= 32), halving the groups each xor step (lanes with the offset's bit keep the upper half and
// send the lower): 31 shuffles for 16 groups instead of 5 per value. Afterwards v[0][m] holds, in
// lane L, the sum of group L / (32 / kGroups).
template <int kGroups, int kMats, int kLive = kGroups, int kOffset = kWarpLanes / 2>
__device__ __forceinline__ void warp_reduce_scatter(float (&v)[kGroups][kMats], int lane) {
  static_assert(kGroups >= 1 && kGroups <= kWarpLanes && (kGroups & (kGroups - 1)) == 0,
                "a power of two of groups, at most one per lane");
  if constexpr (kOffset > 0) {
    if constexpr (kLive > 1) {
      constexpr int kHalf = kLive / 2;
      const bool upper = (lane & kOffset) != 0;
      MOE_UNROLL
      for (int g = 0; g < kHalf; ++g)
        MOE_UNROLL
        for (int m = 0; m < kMats; ++m) {
          const float send = upper ? v[g][m] : v[g + kHalf][m];
          const float keep = upper ? v[g + kHalf][m] : v[g][m];
          v[g][m] = keep + __shfl_xor_sync(kAllLanes, send, kOffset);
        }
      warp_reduce_scatter<kGroups, kMats, kHalf, kOffset / 2>(v, lane);
    } else {
      MOE_UNROLL
      for (int m = 0; m < kMats; ++m) v[0][m] += __shfl_xor_sync(kAllLanes, v[0][m], kOffset);
      warp_reduce_scatter<kGroups, kMats, 1, kOffset / 2>(v, lane);
    }
  }
}

// blockIdx.y: the y-th expert that has rows; blockIdx.x: kGemvWarps * gemv_features(...) output
// features; kGemvRows: rows per pass (all of the expert's rows, see gemv_rows).
// Each warp streams the weight rows of its features once (lanes stride K in 16-byte vectors when
// kVec, gemv_unroll steps at a time), multiplies them with every row of the expert (the activations
// come from L1/L2), reduces over the lanes with a reduce-scatter of xor shuffles, and every
// (feature, row) pair is stored by one lane. Each lane sums its k in ascending order whatever the
// unrolling, so results do not depend on it.
template <typename T, bool kGlu, bool kVec, int kGemvRows, typename OutT = float>
__global__ void __launch_bounds__(kGemvThreads, kGemvMinBlocks)
    grouped_gemv_kernel(const T* __restrict__ act, const int32_t* __restrict__ sorted_rows,
                        const int32_t* __restrict__ expert_offsets, int num_experts, int dense_rows,
                        const T* __restrict__ w, int64_t w_expert_stride, int k_dim, int n_features,
                        void* __restrict__ out, int out_stride) {
  constexpr int kV = kVec ? int(16 / sizeof(T)) : 1;  // elements per load
  constexpr int kMats = kGlu ? 2 : 1;                 // W1 and W3, or W2
  constexpr int kGemvFeatures = gemv_features(kGemvRows, kMats);
  constexpr int kUnroll = gemv_unroll(kGemvFeatures, kMats);
  constexpr int kStep = kWarpLanes * kV;  // elements of K one step of the warp covers
  static_assert(kGemvFeatures * kGemvRows <= kWarpLanes, "one (feature, row) group per lane or more");
  MOE_SHARED(int, tile_info, [3]);

  const int tid = int(threadIdx.x), lane = tid % kWarpLanes, warp = tid / kWarpLanes;
  if (warp == 0) find_tile(expert_offsets, num_experts, dense_rows, INT_MAX, int(blockIdx.y), tile_info);
  __syncthreads();
  const int expert = tile_info[0], row_begin = tile_info[1], row_end = tile_info[2];
  if (expert < 0) return;  // fewer experts with rows than blocks: the whole block leaves
  const int feat0 = (int(blockIdx.x) * kGemvWarps + warp) * kGemvFeatures;
  if (feat0 >= n_features) return;  // the whole warp; no barrier follows

  const T* w_e = w + int64_t(expert) * w_expert_stride;
  const T* wrow[kGemvFeatures][kMats];
  MOE_UNROLL
  for (int q = 0; q < kGemvFeatures; ++q) {
    const int n = min(feat0 + q, n_features - 1);  // a feature past the end repeats the last, unstored
    if constexpr (kGlu) {
      wrow[q][0] = w_e + int64_t(w1_packed_row(n)) * k_dim;
      wrow[q][kMats - 1] = wrow[q][0] + int64_t(kPackGroup) * k_dim;
    } else {
      wrow[q][0] = w_e + int64_t(n) * k_dim;
    }
  }

  for (int r0 = row_begin; r0 < row_end; r0 += kGemvRows) {
    const int nr = min(kGemvRows, row_end - r0);  // warp-uniform
    const T* arow[kGemvRows];
    MOE_UNROLL
    for (int rr = 0; rr < kGemvRows; ++rr) {
      const int r = r0 + min(rr, nr - 1);
      arow[rr] = act + int64_t(sorted_rows ? sorted_rows[r] : r) * k_dim;
    }
    // acc[q * kGemvRows + rr][m]: feature feat0 + q, row r0 + rr, matrix m (W1/W3, or W2).
    constexpr int kGroups = kGemvFeatures * kGemvRows;
    float acc[kGroups][kMats];
    MOE_UNROLL
    for (int g = 0; g < kGroups; ++g)
      MOE_UNROLL
      for (int m = 0; m < kMats; ++m) acc[g][m] = 0.f;

    // kU steps of the warp at k, k + kStep, ...: every weight load first, then the products.
    auto steps = [&](int k, auto unroll) {
      constexpr int kU = decltype(unroll)::value;
      float wv[kU][kGemvFeatures][kMats][kV];
      MOE_UNROLL
      for (int u = 0; u < kU; ++u)
        MOE_UNROLL
        for (int q = 0; q < kGemvFeatures; ++q)
          MOE_UNROLL
          for (int m = 0; m < kMats; ++m) load_elems<T, kV>(wrow[q][m] + k + u * kStep, wv[u][q][m]);
      MOE_UNROLL
      for (int u = 0; u < kU; ++u)
        MOE_UNROLL
        for (int rr = 0; rr < kGemvRows; ++rr) {
          if (rr >= nr) break;
          float av[kV];
          load_elems<T, kV>(arow[rr] + k + u * kStep, av);
          MOE_UNROLL
          for (int q = 0; q < kGemvFeatures; ++q)
            MOE_UNROLL
            for (int m = 0; m < kMats; ++m)
              MOE_UNROLL
              for (int v = 0; v < kV; ++v)
                acc[q * kGemvRows + rr][m] = fmaf(wv[u][q][m][v], av[v], acc[q * kGemvRows + rr][m]);
        }
    };
    int k = lane * kV;
    if constexpr (kUnroll > 1)
      for (; k + (kUnroll - 1) * kStep < k_dim; k += kUnroll * kStep) steps(k, std::integral_constant<int, kUnroll>());
    for (; k < k_dim; k += kStep) steps(k, std::integral_constant<int, 1>());

    // Lane L now holds the sums of group L / kLanesPerGroup in acc[0]; the first lane of each group
    // stores them.
    warp_reduce_scatter<kGroups, kMats>(acc, lane);
    constexpr int kLanesPerGroup = kWarpLanes / kGroups;
    const int g = lane / kLanesPerGroup, q = g / kGemvRows, rr = g % kGemvRows;
    if (lane % kLanesPerGroup == 0 && rr < nr && feat0 + q < n_features) {
      if constexpr (kGlu) {
        static_cast<T*>(out)[int64_t(r0 + rr) * out_stride + feat0 + q] = from_f32<T>(silu(acc[0][0]) * acc[0][1]);
      } else {
        static_cast<OutT*>(out)[int64_t(r0 + rr) * out_stride + feat0 + q] = from_f32<OutT>(acc[0][0]);
      }
    }
  }
}

// ---- activation conversion -----------------------------------------------------------------------

template <typename Src, typename Dst>
__global__ void __launch_bounds__(kConvertThreads)
    convert_rows_kernel(const Src* __restrict__ src, Dst* __restrict__ dst, int64_t count) {
  for (int64_t i = int64_t(blockIdx.x) * kConvertThreads + threadIdx.x; i < count;
       i += int64_t(gridDim.x) * kConvertThreads)
    dst[i] = from_f32<Dst>(to_f32(src[i]));
}

// ---- host side ---------------------------------------------------------------------------------------

size_t align256(size_t x) { return (x + 255) / 256 * 256; }
bool aligned_to(const void* p, size_t bytes) { return reinterpret_cast<uintptr_t>(p) % bytes == 0; }
size_t elem_bytes(DevDType t) { return t == DevDType::kF32 ? 4 : 2; }
bool valid_dtype(DevDType t) {
  return t == DevDType::kF32 || t == DevDType::kF16 || t == DevDType::kBF16;
}

// Limits that keep every index of the kernels in int: 2*f_pad*d, d*f and rows*max(d, f) < 2^31.
constexpr int64_t kMaxDim = int64_t(1) << 30;

struct PackedLayout {
  int64_t f_pad = 0;
  size_t w13_expert_elems = 0, w2_expert_elems = 0;
  size_t w2_offset = 0, bytes = 0;  // 0: invalid shape
};

PackedLayout packed_layout(int num_experts, int64_t d, int64_t f, DevDType dtype) {
  PackedLayout L;
  if (num_experts < 1 || d < 1 || f < 1 || d > kMaxDim || f > kMaxDim || !valid_dtype(dtype)) return L;
  L.f_pad = (f + kPackGroup - 1) / kPackGroup * kPackGroup;
  if (2 * L.f_pad * d > INT_MAX || d * f > INT_MAX) return L;  // (both factors <= 2^30: no overflow)
  L.w13_expert_elems = size_t(2 * L.f_pad * d);
  L.w2_expert_elems = size_t(d * f);
  const size_t e = elem_bytes(dtype);
  L.w2_offset = align256(size_t(num_experts) * L.w13_expert_elems * e);
  L.bytes = L.w2_offset + align256(size_t(num_experts) * L.w2_expert_elems * e);
  return L;
}

struct WorkspaceLayout {
  size_t h = 0, x = 0, bytes = 0;  // bytes 0: invalid
};

WorkspaceLayout workspace_layout(int64_t num_tokens, int64_t max_rows, int64_t d, int64_t f, DevDType w_dtype) {
  WorkspaceLayout L;
  if (num_tokens < 0 || max_rows < 0 || d < 1 || f < 1 || d > kMaxDim || f > kMaxDim || !valid_dtype(w_dtype))
    return L;
  if (max_rows > INT_MAX / f || max_rows > INT_MAX / d || num_tokens > INT_MAX / d) return L;
  const size_t e = elem_bytes(w_dtype);
  L.h = 0;
  L.x = align256(size_t(max_rows * f) * e);
  L.bytes = L.x + align256(size_t(num_tokens * d) * e);
  if (L.bytes == 0) L.bytes = 256;  // a valid shape never needs 0 bytes: 0 means invalid
  return L;
}

// Everything a launch of the two GEMMs needs, in the weight type T.
template <typename T>
struct GemmArgs {
  const T* x;              // [num_tokens, d]
  const int32_t* sorted_rows;
  const int32_t* expert_offsets;
  int num_experts;
  int64_t num_tokens, max_rows;
  const T* w13;            // [E][2*f_pad][d]
  const T* w2;             // [E][d][f]
  int64_t w13_stride, w2_stride;
  int d, f, f_pad;
  T* h;                    // [max_rows, f]
  float* y;                // [max_rows, d]
  cudaStream_t stream;
};

// flash-attention style: a runtime bool as a compile-time constant of the body.
#define MOE_BOOL_SWITCH(cond, kName, ...)   \
  [&] {                                     \
    if (cond) {                             \
      constexpr static bool kName = true;   \
      return __VA_ARGS__();                 \
    } else {                                \
      constexpr static bool kName = false;  \
      return __VA_ARGS__();                 \
    }                                       \
  }()

// M tiles of an upper bound on the grid: sum_e ceil(rows_e / bm) <= ceil(max_rows / bm) + E.
bool tile_grid(int64_t max_rows, int num_experts, int bm, int64_t n_cols, int bn, dim3* grid) {
  const int64_t m_tiles = (max_rows + bm - 1) / bm + num_experts;
  const int64_t n_tiles = (n_cols + bn - 1) / bn;
  if (m_tiles > INT_MAX || n_tiles > 65535) return false;
  *grid = dim3(unsigned(m_tiles), unsigned(n_tiles));
  return true;
}

template <typename T, int kRows>
cudaError_t run_decode_rows(const GemmArgs<T>& a) {
  constexpr int kV = int(16 / sizeof(T));
  constexpr int kPerBlock1 = kGemvWarps * gemv_features(kRows, 2), kPerBlock2 = kGemvWarps * gemv_features(kRows, 1);
  // One block row per expert that can have rows (at most max_rows of them).
  const int64_t experts = a.num_experts < a.max_rows ? a.num_experts : a.max_rows;
  if (experts > 65535) return cudaErrorInvalidValue;
  cudaError_t err = MOE_BOOL_SWITCH(a.d % kV == 0, kVec, [&] {
    return moe_launch(grouped_gemv_kernel<T, true, kVec, kRows>,
                      dim3(unsigned((a.f + kPerBlock1 - 1) / kPerBlock1), unsigned(experts)), dim3(kGemvThreads), 0,
                      a.stream, a.x, a.sorted_rows, a.expert_offsets, a.num_experts, 0, a.w13, a.w13_stride, a.d, a.f,
                      static_cast<void*>(a.h), a.f);
  });
  if (err != cudaSuccess) return err;
  return MOE_BOOL_SWITCH(a.f % kV == 0, kVec, [&] {
    return moe_launch(grouped_gemv_kernel<T, false, kVec, kRows>,
                      dim3(unsigned((a.d + kPerBlock2 - 1) / kPerBlock2), unsigned(experts)), dim3(kGemvThreads), 0,
                      a.stream, static_cast<const T*>(a.h), static_cast<const int32_t*>(nullptr), a.expert_offsets,
                      a.num_experts, 0, a.w2, a.w2_stride, a.f, a.d, static_cast<void*>(a.y), a.d);
  });
}

template <typename T>
cudaError_t run_decode(const GemmArgs<T>& a) {
  switch (gemv_rows(a.num_tokens < a.max_rows ? a.num_tokens : a.max_rows)) {
    case 1: return run_decode_rows<T, 1>(a);
    case 4: return run_decode_rows<T, 4>(a);
    case 8: return run_decode_rows<T, 8>(a);
    default: return run_decode_rows<T, 16>(a);
  }
}

template <typename T>
cudaError_t run_simt(const GemmArgs<T>& a) {
  dim3 grid1, grid2;
  if (!tile_grid(a.max_rows, a.num_experts, kSimtBlockM, 2 * int64_t(a.f_pad), kSimtBlockN, &grid1) ||
      !tile_grid(a.max_rows, a.num_experts, kSimtBlockM, a.d, kSimtBlockN, &grid2))
    return cudaErrorInvalidValue;
  cudaError_t err = moe_launch(grouped_gemm_simt_kernel<T, true>, grid1, dim3(kSimtThreads), 0, a.stream, a.x,
                               a.sorted_rows, a.expert_offsets, a.num_experts, 0, a.w13, a.w13_stride, 2 * a.f_pad,
                               a.d, a.f, static_cast<void*>(a.h), a.f);
  if (err != cudaSuccess) return err;
  return moe_launch(grouped_gemm_simt_kernel<T, false>, grid2, dim3(kSimtThreads), 0, a.stream,
                    static_cast<const T*>(a.h), static_cast<const int32_t*>(nullptr), a.expert_offsets,
                    a.num_experts, 0, a.w2, a.w2_stride, a.d, a.f, a.d, static_cast<void*>(a.y), a.d);
}

// The dynamic shared memory a block of the current device may opt in to (bytes; 0 when it cannot be
// read): 227 KB on sm_90/100, 163 KB on sm_80, 99 KB on sm_86/89/120. A cached host-side property.
int device_smem_optin() {
  int dev = 0, v = 0;
  if (cudaGetDevice(&dev) != cudaSuccess || cudaDeviceGetAttribute(&v, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return v;
}

// The opt-in for a tile's dynamic shared memory above 48 KB (cheap: a host attribute of the kernel).
template <typename Tile, typename Kernel>
cudaError_t tc_smem_opt_in(Kernel kernel) {
  if constexpr (Tile::kSmemBytes > 48 * 1024) return moe_set_max_dynamic_smem(kernel, int(Tile::kSmemBytes));
  (void)kernel;
  return cudaSuccess;
}

template <typename T, typename Tile>
cudaError_t run_tensor_cores(const GemmArgs<T>& a) {
  dim3 grid1, grid2;
  if (!tile_grid(a.max_rows, a.num_experts, Tile::kBlockM, 2 * int64_t(a.f_pad), Tile::kBlockN, &grid1) ||
      !tile_grid(a.max_rows, a.num_experts, Tile::kBlockM, a.d, Tile::kBlockN, &grid2))
    return cudaErrorInvalidValue;
  cudaError_t err = tc_smem_opt_in<Tile>(grouped_gemm_tc_kernel<T, true, Tile>);
  if (err == cudaSuccess) err = tc_smem_opt_in<Tile>(grouped_gemm_tc_kernel<T, false, Tile>);
  if (err != cudaSuccess) return err;
  err = moe_launch(grouped_gemm_tc_kernel<T, true, Tile>, grid1, dim3(Tile::kThreads), Tile::kSmemBytes, a.stream,
                               a.x, a.sorted_rows, a.expert_offsets, a.num_experts, 0, a.w13, a.w13_stride,
                               2 * a.f_pad, a.d, a.f, static_cast<void*>(a.h), a.f);
  if (err != cudaSuccess) return err;
  return moe_launch(grouped_gemm_tc_kernel<T, false, Tile>, grid2, dim3(Tile::kThreads), Tile::kSmemBytes, a.stream,
                    static_cast<const T*>(a.h), static_cast<const int32_t*>(nullptr), a.expert_offsets,
                    a.num_experts, 0, a.w2, a.w2_stride, a.d, a.f, a.d, static_cast<void*>(a.y), a.d);
}

template <typename T>
cudaError_t run_gemms(const GemmArgs<T>& a, GroupedGemmPath path) {
  switch (path) {
    case GroupedGemmPath::kDecode: return run_decode(a);
    case GroupedGemmPath::kSimt: return run_simt(a);
    case GroupedGemmPath::kTensorCores:
      if constexpr (sizeof(T) == 2) {
        if (a.max_rows < kLargeTileRows * a.num_experts) return run_tensor_cores<T, TcTileDefault>(a);
        return device_smem_optin() >= int(TcTileWide::kSmemBytes) ? run_tensor_cores<T, TcTileWide>(a)
                                                                   : run_tensor_cores<T, TcTileLarge>(a);
      }
      return cudaErrorInvalidValue;
    case GroupedGemmPath::kAuto: break;
  }
  return cudaErrorInvalidValue;
}

template <typename Src, typename Dst>
cudaError_t convert_x(const void* src, void* dst, int64_t count, cudaStream_t stream) {
  const int64_t want = (count + kConvertThreads - 1) / kConvertThreads;
  const unsigned blocks = unsigned(want < int64_t(kMaxConvertBlocks) ? want : int64_t(kMaxConvertBlocks));
  return moe_launch(convert_rows_kernel<Src, Dst>, dim3(blocks), dim3(kConvertThreads), 0, stream,
                    static_cast<const Src*>(src), static_cast<Dst*>(dst), count);
}

template <typename Dst>
cudaError_t convert_x_to(const void* x, DevDType x_dtype, void* dst, int64_t count, cudaStream_t stream) {
  switch (x_dtype) {
    case DevDType::kF32: return convert_x<float, Dst>(x, dst, count, stream);
    case DevDType::kF16: return convert_x<__half, Dst>(x, dst, count, stream);
    case DevDType::kBF16: return convert_x<__nv_bfloat16, Dst>(x, dst, count, stream);
  }
  return cudaErrorInvalidValue;
}

template <typename T>
cudaError_t launch_typed(const void* x, DevDType x_dtype, int64_t num_tokens, const int32_t* sorted_rows,
                         const int32_t* expert_offsets, int64_t max_rows, const void* packed, int num_experts,
                         int64_t d, int64_t f, const PackedLayout& P, float* y, void* workspace,
                         const WorkspaceLayout& W, GroupedGemmPath path, cudaStream_t stream) {
  const T* xw = static_cast<const T*>(x);
  const DevDType w_dtype = sizeof(T) == 4                    ? DevDType::kF32
                            : std::is_same<T, __half>::value ? DevDType::kF16
                                                             : DevDType::kBF16;
  if (x_dtype != w_dtype || !aligned_to(x, 16)) {
    T* dst = reinterpret_cast<T*>(static_cast<unsigned char*>(workspace) + W.x);
    const cudaError_t err = convert_x_to<T>(x, x_dtype, dst, num_tokens * d, stream);
    if (err != cudaSuccess) return err;
    xw = dst;
  }
  GemmArgs<T> a;
  a.x = xw;
  a.sorted_rows = sorted_rows;
  a.expert_offsets = expert_offsets;
  a.num_experts = num_experts;
  a.num_tokens = num_tokens;
  a.max_rows = max_rows;
  a.w13 = static_cast<const T*>(packed);
  a.w2 = reinterpret_cast<const T*>(static_cast<const unsigned char*>(packed) + P.w2_offset);
  a.w13_stride = int64_t(P.w13_expert_elems);
  a.w2_stride = int64_t(P.w2_expert_elems);
  a.d = int(d);
  a.f = int(f);
  a.f_pad = int(P.f_pad);
  a.h = reinterpret_cast<T*>(static_cast<unsigned char*>(workspace) + W.h);
  a.y = y;
  a.stream = stream;
  return run_gemms(a, path);
}

}  // namespace

size_t grouped_gemm_packed_bytes(int num_experts, int64_t d, int64_t f, DevDType w_dtype) {
  return packed_layout(num_experts, d, f, w_dtype).bytes;
}

cudaError_t grouped_gemm_pack(int num_experts, int64_t d, int64_t f, DevDType w_dtype,
                              const void* const* w1, const void* const* w3, const void* const* w2,
                              void* packed, size_t packed_bytes) {
  const PackedLayout L = packed_layout(num_experts, d, f, w_dtype);
  if (L.bytes == 0 || !w1 || !w3 || !w2 || !packed || packed_bytes < L.bytes) return cudaErrorInvalidValue;
  for (int e = 0; e < num_experts; ++e)
    if (!w1[e] || !w3[e] || !w2[e]) return cudaErrorInvalidValue;
  const size_t es = elem_bytes(w_dtype), row = size_t(d) * es;
  unsigned char* base = static_cast<unsigned char*>(packed);
  std::memset(base, 0, L.bytes);  // padded feature rows and alignment gaps
  for (int e = 0; e < num_experts; ++e) {
    unsigned char* w13 = base + size_t(e) * L.w13_expert_elems * es;
    for (int64_t n = 0; n < f; ++n) {
      const size_t r1 = size_t(n / kPackGroup * 2 * kPackGroup + n % kPackGroup);
      std::memcpy(w13 + r1 * row, static_cast<const unsigned char*>(w1[e]) + size_t(n) * row, row);
      std::memcpy(w13 + (r1 + kPackGroup) * row, static_cast<const unsigned char*>(w3[e]) + size_t(n) * row, row);
    }
    std::memcpy(base + L.w2_offset + size_t(e) * L.w2_expert_elems * es, w2[e], L.w2_expert_elems * es);
  }
  return cudaSuccess;
}

size_t grouped_gemm_workspace_bytes(int64_t num_tokens, int64_t max_rows, int64_t d, int64_t f,
                                    DevDType w_dtype) {
  return workspace_layout(num_tokens, max_rows, d, f, w_dtype).bytes;
}

GroupedGemmPath grouped_gemm_path(int64_t max_rows, int64_t d, int64_t f, DevDType w_dtype) {
  if (max_rows <= kDecodeMaxRows) return GroupedGemmPath::kDecode;
  if (w_dtype != DevDType::kF32 && d % 8 == 0 && f % 8 == 0) return GroupedGemmPath::kTensorCores;
  return GroupedGemmPath::kSimt;
}

GroupedGemmPath grouped_gemm_fixed_path(bool invariant, int64_t d, int64_t f, DevDType w_dtype) {
  if (!invariant) return GroupedGemmPath::kAuto;
  // the paths past the decode bound, for any max_rows (each output's K loop is the same in every tile)
  return grouped_gemm_path(kDecodeMaxRows + 1, d, f, w_dtype);
}

cudaError_t launch_grouped_gemm(const void* x, DevDType x_dtype, int64_t num_tokens,
                                const int32_t* sorted_rows, const int32_t* expert_offsets, int64_t max_rows,
                                const void* packed, int num_experts, int64_t d, int64_t f, DevDType w_dtype,
                                float* y, void* workspace, size_t workspace_bytes, cudaStream_t stream,
                                GroupedGemmPath path) {
  if (!valid_dtype(x_dtype)) return cudaErrorInvalidValue;
  const PackedLayout P = packed_layout(num_experts, d, f, w_dtype);
  const WorkspaceLayout W = workspace_layout(num_tokens, max_rows, d, f, w_dtype);
  if (P.bytes == 0 || W.bytes == 0) return cudaErrorInvalidValue;
  if (max_rows == 0 || num_tokens == 0) return cudaSuccess;  // no rows: nothing to compute
  if (!x || !expert_offsets || !packed || !y || !workspace || workspace_bytes < W.bytes)
    return cudaErrorInvalidValue;
  if (!aligned_to(packed, 16) || !aligned_to(workspace, 16) || !aligned_to(y, 16) ||
      !aligned_to(x, elem_bytes(x_dtype)))
    return cudaErrorInvalidValue;
  if (path == GroupedGemmPath::kAuto) path = grouped_gemm_path(max_rows, d, f, w_dtype);
  if (path == GroupedGemmPath::kTensorCores && (w_dtype == DevDType::kF32 || d % 8 != 0 || f % 8 != 0))
    return cudaErrorInvalidValue;
  switch (w_dtype) {
    case DevDType::kF32:
      return launch_typed<float>(x, x_dtype, num_tokens, sorted_rows, expert_offsets, max_rows, packed,
                                 num_experts, d, f, P, y, workspace, W, path, stream);
    case DevDType::kF16:
      return launch_typed<__half>(x, x_dtype, num_tokens, sorted_rows, expert_offsets, max_rows, packed,
                                  num_experts, d, f, P, y, workspace, W, path, stream);
    case DevDType::kBF16:
      return launch_typed<__nv_bfloat16>(x, x_dtype, num_tokens, sorted_rows, expert_offsets, max_rows, packed,
                                         num_experts, d, f, P, y, workspace, W, path, stream);
  }
  return cudaErrorInvalidValue;
}

// ---- linear: y = x W^T through the GEMM2 kernels, one dense expert ------------------------------------

namespace {

bool linear_shape_ok(int64_t rows, int64_t in, int64_t out) {
  return rows >= 0 && in >= 1 && out >= 1 && in <= kMaxDim && out <= kMaxDim && rows <= INT_MAX / in &&
         rows <= INT_MAX / out;
}

template <typename T, typename OutT>
cudaError_t run_linear(const T* x, int rows, int in, const T* w, int out, OutT* y, GroupedGemmPath path,
                       cudaStream_t stream) {
  const int32_t* const none = nullptr;  // no sorted_rows, no expert_offsets: dense rows [0, rows)
  void* const yv = static_cast<void*>(y);
  switch (path) {
    case GroupedGemmPath::kDecode: {
      auto launch = [&](auto rows_per_pass) {
        constexpr int kRows = decltype(rows_per_pass)::value;
        constexpr int kPerBlock = kGemvWarps * gemv_features(kRows, 1);
        const dim3 grid(unsigned((out + kPerBlock - 1) / kPerBlock), 1u);
        return MOE_BOOL_SWITCH(in % int(16 / sizeof(T)) == 0, kVec, [&] {
          return moe_launch(grouped_gemv_kernel<T, false, kVec, kRows, OutT>, grid, dim3(kGemvThreads), 0, stream, x,
                            none, none, 1, rows, w, int64_t(0), in, out, yv, out);
        });
      };
      switch (gemv_rows(rows)) {
        case 1: return launch(std::integral_constant<int, 1>());
        case 4: return launch(std::integral_constant<int, 4>());
        case 8: return launch(std::integral_constant<int, 8>());
        default: return launch(std::integral_constant<int, 16>());
      }
    }
    case GroupedGemmPath::kSimt: {
      dim3 grid;
      if (!tile_grid(rows, 0, kSimtBlockM, out, kSimtBlockN, &grid)) return cudaErrorInvalidValue;
      return moe_launch(grouped_gemm_simt_kernel<T, false, OutT>, grid, dim3(kSimtThreads), 0, stream, x, none,
                        none, 1, rows, w, int64_t(0), out, in, out, yv, out);
    }
    case GroupedGemmPath::kTensorCores:
      if constexpr (sizeof(T) == 2) {
        using Tile = TcTileDefault;
        dim3 grid;
        if (!tile_grid(rows, 0, Tile::kBlockM, out, Tile::kBlockN, &grid)) return cudaErrorInvalidValue;
        return moe_launch(grouped_gemm_tc_kernel<T, false, Tile, OutT>, grid, dim3(Tile::kThreads), Tile::kSmemBytes, stream, x,
                          none, none, 1, rows, w, int64_t(0), out, in, out, yv, out);
      }
      return cudaErrorInvalidValue;
    case GroupedGemmPath::kAuto: break;
  }
  return cudaErrorInvalidValue;
}

template <typename T>
cudaError_t launch_linear_typed(const void* x, DevDType x_dtype, int64_t rows, int64_t in, const void* w,
                                int64_t out, void* y, DevDType y_dtype, void* workspace, GroupedGemmPath path,
                                cudaStream_t stream) {
  const T* xw = static_cast<const T*>(x);
  const DevDType w_dtype = sizeof(T) == 4                    ? DevDType::kF32
                           : std::is_same<T, __half>::value ? DevDType::kF16
                                                            : DevDType::kBF16;
  if (x_dtype != w_dtype || !aligned_to(x, 16)) {
    T* dst = static_cast<T*>(workspace);
    const cudaError_t err = convert_x_to<T>(x, x_dtype, dst, rows * in, stream);
    if (err != cudaSuccess) return err;
    xw = dst;
  }
  const T* wt = static_cast<const T*>(w);
  if (y_dtype == DevDType::kF32)
    return run_linear<T, float>(xw, int(rows), int(in), wt, int(out), static_cast<float*>(y), path, stream);
  if constexpr (sizeof(T) == 2)
    return run_linear<T, T>(xw, int(rows), int(in), wt, int(out), static_cast<T*>(y), path, stream);
  return cudaErrorInvalidValue;
}

}  // namespace

GroupedGemmPath linear_path(int64_t num_tokens, int64_t in_features, int64_t out_features, DevDType w_dtype) {
  if (num_tokens <= kDecodeMaxRows) return GroupedGemmPath::kDecode;
  if (w_dtype != DevDType::kF32 && in_features % 8 == 0 && out_features % 2 == 0)
    return GroupedGemmPath::kTensorCores;
  return GroupedGemmPath::kSimt;
}

size_t linear_workspace_bytes(int64_t num_tokens, int64_t in_features, DevDType w_dtype) {
  if (!valid_dtype(w_dtype) || !linear_shape_ok(num_tokens, in_features, 1)) return 0;
  const size_t bytes = align256(size_t(num_tokens * in_features) * elem_bytes(w_dtype));
  return bytes == 0 ? 256 : bytes;
}

cudaError_t launch_linear(const void* x, DevDType x_dtype, int64_t num_tokens, int64_t in_features,
                          const void* w, DevDType w_dtype, int64_t out_features, void* y, DevDType y_dtype,
                          void* workspace, size_t workspace_bytes, cudaStream_t stream, GroupedGemmPath path) {
  if (!valid_dtype(x_dtype) || !valid_dtype(w_dtype) || !linear_shape_ok(num_tokens, in_features, out_features))
    return cudaErrorInvalidValue;
  if (y_dtype != DevDType::kF32 && y_dtype != w_dtype) return cudaErrorInvalidValue;
  if (num_tokens == 0) return cudaSuccess;
  if (!x || !w || !y || !aligned_to(w, 16) || !aligned_to(y, elem_bytes(y_dtype) * 2) ||
      !aligned_to(x, elem_bytes(x_dtype)))
    return cudaErrorInvalidValue;
  const bool convert = x_dtype != w_dtype || !aligned_to(x, 16);
  if (convert && (!workspace || !aligned_to(workspace, 16) ||
                  workspace_bytes < linear_workspace_bytes(num_tokens, in_features, w_dtype)))
    return cudaErrorInvalidValue;
  if (path == GroupedGemmPath::kAuto) path = linear_path(num_tokens, in_features, out_features, w_dtype);
  if (path == GroupedGemmPath::kTensorCores &&
      (w_dtype == DevDType::kF32 || in_features % 8 != 0 || out_features % 2 != 0))
    return cudaErrorInvalidValue;
  switch (w_dtype) {
    case DevDType::kF32:
      return launch_linear_typed<float>(x, x_dtype, num_tokens, in_features, w, out_features, y, y_dtype,
                                        workspace, path, stream);
    case DevDType::kF16:
      return launch_linear_typed<__half>(x, x_dtype, num_tokens, in_features, w, out_features, y, y_dtype,
                                         workspace, path, stream);
    case DevDType::kBF16:
      return launch_linear_typed<__nv_bfloat16>(x, x_dtype, num_tokens, in_features, w, out_features, y, y_dtype,
                                                workspace, path, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace moe
