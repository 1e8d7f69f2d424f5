// moe-kernels: the machine's peaks, measured with the instruction set the CPU kernels use, so that
// the bench can print achieved GB/s and GFLOP/s as a fraction of what this machine can do in the
// same run (DESIGN.md, "Tests and benchmarks").
//
//   measure_read_bandwidth  a streaming sum over a buffer far larger than the caches, on every
//                           thread of the compute pool; best of `reps` passes.
//   measure_fma_peak        independent chains of multiply-adds in registers on every thread.
//
// Both use AVX2/FMA when cpu_features().kernel == "avx2-fma" (the kernels' instruction set, even
// on a CPU that also has AVX-512), else portable vector code (multiply + add, no FMA).
#pragma once
#include <cstddef>
#include <cstdint>

#include "moe/status.h"

namespace moe {

// Reads `bytes` (rounded down to whole 256-byte blocks per thread; at least 1 MiB) `reps` times
// and sets *gbs to the best pass in GB/s (1e9 bytes per second). The buffer is allocated and
// first touched here, in parallel with the same split as the reads, and freed before returning.
Status measure_read_bandwidth(size_t bytes, int reps, double* gbs);

// Runs multiply-add chains on every thread for about `seconds` (after a short warm-up), in windows
// of up to 0.1 s, and sets *gflops to the best window's flops (all threads) / wall time, in GFLOP/s
// (one FMA = 2 flops per lane).
Status measure_fma_peak(double seconds, double* gflops);

namespace peak_detail {
// Per-thread kernels of the measurements; the AVX2 twins live in peak_avx2.cc (compiled with
// -mavx2 -mfma, called only after the run-time check), the portable ones in peak.cc.
constexpr int64_t kSumBlockFloats = 64;  // a sum kernel reads whole blocks of 64 floats (256 B)
constexpr int kFmaChains = 12;           // independent accumulators (covers latency x throughput)

// Sum of p[0..n), n a multiple of kSumBlockFloats, p 32-byte aligned.
float sum_portable(const float* p, int64_t n);
float sum_avx2(const float* p, int64_t n);

// `iters` steps of kFmaChains independent multiply-adds; returns a value that depends on every
// chain, so the work is observable. AVX2: one 8-lane FMA per chain and step (16 flops). Portable:
// a 4-lane multiply and add per chain and step (8 flops; 4 lanes keep 12 chains in 16 registers).
constexpr int64_t kFmaFlopsPerIterAvx2 = kFmaChains * 16;
constexpr int64_t kFmaFlopsPerIterPortable = kFmaChains * 8;
float fma_chains_portable(int64_t iters);
float fma_chains_avx2(int64_t iters);
}  // namespace peak_detail

}  // namespace moe
