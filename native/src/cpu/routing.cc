// CPU route: router logits in f32, softmax in f32, top-k with lower-index ties, optional
// renormalisation, per-expert token counts. Twin of native/src/cuda/routing.cu (same op name).
#include <algorithm>
#include <cmath>
#include <vector>

#include "moe/ops.h"
#include "moe/threadpool.h"

namespace moe {

namespace {
// Dot product of two f32 rows with 8 independent partial sums in a fixed order, so the result is
// the same on every run and the compiler can keep the sums in vector registers.
float dot_f32(const float* a, const float* b, int64_t n) {
  float s[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int l = 0; l < 8; ++l) s[l] += a[i + l] * b[i + l];
  for (; i < n; ++i) s[i & 7] += a[i] * b[i];
  return ((s[0] + s[4]) + (s[1] + s[5])) + ((s[2] + s[6]) + (s[3] + s[7]));
}
}  // namespace

Status route(const TensorView& x, const TensorView& gate, const RouteParams& p, int32_t* topk_ids,
             float* topk_weights, int32_t* expert_counts, float* logits) {
  if (x.ndim != 2 || gate.ndim != 2) return Status::invalid("route: x and gate must be 2-D");
  const int64_t T = x.dims[0], d = x.dims[1];
  const int64_t E = gate.dims[0];
  const int k = p.top_k;
  if (gate.dims[1] != d) return Status::invalid("route: gate.dims[1] must equal x.dims[1]");
  if (E < 1) return Status::invalid("route: gate must have at least one expert");
  if (k < 1 || k > E) return Status::invalid("route: top_k must be in [1, E]");
  if (T > 0 && (!topk_ids || !topk_weights)) return Status::invalid("route: topk outputs are required");

  // The gate is small ([E,d]); widen it once.
  std::vector<float> g32;
  const float* g = nullptr;
  if (gate.dtype == DType::kF32) {
    g = gate.as<const float>();
  } else {
    g32.resize(size_t(E * d));
    widen_to_f32(gate, g32.data());
    g = g32.data();
  }

  constexpr int64_t kTokensPerTask = 16;
  const int64_t ntasks = (T + kTokensPerTask - 1) / kTokensPerTask;
  parallel_for(ntasks, [&](int64_t task, int) {
    std::vector<float> xrow(static_cast<size_t>(d)), lg(static_cast<size_t>(E));
    std::vector<char> taken(static_cast<size_t>(E));
    const int64_t t0 = task * kTokensPerTask, t1 = std::min(T, t0 + kTokensPerTask);
    for (int64_t t = t0; t < t1; ++t) {
      const float* xr;
      if (x.dtype == DType::kF32) {
        xr = x.as<const float>() + t * d;
      } else {
        for (int64_t i = 0; i < d; ++i) xrow[size_t(i)] = load_as_f32(x.data, x.dtype, size_t(t * d + i));
        xr = xrow.data();
      }
      float mx = -INFINITY;
      for (int64_t e = 0; e < E; ++e) {
        lg[size_t(e)] = dot_f32(xr, g + e * d, d);
        mx = std::max(mx, lg[size_t(e)]);
      }
      if (logits) std::copy(lg.begin(), lg.end(), logits + t * E);
      float sum = 0.f;
      for (int64_t e = 0; e < E; ++e) sum += std::exp(lg[size_t(e)] - mx);
      // top-k by repeated arg-max on the logits (softmax is monotone); strict '>' keeps the lower
      // expert index on ties.
      std::fill(taken.begin(), taken.end(), 0);
      float kept = 0.f;
      int32_t* ids = topk_ids + t * k;
      float* w = topk_weights + t * k;
      for (int j = 0; j < k; ++j) {
        int64_t best = -1;
        for (int64_t e = 0; e < E; ++e) {
          if (taken[size_t(e)]) continue;
          if (best < 0 || lg[size_t(e)] > lg[size_t(best)] ||
              (std::isnan(lg[size_t(best)]) && !std::isnan(lg[size_t(e)])))
            best = e;
        }
        taken[size_t(best)] = 1;
        ids[j] = int32_t(best);
        w[j] = std::exp(lg[size_t(best)] - mx) / sum;
        kept += w[j];
      }
      if (p.normalize)
        for (int j = 0; j < k; ++j) w[j] = w[j] / kept;
    }
  });

  if (expert_counts) {
    std::fill(expert_counts, expert_counts + E, 0);
    for (int64_t i = 0; i < T * k; ++i) expert_counts[topk_ids[i]]++;
  }
  return Status::ok();
}

}  // namespace moe
