// test/emu: the routing variants of the CUDA kernels (routing.cu: launch_noisy_logits,
// launch_random_routing; router_stats.cu: launch_router_stats; permute.cu with kNoExpert ids;
// moe_forward.cu with MoeDeviceRouting) run in the emulator against their CPU twins from
// native/backends/cpu (route, permute, moe_forward), linked into this test. Inputs are small integers
// (x) and multiples of 1/8 (gates), so every router logit is exact in f32 whatever the summation
// order: both backends then see the same logits and the same draws (moe/route_rng.h), and the ids,
// capacity drops and counts must agree exactly; weights, losses and outputs within rounding. Every
// case runs under every fiber schedule.
// The CPU API (and <memory>) first: libstdc++'s <memory> spells __attribute__((__noinline__)), which
// the emulator's CUDA keyword macros would rewrite.
#include <algorithm>
#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include "../../native/backends/cpu/cpu_ops.h"
#include "../../native/include/moe/moe_ops.h"

#include "../../native/backends/cuda/cuda_compat.cuh"
#include "../../native/backends/cuda/launchers.h"

#include "check.h"
#include "schedules.h"

namespace {

using emu_test::kAllSchedules;
using emu_test::ScheduleScope;

struct Lcg {
  uint64_t s;
  int next(int n) {  // uniform in [0, n)
    s = s * 6364136223846793005ull + 1442695040888963407ull;
    return int((s >> 33) % uint64_t(n));
  }
};

// A device copy of a host vector, freed at scope exit.
template <typename T>
struct Dev {
  T* p = nullptr;
  size_t n = 0;
  explicit Dev(size_t count) : n(count) {
    if (cudaMalloc(reinterpret_cast<void**>(&p), std::max<size_t>(count, 1) * sizeof(T)) != cudaSuccess) p = nullptr;
  }
  explicit Dev(const std::vector<T>& h) : Dev(h.size()) {
    if (p && !h.empty()) cudaMemcpy(p, h.data(), h.size() * sizeof(T), cudaMemcpyHostToDevice);
  }
  ~Dev() { cudaFree(p); }
  Dev(const Dev&) = delete;
  Dev& operator=(const Dev&) = delete;
  std::vector<T> get() const {
    std::vector<T> h(n);
    if (n) cudaMemcpy(h.data(), p, n * sizeof(T), cudaMemcpyDeviceToHost);
    return h;
  }
};

struct Problem {
  int64_t T, d;
  int E;
  std::vector<float> x, gate, noise;  // exact-sum inputs
};

Problem make_problem(int64_t T, int64_t d, int E, uint64_t seed) {
  Problem p{T, d, E, {}, {}, {}};
  Lcg r{seed};
  p.x.resize(size_t(T * d));
  p.gate.resize(size_t(E * d));
  p.noise.resize(size_t(E * d));
  for (float& v : p.x) v = float(r.next(5) - 2);                  // -2..2
  for (float& v : p.gate) v = float(r.next(17) - 8) * 0.125f;    // -1..1 in steps of 1/8
  for (float& v : p.noise) v = float(r.next(9) - 4) * 0.0625f;   // -0.25..0.25
  return p;
}

struct Variant {
  int k = 2;
  bool normalize = true;
  bool noisy = false;
  bool random = false;
  uint64_t seed = 7;
};

std::string describe(const Problem& p, const Variant& v) {
  return "T=" + std::to_string(p.T) + " E=" + std::to_string(p.E) + " k=" + std::to_string(v.k) +
         (v.normalize ? " norm" : " raw") + (v.noisy ? " noisy" : "") + (v.random ? " random" : "") + " (" +
         moe_emu::schedule_name(moe_emu::schedule()) + ")";
}

bool close(double got, double want, double tol) { return std::fabs(got - want) <= tol * std::max(1.0, std::fabs(want)); }

// Route on both backends and compare ids, weights, counts and the losses.
bool check_route(const Problem& p, const Variant& v) {
  const std::string what = describe(p, v);
  const int64_t T = p.T, d = p.d;
  const int E = p.E, k = v.k;
  moe::RouteParams rp;
  rp.top_k = k;
  rp.normalize = v.normalize;
  if (v.noisy) {
    rp.noise_gate = moe::make_view(const_cast<float*>(p.noise.data()), moe::DType::kF32, {E, d});
    rp.noise_seed = v.seed;
  }
  rp.random_routing = v.random;
  rp.random_seed = v.seed + 1;
  std::vector<int32_t> ids(size_t(T * k)), counts(static_cast<size_t>(E));
  std::vector<float> w(size_t(T * k)), logits(size_t(T * E));
  moe::cpu::RouterStats st;
  const moe::Status s = moe::cpu::route(moe::make_view(const_cast<float*>(p.x.data()), moe::DType::kF32, {T, d}),
                                   moe::make_view(const_cast<float*>(p.gate.data()), moe::DType::kF32, {E, d}), rp,
                                   ids.data(), w.data(), counts.data(), logits.data(), &st);
  if (!s.is_ok()) {
    emu_test::fail(__FILE__, __LINE__, what + ": CPU route: " + s.message());
    return false;
  }

  Dev<float> x_d(p.x), gate_d(p.gate), noise_d(p.noise), logits_d(size_t(T * E)), noisy_d(size_t(T * E)),
      w_d(size_t(T * k)), stats_d(2);
  Dev<int32_t> ids_d(size_t(T * k)), counts_d(static_cast<size_t>(E));
  const size_t ws_bytes = moe::router_stats_workspace_bytes(T, E);
  Dev<unsigned char> ws_d(ws_bytes);
  CHECK_OK(moe::launch_router_logits(x_d.p, moe::DevDType::kF32, gate_d.p, T, d, E, logits_d.p, nullptr));
  const float* routing_logits = logits_d.p;
  if (v.noisy) {
    CHECK_OK(moe::launch_router_logits(x_d.p, moe::DevDType::kF32, noise_d.p, T, d, E, noisy_d.p, nullptr));
    CHECK_OK(moe::launch_noisy_logits(logits_d.p, noisy_d.p, T, E, v.seed, noisy_d.p, nullptr));
    routing_logits = noisy_d.p;
  }
  CHECK_OK(moe::launch_softmax_topk(routing_logits, T, E, k, v.normalize, ids_d.p, w_d.p, nullptr));
  if (v.random) CHECK_OK(moe::launch_random_routing(ids_d.p, w_d.p, T, k, v.seed + 1, nullptr));
  CHECK_OK(moe::launch_router_stats(logits_d.p, ids_d.p, T, E, k, counts_d.p, stats_d.p, ws_d.p, ws_bytes, nullptr));
  const std::vector<int32_t> gids = ids_d.get(), gcounts = counts_d.get();
  const std::vector<float> gw = w_d.get(), gstats = stats_d.get(), glogits = logits_d.get();

  for (size_t i = 0; i < logits.size(); ++i)
    if (glogits[i] != logits[i]) {
      emu_test::fail(__FILE__, __LINE__, what + ": logits are not exact: [" + std::to_string(i) + "] " +
                                             emu_test::describe(glogits[i]) + " vs " + emu_test::describe(logits[i]));
      return false;
    }
  for (int64_t t = 0; t < T; ++t) {
    for (int j = 0; j < k; ++j) {
      const size_t i = size_t(t * k + j);
      if (gids[i] != ids[i]) {
        emu_test::fail(__FILE__, __LINE__, what + ": token " + std::to_string(t) + " slot " + std::to_string(j) +
                                               ": GPU id " + std::to_string(gids[i]) + ", CPU " + std::to_string(ids[i]));
        return false;
      }
      if (!(std::fabs(gw[i] - w[i]) <= 2e-6)) {
        emu_test::fail(__FILE__, __LINE__, what + ": weight " + std::to_string(i) + " " + emu_test::describe(gw[i]) +
                                               " vs " + emu_test::describe(w[i]));
        return false;
      }
    }
  }
  for (int e = 0; e < E; ++e)
    if (gcounts[size_t(e)] != counts[size_t(e)]) {
      emu_test::fail(__FILE__, __LINE__, what + ": count of expert " + std::to_string(e));
      return false;
    }
  if (!close(gstats[0], st.aux_loss, 1e-5) || !close(gstats[1], st.z_loss, 1e-5)) {
    emu_test::fail(__FILE__, __LINE__, what + ": losses " + emu_test::describe(gstats[0]) + ", " +
                                           emu_test::describe(gstats[1]) + " vs CPU " + emu_test::describe(st.aux_loss) +
                                           ", " + emu_test::describe(st.z_loss));
    return false;
  }
  return true;
}

}  // namespace

TEST(variants_router_kernels_match_the_cpu_twin) {
  const struct { int64_t T; int E, k; } shapes[] = {{1, 1, 1}, {33, 8, 2}, {33, 5, 2}, {33, 3, 3}, {65, 64, 6}, {17, 64, 64}, {200, 8, 2}};
  for (moe_emu::Schedule s : kAllSchedules) {
    ScheduleScope scope(s);
    for (const auto& sh : shapes) {
      const Problem p = make_problem(sh.T, 16, sh.E, uint64_t(sh.T * 31 + sh.E));
      for (int mode = 0; mode < 4; ++mode) {
        Variant v;
        v.k = sh.k;
        v.normalize = mode != 1;
        v.noisy = mode >= 2;
        v.random = (mode == 1 || mode == 3) && sh.k == 2;
        v.seed = uint64_t(11 + mode);
        if (!check_route(p, v)) return;
      }
    }
  }
}

TEST(variants_permute_takes_the_no_expert_marker) {
  // Fast path (E = 4) and the two-pass general path (E = 2000): -1 slots go nowhere, are not
  // dropped, and are not reported as invalid; -2 still is.
  for (int E : {4, 2000}) {
    const int64_t T = 40;
    const int k = 2;
    Lcg r{uint64_t(E)};
    std::vector<int32_t> ids(size_t(T * k));
    for (int32_t& id : ids) id = r.next(4) == 0 ? -1 : r.next(std::min(E, 6));
    const size_t nE = static_cast<size_t>(E);
    for (int64_t cap : {int64_t(-1), int64_t(3)}) {
      std::vector<int32_t> off(nE + 1), rows(ids.size()), row_of(ids.size()), dropped(nE);
      CHECK(moe::cpu::permute(ids.data(), T, k, E, cap, off.data(), rows.data(), row_of.data(), dropped.data()).is_ok());
      Dev<int32_t> ids_d(ids), off_d(nE + 1), rows_d(ids.size()), row_of_d(ids.size()), dropped_d(nE), bad_d(1);
      const size_t wb = moe::permute_workspace_bytes(T, k, E);
      Dev<unsigned char> ws(wb);
      CHECK_OK(moe::launch_permute(ids_d.p, T, k, E, cap, off_d.p, rows_d.p, row_of_d.p, dropped_d.p, bad_d.p, ws.p, wb,
                                   nullptr));
      CHECK(off_d.get() == off);
      CHECK(rows_d.get() == rows);
      CHECK(row_of_d.get() == row_of);
      CHECK(dropped_d.get() == dropped);
      CHECK_EQ(bad_d.get()[0], -1);
      for (size_t s = 0; s < ids.size(); ++s)
        if (ids[s] == -1) CHECK_EQ(row_of[s], -1);
    }
    ids[5] = -2;
    Dev<int32_t> ids_d(ids), off_d(nE + 1), rows_d(ids.size()), row_of_d(ids.size()), bad_d(1);
    const size_t wb = moe::permute_workspace_bytes(T, k, E);
    Dev<unsigned char> ws(wb);
    CHECK_OK(moe::launch_permute(ids_d.p, T, k, E, -1, off_d.p, rows_d.p, row_of_d.p, nullptr, bad_d.p, ws.p, wb,
                                 nullptr));
    CHECK_EQ(bad_d.get()[0], 5);
  }
}

namespace {

// The whole layer on both backends (f32 weights): ids, drops and counts exact, output and losses close.
// r.route.noise_gate is ignored: `noisy` gives both backends the problem's noise gate.
bool check_forward(int64_t T, int E, int k, const moe::MoeForwardParams& r, bool noisy, const std::string& label) {
  const std::string what = label + " T=" + std::to_string(T) + " E=" + std::to_string(E) + " k=" + std::to_string(k) +
                           " (" + moe_emu::schedule_name(moe_emu::schedule()) + ")";
  const int64_t d = 16, f = 24;
  const Problem p = make_problem(T, d, E, uint64_t(T * 7 + E * 3 + k));
  Lcg rng{uint64_t(E * 101 + T)};
  std::vector<std::vector<float>> w1(static_cast<size_t>(E)), w3(static_cast<size_t>(E)), w2(static_cast<size_t>(E));
  moe::ExpertWeightSource src;
  src.num_experts = E;
  src.d = d;
  src.f = f;
  src.dtype = moe::DType::kF32;
  for (int e = 0; e < E; ++e) {
    for (auto* m : {&w1[size_t(e)], &w3[size_t(e)], &w2[size_t(e)]}) {
      m->resize(size_t(d * f));
      for (float& v : *m) v = float(rng.next(33) - 16) / 64.f;
    }
    src.w1.push_back(w1[size_t(e)].data());
    src.w3.push_back(w3[size_t(e)].data());
    src.w2.push_back(w2[size_t(e)].data());
  }
  std::unique_ptr<moe::PackedExperts> packed;
  if (!moe::cpu::pack_experts(src, nullptr, &packed).is_ok()) {
    emu_test::fail(__FILE__, __LINE__, what + ": CPU pack_experts failed");
    return false;
  }
  moe::MoeForwardParams mp = r;
  mp.route.top_k = k;
  mp.route.noise_gate = noisy ? moe::make_view(const_cast<float*>(p.noise.data()), moe::DType::kF32, {E, d}) : moe::TensorView();
  std::vector<float> out(size_t(T * d)), wts(size_t(T * k));
  std::vector<int32_t> ids(size_t(T * k)), counts(static_cast<size_t>(E)), dropped(static_cast<size_t>(E));
  moe::cpu::RouterStats st;
  moe::cpu::MoeForwardOutputs o;
  o.out = moe::make_view(out.data(), moe::DType::kF32, {T, d});
  o.topk_ids = ids.data();
  o.topk_weights = wts.data();
  o.expert_counts = counts.data();
  o.dropped = dropped.data();
  o.stats = &st;
  moe::cpu::MoeLayerWeights lw;
  lw.gate = moe::make_view(const_cast<float*>(p.gate.data()), moe::DType::kF32, {E, d});
  lw.experts = packed.get();
  const moe::Status s = moe::cpu::moe_forward(lw, moe::make_view(const_cast<float*>(p.x.data()), moe::DType::kF32, {T, d}),
                                         mp, o);
  if (!s.is_ok()) {
    emu_test::fail(__FILE__, __LINE__, what + ": CPU moe_forward: " + s.message());
    return false;
  }

  // Device side.
  const size_t pb = moe::grouped_gemm_packed_bytes(E, d, f, moe::DevDType::kF32);
  std::vector<unsigned char> packed_host(pb);
  CHECK_OK(moe::grouped_gemm_pack(E, d, f, moe::DevDType::kF32, src.w1.data(), src.w3.data(), src.w2.data(),
                                  packed_host.data(), pb));
  Dev<unsigned char> packed_d(packed_host);
  Dev<float> x_d(p.x), gate_d(p.gate), noise_d(p.noise), out_d(size_t(T * d)), wts_d(size_t(T * k)), stats_d(2);
  Dev<int32_t> ids_d(size_t(T * k)), counts_d(static_cast<size_t>(E)), dropped_d(static_cast<size_t>(E));
  moe::MoeDeviceLayer layer;
  layer.num_experts = E;
  layer.d = d;
  layer.f = f;
  layer.w_dtype = moe::DevDType::kF32;
  layer.gate = gate_d.p;
  layer.packed = packed_d.p;
  moe::MoeDeviceRouting dr;
  dr.params = mp;
  dr.noise_gate = noisy ? noise_d.p : nullptr;
  moe::MoeDeviceOutputs dout;
  dout.topk_ids = ids_d.p;
  dout.topk_weights = wts_d.p;
  dout.expert_counts = counts_d.p;
  dout.dropped = dropped_d.p;
  dout.stats = stats_d.p;
  const size_t wb = moe::moe_forward_workspace_bytes(layer, T, dr);
  CHECK(wb > 0);
  Dev<unsigned char> ws(wb);
  const cudaError_t err =
      moe::launch_moe_forward(layer, x_d.p, moe::DevDType::kF32, T, dr, out_d.p, moe::DevDType::kF32, dout, ws.p, wb,
                              nullptr);
  if (err != cudaSuccess) {
    emu_test::fail(__FILE__, __LINE__, what + ": " + moe_error_string(err));
    return false;
  }
  if (ids_d.get() != ids || counts_d.get() != counts || dropped_d.get() != dropped) {
    emu_test::fail(__FILE__, __LINE__, what + ": ids, counts or drops differ from the CPU twin");
    return false;
  }
  const std::vector<float> gout = out_d.get(), gstats = stats_d.get();
  double scale = 1e-30;
  for (float v : out) scale = std::max(scale, double(std::fabs(v)));
  for (size_t i = 0; i < out.size(); ++i)
    if (!(std::fabs(double(gout[i]) - out[i]) <= 1e-5 * scale)) {
      emu_test::fail(__FILE__, __LINE__, what + ": out[" + std::to_string(i) + "] " + emu_test::describe(gout[i]) +
                                             " vs CPU " + emu_test::describe(out[i]));
      return false;
    }
  if (!close(gstats[0], st.aux_loss, 1e-5) || !close(gstats[1], st.z_loss, 1e-5)) {
    emu_test::fail(__FILE__, __LINE__, what + ": losses differ from the CPU twin");
    return false;
  }
  int64_t total_dropped = 0;
  for (int32_t v : dropped) total_dropped += v;
  return label.find("drops") == std::string::npos || total_dropped > 0 ||
         (emu_test::fail(__FILE__, __LINE__, what + ": the case was meant to drop slots"), false);
}

}  // namespace

TEST(variants_moe_forward_matches_the_cpu_twin) {
  for (moe_emu::Schedule s : kAllSchedules) {
    ScheduleScope scope(s);
    moe::MoeForwardParams r;
    r.capacity_factor = 0.5;
    if (!check_forward(33, 4, 2, r, false, "capacity 0.5 drops")) return;
    r.capacity_factor = 1.25;
    r.route.noise_seed = 3;
    r.route.random_routing = true;
    r.route.random_seed = 4;
    if (!check_forward(33, 8, 2, r, true, "capacity 1.25 + noise + random routing")) return;
    moe::MoeForwardParams e;
    e.capacity_factor = 0.25;
    e.eval_capacity_factor = 4.0;
    e.decode = 1;  // decode at T = 20: the eval factor (dropless here), while 0.25 would drop
    if (!check_forward(20, 4, 1, e, false, "eval factor")) return;
    e.decode = 0;
    if (!check_forward(20, 4, 1, e, false, "prefill factor drops")) return;
    moe::MoeForwardParams fine;
    fine.capacity_factor = 1.0;
    if (!check_forward(65, 64, 6, fine, false, "fine-grained E=64 k=6")) return;
  }
}

TEST(variants_reject_bad_arguments) {
  Dev<int32_t> ids(8);
  Dev<float> w(8), stats(2);
  Dev<int32_t> counts(4);
  CHECK(moe::launch_random_routing(ids.p, w.p, 4, 1, 0, nullptr) == cudaErrorInvalidValue);
  CHECK(moe::launch_random_routing(nullptr, w.p, 4, 2, 0, nullptr) == cudaErrorInvalidValue);
  CHECK(moe::launch_noisy_logits(nullptr, w.p, 2, 4, 0, w.p, nullptr) == cudaErrorInvalidValue);
  CHECK(moe::launch_router_stats(w.p, ids.p, 2, 4, 5, counts.p, stats.p, nullptr, 0, nullptr) == cudaErrorInvalidValue);
  CHECK(moe::launch_router_stats(w.p, ids.p, 2, 4, 2, counts.p, stats.p, nullptr, 0, nullptr) == cudaErrorInvalidValue);
  // no token: zero counts and losses
  std::vector<float> ones = {1.f, 1.f};
  cudaMemcpy(stats.p, ones.data(), 2 * sizeof(float), cudaMemcpyHostToDevice);
  CHECK_OK(moe::launch_router_stats(w.p, ids.p, 0, 4, 2, counts.p, stats.p, nullptr, 0, nullptr));
  CHECK(stats.get() == std::vector<float>({0.f, 0.f}));
  CHECK(counts.get() == std::vector<int32_t>({0, 0, 0, 0}));
  moe::MoeDeviceLayer layer;
  layer.num_experts = 4;
  layer.d = 8;
  layer.f = 8;
  layer.w_dtype = moe::DevDType::kF32;
  moe::MoeDeviceRouting r;
  r.params.route.top_k = 1;
  r.params.route.random_routing = true;  // needs top_k == 2
  CHECK_EQ(moe::moe_forward_workspace_bytes(layer, 4, r), size_t(0));
}
