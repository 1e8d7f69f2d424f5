// test/emu: native/backends/cuda/routing.cu run in the emulator against a scalar reference written here
// from the op's semantics (DESIGN.md "route"): softmax in f32, top-k by logit with ties to the lower
// expert index and NaN last, ids by decreasing weight, optional renormalisation. Shapes: E = 1, 3, 8,
// 16, 64 and odd ones (5, 33, 100); k = 1, 2, 6; T = 1, 33, 511; deliberate ties and NaNs; every
// schedule.
#include "../../native/backends/cuda/cuda_compat.cuh"
#include "../../native/backends/cuda/launchers.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <string>
#include <vector>

#include "check.h"
#include "schedules.h"

namespace {

using emu_test::kAllSchedules;
using emu_test::ScheduleScope;

struct Reference {
  std::vector<int32_t> ids;
  std::vector<double> weights;
};

// Scalar reference in double; the ranking compares the f32 logits themselves (exact).
Reference reference_softmax_topk(const std::vector<float>& logits, int64_t T, int E, int k, bool renormalize) {
  Reference r{std::vector<int32_t>(size_t(T * k)), std::vector<double>(size_t(T * k))};
  std::vector<int> order(static_cast<size_t>(E));
  for (int64_t t = 0; t < T; ++t) {
    const float* row = &logits[size_t(t * E)];
    double mx = -INFINITY;
    for (int e = 0; e < E; ++e)
      if (!std::isnan(row[e])) mx = std::max(mx, double(row[e]));
    double sum = 0;
    for (int e = 0; e < E; ++e) sum += std::exp(double(row[e]) - mx);
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int a, int b) {
      const bool na = std::isnan(row[a]), nb = std::isnan(row[b]);
      if (na != nb) return nb;
      return !na && row[a] > row[b];  // stable: equal logits (and NaNs) keep index order
    });
    double kept = 0;
    for (int j = 0; j < k; ++j) {
      r.ids[size_t(t * k + j)] = order[size_t(j)];
      r.weights[size_t(t * k + j)] = std::exp(double(row[order[size_t(j)]]) - mx) / sum;
      kept += r.weights[size_t(t * k + j)];
    }
    if (renormalize)
      for (int j = 0; j < k; ++j) r.weights[size_t(t * k + j)] /= kept;
  }
  return r;
}

enum class Fill { kRandom, kCoarseTies, kAllEqual, kWithNaN };

std::vector<float> make_logits(int64_t T, int E, Fill fill, uint64_t seed) {
  std::vector<float> x(size_t(T * E));
  uint64_t s = seed;
  auto next = [&]() {
    s = s * 6364136223846793005ull + 1442695040888963407ull;
    return double(s >> 11) / double(1ull << 53);
  };
  for (float& v : x) {
    switch (fill) {
      case Fill::kRandom: v = float((next() * 2 - 1) * 4); break;
      case Fill::kCoarseTies: v = float(int(next() * 4)) * 0.5f; break;  // 4 values: ties everywhere
      case Fill::kAllEqual: v = 1.25f; break;
      case Fill::kWithNaN: v = next() < 0.2 ? NAN : float(int(next() * 3)); break;
    }
  }
  return x;
}

const char* fill_name(Fill f) {
  switch (f) {
    case Fill::kRandom: return "random";
    case Fill::kCoarseTies: return "ties";
    case Fill::kAllEqual: return "all-equal";
    case Fill::kWithNaN: return "nan";
  }
  return "?";
}

// Runs one configuration and compares; returns false (after recording) on the first mismatch.
bool check_case(int64_t T, int E, int k, bool renormalize, Fill fill) {
  const std::vector<float> logits = make_logits(T, E, fill, uint64_t(T * 131 + E * 7 + k));
  std::vector<int32_t> ids(size_t(T * k), -7);
  std::vector<float> w(size_t(T * k), -7.f);
  const std::string what = "T=" + std::to_string(T) + " E=" + std::to_string(E) + " k=" + std::to_string(k) +
                           (renormalize ? " renorm " : " ") + fill_name(fill) + " (" +
                           moe_emu::schedule_name(moe_emu::schedule()) + ")";
  const cudaError_t e = moe::launch_softmax_topk(logits.data(), T, E, k, renormalize, ids.data(), w.data(), nullptr);
  if (e != cudaSuccess) {
    emu_test::fail(__FILE__, __LINE__, what + ": " + moe_error_string(e));
    return false;
  }
  const Reference ref = reference_softmax_topk(logits, T, E, k, renormalize);
  for (size_t i = 0; i < ids.size(); ++i) {
    if (ids[i] != ref.ids[i]) {
      emu_test::fail(__FILE__, __LINE__, what + ": token " + std::to_string(i / size_t(k)) + " slot " +
                                             std::to_string(i % size_t(k)) + " id " + std::to_string(ids[i]) +
                                             ", want " + std::to_string(ref.ids[i]));
      return false;
    }
    const double got = w[i], want = ref.weights[i];
    const bool ok = std::isnan(want) ? std::isnan(got) : std::fabs(got - want) <= 1e-6 + 1e-5 * std::fabs(want);
    if (!ok) {
      emu_test::fail(__FILE__, __LINE__, what + ": weight " + std::to_string(i) + " = " + emu_test::describe(got) +
                                             ", want " + emu_test::describe(want));
      return false;
    }
  }
  return true;
}


// Every (E, k) under every schedule at T = 1 and 33 with every fill; T = 511 (several blocks,
// a partial last block) under round-robin only, which keeps the suite fast: the schedule matters
// for a kernel's synchronisation, which the small shapes already exercise in full.
void sweep(const std::vector<int>& experts) {
  const int ks[] = {1, 2, 6};
  const Fill fills[] = {Fill::kRandom, Fill::kCoarseTies, Fill::kAllEqual, Fill::kWithNaN};
  for (moe_emu::Schedule s : kAllSchedules) {
    ScheduleScope scope(s);
    for (int E : experts)
      for (int k : ks) {
        if (k > E) continue;
        for (int64_t T : {1, 33})
          for (Fill f : fills)
            for (bool renorm : {true, false})
              if (!check_case(T, E, k, renorm, f)) return;
        if (s == moe_emu::Schedule::kRoundRobin &&
            !(check_case(511, E, k, true, Fill::kRandom) && check_case(511, E, k, false, Fill::kCoarseTies)))
          return;
      }
  }
}

}  // namespace

TEST(routing_compile_time_experts_8_16_64) { sweep({8, 16, 64}); }

TEST(routing_general_experts_1_3_5_33_100) { sweep({1, 3, 5, 33, 100}); }

TEST(routing_rejects_bad_arguments) {
  std::vector<float> logits(64, 0.f);
  std::vector<int32_t> ids(64);
  std::vector<float> w(64);
  CHECK(moe::launch_softmax_topk(logits.data(), 4, 8, 0, true, ids.data(), w.data(), nullptr) == cudaErrorInvalidValue);
  CHECK(moe::launch_softmax_topk(logits.data(), 4, 8, 9, true, ids.data(), w.data(), nullptr) == cudaErrorInvalidValue);
  CHECK(moe::launch_softmax_topk(logits.data(), 4, 0, 1, true, ids.data(), w.data(), nullptr) == cudaErrorInvalidValue);
  CHECK(moe::launch_softmax_topk(logits.data(), -1, 8, 2, true, ids.data(), w.data(), nullptr) == cudaErrorInvalidValue);
  CHECK(moe::launch_softmax_topk(nullptr, 4, 8, 2, true, ids.data(), w.data(), nullptr) == cudaErrorInvalidValue);
  CHECK_OK(moe::launch_softmax_topk(logits.data(), 0, 8, 2, true, ids.data(), w.data(), nullptr));
}

TEST(routing_ties_go_to_the_lower_expert) {
  // Experts 5 and 2 tie for the top, 7 and 1 for the next: ids must come out 2, 5, 1, 7.
  std::vector<float> logits = {0.f, 1.f, 3.f, -1.f, 0.5f, 3.f, 0.f, 1.f};
  std::vector<int32_t> ids(4);
  std::vector<float> w(4);
  CHECK_OK(moe::launch_softmax_topk(logits.data(), 1, 8, 4, false, ids.data(), w.data(), nullptr));
  CHECK_EQ(ids[0], 2);
  CHECK_EQ(ids[1], 5);
  CHECK_EQ(ids[2], 1);
  CHECK_EQ(ids[3], 7);
  CHECK_EQ(w[0], w[1]);
  CHECK_EQ(w[2], w[3]);
}
