// CPU token sampling (moe/model_ops.h): greedy argmax, or temperature softmax with top-p and a
// counter-based random number (moe/rng.h), one row per task. Every sum runs in index order in f32,
// so a row's token depends only on its logits, the parameters and (seed, step, row).
#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "moe/model_ops.h"
#include "moe/rng.h"
#include "moe/threadpool.h"

namespace moe {

namespace {
constexpr int64_t kFirstSort = 64;  // top-p: sort this many candidates first, the rest only if needed

// argmax; ties to the lower index; NaN never wins; 0 when every value is NaN.
int32_t argmax(const float* l, int64_t V) {
  int64_t best = -1;
  for (int64_t i = 0; i < V; ++i)
    if (!std::isnan(l[i]) && (best < 0 || l[i] > l[best])) best = i;
  return int32_t(best < 0 ? 0 : best);
}

int32_t sample_row(const float* l, int64_t V, const SampleParams& p, uint64_t row, std::vector<float>& e,
                   std::vector<int32_t>& order) {
  if (!(p.temperature > 0.f)) return argmax(l, V);
  const int32_t am = argmax(l, V);
  const float mx = l[am];
  if (!std::isfinite(mx)) return am;  // all NaN, all -inf, or a +inf logit: nothing to sample
  e.resize(size_t(V));
  float total = 0.f;
  for (int64_t i = 0; i < V; ++i) {
    const float z = std::isnan(l[i]) ? 0.f : std::exp((l[i] - mx) / p.temperature);
    e[size_t(i)] = z;
    total += z;
  }
  // top-p: keep the highest e_i (ties to the lower index) until their sum reaches top_p * total;
  // the kept ones are marked by a negative sign bit (e_i >= 0 otherwise).
  bool all_kept = p.top_p >= 1.f;
  if (!all_kept) {
    order.resize(size_t(V));
    std::iota(order.begin(), order.end(), 0);
    auto before = [&](int32_t a, int32_t b) { return e[size_t(a)] > e[size_t(b)] || (e[size_t(a)] == e[size_t(b)] && a < b); };
    const int64_t first = std::min(V, kFirstSort);
    std::partial_sort(order.begin(), order.begin() + first, order.end(), before);
    const float target = p.top_p * total;
    float cum = 0.f;
    int64_t kept = 0;
    while (kept < V && cum < target) {
      if (kept == first) std::sort(order.begin() + first, order.end(), before);
      cum += e[size_t(order[size_t(kept)])];
      ++kept;
    }
    if (kept == V) {
      all_kept = true;
    } else {
      for (int64_t j = 0; j < kept; ++j) e[size_t(order[size_t(j)])] = -e[size_t(order[size_t(j)])];
      if (kept == 0) return am;
    }
  }
  auto weight = [&](int64_t i) { return all_kept ? e[size_t(i)] : (std::signbit(e[size_t(i)]) ? -e[size_t(i)] : 0.f); };
  float kept_sum = 0.f;
  for (int64_t i = 0; i < V; ++i) kept_sum += weight(i);
  const float target = rng_uniform(p.seed, p.step, row) * kept_sum;
  float cum = 0.f;
  int64_t last = am;
  for (int64_t i = 0; i < V; ++i) {
    const float w = weight(i);
    if (w <= 0.f) continue;
    cum += w;
    last = i;
    if (cum > target) return int32_t(i);
  }
  return int32_t(last);  // rounding left the target at the very top
}
}  // namespace

Status sample(const float* logits, int64_t T, int64_t V, const SampleParams& p, int32_t* ids) {
  if (V < 1) return Status::invalid("sample: V must be at least 1");
  if (!(p.temperature >= 0.f) || !(p.top_p > 0.f && p.top_p <= 1.f))
    return Status::invalid("sample: temperature must be >= 0 and top_p in (0, 1]");
  parallel_for(T, [&](int64_t t, int) {
    thread_local std::vector<float> e;
    thread_local std::vector<int32_t> order;
    ids[t] = sample_row(logits + size_t(t) * size_t(V), V, p, uint64_t(t), e, order);
  });
  return Status::ok();
}

}  // namespace moe
