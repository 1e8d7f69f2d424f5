// test/emu: native/backends/cuda/moe_forward.cu (with router.cu and the launchers it chains) run in the
// emulator against a double-precision reference of the Mixtral MoE block written here from its
// semantics: logits = x gateᵀ, softmax over E, top-k (ties to the lower index), weights renormalised
// over the k kept (or not), out_t = Σ_j w_tj · W2_e (silu(W1_e x_t) ⊙ (W3_e x_t)), from the same
// rounded inputs the kernels see (the router reads x as given, the experts x rounded to the weight
// dtype, h rounded to it between the GEMMs). Tolerance against max|ref|: 1e-4 for f32, 2e-2 for
// bf16, 4e-3 for f16, the looser of the weight's and the output's dtype; top-k ids must equal the
// reference's, weights within 1e-5. Shapes: d=64 f=128 E=4 k=2 at T=1 (decode path) and T=33
// (tensor cores for bf16/f16, SIMT for f32); bf16 at T=1 and T=33 under every schedule. Weights and
// activations go through cudaMalloc / cudaMemcpy; the layer runs on a created stream.
#include "../../native/backends/cuda/cuda_compat.cuh"
#include "../../native/backends/cuda/launchers.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <string>
#include <vector>

#include "check.h"
#include "dev_dtype.h"
#include "schedules.h"

namespace {

using emu_test::kAllSchedules;
using emu_test::ScheduleScope;
using emu_test::dtype_name;
using emu_test::elem_bytes;
using emu_test::round_to;
using emu_test::store_as;
using emu_test::load_as;
using moe::DevDType;

double tolerance(DevDType w) {
  switch (w) {
    case DevDType::kF32: return 1e-4;
    case DevDType::kF16: return 4e-3;
    case DevDType::kBF16: return 2e-2;
  }
  return 0;
}

struct Rng {
  uint64_t s;
  double next() {
    s = s * 6364136223846793005ull + 1442695040888963407ull;
    return double(s >> 11) / double(1ull << 53);
  }
  float sym(double scale) { return float((next() * 2 - 1) * scale); }
};

// A device allocation (emulated cudaMalloc), freed at scope exit.
struct DevBuf {
  void* p = nullptr;
  explicit DevBuf(size_t n) {
    if (cudaMalloc(&p, n) != cudaSuccess) p = nullptr;
  }
  ~DevBuf() { cudaFree(p); }
  DevBuf(const DevBuf&) = delete;
  DevBuf& operator=(const DevBuf&) = delete;
  template <typename T>
  T* as() const { return static_cast<T*>(p); }
};

struct Case {
  int64_t T = 1, d = 64, f = 128;
  int E = 4, k = 2;
  DevDType w = DevDType::kBF16, x = DevDType::kBF16, out = DevDType::kBF16;
  bool normalize = true;
};

std::string describe_case(const Case& c) {
  return "T=" + std::to_string(c.T) + " k=" + std::to_string(c.k) + " E=" + std::to_string(c.E) +
         " d=" + std::to_string(c.d) + " f=" + std::to_string(c.f) + " w=" + dtype_name(c.w) +
         " x=" + dtype_name(c.x) + " out=" + dtype_name(c.out) + (c.normalize ? " norm" : " raw") +
         " path=" + std::to_string(int(moe::grouped_gemm_path(c.T * c.k, c.d, c.f, c.w))) +
         " schedule=" + moe_emu::schedule_name(moe_emu::schedule());
}

uint64_t g_forward_launches = 0;  // kernels the last run_case's forward launched

bool run_case(const Case& c) {
  const std::string what = describe_case(c);
  const int64_t T = c.T, d = c.d, f = c.f;
  const int E = c.E, k = c.k;
  const size_t nE = static_cast<size_t>(E);
  Rng rng{uint64_t(T * 7919 + E * 131 + d * 17 + f + int(c.w) * 3 + int(c.x) * 5 + int(c.out))};

  // Inputs as the kernels see them: x in its dtype (router), xr rounded to the weight dtype (experts).
  std::vector<float> x(size_t(T * d)), xr(x.size()), gate(size_t(E * d));
  for (size_t i = 0; i < x.size(); ++i) {
    x[i] = round_to(rng.sym(1.0), c.x);
    xr[i] = round_to(x[i], c.w);
  }
  for (float& g : gate) g = rng.sym(2.0 / std::sqrt(double(d)));
  const double ws1 = 2.0 / std::sqrt(double(d)), ws2 = 2.0 / std::sqrt(double(f));
  std::vector<std::vector<float>> w1(nE), w3(nE), w2(nE);
  std::vector<std::vector<unsigned char>> w1b(nE), w3b(nE), w2b(nE);
  std::vector<const void*> w1p, w3p, w2p;
  for (size_t e = 0; e < nE; ++e) {
    w1[e].resize(size_t(f * d));
    w3[e].resize(size_t(f * d));
    w2[e].resize(size_t(d * f));
    w1b[e].resize(w1[e].size() * elem_bytes(c.w));
    w3b[e].resize(w3[e].size() * elem_bytes(c.w));
    w2b[e].resize(w2[e].size() * elem_bytes(c.w));
    for (size_t i = 0; i < w1[e].size(); ++i) {
      w1[e][i] = round_to(rng.sym(ws1), c.w);
      w3[e][i] = round_to(rng.sym(ws1), c.w);
      w2[e][i] = round_to(rng.sym(ws2), c.w);
      store_as(w1b[e].data(), i, w1[e][i], c.w);
      store_as(w3b[e].data(), i, w3[e][i], c.w);
      store_as(w2b[e].data(), i, w2[e][i], c.w);
    }
    w1p.push_back(w1b[e].data());
    w3p.push_back(w3b[e].data());
    w2p.push_back(w2b[e].data());
  }

  // Reference in double.
  std::vector<int32_t> ids_ref(size_t(T * k));
  std::vector<double> wts_ref(size_t(T * k)), out_ref(size_t(T * d), 0.0);
  std::vector<double> logit(nE), h(static_cast<size_t>(f));
  for (int64_t t = 0; t < T; ++t) {
    for (int e = 0; e < E; ++e) {
      double a = 0;
      for (int64_t i = 0; i < d; ++i) a += double(x[size_t(t * d + i)]) * gate[size_t(e * d + i)];
      logit[size_t(e)] = a;
    }
    const double mx = *std::max_element(logit.begin(), logit.end());
    double sum = 0;
    for (double l : logit) sum += std::exp(l - mx);
    std::vector<int> order(nE);
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(),
                     [&](int a, int b) { return logit[size_t(a)] > logit[size_t(b)]; });  // ties: lower index
    double kept = 0;
    for (int j = 0; j < k; ++j) {
      ids_ref[size_t(t * k + j)] = order[size_t(j)];
      wts_ref[size_t(t * k + j)] = std::exp(logit[size_t(order[size_t(j)])] - mx) / sum;
      kept += wts_ref[size_t(t * k + j)];
    }
    if (c.normalize)
      for (int j = 0; j < k; ++j) wts_ref[size_t(t * k + j)] /= kept;
    const float* xt = &xr[size_t(t * d)];
    for (int j = 0; j < k; ++j) {
      const size_t e = size_t(ids_ref[size_t(t * k + j)]);
      for (int64_t n = 0; n < f; ++n) {
        double a = 0, b = 0;
        for (int64_t i = 0; i < d; ++i) {
          a += double(w1[e][size_t(n * d + i)]) * xt[i];
          b += double(w3[e][size_t(n * d + i)]) * xt[i];
        }
        h[size_t(n)] = round_to(float(a / (1 + std::exp(-a)) * b), c.w);
      }
      for (int64_t n = 0; n < d; ++n) {
        double acc = 0;
        for (int64_t i = 0; i < f; ++i) acc += double(w2[e][size_t(n * f + i)]) * h[size_t(i)];
        out_ref[size_t(t * d + n)] += wts_ref[size_t(t * k + j)] * acc;
      }
    }
  }

  // Device side: pack on the host, upload everything.
  const size_t packed_bytes = moe::grouped_gemm_packed_bytes(E, d, f, c.w);
  std::vector<unsigned char> packed_host(packed_bytes);
  if (packed_bytes == 0 ||
      moe::grouped_gemm_pack(E, d, f, c.w, w1p.data(), w3p.data(), w2p.data(), packed_host.data(), packed_bytes) !=
          cudaSuccess) {
    emu_test::fail(__FILE__, __LINE__, what + ": grouped_gemm_pack failed");
    return false;
  }
  std::vector<unsigned char> x_host(x.size() * elem_bytes(c.x));
  for (size_t i = 0; i < x.size(); ++i) store_as(x_host.data(), i, x[i], c.x);

  DevBuf packed_dev(packed_bytes), gate_dev(gate.size() * sizeof(float)), x_dev(x_host.size()),
      out_dev(size_t(T * d) * elem_bytes(c.out)), ids_dev(size_t(T * k) * sizeof(int32_t)),
      wts_dev(size_t(T * k) * sizeof(float));
  moe::MoeDeviceLayer layer;
  layer.num_experts = E;
  layer.d = d;
  layer.f = f;
  layer.w_dtype = c.w;
  layer.gate = gate_dev.as<float>();
  layer.packed = packed_dev.p;
  const size_t ws_bytes = moe::moe_forward_workspace_bytes(layer, T, k);
  DevBuf ws_dev(ws_bytes);
  CHECK(ws_bytes > 0);
  CHECK_OK(cudaMemcpy(packed_dev.p, packed_host.data(), packed_bytes, cudaMemcpyHostToDevice));
  CHECK_OK(cudaMemcpy(gate_dev.p, gate.data(), gate.size() * sizeof(float), cudaMemcpyHostToDevice));
  CHECK_OK(cudaMemcpy(x_dev.p, x_host.data(), x_host.size(), cudaMemcpyHostToDevice));

  cudaStream_t stream = nullptr;
  CHECK_OK(cudaStreamCreate(&stream));
  const uint64_t launches_before = moe_emu::launch_count();
  const cudaError_t err =
      moe::launch_moe_forward(layer, x_dev.p, c.x, T, k, c.normalize, out_dev.p, c.out, ids_dev.as<int32_t>(),
                              wts_dev.as<float>(), ws_dev.p, ws_bytes, stream);
  g_forward_launches = moe_emu::launch_count() - launches_before;
  CHECK_OK(cudaStreamSynchronize(stream));
  CHECK_OK(cudaStreamDestroy(stream));
  if (err != cudaSuccess) {
    emu_test::fail(__FILE__, __LINE__, what + ": " + moe_error_string(err));
    return false;
  }

  std::vector<int32_t> ids(size_t(T * k));
  std::vector<float> wts(size_t(T * k));
  std::vector<unsigned char> out_host(size_t(T * d) * elem_bytes(c.out));
  CHECK_OK(cudaMemcpy(ids.data(), ids_dev.p, ids.size() * sizeof(int32_t), cudaMemcpyDeviceToHost));
  CHECK_OK(cudaMemcpy(wts.data(), wts_dev.p, wts.size() * sizeof(float), cudaMemcpyDeviceToHost));
  CHECK_OK(cudaMemcpy(out_host.data(), out_dev.p, out_host.size(), cudaMemcpyDeviceToHost));

  for (size_t s = 0; s < ids.size(); ++s) {
    if (ids[s] != ids_ref[s]) {
      emu_test::fail(__FILE__, __LINE__, what + ": topk_ids[" + std::to_string(s) + "] = " + std::to_string(ids[s]) +
                                             ", want " + std::to_string(ids_ref[s]));
      return false;
    }
    if (!(std::fabs(wts[s] - wts_ref[s]) <= 1e-5)) {
      emu_test::fail(__FILE__, __LINE__, what + ": topk_weights[" + std::to_string(s) + "] = " +
                                             emu_test::describe(wts[s]) + ", want " + emu_test::describe(wts_ref[s]));
      return false;
    }
  }
  double scale = 0;
  for (double v : out_ref) scale = std::max(scale, std::fabs(v));
  // out rounded to its dtype adds up to half an ulp of max|ref|: the looser of the two tolerances.
  const double bound = std::max(tolerance(c.w), tolerance(c.out)) * std::max(scale, 1e-30);
  for (size_t i = 0; i < out_ref.size(); ++i) {
    const double g = load_as(out_host.data(), i, c.out);
    if (!(std::fabs(g - out_ref[i]) <= bound)) {
      emu_test::fail(__FILE__, __LINE__, what + ": out[" + std::to_string(i / size_t(d)) + "," +
                                             std::to_string(i % size_t(d)) + "] = " + emu_test::describe(g) +
                                             ", want " + emu_test::describe(out_ref[i]) + " (max|ref| " +
                                             emu_test::describe(scale) + ")");
      return false;
    }
  }
  return true;
}

Case make(int64_t T, DevDType w, DevDType x, DevDType out, bool normalize = true) {
  Case c;
  c.T = T, c.w = w, c.x = x, c.out = out, c.normalize = normalize;
  return c;
}

}  // namespace

TEST(moe_forward_decode_every_schedule) {
  for (moe_emu::Schedule s : kAllSchedules) {
    ScheduleScope scope(s);
    if (!run_case(make(1, DevDType::kBF16, DevDType::kBF16, DevDType::kBF16))) return;
  }
  if (!run_case(make(1, DevDType::kF32, DevDType::kF32, DevDType::kF32, /*normalize=*/false))) return;
}

TEST(moe_forward_tensor_cores_and_simt_t33) {
  for (moe_emu::Schedule s : kAllSchedules) {
    ScheduleScope scope(s);
    if (!run_case(make(33, DevDType::kBF16, DevDType::kBF16, DevDType::kBF16))) return;
  }
  if (!run_case(make(33, DevDType::kF16, DevDType::kF32, DevDType::kF32))) return;  // f32 x: router in f32
  if (!run_case(make(33, DevDType::kF32, DevDType::kF32, DevDType::kF16, /*normalize=*/false))) return;
}

TEST(moe_forward_rejects_bad_arguments) {
  moe::MoeDeviceLayer layer;
  layer.num_experts = 4;
  layer.d = 64;
  layer.f = 128;
  layer.w_dtype = DevDType::kBF16;
  CHECK(moe::moe_forward_workspace_bytes(layer, 8, 2) > 0);
  CHECK_EQ(moe::moe_forward_workspace_bytes(layer, 8, 5), size_t(0));   // k > E
  CHECK_EQ(moe::moe_forward_workspace_bytes(layer, -1, 2), size_t(0));
  const size_t wb = moe::moe_forward_workspace_bytes(layer, 8, 2);
  DevBuf ws(wb), x(8 * 64 * 2), out(8 * 64 * 2), gate(4 * 64 * 4), packed(16);
  layer.gate = gate.as<float>();
  layer.packed = packed.p;
  CHECK(moe::launch_moe_forward(layer, x.p, DevDType::kBF16, 8, 2, true, out.p, DevDType::kBF16, nullptr, nullptr,
                                ws.p, wb - 1, nullptr) == cudaErrorInvalidValue);
  CHECK(moe::launch_moe_forward(layer, nullptr, DevDType::kBF16, 8, 2, true, out.p, DevDType::kBF16, nullptr,
                                nullptr, ws.p, wb, nullptr) == cudaErrorInvalidValue);
  CHECK(moe::launch_moe_forward(layer, x.p, DevDType(9), 8, 2, true, out.p, DevDType::kBF16, nullptr, nullptr, ws.p,
                                wb, nullptr) == cudaErrorInvalidValue);
  CHECK_OK(moe::launch_moe_forward(layer, x.p, DevDType::kBF16, 0, 2, true, out.p, DevDType::kBF16, nullptr, nullptr,
                                   ws.p, wb, nullptr));  // no tokens: nothing to do
  CHECK(moe::launch_router_logits(x.p, DevDType::kBF16, gate.as<float>(), -1, 64, 4, ws.as<float>(), nullptr) ==
        cudaErrorInvalidValue);
}

// A decode step is six kernels: router logits, softmax + top-k, permute (one block), the two GEMVs,
// combine. Each launch is a fixed cost next to the ~200 us a Mixtral layer's T = 1 weights take on
// an H100, so the count is pinned here (the permute alone was four launches).
TEST(moe_forward_decode_is_six_kernels) {
  if (!run_case(make(1, DevDType::kBF16, DevDType::kBF16, DevDType::kBF16))) return;
  CHECK_EQ(g_forward_launches, uint64_t(6));
}
