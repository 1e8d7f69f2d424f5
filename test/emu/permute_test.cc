// test/emu: native/backends/cuda/permute.cu run in the emulator against a scalar reference written here
// from the op's semantics (DESIGN.md "permute"; the CPU twin's algorithm): a stable counting sort of
// the T*k slots by expert, capacity keeping each expert's first slots in token order. Every output
// (expert_offsets, sorted_rows, row_of, dropped, first_invalid_slot) must equal the reference
// exactly. Shapes: T = 0, 1, 33, 511, 5000 (15 blocks); k = 1, 2, 6; E = 1, 3, 8, 64, 300 (fast
// path) and 1025, 4097, 65536 (the two-pass radix path); all slots to one expert; experts with no
// slot; capacity none, 0, 1, a middle value, exactly the largest count, larger than T*k; invalid
// ids. Small shapes under every schedule, the rest under round-robin. The case count is kept low on
// purpose: run.sh also runs this file with ucontext fibers, ~50x slower at warp collectives.
#include "../../native/backends/cuda/cuda_compat.cuh"
#include "../../native/backends/cuda/launchers.h"

#include <algorithm>
#include <string>
#include <vector>

#include "check.h"
#include "schedules.h"

namespace {

using emu_test::kAllSchedules;
using emu_test::ScheduleScope;

struct Result {
  std::vector<int32_t> offsets, sorted_rows, row_of, dropped;
  int32_t first_invalid = -1;
};

// The CPU twin's algorithm (native/backends/cpu/permute.cc), with the CUDA launcher's rule for invalid
// ids: such a slot is left out (row_of -1, counted nowhere) and the smallest one is reported.
Result reference_permute(const std::vector<int32_t>& ids, int64_t T, int k, int E, int64_t capacity) {
  const int64_t S = T * k;
  Result r;
  r.offsets.assign(size_t(E) + 1, 0);
  r.sorted_rows.assign(size_t(S), -1);
  r.row_of.assign(size_t(S), -1);
  r.dropped.assign(size_t(E), 0);
  std::vector<int64_t> count(size_t(E), 0);
  for (int64_t s = 0; s < S; ++s) {
    const int32_t e = ids[size_t(s)];
    if (e < 0 || e >= E) {
      if (r.first_invalid < 0) r.first_invalid = int32_t(s);
      continue;
    }
    count[size_t(e)]++;
  }
  for (int e = 0; e < E; ++e) {
    const int64_t kept = capacity < 0 ? count[size_t(e)] : std::min<int64_t>(count[size_t(e)], capacity);
    r.offsets[size_t(e) + 1] = int32_t(r.offsets[size_t(e)] + kept);
  }
  std::vector<int64_t> fill(size_t(E), 0);
  for (int64_t s = 0; s < S; ++s) {
    const int32_t e = ids[size_t(s)];
    if (e < 0 || e >= E) continue;
    const int64_t pos = fill[size_t(e)]++;
    if (capacity >= 0 && pos >= capacity) {
      r.dropped[size_t(e)]++;
      continue;
    }
    const int32_t row = int32_t(r.offsets[size_t(e)] + pos);
    r.sorted_rows[size_t(row)] = int32_t(s / k);
    r.row_of[size_t(s)] = row;
  }
  return r;
}

enum class Fill { kRandom, kOneExpert, kSparse, kSkewed, kInvalid };

const char* fill_name(Fill f) {
  switch (f) {
    case Fill::kRandom: return "random";
    case Fill::kOneExpert: return "one-expert";
    case Fill::kSparse: return "sparse";
    case Fill::kSkewed: return "skewed";
    case Fill::kInvalid: return "invalid";
  }
  return "?";
}

std::vector<int32_t> make_ids(int64_t T, int k, int E, Fill fill, uint64_t seed) {
  std::vector<int32_t> ids(size_t(T * k));
  uint64_t s = seed * 0x9E3779B97F4A7C15ull + 1;
  auto next = [&]() {
    s = s * 6364136223846793005ull + 1442695040888963407ull;
    return uint32_t(s >> 33);
  };
  for (size_t i = 0; i < ids.size(); ++i) {
    switch (fill) {
      case Fill::kRandom: ids[i] = int32_t(next() % uint32_t(E)); break;
      case Fill::kOneExpert: ids[i] = E - 1; break;
      // Only every 7th expert (from 2) receives slots: most experts stay empty.
      case Fill::kSparse: ids[i] = E <= 2 ? 0 : int32_t(2 + 7 * (next() % uint32_t((E - 3) / 7 + 1))); break;
      // Half the slots to expert 0 or 1, the rest spread: long runs of one expert in a block.
      case Fill::kSkewed:
        ids[i] = int32_t(next() % 2 ? next() % uint32_t(std::min(E, 2)) : next() % uint32_t(E));
        break;
      case Fill::kInvalid: {
        const uint32_t u = next() % 16;
        ids[i] = u == 0   ? -1 - int32_t(next() % 3)
                 : u == 1 ? E + int32_t(next() % 3)
                          : int32_t(next() % uint32_t(E));
        break;
      }
    }
  }
  return ids;
}

template <typename T>
T* device_copy(const std::vector<T>& host, size_t min_elems = 1) {
  void* p = nullptr;
  const size_t n = std::max(host.size(), min_elems);
  if (cudaMalloc(&p, n * sizeof(T)) != cudaSuccess) return nullptr;
  if (!host.empty()) cudaMemcpy(p, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice);
  return static_cast<T*>(p);
}

template <typename T>
std::vector<T> host_copy(const T* dev, size_t n) {
  std::vector<T> h(n);
  if (n) cudaMemcpy(h.data(), dev, n * sizeof(T), cudaMemcpyDeviceToHost);
  return h;
}

// Runs the launcher through device buffers (outputs pre-filled with a pattern that is neither -1 nor
// a valid index, so a missing write shows) and returns the outputs.
cudaError_t run_permute(const std::vector<int32_t>& ids, int64_t T, int k, int E, int64_t capacity, Result* out) {
  const size_t S = size_t(T * k);
  const size_t ws_bytes = moe::permute_workspace_bytes(T, k, E);
  if (ws_bytes == 0) return cudaErrorInvalidValue;
  int32_t* d_ids = device_copy(ids);
  const int32_t garbage = 0x5a5a5a5a;
  const std::vector<int32_t> garbage_s(S, garbage), garbage_e(size_t(E) + 1, garbage), garbage_1(1, garbage);
  int32_t* d_offsets = device_copy(garbage_e);
  int32_t* d_sorted = device_copy(garbage_s);
  int32_t* d_row_of = device_copy(garbage_s);
  int32_t* d_dropped = device_copy(garbage_e);
  int32_t* d_invalid = device_copy(garbage_1);
  void* d_ws = nullptr;
  cudaMalloc(&d_ws, ws_bytes);
  const cudaError_t err = moe::launch_permute(d_ids, T, k, E, capacity, d_offsets, d_sorted, d_row_of, d_dropped,
                                              d_invalid, d_ws, ws_bytes, nullptr);
  if (err == cudaSuccess) {
    out->offsets = host_copy(d_offsets, size_t(E) + 1);
    out->sorted_rows = host_copy(d_sorted, S);
    out->row_of = host_copy(d_row_of, S);
    out->dropped = host_copy(d_dropped, size_t(E));
    out->first_invalid = host_copy(d_invalid, 1)[0];
  }
  for (int32_t* p : {d_ids, d_offsets, d_sorted, d_row_of, d_dropped, d_invalid}) cudaFree(p);
  cudaFree(d_ws);
  return err;
}

bool same_vector(const std::string& what, const char* name, const std::vector<int32_t>& got,
                 const std::vector<int32_t>& want) {
  for (size_t i = 0; i < want.size(); ++i) {
    if (got[i] != want[i]) {
      emu_test::fail(__FILE__, __LINE__, what + ": " + name + "[" + std::to_string(i) + "] = " +
                                             std::to_string(got[i]) + ", want " + std::to_string(want[i]));
      return false;
    }
  }
  return true;
}

// The capacities a case runs with: none, 0, 1, a middle value, exactly the largest count, more than
// every count.
std::vector<int64_t> capacities(const std::vector<int32_t>& ids, int E) {
  std::vector<int64_t> count(size_t(E), 0);
  for (int32_t e : ids)
    if (e >= 0 && e < E) count[size_t(e)]++;
  const int64_t largest = count.empty() ? 0 : *std::max_element(count.begin(), count.end());
  const int64_t middle = (int64_t(ids.size()) + E - 1) / E;
  return {-1, 0, 1, middle, largest, int64_t(ids.size()) + 5};
}

bool check_case(int64_t T, int k, int E, Fill fill, int64_t capacity) {
  const std::vector<int32_t> ids = make_ids(T, k, E, fill, uint64_t(T * 1009 + k * 31 + E));
  const std::string what = "T=" + std::to_string(T) + " k=" + std::to_string(k) + " E=" + std::to_string(E) +
                           " cap=" + std::to_string(capacity) + " " + fill_name(fill) + " (" +
                           moe_emu::schedule_name(moe_emu::schedule()) + ")";
  Result got;
  const cudaError_t err = run_permute(ids, T, k, E, capacity, &got);
  if (err != cudaSuccess) {
    emu_test::fail(__FILE__, __LINE__, what + ": " + moe_error_string(err));
    return false;
  }
  const Result want = reference_permute(ids, T, k, E, capacity);
  if (got.first_invalid != want.first_invalid) {
    emu_test::fail(__FILE__, __LINE__, what + ": first_invalid_slot " + std::to_string(got.first_invalid) +
                                           ", want " + std::to_string(want.first_invalid));
    return false;
  }
  return same_vector(what, "expert_offsets", got.offsets, want.offsets) &&
         same_vector(what, "sorted_rows", got.sorted_rows, want.sorted_rows) &&
         same_vector(what, "row_of", got.row_of, want.row_of) &&
         same_vector(what, "dropped", got.dropped, want.dropped);
}

bool check_all_capacities(int64_t T, int k, int E, Fill fill) {
  const std::vector<int32_t> ids = make_ids(T, k, E, fill, uint64_t(T * 1009 + k * 31 + E));
  for (int64_t cap : capacities(ids, E))
    if (!check_case(T, k, E, fill, cap)) return false;
  return true;
}


const int kFastExperts[] = {1, 3, 8, 64, 300};
const int kTopKs[] = {1, 2, 6};
const Fill kValidFills[] = {Fill::kRandom, Fill::kOneExpert, Fill::kSparse, Fill::kSkewed};

}  // namespace

// Small shapes (one block) under every schedule: the synchronisation of every kernel, both paths.
TEST(permute_small_every_schedule) {
  for (moe_emu::Schedule s : kAllSchedules) {
    ScheduleScope scope(s, 77);
    for (int E : kFastExperts)
      for (int k : kTopKs)
        if (!check_case(33, k, E, Fill::kRandom, -1)) return;
    for (int E : kFastExperts)
      if (!check_case(1, 2, E, Fill::kSparse, 1)) return;
    if (!check_case(33, 6, 1025, Fill::kRandom, -1) || !check_case(33, 2, 4097, Fill::kSkewed, 1)) return;
  }
}

// Fast path (E <= 1024), round-robin: every fill, every capacity (none, 0, 1, middle, exactly the
// largest count, more than T*k) at T = 33; none at T = 1; none and exact at T = 511 (two blocks
// when k = 6). The fill rotates with (E, k), so each E meets every fill. T = 0: offsets only.
TEST(permute_fast_path_fills_and_capacities) {
  int rotation = 0;
  for (int E : kFastExperts) {
    if (!check_case(0, 2, E, Fill::kRandom, -1)) return;
    for (int k : kTopKs) {
      const Fill a = kValidFills[rotation % 4], b = kValidFills[(rotation + 2) % 4];
      ++rotation;
      if (!check_case(1, k, E, b, -1) || !check_all_capacities(33, k, E, a)) return;
      const std::vector<int64_t> caps = capacities(make_ids(511, k, E, b, uint64_t(511 * 1009 + k * 31 + E)), E);
      if (!check_case(511, k, E, b, caps[0]) || !check_case(511, k, E, b, caps[4])) return;
    }
  }
}

// T = 5000: 5 blocks (k = 2; each bucket's counts scanned by one thread) and 15 blocks (k = 6; by a
// warp), so the per-block bases and the scan over blocks matter.
TEST(permute_many_blocks) {
  struct Case { int k, E; Fill fill; int cap_index; };
  // Dropless, and a middle capacity (the two skewed experts drop slots in every block).
  const Case cases[] = {{2, 8, Fill::kRandom, 0}, {6, 300, Fill::kSkewed, 3}};
  for (const Case& c : cases) {
    const std::vector<int32_t> ids = make_ids(5000, c.k, c.E, c.fill, uint64_t(5000 * 1009 + c.k * 31 + c.E));
    if (!check_case(5000, c.k, c.E, c.fill, capacities(ids, c.E)[size_t(c.cap_index)])) return;
  }
}

// E > 1024: the two radix passes (E = 65536: 17 key bits, 9 + 8), round-robin.
TEST(permute_general_path_large_expert_counts) {
  int rotation = 0;
  for (int E : {1025, 4097}) {
    if (!check_case(0, 2, E, Fill::kRandom, -1)) return;
    for (int k : kTopKs)
      for (int64_t T : {33, 511}) {
        const Fill f = kValidFills[rotation++ % 4];
        const std::vector<int64_t> caps = capacities(make_ids(T, k, E, f, uint64_t(T * 1009 + k * 31 + E)), E);
        if (!check_case(T, k, E, f, caps[0]) || !check_case(T, k, E, f, caps[size_t(1 + rotation % 5)])) return;
      }
  }
  const std::vector<int64_t> caps =
      capacities(make_ids(511, 6, 65536, Fill::kOneExpert, uint64_t(511 * 1009 + 6 * 31 + 65536)), 65536);
  if (!check_case(511, 6, 65536, Fill::kSparse, -1) || !check_case(511, 6, 65536, Fill::kOneExpert, caps[3]))
    return;
}

// Ids outside [0, E): left out, nothing written out of bounds, the first reported. Both paths.
TEST(permute_invalid_ids) {
  for (int E : {3, 64, 1025, 65536}) {
    if (!check_case(33, 6, E, Fill::kInvalid, -1) || !check_case(511, 1, E, Fill::kInvalid, 1)) return;
  }
  // One bad id late in a multi-block input, then also one in slot 0.
  for (int E : {8, 2000}) {
    std::vector<int32_t> ids = make_ids(1100, 2, E, Fill::kRandom, 5);
    ids[2100] = E;
    Result got;
    CHECK_OK(run_permute(ids, 1100, 2, E, -1, &got));
    CHECK_EQ(got.first_invalid, 2100);
    CHECK_EQ(got.row_of[2100], -1);
    CHECK_EQ(got.offsets[size_t(E)], 2199);
    CHECK_EQ(got.sorted_rows[2199], -1);
    ids[0] = -7;
    CHECK_OK(run_permute(ids, 1100, 2, E, -1, &got));
    CHECK_EQ(got.first_invalid, 0);
  }
}

TEST(permute_rejects_bad_arguments) {
  std::vector<int32_t> buf(4096, 0);
  int32_t* p = buf.data();
  const size_t ws = moe::permute_workspace_bytes(4, 2, 8);
  CHECK(ws > 0);
  CHECK_EQ(moe::permute_workspace_bytes(-1, 2, 8), size_t(0));
  CHECK_EQ(moe::permute_workspace_bytes(4, 0, 8), size_t(0));
  CHECK_EQ(moe::permute_workspace_bytes(4, 2, 0), size_t(0));
  CHECK_EQ(moe::permute_workspace_bytes(4, 2, 1 << 20), size_t(0));
  CHECK_EQ(moe::permute_workspace_bytes(int64_t(1) << 30, 2, 8), size_t(0));
  CHECK(moe::permute_workspace_bytes(4, 2, (1 << 20) - 1) > 0);
  CHECK(moe::launch_permute(p, 4, 2, 8, -1, p, p, p, p, p, p, ws - 1, nullptr) == cudaErrorInvalidValue);
  CHECK(moe::launch_permute(p, 4, 2, 8, -1, p, p, p, p, p, nullptr, ws, nullptr) == cudaErrorInvalidValue);
  CHECK(moe::launch_permute(nullptr, 4, 2, 8, -1, p, p, p, p, p, p, ws, nullptr) == cudaErrorInvalidValue);
  CHECK(moe::launch_permute(p, 4, 2, 8, -1, nullptr, p, p, p, p, p, ws, nullptr) == cudaErrorInvalidValue);
  CHECK(moe::launch_permute(p, 4, 2, 8, -1, p, nullptr, p, p, p, p, ws, nullptr) == cudaErrorInvalidValue);
  CHECK(moe::launch_permute(p, 4, 2, 8, -1, p, p, nullptr, p, p, p, ws, nullptr) == cudaErrorInvalidValue);
  CHECK(moe::launch_permute(p, 4, 0, 8, -1, p, p, p, p, p, p, ws, nullptr) == cudaErrorInvalidValue);
  CHECK(moe::launch_permute(p, -1, 2, 8, -1, p, p, p, p, p, p, ws, nullptr) == cudaErrorInvalidValue);
  CHECK(moe::launch_permute(p, 4, 2, 0, -1, p, p, p, p, p, p, ws, nullptr) == cudaErrorInvalidValue);
  // dropped and first_invalid_slot may be null.
  CHECK_OK(moe::launch_permute(p, 4, 2, 8, 1, p + 100, p + 200, p + 300, nullptr, nullptr, p + 1024, ws, nullptr));
  CHECK_EQ(p[100 + 8], 1);  // the 8 ids are all 0 and the capacity 1: one row in all
  // T = 0: no ids, rows or row_of needed; the offsets, dropped and the invalid slot are written.
  std::fill(buf.begin(), buf.end(), 9);
  CHECK_OK(moe::launch_permute(nullptr, 0, 2, 3, -1, p, nullptr, nullptr, p + 10, p + 20, p + 1024,
                               moe::permute_workspace_bytes(0, 2, 3), nullptr));
  CHECK_EQ(p[0], 0);
  CHECK_EQ(p[3], 0);
  CHECK_EQ(p[10], 0);
  CHECK_EQ(p[12], 0);
  CHECK_EQ(p[20], -1);
}

// Rows of an expert ascend by token, whatever the schedule and however the slots spread over blocks.
TEST(permute_is_stable_and_deterministic) {
  const std::vector<int32_t> ids = make_ids(1500, 2, 5, Fill::kSkewed, 11);
  Result first;
  CHECK_OK(run_permute(ids, 1500, 2, 5, -1, &first));
  for (int e = 0; e < 5; ++e)
    for (int32_t r = first.offsets[size_t(e)] + 1; r < first.offsets[size_t(e) + 1]; ++r)
      if (first.sorted_rows[size_t(r)] < first.sorted_rows[size_t(r) - 1]) {
        CHECK(first.sorted_rows[size_t(r)] >= first.sorted_rows[size_t(r) - 1]);
        return;
      }
  for (moe_emu::Schedule s : kAllSchedules) {
    ScheduleScope scope(s, 77);
    Result again;
    CHECK_OK(run_permute(ids, 1500, 2, 5, -1, &again));
    CHECK(again.offsets == first.offsets && again.sorted_rows == first.sorted_rows &&
          again.row_of == first.row_of);
  }
}

// Up to one tile of slots (2048) the fast path is one launch (permute_one_block_kernel), from 2049
// the four of the multi-block path; both give the reference at the boundary, with the most experts
// the fast path takes (E = 1024: the lone block's largest shared memory) and with capacities.
TEST(permute_one_block_up_to_a_tile) {
  struct Case { int64_t T; int k, E; uint64_t launches; };
  const Case cases[] = {{1, 2, 8, 1}, {1024, 2, 8, 1}, {2048, 1, 1024, 1}, {683, 3, 64, 4}, {2049, 1, 8, 4}};
  for (const Case& c : cases) {
    const std::vector<int32_t> ids = make_ids(c.T, c.k, c.E, Fill::kSkewed, uint64_t(c.T * 1009 + c.k * 31 + c.E));
    Result r;
    const uint64_t before = moe_emu::launch_count();
    CHECK_OK(run_permute(ids, c.T, c.k, c.E, -1, &r));
    CHECK_EQ(moe_emu::launch_count() - before, c.launches);
    const std::vector<int64_t> caps = capacities(ids, c.E);
    for (size_t i : {size_t(0), size_t(1), size_t(3)})
      if (!check_case(c.T, c.k, c.E, Fill::kSkewed, caps[i])) return;
  }
}
