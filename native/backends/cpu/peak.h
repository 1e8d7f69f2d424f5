// moe-kernels: the machine's peaks, measured with the instruction set the CPU kernels use, so that
// the bench can print achieved GB/s and GFLOP/s as a fraction of what this machine can do in the
// same run (DESIGN.md, "Tests and benchmarks").
//
//   measure_read_bandwidth  streaming reads over a buffer far larger than the caches, on every
//                           thread of the compute pool, by several methods; the best pass of any.
//   measure_fma_peak        independent chains of f32 multiply-adds in registers on every thread,
//                           with the widest instructions of the kernel table in use: zmm FMA for
//                           avx512 and avx512-bf16, ymm FMA for avx2-fma, portable multiply + add.
//   measure_bf16_dot_peak   the same with vdpbf16ps (avx512-bf16 table only): 2 flops per bf16 pair.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "moe/status.h"

namespace moe {

// One way of reading memory, and its best pass.
struct ReadProbe {
  std::string method;  // e.g. "zmm loads, 8 streams per thread, prefetch"
  double gbs = 0;      // best pass, GB/s (1e9 bytes per second)
};

// Reads `bytes` (rounded down to whole 2 KiB blocks per thread; at least 1 MiB) `reps` times with
// each method and sets *gbs to the best pass of all, in GB/s. A read-bandwidth figure is a
// ceiling only if no workload reads faster, so the methods cover what the kernels do: vector
// loads of the widest ISA in use, 1, 4 or 8 concurrent streams per thread, with and without
// software prefetch. The buffer is allocated on transparent huge pages where the OS gives them
// (fewer TLB misses, as the packed weights get), first touched in parallel with the same split as
// the reads, and freed before returning. `probes`, when given, receives each method's best pass.
Status measure_read_bandwidth(size_t bytes, int reps, double* gbs, std::vector<ReadProbe>* probes = nullptr);

// Runs multiply-add chains on every thread for about `seconds` (after a short warm-up), in windows
// of up to 0.1 s, and sets *gflops to the best window's flops (all threads) / wall time, in GFLOP/s
// (one FMA = 2 flops per lane). MOE_PEAK_OP=bf16-dot in the environment makes it measure the bf16
// dot peak instead (the bench's way to reach measure_bf16_dot_peak until the addon binds it).
Status measure_fma_peak(double seconds, double* gflops);

// vdpbf16ps chains, as measure_fma_peak; one instruction is 16 lanes x 2 products = 64 flops.
// Status unsupported unless the kernel table in use is avx512-bf16.
Status measure_bf16_dot_peak(double seconds, double* gflops);

// Which instructions measure_fma_peak uses under the kernel table in use: "zmm FMA", "ymm FMA"
// or "portable multiply+add".
const char* fma_peak_isa();

namespace peak_detail {
// Per-thread kernels of the measurements, one file per instruction set (peak.cc portable,
// peak_avx2.cc, peak_avx512.cc, peak_avx512bf16.cc), each called only after the run-time check.
constexpr int64_t kSumBlockFloats = 64;   // a sum reads whole blocks of 64 floats (256 B) per stream
constexpr int kMaxSumStreams = 8;         // a thread's range splits into up to 8 streams
constexpr int kFmaChains = 12;            // independent accumulators (covers latency x throughput)

// Sum of p[0..n), n a multiple of kSumBlockFloats * streams, p 64-byte aligned, read as `streams`
// equal contiguous parts in lockstep (streams in 1..kMaxSumStreams); prefetch: software prefetch
// 4 KiB ahead in each stream.
float sum_portable(const float* p, int64_t n, int streams, bool prefetch);
float sum_avx2(const float* p, int64_t n, int streams, bool prefetch);
float sum_avx512(const float* p, int64_t n, int streams, bool prefetch);

// `iters` steps of kFmaChains independent multiply-adds; returns a value that depends on every
// chain, so the work is observable. AVX2: one 8-lane FMA per chain and step (16 flops); AVX-512:
// 16 lanes (32 flops); bf16 dot: 16 lanes x 2 products (64 flops). Portable: a 4-lane multiply and
// add per chain and step (8 flops; 4 lanes keep 12 chains in 16 registers).
constexpr int64_t kFmaFlopsPerIterPortable = kFmaChains * 8;
constexpr int64_t kFmaFlopsPerIterAvx2 = kFmaChains * 16;
constexpr int64_t kFmaFlopsPerIterAvx512 = kFmaChains * 32;
constexpr int64_t kBf16DotFlopsPerIter = kFmaChains * 64;
float fma_chains_portable(int64_t iters);
float fma_chains_avx2(int64_t iters);
float fma_chains_avx512(int64_t iters);
float bf16_dot_chains_avx512bf16(int64_t iters);
}  // namespace peak_detail

}  // namespace moe
