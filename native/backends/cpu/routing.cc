// CPU route: router logits in f32, softmax in f32, top-k with lower-index ties, optional
// renormalisation, per-expert token counts; the routing variants of RouteParams (noisy top-k
// gating, GShard random routing, moe/route_rng.h) and the router statistics (RouterStats).
// Twin of native/backends/cuda/routing.cu (same op name).
#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "cpu_ops.h"
#include "threadpool.h"

namespace moe {
namespace cpu {

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

// An [E,d] gate as f32: its own data when it is f32, else widened into `scratch`.
const float* widened(const TensorView& w, std::vector<float>& scratch) {
  if (w.dtype == DType::kF32) return w.as<const float>();
  scratch.resize(size_t(w.numel()));
  widen_to_f32(w, scratch.data());
  return scratch.data();
}
}  // namespace

Status route(const TensorView& x, const TensorView& gate, const RouteParams& p, int32_t* topk_ids,
             float* topk_weights, int32_t* expert_counts, float* logits, RouterStats* stats) {
  if (x.ndim != 2 || gate.ndim != 2) return Status::invalid("route: x and gate must be 2-D");
  const int64_t T = x.dims[0], d = x.dims[1];
  const int64_t E = gate.dims[0];
  const int k = p.top_k;
  if (gate.dims[1] != d) return Status::invalid("route: gate.dims[1] must equal x.dims[1]");
  if (E < 1) return Status::invalid("route: gate must have at least one expert");
  if (k < 1 || k > E) return Status::invalid("route: top_k must be in [1, E]");
  if (T > 0 && (!topk_ids || !topk_weights)) return Status::invalid("route: topk outputs are required");
  const bool noisy = p.noise_gate.present();
  if (noisy && (p.noise_gate.ndim != 2 || p.noise_gate.dims[0] != E || p.noise_gate.dims[1] != d))
    return Status::invalid("route: noise_gate must be [E,d] like the gate");
  if (p.random_routing && k != 2)
    return Status::invalid("route: random routing needs top_k == 2, got " + std::to_string(k));

  // The gates are small ([E,d]); widen them once.
  std::vector<float> g32, n32;
  const float* g = widened(gate, g32);
  const float* gn = noisy ? widened(p.noise_gate, n32) : nullptr;

  constexpr int64_t kTokensPerTask = 16;
  const int64_t ntasks = (T + kTokensPerTask - 1) / kTokensPerTask;
  // Router statistics: per task, the sum over its tokens of softmax(logits) [E] and of lse^2, summed
  // over tasks in task order afterwards (deterministic whatever the thread count).
  std::vector<double> prob_part(stats ? size_t(ntasks * E) : 0), z_part(stats ? size_t(ntasks) : 0);
  parallel_for(ntasks, [&](int64_t task, int) {
    std::vector<float> xrow(static_cast<size_t>(d)), lg(static_cast<size_t>(E)), rl;
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
      for (int64_t e = 0; e < E; ++e) lg[size_t(e)] = dot_f32(xr, g + e * d, d);
      if (logits) std::copy(lg.begin(), lg.end(), logits + t * E);
      if (stats) {
        float cmx = -INFINITY;
        for (int64_t e = 0; e < E; ++e) cmx = std::max(cmx, lg[size_t(e)]);
        float csum = 0.f;
        for (int64_t e = 0; e < E; ++e) csum += std::exp(lg[size_t(e)] - cmx);
        double* pp = &prob_part[size_t(task * E)];
        for (int64_t e = 0; e < E; ++e) pp[e] += double(std::exp(lg[size_t(e)] - cmx) / csum);
        const double lse = double(cmx) + std::log(double(csum));
        z_part[size_t(task)] += lse * lse;
      }
      // The routing logits: the clean ones, or H = logits + N(0,1) * softplus(x . W_noise).
      const float* r = lg.data();
      if (noisy) {
        rl.resize(size_t(E));
        for (int64_t e = 0; e < E; ++e)
          rl[size_t(e)] = lg[size_t(e)] + route_normal(p.noise_seed, uint64_t(t), uint32_t(e)) *
                                              route_softplus(dot_f32(xr, gn + e * d, d));
        r = rl.data();
      }
      float mx = -INFINITY;
      for (int64_t e = 0; e < E; ++e) mx = std::max(mx, r[e]);
      float sum = 0.f;
      for (int64_t e = 0; e < E; ++e) sum += std::exp(r[e] - mx);
      // top-k by repeated arg-max on the routing logits (softmax is monotone); strict '>' keeps the
      // lower expert index on ties.
      std::fill(taken.begin(), taken.end(), 0);
      float kept = 0.f;
      int32_t* ids = topk_ids + t * k;
      float* w = topk_weights + t * k;
      for (int j = 0; j < k; ++j) {
        int64_t best = -1;
        for (int64_t e = 0; e < E; ++e) {
          if (taken[size_t(e)]) continue;
          if (best < 0 || r[e] > r[best] || (std::isnan(r[best]) && !std::isnan(r[e]))) best = e;
        }
        taken[size_t(best)] = 1;
        ids[j] = int32_t(best);
        w[j] = std::exp(r[best] - mx) / sum;
        kept += w[j];
      }
      if (p.normalize)
        for (int j = 0; j < k; ++j) w[j] = w[j] / kept;
      if (p.random_routing && !route_keep_second(p.random_seed, uint64_t(t), w[0], w[1])) {
        ids[1] = kNoExpert;
        w[1] = 0.f;
      }
    }
  });

  std::vector<int32_t> counts_s;
  if (!expert_counts && stats) {
    counts_s.resize(size_t(E));
    expert_counts = counts_s.data();
  }
  if (expert_counts) {
    std::fill(expert_counts, expert_counts + E, 0);
    for (int64_t i = 0; i < T * k; ++i)
      if (topk_ids[i] != kNoExpert) expert_counts[topk_ids[i]]++;
  }
  if (stats) {
    *stats = RouterStats{};
    if (T > 0) {
      // aux = E * sum_e f_e * P_e with f_e = count_e / T, P_e = (sum_t p_te) / T.
      double aux = 0, z = 0;
      for (int64_t e = 0; e < E; ++e) {
        double pe = 0;
        for (int64_t task = 0; task < ntasks; ++task) pe += prob_part[size_t(task * E + e)];
        aux += double(expert_counts[e]) / double(T) * (pe / double(T));
      }
      for (int64_t task = 0; task < ntasks; ++task) z += z_part[size_t(task)];
      stats->aux_loss = float(double(E) * aux);
      stats->z_loss = float(z / double(T));
    }
  }
  return Status::ok();
}

}  // namespace cpu
}  // namespace moe
