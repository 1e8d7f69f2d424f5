// Machine peaks for the bench (moe/peak.h): read bandwidth and multiply-add throughput, measured on
// every thread of the compute pool with the instruction set the kernels use. The drivers here
// split the work one task per thread; the inner loops are in peak_avx2.cc (AVX2/FMA),
// peak_avx512.cc (zmm), peak_avx512bf16.cc (vdpbf16ps) and below (portable, GCC/Clang vector
// extensions).
#include "peak.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "cpu_features.h"
#include "threadpool.h"

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace moe {

namespace peak_detail {

namespace {
typedef float v4f __attribute__((vector_size(16)));
inline v4f load4(const float* p) {
  v4f v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline float hsum4(v4f v) { return (v[0] + v[1]) + (v[2] + v[3]); }
}  // namespace

float sum_portable(const float* p, int64_t n, int streams, bool prefetch) {
  v4f a[8] = {};
  const int64_t part = n / streams;
  for (int64_t i = 0; i < part; i += kSumBlockFloats)
    for (int s = 0; s < streams; ++s) {
      const float* q = p + s * part + i;
      if (prefetch) __builtin_prefetch(q + 1024, 0, 3);  // 4 KiB ahead; the block's other lines follow
      for (int j = 0; j < 16; ++j) a[j & 7] += load4(q + 4 * j);
    }
  v4f s = ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]));
  return hsum4(s);
}

float fma_chains_portable(int64_t iters) {
  const v4f m = {0.999f, 0.999f, 0.999f, 0.999f}, c = {0.001f, 0.001f, 0.001f, 0.001f};
  v4f a[kFmaChains];
  // distinct starting values, so the compiler cannot merge equal chains into one
  for (int j = 0; j < kFmaChains; ++j) a[j] = v4f{0.5f, 0.5f, 0.5f, 0.5f} + float(j) / 64;
  for (int64_t i = 0; i < iters; ++i)
    for (int j = 0; j < kFmaChains; ++j) a[j] = a[j] * m + c;
  v4f s = a[0];
  for (int j = 1; j < kFmaChains; ++j) s += a[j];
  return hsum4(s);
}

}  // namespace peak_detail

namespace {

using Clock = std::chrono::steady_clock;
inline double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

// The widest vector instructions of the kernel table in use.
enum class PeakIsa { kPortable, kAvx2, kAvx512 };
PeakIsa peak_isa() {
  switch (cpu_features().table) {
    case CpuKernel::kAvx512Bf16:
    case CpuKernel::kAvx512: return PeakIsa::kAvx512;
    case CpuKernel::kAvx2: return PeakIsa::kAvx2;
    default: return PeakIsa::kPortable;
  }
}

// Results land here so that the measured loops are observable and cannot be optimised away.
std::atomic<float> g_sink{0.0f};
void sink(float v) { g_sink.store(g_sink.load(std::memory_order_relaxed) + v, std::memory_order_relaxed); }

}  // namespace

Status measure_read_bandwidth(size_t bytes, int reps, double* gbs, std::vector<ReadProbe>* probes) {
  using namespace peak_detail;
  if (!gbs) return Status::invalid("measure_read_bandwidth: gbs must not be null");
  if (bytes < (size_t(1) << 20))
    return Status::invalid("measure_read_bandwidth: bytes must be at least 1 MiB, got " + std::to_string(bytes));
  if (reps < 1) return Status::invalid("measure_read_bandwidth: reps must be at least 1, got " + std::to_string(reps));

  const int nt = ComputePool::instance().num_threads();
  // One contiguous range per thread, a whole number of blocks for every stream count.
  constexpr int64_t kUnit = kSumBlockFloats * kMaxSumStreams;
  const int64_t per_thread = int64_t(bytes / sizeof(float)) / nt / kUnit * kUnit;
  if (per_thread == 0) return Status::invalid("measure_read_bandwidth: buffer too small for the threads");
  const int64_t n = per_thread * nt;
  const size_t alloc = size_t(n) * sizeof(float);
  // Huge pages, as the packed weights get them (panel_gemm.h, AlignedBuffer): a probe on 4 KiB
  // pages pays TLB misses that the kernels do not, and is then no ceiling.
  constexpr size_t kHugePage = size_t(2) << 20;
  const size_t padded = (alloc + kHugePage - 1) / kHugePage * kHugePage;
  float* buf = static_cast<float*>(std::aligned_alloc(kHugePage, padded));
  if (!buf) return Status::oom("measure_read_bandwidth: could not allocate " + std::to_string(alloc) + " bytes");
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  madvise(buf, padded, MADV_HUGEPAGE);  // advisory: failure is harmless
#endif

  // First touch in parallel with the same split as the reads, so pages are mapped (and, on a NUMA
  // machine, placed) before timing starts.
  parallel_for(nt, [&](int64_t t, int) {
    float* p = buf + t * per_thread;
    for (int64_t i = 0; i < per_thread; ++i) p[i] = 1e-3f;
  });

  const PeakIsa isa = peak_isa();
  const char* loads = isa == PeakIsa::kAvx512 ? "zmm loads" : isa == PeakIsa::kAvx2 ? "ymm loads" : "portable 16-byte loads";
  std::vector<float> sums(size_t(nt), 0.0f);
  double best_all = std::numeric_limits<double>::infinity();
  for (int streams : {1, 4, 8})
    for (bool prefetch : {false, true}) {
      double best = std::numeric_limits<double>::infinity();
      for (int r = 0; r < reps; ++r) {
        const auto t0 = Clock::now();
        parallel_for(nt, [&](int64_t t, int) {
          const float* p = buf + t * per_thread;
          sums[size_t(t)] = isa == PeakIsa::kAvx512 ? sum_avx512(p, per_thread, streams, prefetch)
                            : isa == PeakIsa::kAvx2 ? sum_avx2(p, per_thread, streams, prefetch)
                                                    : sum_portable(p, per_thread, streams, prefetch);
        });
        best = std::min(best, seconds_since(t0));
        for (float s : sums) sink(s);
      }
      best_all = std::min(best_all, best);
      if (probes)
        probes->push_back({std::string(loads) + ", " + std::to_string(streams) + (streams == 1 ? " stream" : " streams") +
                               " per thread" + (prefetch ? ", software prefetch" : ""),
                           double(alloc) / best / 1e9});
    }
  std::free(buf);
  *gbs = double(alloc) / best_all / 1e9;
  return Status::ok();
}

namespace {

// Runs `chains(kBlockIters)` on every thread for about `seconds`; flops_per_iter per iteration.
Status measure_chains(double seconds, float (*chains)(int64_t), int64_t flops_per_iter, const char* what, double* gflops) {
  if (!gflops) return Status::invalid(std::string(what) + ": gflops must not be null");
  if (!(seconds > 0.0) || seconds > 600.0)
    return Status::invalid(std::string(what) + ": seconds must be in (0, 600], got " + std::to_string(seconds));

  const int nt = ComputePool::instance().num_threads();
  // A block of iterations between clock reads: ~2^14 * 12 FMAs, tens of microseconds.
  constexpr int64_t kBlockIters = int64_t(1) << 14;

  // Flops per thread index; the rate is their sum over the wall time of the whole parallel_for,
  // so threads that do not overlap (a worker that starts late) can only lower it.
  std::vector<double> flops(static_cast<size_t>(nt));
  auto run = [&](double secs) {
    std::fill(flops.begin(), flops.end(), 0.0);
    const auto t0 = Clock::now();
    parallel_for(nt, [&](int64_t, int thread) {
      const auto t1 = Clock::now();
      int64_t blocks = 0;
      float acc = 0.0f;
      do {
        acc += chains(kBlockIters);
        ++blocks;
      } while (seconds_since(t1) < secs);
      flops[size_t(thread)] += double(blocks) * double(kBlockIters) * double(flops_per_iter);
      sink(acc);
    });
    const double wall = seconds_since(t0);
    double total = 0.0;
    for (double f : flops) total += f;
    return total / wall;
  };
  // Best of short windows: a peak is a maximum, and a busy machine only ever lowers a window.
  const double window = std::min(0.1, seconds);
  const int windows = std::max(1, int(seconds / window + 0.5));
  run(std::min(0.05, seconds));  // warm-up: clocks ramp, the code's pages are mapped
  double best = 0.0;
  for (int w = 0; w < windows; ++w) best = std::max(best, run(window));
  *gflops = best / 1e9;
  return Status::ok();
}

}  // namespace

const char* fma_peak_isa() {
  switch (peak_isa()) {
    case PeakIsa::kAvx512: return "zmm FMA";
    case PeakIsa::kAvx2: return "ymm FMA";
    default: return "portable multiply+add";
  }
}

Status measure_fma_peak(double seconds, double* gflops) {
  using namespace peak_detail;
  const char* op = std::getenv("MOE_PEAK_OP");
  if (op && std::strcmp(op, "bf16-dot") == 0) return measure_bf16_dot_peak(seconds, gflops);
  switch (peak_isa()) {
    case PeakIsa::kAvx512: return measure_chains(seconds, fma_chains_avx512, kFmaFlopsPerIterAvx512, "measure_fma_peak", gflops);
    case PeakIsa::kAvx2: return measure_chains(seconds, fma_chains_avx2, kFmaFlopsPerIterAvx2, "measure_fma_peak", gflops);
    default: return measure_chains(seconds, fma_chains_portable, kFmaFlopsPerIterPortable, "measure_fma_peak", gflops);
  }
}

Status measure_bf16_dot_peak(double seconds, double* gflops) {
  using namespace peak_detail;
  if (cpu_features().table != CpuKernel::kAvx512Bf16)
    return Status::unsupported(std::string("measure_bf16_dot_peak: needs the avx512-bf16 kernel table, this process runs ") +
                               cpu_features().kernel);
  return measure_chains(seconds, bf16_dot_chains_avx512bf16, kBf16DotFlopsPerIter, "measure_bf16_dot_peak", gflops);
}

}  // namespace moe
