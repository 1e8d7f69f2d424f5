// test/emu: the decoder ops of native/backends/cuda/{token_ops,attention,sampling}.cu and launch_linear
// (grouped_gemm.cu) run in the emulator against float64 references written here from the semantics
// in decoder_launchers.h. Tolerances per output dtype: f32 outputs within a few f32 ulps of the
// accumulated magnitudes, 16-bit outputs within one rounding of the reference. Exact where the op is
// exact: embedding, residual add, the stored sum of add+RMSNorm, sampling ids, and decode vs prefill
// attention (same bits). Shapes that break tiles: T = 1, 5, 33; d = 7, 33, 200; V = 97, 1000; hd
// 32/64/128/256; Hq/Hkv = 4/2, 8/1, 32/8; windows shorter than the sequence; contexts across the
// 128-key chunk boundary. Kernels run under every schedule on small shapes.
// The CPU backend's ops first: <memory> must not see the emulator's __noinline__ macro.
#include "../../native/backends/cpu/cpu_ops.h"
#include "../../native/include/moe/decoder_ops.h"

#include "../../native/backends/cuda/cuda_compat.cuh"
#include "../../native/backends/cuda/launchers.h"
#include "../../native/backends/cuda/decoder_launchers.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <string>
#include <vector>

#include "../../native/include/moe/rng_philox.h"
#include "../../native/include/moe/sampling_rule.h"
#include "check.h"
#include "dev_dtype.h"
#include "schedules.h"

namespace {

using emu_test::dtype_name;
using emu_test::elem_bytes;
using emu_test::kAllSchedules;
using emu_test::load_as;
using emu_test::round_to;
using emu_test::ScheduleScope;
using emu_test::store_as;
using moe::DevDType;

const DevDType kTypes[] = {DevDType::kF32, DevDType::kF16, DevDType::kBF16};

struct Rng {
  uint64_t s;
  explicit Rng(uint64_t seed) : s(seed * 0x9E3779B97F4A7C15ull + 12345) {}
  double uniform() {  // [0, 1)
    s = s * 6364136223846793005ull + 1442695040888963407ull;
    return double(s >> 11) / double(1ull << 53);
  }
  float sym(double scale = 1.0) { return float((uniform() * 2 - 1) * scale); }
};

// A device tensor of one dtype (host memory: the emulator's device), 16-byte aligned.
struct Buf {
  DevDType t = DevDType::kF32;
  std::vector<float> storage;  // float-sized words: 16-byte aligned by operator new
  size_t n = 0;
  Buf() = default;
  Buf(DevDType type, size_t count) : t(type), storage((count * elem_bytes(type) + 3) / 4 + 4, 0.f), n(count) {}
  void* ptr() { return storage.data(); }
  const void* ptr() const { return storage.data(); }
  void set(size_t i, float v) { store_as(ptr(), i, v, t); }
  float get(size_t i) const { return load_as(ptr(), i, t); }
  static Buf random(DevDType type, size_t count, Rng& rng, double scale = 1.0) {
    Buf b(type, count);
    for (size_t i = 0; i < count; ++i) b.set(i, rng.sym(scale));
    return b;
  }
};

// One rounding of dtype t around ref (the output's own), on top of an f32 error bound.
bool close(double got, double ref, DevDType t, double f32_bound) {
  const double ulp = t == DevDType::kF32 ? 0.0 : (t == DevDType::kF16 ? std::ldexp(1.0, -11) : std::ldexp(1.0, -8));
  const double tol = f32_bound + ulp * std::fabs(ref) + (t == DevDType::kF16 ? 6e-8 : 0.0);
  return std::fabs(got - ref) <= tol * 1.0001 + 1e-30;
}

std::string sched() { return std::string(" (") + moe_emu::schedule_name(moe_emu::schedule()) + ")"; }

// ---- embedding -------------------------------------------------------------------------------------

bool check_embedding(int64_t T, int64_t V, int64_t d, DevDType tt, DevDType ot, bool bad) {
  Rng rng(uint64_t(T * 31 + V + d));
  const Buf table = Buf::random(tt, size_t(V * d), rng, 3.0);
  std::vector<int32_t> ids(static_cast<size_t>(T));
  for (auto& id : ids) id = int32_t(rng.uniform() * double(V));
  int32_t want_bad = -1;
  if (bad && T > 2) {
    ids[size_t(T - 1)] = int32_t(V);
    ids[2] = -1;
    want_bad = 2;
  }
  Buf out(ot, size_t(T * d));
  for (size_t i = 0; i < out.n; ++i) out.set(i, 77.f);
  int32_t first_bad = 12345;
  const std::string what = "embedding T=" + std::to_string(T) + " V=" + std::to_string(V) + " d=" + std::to_string(d) +
                           " " + dtype_name(tt) + "->" + dtype_name(ot) + sched();
  const cudaError_t err =
      moe::launch_embedding(table.ptr(), tt, V, d, ids.data(), T, out.ptr(), ot, &first_bad, nullptr);
  if (err != cudaSuccess) {
    emu_test::fail(__FILE__, __LINE__, what + ": " + moe_error_string(err));
    return false;
  }
  CHECK_EQ(first_bad, want_bad);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t i = 0; i < d; ++i) {
      const int32_t id = ids[size_t(t)];
      const float want = id >= 0 && id < V ? round_to(table.get(size_t(id * d + i)), ot) : 0.f;
      if (out.get(size_t(t * d + i)) != want) {
        emu_test::fail(__FILE__, __LINE__, what + ": out[" + std::to_string(t) + "," + std::to_string(i) + "] = " +
                                               emu_test::describe(out.get(size_t(t * d + i))) + ", want " +
                                               emu_test::describe(want));
        return false;
      }
    }
  return true;
}

// ---- RMSNorm -------------------------------------------------------------------------------------------

bool check_norm(int64_t T, int64_t d, DevDType at, DevDType wt, DevDType yt, bool add, bool in_place) {
  Rng rng(uint64_t(T * 7 + d * 3 + int(at) * 11 + int(yt)));
  Buf a = Buf::random(at, size_t(T * d), rng, 2.0), b = Buf::random(at, size_t(T * d), rng, 2.0);
  const Buf w = Buf::random(wt, size_t(d), rng, 1.5);
  const Buf a0 = a;
  Buf sum(at, size_t(T * d)), y(yt, size_t(T * d));
  const float eps = 1e-5f;
  const std::string what = std::string(add ? "add_rms_norm" : "rms_norm") + (in_place ? " in place" : "") + " T=" +
                           std::to_string(T) + " d=" + std::to_string(d) + " " + dtype_name(at) + "/" +
                           dtype_name(wt) + "->" + dtype_name(yt) + sched();
  void* sum_ptr = in_place ? a.ptr() : sum.ptr();
  const cudaError_t err = add ? moe::launch_add_rms_norm(a.ptr(), b.ptr(), at, w.ptr(), wt, T, d, eps, sum_ptr, y.ptr(),
                                                         yt, nullptr)
                              : moe::launch_rms_norm(a.ptr(), at, w.ptr(), wt, T, d, eps, y.ptr(), yt, nullptr);
  if (err != cudaSuccess) {
    emu_test::fail(__FILE__, __LINE__, what + ": " + moe_error_string(err));
    return false;
  }
  const Buf& sum_buf = in_place ? a : sum;
  for (int64_t t = 0; t < T; ++t) {
    std::vector<double> x(static_cast<size_t>(d));
    for (int64_t i = 0; i < d; ++i) {
      const size_t k = size_t(t * d + i);
      if (add) {
        const float s = round_to(a0.get(k) + b.get(k), at);  // f32 sum of the stored inputs, rounded
        if (sum_buf.get(k) != s) {
          emu_test::fail(__FILE__, __LINE__, what + ": sum[" + std::to_string(k) + "] = " +
                                                 emu_test::describe(sum_buf.get(k)) + ", want " +
                                                 emu_test::describe(s));
          return false;
        }
        x[size_t(i)] = s;
      } else {
        x[size_t(i)] = a0.get(k);
      }
    }
    double ss = 0;
    for (double v : x) ss += v * v;
    const double r = 1.0 / std::sqrt(ss / double(d) + double(eps));
    for (int64_t i = 0; i < d; ++i) {
      const double ref = x[size_t(i)] * r * w.get(size_t(i));
      const double got = y.get(size_t(t * d + i));
      if (!close(got, ref, yt, 1e-6 * (std::fabs(ref) + 1e-3))) {
        emu_test::fail(__FILE__, __LINE__, what + ": y[" + std::to_string(t) + "," + std::to_string(i) + "] = " +
                                               emu_test::describe(got) + ", want " + emu_test::describe(ref));
        return false;
      }
    }
  }
  return true;
}

// ---- linear ----------------------------------------------------------------------------------------

bool check_linear(int64_t T, int64_t in, int64_t out, DevDType xt, DevDType wt, DevDType yt,
                  moe::GroupedGemmPath path) {
  Rng rng(uint64_t(T * 131 + in * 17 + out + int(wt)));
  const Buf x = Buf::random(xt, size_t(T * in), rng, 1.0);
  const Buf w = Buf::random(wt, size_t(out * in), rng, 0.5);
  Buf y(yt, size_t(T * out));
  std::vector<unsigned char> ws(moe::linear_workspace_bytes(T, in, wt) + 16);
  void* ws_ptr = ws.data() + (16 - reinterpret_cast<uintptr_t>(ws.data()) % 16) % 16;
  const std::string what = "linear T=" + std::to_string(T) + " in=" + std::to_string(in) +
                           " out=" + std::to_string(out) +
                           " x " + dtype_name(xt) + " w " + dtype_name(wt) + " y " + dtype_name(yt) + " path " +
                           std::to_string(int(path)) + sched();
  const cudaError_t err = moe::launch_linear(x.ptr(), xt, T, in, w.ptr(), wt, out, y.ptr(), yt, ws_ptr,
                                             ws.size() - 16, nullptr, path);
  if (err != cudaSuccess) {
    emu_test::fail(__FILE__, __LINE__, what + ": " + moe_error_string(err));
    return false;
  }
  for (int64_t t = 0; t < T; ++t)
    for (int64_t o = 0; o < out; ++o) {
      double ref = 0, mag = 0;
      for (int64_t i = 0; i < in; ++i) {
        const double xv = round_to(x.get(size_t(t * in + i)), wt);  // x meets the weights in their dtype
        const double term = xv * w.get(size_t(o * in + i));
        ref += term;
        mag += std::fabs(term);
      }
      const double got = y.get(size_t(t * out + o));
      if (!close(got, ref, yt, 4e-7 * mag + 1e-7)) {
        emu_test::fail(__FILE__, __LINE__, what + ": y[" + std::to_string(t) + "," + std::to_string(o) + "] = " +
                                               emu_test::describe(got) + ", want " + emu_test::describe(ref));
        return false;
      }
    }
  return true;
}

// ---- RoPE -------------------------------------------------------------------------------------------

bool check_rope(int64_t T, int hq, int hkv, int hd, DevDType t, float theta) {
  Rng rng(uint64_t(T + hq * 5 + hd));
  Buf q = Buf::random(t, size_t(T * hq * hd), rng, 2.0), k = Buf::random(t, size_t(T * hkv * hd), rng, 2.0);
  const Buf q0 = q, k0 = k;
  std::vector<int32_t> pos(static_cast<size_t>(T));
  for (int64_t i = 0; i < T; ++i) pos[size_t(i)] = int32_t(i % 3 == 0 ? 5000 + 7 * i : i);
  std::vector<float> inv(static_cast<size_t>(hd / 2));
  moe::rope_inv_freq(hd, theta, inv.data());
  const std::string what = "rope T=" + std::to_string(T) + " " + std::to_string(hq) + "/" + std::to_string(hkv) +
                           " hd=" + std::to_string(hd) + " " + dtype_name(t) + sched();
  const cudaError_t err = moe::launch_rope(q.ptr(), k.ptr(), t, T, hq, hkv, hd, pos.data(), theta, nullptr);
  if (err != cudaSuccess) {
    emu_test::fail(__FILE__, __LINE__, what + ": " + moe_error_string(err));
    return false;
  }
  for (int pass = 0; pass < 2; ++pass) {
    const Buf& before = pass == 0 ? q0 : k0;
    const Buf& after = pass == 0 ? q : k;
    const int heads = pass == 0 ? hq : hkv;
    for (int64_t tok = 0; tok < T; ++tok)
      for (int h = 0; h < heads; ++h)
        for (int i = 0; i < hd / 2; ++i) {
          // The documented inv_freq (f32 powf), the f32 angle, sin/cos in double.
          const float angle = float(pos[size_t(tok)]) * inv[size_t(i)];
          const double c = std::cos(double(angle)), s = std::sin(double(angle));
          const size_t base = size_t((tok * heads + h) * hd);
          const double x1 = before.get(base + size_t(i)), x2 = before.get(base + size_t(i + hd / 2));
          const double r1 = x1 * c - x2 * s, r2 = x2 * c + x1 * s;
          const double bound = 4e-7 * (std::fabs(x1) + std::fabs(x2));
          if (!close(after.get(base + size_t(i)), r1, t, bound) ||
              !close(after.get(base + size_t(i + hd / 2)), r2, t, bound)) {
            emu_test::fail(__FILE__, __LINE__, what + ": token " + std::to_string(tok) + " head " + std::to_string(h) +
                                                   " i " + std::to_string(i) + ": " +
                                                   emu_test::describe(after.get(base + size_t(i))) + " vs " +
                                                   emu_test::describe(r1));
            return false;
          }
        }
  }
  return true;
}

// ---- attention -----------------------------------------------------------------------------------------

struct AttnCase {
  int hq, hkv, hd;
  int64_t max_seq;
  DevDType cache_t, act_t;
};

// Caches filled with random keys/values for positions 0 .. len-1 (by launch_kv_append, T at a time
// from `chunk_tokens`, which also tests the append).
struct Cache {
  Buf k, v;
  Buf k_src, v_src;  // [len, hkv, hd] of act_t: what was appended
};

Cache make_cache(const AttnCase& c, int64_t len, int64_t append_tokens, uint64_t seed) {
  Rng rng(seed);
  Cache cache;
  const size_t row = size_t(c.hkv * c.hd);
  cache.k = Buf(c.cache_t, size_t(c.max_seq) * row);
  cache.v = Buf(c.cache_t, size_t(c.max_seq) * row);
  cache.k_src = Buf::random(c.act_t, size_t(len) * row, rng, 1.5);
  cache.v_src = Buf::random(c.act_t, size_t(len) * row, rng, 1.5);
  const size_t es = elem_bytes(c.act_t);
  for (int64_t s = 0; s < len; s += append_tokens) {
    const int64_t n = std::min(append_tokens, len - s);
    CHECK_OK(moe::launch_kv_append(static_cast<const unsigned char*>(cache.k_src.ptr()) + size_t(s) * row * es,
                                   static_cast<const unsigned char*>(cache.v_src.ptr()) + size_t(s) * row * es, c.act_t,
                                   n, c.hkv, c.hd, s, cache.k.ptr(), cache.v.ptr(), c.cache_t, c.max_seq, nullptr));
  }
  return cache;
}

cudaError_t run_attention(const AttnCase& c, const Cache& cache, const Buf& q, int64_t T, int64_t start, int64_t window,
                          Buf* out, moe::AttentionPath path, bool with_workspace = true) {
  std::vector<float> ws(moe::attention_workspace_bytes(T, c.hq, c.hd, c.max_seq) / 4 + 4);
  return moe::launch_attention(q.ptr(), q.t, T, start, c.hq, c.hkv, c.hd, window, cache.k.ptr(), cache.v.ptr(),
                               c.cache_t, c.max_seq, out->ptr(), out->t, with_workspace ? ws.data() : nullptr,
                               with_workspace ? ws.size() * 4 : 0, nullptr, path);
}

bool check_attention_ref(const AttnCase& c, const Cache& cache, const Buf& q, const Buf& out, int64_t T, int64_t start,
                         int64_t window, const std::string& what) {
  for (int64_t t = 0; t < T; ++t)
    for (int h = 0; h < c.hq; ++h) {
      const int64_t pos = start + t, lo = window > 0 ? std::max<int64_t>(0, pos - window + 1) : 0;
      const int kvh = h / (c.hq / c.hkv);
      std::vector<double> s;
      double mx = -INFINITY;
      for (int64_t j = lo; j <= pos; ++j) {
        double dot = 0;
        for (int e = 0; e < c.hd; ++e)
          dot += double(q.get(size_t((t * c.hq + h) * c.hd + e))) *
                 cache.k.get(size_t((j * c.hkv + kvh) * c.hd + e));
        s.push_back(dot / std::sqrt(double(c.hd)));
        mx = std::max(mx, s.back());
      }
      double sum = 0;
      for (double& v : s) sum += (v = std::exp(v - mx));
      for (int e = 0; e < c.hd; ++e) {
        double ref = 0, mag = 0;
        for (int64_t j = lo; j <= pos; ++j) {
          const double term = s[size_t(j - lo)] / sum * cache.v.get(size_t((j * c.hkv + kvh) * c.hd + e));
          ref += term;
          mag += std::fabs(term);
        }
        const double got = out.get(size_t((t * c.hq + h) * c.hd + e));
        if (!close(got, ref, out.t, 3e-6 * mag + 1e-7)) {
          emu_test::fail(__FILE__, __LINE__, what + ": out[" + std::to_string(t) + "," + std::to_string(h) + "," +
                                                 std::to_string(e) + "] = " + emu_test::describe(got) + ", want " +
                                                 emu_test::describe(ref));
          return false;
        }
      }
    }
  return true;
}

bool check_attention(const AttnCase& c, int64_t T, int64_t start, int64_t window, moe::AttentionPath path,
                     DevDType out_t) {
  const Cache cache = make_cache(c, start + T, 64, uint64_t(c.hq * 13 + c.hd + start));
  Rng rng(uint64_t(T * 3 + start));
  const Buf q = Buf::random(c.act_t, size_t(T * c.hq * c.hd), rng, 1.5);
  Buf out(out_t, size_t(T * c.hq * c.hd));
  const std::string what = "attention " + std::to_string(c.hq) + "/" + std::to_string(c.hkv) + " hd=" +
                           std::to_string(c.hd) + " T=" + std::to_string(T) + " start=" + std::to_string(start) +
                           " window=" + std::to_string(window) + " cache " + dtype_name(c.cache_t) + " out " +
                           dtype_name(out_t) + " path " + std::to_string(int(path)) + sched();
  const cudaError_t err = run_attention(c, cache, q, T, start, window, &out, path);
  if (err != cudaSuccess) {
    emu_test::fail(__FILE__, __LINE__, what + ": " + moe_error_string(err));
    return false;
  }
  return check_attention_ref(c, cache, q, out, T, start, window, what);
}

// ---- sampling --------------------------------------------------------------------------------------

int32_t reference_argmax(const float* row, int64_t V) {
  int64_t best = -1;
  for (int64_t i = 0; i < V; ++i)
    if (!std::isnan(row[i]) && (best < 0 || row[i] > row[best])) best = i;
  return int32_t(best < 0 ? 0 : best);
}

moe::SampleRow srow(float temperature, float top_p, uint64_t seed, uint64_t step, uint64_t stream) {
  moe::SampleRow r;
  r.temperature = temperature, r.top_p = top_p, r.seed = seed, r.step = step, r.stream = stream;
  return r;
}

// Each row's penalty history: distinct ids and their counts, rows in CSR (offsets [T+1]).
struct History {
  std::vector<int32_t> ids, counts, offsets{0};
  void add_row(const std::vector<std::pair<int32_t, int32_t>>& e) {
    for (const auto& [id, c] : e) ids.push_back(id), counts.push_back(c);
    offsets.push_back(int32_t(ids.size()));
  }
};

moe::TensorView i32_view(const void* p, std::initializer_list<int64_t> dims) {
  moe::TensorView v;
  v.data = const_cast<void*>(p), v.dtype = moe::DType::kI32, v.ndim = int(dims.size());
  int k = 0;
  for (int64_t d : dims) v.dims[k++] = d;
  return v;
}

// The CUDA launcher (run by the emulator) over T rows.
cudaError_t gpu_sample(const float* logits, int64_t T, int64_t V, const std::vector<moe::SampleRow>& rows,
                       const History* h, int32_t* ids) {
  std::vector<uint64_t> ws((moe::sample_workspace_bytes(T, V, h != nullptr) + 7) / 8 + 1);
  return moe::launch_sample(logits, T, V, rows.data(), h ? h->ids.data() : nullptr, h ? h->counts.data() : nullptr,
                            h ? h->offsets.data() : nullptr, h ? int64_t(h->ids.size()) : 0, ws.data(), ws.size() * 8,
                            ids, nullptr);
}

// The CPU backend's op over T rows.
moe::Status cpu_sample(const float* logits, int64_t T, int64_t V, const std::vector<moe::SampleRow>& rows,
                       const History* h, int32_t* ids) {
  moe::SampleArgs a;
  a.logits.data = const_cast<float*>(logits), a.logits.ndim = 2, a.logits.dims[0] = T, a.logits.dims[1] = V;
  a.rows = i32_view(rows.data(), {T, moe::kSampleRowWords});
  if (h) {
    a.penalty_ids = i32_view(h->ids.data(), {int64_t(h->ids.size())});
    a.penalty_counts = i32_view(h->counts.data(), {int64_t(h->counts.size())});
    a.penalty_offsets = i32_view(h->offsets.data(), {T + 1});
  }
  a.ids = i32_view(ids, {T});
  return moe::cpu::sample(a);
}

// The sampling rule by its definition: penalties applied one token at a time, weights sorted by
// decreasing value (ties: lower index first) for top-k and again for the shortest prefix reaching
// the top-p mass, then inverse CDF over the kept ids in index order.
int32_t reference_sample(const float* row0, int64_t V, const moe::SampleRow& p, const int32_t* hid = nullptr,
                         const int32_t* hcnt = nullptr, int64_t nh = 0) {
  std::vector<float> row(row0, row0 + V);
  for (int64_t j = 0; j < nh; ++j) {
    float& l = row[size_t(hid[j])];
    if (std::isnan(l)) continue;
    double x = l;
    if (p.repetition != 1.f) x = x > 0 ? x / double(p.repetition) : x * double(p.repetition);
    x -= double(hcnt[j]) * double(p.frequency) + double(p.presence);
    l = float(x);
  }
  const int32_t greedy = reference_argmax(row.data(), V);
  if (std::isnan(row[size_t(greedy)]) || !(p.temperature > 0.f)) return greedy;
  std::vector<uint64_t> w(static_cast<size_t>(V));
  const double min_frac = double(uint64_t(double(p.min_p) * 4294967296.0 + 0.5)) / 4294967296.0;
  for (int64_t i = 0; i < V; ++i) {
    w[size_t(i)] = moe::sample_weight(row[size_t(i)], row[size_t(greedy)], p.temperature);
    if (double(w[size_t(i)]) < min_frac * double(moe::kSampleWeightOne)) w[size_t(i)] = 0;
  }
  std::vector<int64_t> order(static_cast<size_t>(V));
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return w[size_t(a)] > w[size_t(b)]; });
  if (p.top_k > 0)
    for (size_t r = size_t(p.top_k); r < order.size(); ++r) w[size_t(order[r])] = 0;
  uint64_t total = 0;
  for (uint64_t x : w) total += x;
  if (total == 0) return greedy;
  const uint64_t mass = moe::top_p_mass(total, p.top_p);
  std::vector<bool> kept(size_t(V), false);
  uint64_t acc = 0;
  for (int64_t i : order) {  // (the order of the weights before top-k: the kept ones lead it still)
    if (acc >= mass) break;
    kept[size_t(i)] = true;
    acc += w[size_t(i)];
  }
  const uint64_t target = moe::mulhi_u64(moe::philox_u64(p.seed, p.step, p.stream), acc);
  uint64_t run = 0;
  for (int64_t i = 0; i < V; ++i)
    if (kept[size_t(i)] && (run += w[size_t(i)]) > target) return int32_t(i);
  return -1;
}

// moe::sample_row with its own scratch.
int32_t sequential_sample(const float* row, int64_t V, const moe::SampleRow& p, const int32_t* hid = nullptr,
                          const int32_t* hcnt = nullptr, int64_t nh = 0) {
  moe::SampleScratch scratch;
  return moe::sample_row(row, V, p, hid, hcnt, nh, scratch);
}

std::vector<float> make_logits(int64_t T, int64_t V, uint64_t seed) {
  Rng rng(seed);
  std::vector<float> l(static_cast<size_t>(T * V));
  for (float& v : l) v = float(int(rng.sym(8.0) * 4)) / 4;  // quarter steps: many exact ties
  return l;
}

}  // namespace

// ---- tests ---------------------------------------------------------------------------------------------

TEST(model_embedding_every_dtype_and_schedule) {
  for (moe_emu::Schedule s : kAllSchedules) {
    ScheduleScope scope(s, 5);
    for (DevDType tt : kTypes)
      for (DevDType ot : kTypes)
        for (int64_t d : {1, 33, 64})
          if (!check_embedding(33, 97, d, tt, ot, true) || !check_embedding(1, 97, d, tt, ot, false)) return;
  }
  // All ids valid: first_bad = -1; T = 0 still reports -1.
  int32_t bad = 5;
  std::vector<float> table(8, 1.f), out(8);
  const std::vector<int32_t> ids = {1, 0};
  CHECK_OK(moe::launch_embedding(table.data(), DevDType::kF32, 2, 4, ids.data(), 2, out.data(), DevDType::kF32, &bad,
                                 nullptr));
  CHECK_EQ(bad, -1);
  bad = 5;
  CHECK_OK(moe::launch_embedding(table.data(), DevDType::kF32, 2, 4, ids.data(), 0, out.data(), DevDType::kF32, &bad,
                                 nullptr));
  CHECK_EQ(bad, -1);
  CHECK(moe::launch_embedding(table.data(), DevDType::kF32, 0, 4, ids.data(), 2, out.data(), DevDType::kF32, &bad,
                              nullptr) == cudaErrorInvalidValue);
}

TEST(model_rms_norm_and_fused_add) {
  for (moe_emu::Schedule s : kAllSchedules) {
    ScheduleScope scope(s, 6);
    for (int64_t d : {7, 64, 200})
      for (int64_t T : {1, 33}) {
        if (!check_norm(T, d, DevDType::kF32, DevDType::kF32, DevDType::kF32, false, false) ||
            !check_norm(T, d, DevDType::kBF16, DevDType::kBF16, DevDType::kBF16, false, false) ||
            !check_norm(T, d, DevDType::kF16, DevDType::kF32, DevDType::kF32, false, false) ||
            !check_norm(T, d, DevDType::kF32, DevDType::kBF16, DevDType::kF16, true, false) ||
            !check_norm(T, d, DevDType::kBF16, DevDType::kBF16, DevDType::kBF16, true, true) ||
            !check_norm(T, d, DevDType::kF16, DevDType::kF16, DevDType::kF16, true, false))
          return;
      }
  }
  // Misaligned rows (d = 4 but the pointers off by one element) take the scalar path.
  std::vector<float> x(9, 2.f), w(4, 1.f), y(9, 0.f);
  CHECK_OK(moe::launch_rms_norm(x.data() + 1, DevDType::kF32, w.data(), DevDType::kF32, 2, 4, 0.f, y.data() + 1,
                                DevDType::kF32, nullptr));
  CHECK_EQ(y[1], 1.f);
  CHECK_EQ(y[8], 1.f);
  CHECK(moe::launch_rms_norm(x.data(), DevDType::kF32, w.data(), DevDType::kF32, 2, 0, 0.f, y.data(), DevDType::kF32,
                             nullptr) == cudaErrorInvalidValue);
  CHECK(moe::launch_rms_norm(x.data(), DevDType::kF32, w.data(), DevDType::kF32, 2, 4, -1.f, y.data(), DevDType::kF32,
                             nullptr) == cudaErrorInvalidValue);
}

TEST(model_residual_add) {
  for (moe_emu::Schedule s : kAllSchedules) {
    ScheduleScope scope(s, 7);
    for (DevDType t : kTypes)
      for (int64_t n : {1, 37, 1024}) {
        Rng rng(static_cast<uint64_t>(n));
        Buf a = Buf::random(t, size_t(n), rng, 100.0);
        const Buf b = Buf::random(t, size_t(n), rng, 100.0), a0 = a;
        CHECK_OK(moe::launch_residual_add(a.ptr(), b.ptr(), a.ptr(), t, n, nullptr));  // in place
        for (size_t i = 0; i < size_t(n); ++i) CHECK_EQ(a.get(i), round_to(a0.get(i) + b.get(i), t));
      }
  }
}

// launch_cast: every pair of types, odd lengths; each element rounded once to the output type.
TEST(model_cast_every_pair) {
  for (moe_emu::Schedule s : kAllSchedules) {
    ScheduleScope scope(s, 9);
    for (DevDType from : kTypes)
      for (DevDType to : kTypes)
        for (int64_t n : {1, 33, 700}) {
          Rng rng(static_cast<uint64_t>(n * 7 + int(from) * 3 + int(to)));
          const Buf in = Buf::random(from, size_t(n), rng, 1000.0);
          Buf out(to, size_t(n));
          CHECK_OK(moe::launch_cast(in.ptr(), from, out.ptr(), to, n, nullptr));
          for (size_t i = 0; i < size_t(n); ++i) CHECK_EQ(out.get(i), round_to(in.get(i), to));
        }
  }
  Buf b(DevDType::kF32, 4);
  CHECK(moe::launch_cast(nullptr, DevDType::kF32, b.ptr(), DevDType::kF16, 4, nullptr) == cudaErrorInvalidValue);
  CHECK(moe::launch_cast(b.ptr(), DevDType::kF32, b.ptr(), DevDType::kF16, -1, nullptr) == cudaErrorInvalidValue);
  CHECK_OK(moe::launch_cast(nullptr, DevDType::kF32, nullptr, DevDType::kF16, 0, nullptr));
}

TEST(model_linear_every_path) {
  using P = moe::GroupedGemmPath;
  for (moe_emu::Schedule s : kAllSchedules) {
    ScheduleScope scope(s, 8);
    for (DevDType wt : kTypes) {
      const DevDType y16 = wt == DevDType::kF32 ? DevDType::kF32 : wt;
      if (!check_linear(1, 40, 33, wt, wt, DevDType::kF32, P::kAuto) ||
          !check_linear(5, 13, 24, DevDType::kF32, wt, y16, P::kAuto) ||
          !check_linear(33, 64, 40, wt, wt, y16, P::kAuto) ||
          !check_linear(33, 13, 33, wt, wt, DevDType::kF32, P::kAuto))
        return;
    }
  }
  for (DevDType wt : kTypes)
    for (P path : {P::kDecode, P::kSimt, P::kTensorCores}) {
      if (path == P::kTensorCores && wt == DevDType::kF32) continue;
      for (int64_t T : {1, 17, 70})
        if (!check_linear(T, 72, 130, wt, wt, wt == DevDType::kF32 ? DevDType::kF32 : wt, path) ||
            !check_linear(T, 72, 66, DevDType::kF32, wt, DevDType::kF32, path))
          return;
    }
  // Decode with 12 rows (one pass of 16) and 7 (8), K long enough for the unrolled k steps (256
  // bf16 per warp step, 4 steps at a time with 16 rows) and remainder steps.
  if (!check_linear(12, 1100, 24, DevDType::kBF16, DevDType::kBF16, DevDType::kBF16, P::kDecode) ||
      !check_linear(7, 1100, 40, DevDType::kF16, DevDType::kF16, DevDType::kF32, P::kDecode))
    return;
  // Mismatched y dtype, forced tensor cores on f32, a missing workspace for a conversion.
  std::vector<float> x(64, 1.f), w(64, 1.f), y(64);
  CHECK(moe::launch_linear(x.data(), DevDType::kF32, 2, 8, w.data(), DevDType::kBF16, 4, y.data(), DevDType::kF16,
                           nullptr, 0, nullptr) == cudaErrorInvalidValue);
  CHECK(moe::launch_linear(x.data(), DevDType::kF32, 2, 8, w.data(), DevDType::kF32, 4, y.data(), DevDType::kF32,
                           nullptr, 0, nullptr, P::kTensorCores) == cudaErrorInvalidValue);
  CHECK(moe::launch_linear(x.data(), DevDType::kF32, 2, 8, w.data(), DevDType::kBF16, 4, y.data(), DevDType::kF32,
                           nullptr, 0, nullptr) == cudaErrorInvalidValue);
  CHECK_OK(moe::launch_linear(x.data(), DevDType::kF32, 2, 8, w.data(), DevDType::kF32, 4, y.data(), DevDType::kF32,
                              nullptr, 0, nullptr));
  CHECK_EQ(y[7], 8.f);
}

TEST(model_rope) {
  for (moe_emu::Schedule s : kAllSchedules) {
    ScheduleScope scope(s, 9);
    for (DevDType t : kTypes)
      if (!check_rope(33, 4, 2, 64, t, 1e6f) || !check_rope(1, 8, 1, 128, t, 10000.f) ||
          !check_rope(5, 32, 8, 32, t, 1e6f))
        return;
  }
  CHECK(moe::launch_rope(nullptr, nullptr, DevDType::kF32, 1, 1, 1, 7, nullptr, 1e4f, nullptr) ==
        cudaErrorInvalidValue);
}

// The philox known-answer vectors of Random123 (kat_vectors: philox4x32 10).
TEST(model_philox_known_answers) {
  const moe::Philox4x32 z = moe::philox4x32_10({{0, 0, 0, 0}}, 0, 0);
  CHECK_EQ(z.v[0], 0x6627e8d5u);
  CHECK_EQ(z.v[1], 0xe169c58du);
  CHECK_EQ(z.v[2], 0xbc57ac4cu);
  CHECK_EQ(z.v[3], 0x9b00dbd8u);
  const moe::Philox4x32 f = moe::philox4x32_10({{~0u, ~0u, ~0u, ~0u}}, ~0u, ~0u);
  CHECK_EQ(f.v[0], 0x408f276du);
  CHECK_EQ(f.v[1], 0x41c83b0eu);
  CHECK_EQ(f.v[2], 0xa20bc7c6u);
  CHECK_EQ(f.v[3], 0x6d5451fdu);
  const moe::Philox4x32 pi = moe::philox4x32_10({{0x243f6a88u, 0x85a308d3u, 0x13198a2eu, 0x03707344u}}, 0xa4093822u,
                                                0x299f31d0u);
  CHECK_EQ(pi.v[0], 0xd16cfe09u);
  CHECK_EQ(pi.v[1], 0x94fdccebu);
  CHECK_EQ(pi.v[2], 0x5001e420u);
  CHECK_EQ(pi.v[3], 0x24126ea1u);
  CHECK_EQ(moe::mulhi_u64(~0ull, ~0ull), ~0ull - 1);
  CHECK_EQ(moe::mulhi_u64(1ull << 63, 6), 3ull);
}

TEST(model_attention_small_every_schedule) {
  using P = moe::AttentionPath;
  const AttnCase small = {4, 2, 64, 160, DevDType::kF32, DevDType::kF32};
  for (moe_emu::Schedule s : kAllSchedules) {
    ScheduleScope scope(s, 10);
    if (!check_attention(small, 33, 0, 0, P::kAuto, DevDType::kF32) ||
        !check_attention(small, 5, 135, 20, P::kSplit, DevDType::kF32))
      return;
  }
}

TEST(model_attention_against_reference_sweep) {
  using P = moe::AttentionPath;
  const AttnCase cases[] = {{8, 1, 32, 160, DevDType::kBF16, DevDType::kBF16},
                            {32, 8, 32, 160, DevDType::kF16, DevDType::kF32},
                            {4, 2, 128, 160, DevDType::kF32, DevDType::kBF16},
                            {4, 2, 64, 160, DevDType::kF16, DevDType::kF16},
                            {2, 1, 256, 160, DevDType::kBF16, DevDType::kF32}};
  for (const AttnCase& c : cases) {
    const DevDType out_t = c.act_t;
    const int64_t tp = c.hq >= 16 ? 5 : 33;  // prefill tokens (fewer with many heads: emulation time)
    if (!check_attention(c, tp, 0, 0, P::kSingle, out_t) || !check_attention(c, 1, 140, 0, P::kAuto, out_t) ||
        !check_attention(c, 3, 125, 0, P::kSplit, out_t) || !check_attention(c, tp, 100, 40, P::kSingle, out_t) ||
        !check_attention(c, 1, 155, 130, P::kSplit, out_t))
      return;
  }
}

// Decode step by step (T = 1 per call, the split path across chunks) equals one prefill pass over
// the same sequence bit for bit, with and without a sliding window; and so does the split path on
// a prefill.
TEST(model_attention_decode_equals_prefill_sweep) {
  using P = moe::AttentionPath;
  for (int config = 0; config < 2; ++config) {
    const DevDType ct = config == 0 ? DevDType::kBF16 : DevDType::kF32;
    const int64_t window = config == 0 ? 0 : 50;
    const AttnCase c = {2, 1, 32, 150, ct, DevDType::kBF16};
    const int64_t len = 140;  // past the first 128-key chunk
    {
      const Cache cache = make_cache(c, len, 1, 77);  // appended one token at a time
      const Cache cache_prefill = make_cache(c, len, len, 77);
      CHECK(std::memcmp(cache.k.ptr(), cache_prefill.k.ptr(), cache.k.storage.size() * 4) == 0);
      CHECK(std::memcmp(cache.v.ptr(), cache_prefill.v.ptr(), cache.v.storage.size() * 4) == 0);
      Rng rng(3);
      const Buf q = Buf::random(c.act_t, size_t(len * c.hq * c.hd), rng, 2.0);
      Buf prefill(DevDType::kF32, q.n), split(DevDType::kF32, q.n);
      CHECK_OK(run_attention(c, cache_prefill, q, len, 0, window, &prefill, P::kSingle));
      CHECK_OK(run_attention(c, cache_prefill, q, len, 0, window, &split, P::kSplit));
      CHECK(std::memcmp(prefill.ptr(), split.ptr(), q.n * 4) == 0);
      const size_t row = size_t(c.hq * c.hd);
      for (int64_t p = 0; p < len; ++p) {
        Buf qs(c.act_t, row), out(DevDType::kF32, row);
        for (size_t e = 0; e < row; ++e) qs.set(e, q.get(size_t(p) * row + e));
        CHECK_OK(run_attention(c, cache, qs, 1, p, window, &out, P::kAuto));
        if (std::memcmp(out.ptr(), static_cast<const float*>(prefill.ptr()) + size_t(p) * row, row * 4) != 0) {
          emu_test::fail(__FILE__, __LINE__, std::string("decode != prefill at position ") + std::to_string(p) +
                                                 " cache " + dtype_name(ct) + " window " + std::to_string(window));
          return;
        }
      }
      if (!check_attention_ref(c, cache_prefill, q, prefill, len, 0, window, "prefill of the decode test")) return;
    }
  }
}

// The paged pool (launch_paged_kv_append / launch_paged_attention): three sequences of different
// lengths in shuffled blocks of one pool, their tokens in one call in a shuffled order; every row of
// the pool and every output equal the contiguous cache's and attention's, bit for bit, on each path.
TEST(model_paged_attention_equals_contiguous) {
  using P = moe::AttentionPath;
  for (moe_emu::Schedule sch : kAllSchedules) {
    ScheduleScope scope(sch, 11);
    for (int config = 0; config < 2; ++config) {
      if (config == 1 && sch != kAllSchedules[0]) continue;  // the window case under one schedule
      const DevDType ct = config == 0 ? DevDType::kBF16 : DevDType::kF32;
      const int64_t window = config == 0 ? 0 : 50;
      const int64_t lens[3] = {140, 37, 260};
      const int B = 16, hq = 4, hkv = 2, hd = 64;
      const AttnCase c = {hq, hkv, hd, 272, ct, DevDType::kF32};
      const size_t row = size_t(hkv * hd), qrow = size_t(hq * hd);
      // blocks: a shuffled permutation of the pool, handed out in order
      int max_blocks = 0, total_blocks = 0;
      for (int64_t L : lens) max_blocks = std::max(max_blocks, int((L + B - 1) / B)), total_blocks += int((L + B - 1) / B);
      const int num_blocks = total_blocks + 3;
      std::vector<int32_t> perm(static_cast<size_t>(num_blocks));
      for (int i = 0; i < num_blocks; ++i) perm[size_t(i)] = i;
      Rng rng(uint64_t(config * 97 + 5));
      for (int i = num_blocks - 1; i > 0; --i) std::swap(perm[size_t(i)], perm[size_t(uint64_t(rng.uniform() * double(i + 1)))]);
      std::vector<int32_t> tables(size_t(3 * max_blocks), -1);
      int next = 0;
      for (int sq = 0; sq < 3; ++sq)
        for (int b = 0; b < int((lens[sq] + B - 1) / B); ++b) tables[size_t(sq * max_blocks + b)] = perm[size_t(next++)];
      // per sequence: contiguous cache (the reference), its queries and the contiguous outputs
      std::vector<Cache> caches;
      std::vector<Buf> qs, ref;
      for (int sq = 0; sq < 3; ++sq) {
        caches.push_back(make_cache(c, lens[sq], 7, uint64_t(100 + sq)));
        qs.push_back(Buf::random(DevDType::kF32, size_t(lens[sq]) * qrow, rng, 2.0));
        ref.emplace_back(DevDType::kF32, size_t(lens[sq]) * qrow);
        CHECK_OK(run_attention(c, caches.back(), qs.back(), lens[sq], 0, window, &ref.back(), P::kSingle));
      }
      // every token of the three sequences, shuffled into one call
      std::vector<std::pair<int, int64_t>> toks;
      for (int sq = 0; sq < 3; ++sq)
        for (int64_t pos = 0; pos < lens[sq]; ++pos) toks.emplace_back(sq, pos);
      for (size_t i = toks.size() - 1; i > 0; --i) std::swap(toks[i], toks[size_t(size_t(rng.uniform() * double(i + 1)))]);
      const int64_t T = int64_t(toks.size());
      std::vector<int32_t> positions(toks.size()), seq_of(toks.size());
      Buf k(DevDType::kF32, size_t(T) * row), v(DevDType::kF32, size_t(T) * row), q(DevDType::kF32, size_t(T) * qrow);
      for (size_t i = 0; i < toks.size(); ++i) {
        const auto [sq, pos] = toks[i];
        positions[i] = int32_t(pos), seq_of[i] = sq;
        for (size_t e = 0; e < row; ++e) {
          k.set(i * row + e, caches[size_t(sq)].k_src.get(size_t(pos) * row + e));
          v.set(i * row + e, caches[size_t(sq)].v_src.get(size_t(pos) * row + e));
        }
        for (size_t e = 0; e < qrow; ++e) q.set(i * qrow + e, qs[size_t(sq)].get(size_t(pos) * qrow + e));
      }
      Buf kp(ct, size_t(num_blocks) * B * row), vp(ct, size_t(num_blocks) * B * row);
      CHECK_OK(moe::launch_paged_kv_append(k.ptr(), v.ptr(), DevDType::kF32, T, hkv, hd, positions.data(), seq_of.data(),
                                           tables.data(), max_blocks, B, kp.ptr(), vp.ptr(), ct, nullptr));
      for (int sq = 0; sq < 3; ++sq)
        for (int64_t pos = 0; pos < lens[sq]; ++pos) {
          const size_t prow = size_t(tables[size_t(sq * max_blocks) + size_t(pos / B)]) * B + size_t(pos % B);
          for (size_t e = 0; e < row; ++e)
            if (kp.get(prow * row + e) != caches[size_t(sq)].k.get(size_t(pos) * row + e) ||
                vp.get(prow * row + e) != caches[size_t(sq)].v.get(size_t(pos) * row + e)) {
              emu_test::fail(__FILE__, __LINE__, "paged append: sequence " + std::to_string(sq) + " position " + std::to_string(pos) + sched());
              return;
            }
        }
      const int64_t max_pos = 259;
      for (P path : {P::kSingle, P::kSplit}) {
        Buf out(DevDType::kF32, size_t(T) * qrow);
        std::vector<float> ws(moe::paged_attention_workspace_bytes(T, hq, hd, max_pos) / 4 + 4);
        CHECK_OK(moe::launch_paged_attention(q.ptr(), DevDType::kF32, T, positions.data(), seq_of.data(), tables.data(),
                                             max_blocks, B, max_pos, hq, hkv, hd, window, kp.ptr(), vp.ptr(), ct, out.ptr(),
                                             DevDType::kF32, ws.data(), ws.size() * 4, nullptr, path));
        for (size_t i = 0; i < toks.size(); ++i) {
          const auto [sq, pos] = toks[i];
          if (std::memcmp(static_cast<const float*>(out.ptr()) + i * qrow,
                          static_cast<const float*>(ref[size_t(sq)].ptr()) + size_t(pos) * qrow, qrow * 4) != 0) {
            emu_test::fail(__FILE__, __LINE__, "paged != contiguous: sequence " + std::to_string(sq) + " position " +
                                                   std::to_string(pos) + " path " + std::to_string(int(path)) + " cache " +
                                                   dtype_name(ct) + sched());
            return;
          }
        }
      }
    }
  }
  // what the launcher refuses
  std::vector<int32_t> one = {0};
  Buf b(DevDType::kF32, 64);
  CHECK(moe::launch_paged_attention(b.ptr(), DevDType::kF32, 1, one.data(), one.data(), one.data(), 1, 16, 0, 1, 1, 48, 0,
                                    b.ptr(), b.ptr(), DevDType::kF32, b.ptr(), DevDType::kF32, nullptr, 0, nullptr) ==
        cudaErrorInvalidValue);  // head dim 48
  CHECK(moe::launch_paged_kv_append(b.ptr(), b.ptr(), DevDType::kF32, 1, 1, 32, nullptr, one.data(), one.data(), 1, 16,
                                    b.ptr(), b.ptr(), DevDType::kF32, nullptr) == cudaErrorInvalidValue);  // no positions
}

TEST(model_attention_rejects_bad_arguments) {
  using P = moe::AttentionPath;
  std::vector<float> q(256), kc(1024), vc(1024), out(256);
  auto call = [&](int64_t T, int64_t start, int hq, int hkv, int hd, int64_t max_seq, P path) {
    return moe::launch_attention(q.data(), DevDType::kF32, T, start, hq, hkv, hd, 0, kc.data(), vc.data(),
                                 DevDType::kF32, max_seq, out.data(), DevDType::kF32, nullptr, 0, nullptr, path);
  };
  CHECK(call(1, 0, 3, 2, 32, 8, P::kAuto) == cudaErrorInvalidValue);  // Hq % Hkv
  CHECK(call(1, 8, 2, 1, 32, 8, P::kAuto) == cudaErrorInvalidValue);  // start + T > max_seq
  CHECK(call(1, 0, 2, 1, 48, 8, P::kAuto) == cudaErrorInvalidValue);  // head_dim
  CHECK(call(1, 0, 2, 1, 32, 8, P::kSplit) == cudaErrorInvalidValue);  // no workspace
  CHECK_OK(call(0, 0, 2, 1, 32, 8, P::kAuto));
  CHECK(moe::launch_kv_append(q.data(), q.data(), DevDType::kF32, 2, 1, 32, 7, kc.data(), vc.data(), DevDType::kF32, 8,
                              nullptr) == cudaErrorInvalidValue);
}

TEST(model_sampling_greedy_ties_and_nan) {
  const int64_t V = 100;
  std::vector<float> logits(size_t(4 * V), 0.f);
  for (int64_t i = 0; i < V; ++i) logits[size_t(i)] = float(i % 10);        // max 9 first at 9
  for (int64_t i = 0; i < V; ++i) logits[size_t(V + i)] = NAN;               // all NaN -> 0
  logits[size_t(V + 50)] = -INFINITY;                                        // ... but one -inf wins
  for (int64_t i = 0; i < V; ++i) logits[size_t(2 * V + i)] = i == 3 ? NAN : -1.f;
  logits[size_t(2 * V + 90)] = 2.f, logits[size_t(2 * V + 60)] = 2.f;
  for (int64_t i = 0; i < V; ++i) logits[size_t(3 * V + i)] = NAN;
  std::vector<int32_t> ids(4, -7);
  const std::vector<moe::SampleRow> greedy_rows(4, srow(0.f, 0.9f, 1, 2, 0));
  for (moe_emu::Schedule s : kAllSchedules) {
    ScheduleScope scope(s, 11);
    CHECK_OK(moe::launch_argmax(logits.data(), 4, V, ids.data(), nullptr));
    CHECK_EQ(ids[0], 9);
    CHECK_EQ(ids[1], 50);
    CHECK_EQ(ids[2], 60);
    CHECK_EQ(ids[3], 0);
    // temperature 0: greedy through the sampler's entry point
    std::fill(ids.begin(), ids.end(), -7);
    CHECK_OK(gpu_sample(logits.data(), 4, V, greedy_rows, nullptr, ids.data()));
    CHECK_EQ(ids[0], 9);
    CHECK_EQ(ids[1], 50);
    CHECK_EQ(ids[2], 60);
    CHECK_EQ(ids[3], 0);
  }
  std::vector<int32_t> cpu(4, -7);  // the CPU backend's greedy op: the same ids
  CHECK(cpu_sample(logits.data(), 4, V, greedy_rows, nullptr, cpu.data()).is_ok());
  CHECK_OK(moe::launch_argmax(logits.data(), 4, V, ids.data(), nullptr));
  for (int r = 0; r < 4; ++r) CHECK_EQ(cpu[size_t(r)], ids[size_t(r)]);
  const std::vector<float> big = make_logits(3, 1000, 4);
  std::vector<int32_t> got(3);
  CHECK_OK(moe::launch_argmax(big.data(), 3, 1000, got.data(), nullptr));
  for (int64_t r = 0; r < 3; ++r) CHECK_EQ(got[size_t(r)], reference_argmax(big.data() + r * 1000, 1000));
}

TEST(model_sampling_top_p_exact_ids_sweep) {
  int checked = 0, distinct = 0;
  for (moe_emu::Schedule s : kAllSchedules) {
    ScheduleScope scope(s, 12);
    for (int64_t V : {97, 1000}) {
      if (V > 100 && s != moe_emu::Schedule::kRoundRobin) continue;  // the large vocabulary once
      const int64_t T = 3;
      const std::vector<float> logits = make_logits(T, V, uint64_t(V));
      for (float temperature : {0.6f, 1.7f})
        for (float top_p : {0.f, 0.5f, 0.9f, 1.f})
          for (uint64_t step : {0ull, 1000000007ull}) {
            const uint64_t seed = 0x1234567890abcdefull + uint64_t(V);
            std::vector<moe::SampleRow> rows;
            for (int64_t r = 0; r < T; ++r) rows.push_back(srow(temperature, top_p, seed, step, uint64_t(r)));
            std::vector<int32_t> ids(size_t(T), -1), cpu(size_t(T), -1);
            CHECK_OK(gpu_sample(logits.data(), T, V, rows, nullptr, ids.data()));
            CHECK(cpu_sample(logits.data(), T, V, rows, nullptr, cpu.data()).is_ok());
            for (int64_t r = 0; r < T; ++r) {
              const float* row = logits.data() + r * V;
              const int32_t want = reference_sample(row, V, rows[size_t(r)]);
              const int32_t seq = sequential_sample(row, V, rows[size_t(r)]);
              if (ids[size_t(r)] != want || seq != want || cpu[size_t(r)] != want) {
                emu_test::fail(__FILE__, __LINE__, "top-p V=" + std::to_string(V) + " T=" +
                                                       std::to_string(temperature) +
                                                       " p=" + std::to_string(top_p) + " step " + std::to_string(step) +
                                                       " row " + std::to_string(r) + ": got " +
                                                       std::to_string(ids[size_t(r)]) + ", CPU backend " +
                                                       std::to_string(cpu[size_t(r)]) + ", sequential " +
                                                       std::to_string(seq) + ", reference " + std::to_string(want) +
                                                       sched());
                return;
              }
              ++checked;
              distinct += want != reference_argmax(row, V);
            }
          }
    }
  }
  CHECK(checked > 0);
  CHECK(distinct > checked / 4);  // the draws do leave the greedy id
}

// Every filter and penalty, each row with its own parameters and history: the kernel, the CPU
// backend, the sequential rule and the definition (sorts) give the same ids; and a row's id is the
// one it gets alone, in any position among other rows.
TEST(model_sampling_filters_and_penalties_sweep) {
  int checked = 0, distinct = 0, moved = 0;
  Rng rng(77);
  for (moe_emu::Schedule s : kAllSchedules) {
    ScheduleScope scope(s, 13);
    for (int64_t V : {97, 1000}) {
      if (V > 100 && s != moe_emu::Schedule::kRoundRobin) continue;
      const int64_t T = 4;
      for (int round = 0; round < 12; ++round) {
        const std::vector<float> logits = make_logits(T, V, uint64_t(V * 131 + round));
        std::vector<moe::SampleRow> rows;
        History h;
        for (int64_t r = 0; r < T; ++r) {
          const float temps[] = {0.f, 0.7f, 1.5f};
          const int32_t ks[] = {0, 1, 3, 40, int32_t(V)};
          const float mps[] = {0.f, 0.02f, 0.3f};
          const float reps[] = {1.f, 1.3f, 0.8f};
          const float pres[] = {0.f, 0.5f, -0.4f};
          const float freqs[] = {0.f, 0.25f};
          moe::SampleRow p = srow(temps[size_t(rng.uniform() * 3)], rng.uniform() < 0.5 ? 1.f : 0.6f,
                                  uint64_t(round) * 7 + 3, uint64_t(r) * 1000 + uint64_t(round), 0);
          p.top_k = ks[size_t(rng.uniform() * 5)];
          p.min_p = mps[size_t(rng.uniform() * 3)];
          p.repetition = reps[size_t(rng.uniform() * 3)];
          p.presence = pres[size_t(rng.uniform() * 3)];
          p.frequency = freqs[size_t(rng.uniform() * 2)];
          rows.push_back(p);
          // a history of up to 12 distinct ids, biased to the likely ones (the first ids of the row's max)
          std::vector<std::pair<int32_t, int32_t>> e;
          const int n = int(rng.uniform() * 13);
          std::vector<bool> used(size_t(V), false);
          for (int k = 0; k < n; ++k) {
            const int32_t id = int32_t(rng.uniform() * double(V));
            if (used[size_t(id)]) continue;
            used[size_t(id)] = true;
            e.emplace_back(id, 1 + int32_t(rng.uniform() * 3));
          }
          std::sort(e.begin(), e.end());
          h.add_row(e);
        }
        std::vector<int32_t> ids(size_t(T), -1), cpu(size_t(T), -1);
        CHECK_OK(gpu_sample(logits.data(), T, V, rows, &h, ids.data()));
        CHECK(cpu_sample(logits.data(), T, V, rows, &h, cpu.data()).is_ok());
        for (int64_t r = 0; r < T; ++r) {
          const float* row = logits.data() + r * V;
          const int32_t* hid = h.ids.data() + h.offsets[size_t(r)];
          const int32_t* hc = h.counts.data() + h.offsets[size_t(r)];
          const int64_t nh = h.offsets[size_t(r) + 1] - h.offsets[size_t(r)];
          const moe::SampleRow& p = rows[size_t(r)];
          const int32_t want = reference_sample(row, V, p, hid, hc, nh);
          const int32_t seq = sequential_sample(row, V, p, hid, hc, nh);
          if (ids[size_t(r)] != want || seq != want || cpu[size_t(r)] != want) {
            emu_test::fail(__FILE__, __LINE__, "V=" + std::to_string(V) + " round " + std::to_string(round) + " row " +
                                                   std::to_string(r) + " (T=" + std::to_string(p.temperature) +
                                                   " k=" + std::to_string(p.top_k) + " min_p=" + std::to_string(p.min_p) +
                                                   " history " + std::to_string(nh) + "): got " +
                                                   std::to_string(ids[size_t(r)]) + ", CPU backend " +
                                                   std::to_string(cpu[size_t(r)]) + ", sequential " +
                                                   std::to_string(seq) + ", reference " + std::to_string(want) + sched());
            return;
          }
          if (p.top_k == 1) {  // top-1: the greedy id of the penalized row
            moe::SampleRow g = p;
            g.temperature = 0.f;
            CHECK_EQ(want, reference_sample(row, V, g, hid, hc, nh));
          }
          ++checked;
          distinct += want != reference_argmax(row, V);
          moved += nh > 0 && want != reference_sample(row, V, p);
        }
        // row 2 alone, and first: the same id
        if (s == moe_emu::Schedule::kRoundRobin) {
          History one;
          one.add_row({});
          one.ids.assign(h.ids.begin() + h.offsets[2], h.ids.begin() + h.offsets[3]);
          one.counts.assign(h.counts.begin() + h.offsets[2], h.counts.begin() + h.offsets[3]);
          one.offsets = {0, int32_t(one.ids.size())};
          int32_t alone = -1;
          CHECK_OK(gpu_sample(logits.data() + 2 * V, 1, V, {rows[2]}, &one, &alone));
          CHECK_EQ(alone, ids[2]);
        }
      }
    }
  }
  CHECK(checked > 100);
  CHECK(distinct > checked / 4);  // draws leave the greedy id
  CHECK(moved > 0);               // and penalties move some ids
}

// Rows without any finite weight: every logit -inf gives the greedy id (0), an +inf logit wins
// alone, NaNs never win; the sequential rule agrees.
TEST(model_sampling_infinite_and_nan_rows) {
  const int64_t V = 40;
  std::vector<float> logits(size_t(3 * V), -INFINITY);
  logits[size_t(V + 7)] = INFINITY, logits[size_t(V + 9)] = 3.f, logits[size_t(V + 11)] = NAN;
  for (int64_t i = 0; i < V; ++i) logits[size_t(2 * V + i)] = i % 2 ? NAN : -INFINITY;
  logits[size_t(2 * V + 30)] = -2.f;
  std::vector<moe::SampleRow> rows;
  for (int64_t r = 0; r < 3; ++r) rows.push_back(srow(1.f, 0.9f, 42, 7, uint64_t(r)));
  std::vector<int32_t> ids(3, -1);
  CHECK_OK(gpu_sample(logits.data(), 3, V, rows, nullptr, ids.data()));
  CHECK_EQ(ids[0], 0);
  CHECK_EQ(ids[1], 7);
  CHECK_EQ(ids[2], 30);
  std::vector<int32_t> cpu(3, -1);
  CHECK(cpu_sample(logits.data(), 3, V, rows, nullptr, cpu.data()).is_ok());
  for (int64_t r = 0; r < 3; ++r) {
    CHECK_EQ(ids[size_t(r)], sequential_sample(logits.data() + r * V, V, rows[size_t(r)]));
    CHECK_EQ(ids[size_t(r)], cpu[size_t(r)]);  // the CPU backend's op
  }
}

