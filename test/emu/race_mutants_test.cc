// test/emu: the shared-memory race detector against mutants of the shipped kernels (race_mutant.cu:
// the kernel files compiled unchanged, one synchronisation removed or moved by a macro). Each mutant
// must be reported, with the kernel file's lines, under every schedule, while the real kernel runs
// clean on the same input. The refill-before-the-barrier mutant is the case the schedules alone
// missed: warps that advance in lock step never see the overwritten stage; the drift schedule (each
// warp to its next barrier) shows it in the values too.
#include "../../native/backends/cuda/cuda_compat.cuh"
#include "../../native/backends/cuda/launchers.h"

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "check.h"
#include "dev_dtype.h"
#include "race_mutants.h"
#include "schedules.h"

namespace {

using emu_test::kAllSchedules;
using emu_test::RaceCheckScope;
using emu_test::ScheduleScope;
using moe::DevDType;
using moe::GroupedGemmPath;

struct Buffer {
  std::vector<unsigned char> mem;
  explicit Buffer(size_t n) : mem(n + 256) {}
  void* data() { return mem.data() + (256 - reinterpret_cast<uintptr_t>(mem.data()) % 256) % 256; }
};

// One tensor-core problem: T=40 tokens, k=2 of E=3 experts, d=f=128 (4 k-tiles per GEMM: the
// 3-stage pipeline refills), bf16.
struct GemmProblem {
  static constexpr int64_t T = 40, d = 128, f = 128;
  static constexpr int k = 2, E = 3;
  std::vector<int32_t> offsets, sorted_rows;
  Buffer x{size_t(T * d) * 2}, packed{0}, ws{0}, y{size_t(T * k * d) * 4};
  size_t ws_bytes = 0;

  GemmProblem() {
    uint64_t s = 42;
    auto next = [&]() {
      s = s * 6364136223846793005ull + 1442695040888963407ull;
      return double(s >> 11) / double(1ull << 53);
    };
    std::vector<int32_t> ids(size_t(T * k));
    for (int64_t t = 0; t < T; ++t) {
      ids[size_t(t * k)] = int32_t(next() * E);
      ids[size_t(t * k + 1)] = (ids[size_t(t * k)] + 1 + int32_t(next() * (E - 1))) % E;
    }
    offsets.assign(E + 1, 0);
    for (int32_t e : ids) offsets[size_t(e) + 1]++;
    for (int e = 0; e < E; ++e) offsets[size_t(e) + 1] += offsets[size_t(e)];
    sorted_rows.assign(ids.size(), -1);
    std::vector<int32_t> fill(offsets.begin(), offsets.end() - 1);
    for (size_t i = 0; i < ids.size(); ++i) sorted_rows[size_t(fill[size_t(ids[i])]++)] = int32_t(i / k);
    for (int64_t i = 0; i < T * d; ++i) emu_test::store_as(x.data(), size_t(i), float(next() * 2 - 1), DevDType::kBF16);
    std::vector<std::vector<uint16_t>> w(3 * E);
    std::vector<const void*> w1, w3, w2;
    for (auto& m : w) {
      m.resize(size_t(d * f));
      for (auto& v : m) emu_test::store_as(&v, 0, float((next() * 2 - 1) * 0.2), DevDType::kBF16);
    }
    for (int e = 0; e < E; ++e) {
      w1.push_back(w[size_t(3 * e)].data());
      w3.push_back(w[size_t(3 * e + 1)].data());
      w2.push_back(w[size_t(3 * e + 2)].data());
    }
    packed = Buffer(moe::grouped_gemm_packed_bytes(E, d, f, DevDType::kBF16));
    moe::grouped_gemm_pack(E, d, f, DevDType::kBF16, w1.data(), w3.data(), w2.data(), packed.data(),
                           packed.mem.size() - 256);
    ws_bytes = moe::grouped_gemm_workspace_bytes(T, T * k, d, f, DevDType::kBF16);
    ws = Buffer(ws_bytes);
  }

  RaceMutantGemm args() {
    return RaceMutantGemm{x.data(), int(DevDType::kBF16), T, sorted_rows.data(), offsets.data(), T * k,
                          packed.data(), E, d, f, int(DevDType::kBF16), static_cast<float*>(y.data()),
                          ws.data(), ws_bytes, int(GroupedGemmPath::kTensorCores)};
  }
  // y after a run of `launch` (the real kernels: null).
  std::vector<float> run(cudaError_t (*launch)(const RaceMutantGemm&), cudaError_t* err) {
    RaceMutantGemm a = args();
    std::memset(a.y, 0, size_t(T * k * d) * 4);
    *err = launch ? launch(a)
                  : moe::launch_grouped_gemm(a.x, DevDType::kBF16, T, a.sorted_rows, a.expert_offsets, a.max_rows,
                                             a.packed, E, d, f, DevDType::kBF16, a.y, a.workspace, a.workspace_bytes,
                                             nullptr, GroupedGemmPath::kTensorCores);
    return std::vector<float>(a.y, a.y + T * k * d);
  }
};

// Expects a race report naming `file` (and `needle`) under every schedule.
void expect_race(const char* what, cudaError_t err, const char* file, const char* needle) {
  const std::string msg = moe_error_string(err);
  if (err != cudaErrorLaunchFailure || msg.find("shared-memory race") == std::string::npos ||
      msg.find(file) == std::string::npos || msg.find(needle) == std::string::npos)
    emu_test::fail(__FILE__, __LINE__, std::string(what) + " (" + moe_emu::schedule_name(moe_emu::schedule()) +
                                           "): expected a race at " + file + " mentioning '" + needle + "', got " +
                                           cudaGetErrorName(err) + ": " + msg);
}

void gemm_mutant_is_caught(cudaError_t (*mutant)(const RaceMutantGemm&), const char* what, const char* needle) {
  GemmProblem p;
  RaceCheckScope on(true);
  for (moe_emu::Schedule s : kAllSchedules) {
    ScheduleScope scope(s, 17);
    cudaError_t err;
    p.run(nullptr, &err);
    CHECK_OK(err);  // the real kernels: no race on this input
    p.run(mutant, &err);
    expect_race(what, err, "native/backends/cuda/grouped_gemm.cu:", needle);
    if (s == kAllSchedules[0]) std::printf("     %s: %s\n", what, moe_error_string(err));  // a sample report
  }
}

}  // namespace

TEST(race_mutant_grouped_gemm_refill_before_barrier_is_caught) {
  gemm_mutant_is_caught(race_mutant_gemm_refill_early, "refill before the barrier", "cp.async write");
  // Without the detector: lock-step schedules compute the right values (the blind spot the
  // detector closes); the drift schedule lets a warp overwrite a stage another still has to read.
  GemmProblem p;
  RaceCheckScope off(false);
  cudaError_t err;
  const std::vector<float> want = p.run(nullptr, &err);
  CHECK_OK(err);
  {
    ScheduleScope rr(moe_emu::Schedule::kRoundRobin);
    CHECK(p.run(race_mutant_gemm_refill_early, &err) == want);
    CHECK_OK(err);
  }
  ScheduleScope drift(moe_emu::Schedule::kDrift, 17);
  CHECK(p.run(race_mutant_gemm_refill_early, &err) != want);
  CHECK_OK(err);
}

TEST(race_mutant_grouped_gemm_missing_syncthreads_is_caught) {
  gemm_mutant_is_caught(race_mutant_gemm_no_barrier, "missing __syncthreads", "__syncthreads");
}

TEST(race_mutant_permute_missing_syncwarp_is_caught) {
  RaceCheckScope on(true);
  const int64_t T = 300;
  const int k = 2, E = 8;
  std::vector<int32_t> ids(size_t(T * k));
  for (size_t i = 0; i < ids.size(); ++i) ids[i] = int32_t((i * 7 + i / 5) % E);
  const size_t ws_bytes = moe::permute_workspace_bytes(T, k, E);
  std::vector<int32_t> offsets(E + 1), sorted(ids.size()), row_of(ids.size()), dropped(E), invalid(1);
  Buffer ws(ws_bytes);
  RaceMutantPermute a{ids.data(), T, k, E, -1, offsets.data(), sorted.data(), row_of.data(), dropped.data(),
                      invalid.data(), ws.data(), ws_bytes};
  for (moe_emu::Schedule s : kAllSchedules) {
    ScheduleScope scope(s, 23);
    CHECK_OK(moe::launch_permute(a.topk_ids, T, k, E, -1, a.expert_offsets, a.sorted_rows, a.row_of, a.dropped,
                                 a.first_invalid_slot, a.workspace, a.workspace_bytes, nullptr));
    const cudaError_t err = race_mutant_permute_no_syncwarp(a);
    expect_race("missing __syncwarp", err, "native/backends/cuda/permute.cu:", "no __syncwarp naming both lanes");
    if (s == kAllSchedules[0]) std::printf("     missing __syncwarp: %s\n", moe_error_string(err));
  }
}
